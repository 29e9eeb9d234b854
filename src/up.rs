//! `tollgate up`: the gateway, the processor and the query API in one process, on the
//! embedded log and a Parquet archive under one data directory.
//!
//! The services are the same code as in a distributed deployment, wired to the embedded
//! parts: one shared `EmbeddedLog` instead of Kafka, DataFusion over the archive instead
//! of ClickHouse. Everything durable lives under `--data-dir`: the log (`log/`), the
//! archive (`archive/`) and `credentials.toml`, the secrets made on first start (a
//! gateway key, an admin token for the query API and dashboard, the archive's signing
//! key). A restart resumes from what is there: the processor from its checkpoints, every
//! service's governance view from the log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use tollgate_ingest::config::GatewayConfig;
use tollgate_processor::ProcessorConfig;
use tollgate_query_api::auth::{Role, TokenConfig};
use tollgate_query_api::server::QueryApiConfig;
use tollgate_schemas::pricing::PriceCatalog;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the log, the archive and the credentials live.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    pub data_dir: PathBuf,
    /// Where the gateway listens.
    #[arg(long, env = "TOLLGATE_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,
    /// Where the query API and the dashboard listen.
    #[arg(long, env = "TOLLGATE_QUERY_API_LISTEN", default_value = "127.0.0.1:8081")]
    pub query_api_listen: SocketAddr,
    /// A gateway configuration (`gateway.example.toml`) for upstreams, models, keys and
    /// policies. Default: OpenAI and Anthropic, for whichever of `OPENAI_API_KEY` and
    /// `ANTHROPIC_API_KEY` is set, or the simulated provider with --demo.
    #[arg(long, env = "TOLLGATE_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Add a simulated provider (OpenAI- and Anthropic-compatible) behind the gateway's
    /// models, for trying Tollgate without a provider account.
    #[arg(long)]
    pub demo: bool,
}

/// The secrets `tollgate up` makes on first start and reads on every later one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// A virtual key for the gateway (`Authorization: Bearer ...`), id `starter`.
    pub gateway_key: String,
    /// An admin token for the query API and the dashboard.
    pub admin_token: String,
    /// Signs the archive's Merkle log checkpoints.
    pub signing_key: String,
    /// Checks them (give it to auditors).
    pub verifier_key: String,
}

const CREDENTIALS_FILE: &str = "credentials.toml";

impl Credentials {
    /// The credentials under `data_dir`, made (and written, readable by the owner only)
    /// if there are none yet.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(CREDENTIALS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        }
        let (signing_key, verifier_key) = tollgate_archive::transparency::generate_key("tollgate-up")?;
        let credentials = Credentials {
            gateway_key: format!("tg-{}", uuid::Uuid::new_v4().simple()),
            admin_token: format!("tg_{}", uuid::Uuid::new_v4().simple()),
            signing_key,
            verifier_key,
        };
        let text = format!(
            "# Made by `tollgate up` on first start. It holds secrets: keep it private.\n{}",
            toml::to_string(&credentials)?
        );
        write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        Ok(credentials)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The gateway configuration `up` uses when none is given and not in demo mode: the
/// real providers whose credential is in the environment, and the starter key, allowed
/// every model.
fn default_gateway_config(
    environment: &std::collections::HashMap<String, String>,
    key: &str,
) -> anyhow::Result<String> {
    let mut text = String::from("[server]\ninstance_id = \"up\"\n\n");
    let has = |variable: &str| environment.get(variable).is_some_and(|value| !value.is_empty());
    let (openai, anthropic) = (has("OPENAI_API_KEY"), has("ANTHROPIC_API_KEY"));
    anyhow::ensure!(
        openai || anthropic,
        "no model provider to send traffic to: set OPENAI_API_KEY or ANTHROPIC_API_KEY, give a gateway \
         configuration with --config (see gateway.example.toml), or try `tollgate up --demo` for a \
         simulated provider"
    );
    let mut models = Vec::new();
    if openai {
        text.push_str(
            "[[upstreams]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com\"\n\
             api_key_env = \"OPENAI_API_KEY\"\n\n",
        );
        models.extend(OPENAI_MODELS.iter().map(|model| (*model, "openai")));
    }
    if anthropic {
        text.push_str(
            "[[upstreams]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\n\
             api_key_env = \"ANTHROPIC_API_KEY\"\n\n",
        );
        models.extend(ANTHROPIC_MODELS.iter().map(|model| (*model, "anthropic")));
    }
    for (model, upstream) in models {
        text.push_str(&format!("[[models]]\nname = \"{model}\"\ntargets = [{{ upstream = \"{upstream}\" }}]\n\n"));
    }
    text.push_str(&format!(
        "[[keys]]\nid = \"starter\"\nsecret_sha256 = \"{}\"\norg = \"local\"\nteam = \"local\"\nuser = \"you\"\n",
        tollgate_ingest::keys::hash_secret(key)
    ));
    Ok(text)
}

/// The public models `up` routes by default, all in the shipped price catalog.
pub const OPENAI_MODELS: &[&str] =
    &["gpt-5", "gpt-5-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "o4-mini", "text-embedding-3-small"];
pub const ANTHROPIC_MODELS: &[&str] = &["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"];

/// The addresses and secrets of a running `up`, for the banner and the demo.
#[derive(Debug, Clone)]
pub struct Running {
    pub gateway: SocketAddr,
    pub query_api: SocketAddr,
    pub data_dir: PathBuf,
    pub credentials: Credentials,
    /// The key the banner's examples use, when the configuration has the starter key.
    pub example_key: Option<String>,
    pub example_model: Option<String>,
}

/// Runs everything until `shutdown` resolves.
pub async fn run(args: UpArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let credentials = Credentials::load_or_create(&data_dir)?;
    let log_dir = data_dir.join("log");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(&log_dir)).with_context(|| {
        format!("opening the embedded log in {} (is another `tollgate up` using it?)", log_dir.display())
    })?);
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL)
        .await
        .context("creating Tollgate's topics")?;
    let archive_dir = data_dir.join("archive");
    std::fs::create_dir_all(&archive_dir).with_context(|| format!("creating {}", archive_dir.display()))?;
    let (stop, stopped) = watch::channel(false);
    let stopped_signal = {
        let stopped = stopped.clone();
        move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        }
    };

    // The simulated providers, for --demo.
    let simulator = if args.demo {
        let mut started = Vec::new();
        for _ in 0..3 {
            let listener =
                tokio::net::TcpListener::bind("127.0.0.1:0").await.context("starting the simulated provider")?;
            let address = listener.local_addr()?;
            let control = Arc::new(tollgate_ingest::simulator::SimulatorControl::realistic());
            let router = tollgate_ingest::simulator::router(Arc::clone(&control));
            tokio::spawn(tollgate_ingest::simulator::serve(listener, router, stopped_signal()));
            started.push((address, control));
        }
        let simulators =
            crate::demo::Simulators { main: started[0].0, openai: started[1].0, openai_backup: started[2].0 };
        Some((simulators, Arc::clone(&started[1].1)))
    } else {
        None
    };

    // The gateway.
    let environment: std::collections::HashMap<String, String> = std::env::vars().collect();
    let (gateway_text, config_actor) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the gateway configuration {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let text = match &simulator {
                Some((simulators, _)) => crate::demo::gateway_config(
                    *simulators,
                    &tollgate_ingest::keys::hash_secret(&credentials.gateway_key),
                ),
                None => default_gateway_config(&environment, &credentials.gateway_key)?,
            };
            (text, "tollgate up".to_owned())
        }
    };
    let mut gateway_config = GatewayConfig::from_toml(&gateway_text, &environment)?;
    gateway_config.listen = args.gateway_listen;
    let example_key = gateway_config
        .key_specs
        .iter()
        .any(|key| key.secret_sha256 == tollgate_ingest::keys::hash_secret(&credentials.gateway_key))
        .then(|| credentials.gateway_key.clone());
    let example_model = ["gpt-4o-mini", "claude-haiku-4-5"]
        .iter()
        .find(|model| gateway_config.models.contains_key(**model))
        .map(|model| (*model).to_owned())
        .or_else(|| gateway_config.models.keys().next().cloned());
    let catalog = PriceCatalog::shipped()?;
    let (gateway_state, gateway_listener, gateway_governance) =
        crate::start_gateway(gateway_config, Arc::clone(&log), None, catalog.clone(), &config_actor).await?;
    let gateway_address = gateway_listener.local_addr()?;
    let gateway = tokio::spawn(tollgate_ingest::run(gateway_listener, gateway_state, stopped_signal()));

    // The processor: prices, budgets, violations, the signed Parquet archive.
    let mut processor_config = ProcessorConfig { instance_id: "up".to_owned(), ..ProcessorConfig::default() };
    let mut archive = tollgate_processor::config::ArchiveConfig::new(archive_dir.display().to_string());
    // Small files, written often: on a laptop, fresh reports matter more than file size.
    archive.roll_interval = Duration::from_secs(5);
    archive.signing_key = Some(credentials.signing_key.clone());
    processor_config.archive = Some(archive);
    if args.demo {
        processor_config.budgets = crate::demo::budgets();
    }
    let sources = tollgate_processor::Sources {
        catalog,
        catalog_document: Some(toml::from_str(tollgate_schemas::pricing::SHIPPED_CATALOG)?),
        config_actor: "tollgate up".to_owned(),
    };
    let metrics = Arc::new(tollgate_processor::metrics::ProcessorMetrics::default());
    let processor =
        tokio::spawn(tollgate_processor::run(Arc::clone(&log), processor_config, sources, metrics, stopped_signal()));

    // The query API and dashboard.
    let query_config = QueryApiConfig {
        listen: args.query_api_listen,
        archive: archive_dir.display().to_string(),
        verifier_key: Some(credentials.verifier_key.clone()),
        tokens: vec![TokenConfig {
            name: "admin".to_owned(),
            sha256: tollgate_query_api::auth::token_hash(&credentials.admin_token),
            role: Role::Admin,
        }],
        ..QueryApiConfig::default()
    };
    // An admin change returns once the gateway here has it in force too.
    let router =
        tollgate_query_api::server::router_waiting_for(&query_config, Arc::clone(&log), vec![gateway_governance])
            .await?;
    let query_listener = tokio::net::TcpListener::bind(query_config.listen)
        .await
        .with_context(|| format!("listening on {} for the query API", query_config.listen))?;
    let query_address = query_listener.local_addr()?;
    let query_api = tokio::spawn(tollgate_query_api::server::serve(query_listener, router, stopped_signal()));

    let running = Running {
        gateway: gateway_address,
        query_api: query_address,
        data_dir: data_dir.clone(),
        credentials,
        example_key,
        example_model,
    };
    eprintln!("{}", banner(&running));
    let demo = simulator.map(|(_, openai)| {
        eprintln!(
            "Demo traffic is running: four teams of two organisations, with keys tg-demo-alice, tg-demo-bob,\n\
             tg-demo-carol and tg-demo-dan; marketing (carol) runs through its daily budget and is cut off.\n\
             The simulated OpenAI primary fails for 20 s every three minutes (first at 30 s); the gateway\n\
             falls back to openai-backup, and the Performance page shows the outage.\n"
        );
        tokio::spawn(crate::demo::run(gateway_address, openai))
    });

    shutdown.await;
    if let Some(demo) = demo {
        demo.abort();
    }
    let _ = stop.send(true);
    // The gateway finishes its requests and flushes its events before the processor stops.
    let _ = gateway.await;
    let _ = query_api.await;
    match processor.await {
        Ok(Err(error)) => tracing::error!(%error, "the processor stopped with an error"),
        Err(error) => tracing::error!(%error, "the processor task failed"),
        Ok(Ok(())) => {}
    }
    drop(stopped);
    tracing::info!("stopped");
    Ok(())
}

/// What `up` prints once everything listens.
pub fn banner(running: &Running) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_secs() / 86_400).unwrap_or(0));
    let date = |days: i64| {
        chrono::DateTime::from_timestamp(days * 86_400, 0)
            .map_or_else(String::new, |time| time.format("%Y-%m-%d").to_string())
    };
    let (today, tomorrow) = (date(days), date(days + 1));
    let gateway = format!("http://{}", running.gateway);
    let query = format!("http://{}", running.query_api);
    let mut text = format!(
        "\nTollgate is up.\n\n  gateway     {gateway}/v1  (OpenAI- and Anthropic-compatible)\n  dashboard   {query}/  (sign in with the admin token)\n  query API   {query}/v1  (OpenAPI at {query}/openapi.json)\n  data        {}\n\n  admin token {}\n",
        running.data_dir.display(),
        running.credentials.admin_token,
    );
    if let (Some(key), Some(model)) = (&running.example_key, &running.example_model) {
        text.push_str(&format!(
            "  gateway key {key}\n\nTry it:\n\n  curl -s {gateway}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n\nThen see what it cost (the archive is written every few seconds):\n\n  curl -s '{query}/v1/reports/cost?from={today}&to={tomorrow}&group_by=team,model' \\\n    -H 'Authorization: Bearer {}'\n",
            running.credentials.admin_token
        ));
    }
    text.push_str("\nThe secrets above are kept in credentials.toml in the data directory. Ctrl-C stops.\n");
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests fail by panicking.

    use std::collections::HashMap;

    use super::*;

    #[test]
    fn without_a_provider_credential_up_says_what_to_do() {
        let error = default_gateway_config(&HashMap::new(), "tg-secret").unwrap_err().to_string();
        assert!(error.contains("OPENAI_API_KEY") && error.contains("--demo") && error.contains("--config"), "{error}");
    }

    #[test]
    fn the_providers_with_a_credential_serve_their_models_to_the_starter_key() {
        let environment = HashMap::from([("ANTHROPIC_API_KEY".to_owned(), "sk-ant-test".to_owned())]);
        let text = default_gateway_config(&environment, "tg-secret").unwrap();
        let config = GatewayConfig::from_toml(&text, &environment).unwrap();
        assert_eq!(config.upstreams.keys().collect::<Vec<_>>(), ["anthropic"]);
        assert!(config.models.contains_key("claude-sonnet-4-5") && !config.models.contains_key("gpt-4o"));
        let starter = &config.key_specs[0];
        assert_eq!(starter.secret_sha256, tollgate_ingest::keys::hash_secret("tg-secret"));
        assert_eq!(starter.allowed_models, None);
    }

    #[test]
    fn credentials_are_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Credentials::load_or_create(dir.path()).unwrap();
        let again = Credentials::load_or_create(dir.path()).unwrap();
        assert_eq!(
            (first.gateway_key.as_str(), first.admin_token.as_str()),
            (again.gateway_key.as_str(), again.admin_token.as_str())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(CREDENTIALS_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_demo_configuration_is_valid() {
        let nowhere = "127.0.0.1:9".parse().unwrap();
        let simulators = crate::demo::Simulators { main: nowhere, openai: nowhere, openai_backup: nowhere };
        let text = crate::demo::gateway_config(simulators, &"0".repeat(64));
        let config = GatewayConfig::from_toml(&text, &HashMap::new()).unwrap();
        assert_eq!(config.key_specs.len(), 5);
        assert!(config.mcp_servers.contains_key("crm"));
        for (id, spec) in crate::demo::budgets() {
            spec.validate().unwrap_or_else(|problem| panic!("{id}: {problem}"));
        }
    }
}
