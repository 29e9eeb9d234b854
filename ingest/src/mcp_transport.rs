//! How the gateway reaches an MCP server: the child process of a stdio server and the
//! HTTP client of a remote one. Both keep the gateway's secrets to the gateway.
//!
//! - A stdio server starts with an empty environment plus [`BASE_ENV`] (taken from the
//!   gateway's), the variables its configuration passes through by name (`pass_env`) and
//!   the values it sets (`env`). Provider keys and tokens in the gateway's environment
//!   never reach a tool server unless its configuration names them.
//! - The HTTP client follows no redirect: a 3xx from a tool server is an error, so tool
//!   arguments and the bearer token are never resent to wherever a `Location` points.

use std::collections::BTreeMap;

/// Variables a stdio server gets from the gateway's environment without being named:
/// where programs are and the locale, none of them a secret.
pub const BASE_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// The command that starts a stdio server, with the environment described above.
/// `parent` is the gateway's environment (`std::env::var_os`).
pub fn stdio_command(
    command: &str,
    args: &[String],
    pass_env: &[String],
    env: &BTreeMap<String, String>,
    parent: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> tokio::process::Command {
    let mut process = tokio::process::Command::new(command);
    process.args(args).env_clear().kill_on_drop(true);
    for name in BASE_ENV.iter().copied().chain(pass_env.iter().map(String::as_str)) {
        if let Some(value) = parent(name) {
            process.env(name, value);
        }
    }
    process.envs(env);
    process
}

/// The client for remote servers: no redirects followed.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

    use super::*;

    /// The environment `env` prints when started the way a stdio server is.
    async fn child_environment(pass_env: &[String], env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let parent = |name: &str| match name {
            "PATH" => std::env::var_os("PATH"),
            "HOME" => Some("/home/gateway".into()),
            "OPENAI_API_KEY" => Some("sk-secret".into()),
            "GITHUB_TOKEN" => Some("ghp-for-the-tool".into()),
            _ => None,
        };
        let output = stdio_command("env", &[], pass_env, env, parent).output().await.unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn a_stdio_server_gets_only_the_base_and_the_named_variables() {
        // The test process's own environment (cargo sets CARGO and others) must not leak
        // either: the child starts empty.
        assert!(std::env::vars().any(|(name, _)| !BASE_ENV.contains(&name.as_str())));
        let env = BTreeMap::from([("TZ".to_owned(), "UTC".to_owned())]);
        let got = child_environment(&["GITHUB_TOKEN".to_owned()], &env).await;
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(names, ["GITHUB_TOKEN", "HOME", "PATH", "TZ"]);
        assert_eq!(got["HOME"], "/home/gateway");
        assert_eq!(got["GITHUB_TOKEN"], "ghp-for-the-tool");
        assert_eq!(got["TZ"], "UTC");

        let got = child_environment(&[], &BTreeMap::new()).await;
        assert!(!got.contains_key("OPENAI_API_KEY") && !got.contains_key("GITHUB_TOKEN"), "{got:?}");
    }

    #[tokio::test]
    async fn the_http_client_does_not_follow_a_redirect() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let resent = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&resent);
        let app = axum::Router::new()
            .route(
                "/mcp",
                axum::routing::post(|| async {
                    (axum::http::StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, "/elsewhere")])
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::post(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { "{}" }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let response = http_client()
            .unwrap()
            .post(format!("http://{address}/mcp"))
            .bearer_auth("tool-token")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(resent.load(Ordering::SeqCst), 0, "the call was resent to the redirect's target");
    }
}
