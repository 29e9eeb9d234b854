//! proptest strategies for every event type: arbitrary but valid events.

#![allow(dead_code, clippy::unwrap_used)] // Shared by several test binaries.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tollgate_schemas::*;
use uuid::Uuid;

fn uuid_v7() -> impl Strategy<Value = Uuid> {
    (0u64..(1 << 48), any::<[u8; 10]>())
        .prop_map(|(millis, random)| uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, control characters and empty strings.
    any::<String>()
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,20}"
}

fn hex(len: usize) -> impl Strategy<Value = String> {
    vec(0u8..16, len).prop_map(|digits| digits.into_iter().map(|digit| format!("{digit:x}")).collect())
}

fn micros() -> impl Strategy<Value = i64> {
    any::<i64>()
}

pub fn principal() -> impl Strategy<Value = Principal> {
    (ident(), option::of(ident()), option::of(text()), option::of(text()), ident()).prop_map(
        |(org_id, team_id, user_id, project_id, key_id)| Principal { org_id, team_id, user_id, project_id, key_id },
    )
}

fn operation() -> impl Strategy<Value = GenAiOperation> {
    prop_oneof![
        Just(GenAiOperation::Chat),
        Just(GenAiOperation::TextCompletion),
        Just(GenAiOperation::Embeddings),
        Just(GenAiOperation::ExecuteTool),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let model = (
        operation(),
        option::of(ident()),
        option::of(ident()),
        option::of(ident()),
        text(),
        option::of(text()),
        option::of(text()),
        text(),
        any::<bool>(),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(
                operation,
                provider,
                upstream,
                preferred_upstream,
                request_model,
                routed_model,
                response_model,
                endpoint,
                streaming,
                request_max_tokens,
            )| {
                Call::ModelCall(ModelCall {
                    operation,
                    provider,
                    upstream,
                    preferred_upstream,
                    request_model,
                    routed_model,
                    response_model,
                    endpoint,
                    streaming,
                    request_max_tokens,
                })
            },
        );
    let tool = (ident(), text(), option::of(text()), option::of(text()))
        .prop_map(|(server, method, tool, session_id)| Call::ToolCall(ToolCall { server, method, tool, session_id }));
    prop_oneof![model, tool]
}

fn content() -> impl Strategy<Value = ContentRecord> {
    (
        option::of(hex(64)),
        option::of(hex(64)),
        any::<u64>(),
        any::<u64>(),
        option::of((text(), option::of(text()), any::<bool>())),
    )
        .prop_map(|(request_sha256, response_sha256, request_bytes, response_bytes, captured)| ContentRecord {
            request_sha256,
            response_sha256,
            request_bytes,
            response_bytes,
            captured: captured.map(|(request, response, redacted)| CapturedContent { request, response, redacted }),
        })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        proptest::sample::select(OutcomeStatus::ALL.to_vec()),
        option::of(any::<u16>()),
        option::of(ident()),
        option::of(text()),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(status, http_status, error_type, error_message, attempts, fallback_used)| Outcome {
            status,
            http_status,
            error_type,
            error_message,
            attempts,
            fallback_used,
        })
}

fn usage() -> impl Strategy<Value = Usage> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
        |(input_tokens, output_tokens, cache_read, cache_creation, reasoning, estimated)| Usage {
            input_tokens,
            output_tokens,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_creation,
            reasoning_output_tokens: reasoning,
            estimated,
        },
    )
}

fn timing() -> impl Strategy<Value = Timing> {
    (any::<u64>(), option::of(any::<u64>()), any::<u64>()).prop_map(|(duration, ttft, overhead)| Timing {
        duration_micros: duration,
        time_to_first_token_micros: ttft,
        gateway_overhead_micros: overhead,
    })
}

fn trace() -> impl Strategy<Value = TraceContext> {
    (hex(32), hex(16), any::<u8>(), option::of(text())).prop_map(|(trace_id, span_id, trace_flags, tracestate)| {
        TraceContext { trace_id, span_id, trace_flags, tracestate }
    })
}

pub fn interaction() -> impl Strategy<Value = Interaction> {
    (uuid_v7(), micros(), text(), principal(), call(), content(), outcome(), usage(), timing(), option::of(trace()))
        .prop_map(
            |(id, time_unix_micros, gateway_instance, principal, call, content, outcome, usage, timing, trace)| {
                Interaction {
                    schema_version: SCHEMA_VERSION,
                    id,
                    time_unix_micros,
                    gateway_instance,
                    principal,
                    call,
                    content,
                    outcome,
                    usage,
                    timing,
                    trace,
                }
            },
        )
}

fn nanos() -> impl Strategy<Value = Nanodollars> {
    // Components small enough that their sum never overflows.
    (-(1i64 << 59)..(1i64 << 59)).prop_map(Nanodollars)
}

pub fn priced_interaction() -> impl Strategy<Value = PricedInteraction> {
    let source = option::of(source_offset());
    (interaction(), vec(nanos(), 6), text(), any::<bool>(), micros(), source).prop_map(
        |(interaction, parts, price_catalog_version, priced, priced_at_unix_micros, source)| {
            let total = Nanodollars(parts.iter().map(|part| part.0).sum());
            PricedInteraction {
                schema_version: SCHEMA_VERSION,
                interaction,
                cost: Cost {
                    total,
                    input: parts[0],
                    output: parts[1],
                    cache_read_input: parts[2],
                    cache_creation_input: parts[3],
                    reasoning_output: parts[4],
                    per_call: parts[5],
                },
                price_catalog_version,
                priced,
                priced_at_unix_micros,
                source,
            }
        },
    )
}

fn subject() -> impl Strategy<Value = Subject> {
    (
        prop_oneof![Just(SubjectKind::Org), Just(SubjectKind::Team), Just(SubjectKind::User), Just(SubjectKind::Key)],
        ident(),
    )
        .prop_map(|(kind, id)| Subject { kind, id })
}

fn window() -> impl Strategy<Value = BudgetWindow> {
    (
        prop_oneof![Just(WindowKind::Day), Just(WindowKind::Month), Just(WindowKind::Lifetime)],
        -(1i64 << 60)..(1i64 << 60),
        option::of(1i64..(1i64 << 40)),
    )
        .prop_map(|(kind, start, length)| BudgetWindow {
            kind,
            start_unix_micros: start,
            end_unix_micros: length.map(|length| start + length),
        })
}

/// A valid update: spend entries in strictly ascending offset order with costs of zero
/// or more, or a budget set (its spec about the update's subject) or lifted.
pub fn subject_update() -> impl Strategy<Value = SubjectUpdate> {
    let entries = vec((0i64..1_000, micros(), 0i64..(1i64 << 50)), 0..8).prop_map(|steps| {
        let mut offset = -1;
        steps
            .into_iter()
            .map(|(step, time_unix_micros, cost)| {
                offset += step + 1;
                SpendEntry { offset, time_unix_micros, cost: Nanodollars(cost) }
            })
            .collect::<Vec<_>>()
    });
    let spec = (
        prop_oneof![Just(WindowKind::Day), Just(WindowKind::Month), Just(WindowKind::Lifetime)],
        1i64..(1i64 << 50),
        any::<bool>(),
        vec(1u16..=1000, 0..4),
    );
    let change = prop_oneof![
        entries.prop_map(|entries| (Some(entries), None)),
        (any::<i64>(), uuid_v7(), ident(), option::of(spec)).prop_map(|budget| (None, Some(budget))),
    ];
    (subject(), ident(), ident(), any::<i32>(), change).prop_map(
        |(subject, org_id, source_topic, source_partition, change)| {
            let change = match change {
                (Some(entries), _) => SubjectChange::Spend { entries },
                (_, Some((source_offset, change_id, budget_id, spec))) => SubjectChange::Budget {
                    source_offset,
                    change_id,
                    budget_id,
                    spec: spec.map(|(window, limit, hard, mut thresholds)| {
                        thresholds.sort_unstable();
                        thresholds.dedup();
                        BudgetSpec {
                            subject: subject.clone(),
                            window,
                            limit: Nanodollars(limit),
                            hard,
                            alert_thresholds_percent: thresholds,
                        }
                    }),
                },
                (None, None) => SubjectChange::Spend { entries: Vec::new() },
            };
            SubjectUpdate { schema_version: SCHEMA_VERSION, subject, org_id, source_topic, source_partition, change }
        },
    )
}

fn source_offset() -> impl Strategy<Value = SourceOffset> {
    (text(), any::<i32>(), any::<i64>()).prop_map(|(topic, partition, offset)| SourceOffset {
        topic,
        partition,
        offset,
    })
}

pub fn quota_decision() -> impl Strategy<Value = QuotaDecision> {
    (
        uuid_v7(),
        micros(),
        subject(),
        text(),
        window(),
        (any::<i64>(), any::<i64>(), any::<i64>()),
        (prop_oneof![Just(QuotaState::Allow), Just(QuotaState::Warn), Just(QuotaState::Block)], any::<bool>()),
        any::<u64>(),
        vec(source_offset(), 0..4),
        option::of(text()),
    )
        .prop_map(
            |(
                id,
                time,
                subject,
                budget_id,
                window,
                (budget, spent, remaining),
                (state, hard),
                version,
                offsets,
                reason,
            )| {
                QuotaDecision {
                    schema_version: SCHEMA_VERSION,
                    id,
                    time_unix_micros: time,
                    subject,
                    budget_id,
                    window,
                    budget: Nanodollars(budget),
                    spent: Nanodollars(spent),
                    remaining: Nanodollars(remaining),
                    state,
                    hard,
                    version,
                    source_offsets: offsets,
                    reason,
                }
            },
        )
}

pub fn policy_violation() -> impl Strategy<Value = PolicyViolation> {
    (
        uuid_v7(),
        micros(),
        option::of(uuid_v7()),
        principal(),
        ident(),
        prop_oneof![Just(Severity::Low), Just(Severity::Medium), Just(Severity::High), Just(Severity::Critical)],
        prop_oneof![Just(Detector::Gateway), Just(Detector::Processor)],
        prop_oneof![Just(ViolationAction::Logged), Just(ViolationAction::Redacted), Just(ViolationAction::Blocked)],
        text(),
        option::of(text()),
    )
        .prop_map(
            |(id, time, interaction_id, principal, rule_id, severity, detector, action, summary, evidence)| {
                PolicyViolation {
                    schema_version: SCHEMA_VERSION,
                    id,
                    time_unix_micros: time,
                    interaction_id,
                    principal,
                    rule_id,
                    severity,
                    detector,
                    action,
                    summary,
                    evidence,
                }
            },
        )
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

pub fn governance_change() -> impl Strategy<Value = GovernanceChange> {
    (
        uuid_v7(),
        micros(),
        (prop_oneof![Just(ActorKind::Admin), Just(ActorKind::Service), Just(ActorKind::Config)], ident()),
        (
            prop_oneof![
                Just(TargetKind::VirtualKey),
                Just(TargetKind::Budget),
                Just(TargetKind::Policy),
                Just(TargetKind::Provider),
                Just(TargetKind::PriceCatalog),
                Just(TargetKind::McpServer),
                Just(TargetKind::ApiToken),
            ],
            ident(),
        ),
        prop_oneof![
            Just(ChangeAction::Created),
            Just(ChangeAction::Updated),
            Just(ChangeAction::Rotated),
            Just(ChangeAction::Revoked),
            Just(ChangeAction::Deleted),
        ],
        json_value(),
        option::of(text()),
    )
        .prop_map(|(id, time, (actor_kind, actor_id), (target_kind, target_id), action, value, reason)| {
            GovernanceChange {
                schema_version: SCHEMA_VERSION,
                id,
                time_unix_micros: time,
                actor: Actor { kind: actor_kind, id: actor_id },
                target: GovernanceTarget { kind: target_kind, id: target_id },
                action,
                value,
                reason,
            }
        })
}

pub fn access_event() -> impl Strategy<Value = AccessEvent> {
    (
        (uuid_v7(), micros(), ident()),
        prop_oneof![Just("finance"), Just("auditor"), Just("admin")],
        (ident(), option::of(text())),
        (100u16..600, option::of(any::<u64>()), any::<i64>(), option::of(text())),
    )
        .prop_map(|((id, time, token_name), role, (path, query), (status, results, duration, client))| {
            AccessEvent {
                schema_version: SCHEMA_VERSION,
                id,
                time_unix_micros: time,
                token_name,
                role: role.to_owned(),
                method: "GET".to_owned(),
                path: format!("/v1/{path}"),
                query,
                status,
                results,
                duration_micros: duration,
                client_address: client,
            }
        })
}

pub fn upstream_health() -> impl Strategy<Value = UpstreamHealth> {
    (
        (uuid_v7(), micros(), ident(), ident(), ident()),
        prop_oneof![Just(BreakerTransition::Opened), Just(BreakerTransition::Closed), Just(BreakerTransition::Reset)],
        (any::<u32>(), any::<u64>(), option::of(text())),
    )
        .prop_map(|((id, time, instance, upstream, provider), transition, (failures, cool_down, reason))| {
            UpstreamHealth {
                schema_version: SCHEMA_VERSION,
                id,
                time_unix_micros: time,
                gateway_instance: instance,
                upstream,
                provider,
                transition,
                consecutive_failures: failures,
                cool_down_millis: cool_down,
                reason: reason.map(|reason| reason.chars().take(100).collect()),
            }
        })
}

pub fn dead_letter() -> impl Strategy<Value = DeadLetter> {
    (
        source_offset(),
        text(),
        option::of(vec(any::<u8>(), 0..32)),
        vec(any::<u8>(), 0..256),
        prop_oneof![
            Just(DeadLetterReason::NotJson),
            Just(DeadLetterReason::UnsupportedSchemaVersion),
            Just(DeadLetterReason::InvalidEvent),
            Just(DeadLetterReason::ProcessingFailed),
            Just(DeadLetterReason::TooLarge),
        ],
        text(),
        option::of(0..512usize),
    )
        .prop_map(|(source, group, key, payload, reason, error, kept)| match (reason, kept) {
            (DeadLetterReason::TooLarge, Some(kept)) => {
                DeadLetter::too_large(source, group, key.as_deref(), &payload, error, kept)
            }
            _ => DeadLetter::new(source, group, key.as_deref(), &payload, reason, error),
        })
}
