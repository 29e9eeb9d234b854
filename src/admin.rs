//! `tollgate admin`: the query API's admin endpoints from the command line.
//!
//! Each command is one HTTP call; the answer is printed as JSON, and an error answer is
//! printed as its message with exit status 1. Secrets in answers (a new key's secret, a
//! new token) are shown once: keep them.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Map, Value, json};

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The query API's base URL.
    #[arg(long, env = "TOLLGATE_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// An admin token (`tollgate up` prints one).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Why: kept with the change in the governance history.
    #[arg(long, global = true)]
    reason: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Virtual keys for the gateway.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Team policies: model and tool allow-lists, PII guard.
    #[command(subcommand)]
    Teams(TeamsCommand),
    /// Budgets per org, team, user or key.
    #[command(subcommand)]
    Budgets(BudgetsCommand),
    /// Model providers and the models they serve.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Price catalog versions.
    #[command(subcommand)]
    Catalogs(CatalogsCommand),
    /// Query API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Who changed what: the governance history, newest last.
    History {
        /// Only changes to this kind of target (virtual_key, budget, policy, price_catalog, api_token).
        #[arg(long)]
        target_kind: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    List,
    /// Make a key; its secret is printed once.
    Create {
        /// The key id recorded in events. Default: one is made.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        fields: KeyFields,
    },
    /// Change a key's owner, allow-lists or limits (only the options given).
    Update {
        id: String,
        #[command(flatten)]
        fields: KeyFields,
    },
    /// Give a key a new secret (printed once); the old one stops working.
    Rotate {
        id: String,
    },
    /// Revoke a key: every gateway refuses it from when it reads the change.
    Revoke {
        id: String,
    },
}

#[derive(Debug, clap::Args)]
struct KeyFields {
    #[arg(long)]
    org: Option<String>,
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    project: Option<String>,
    #[arg(long)]
    max_tokens: Option<u64>,
    #[arg(long)]
    requests_per_minute: Option<u32>,
    #[arg(long)]
    tokens_per_minute: Option<u32>,
    #[command(flatten)]
    policy: PolicyFields,
}

/// The policy options keys and teams share.
#[derive(Debug, clap::Args)]
struct PolicyFields {
    /// A glob pattern of models that may be used (repeat for more).
    #[arg(long = "allow-model")]
    allowed_models: Vec<String>,
    /// The prompt PII guard: off, redact or block.
    #[arg(long)]
    pii_guard: Option<String>,
    /// A `server/tool` glob pattern of MCP tools that may be called (repeat for more).
    #[arg(long = "allow-tool")]
    allowed_tools: Vec<String>,
    /// A `server/tool` glob pattern of MCP tools that may not be called (repeat for more).
    #[arg(long = "deny-tool")]
    denied_tools: Vec<String>,
}

impl PolicyFields {
    /// Adds the options given to `fields`.
    fn add_to(&self, fields: &mut Map<String, Value>) {
        for (name, list) in [
            ("allowed_models", &self.allowed_models),
            ("allowed_tools", &self.allowed_tools),
            ("denied_tools", &self.denied_tools),
        ] {
            if !list.is_empty() {
                fields.insert(name.to_owned(), json!(list));
            }
        }
        if let Some(mode) = &self.pii_guard {
            fields.insert("pii_guard".to_owned(), json!(mode));
        }
    }
}

impl KeyFields {
    fn to_json(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        for (name, value) in
            [("org", &self.org), ("team", &self.team), ("user", &self.user), ("project", &self.project)]
        {
            if let Some(value) = value {
                fields.insert(name.to_owned(), json!(value));
            }
        }
        for (name, value) in [
            ("max_tokens", self.max_tokens),
            ("requests_per_minute", self.requests_per_minute.map(u64::from)),
            ("tokens_per_minute", self.tokens_per_minute.map(u64::from)),
        ] {
            if let Some(value) = value {
                fields.insert(name.to_owned(), json!(value));
            }
        }
        self.policy.add_to(&mut fields);
        fields
    }
}

#[derive(Debug, Subcommand)]
enum TeamsCommand {
    List,
    /// Set a team's policy (replacing the one it had).
    Set {
        team: String,
        #[command(flatten)]
        policy: PolicyFields,
    },
    /// Remove a team's policy.
    Delete {
        team: String,
    },
}

#[derive(Debug, Subcommand)]
enum BudgetsCommand {
    List,
    /// Set or change a budget.
    Set {
        /// The budget's id, for changing or lifting it later.
        id: String,
        /// Who it limits: `org:ID`, `team:ID`, `user:ID` or `key:ID`.
        #[arg(long)]
        subject: String,
        /// day, month or lifetime (calendar windows, UTC).
        #[arg(long, default_value = "month")]
        window: String,
        /// The limit per window in US dollars, for example 250 or 12.50.
        #[arg(long)]
        limit_usd: String,
        /// Only warn at the limit instead of refusing requests.
        #[arg(long)]
        soft: bool,
        /// Percentages of the limit that publish a warning, for example 50,80.
        #[arg(long, value_delimiter = ',')]
        alert: Vec<u16>,
    },
    /// Lift a budget.
    Lift {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProvidersCommand {
    List,
    /// Register a provider (or replace one of the same name); gateways route the models
    /// given to it, after the targets their configuration gives those models.
    Set {
        name: String,
        /// openai (any OpenAI-compatible server) or anthropic.
        #[arg(long)]
        kind: String,
        /// Base URL without `/v1`, for example https://api.groq.com/openai.
        #[arg(long)]
        base_url: String,
        /// `gen_ai.provider.name` recorded for its calls (it picks the prices). Default: the kind.
        #[arg(long)]
        provider: Option<String>,
        /// The environment variable holding its credential on every gateway.
        #[arg(long)]
        api_key_env: Option<String>,
        /// A public model it serves, as NAME or NAME=PROVIDER_MODEL (repeat for more).
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// Stop routing to a registered provider.
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogsCommand {
    List,
    /// Publish a new price catalog version from a TOML file (the format of `pricing/catalog.toml`).
    Publish {
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    List,
    /// Make (or replace) a token; it is printed once.
    Create {
        name: String,
        /// finance, auditor or admin.
        #[arg(long, default_value = "finance")]
        role: String,
    },
    Revoke {
        name: String,
    },
}

/// One call to make: method, path, and the body with its content type.
struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<(String, Vec<u8>)>,
}

fn call(method: reqwest::Method, path: impl Into<String>) -> Call {
    Call { method, path: path.into(), body: None }
}

fn with_json(mut call: Call, value: Value) -> Call {
    call.body = Some(("application/json".to_owned(), value.to_string().into_bytes()));
    call
}

/// Path segments are sent percent-encoded, so an id cannot change the route.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

fn plan(command: AdminCommand) -> anyhow::Result<Call> {
    use reqwest::Method;
    Ok(match command {
        AdminCommand::Keys(KeysCommand::List) => call(Method::GET, "/v1/admin/keys"),
        AdminCommand::Keys(KeysCommand::Create { id, fields }) => {
            let mut body = fields.to_json();
            if let Some(id) = id {
                body.insert("id".to_owned(), json!(id));
            }
            anyhow::ensure!(body.contains_key("org"), "a key needs --org");
            with_json(call(Method::POST, "/v1/admin/keys"), Value::Object(body))
        }
        AdminCommand::Keys(KeysCommand::Update { id, fields }) => {
            let body = fields.to_json();
            anyhow::ensure!(!body.is_empty(), "nothing to change: give at least one option");
            with_json(call(Method::PATCH, format!("/v1/admin/keys/{}", segment(&id))), Value::Object(body))
        }
        AdminCommand::Keys(KeysCommand::Rotate { id }) => {
            call(Method::POST, format!("/v1/admin/keys/{}/rotate", segment(&id)))
        }
        AdminCommand::Keys(KeysCommand::Revoke { id }) => {
            call(Method::DELETE, format!("/v1/admin/keys/{}", segment(&id)))
        }
        AdminCommand::Teams(TeamsCommand::List) => call(Method::GET, "/v1/admin/teams"),
        AdminCommand::Teams(TeamsCommand::Set { team, policy }) => {
            let mut body = Map::new();
            policy.add_to(&mut body);
            with_json(call(Method::PUT, format!("/v1/admin/teams/{}", segment(&team))), Value::Object(body))
        }
        AdminCommand::Teams(TeamsCommand::Delete { team }) => {
            call(Method::DELETE, format!("/v1/admin/teams/{}", segment(&team)))
        }
        AdminCommand::Budgets(BudgetsCommand::List) => call(Method::GET, "/v1/admin/budgets"),
        AdminCommand::Budgets(BudgetsCommand::Set { id, subject, window, limit_usd, soft, alert }) => {
            let (kind, subject_id) = subject
                .split_once(':')
                .with_context(|| format!("--subject `{subject}` must be KIND:ID, for example team:research"))?;
            let limit = tollgate_schemas::pricing::parse_usd(&limit_usd)
                .with_context(|| format!("--limit-usd `{limit_usd}` is not an amount of dollars like 250 or 12.50"))?;
            let body = json!({
                "subject": { "kind": kind, "id": subject_id },
                "window": window,
                "limit": limit,
                "hard": !soft,
                "alert_thresholds_percent": alert,
            });
            with_json(call(Method::PUT, format!("/v1/admin/budgets/{}", segment(&id))), body)
        }
        AdminCommand::Budgets(BudgetsCommand::Lift { id }) => {
            call(Method::DELETE, format!("/v1/admin/budgets/{}", segment(&id)))
        }
        AdminCommand::Providers(ProvidersCommand::List) => call(Method::GET, "/v1/admin/providers"),
        AdminCommand::Providers(ProvidersCommand::Set { name, kind, base_url, provider, api_key_env, models }) => {
            let models: Vec<Value> = models
                .iter()
                .map(|model| match model.split_once('=') {
                    Some((name, upstream_model)) => json!({ "name": name, "model": upstream_model }),
                    None => json!({ "name": model }),
                })
                .collect();
            let mut body = json!({ "kind": kind, "base_url": base_url, "models": models });
            if let Some(provider) = provider {
                body["provider"] = json!(provider);
            }
            if let Some(variable) = api_key_env {
                body["api_key_env"] = json!(variable);
            }
            with_json(call(Method::PUT, format!("/v1/admin/providers/{}", segment(&name))), body)
        }
        AdminCommand::Providers(ProvidersCommand::Delete { name }) => {
            call(Method::DELETE, format!("/v1/admin/providers/{}", segment(&name)))
        }
        AdminCommand::Catalogs(CatalogsCommand::List) => call(Method::GET, "/v1/admin/catalogs"),
        AdminCommand::Catalogs(CatalogsCommand::Publish { file }) => {
            let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut call = call(Method::POST, "/v1/admin/catalogs");
            call.body = Some(("application/toml".to_owned(), text));
            call
        }
        AdminCommand::Tokens(TokensCommand::List) => call(Method::GET, "/v1/admin/tokens"),
        AdminCommand::Tokens(TokensCommand::Create { name, role }) => {
            with_json(call(Method::POST, "/v1/admin/tokens"), json!({ "name": name, "role": role }))
        }
        AdminCommand::Tokens(TokensCommand::Revoke { name }) => {
            call(Method::DELETE, format!("/v1/admin/tokens/{}", segment(&name)))
        }
        AdminCommand::History { target_kind, limit } => {
            let mut path = format!("/v1/governance?limit={limit}");
            if let Some(kind) = target_kind {
                path.push_str(&format!("&target_kind={}", segment(&kind)));
            }
            call(Method::GET, path)
        }
    })
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let call = plan(args.command)?;
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
    let url = format!("{}{}", args.url.trim_end_matches('/'), call.path);
    let mut request = client.request(call.method, &url).bearer_auth(&args.token);
    if let Some(reason) = &args.reason {
        request = request.header("x-tollgate-reason", reason);
    }
    if let Some((content_type, body)) = call.body {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type).body(body);
    }
    let response = request.send().await.with_context(|| format!("calling {url}"))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("reading the answer of {url}"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let message = body["error"]["message"].as_str().map_or_else(|| body.to_string(), str::to_owned);
    let parameter = body["error"]["parameter"].as_str().map(|parameter| format!(" ({parameter})")).unwrap_or_default();
    eprintln!("error: {status}: {message}{parameter}");
    std::process::exit(1);
}
