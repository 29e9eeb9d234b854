//! `tollgate up` as its users run it: the binary as a child process on a data directory.
//!
//! - Killed with SIGKILL between two rounds of traffic and started again, it finds every
//!   call of both rounds in its reports exactly once (the test's calls use the starter
//!   key; the demo traffic, running alongside, uses keys of its own).
//! - Admin changes through `tollgate admin` take effect on the running gateway without a
//!   restart (a new key works, a budget cuts it off, a revoked key gets 401) and are in
//!   the governance history with their actor; bad admin input gets a 400 naming the
//!   problem and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_tollgate");

/// A running `tollgate up --demo`.
struct Up {
    child: tokio::process::Child,
    gateway: String,
    query: String,
    admin_token: String,
    gateway_key: String,
}

impl Up {
    /// Starts `tollgate up --demo` on `data_dir` on free ports and waits for its banner.
    async fn start(data_dir: &Path, log: &Path) -> Up {
        let stderr = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(BINARY)
            .args(["up", "--demo", "--gateway-listen", "127.0.0.1:0", "--query-api-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .env_remove("TOLLGATE_GATEWAY_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let started = Instant::now();
        let (gateway, query) = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let address = |label: &str| {
                text.lines()
                    .find_map(|line| line.trim_start().strip_prefix(label))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|url| url.trim_end_matches("/v1").trim_end_matches('/').to_owned())
            };
            if let (Some(gateway), Some(query)) = (address("gateway     "), address("query API   ")) {
                break (gateway, query);
            }
            assert!(started.elapsed() < Duration::from_secs(120), "`tollgate up` printed no banner:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let credentials: BTreeMap<String, String> =
            toml::from_str(&std::fs::read_to_string(data_dir.join("credentials.toml")).unwrap()).unwrap();
        Up {
            child,
            gateway,
            query,
            admin_token: credentials["admin_token"].clone(),
            gateway_key: credentials["gateway_key"].clone(),
        }
    }

    /// One chat completion with `key`; its status and, when answered, interaction id.
    async fn chat(&self, client: &reqwest::Client, key: &str, stream: bool) -> (StatusCode, Option<String>) {
        self.chat_with(client, key, "gpt-4o-mini", stream).await
    }

    async fn chat_with(
        &self,
        client: &reqwest::Client,
        key: &str,
        model: &str,
        stream: bool,
    ) -> (StatusCode, Option<String>) {
        let response = client
            .post(format!("{}/v1/chat/completions", self.gateway))
            .bearer_auth(key)
            .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Count my tokens"}]}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let id = response.headers().get("x-tollgate-interaction-id").map(|id| id.to_str().unwrap().to_owned());
        // Read the body to its end so a stream is complete before the next call.
        let _ = response.bytes().await.unwrap();
        (status, id)
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> Value {
        let response = client.get(format!("{}{path}", self.query)).bearer_auth(&self.admin_token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    /// A gateway counter from `/metrics`.
    async fn gateway_counter(&self, client: &reqwest::Client, name: &str) -> u64 {
        let text = client.get(format!("{}/metrics", self.gateway)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(&format!("{name}_total ")).or_else(|| line.strip_prefix(&format!("{name} ")))
            })
            .map_or(0, |value| value.trim().parse().unwrap())
    }

    /// Waits until the log has acknowledged every event the gateway published.
    async fn wait_events_durable(&self, client: &reqwest::Client, at_least: u64) {
        let started = Instant::now();
        loop {
            let published = self.gateway_counter(client, "tollgate_gateway_events_published").await;
            let acknowledged = self.gateway_counter(client, "tollgate_gateway_events_acknowledged").await;
            if published >= at_least && acknowledged == published {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{acknowledged} of {published} events acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `tollgate admin ARGS` against this instance: its exit status and JSON output.
    async fn admin(&self, args: &[&str]) -> (bool, Value, String) {
        let output = tokio::process::Command::new(BINARY)
            .arg("admin")
            .args(args)
            .env("TOLLGATE_ADMIN_URL", &self.query)
            .env("TOLLGATE_ADMIN_TOKEN", &self.admin_token)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (output.status.success(), value, String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Every interaction id of `key` the query API finds, with how often, following the pages.
async fn archived_ids(up: &Up, client: &reqwest::Client, key: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/interactions?limit=500&key={key}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = up.get(client, &path).await;
        for interaction in page["interactions"].as_array().unwrap() {
            *ids.entry(interaction["interaction"]["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

fn today_and_tomorrow() -> (String, String) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let date = |seconds: u64| {
        chrono::DateTime::from_timestamp(i64::try_from(seconds).unwrap(), 0).unwrap().format("%Y-%m-%d").to_string()
    };
    (date(now), date(now + 86_400))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_and_restart_every_call_is_reported_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let client = reqwest::Client::new();
    let mut sent = Vec::new();

    let mut up = Up::start(&data, &dir.path().join("first.log")).await;
    for call in 0..24 {
        let (status, id) = up.chat(&client, &up.gateway_key.clone(), call % 3 == 0).await;
        assert_eq!(status, StatusCode::OK);
        sent.push(id.unwrap());
    }
    // Killed once the log holds the events, while the processor is still working on them.
    up.wait_events_durable(&client, 24).await;
    up.child.start_kill().unwrap();
    let status = up.child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");

    let up = Up::start(&data, &dir.path().join("second.log")).await;
    for call in 0..16 {
        let (status, id) = up.chat(&client, &up.gateway_key.clone(), call % 4 == 0).await;
        assert_eq!(status, StatusCode::OK);
        sent.push(id.unwrap());
    }
    up.wait_events_durable(&client, 16).await;

    // The archive is written every few seconds: wait for all of it.
    let started = Instant::now();
    let ids = loop {
        // The demo traffic uses keys of its own; the test's calls are the starter key's.
        let ids = archived_ids(&up, &client, "starter").await;
        if ids.len() >= sent.len() || started.elapsed() > Duration::from_secs(90) {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let expected: BTreeMap<String, usize> = sent.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(sent.len(), 40);
    assert_eq!(ids, expected, "every call archived exactly once, and nothing else");

    // The cost report counts each once, and its total is the sum of its lines.
    let (today, tomorrow) = today_and_tomorrow();
    let report = up.get(&client, &format!("/v1/reports/cost?from={today}&to={tomorrow}&group_by=key")).await;
    let lines = report["lines"].as_array().unwrap();
    let starter: Vec<&Value> = lines.iter().filter(|line| line["key"] == "starter").collect();
    assert_eq!(starter.len(), 1, "{report}");
    assert_eq!(starter[0]["interactions"].as_u64().unwrap(), 40, "{report}");
    assert!(starter[0]["cost_nanos"].as_i64().unwrap() > 0);
    let cost: i64 = lines.iter().map(|line| line["cost_nanos"].as_i64().unwrap()).sum();
    assert_eq!(cost, report["total_cost_nanos"].as_i64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_reach_the_running_gateway_and_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &dir.path().join("up.log")).await;
    let client = reqwest::Client::new();

    // A new key, with a budget below one call's cost set before its first call.
    let (ok, made, stderr) =
        up.admin(&["keys", "create", "--id", "key_dana", "--org", "acme", "--team", "growth", "--user", "dana"]).await;
    assert!(ok, "{stderr}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tg-"), "{made}");
    let (ok, _, stderr) = up
        .admin(&[
            "--reason",
            "pilot cap",
            "budgets",
            "set",
            "dana-cap",
            "--subject",
            "key:key_dana",
            "--window",
            "day",
            "--limit-usd",
            "0.000001",
        ])
        .await;
    assert!(ok, "{stderr}");

    // Bad admin input is refused with the problem named, and changes nothing.
    let keys_before = up.get(&client, "/v1/admin/keys").await;
    let budgets_before = up.get(&client, "/v1/admin/budgets").await;
    let catalogs_before = up.get(&client, "/v1/admin/catalogs").await;
    let bad_catalog = dir.path().join("bad.toml");
    std::fs::write(&bad_catalog, "version = \"2099-01-01\"\neffective_from = \"2099-01-01\"\n[[models]]\nprovider = \"openai\"\nmodel = \"gpt-9\"\ninput_per_million = \"-3\"\noutput_per_million = \"1\"\n").unwrap();
    let not_toml = dir.path().join("not.toml");
    std::fs::write(&not_toml, "version = [unclosed").unwrap();
    let refusals: [(&[&str], &str); 6] = [
        (&["keys", "create", "--org", "acme", "--pii-guard", "sometimes"], "pii_guard"),
        (&["keys", "create", "--org", "bad org!"], "org"),
        (&["budgets", "set", "b-neg", "--subject", "team:growth", "--limit-usd=-5"], "limit-usd"),
        (
            &["budgets", "set", "b-nobody", "--subject", "team:nobody", "--limit-usd", "5"],
            "no key belongs to team `nobody`",
        ),
        (&["catalogs", "publish", bad_catalog.to_str().unwrap()], "gpt-9"),
        (&["catalogs", "publish", not_toml.to_str().unwrap()], "not a price catalog"),
    ];
    for (args, named) in refusals {
        let (ok, _, stderr) = up.admin(args).await;
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    // Straight at the API: unknown fields, a negative limit, a subject of no kind.
    for (path, body, named) in [
        ("/v1/admin/keys", json!({"org": "acme", "colour": "blue"}), "colour"),
        ("/v1/admin/keys", json!({"org": "acme", "secret_sha256": "00"}), "secret_sha256"),
        ("/v1/admin/keys", json!({"org": "acme", "requests_per_minute": "many"}), "requests_per_minute"),
    ] {
        let response =
            client.post(format!("{}{path}", up.query)).bearer_auth(&up.admin_token).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["parameter"], named, "{error}");
    }
    for (body, named) in [
        (json!({"subject": {"kind": "team", "id": "growth"}, "window": "day", "limit": -1}), "above zero"),
        (json!({"subject": {"kind": "galaxy", "id": "growth"}, "window": "day", "limit": 1}), "galaxy"),
        (json!({"subject": {"kind": "team", "id": "growth"}, "window": "fortnight", "limit": 1}), "fortnight"),
    ] {
        let response = client
            .put(format!("{}/v1/admin/budgets/b-bad", up.query))
            .bearer_auth(&up.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains(named), "{text}");
    }
    // A body that names another target than its path.
    for (path, body, named) in [
        ("/v1/admin/teams/growth", json!({"id": "research"}), "id"),
        ("/v1/admin/providers/self-hosted", json!({"name": "other", "kind": "openai", "base_url": "http://x"}), "name"),
    ] {
        let response =
            client.put(format!("{}{path}", up.query)).bearer_auth(&up.admin_token).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["parameter"], named, "{error}");
    }
    assert_eq!(up.get(&client, "/v1/admin/keys").await, keys_before);
    assert_eq!(up.get(&client, "/v1/admin/budgets").await, budgets_before);
    assert_eq!(up.get(&client, "/v1/admin/catalogs").await, catalogs_before);

    // The new key works at once; its first call spends the budget, and the processor's
    // decision cuts the key off.
    assert_eq!(up.chat(&client, &secret, false).await.0, StatusCode::OK, "the budget is not spent yet");
    let started = Instant::now();
    loop {
        let (status, _) = up.chat(&client, &secret, false).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(30), "no cutoff 30 s after the budget was spent");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The starter key, of another team, is not cut off.
    assert_eq!(up.chat(&client, &up.gateway_key.clone(), false).await.0, StatusCode::OK);

    // Revoked: the next request is refused.
    let (ok, _, stderr) = up.admin(&["--reason", "left the company", "keys", "revoke", "key_dana"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(up.chat(&client, &secret, false).await.0, StatusCode::UNAUTHORIZED);

    // A provider registered through the admin API serves its models at once, on a
    // gateway that was never told about it; removed, it serves them no more.
    let control = std::sync::Arc::new(tollgate_ingest::simulator::SimulatorControl::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let self_hosted = listener.local_addr().unwrap();
    tokio::spawn(tollgate_ingest::simulator::serve(
        listener,
        tollgate_ingest::simulator::router(std::sync::Arc::clone(&control)),
        std::future::pending(),
    ));
    let model = "llama-3.3-70b-versatile";
    let starter = up.gateway_key.clone();
    assert_eq!(up.chat_with(&client, &starter, model, false).await.0, StatusCode::NOT_FOUND);
    let (ok, _, stderr) = up
        .admin(&[
            "providers",
            "set",
            "self-hosted",
            "--kind",
            "openai",
            "--base-url",
            &format!("http://{self_hosted}"),
            "--provider",
            "groq",
            "--model",
            model,
        ])
        .await;
    assert!(ok, "{stderr}");
    assert_eq!(up.chat_with(&client, &starter, model, true).await.0, StatusCode::OK);
    assert_eq!(control.requests(), 1, "the call went to the registered provider");
    let listed: Value = client
        .get(format!("{}/v1/models", up.gateway))
        .bearer_auth(&starter)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["data"].as_array().unwrap().iter().any(|entry| entry["id"] == model), "{listed}");
    let (ok, _, stderr) =
        up.admin(&["providers", "set", "broken", "--kind", "openai", "--base-url", "ftp://files"]).await;
    assert!(!ok && stderr.contains("base_url"), "{stderr}");
    let (ok, _, stderr) =
        up.admin(&["providers", "set", "broken", "--kind", "carrier-pigeon", "--base-url", "http://x"]).await;
    assert!(!ok && stderr.contains("kind"), "{stderr}");
    let (ok, _, stderr) = up.admin(&["providers", "delete", "self-hosted"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(up.chat_with(&client, &starter, model, false).await.0, StatusCode::NOT_FOUND);

    // A new price catalog version is published; the same version again is refused.
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        tollgate_schemas::pricing::SHIPPED_CATALOG.replacen(
            "version = \"2026-11-01\"",
            "version = \"2026-12-01-negotiated\"",
            1,
        ),
    )
    .unwrap();
    let (ok, published, stderr) = up.admin(&["catalogs", "publish", catalog.to_str().unwrap()]).await;
    assert!(ok, "{stderr}");
    assert_eq!(published["version"], "2026-12-01-negotiated");
    let (ok, _, stderr) = up.admin(&["catalogs", "publish", catalog.to_str().unwrap()]).await;
    assert!(!ok && stderr.contains("published already"), "{stderr}");
    let (_, catalogs, _) = up.admin(&["catalogs", "list"]).await;
    assert!(catalogs["versions"].as_array().unwrap().contains(&json!("2026-12-01-negotiated")), "{catalogs}");

    // The history names the admin for each change, with the reasons given.
    let started = Instant::now();
    let history = loop {
        let (ok, history, stderr) = up.admin(&["history", "--limit", "500"]).await;
        assert!(ok, "{stderr}");
        let changes = history["items"].as_array().cloned().unwrap_or_default();
        let by_admin: Vec<Value> = changes.into_iter().filter(|change| change["actor"]["kind"] == "admin").collect();
        if by_admin.len() >= 6 || started.elapsed() > Duration::from_secs(60) {
            break by_admin;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let summary: Vec<(String, String, String, String)> = history
        .iter()
        .map(|change| {
            (
                change["target"]["kind"].as_str().unwrap_or_default().to_owned(),
                change["target"]["id"].as_str().unwrap_or_default().to_owned(),
                change["action"].as_str().unwrap_or_default().to_owned(),
                change["actor"]["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("virtual_key", "key_dana", "created", "admin"),
        ("budget", "dana-cap", "created", "admin"),
        ("virtual_key", "key_dana", "revoked", "admin"),
        ("provider", "self-hosted", "created", "admin"),
        ("provider", "self-hosted", "deleted", "admin"),
        ("price_catalog", "2026-12-01-negotiated", "created", "admin"),
    ]
    .map(|(kind, id, action, actor)| (kind.to_owned(), id.to_owned(), action.to_owned(), actor.to_owned()));
    assert_eq!(summary, expected, "{history:?}");
    assert_eq!(history[2]["reason"], "left the company");

    // Lifting: once, then there is nothing to lift; a team policy likewise.
    let (ok, lifted, stderr) = up.admin(&["budgets", "lift", "dana-cap"]).await;
    assert!(ok && lifted["lifted"] == "dana-cap", "{stderr}");
    let (ok, _, stderr) = up.admin(&["budgets", "lift", "dana-cap"]).await;
    assert!(!ok && stderr.contains("no budget `dana-cap` in force"), "{stderr}");
    let (ok, _, stderr) = up.admin(&["teams", "set", "growth", "--allow-model", "gpt-4o*"]).await;
    assert!(ok, "{stderr}");
    let (ok, deleted, stderr) = up.admin(&["teams", "delete", "growth"]).await;
    assert!(ok && deleted["deleted"] == "growth", "{stderr}");
    let (ok, _, stderr) = up.admin(&["teams", "delete", "growth"]).await;
    assert!(!ok && stderr.contains("404"), "{stderr}");
}

/// How long the demo traffic may take to fill every view.
const DEMO_FILL_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_page_to_each_role_in_headless_chromium() {
    let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TOLLGATE_TEST_PYTHON is not set: this test runs the pinned Selenium that `scripts/test` installs. Run `scripts/test`.")
    });
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &dir.path().join("up.log")).await;
    let client = reqwest::Client::new();

    // The demo traffic fills every view: wait until each has something in it.
    let (today, tomorrow) = today_and_tomorrow();
    let started = Instant::now();
    let interaction_id = loop {
        let violations = up.get(&client, &format!("/v1/reports/violations?from={today}&to={tomorrow}")).await;
        let budgets = up.get(&client, "/v1/budgets").await;
        let history = up.get(&client, "/v1/governance?limit=1").await;
        let health = up.get(&client, &format!("/v1/reports/health?from={today}&to={tomorrow}")).await;
        let outage = health["upstreams"].as_array().unwrap().iter().any(|timeline| {
            timeline["upstream"] == "openai"
                && timeline["windows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|window| window["moved"]["served_elsewhere"].as_i64() > Some(0))
        });
        let page = up.get(&client, "/v1/interactions?limit=100&outcome=ok").await;
        let with_content = page["interactions"].as_array().unwrap().iter().find(|priced| {
            priced["interaction"]["content"]["captured"]["request"].as_str().is_some_and(|text| !text.is_empty())
        });
        let blocked = budgets["budgets"].as_array().unwrap().iter().any(|budget| budget["state"] == "block");
        if let Some(priced) = with_content
            && violations["total"].as_i64().unwrap() > 0
            && blocked
            && !history["items"].as_array().unwrap().is_empty()
            && outage
        {
            break priced["interaction"]["id"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < DEMO_FILL_TIMEOUT,
            "the demo did not fill every view in time: {violations} {budgets} {health}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // The README's example: the official OpenAI SDK against the gateway, with the key
    // `up` printed.
    let snippet = format!(
        "from openai import OpenAI\n\
         client = OpenAI(base_url='{}/v1', api_key='{}')\n\
         reply = client.chat.completions.create(model='gpt-4o', messages=[{{'role': 'user', 'content': 'Hi'}}])\n\
         print(reply.choices[0].message.content)\n",
        up.gateway, up.gateway_key
    );
    let output = tokio::process::Command::new(&python).args(["-c", &snippet]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("You said: Hi"));

    let mut roles = vec![format!("admin={}", up.admin_token)];
    for role in ["auditor", "finance"] {
        let (ok, made, stderr) = up.admin(&["tokens", "create", &format!("dashboard-{role}"), "--role", role]).await;
        assert!(ok, "{stderr}");
        roles.push(format!("{role}={}", made["token"].as_str().unwrap()));
    }
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/dashboard_check.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&up.query)
        .arg(&shots)
        .arg(&interaction_id)
        .args(&roles)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the dashboard check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["problems"], json!([]));
    for role in ["admin", "auditor"] {
        assert!(report["roles"][role]["detail"]["content_blocks"].as_u64().unwrap() > 0, "{report}");
        assert!(report["roles"][role]["violations"]["chart_points"].as_u64().unwrap() > 0, "{report}");
    }
    assert!(report["roles"]["finance"]["performance"]["chart_points"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["roles"]["finance"]["performance"]["rows"].as_u64().unwrap() > 1,
        "latency and health rows: {report}"
    );
    assert_eq!(report["roles"]["finance"]["detail"]["content_blocks"], 0, "{report}");
    assert!(report["roles"]["finance"].get("violations").is_none(), "finance has no violations page: {report}");
    // The screenshots are kept as test artifacts.
    for name in [
        "admin-spend",
        "auditor-violations",
        "auditor-interaction-detail",
        "finance-interaction-detail",
        "finance-budgets",
        "finance-performance",
        "finance-performance-health",
    ] {
        let size = std::fs::metadata(shots.join(format!("{name}.png"))).map(|meta| meta.len()).unwrap_or(0);
        assert!(size > 5_000, "{name}.png is missing or blank ({size} bytes)");
    }
    eprintln!("dashboard screenshots: {}", shots.display());
}
