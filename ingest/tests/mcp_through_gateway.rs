//! The official `mcp` Python SDK's client against the gateway's MCP proxy, with a real
//! MCP server from PyPI (`mcp-server-time`, started by the gateway over stdio) and a
//! Streamable HTTP server written with the SDK (`tests/python/mcp_notes_server.py`),
//! recording to the real Kafka-API broker that `scripts/test` starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::TestGateway;
use tollgate_eventlog::testing::{KAFKA_BROKERS_ENV, required_env};
use tollgate_eventlog::{EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::keys::hash_secret;
use tollgate_schemas::{Call, Interaction, OutcomeStatus};

const PYTHON_ENV: &str = "TOLLGATE_TEST_PYTHON";
/// Org `acme`, team `agents`: may call `time/*` and `notes/*` but not
/// `notes/delete_everything` (its own deny-list) nor `time/convert_time` (its team's).
const AGENT_KEY: &str = "tg-test-agent";

fn python_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python"))
}

/// The gateway configuration for the MCP servers, with `notes` at `notes_url`.
fn mcp_config(python: &str, notes_url: &str) -> String {
    let bin = PathBuf::from(python).parent().unwrap().to_path_buf();
    format!(
        r#"
        [[keys]]
        id = "key_agent"
        secret_sha256 = "{agent}"
        org = "acme"
        team = "agents"
        user = "bot"
        allowed_tools = ["time/*", "notes/*", "local/*"]
        denied_tools = ["notes/delete_everything"]

        [[teams]]
        id = "agents"
        denied_tools = ["time/convert_time"]

        [[mcp_servers]]
        name = "time"
        command = "{time}"
        args = ["--local-timezone", "UTC"]

        [[mcp_servers]]
        name = "notes"
        url = "{notes_url}"

        [[mcp_servers]]
        name = "local"
        command = "{python}"
        args = ["{notes_script}", "stdio"]
        call_timeout_ms = 30000
        "#,
        agent = hash_secret(AGENT_KEY),
        time = bin.join("mcp-server-time").display(),
        notes_script = python_dir().join("mcp_notes_server.py").display(),
    )
}

/// Runs `mcp_check.py` and returns its output lines by step.
async fn check(python: &str, gateway: &TestGateway, key: &str, scenario: &str) -> BTreeMap<String, Value> {
    let output = tokio::process::Command::new(python)
        .arg(python_dir().join("mcp_check.py"))
        .arg(format!("http://{}", gateway.address))
        .arg(key)
        .arg(scenario)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "mcp_check.py {scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (value["step"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// Starts the notes server on a free port and waits until it answers.
async fn notes_server(python: &str) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = tokio::process::Command::new(python)
        .arg(python_dir().join("mcp_notes_server.py"))
        .arg(port.to_string())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (child, format!("http://127.0.0.1:{port}/mcp"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the notes server did not start on port {port}");
}

fn tool_calls(events: &[Interaction]) -> Vec<(&Interaction, &tollgate_schemas::ToolCall)> {
    events
        .iter()
        .map(|event| match &event.call {
            Call::ToolCall(call) => (event, call),
            Call::ModelCall(_) => panic!("a model call from an MCP session: {event:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_sdk_through_the_gateway_with_every_request_on_the_broker() {
    let python = required_env(PYTHON_ENV);
    let mut kafka = KafkaConfig::new(required_env(KAFKA_BROKERS_ENV));
    tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(kafka).unwrap());
    let (_notes, notes_url) = notes_server(&python).await;
    let mut gateway = TestGateway::start_with(&mcp_config(&python, &notes_url), Some(log), None).await;

    // A real server from PyPI over stdio.
    let time = check(&python, &gateway, AGENT_KEY, "time").await;
    assert_eq!(time["initialized"]["server"], "mcp-time");
    let names: Vec<&str> = time["tools"]["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(names, ["get_current_time"], "the denied convert_time is not listed");
    assert_eq!(time["allowed"]["is_error"], false);
    assert!(time["allowed"]["text"].as_str().unwrap().contains("Europe/Paris"), "{}", time["allowed"]);
    assert_eq!(time["denied"]["raised"], true, "{}", time["denied"]);
    assert_eq!(time["denied"]["code"], -32003);
    assert!(time["denied"]["message"].as_str().unwrap().contains("denied by policy"), "{}", time["denied"]);

    // A Streamable HTTP server written with the SDK.
    let notes = check(&python, &gateway, AGENT_KEY, "notes").await;
    assert_eq!(notes["initialized"]["server"], "notes");
    let names: Vec<&str> = notes["tools"]["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(names, ["add_note", "count_notes", "pid", "wait"]);
    assert_eq!(notes["allowed"]["text"], "stored note 1: budget review at 3pm");
    assert_eq!(notes["denied"]["code"], -32003);

    // A wrong key never gets a session.
    let refused = check(&python, &gateway, "tg-not-a-key", "badkey").await;
    assert_eq!(refused["badkey"]["raised"], true, "{}", refused["badkey"]);
    assert_eq!(refused["sent"]["methods"]["initialize"], 1);

    // One event per JSON-RPC request the SDK sent with a valid key, method by method.
    let mut sent: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (server, output) in [("time", &time), ("notes", &notes)] {
        for (method, count) in output["sent"]["methods"].as_object().unwrap() {
            *sent.entry((server.to_owned(), method.clone())).or_default() += count.as_u64().unwrap();
        }
    }
    let expected: u64 = sent.values().sum();
    assert!(expected >= 8, "initialize, tools/list and two tools/call per server at least: {sent:?}");
    gateway.stop().await;
    let events = gateway.interactions(usize::try_from(expected).unwrap()).await;
    let mut recorded: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (event, call) in tool_calls(&events) {
        *recorded.entry((call.server.clone(), call.method.clone())).or_default() += 1;
        assert_eq!(event.principal.key_id, "key_agent");
        assert_eq!(event.principal.team_id.as_deref(), Some("agents"));
        assert!(event.content.request_sha256.is_some() && event.content.response_sha256.is_some(), "{event:?}");
        if call.method != "initialize" {
            assert!(call.session_id.is_some(), "a session id on every request after initialize: {event:?}");
        }
        if call.method == "tools/call" {
            let tool = call.tool.as_deref().unwrap();
            let expected_status = match tool {
                "convert_time" | "delete_everything" => OutcomeStatus::BlockedByPolicy,
                _ => OutcomeStatus::Ok,
            };
            assert_eq!(event.outcome.status, expected_status, "{event:?}");
            assert!(event.content.response_bytes > 0);
        }
    }
    assert_eq!(recorded, sent, "recorded events by server and method against requests sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_killed_mid_call_gives_an_error_and_is_restarted() {
    let python = required_env(PYTHON_ENV);
    let mut gateway = TestGateway::start_with(&mcp_config(&python, "http://127.0.0.1:9/mcp"), None, None).await;
    let started = std::time::Instant::now();
    let output = check(&python, &gateway, AGENT_KEY, "kill").await;
    let in_flight = &output["in_flight"];
    assert_eq!(in_flight["raised"], true, "the call in flight fails: {in_flight}");
    assert_eq!(in_flight["code"], -32010, "{in_flight}");
    assert!(in_flight["message"].as_str().unwrap().contains("exited"), "{in_flight}");
    assert!(in_flight["seconds"].as_f64().unwrap() < 10.0, "the error comes promptly: {in_flight}");
    let restarted = &output["restarted"];
    assert_ne!(restarted["first_pid"], restarted["second_pid"], "a new process serves the next session");
    assert_eq!(gateway.state.mcp.server("local").unwrap().connections(), 2);
    assert!(started.elapsed() < Duration::from_secs(20));

    gateway.stop().await;
    let events = gateway.interactions(1).await;
    let in_flight_event = tool_calls(&events)
        .into_iter()
        .find(|(_, call)| call.tool.as_deref() == Some("wait"))
        .map(|(event, _)| event.clone())
        .unwrap();
    assert_eq!(in_flight_event.outcome.status, OutcomeStatus::UpstreamUnreachable);
}
