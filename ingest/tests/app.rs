//! The gateway's HTTP surface, driven in-process with `oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use support::{NARROW_KEY, TestGateway};
use tollgate_ingest::app::app;
use tower::ServiceExt;

async fn send(request: Request<Body>) -> (StatusCode, Value) {
    let gateway = TestGateway::start().await;
    let response = app(gateway.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let request =
        Request::get("/v1/models").header("authorization", format!("Bearer {NARROW_KEY}")).body(Body::empty()).unwrap();
    let (status, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"].as_array().unwrap().iter().map(|model| model["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gpt-4o-mini"]);
    assert_eq!(body["data"][0]["owned_by"], "openai");
}

#[tokio::test]
async fn models_without_a_valid_key_is_401_in_openai_layout() {
    for request in [
        Request::get("/v1/models").body(Body::empty()).unwrap(),
        Request::get("/v1/models").header("x-api-key", "tg-unknown").body(Body::empty()).unwrap(),
    ] {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"]["message"].is_string() && body["error"]["code"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_provider_layout() {
    let (status, body) = send(Request::get("/v1/nonsense").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_url");

    let (status, body) = send(Request::get("/v1/messages/batches/x").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!((body["type"].as_str(), body["error"]["type"].as_str()), (Some("error"), Some("not_found_error")));

    let (status, body) = send(Request::delete("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let (status, _) = send(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}
