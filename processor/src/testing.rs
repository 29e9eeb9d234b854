//! Builders of realistic events for the processor's tests and benchmarks, and the
//! price catalog tools are priced with in them; publishing them, and running the processor
//! in-process until a test has what it needs. Not used by the processor itself.

use std::sync::Arc;

use tollgate_eventlog::{EventLog, LogError};
use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::topics::{INTERACTIONS, Keyed};
use tollgate_schemas::{
    Call, ContentRecord, GenAiOperation, Interaction, ModelCall, Outcome, OutcomeStatus, Principal, SCHEMA_VERSION,
    Timing, ToolCall, Usage,
};

/// The principal every builder uses: org `acme`, team `ml`, user `ada`, key `key_ada`.
pub fn principal() -> Principal {
    Principal {
        org_id: "acme".to_owned(),
        team_id: Some("ml".to_owned()),
        user_id: Some("ada".to_owned()),
        project_id: Some("search".to_owned()),
        key_id: "key_ada".to_owned(),
    }
}

/// A successful chat call to `provider`/`model` with the given token counts.
pub fn model_call(provider: &str, model: &str, input_tokens: u64, output_tokens: u64) -> Interaction {
    Interaction {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        time_unix_micros: tollgate_schemas::now_unix_micros(),
        gateway_instance: "gateway-test".to_owned(),
        principal: principal(),
        call: Call::ModelCall(ModelCall {
            operation: GenAiOperation::Chat,
            provider: Some(provider.to_owned()),
            upstream: Some(provider.to_owned()),
            preferred_upstream: Some(provider.to_owned()),
            request_model: model.to_owned(),
            routed_model: Some(model.to_owned()),
            response_model: Some(model.to_owned()),
            endpoint: "/v1/chat/completions".to_owned(),
            streaming: false,
            request_max_tokens: Some(1024),
        }),
        content: ContentRecord {
            request_sha256: None,
            response_sha256: None,
            request_bytes: 420,
            response_bytes: 910,
            captured: None,
        },
        outcome: Outcome {
            status: OutcomeStatus::Ok,
            http_status: Some(200),
            error_type: None,
            error_message: None,
            attempts: 1,
            fallback_used: false,
        },
        usage: Usage { input_tokens, output_tokens, ..Usage::default() },
        timing: Timing { duration_micros: 850_000, time_to_first_token_micros: None, gateway_overhead_micros: 60 },
        trace: None,
    }
}

/// A `tools/call` of `server`/`tool` that ended with `status`.
pub fn tool_call(server: &str, tool: &str, status: OutcomeStatus) -> Interaction {
    let mut interaction = model_call("openai", "gpt-4o", 0, 0);
    interaction.call = Call::ToolCall(ToolCall {
        server: server.to_owned(),
        method: "tools/call".to_owned(),
        tool: Some(tool.to_owned()),
        session_id: Some("session-1".to_owned()),
    });
    interaction.usage = Usage::default();
    interaction.outcome.status = status;
    interaction
}

/// A deterministic stream of `count` interactions for load, crash and scale-out tests
/// and for the benchmark: 64 keys of 32 users in 8 teams of 2 orgs, models from the
/// shipped catalog at several providers, one call in 50 to a model the catalog does not
/// know, one in 10 a priced tool call, one in 200 with captured content holding an
/// e-mail address. Event times start at `start_unix_micros` and advance 1 ms per call.
pub fn workload(count: usize, seed: u64, start_unix_micros: i64) -> Vec<Interaction> {
    const MODELS: [(&str, &str); 6] = [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("gcp.gemini", "gemini-2.5-flash"),
        ("groq", "llama-3.3-70b-versatile"),
    ];
    let mut state = seed.max(1);
    let mut next = move || {
        // xorshift64*: deterministic, good enough to spread a test load.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..count)
        .map(|index| {
            let key = next() % 64;
            let user = key / 2;
            let team = user / 4;
            let org = team / 4;
            let roll = next() % 200;
            let mut interaction = if roll < 20 {
                tool_call("search", "web", OutcomeStatus::Ok)
            } else if roll < 24 {
                model_call("openai", "gpt-unknown-preview", 100 + next() % 900, 10 + next() % 90)
            } else {
                let (provider, model) = MODELS[usize::try_from(next() % 6).unwrap_or(0)];
                model_call(provider, model, 50 + next() % 4_000, 10 + next() % 1_000)
            };
            if roll == 199 {
                interaction.content.captured = Some(tollgate_schemas::CapturedContent {
                    request: format!(r#"{{"messages":[{{"role":"user","content":"mail user{user}@example.com"}}]}}"#),
                    response: None,
                    redacted: false,
                });
            }
            interaction.time_unix_micros = start_unix_micros + i64::try_from(index).unwrap_or(0) * 1_000;
            interaction.principal = Principal {
                org_id: format!("org-{org}"),
                team_id: Some(format!("team-{team}")),
                user_id: Some(format!("user-{user}")),
                project_id: None,
                key_id: format!("key-{key}"),
            };
            interaction
        })
        .collect()
}

/// Publishes `interactions` on the interactions topic, keyed as gateways key them, and
/// waits until every one is acknowledged.
pub async fn publish(log: &dyn EventLog, interactions: &[Interaction]) -> Result<(), LogError> {
    let mut pending = Vec::with_capacity(interactions.len());
    for interaction in interactions {
        let payload =
            tollgate_schemas::encode(interaction).map_err(|error| LogError::Io(std::io::Error::other(error)))?;
        pending.push(log.publish(INTERACTIONS, interaction.message_key().as_bytes(), &payload)?);
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

/// A hard lifetime budget of `dollars` for team `team`, with a 50% alert, as configured
/// budgets are given: `(id, spec)`; the id is `{team}-lifetime`.
pub fn team_budget(team: &str, dollars: i64) -> (String, tollgate_schemas::BudgetSpec) {
    let spec = tollgate_schemas::BudgetSpec {
        subject: tollgate_schemas::Subject::new(tollgate_schemas::SubjectKind::Team, team),
        window: tollgate_schemas::WindowKind::Lifetime,
        limit: tollgate_schemas::Nanodollars(dollars * tollgate_schemas::Nanodollars::PER_DOLLAR),
        hard: true,
        alert_thresholds_percent: vec![50],
    };
    (format!("{team}-lifetime"), spec)
}

/// The processor running in-process, on the shipped price catalog.
#[derive(Debug)]
pub struct Running {
    pub metrics: Arc<crate::metrics::ProcessorMetrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::ProcessorError>>,
}

impl Running {
    /// Starts [`crate::run`] on `log` with `config`; `actor` names its start-up
    /// governance changes.
    pub fn start(
        log: Arc<dyn EventLog>,
        config: crate::ProcessorConfig,
        actor: &str,
    ) -> Result<Running, tollgate_schemas::pricing::CatalogError> {
        let sources = crate::Sources {
            catalog: PriceCatalog::shipped()?,
            catalog_document: None,
            config_actor: actor.to_owned(),
        };
        let metrics = Arc::new(crate::metrics::ProcessorMetrics::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(log, config, sources, Arc::clone(&metrics), async {
            let _ = stopped.await;
        }));
        Ok(Running { metrics, stop, task })
    }

    /// Shuts the processor down as a signal would and waits for it.
    pub async fn stop(self) -> Result<(), crate::ProcessorError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(crate::ProcessorError::Task(error.to_string())),
        }
    }
}
