//! The query API over an archive the processor wrote: cost reports reconcile with the
//! priced events to the nano-dollar (total, grouped, bucketed in two time zones, JSON and
//! CSV); the interaction search finds by principal, model, tool, rule and content text
//! and pages through everything exactly once; finance tokens never see content; bad
//! parameters get a 400 naming the parameter, and hostile values stay values.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_processor::ProcessorConfig;
use tollgate_processor::archive::caught_up;
use tollgate_processor::config::ArchiveConfig;
use tollgate_processor::pricer::Pricer;
use tollgate_processor::testing::{Running, team_budget, workload};
use tollgate_query_api::auth::{Role, TokenConfig, token_hash};
use tollgate_query_api::server::QueryApiConfig;
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::PRICED_INTERACTIONS;
use tollgate_schemas::{Interaction, Nanodollars};

/// 2026-11-26T23:59:59Z: the 1,500 interactions (1 ms apart) cross midnight UTC.
const START: i64 = 1_795_737_600_000_000 - 1_000_000;
const COUNT: usize = 1_500;

async fn archived(dir: &std::path::Path, interactions: &[Interaction]) -> String {
    let root = dir.join("archive").display().to_string();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.join("log"))).unwrap());
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL).await.unwrap();
    tollgate_processor::testing::publish(log.as_ref(), interactions).await.unwrap();
    let config = ProcessorConfig {
        budgets: vec![team_budget("team-0", 1)],
        archive: Some(ArchiveConfig { roll_interval: Duration::from_millis(200), ..ArchiveConfig::new(&root) }),
        ..ProcessorConfig::default()
    };
    let processor = Running::start(Arc::clone(&log), config, "query-test").unwrap();
    let store = tollgate_archive::Archive::open(&root, &BTreeMap::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let priced: i64 = log.end_offsets(PRICED_INTERACTIONS).await.unwrap().iter().map(|(_, end)| end).sum();
        if priced == COUNT as i64 && caught_up(log.as_ref(), &store).await.unwrap() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "archiving took too long");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    processor.stop().await.unwrap();
    root
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
    let interactions = workload(COUNT, 17, START);
    let root = archived(dir.path(), &interactions).await;
    let pricer = Pricer::new(PriceCatalog::shipped().unwrap());
    let cost = |interaction: &Interaction| pricer.price(interaction).cost.total.0;

    let config = QueryApiConfig {
        archive: root,
        tokens: vec![
            TokenConfig { name: "finance".into(), sha256: token_hash("finance-token"), role: Role::Finance },
            TokenConfig { name: "auditor".into(), sha256: token_hash("auditor-token"), role: Role::Auditor },
        ],
        max_page_size: 500,
        ..QueryApiConfig::default()
    };
    let router = tollgate_query_api::server::router(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tollgate_query_api::server::serve(listener, router, std::future::pending()));
    let api = Api { base, client: reqwest::Client::new() };
    let (finance, auditor) = ("finance-token", "auditor-token");
    let day = "from=2026-11-26&to=2026-11-28";

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
    assert_eq!(buckets, ["2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"]);
    let first_day: i64 = interactions.iter().filter(|i| i.time_unix_micros < START + 1_000_000).map(cost).sum();
    assert_eq!(utc["lines"][0]["cost_nanos"], first_day);
    let new_york = api.json(finance, &format!("/v1/reports/cost?{day}&bucket=day&tz=America/New_York")).await;
    assert_eq!(new_york["lines"].as_array().unwrap().len(), 1);
    assert_eq!(new_york["lines"][0]["bucket_start"], "2026-11-26T05:00:00Z");
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
    assert_eq!(api.refused(finance, "/v1/reports/cost?from=2026-11-28&to=2026-11-26").await, "to");
    assert_eq!(api.refused(finance, "/v1/reports/cost?from=last+tuesday&to=2026-11-26").await, "from");
    assert_eq!(api.refused(finance, "/v1/reports/cost?to=2026-11-26").await, "from");
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
        "/v1/interactions",
        "/v1/interactions/{id}",
        "/v1/budgets",
        "/v1/decisions",
        "/v1/violations",
        "/v1/governance",
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
