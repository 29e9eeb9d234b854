//! The official OpenAI and Anthropic Python SDKs, driving the simulated provider over real
//! HTTP, parse every response it gives (JSON and streams) as they would a real provider's.
//! This is what lets gateway tests trust the simulator as an upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

use std::sync::Arc;

use serde_json::Value;
use tollgate_ingest::simulator::{SimulatorControl, router, simulated_tokens};

/// Environment variable naming the Python interpreter that has the pinned SDKs.
const PYTHON_ENV: &str = "TOLLGATE_TEST_PYTHON";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_understand_the_simulator() {
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| {
        panic!("{PYTHON_ENV} is not set: this test needs the pinned Python SDKs that `scripts/test` installs. Run `scripts/test`.")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let control = Arc::new(SimulatorControl::default());
    let server = tokio::spawn(axum::serve(listener, router(Arc::clone(&control))).into_future());

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/simulator_check.py");
    let output =
        tokio::process::Command::new(&python).arg(script).arg(format!("http://{address}")).output().await.unwrap();
    server.abort();
    assert!(output.status.success(), "the SDK script failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();

    let chat = &result["chat"];
    assert!(chat["content"].as_str().unwrap().contains("Name a prime number."));
    assert_eq!(chat["prompt_tokens"], simulated_tokens("Name a prime number."));
    let streamed = result["chat_stream"]["content"].as_str().unwrap();
    assert!(streamed.contains("Stream please."), "{streamed}");
    assert_eq!(result["chat_stream"]["completion_tokens"], simulated_tokens(streamed));
    assert_eq!(result["embeddings"]["count"], 2);
    assert!(result["models"].as_array().unwrap().iter().any(|model| model == "gpt-4o"));
    assert!(result["messages"]["content"].as_str().unwrap().contains("Hello, Claude."));
    assert_eq!(result["messages"]["input_tokens"], simulated_tokens("Hello, Claude."));
    let claude_streamed = result["messages_stream"]["content"].as_str().unwrap();
    assert!(claude_streamed.contains("Stream, Claude."), "{claude_streamed}");
    assert_eq!(result["messages_stream"]["output_tokens"], simulated_tokens(claude_streamed));
    assert_eq!(control.requests(), 6, "one upstream request per SDK call");
}
