//! The gateway's configuration: a TOML file, validated as a whole at start-up.
//!
//! The file is parsed into raw structs that refuse unknown fields (a typo is an error, not
//! a silently ignored setting), then checked into [`GatewayConfig`]. Every problem is
//! reported at once. Secrets never sit in the file: an upstream names the environment
//! variable holding its credential, and the environment is passed in as a map so tests
//! never touch the process environment. `gateway.example.toml` at the repository root is
//! the reference.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tollgate_eventlog::KafkaProperties;
use tollgate_schemas::{TeamPolicySpec, VirtualKeySpec};

use crate::keys::KeyStore;
use crate::policy::PiiMode;
use crate::recorder::{FullSpoolPolicy, RecorderConfig};

/// What kind of API an upstream speaks (the same as a governed provider's).
pub use tollgate_schemas::ProviderKind as UpstreamKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    keys: Vec<VirtualKeySpec>,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    capture: RawCapture,
    #[serde(default)]
    recording: RawRecording,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    teams: Vec<TeamPolicySpec>,
    #[serde(default)]
    mcp_servers: Vec<RawMcpServer>,
    /// librdkafka properties for the Kafka clients (with `--kafka-bootstrap-servers`).
    #[serde(default)]
    kafka: KafkaProperties,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcpServer {
    /// Served at `/mcp/{name}`; letters, digits, `-` and `_`.
    name: String,
    /// A local server: the program the gateway starts and speaks to over stdio.
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    /// Variables of the gateway's environment the command gets, by name. It starts with
    /// none of them but `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ` and `TMPDIR`.
    #[serde(default)]
    pass_env: Vec<String>,
    /// Environment values set for the command.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// A remote server: its Streamable HTTP endpoint.
    url: Option<String>,
    /// Environment variable holding a bearer token for the remote server.
    bearer_token_env: Option<String>,
    /// How long a request may wait for the server's answer. Default 60000.
    call_timeout_ms: Option<u64>,
    /// Calls per minute each key may make, by tool name (`*` for every tool without its
    /// own entry).
    #[serde(default)]
    tool_calls_per_minute: BTreeMap<String, u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    /// The prompt PII guard for keys and teams that set none: "off" (default), "redact"
    /// or "block".
    pii: Option<PiiMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecording {
    /// With events outstanding and no acknowledgement from the log for this long, new
    /// events go to the local spool. Default 2000.
    spool_after_ms: Option<u64>,
    /// Events the spool may hold. Default 10000000.
    spool_max_events: Option<u64>,
    /// "fail_open" (default: keep serving, count lost events) or "fail_closed" (answer
    /// 503 until the spool has room) when the spool is full.
    on_full_spool: Option<FullSpoolPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    /// Attempts on one target (the first try plus retries) before falling back to the
    /// next target. Default 2.
    attempts_per_target: Option<u32>,
    /// First retry delay; doubles per retry, with full jitter. Default 100.
    backoff_initial_ms: Option<u64>,
    /// Largest retry delay. Default 2000.
    backoff_max_ms: Option<u64>,
    /// A `Retry-After` longer than this sends the request to the next target instead of
    /// waiting. Default 5000.
    max_retry_after_ms: Option<u64>,
    /// Consecutive unhealthy answers (connect errors, timeouts, 429, 5xx) that open an
    /// upstream's circuit breaker. Default 5.
    breaker_failure_threshold: Option<u32>,
    /// How long an open breaker keeps traffic away before one probe is let through.
    /// Default 30000.
    breaker_cool_down_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    /// What of each request and response is kept in the recorded event: "off" (sizes
    /// only), "digests" (sizes and SHA-256 digests, the default), "full" (the text too),
    /// or "redacted" (the text with PII and secrets replaced).
    mode: Option<CaptureMode>,
    /// The most of each side (request, response) kept as captured text, counted as JSON;
    /// the rest is cut, with a marker naming the original size. Default 262144. Keep twice
    /// this, plus 64 KiB, under the log's record limit (Kafka's `message.max.bytes`).
    max_bytes: Option<usize>,
}

/// The least `capture.max_bytes` may be: room for the cut marker and some text.
const MIN_CAPTURE_BYTES: usize = 1024;

/// How much of a call's content goes into its recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    /// Sizes only.
    Off,
    /// Sizes and SHA-256 digests of the request and the response.
    Digests,
    /// Digests and the full text.
    Full,
    /// Digests and the text with PII and secrets replaced by placeholders.
    Redacted,
}

/// Retry, fallback and circuit-breaker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    pub attempts_per_target: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_retry_after: Duration,
    pub breaker_failure_threshold: u32,
    pub breaker_cool_down: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            attempts_per_target: 2,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(2_000),
            max_retry_after: Duration::from_millis(5_000),
            breaker_failure_threshold: 5,
            breaker_cool_down: Duration::from_millis(30_000),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// Address to listen on. Default `127.0.0.1:8080`.
    listen: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 4 MiB.
    max_body_bytes: Option<usize>,
    /// Threads serving connections, each with its own event loop. Default: one per core.
    threads: Option<usize>,
    /// Name of this replica in events (`gateway_instance`). Default `gateway`.
    instance_id: Option<String>,
    /// `Host` header values the MCP routes accept (a guard against DNS rebinding), as host
    /// names or `host:port`. Default: `localhost`, `127.0.0.1` and `::1`; an empty list
    /// accepts every host (for deployments behind a proxy that checks it).
    mcp_allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// Unique name, referenced by model targets.
    name: String,
    kind: UpstreamKind,
    /// Base URL without the `/v1` suffix, for example `https://api.openai.com`.
    base_url: String,
    /// `gen_ai.provider.name` recorded for calls served here. Default: the kind.
    provider: Option<String>,
    /// Environment variable holding the credential. Absent for servers without auth.
    api_key_env: Option<String>,
    /// Default 2000.
    connect_timeout_ms: Option<u64>,
    /// Whole-request timeout (first byte for streams). Default 120000.
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    /// The public model name clients send.
    name: String,
    /// Upstream targets in order of preference: the first serves, the rest are fallbacks.
    targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    upstream: String,
    /// Model name sent upstream. Default: the public name.
    model: Option<String>,
}

/// Where an MCP server lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A local program spoken to over stdio, started and restarted by the gateway.
    /// Its environment is [`crate::mcp_transport::BASE_ENV`] and `pass_env` from the
    /// gateway's, then `env`.
    Stdio { command: String, args: Vec<String>, pass_env: Vec<String>, env: BTreeMap<String, String> },
    /// A remote Streamable HTTP endpoint.
    Http { url: String, bearer_token: Option<String> },
}

/// One MCP server behind `/mcp/{name}`.
#[derive(Debug, Clone)]
pub struct McpServerConfig {
    pub name: String,
    pub transport: McpTransport,
    pub call_timeout: Duration,
    /// Calls per minute per key, by tool name; `*` applies to tools without an entry.
    pub tool_calls_per_minute: BTreeMap<String, std::num::NonZeroU32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Threads serving connections ([`crate::run`]); each has its own event loop and its
    /// own upstream connection pools.
    pub threads: usize,
    pub instance_id: String,
    pub upstreams: BTreeMap<String, Upstream>,
    /// Public model name -> targets in order of preference.
    pub models: BTreeMap<String, Vec<Target>>,
    /// The keys of the configuration file, built. A gateway that follows the governance
    /// topic publishes `key_specs` and `teams` there and serves the keys it builds from
    /// the topic instead.
    pub keys: KeyStore,
    pub key_specs: Vec<VirtualKeySpec>,
    pub teams: BTreeMap<String, TeamPolicySpec>,
    /// The PII guard of keys and teams that set none.
    pub global_pii: PiiMode,
    pub routing: RoutingConfig,
    pub capture: CaptureMode,
    /// The most of each side of captured content kept, as JSON (see
    /// [`tollgate_schemas::limits::bound_captured`]).
    pub capture_max_bytes: usize,
    pub recording: RecorderConfig,
    /// MCP servers by name.
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    pub mcp_allowed_hosts: Vec<String>,
    /// librdkafka properties for the Kafka clients.
    pub kafka: KafkaProperties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub kind: UpstreamKind,
    pub base_url: String,
    pub provider: String,
    /// The credential, read from the named environment variable.
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub upstream: String,
    pub model: String,
}

impl Upstream {
    /// The upstream a provider registered through governance describes, with its
    /// credential read through `variable` (the gateway's environment).
    pub fn from_spec(
        spec: &tollgate_schemas::ProviderSpec,
        variable: impl Fn(&str) -> Option<String>,
    ) -> Result<Upstream, String> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let api_key = match &spec.api_key_env {
            Some(name) => match variable(name) {
                Some(value) if !value.is_empty() => Some(value),
                _ => return Err(format!("environment variable {name} is not set on this gateway")),
            },
            None => None,
        };
        Ok(Upstream {
            name: spec.name.clone(),
            kind: spec.kind,
            base_url: spec.base_url.trim_end_matches('/').to_owned(),
            provider: spec.provider.clone().unwrap_or_else(|| match spec.kind {
                UpstreamKind::Openai => "openai".to_owned(),
                UpstreamKind::Anthropic => "anthropic".to_owned(),
            }),
            api_key,
            connect_timeout: Duration::from_millis(spec.connect_timeout_ms.unwrap_or(2_000)),
            request_timeout: Duration::from_millis(spec.request_timeout_ms.unwrap_or(120_000)),
        })
    }
}

/// Everything wrong with a configuration, one problem per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid gateway configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// The most serving threads `server.threads` accepts.
pub const MAX_THREADS: usize = 1024;

/// One serving thread per core.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl GatewayConfig {
    /// Parses and validates `text`, reading credentials from `environment`.
    pub fn from_toml(text: &str, environment: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|error| ConfigError { problems: vec![error.to_string().trim().to_owned()] })?;
        let mut problems = Vec::new();

        let listen_text = raw.server.listen.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen_text.parse().unwrap_or_else(|_| {
            problems.push(format!("server.listen `{listen_text}` is not an address like 127.0.0.1:8080"));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if max_body_bytes == 0 {
            problems.push("server.max_body_bytes must be greater than zero".to_owned());
        }
        let threads = raw.server.threads.unwrap_or_else(default_threads);
        if !(1..=MAX_THREADS).contains(&threads) {
            problems.push(format!("server.threads must be between 1 and {MAX_THREADS}"));
        }

        let mut upstreams = BTreeMap::new();
        for raw_upstream in raw.upstreams {
            let name = raw_upstream.name.clone();
            if upstreams.contains_key(&name) {
                problems.push(format!("upstream `{name}` is declared twice"));
                continue;
            }
            if !(raw_upstream.base_url.starts_with("http://") || raw_upstream.base_url.starts_with("https://")) {
                problems.push(format!(
                    "upstream `{name}`: base_url `{}` must start with http:// or https://",
                    raw_upstream.base_url
                ));
            }
            let api_key = match &raw_upstream.api_key_env {
                Some(variable) => match environment.get(variable) {
                    Some(value) if !value.is_empty() => Some(value.clone()),
                    _ => {
                        problems.push(format!("upstream `{name}`: environment variable {variable} is not set"));
                        None
                    }
                },
                None => None,
            };
            let provider = raw_upstream.provider.unwrap_or_else(|| match raw_upstream.kind {
                UpstreamKind::Openai => "openai".to_owned(),
                UpstreamKind::Anthropic => "anthropic".to_owned(),
            });
            upstreams.insert(
                name.clone(),
                Upstream {
                    name,
                    kind: raw_upstream.kind,
                    base_url: raw_upstream.base_url.trim_end_matches('/').to_owned(),
                    provider,
                    api_key,
                    connect_timeout: Duration::from_millis(raw_upstream.connect_timeout_ms.unwrap_or(2_000)),
                    request_timeout: Duration::from_millis(raw_upstream.request_timeout_ms.unwrap_or(120_000)),
                },
            );
        }

        let mut models = BTreeMap::new();
        let mut seen_models = HashSet::new();
        for raw_model in raw.models {
            if !seen_models.insert(raw_model.name.clone()) {
                problems.push(format!("model `{}` is declared twice", raw_model.name));
                continue;
            }
            if raw_model.targets.is_empty() {
                problems.push(format!("model `{}` has no targets", raw_model.name));
            }
            let mut targets = Vec::with_capacity(raw_model.targets.len());
            for target in raw_model.targets {
                if !upstreams.contains_key(&target.upstream) {
                    problems.push(format!("model `{}`: unknown upstream `{}`", raw_model.name, target.upstream));
                }
                targets.push(Target {
                    upstream: target.upstream,
                    model: target.model.unwrap_or_else(|| raw_model.name.clone()),
                });
            }
            models.insert(raw_model.name, targets);
        }

        let mcp_servers = mcp_servers(raw.mcp_servers, environment, &mut problems);

        let global_pii = raw.guard.pii.unwrap_or_default();
        let mut teams = BTreeMap::new();
        for team in raw.teams {
            if teams.contains_key(&team.id) {
                problems.push(format!("team `{}` is declared twice", team.id));
            }
            teams.insert(team.id.clone(), team);
        }
        let (keys, key_problems) = KeyStore::build(raw.keys.iter().map(|key| (key, false)), &teams, global_pii, None);
        problems.extend(key_problems);

        let defaults = RoutingConfig::default();
        let ms = |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let routing = RoutingConfig {
            attempts_per_target: raw.routing.attempts_per_target.unwrap_or(defaults.attempts_per_target),
            backoff_initial: ms(raw.routing.backoff_initial_ms, defaults.backoff_initial),
            backoff_max: ms(raw.routing.backoff_max_ms, defaults.backoff_max),
            max_retry_after: ms(raw.routing.max_retry_after_ms, defaults.max_retry_after),
            breaker_failure_threshold: raw
                .routing
                .breaker_failure_threshold
                .unwrap_or(defaults.breaker_failure_threshold),
            breaker_cool_down: ms(raw.routing.breaker_cool_down_ms, defaults.breaker_cool_down),
        };
        if routing.attempts_per_target == 0 {
            problems.push("routing.attempts_per_target must be at least 1".to_owned());
        }
        if routing.breaker_failure_threshold == 0 {
            problems.push("routing.breaker_failure_threshold must be at least 1".to_owned());
        }
        if routing.backoff_max < routing.backoff_initial {
            problems.push("routing.backoff_max_ms must not be below routing.backoff_initial_ms".to_owned());
        }

        let recording_defaults = RecorderConfig::default();
        let recording = RecorderConfig {
            spool_after: ms(raw.recording.spool_after_ms, recording_defaults.spool_after),
            spool_max_events: raw.recording.spool_max_events.unwrap_or(recording_defaults.spool_max_events),
            on_full_spool: raw.recording.on_full_spool.unwrap_or(recording_defaults.on_full_spool),
        };
        if recording.spool_after.is_zero() {
            problems.push("recording.spool_after_ms must be greater than zero".to_owned());
        }
        let capture_max_bytes = raw.capture.max_bytes.unwrap_or(tollgate_schemas::limits::DEFAULT_MAX_CAPTURE_BYTES);
        if capture_max_bytes < MIN_CAPTURE_BYTES {
            problems.push(format!("capture.max_bytes must be at least {MIN_CAPTURE_BYTES}"));
        }

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(GatewayConfig {
            listen,
            max_body_bytes,
            threads,
            instance_id: raw.server.instance_id.unwrap_or_else(|| "gateway".to_owned()),
            upstreams,
            models,
            keys,
            key_specs: raw.keys,
            teams,
            global_pii,
            routing,
            capture: raw.capture.mode.unwrap_or(CaptureMode::Digests),
            capture_max_bytes,
            recording,
            mcp_servers,
            mcp_allowed_hosts: raw
                .server
                .mcp_allowed_hosts
                .unwrap_or_else(|| vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()]),
            kafka: raw.kafka,
        })
    }
}

fn mcp_servers(
    raw: Vec<RawMcpServer>,
    environment: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, McpServerConfig> {
    let mut servers = BTreeMap::new();
    for server in raw {
        let name = server.name;
        if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
            problems.push(format!("mcp server `{name}`: a name may hold only letters, digits, `-` and `_`"));
        }
        if servers.contains_key(&name) {
            problems.push(format!("mcp server `{name}` is declared twice"));
            continue;
        }
        let transport = match (server.command, server.url) {
            (Some(command), None) => {
                if server.bearer_token_env.is_some() {
                    problems.push(format!("mcp server `{name}`: bearer_token_env applies only to a url"));
                }
                McpTransport::Stdio { command, args: server.args, pass_env: server.pass_env, env: server.env }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.push(format!("mcp server `{name}`: url `{url}` must start with http:// or https://"));
                }
                if !server.args.is_empty() || !server.env.is_empty() || !server.pass_env.is_empty() {
                    problems.push(format!("mcp server `{name}`: args, env and pass_env apply only to a command"));
                }
                let bearer_token = match &server.bearer_token_env {
                    Some(variable) => match environment.get(variable) {
                        Some(value) if !value.is_empty() => Some(value.clone()),
                        _ => {
                            problems.push(format!("mcp server `{name}`: environment variable {variable} is not set"));
                            None
                        }
                    },
                    None => None,
                };
                McpTransport::Http { url, bearer_token }
            }
            _ => {
                problems.push(format!("mcp server `{name}`: give exactly one of `command` (stdio) and `url` (HTTP)"));
                continue;
            }
        };
        let mut tool_calls_per_minute = BTreeMap::new();
        for (tool, limit) in server.tool_calls_per_minute {
            match std::num::NonZeroU32::new(limit) {
                Some(limit) => {
                    tool_calls_per_minute.insert(tool, limit);
                }
                None => {
                    problems.push(format!("mcp server `{name}`: tool_calls_per_minute for `{tool}` must be above zero"))
                }
            }
        }
        let call_timeout = Duration::from_millis(server.call_timeout_ms.unwrap_or(60_000));
        if call_timeout.is_zero() {
            problems.push(format!("mcp server `{name}`: call_timeout_ms must be greater than zero"));
        }
        servers.insert(name.clone(), McpServerConfig { name, transport, call_timeout, tool_calls_per_minute });
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment() -> HashMap<String, String> {
        HashMap::from([
            ("OPENAI_API_KEY".to_owned(), "sk-live".to_owned()),
            ("ANTHROPIC_API_KEY".to_owned(), "sk-ant-live".to_owned()),
        ])
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../gateway.example.toml");
        let config = GatewayConfig::from_toml(text, &environment()).unwrap();
        assert!(config.models.values().all(|targets| !targets.is_empty()));
        assert!(config.upstreams.values().any(|upstream| upstream.kind == UpstreamKind::Anthropic));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-api-key", axum::http::HeaderValue::from_static("tg-example-secret"));
        assert_eq!(config.keys.authenticate(&headers).unwrap().principal.team_id.as_deref(), Some("platform"));
    }

    #[test]
    fn the_simulated_example_is_valid_and_its_key_works() {
        let text = include_str!("../../examples/gateway-simulated.toml");
        let config = GatewayConfig::from_toml(text, &HashMap::new()).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("authorization", axum::http::HeaderValue::from_static("Bearer tg-try-me"));
        assert_eq!(config.keys.authenticate(&headers).unwrap().principal.key_id, "key_try");
    }

    #[test]
    fn defaults_and_targets() {
        let config = GatewayConfig::from_toml(
            r#"
            [[upstreams]]
            name = "primary"
            kind = "openai"
            base_url = "http://127.0.0.1:9000/"
            api_key_env = "OPENAI_API_KEY"

            [[models]]
            name = "gpt-4o"
            targets = [{ upstream = "primary" }, { upstream = "primary", model = "gpt-4o-mini" }]
            "#,
            &environment(),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.threads, std::thread::available_parallelism().unwrap().get(), "one serving thread per core");
        let upstream = &config.upstreams["primary"];
        assert_eq!((upstream.base_url.as_str(), upstream.provider.as_str()), ("http://127.0.0.1:9000", "openai"));
        assert_eq!(upstream.api_key.as_deref(), Some("sk-live"));
        assert_eq!(config.models["gpt-4o"][1], Target { upstream: "primary".into(), model: "gpt-4o-mini".into() });
    }

    #[test]
    fn serving_threads_are_bounded() {
        assert_eq!(GatewayConfig::from_toml("[server]\nthreads = 3\n", &environment()).unwrap().threads, 3);
        for threads in [0, MAX_THREADS + 1] {
            let error =
                GatewayConfig::from_toml(&format!("[server]\nthreads = {threads}\n"), &environment()).unwrap_err();
            assert!(error.to_string().contains("server.threads must be between 1 and 1024"), "{error}");
        }
    }

    #[test]
    fn kafka_properties_win_over_the_defaults() {
        let config = GatewayConfig::from_toml(
            r#"
            [kafka.properties]
            "security.protocol" = "SASL_SSL"
            [kafka.producer_properties]
            "compression.type" = "none"
            "message.timeout.ms" = "60000"
            "#,
            &environment(),
        )
        .unwrap();
        let mut kafka = tollgate_eventlog::KafkaConfig::new("kafka:9092");
        config.kafka.apply(&mut kafka);
        crate::recorder::gateway_kafka_config(&mut kafka);
        assert_eq!(kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(kafka.producer_properties["compression.type"], "none");
        assert_eq!(kafka.producer_properties["message.timeout.ms"], "60000", "the configured value wins");
        assert_eq!(kafka.consumer_properties["fetch.wait.max.ms"], "50", "a default stays where none is configured");

        let error = GatewayConfig::from_toml("[kafka]\nproducer = { linger_ms = 5 }\n", &environment()).unwrap_err();
        assert!(error.to_string().contains("unknown field `producer`"), "{error}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let error = GatewayConfig::from_toml(
            r#"
            [server]
            listen = "not an address"
            max_body_bytes = 0

            [[upstreams]]
            name = "a"
            kind = "anthropic"
            base_url = "ftp://example"
            api_key_env = "MISSING_KEY"

            [[models]]
            name = "m"
            targets = [{ upstream = "nowhere" }]

            [[models]]
            name = "empty"
            targets = []

            [[keys]]
            id = "k"
            secret_sha256 = "abc"
            org = "acme"
            allowed_models = ["[bad"]
            "#,
            &environment(),
        )
        .unwrap_err();
        let text = error.to_string();
        for expected in
            ["server.listen", "max_body_bytes", "ftp://", "MISSING_KEY", "unknown upstream `nowhere`", "no targets"]
        {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(error.problems.len(), 8);
    }

    #[test]
    fn mcp_servers_and_tool_lists() {
        let config = GatewayConfig::from_toml(
            r#"
            [[keys]]
            id = "agent"
            secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
            org = "acme"
            team = "agents"
            allowed_tools = ["time/*", "search/*"]
            denied_tools = ["search/delete_*"]

            [[teams]]
            id = "agents"
            denied_tools = ["time/convert_time"]

            [[mcp_servers]]
            name = "time"
            command = "mcp-server-time"
            args = ["--local-timezone", "UTC"]

            [[mcp_servers]]
            name = "search"
            url = "https://tools.example/mcp"
            bearer_token_env = "OPENAI_API_KEY"
            tool_calls_per_minute = { web = 30 }
            "#,
            &environment(),
        )
        .unwrap();
        assert_eq!(
            config.mcp_servers["search"].transport,
            McpTransport::Http { url: "https://tools.example/mcp".into(), bearer_token: Some("sk-live".into()) }
        );
        assert_eq!(config.mcp_servers["search"].tool_calls_per_minute["web"].get(), 30);
        assert_eq!(config.mcp_servers["time"].call_timeout, Duration::from_secs(60));
        let key = config.keys.iter().next().unwrap();
        assert!(key.tools.allows("time", "get_current_time"));
        assert!(!key.tools.allows("time", "convert_time"), "the team's deny-list applies");
        assert!(key.tools.allows("search", "web"));
        assert!(!key.tools.allows("search", "delete_index"), "the key's deny-list applies");
        assert!(!key.tools.allows("files", "read"), "outside the key's allow-list");

        let error = GatewayConfig::from_toml(
            r#"
            [[mcp_servers]]
            name = "bad name"
            command = "x"
            url = "http://y"

            [[mcp_servers]]
            name = "remote"
            url = "ftp://z"
            tool_calls_per_minute = { "*" = 0 }
            "#,
            &environment(),
        )
        .unwrap_err();
        let text = error.to_string();
        for expected in ["letters, digits", "exactly one of", "ftp://z", "must be above zero"] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_settings_are_errors() {
        let error =
            GatewayConfig::from_toml("[server]\nlisten_adress = \"127.0.0.1:1\"\n", &environment()).unwrap_err();
        assert!(error.to_string().contains("listen_adress"), "{error}");
    }
}
