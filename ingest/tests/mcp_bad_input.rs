//! Malformed and hostile JSON-RPC on the MCP routes: each gets the status and the JSON-RPC
//! error code the specifications prescribe, in a JSON-RPC body, never reaches a server,
//! never crashes the gateway, and is recorded once when it carried a valid key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use proptest::prelude::*;
use serde_json::{Value, json};
use support::{TEAM_KEY, TestGateway, http, json_value};
use tollgate_schemas::limits::{MAX_ID_BYTES, MAX_NAME_BYTES};
use tollgate_schemas::{Call, OutcomeStatus};

/// An MCP server that is never reached: everything here is refused before it.
const CONFIG: &str = r#"
    [[mcp_servers]]
    name = "remote"
    url = "http://127.0.0.1:9/mcp"
"#;

/// Name, body, extra headers, then the expected status, JSON-RPC code and echoed id.
type Case = (&'static str, Vec<u8>, &'static [(&'static str, &'static str)], u16, i64, Value);

const ACCEPT: &str = "application/json, text/event-stream";

async fn post(
    gateway: &TestGateway,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = http().post(gateway.url(path)).header("accept", ACCEPT).body(body);
    let mut has_content_type = false;
    for (name, value) in headers {
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        request = request.header(*name, *value);
    }
    if !has_content_type {
        request = request.header("content-type", "application/json");
    }
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert!(body["error"]["code"].is_i64() && body["error"]["message"].is_string(), "{body}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_rpc_gets_the_prescribed_codes() {
    let mut gateway = TestGateway::start_with(CONFIG, None, None).await;
    let batch: Vec<Value> = (0..1_000).map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "ping"})).collect();
    let long_method = json!({"jsonrpc": "2.0", "id": 9, "method": "m".repeat(MAX_NAME_BYTES + 1)});
    let long_tool = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
        "params": {"name": "t".repeat(MAX_NAME_BYTES + 1), "arguments": {}}});
    let long_session: &'static str = "s".repeat(MAX_ID_BYTES + 1).leak();
    let long_session_header: &'static [(&'static str, &'static str)] = vec![("mcp-session-id", long_session)].leak();
    let cases: Vec<Case> = vec![
        ("method too long", serde_json::to_vec(&long_method).unwrap(), &[], 400, -32600, json!(9)),
        ("tool name too long", serde_json::to_vec(&long_tool).unwrap(), &[], 400, -32602, json!(10)),
        (
            "session id too long",
            br#"{"jsonrpc":"2.0","id":11,"method":"tools/list"}"#.to_vec(),
            long_session_header,
            400,
            -32600,
            Value::Null,
        ),
        ("bad JSON", b"{\"jsonrpc\": \"2.0\", ".to_vec(), &[], 400, -32700, Value::Null),
        ("invalid UTF-8", vec![0x7b, 0xff, 0xfe, 0x7d], &[], 400, -32700, Value::Null),
        ("not an object", b"\"hello\"".to_vec(), &[], 400, -32600, Value::Null),
        ("wrong version", br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_vec(), &[], 400, -32600, json!(1)),
        ("no version", br#"{"id":"a","method":"ping"}"#.to_vec(), &[], 400, -32600, json!("a")),
        ("missing method", br#"{"jsonrpc":"2.0","id":2}"#.to_vec(), &[], 400, -32600, json!(2)),
        ("empty method", br#"{"jsonrpc":"2.0","id":3,"method":""}"#.to_vec(), &[], 400, -32600, json!(3)),
        ("method not a string", br#"{"jsonrpc":"2.0","id":4,"method":7}"#.to_vec(), &[], 400, -32600, json!(4)),
        ("object id", br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#.to_vec(), &[], 400, -32600, Value::Null),
        (
            "params not an object",
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":[1]}"#.to_vec(),
            &[],
            400,
            -32602,
            json!(5),
        ),
        ("empty batch", b"[]".to_vec(), &[], 400, -32600, Value::Null),
        ("batch", serde_json::to_vec(&batch).unwrap(), &[], 400, -32600, Value::Null),
        ("oversized", vec![b' '; 70_000], &[], 413, -32600, Value::Null),
        (
            "unknown session",
            br#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#.to_vec(),
            &[("mcp-session-id", "no-such-session")],
            404,
            -32600,
            json!(6),
        ),
        ("no session", br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#.to_vec(), &[], 400, -32600, json!(7)),
        (
            "not JSON content type",
            br#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#.to_vec(),
            &[("content-type", "text/plain")],
            415,
            -32600,
            json!(8),
        ),
    ];
    for (name, body, headers, status, code, id) in &cases {
        let (got_status, got) = post(&gateway, "/mcp/remote", Some(TEAM_KEY), headers, body.clone()).await;
        assert_eq!((got_status, got["error"]["code"].as_i64().unwrap()), (*status, *code), "{name}: {got}");
        assert_eq!(&got["id"], id, "{name}: {got}");
    }

    let (status, body) =
        post(&gateway, "/mcp/remote", None, &[], br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (401, Some(-32001)));
    let (status, body) = post(&gateway, "/mcp/remote", Some("tg-wrong"), &[], b"{}".to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (401, Some(-32001)));
    let (status, body) = post(&gateway, "/mcp/elsewhere", Some(TEAM_KEY), &[], b"{}".to_vec()).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("remote"), "names the servers it has: {body}");

    assert_eq!(http().get(gateway.url("/healthz")).send().await.unwrap().status(), 200);
    assert!(!gateway.state.mcp.server("remote").unwrap().connected());

    gateway.stop().await;
    let events = gateway.interactions(cases.len()).await;
    assert_eq!(events.len(), cases.len(), "one event per refused request with a valid key, none for the rest");
    for event in &events {
        assert_eq!(event.outcome.status, OutcomeStatus::InvalidRequest, "{event:?}");
        let Call::ToolCall(call) = &event.call else { panic!("{event:?}") };
        assert_eq!(call.server, "remote");
        assert!(call.method.len() <= MAX_NAME_BYTES, "recorded cut: {}", call.method.len());
        assert!(call.tool.as_ref().is_none_or(|tool| tool.len() <= MAX_NAME_BYTES));
        assert!(call.session_id.as_ref().is_none_or(|session| session.len() <= MAX_ID_BYTES));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_message_gets_a_json_rpc_answer(
        bodies in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..96),
            json_value().prop_map(|value| value.to_string().into_bytes()),
            (json_value(), json_value()).prop_map(|(id, params)| {
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string().into_bytes()
            }),
        ], 1..6)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let mut gateway = TestGateway::start_with(CONFIG, None, None).await;
            for body in &bodies {
                let (status, answer) = post(&gateway, "/mcp/remote", Some(TEAM_KEY), &[], body.clone()).await;
                assert!((400..500).contains(&status), "{status}: {answer}");
            }
            assert_eq!(http().get(gateway.url("/healthz")).send().await.unwrap().status(), 200);
            gateway.stop().await;
            let events = gateway.interactions(bodies.len()).await;
            assert_eq!(events.len(), bodies.len());
        });
    }
}
