//! Builders of realistic events for the processor's tests and benchmarks. Not used by the
//! processor itself.

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
