//! The `tollgate` binary: one executable, a subcommand per service. `main` only parses
//! arguments and wires; the work lives in the library crates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tollgate_eventlog::{EmbeddedLog, EmbeddedLogConfig, EventLog, KafkaConfig, KafkaLog};
use tollgate_ingest::app::GatewayState;
use tollgate_ingest::config::GatewayConfig;
use tollgate_ingest::recorder::Recorder;
use tollgate_processor::ProcessorConfig;
use tollgate_schemas::pricing::PriceCatalog;

mod admin;
mod demo;
mod up;

/// mimalloc: the gateway allocates per request (bodies, JSON, events) from many threads,
/// where glibc's allocator showed up at about a tenth of the CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "Event-sourced governance and audit pipeline for AI traffic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway, the processor and the query API with its dashboard in one
    /// process, on the embedded log and a Parquet archive under --data-dir: no Kafka or
    /// ClickHouse needed.
    Up(up::UpArgs),
    /// Change what Tollgate enforces, through the query API's admin endpoints: virtual
    /// keys, team policies, budgets and price catalogs.
    Admin(admin::AdminArgs),
    /// Print the JSON Schema of every event, or write them as files into a directory.
    Schemas {
        /// Directory to write `<event>.json` files into; prints to stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the topics Tollgate uses, with their default partitions and cleanup policy.
    Topics,
    /// Run the gateway: the provider-compatible proxy that records every interaction.
    Gateway(GatewayArgs),
    /// Run the stream processor: prices every interaction, keeps budgets and publishes
    /// quota decisions for gateways to enforce, and detects policy violations.
    Processor(ProcessorArgs),
    /// Run the read-only query API (cost reports, interaction search) over the Parquet
    /// archive.
    QueryApi(QueryApiArgs),
    /// Make an API token for the query API: prints the token (for its holder only) and the
    /// `[[tokens]]` entry, which holds only its hash, for the configuration.
    Token {
        /// Who will hold it, as the access log will name them.
        name: String,
        /// finance, auditor or admin.
        #[arg(long, default_value = "finance")]
        role: String,
    },
    /// Check the archive's stored interactions against its signed checkpoints and report
    /// every altered, missing or reordered record. Exits with status 1 if any is found.
    Verify {
        /// The archive: a directory or an `s3://` URL (the `AWS_*` variables configure S3).
        #[arg(long, env = "TOLLGATE_ARCHIVE")]
        archive: String,
        /// The verifier key of the checkpoints' signer (`name+id+key`, from `tollgate keygen`).
        #[arg(long, env = "TOLLGATE_ARCHIVE_VERIFIER_KEY")]
        verifier_key: String,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a key pair for signing the archive's checkpoints: the signing key (for the
    /// processor's `archive.signing_key`) on the first line, the verifier key (for
    /// `tollgate verify` and auditors) on the second.
    Keygen {
        /// The log's name, for example your host name.
        name: String,
    },
    /// Run a simulated model provider (OpenAI- and Anthropic-compatible, with streaming)
    /// to try the gateway without a provider account.
    Simulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// The gateway's configuration file; `gateway.example.toml` documents every setting.
    #[arg(long, env = "TOLLGATE_GATEWAY_CONFIG", default_value = "gateway.toml")]
    config: PathBuf,
    /// Address to listen on, overriding `server.listen`.
    #[arg(long, env = "TOLLGATE_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Kafka bootstrap servers (`host:port,...`). Without them the gateway records to the
    /// embedded log under --data-dir.
    #[arg(long, env = "TOLLGATE_KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// The local durable spool that holds events while Kafka is unreachable.
    #[arg(long, env = "TOLLGATE_SPOOL_DIR", default_value = "./tollgate-spool")]
    spool_dir: PathBuf,
    /// Where the embedded log lives when no Kafka servers are given.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    data_dir: PathBuf,
    /// The price catalog used for budget reservations (TOML, the format of
    /// `pricing/catalog.toml`). Default: the catalog built into this binary.
    #[arg(long, env = "TOLLGATE_PRICE_CATALOG")]
    price_catalog: Option<PathBuf>,
    /// Threads serving connections, each with its own event loop, overriding
    /// `server.threads` (default: one per core).
    #[arg(long, env = "TOLLGATE_GATEWAY_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Check the configuration, print a summary, and exit.
    #[arg(long)]
    validate: bool,
}

#[derive(Debug, clap::Args)]
struct QueryApiArgs {
    /// The query API's configuration file; `query-api.example.toml` documents every setting.
    #[arg(long, env = "TOLLGATE_QUERY_API_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `listen`.
    #[arg(long, env = "TOLLGATE_QUERY_API_LISTEN")]
    listen: Option<SocketAddr>,
    /// The Parquet archive (a directory or an `s3://` URL), overriding `archive`.
    #[arg(long, env = "TOLLGATE_ARCHIVE")]
    archive: Option<String>,
    /// Kafka bootstrap servers (`host:port,...`) for the access log, overriding
    /// `kafka.bootstrap_servers`. Without any, access events go to the embedded log under
    /// --data-dir (which no other process may have open).
    #[arg(long, env = "TOLLGATE_KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// Where the embedded log lives when no Kafka servers are given.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ProcessorArgs {
    /// The processor's configuration file; `processor.example.toml` documents every
    /// setting. Without one, the defaults apply and no budgets are loaded.
    #[arg(long, env = "TOLLGATE_PROCESSOR_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (`host:port,...`). Without them the processor reads and
    /// writes the embedded log under --data-dir (which no other process may have open).
    #[arg(long, env = "TOLLGATE_KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// Where the embedded log lives when no Kafka servers are given.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    data_dir: PathBuf,
    /// The price catalog to start with (TOML, the format of `pricing/catalog.toml`);
    /// published to the governance topic when its version is new there. Default: the
    /// catalog built into this binary.
    #[arg(long, env = "TOLLGATE_PRICE_CATALOG")]
    price_catalog: Option<PathBuf>,
    /// Name of this instance, overriding `processor.instance_id`.
    #[arg(long, env = "TOLLGATE_PROCESSOR_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Address for /metrics and /healthz, overriding `processor.metrics_listen`.
    #[arg(long, env = "TOLLGATE_PROCESSOR_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Write the Parquet archive here (a directory or an `s3://` URL), overriding
    /// `archive.location`; the other `[archive]` settings keep their values or defaults.
    #[arg(long, env = "TOLLGATE_ARCHIVE")]
    archive: Option<String>,
    /// Load ClickHouse through this HTTP interface (`http://host:8123`), overriding
    /// `clickhouse.url`; the other `[clickhouse]` settings keep their values or defaults.
    #[arg(long, env = "TOLLGATE_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    /// The ClickHouse database, overriding `clickhouse.database` (default `tollgate`).
    #[arg(long, env = "TOLLGATE_CLICKHOUSE_DATABASE")]
    clickhouse_database: Option<String>,
    #[arg(long, env = "TOLLGATE_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// Read from the environment only, so it stays out of process listings.
    #[arg(skip = std::env::var("TOLLGATE_CLICKHOUSE_PASSWORD").ok())]
    clickhouse_password: Option<String>,
    /// Check the configuration, print a summary, and exit.
    #[arg(long)]
    validate: bool,
}

fn main() -> anyhow::Result<()> {
    // RUST_LOG filters (default `info`); TOLLGATE_LOG_FORMAT=json writes one JSON object a
    // line for log collectors.
    let command = Cli::parse().command;
    // `up` shares the terminal with its banner and progress: only warnings from the
    // services, and nothing from the MCP SDK below errors.
    let default_filter = match command {
        Command::Up(_) => "warn,rmcp=error",
        _ => "info,rmcp=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|format| format == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(default_worker_threads())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(command))
}

/// One worker thread per core but one, at least one: the spare core runs librdkafka's
/// I/O threads and the kernel's network work. The gateway serves requests on threads of
/// its own (`server.threads`, see `tollgate_ingest::serve`); this runtime runs its
/// background work.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().saturating_sub(1).max(1))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Schemas { out } => write_schemas(out),
        Command::Topics => {
            println!("{:<32} {:>10}  cleanup", "topic", "partitions");
            for spec in tollgate_schemas::topics::ALL {
                let cleanup = if spec.compacted { "compact" } else { "delete" };
                println!("{:<32} {:>10}  {cleanup}", spec.name, spec.partitions);
            }
            Ok(())
        }
        Command::Up(args) => up::run(args, shutdown_signal()).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Gateway(args) => gateway(args).await,
        Command::Processor(args) => processor(args).await,
        Command::QueryApi(args) => query_api(args).await,
        Command::Token { name, role } => {
            let role: tollgate_query_api::auth::Role = serde_json::from_value(serde_json::Value::String(role.clone()))
                .map_err(|_| anyhow::anyhow!("role `{role}` is not finance, auditor or admin"))?;
            let token = format!("tg_{}", uuid::Uuid::new_v4().simple());
            println!("token: {token}");
            println!(
                "\n[[tokens]]\nname = {name:?}\nrole = \"{}\"\nsha256 = \"{}\"",
                role.as_str(),
                tollgate_query_api::auth::token_hash(&token)
            );
            Ok(())
        }
        Command::Verify { archive, verifier_key, json } => verify(&archive, &verifier_key, json).await,
        Command::Keygen { name } => {
            let (signing, verifier) = tollgate_archive::transparency::generate_key(&name)?;
            println!("{signing}\n{verifier}");
            Ok(())
        }
        Command::Simulator { listen } => {
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
            tracing::info!(address = %listener.local_addr()?, "simulated provider listening");
            let control = Arc::new(tollgate_ingest::simulator::SimulatorControl::default());
            let router = tollgate_ingest::simulator::router(control);
            tollgate_ingest::simulator::serve(listener, router, shutdown_signal()).await?;
            Ok(())
        }
    }
}

async fn query_api(args: QueryApiArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("reading the query API configuration {} (see query-api.example.toml)", path.display())
            })?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => tollgate_query_api::server::QueryApiConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(archive) = args.archive {
        config.archive = archive;
    }
    anyhow::ensure!(
        !config.archive.is_empty(),
        "no archive: give --archive (or TOLLGATE_ARCHIVE, or `archive` in the configuration)"
    );
    if config.tokens.is_empty() {
        tracing::warn!("no API tokens are configured: every request will be refused (make one with `tollgate token`)");
    }
    if let Some(servers) = args.kafka_bootstrap_servers {
        match &mut config.kafka {
            Some(kafka) => kafka.bootstrap_servers = servers,
            None => config.kafka = Some(KafkaConfig::new(servers)),
        }
    }
    // Every authenticated request is recorded on the log before it is answered.
    let log: Arc<dyn EventLog> = match &config.kafka {
        Some(kafka) => {
            let mut kafka = kafka.clone();
            if kafka.client_id == KafkaConfig::new(String::new()).client_id {
                kafka.client_id = "tollgate-query-api".to_owned();
            }
            Arc::new(KafkaLog::connect(kafka).context("creating the Kafka clients")?)
        }
        None => {
            let dir = args.data_dir.join("log");
            Arc::new(
                EmbeddedLog::open(EmbeddedLogConfig::new(&dir))
                    .with_context(|| format!("opening the embedded log in {} for the access log", dir.display()))?,
            )
        }
    };
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL)
        .await
        .context("creating Tollgate's topics")?;
    let router = tollgate_query_api::server::router(&config, log).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, archive = %config.archive, "query API listening");
    tollgate_query_api::server::serve(listener, router, shutdown_signal()).await?;
    Ok(())
}

async fn verify(location: &str, verifier_key: &str, json: bool) -> anyhow::Result<()> {
    let archive = tollgate_archive::Archive::open(location, &Default::default())?;
    let reports = tollgate_archive::transparency::verify(&archive, verifier_key).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            let state = if report.ok() { "ok" } else { "FAILED" };
            println!(
                "{} partition {}: {state}: {} records stored, {} signed",
                report.table, report.partition, report.stored_records, report.checkpoint_size
            );
            for problem in &report.problems {
                let place = match (&problem.file, problem.row) {
                    (Some(file), Some(row)) => format!(" ({file}, row {row})"),
                    _ => String::new(),
                };
                println!("  {:?}{place}: {}", problem.kind, problem.detail);
            }
        }
        if reports.is_empty() {
            println!("{location}: no priced interactions archived");
        }
    }
    if reports.iter().any(|report| !report.ok()) {
        std::process::exit(1);
    }
    Ok(())
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| {
        format!("reading the gateway configuration {} (see gateway.example.toml)", args.config.display())
    })?;
    let environment: HashMap<String, String> = std::env::vars().collect();
    let mut config = GatewayConfig::from_toml(&text, &environment)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(threads) = args.worker_threads {
        let most = tollgate_ingest::config::MAX_THREADS;
        anyhow::ensure!((1..=most).contains(&threads), "--worker-threads must be between 1 and {most}");
        config.threads = threads;
    }
    if args.validate {
        println!(
            "{}: valid; {} upstreams, {} models, {} keys, listening on {} with {} serving threads",
            args.config.display(),
            config.upstreams.len(),
            config.models.len(),
            config.keys.len(),
            config.listen,
            config.threads
        );
        return Ok(());
    }

    let (log, spool): (Arc<dyn EventLog>, Option<Arc<dyn EventLog>>) = match &args.kafka_bootstrap_servers {
        Some(servers) => {
            let mut kafka = KafkaConfig::new(servers.clone());
            config.kafka.apply(&mut kafka);
            tollgate_ingest::recorder::gateway_kafka_config(&mut kafka);
            kafka.client_id = config.instance_id.clone();
            let log = KafkaLog::connect(kafka).context("creating the Kafka clients")?;
            let spool = EmbeddedLog::open(EmbeddedLogConfig::new(&args.spool_dir))
                .with_context(|| format!("opening the spool in {}", args.spool_dir.display()))?;
            (Arc::new(log), Some(Arc::new(spool)))
        }
        None => {
            let dir = args.data_dir.join("log");
            let log = EmbeddedLog::open(EmbeddedLogConfig::new(&dir))
                .with_context(|| format!("opening the embedded log in {}", dir.display()))?;
            (Arc::new(log), None)
        }
    };
    tollgate_eventlog::ensure_topics(log.as_ref(), &tollgate_schemas::topics::ALL)
        .await
        .context("creating Tollgate's topics")?;
    let catalog = match &args.price_catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the price catalog {}", path.display()))?;
            PriceCatalog::from_toml(&text)?
        }
        None => PriceCatalog::shipped()?,
    };
    let actor = args.config.display().to_string();
    let (state, listener, _governance) = start_gateway(config, log, spool, catalog, &actor).await?;
    tollgate_ingest::run(listener, state, shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Starts a gateway's parts on `log`: the recorder, the governance follower (which first
/// publishes the configuration's keys and team policies, as changes by `config_actor`),
/// the quota decision follower, and the listener. Serve it with `tollgate_ingest::run`.
/// The governance follower is returned too, for services in the same process that wait
/// until a change is in force at the gateway.
pub(crate) async fn start_gateway(
    config: GatewayConfig,
    log: Arc<dyn EventLog>,
    spool: Option<Arc<dyn EventLog>>,
    catalog: PriceCatalog,
    config_actor: &str,
) -> anyhow::Result<(Arc<GatewayState>, tokio::net::TcpListener, Arc<tollgate_eventlog::Follower>)> {
    let recorder =
        Recorder::start(Arc::clone(&log), spool, config.recording.clone()).await.context("starting the recorder")?;
    let listen = config.listen;
    let instance = config.instance_id.clone();
    let state = Arc::new(GatewayState::new(config, recorder, catalog).context("building the upstream clients")?);
    let governance = tollgate_ingest::governance::start(Arc::clone(&log), Arc::clone(&state), config_actor)
        .await
        .context("following governance for virtual keys")?;
    tokio::spawn(tollgate_ingest::quota::follow_forever(log, Arc::clone(&state.quota), instance));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, keys = state.keys().len(), "gateway listening");
    Ok((state, listener, governance))
}

async fn processor(args: ProcessorArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("reading the processor configuration {} (see processor.example.toml)", path.display())
            })?;
            ProcessorConfig::from_toml(&text)?
        }
        None => ProcessorConfig::default(),
    };
    if let Some(instance) = args.instance_id {
        config.instance_id = instance;
    }
    if let Some(address) = args.metrics_listen {
        config.metrics_listen = Some(address);
    }
    if let Some(location) = args.archive {
        match &mut config.archive {
            Some(archive) => archive.location = location,
            None => config.archive = Some(tollgate_processor::config::ArchiveConfig::new(location)),
        }
    }
    if let Some(url) = args.clickhouse_url {
        match &mut config.clickhouse {
            Some(clickhouse) => clickhouse.connection.url = url,
            None => config.clickhouse = Some(tollgate_processor::config::WarehouseConfig::new(url)),
        }
    }
    if let Some(clickhouse) = &mut config.clickhouse {
        if let Some(database) = args.clickhouse_database {
            clickhouse.connection.database = database;
        }
        if let Some(user) = args.clickhouse_user {
            clickhouse.connection.user = Some(user);
        }
        if let Some(password) = args.clickhouse_password {
            clickhouse.connection.password = Some(password);
        }
    }
    let (catalog_text, catalog_source) = match &args.price_catalog {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading the price catalog {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (tollgate_schemas::pricing::SHIPPED_CATALOG.to_owned(), "built-in price catalog".to_owned()),
    };
    let document: tollgate_schemas::pricing::PriceCatalogDocument =
        toml::from_str(&catalog_text).with_context(|| format!("parsing the price catalog ({catalog_source})"))?;
    let catalog = PriceCatalog::from_document(&document)?;
    if args.validate {
        println!(
            "{}: valid; instance {}, {} budgets, price catalog {} ({catalog_source}), archive {}, clickhouse {}",
            args.config.as_ref().map_or_else(|| "defaults".to_owned(), |path| path.display().to_string()),
            config.instance_id,
            config.budgets.len(),
            catalog.version,
            config.archive.as_ref().map_or("off", |archive| archive.location.as_str()),
            config.clickhouse.as_ref().map_or("off", |clickhouse| clickhouse.connection.url.as_str()),
        );
        return Ok(());
    }
    let log: Arc<dyn EventLog> = match &args.kafka_bootstrap_servers {
        Some(servers) => {
            let mut kafka = KafkaConfig::new(servers.clone());
            kafka.client_id = config.instance_id.clone();
            config.kafka_defaults(&mut kafka);
            Arc::new(KafkaLog::connect(kafka).context("creating the Kafka clients")?)
        }
        None => {
            let dir = args.data_dir.join("log");
            Arc::new(
                EmbeddedLog::open(EmbeddedLogConfig::new(&dir))
                    .with_context(|| format!("opening the embedded log in {}", dir.display()))?,
            )
        }
    };
    let sources = tollgate_processor::Sources {
        catalog,
        catalog_document: Some(document),
        config_actor: args.config.as_ref().map_or_else(|| "processor defaults".to_owned(), |p| p.display().to_string()),
    };
    let metrics = Arc::new(tollgate_processor::metrics::ProcessorMetrics::default());
    tollgate_processor::run(log, config, sources, metrics, shutdown_signal()).await?;
    tracing::info!("processor stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in progress and flushing events");
}

fn write_schemas(out: Option<PathBuf>) -> anyhow::Result<()> {
    let documents = tollgate_schemas::json_schema::all();
    let Some(dir) = out else {
        for (name, text) in documents {
            println!("// {name}\n{text}");
        }
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in documents {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
