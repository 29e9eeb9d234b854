//! The dashboard: a page served by the query API, built into the binary, with no build
//! step on the user's side (plain HTML, CSS and JavaScript, and Chart.js vendored under
//! `dashboard/vendor/`, MIT licensed).
//!
//! The page asks for a query API token, keeps it for the browser tab only, and calls the
//! same `/v1` endpoints as any client, so roles apply as they do there: finance sees
//! spend, budgets, performance (latency and reliability) and interactions without
//! content; auditors and admins also see content, violations and the governance history. Every chart and table is drawn from an
//! aggregate or a page the server computes; the page never downloads raw rows in bulk.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../dashboard/index.html");

/// The files under `/dashboard/`, with their content types.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../dashboard/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../dashboard/style.css")),
    ("chart.umd.min.js", "text/javascript; charset=utf-8", include_str!("../dashboard/vendor/chart.umd.min.js")),
];

/// What the page may load: its own files only (no inline script, no other origin).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/dashboard/{file}", get(file))
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "no-cache")], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
