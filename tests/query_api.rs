//! The query API over an archive the processor wrote: cost reports reconcile with the
//! priced events to the nano-dollar (total, grouped, bucketed in two time zones, JSON and
//! CSV); the interaction search finds by principal, model, tool, rule and content text
//! and pages through everything exactly once; finance tokens never see content, upstream
//! error bodies or violations; bad parameters get a 400 naming the parameter, and hostile
//! values stay values.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, LogError, PendingAck, Record, Subscription};
use tollgate_processor::ProcessorConfig;
use tollgate_processor::archive::caught_up;
use tollgate_processor::config::ArchiveConfig;
use tollgate_processor::pricer::Pricer;
use tollgate_processor::testing::{Running, team_budget, workload};
use tollgate_query_api::auth::{Role, TokenConfig, token_hash};
use tollgate_query_api::server::QueryApiConfig;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{ACCESS, PRICED_INTERACTIONS};
use tollgate_schemas::{Interaction, Nanodollars};

/// 2036-11-26T23:59:59Z: the 1,500 interactions (1 ms apart) cross midnight UTC. The day is
/// years ahead on purpose: the processor stamps a decision with the wall clock when it
/// makes it, and an interaction's detail lists the decisions in force at its event time,
/// so the decisions must be stamped before the interactions' event time.
const START: i64 = 2_111_356_800_000_000 - 1_000_000;
const COUNT: usize = 1_500;

/// Publishes `interactions` to an embedded log under `dir`, archives everything on it,
/// and returns the archive's location and the log.
async fn archived(dir: &std::path::Path, interactions: &[Interaction]) -> (String, Arc<dyn EventLog>) {
    let root = dir.join("archive").display().to_string();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    tollgate_processor::testing::publish(log.as_ref(), interactions).await.unwrap();
    archive_everything(&root, &log, interactions.len()).await;
    (root, log)
}

/// Runs the processor until `priced` interactions are priced and everything on the log
/// is in the archive at `root`.
async fn archive_everything(root: &str, log: &Arc<dyn EventLog>, priced: usize) {
    let config = ProcessorConfig {
        budgets: vec![team_budget("team-0", 1)],
        archive: Some(ArchiveConfig { roll_interval: Duration::from_millis(200), ..ArchiveConfig::new(root) }),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(log), config, "query-test").unwrap();
    let store = tollgate_archive::Archive::open(root, &BTreeMap::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let count: i64 = log.end_offsets(PRICED_INTERACTIONS).await.unwrap().iter().map(|(_, end)| end).sum();
        if count == priced as i64 && caught_up(log.as_ref(), &store).await.unwrap() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "archiving took too long");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    processor.stop().await.unwrap();
}

/// The finance and auditor tokens of these tests, and an API serving `config` over the
/// archive at `root`, recording its access log on `log`.
async fn serve(root: &str, log: Arc<dyn EventLog>, config: QueryApiConfig) -> Api {
    let config = QueryApiConfig {
        archive: root.to_owned(),
        tokens: vec![
            TokenConfig { name: "finance".into(), sha256: token_hash("finance-token"), role: Role::Finance },
            TokenConfig { name: "auditor".into(), sha256: token_hash("auditor-token"), role: Role::Auditor },
        ],
        ..config
    };
    let base = tollgate_query_api::server::serve_in_background(&config, log).await.unwrap();
    Api { base, client: reqwest::Client::new() }
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, token: Option<&str>, path: &str) -> (StatusCode, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn json(&self, token: &str, path: &str) -> Value {
        let (status, body) = self.get(Some(token), path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The parameter a 400 names.
    async fn refused(&self, token: &str, path: &str) -> String {
        let (status, body) = self.get(Some(token), path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter");
        body["error"]["parameter"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_searches_answer_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut interactions = workload(COUNT, 17, START);
    // An upstream error body can quote the request: auditors read it, finance does not.
    let failed = &mut interactions[COUNT / 2];
    failed.outcome.status = tollgate_schemas::OutcomeStatus::UpstreamError;
    failed.outcome.error_message = Some("invalid request: 'my card is 4111 1111 1111 1111'".to_owned());
    let failed = failed.id;
    let (root, log) = archived(dir.path(), &interactions).await;
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    let cost = |interaction: &Interaction| pricer.price(interaction).cost.total.0;

    let api = serve(&root, log, QueryApiConfig { max_page_size: 500, ..QueryApiConfig::default() }).await;
    let (finance, auditor) = ("finance-token", "auditor-token");
    let day = "from=2036-11-26&to=2036-11-28";

    // No token, a wrong token, a malformed header.
    assert_eq!(api.get(None, &format!("/v1/reports/cost?{day}")).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = api.get(Some("guess"), &format!("/v1/reports/cost?{day}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "unauthorized");
    for (header, want) in [("bearer finance-token", StatusCode::OK), ("Basic finance-token", StatusCode::UNAUTHORIZED)]
    {
        let response = api
            .client
            .get(format!("{}/v1/reports/cost?{day}", api.base))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), want, "{header}");
    }

    // The total reconciles with the priced events to the nano-dollar.
    let expected: i64 = interactions.iter().map(cost).sum();
    let report = api.json(finance, &format!("/v1/reports/cost?{day}")).await;
    assert_eq!(report["total_cost_nanos"], expected);
    assert_eq!(report["lines"][0]["interactions"], COUNT);
    assert_eq!(report["total_cost_usd"], Nanodollars(expected).to_string());

    // Grouped by team and model: every line is the direct sum of its interactions.
    // The chargeback export: FOCUS rows per day, org, team, user, key and model or tool,
    // whose billed costs (exact decimals) add up to the same total.
    let focus = api.json(finance, &format!("/v1/reports/chargeback?{day}&format=json")).await;
    let rows = focus["rows"].as_array().unwrap();
    let billed: i64 = rows.iter().map(|row| decimal_nanos(row["BilledCost"].as_str().unwrap())).sum();
    assert_eq!(billed, expected);
    let counted: i64 = rows.iter().map(|row| row["x_Interactions"].as_i64().unwrap()).sum();
    assert_eq!(counted, COUNT as i64);
    let mut per_key_day: BTreeMap<(String, String), i64> = BTreeMap::new();
    for interaction in &interactions {
        let day = tollgate_schemas::archive::date_partition(interaction.time_unix_micros);
        *per_key_day.entry((interaction.principal.key_id.clone(), format!("{day}T00:00:00Z"))).or_default() +=
            cost(interaction);
    }
    let mut got: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in rows {
        assert_eq!(row["BillingCurrency"], "USD");
        assert_eq!(row["ChargeCategory"], "Usage");
        assert_eq!(row["BilledCost"], row["EffectiveCost"]);
        let unit = row["ConsumedUnit"].as_str().unwrap();
        let tool = unit == "Calls" && row["ServiceName"] == "web" && row["ProviderName"] == "search";
        assert!(unit == "Tokens" || tool, "{row}");
        let key =
            (row["ResourceId"].as_str().unwrap().to_owned(), row["ChargePeriodStart"].as_str().unwrap().to_owned());
        *got.entry(key).or_default() += row["x_CostNanos"].as_i64().unwrap();
    }
    assert_eq!(got, per_key_day, "cost per key and day");
    let (status, csv) = api.get(Some(finance), &format!("/v1/reports/chargeback?{day}")).await;
    assert_eq!(status, StatusCode::OK);
    let header = csv.lines().next().unwrap();
    for column in [
        "BilledCost",
        "BillingPeriodStart",
        "ChargePeriodEnd",
        "ProviderName",
        "ServiceCategory",
        "SubAccountId",
        "Tags",
    ] {
        assert!(header.split(',').any(|name| name == column), "{column} missing from {header}");
    }
    assert_eq!(csv.lines().count(), rows.len() + 1);
    assert_eq!(api.refused(finance, &format!("/v1/reports/chargeback?{day}&granularity=week")).await, "granularity");

    let report = api.json(finance, &format!("/v1/reports/cost?{day}&group_by=team,model")).await;
    let mut want: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for interaction in &interactions {
        let model = match &interaction.call {
            tollgate_schemas::Call::ModelCall(call) => call.request_model.clone(),
            tollgate_schemas::Call::ToolCall(_) => String::new(),
        };
        let entry = want.entry((interaction.principal.team_id.clone().unwrap(), model)).or_default();
        entry.0 += 1;
        entry.1 += cost(interaction);
    }
    let lines = report["lines"].as_array().unwrap();
    assert_eq!(lines.len(), want.len());
    for line in lines {
        let key = (line["team"].as_str().unwrap().to_owned(), line["model"].as_str().unwrap_or_default().to_owned());
        assert_eq!(
            (line["interactions"].as_i64().unwrap(), line["cost_nanos"].as_i64().unwrap()),
            want[&key],
            "{key:?}"
        );
    }
    assert_eq!(report["total_cost_nanos"], expected);

    // Daily buckets: two days in UTC, one in New York (midnight UTC is 19:00 there).
    let utc = api.json(finance, &format!("/v1/reports/cost?{day}&bucket=day")).await;
    let buckets: Vec<&str> =
        utc["lines"].as_array().unwrap().iter().map(|line| line["bucket_start"].as_str().unwrap()).collect();
    assert_eq!(buckets, ["2036-11-26T00:00:00Z", "2036-11-27T00:00:00Z"]);
    let first_day: i64 = interactions.iter().filter(|i| i.time_unix_micros < START + 1_000_000).map(cost).sum();
    assert_eq!(utc["lines"][0]["cost_nanos"], first_day);
    let new_york = api.json(finance, &format!("/v1/reports/cost?{day}&bucket=day&tz=America/New_York")).await;
    assert_eq!(new_york["lines"].as_array().unwrap().len(), 1);
    assert_eq!(new_york["lines"][0]["bucket_start"], "2036-11-26T05:00:00Z");
    assert_eq!(new_york["total_cost_nanos"], expected);

    // CSV.
    let (status, csv) = api.get(Some(finance), &format!("/v1/reports/cost?{day}&group_by=org&format=csv")).await;
    assert_eq!(status, StatusCode::OK);
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("org,interactions,cost_nanos,cost_usd,input_tokens,output_tokens"));
    let csv_total: i64 = rows.map(|row| row.split(',').nth(2).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(csv_total, expected);

    // Search by principal, model and tool.
    let count = |filter: &dyn Fn(&Interaction) -> bool| interactions.iter().filter(|i| filter(i)).count();
    let page = api.json(auditor, "/v1/interactions?team=team-3&limit=500").await;
    assert_eq!(
        page["interactions"].as_array().unwrap().len(),
        count(&|i| i.principal.team_id.as_deref() == Some("team-3"))
    );
    let page = api.json(finance, &format!("/v1/interactions?{day}&user=user-5&model=gpt-4.1&limit=500")).await;
    let want = count(&|i| {
        i.principal.user_id.as_deref() == Some("user-5")
            && matches!(&i.call, tollgate_schemas::Call::ModelCall(call) if call.request_model == "gpt-4.1")
    });
    assert_eq!(page["interactions"].as_array().unwrap().len(), want);
    let tools =
        count(&|i| matches!(&i.call, tollgate_schemas::Call::ToolCall(call) if call.tool.as_deref() == Some("web")));
    let mut seen = 0;
    let mut cursor = String::new();
    loop {
        let page = api.json(finance, &format!("/v1/interactions?tool=web&limit=50{cursor}")).await;
        seen += page["interactions"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, tools);

    // Pages: every interaction exactly once, in time order.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api.json(finance, &format!("/v1/interactions?{day}&limit=400{cursor}")).await;
        for record in page["interactions"].as_array().unwrap() {
            ids.push(record["interaction"]["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let want_ids: Vec<String> = interactions.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(ids, want_ids, "all interactions, once each, oldest first");

    // Content: auditors search it and see it; finance cannot search it and never sees it.
    let captured: Vec<&Interaction> = interactions.iter().filter(|i| i.content.captured.is_some()).collect();
    assert!(!captured.is_empty());
    let needle = captured[0]
        .content
        .captured
        .as_ref()
        .unwrap()
        .request
        .split("mail ")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let page = api.json(auditor, &format!("/v1/interactions?text={needle}")).await;
    let found = page["interactions"].as_array().unwrap();
    assert!(found.iter().any(|record| record["interaction"]["id"] == captured[0].id.to_string()));
    assert!(
        found
            .iter()
            .all(|record| record["interaction"]["content"]["captured"]["request"].as_str().unwrap().contains(needle))
    );
    let (status, _) = api.get(Some(finance), &format!("/v1/interactions?text={needle}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let detail = api.json(finance, &format!("/v1/interactions/{}", captured[0].id)).await;
    assert!(detail["interaction"]["interaction"]["content"]["captured"].is_null());
    let detail = api.json(auditor, &format!("/v1/interactions/{}", captured[0].id)).await;
    assert!(detail["interaction"]["interaction"]["content"]["captured"]["request"].is_string());
    let error_message = |detail: &Value| detail["interaction"]["interaction"]["outcome"]["error_message"].clone();
    assert!(error_message(&api.json(auditor, &format!("/v1/interactions/{failed}")).await).is_string());
    assert!(error_message(&api.json(finance, &format!("/v1/interactions/{failed}")).await).is_null());
    let page = api.json(finance, "/v1/interactions?outcome=upstream_error&limit=500").await;
    let found = page["interactions"].as_array().unwrap();
    assert!(found.iter().any(|record| record["interaction"]["id"] == failed.to_string()));
    assert!(found.iter().all(|record| record["interaction"]["outcome"]["error_message"].is_null()), "{page}");

    // Violations: the rule filter, and an interaction's own violations and decisions.
    let flagged: Vec<(uuid::Uuid, String)> = interactions
        .iter()
        .flat_map(|i| {
            tollgate_processor::detect::violations(i, !pricer.price(i).priced)
                .into_iter()
                .map(move |v| (i.id, v.rule_id))
        })
        .collect();
    let rule = flagged[0].1.clone();
    let with_rule: HashSet<String> = flagged.iter().filter(|(_, r)| *r == rule).map(|(id, _)| id.to_string()).collect();
    let page = api.json(auditor, &format!("/v1/interactions?rule={rule}&limit=500")).await;
    let got: HashSet<String> = page["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["interaction"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, with_rule);
    let detail = api.json(auditor, &format!("/v1/interactions/{}", flagged[0].0)).await;
    assert!(detail["violations"].as_array().unwrap().iter().any(|v| v["rule_id"] == rule.as_str()));
    // Violations (their evidence quotes the prompt) are auditors' history: finance can
    // neither search by rule nor read an interaction's violations.
    let (status, body) = api.get(Some(finance), &format!("/v1/interactions?rule={rule}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let detail = api.json(finance, &format!("/v1/interactions/{}", flagged[0].0)).await;
    assert_eq!(detail["violations"], serde_json::json!([]), "{detail}");
    let team0 = interactions.iter().rev().find(|i| i.principal.team_id.as_deref() == Some("team-0")).unwrap();
    let detail = api.json(finance, &format!("/v1/interactions/{}", team0.id)).await;
    assert!(detail["decisions"].as_array().unwrap().iter().any(|d| d["budget_id"] == "team-0-lifetime"), "{detail}");

    // Budgets: the newest state of team-0's budget holds all of its spend.
    let team0_spend: i64 =
        interactions.iter().filter(|i| i.principal.team_id.as_deref() == Some("team-0")).map(cost).sum();
    let status = api.json(finance, "/v1/budgets?subject=team:team-0").await;
    let budget = &status["budgets"][0];
    assert_eq!(budget["budget_id"], "team-0-lifetime");
    assert_eq!(budget["spent_nanos"], team0_spend);
    assert_eq!(budget["remaining_nanos"], Nanodollars::PER_DOLLAR - team0_spend);
    let state = match team0_spend {
        spent if spent >= Nanodollars::PER_DOLLAR => "block",
        spent if spent >= Nanodollars::PER_DOLLAR / 2 => "warn",
        _ => "allow",
    };
    assert_eq!(budget["state"], state, "hard budget with a 50% alert");
    assert!(budget["forecast_nanos"].is_null(), "a lifetime budget has no window end");
    // Decision history: one entry per decision, in decision time order (decisions made
    // together share a time), the newest version the one the status shows.
    let history = api.json(finance, "/v1/decisions?subject=team:team-0&limit=500").await;
    let items = history["items"].as_array().unwrap();
    let versions: HashSet<u64> = items.iter().map(|d| d["version"].as_u64().unwrap()).collect();
    assert_eq!(versions.len(), items.len(), "one entry per decision");
    let times: Vec<i64> = items.iter().map(|d| d["time_unix_micros"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    let newest = items.iter().max_by_key(|d| d["version"].as_u64().unwrap()).unwrap();
    assert_eq!(newest["spent"], budget["spent_nanos"]);
    // Violations and governance history are for auditors.
    let listed = api.json(auditor, "/v1/violations?limit=500").await;
    let listed: HashSet<String> =
        listed["items"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed.len(), flagged.len());
    let by_rule = api.json(auditor, &format!("/v1/violations?rule={rule}&limit=500")).await;
    assert_eq!(by_rule["items"].as_array().unwrap().len(), flagged.iter().filter(|(_, r)| *r == rule).count());
    assert_eq!(api.get(Some(finance), "/v1/violations").await.0, StatusCode::FORBIDDEN);
    let changes = api.json(auditor, "/v1/governance").await;
    let changes = changes["items"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "the configured budget");
    assert_eq!(changes[0]["target"]["id"], "team-0-lifetime");
    assert_eq!(changes[0]["actor"]["id"], "query-test");
    assert_eq!(api.get(Some(finance), "/v1/governance").await.0, StatusCode::FORBIDDEN);

    // Bad parameters: a 400 naming the parameter.
    assert_eq!(api.refused(finance, "/v1/budgets?subject=galaxy:x").await, "subject");
    assert_eq!(api.refused(finance, "/v1/decisions?state=panic").await, "state");
    assert_eq!(api.refused(auditor, "/v1/violations?severity=apocalyptic").await, "severity");
    assert_eq!(api.refused(finance, "/v1/reports/cost?from=2036-11-28&to=2036-11-26").await, "to");
    assert_eq!(api.refused(finance, "/v1/reports/cost?from=last+tuesday&to=2036-11-26").await, "from");
    assert_eq!(api.refused(finance, "/v1/reports/cost?to=2036-11-26").await, "from");
    assert_eq!(api.refused(finance, &format!("/v1/reports/cost?{day}&group_by=team,colour")).await, "group_by");
    assert_eq!(api.refused(finance, &format!("/v1/reports/cost?{day}&bucket=week")).await, "bucket");
    assert_eq!(api.refused(finance, &format!("/v1/reports/cost?{day}&tz=Mars/Olympus")).await, "tz");
    assert_eq!(api.refused(finance, &format!("/v1/reports/cost?{day}&format=xml")).await, "format");
    assert_eq!(api.refused(finance, &format!("/v1/reports/cost?{day}&limit=5")).await, "limit");
    assert_eq!(api.refused(finance, "/v1/interactions?limit=100000000").await, "limit");
    assert_eq!(api.refused(finance, "/v1/interactions?cursor=not-a-cursor").await, "cursor");
    assert_eq!(api.refused(finance, "/v1/interactions?outcome=exploded").await, "outcome");
    assert_eq!(api.refused(finance, "/v1/interactions?team=a&team=b").await, "team");
    assert_eq!(api.refused(finance, "/v1/interactions/not-a-uuid").await, "id");
    let (status, _) = api.get(Some(finance), &format!("/v1/interactions/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Hostile values are only values.
    let page = api.json(finance, "/v1/interactions?team=%27%20OR%201%3D1%20--").await;
    assert_eq!(page["interactions"].as_array().unwrap().len(), 0);
    let page = api.json(auditor, "/v1/interactions?text=%27%29%20OR%20%28%271%27%3D%271").await;
    assert_eq!(page["interactions"].as_array().unwrap().len(), 0);

    // The OpenAPI document lists every route, and schemathesis, generating requests from
    // it (valid, boundary and invalid values), never gets a server error.
    let (status, document) = api.get(None, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let document: Value = serde_json::from_str(&document).unwrap();
    for path in [
        "/v1/reports/cost",
        "/v1/reports/chargeback",
        "/v1/interactions",
        "/v1/interactions/{id}",
        "/v1/budgets",
        "/v1/decisions",
        "/v1/violations",
        "/v1/governance",
        "/v1/access",
    ] {
        assert!(document["paths"][path]["get"].is_object(), "{path} missing from /openapi.json");
    }
    let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TOLLGATE_TEST_PYTHON is not set: this test runs the pinned schemathesis that `scripts/test` installs. Run `scripts/test`.")
    });
    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    for token in [auditor, finance] {
        let output = tokio::process::Command::new(&schemathesis)
            .args([
                "run",
                &format!("{}/openapi.json", api.base),
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
            ])
            .args(["--seed", "1", "--no-color", "--header", &format!("Authorization: Bearer {token}")])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            // Its cache goes where it runs: not into the checkout.
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "schemathesis found server errors:\n{printed}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(printed.contains("passed"), "{printed}");
    }
}

/// Model and tool names are chosen by clients; a spreadsheet opening the cost CSV or the
/// FOCUS export must not run one as a formula. Every hostile name comes back with a
/// leading `'`, and no cell of either file begins with a formula character unless it is a
/// number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_would_run_as_formulas_are_neutralized_in_csv_exports() {
    const MODELS: [&str; 4] = ["=HYPERLINK(\"http://x.test\",\"y\")", "+1+1", "-2+3", "@SUM(A1:A9)"];
    const TOOLS: [&str; 2] = ["\tcmd", "=2*3"];
    let dir = tempfile::tempdir().unwrap();
    let mut interactions = workload(60, 29, START);
    for (index, interaction) in interactions.iter_mut().enumerate() {
        match &mut interaction.call {
            tollgate_schemas::Call::ModelCall(call) => call.request_model = MODELS[index % MODELS.len()].to_owned(),
            tollgate_schemas::Call::ToolCall(call) => call.tool = Some(TOOLS[index % TOOLS.len()].to_owned()),
        }
    }
    // Every hostile tool name at least once, however the workload fell.
    interactions.extend(TOOLS.iter().map(|name| {
        let mut tool = tollgate_processor::testing::tool_call("search", name, tollgate_schemas::OutcomeStatus::Ok);
        tool.time_unix_micros = START;
        tool
    }));
    let (root, log) = archived(dir.path(), &interactions).await;
    let api = serve(&root, log, QueryApiConfig::default()).await;
    let day = "from=2036-11-26&to=2036-11-28";

    let cells = |body: &str| -> Vec<String> {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(body.as_bytes());
        reader.records().flat_map(|record| record.unwrap().iter().map(str::to_owned).collect::<Vec<_>>()).collect()
    };
    for path in
        [format!("/v1/reports/cost?{day}&group_by=model,tool&format=csv"), format!("/v1/reports/chargeback?{day}")]
    {
        let (status, body) = api.get(Some("finance-token"), &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let cells = cells(&body);
        for name in MODELS.iter().chain(&TOOLS) {
            assert!(cells.contains(&format!("'{name}")), "{path}: {name:?} is not neutralized in {body}");
            assert!(!cells.contains(&(*name).to_owned()), "{path}: {name:?} is written as it came in {body}");
        }
        for cell in &cells {
            let number = cell.parse::<f64>().is_ok();
            assert!(number || !cell.starts_with(['=', '+', '-', '@', '\t', '\r']), "{path}: cell {cell:?}");
        }
    }
}

/// `"12.345000001"` (dollars) in nano-dollars, read here independently of the API's code.
fn decimal_nanos(text: &str) -> i64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(fraction.len() <= 9, "{text}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + format!("{fraction:0<9}").parse::<i64>().unwrap()
}

/// How many access events the log holds.
async fn access_events(log: &Arc<dyn EventLog>) -> i64 {
    log.end_offsets(ACCESS).await.unwrap().iter().map(|(_, end)| end).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_in_the_access_log_and_only_auditors_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let interactions = workload(60, 5, START);
    let (root, log) = archived(dir.path(), &interactions).await;
    let api = serve(&root, Arc::clone(&log), QueryApiConfig::default()).await;
    let (finance, auditor) = ("finance-token", "auditor-token");
    let one = interactions[7].id;

    // Answers of every kind: reports, pages, one record, refusals by role, bad parameters.
    let long_query = format!("limit=3&text={}secret", "a".repeat(5_000));
    let requests = [
        (finance, "/v1/reports/cost".to_owned(), "from=2036-11-26&to=2036-11-28&group_by=team", StatusCode::OK),
        (finance, "/v1/interactions".to_owned(), "limit=5", StatusCode::OK),
        (finance, "/v1/access".to_owned(), "", StatusCode::FORBIDDEN),
        (finance, "/v1/interactions".to_owned(), "text=secret", StatusCode::FORBIDDEN),
        (finance, "/v1/violations".to_owned(), "", StatusCode::FORBIDDEN),
        (auditor, "/v1/reports/cost".to_owned(), "from=yesterday&to=2036-11-28", StatusCode::BAD_REQUEST),
        (auditor, format!("/v1/interactions/{one}"), "", StatusCode::OK),
        (auditor, "/v1/interactions".to_owned(), "text=a&limit=3", StatusCode::OK),
        (auditor, "/v1/governance".to_owned(), "", StatusCode::OK),
        // Padding cannot push a search out of the record: numbers are written plainly,
        // and a query string too long to record whole is not answered.
        (auditor, "/v1/interactions".to_owned(), "limit=0000000003&text=secret", StatusCode::BAD_REQUEST),
        (auditor, "/v1/interactions".to_owned(), &long_query, StatusCode::URI_TOO_LONG),
        // Recorded as read: decoded, then encoded one way.
        (auditor, "/v1/interactions".to_owned(), "text=se%63ret&limit=3", StatusCode::OK),
    ];
    fn recorded(query: &str) -> &str {
        match query {
            "text=se%63ret&limit=3" => "text=secret&limit=3",
            query if query.len() > 4096 => "",
            query => query,
        }
    }
    let before = access_events(&log).await;
    assert_eq!(before, 0, "nothing was queried yet");
    for (token, path, query, want) in &requests {
        let target = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let (status, body) = api.get(Some(token), &target).await;
        assert_eq!(status, *want, "{target}: {body}");
    }
    // Requests without a valid token read nothing and are not access events.
    assert_eq!(api.get(None, "/v1/interactions").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get(Some("guess"), "/v1/interactions").await.0, StatusCode::UNAUTHORIZED);
    // Counted on the log itself: one event per authenticated request, each on the log
    // before its answer came back.
    assert_eq!(access_events(&log).await, requests.len() as i64);

    // Archived like every other event, the log reads back through the API, in order.
    archive_everything(&root, &log, interactions.len()).await;
    let page = api.json(auditor, "/v1/access?limit=100").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), requests.len(), "{page}");
    for ((token, path, query, status), item) in requests.iter().zip(items) {
        let name = if *token == finance { "finance" } else { "auditor" };
        assert_eq!(item["token_name"], name, "{item}");
        assert_eq!(item["role"], name, "{item}");
        assert_eq!(item["method"], "GET");
        assert_eq!(item["path"], path.as_str(), "{item}");
        assert_eq!(item["query"].as_str().unwrap_or_default(), recorded(query), "{item}");
        assert_eq!(item["status"], status.as_u16(), "{item}");
        assert!(item["client_address"].as_str().unwrap().starts_with("127.0.0.1:"), "{item}");
    }
    // Result counts: the report has one line per team; the page held 5 records.
    let teams: HashSet<_> = interactions.iter().map(|interaction| interaction.principal.team_id.clone()).collect();
    assert_eq!(items[0]["results"], teams.len(), "{}", items[0]);
    assert_eq!(items[1]["results"], 5);
    assert_eq!(items[6]["results"], 1);
    assert!(items[2]["results"].is_null(), "a refusal holds no records");
    // Filters, and the reads of the log are themselves in it.
    let mine = api.json(auditor, "/v1/access?token=finance&limit=100").await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 5);
    let refused = api.get(Some(finance), "/v1/access?token=auditor").await;
    assert_eq!(refused.0, StatusCode::FORBIDDEN, "{}", refused.1);
    assert_eq!(api.refused(auditor, "/v1/access?role=root").await, "role");
    assert_eq!(access_events(&log).await, requests.len() as i64 + 4);
}

/// A log that works but refuses every access event.
#[derive(Debug)]
struct RefusingAccess(Arc<dyn EventLog>);

#[async_trait::async_trait]
impl EventLog for RefusingAccess {
    async fn ensure_topic(&self, name: &str, partitions: i32, compacted: bool) -> Result<(), LogError> {
        self.0.ensure_topic(name, partitions, compacted).await
    }
    fn publish(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError> {
        if topic == ACCESS { Err(LogError::Closed) } else { self.0.publish(topic, key, payload) }
    }
    fn publish_to(&self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<PendingAck, LogError> {
        self.0.publish_to(topic, partition, key, payload)
    }
    async fn read(&self, topic: &str, partition: i32, from: i64, max: usize) -> Result<Vec<Record>, LogError> {
        self.0.read(topic, partition, from, max).await
    }
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, LogError> {
        self.0.subscribe(group, topics).await
    }
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, LogError> {
        self.0.end_offsets(topic).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_access_log_cannot_record_is_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (root, log) = archived(dir.path(), &workload(10, 2, START)).await;
    let refusing: Arc<dyn EventLog> = Arc::new(RefusingAccess(Arc::clone(&log)));
    let api = serve(&root, refusing, QueryApiConfig::default()).await;
    for path in ["/v1/interactions", "/v1/reports/cost?from=2036-11-26&to=2036-11-28", "/v1/access"] {
        let (status, body) = api.get(Some("auditor-token"), path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "access_log_unavailable");
        assert!(
            body.get("interactions").is_none() && body.get("lines").is_none(),
            "no data leaves without its access record"
        );
    }
    assert_eq!(access_events(&log).await, 0);
    // Liveness does not depend on the log.
    assert_eq!(api.get(None, "/healthz").await.0, StatusCode::OK);
}

/// An API on `log` over the archive at `root` with an admin token `ops-token`.
async fn replica(root: &str, log: &Arc<dyn EventLog>) -> Api {
    let config = QueryApiConfig {
        archive: root.to_owned(),
        tokens: vec![TokenConfig { name: "ops".into(), sha256: token_hash("ops-token"), role: Role::Admin }],
        ..QueryApiConfig::default()
    };
    let base = tollgate_query_api::server::serve_in_background(&config, Arc::clone(log)).await.unwrap();
    Api { base, client: reqwest::Client::new() }
}

impl Api {
    async fn send(&self, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Waits until `token` gets `want` from `api`'s cost report.
async fn until_status(api: &Api, token: &str, want: StatusCode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if api.get(Some(token), "/v1/reports/cost?from=2036-11-26&to=2036-11-28").await.0 == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{token} never got {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_make_and_revoke_tokens_that_every_replica_follows() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let (root, log) = archived(dir.path(), &workload(10, 6, START)).await;
    let (first, second) = (replica(&root, &log).await, replica(&root, &log).await);

    // Made on one replica: shown once, works there at once and on the other soon after.
    let (status, made) = first
        .send(
            Method::POST,
            "ops-token",
            "/v1/admin/tokens",
            Some(serde_json::json!({"name": "ledger", "role": "finance"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let ledger = made["token"].as_str().unwrap().to_owned();
    assert_eq!(first.get(Some(&ledger), "/v1/reports/cost?from=2036-11-26&to=2036-11-28").await.0, StatusCode::OK);
    until_status(&second, &ledger, StatusCode::OK).await;
    // A finance token sees finance answers only, and cannot administer.
    assert_eq!(second.get(Some(&ledger), "/v1/violations").await.0, StatusCode::FORBIDDEN);
    let (status, _) = second.send(Method::GET, &ledger, "/v1/admin/tokens", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, listed) = second.send(Method::GET, "ops-token", "/v1/admin/tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> =
        listed["tokens"].as_array().unwrap().iter().map(|token| token["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ledger", "ops"]);
    assert!(!listed.to_string().contains(&ledger), "tokens are never listed");

    // Bad requests name the field.
    for (body, field) in [
        (serde_json::json!({"name": "x y", "role": "finance"}), "name"),
        (serde_json::json!({"name": "ok", "role": "root"}), "role"),
        (serde_json::json!({"name": "ok"}), "body"),
    ] {
        let (status, error) = first.send(Method::POST, "ops-token", "/v1/admin/tokens", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["parameter"], field);
    }
    assert_eq!(first.send(Method::DELETE, "ops-token", "/v1/admin/tokens/nobody", None).await.0, StatusCode::NOT_FOUND);

    // Replaced (rotation): the old token stops working everywhere.
    let (status, rotated) = second
        .send(
            Method::POST,
            "ops-token",
            "/v1/admin/tokens",
            Some(serde_json::json!({"name": "ledger", "role": "auditor"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(rotated["replaced"], true);
    let rotated = rotated["token"].as_str().unwrap().to_owned();
    until_status(&first, &ledger, StatusCode::UNAUTHORIZED).await;
    until_status(&first, &rotated, StatusCode::OK).await;

    // Revoked on one replica, refused on both; a replica started later never accepts it.
    let (status, _) = first.send(Method::DELETE, "ops-token", "/v1/admin/tokens/ledger", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.get(Some(&rotated), "/v1/budgets").await.0, StatusCode::UNAUTHORIZED);
    until_status(&second, &rotated, StatusCode::UNAUTHORIZED).await;
    let third = replica(&root, &log).await;
    assert_eq!(third.get(Some(&rotated), "/v1/budgets").await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = third
        .send(
            Method::POST,
            "ops-token",
            "/v1/admin/tokens",
            Some(serde_json::json!({"name": "late", "role": "auditor"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Every change is a governance event naming the admin, with only the token's hash.
    let mut changes = Vec::new();
    for record in log.read(tollgate_schemas::topics::GOVERNANCE, 0, 0, 1_000).await.unwrap() {
        let change: tollgate_schemas::GovernanceChange = tollgate_schemas::decode(&record.payload).unwrap();
        if change.target.kind == tollgate_schemas::TargetKind::ApiToken {
            assert_eq!(change.actor.id, "ops");
            assert!(!record.payload.windows(ledger.len()).any(|window| window == ledger.as_bytes()));
            changes.push((change.target.id, change.action.as_str()));
        }
    }
    let expected = [("ledger", "created"), ("ledger", "rotated"), ("ledger", "revoked"), ("late", "created")];
    let expected: Vec<(String, &str)> = expected.iter().map(|(name, action)| ((*name).to_owned(), *action)).collect();
    assert_eq!(changes, expected);
}
