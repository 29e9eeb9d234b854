//! Talking to providers: pooled HTTP clients and one circuit breaker per upstream.
//!
//! Each upstream gets its own `reqwest` clients (connection pool with HTTP/1.1 keep-alive,
//! HTTP/2 negotiated by ALPN over TLS) with that upstream's connect timeout: one per
//! serving thread ([`crate::serve`]), so a request and the upstream connection it uses are
//! driven by the same event loop. The request
//! timeout is applied by the caller around the wait for response headers (and, for a
//! non-streaming call, the body), never around a stream that is already flowing.
//!
//! Credentials are the gateway's, from the configuration: a client's own `Authorization`
//! or `x-api-key` (its virtual key) is never sent upstream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::breaker::CircuitBreaker;
use crate::config::{GatewayConfig, RoutingConfig, Target, Upstream, UpstreamKind};

/// The Anthropic API version sent when the client names none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Client headers passed on to an upstream of the given kind.
const ANTHROPIC_PASSTHROUGH: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// The paths the gateway forwards to, whose URLs are parsed once per upstream.
const FORWARDED_PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages"];

/// One configured upstream with its client and breaker.
#[derive(Debug)]
pub struct UpstreamClient {
    pub config: Upstream,
    /// One client per serving thread, by [`crate::serve::thread_index`].
    clients: Vec<reqwest::Client>,
    pub breaker: CircuitBreaker,
    /// `base_url` + path for each forwarded path, parsed at start-up.
    urls: BTreeMap<&'static str, reqwest::Url>,
}

/// Every configured upstream by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_name: BTreeMap<String, Arc<UpstreamClient>>,
}

/// Where each public model goes: the upstreams and, per model, its targets in order.
#[derive(Debug, Default)]
pub struct Routes {
    pub upstreams: Upstreams,
    pub models: BTreeMap<String, Vec<Target>>,
}

/// The routes in force, replaced whole when governance registers or removes a provider.
#[derive(Debug, Default)]
pub struct RouteTable {
    current: std::sync::RwLock<Arc<Routes>>,
}

impl RouteTable {
    pub fn new(routes: Routes) -> Self {
        RouteTable { current: std::sync::RwLock::new(Arc::new(routes)) }
    }

    /// The routes now; a request keeps the snapshot it started with.
    pub fn load(&self) -> Arc<Routes> {
        Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn store(&self, routes: Routes) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
    }
}

impl Upstreams {
    /// Builds the clients of every upstream in `config`, one per serving thread.
    pub fn new(config: &GatewayConfig) -> Result<Self, reqwest::Error> {
        Self::build(config.upstreams.values(), &config.routing, config.threads, None)
    }

    /// Builds `threads` clients for each upstream in `upstreams`. An upstream whose settings
    /// are the same in `previous` keeps its clients (and their pooled connections) and its
    /// breaker.
    pub fn build<'a>(
        upstreams: impl IntoIterator<Item = &'a Upstream>,
        routing: &RoutingConfig,
        threads: usize,
        previous: Option<&Upstreams>,
    ) -> Result<Self, reqwest::Error> {
        let mut by_name = BTreeMap::new();
        for upstream in upstreams {
            let name = &upstream.name;
            if let Some(kept) =
                previous.and_then(|previous| previous.by_name.get(name)).filter(|kept| kept.config == *upstream)
            {
                by_name.insert(name.clone(), Arc::clone(kept));
                continue;
            }
            let clients = (0..threads.max(1)).map(|_| client(upstream)).collect::<Result<_, _>>()?;
            let breaker = CircuitBreaker::new(routing.breaker_failure_threshold, routing.breaker_cool_down);
            let urls = FORWARDED_PATHS
                .into_iter()
                .filter_map(|path| {
                    reqwest::Url::parse(&format!("{}{path}", upstream.base_url)).ok().map(|url| (path, url))
                })
                .collect();
            by_name.insert(name.clone(), Arc::new(UpstreamClient { config: upstream.clone(), clients, breaker, urls }));
        }
        Ok(Upstreams { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamClient>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<UpstreamClient>> {
        self.by_name.values()
    }
}

/// A pooled client for `upstream`.
fn client(upstream: &Upstream) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(upstream.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        // A provider API does not redirect; following one could carry the gateway's
        // credential elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl UpstreamClient {
    /// The calling serving thread's client. Its connections are driven by that thread's
    /// event loop; a thread that does not serve (a test's, a background task's) gets the
    /// first.
    fn client(&self) -> &reqwest::Client {
        let index = crate::serve::thread_index() % self.clients.len().max(1);
        // `build` makes at least one client.
        &self.clients[index]
    }

    /// A POST of `body` to `path` (for example `/v1/chat/completions`) with the gateway's
    /// credential and the client headers this provider needs.
    pub fn post(
        &self,
        path: &str,
        client_headers: &HeaderMap,
        traceparent: Option<&str>,
        body: bytes::Bytes,
    ) -> reqwest::RequestBuilder {
        let url = match self.urls.get(path) {
            Some(url) => url.clone(),
            None => match reqwest::Url::parse(&format!("{}{path}", self.config.base_url)) {
                Ok(url) => url,
                // The base URL was checked at start-up; keep the error for reqwest to report.
                Err(_) => return self.client().post(format!("{}{path}", self.config.base_url)),
            },
        };
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self.config.kind {
            UpstreamKind::Openai => {
                if let Some(key) = &self.config.api_key
                    && let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}"))
                {
                    headers.insert(axum::http::header::AUTHORIZATION, value);
                }
            }
            UpstreamKind::Anthropic => {
                if let Some(key) = &self.config.api_key
                    && let Ok(value) = HeaderValue::from_str(key)
                {
                    headers.insert("x-api-key", value);
                }
                for name in ANTHROPIC_PASSTHROUGH {
                    if let Some(value) = client_headers.get(name) {
                        headers.insert(HeaderName::from_static(name), value.clone());
                    }
                }
                headers.entry("anthropic-version").or_insert(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
            }
        }
        if let Some(traceparent) = traceparent
            && let Ok(value) = HeaderValue::from_str(traceparent)
        {
            headers.insert("traceparent", value);
        }
        if let Some(state) = client_headers.get("tracestate") {
            headers.insert("tracestate", state.clone());
        }
        self.client().post(url).headers(headers).body(body)
    }
}

/// Response headers not passed back to the client: hop-by-hop headers; the length and
/// encoding, which the gateway's own server sets for the body it sends; cookies, which
/// belong to the gateway's session with the provider, not the client's; and the
/// provider account the gateway's credential belongs to (`openai-organization`,
/// `openai-project`, `anthropic-organization-id`), which a client holding a virtual key
/// has no business learning.
pub fn is_passed_back(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "set-cookie"
            | "set-cookie2"
            | "openai-organization"
            | "openai-project"
            | "anthropic-organization-id"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail by panicking.

    use super::*;

    #[test]
    fn cookies_and_the_provider_account_are_not_passed_back() {
        for name in ["set-cookie", "Set-Cookie", "openai-organization", "openai-project", "anthropic-organization-id"] {
            let name = HeaderName::try_from(name).unwrap();
            assert!(!is_passed_back(&name), "{name}");
        }
        for name in
            ["content-type", "x-request-id", "openai-processing-ms", "request-id", "x-ratelimit-remaining-tokens"]
        {
            assert!(is_passed_back(&HeaderName::from_static(name)), "{name}");
        }
    }
}
