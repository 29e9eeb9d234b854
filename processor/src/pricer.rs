//! [`Pricer`]: what an interaction cost, by the catalog version in effect when it happened.
//!
//! The pricer holds every catalog version it has been given (the shipped one, a file, and
//! each `price_catalog` governance change) and prices an interaction with the latest
//! version whose `effective_from` is at or before the interaction's time. An interaction
//! older than every version is priced with the earliest one.
//!
//! Model calls cost their usage at the routed model's prices (`ModelPrice::cost`, the
//! arithmetic the gateway reserves with, so reservations and stored costs agree). A model
//! call that reached a provider whose model the catalog does not know is priced zero and
//! flagged unpriced. Tool calls cost their per-call price once the server ran them (ok or
//! tool error); a tool without a price is free.

use std::sync::Arc;

use tollgate_schemas::pricing::PriceCatalog;
use tollgate_schemas::{Call, Cost, Interaction, Nanodollars, OutcomeStatus, PricedInteraction, SCHEMA_VERSION};

/// Catalog versions by effective date.
#[derive(Debug, Clone, Default)]
pub struct Pricer {
    /// Ordered by `effective_from_unix_micros`, then by arrival.
    versions: Vec<Arc<PriceCatalog>>,
}

/// The price of one interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub cost: Cost,
    pub catalog_version: String,
    /// False when the model is unknown to the catalog (the cost is then zero).
    pub priced: bool,
}

impl Pricer {
    pub fn new(initial: PriceCatalog) -> Self {
        let mut pricer = Pricer::default();
        pricer.add(initial);
        pricer
    }

    /// Adds a catalog version; a version with the same name replaces the earlier one.
    pub fn add(&mut self, catalog: PriceCatalog) {
        self.versions.retain(|known| known.version != catalog.version);
        let at = self
            .versions
            .partition_point(|known| known.effective_from_unix_micros <= catalog.effective_from_unix_micros);
        self.versions.insert(at, Arc::new(catalog));
    }

    /// Names of the versions held, oldest effective date first.
    pub fn versions(&self) -> Vec<&str> {
        self.versions.iter().map(|catalog| catalog.version.as_str()).collect()
    }

    /// The version in effect at `time_unix_micros`.
    pub fn catalog_at(&self, time_unix_micros: i64) -> Option<&PriceCatalog> {
        let after = self.versions.partition_point(|known| known.effective_from_unix_micros <= time_unix_micros);
        self.versions.get(after.saturating_sub(1)).map(Arc::as_ref)
    }

    /// Prices `interaction`.
    pub fn price(&self, interaction: &Interaction) -> Priced {
        let Some(catalog) = self.catalog_at(interaction.time_unix_micros) else {
            return Priced { cost: Cost::default(), catalog_version: String::new(), priced: false };
        };
        let (cost, priced) = match &interaction.call {
            Call::ModelCall(call) => {
                let model =
                    call.routed_model.as_deref().or(call.response_model.as_deref()).unwrap_or(&call.request_model);
                match call.provider.as_deref() {
                    // Refused before routing: no provider was called, nothing to price.
                    None => (Cost::default(), true),
                    Some(provider) => match catalog.model(provider, model) {
                        Some(price) => (price.cost(&interaction.usage), true),
                        None => (Cost::default(), false),
                    },
                }
            }
            Call::ToolCall(call) => {
                let ran = matches!(interaction.outcome.status, OutcomeStatus::Ok | OutcomeStatus::ToolError);
                let per_call = match (ran, call.tool.as_deref()) {
                    (true, Some(tool)) => catalog.tool(&call.server, tool).unwrap_or(Nanodollars::ZERO),
                    _ => Nanodollars::ZERO,
                };
                (Cost { total: per_call, per_call, ..Cost::default() }, true)
            }
        };
        Priced { cost, catalog_version: catalog.version.clone(), priced }
    }

    /// `interaction` with its price, as the processor publishes it.
    pub fn priced_interaction(&self, interaction: Interaction, now_unix_micros: i64) -> (PricedInteraction, bool) {
        let priced = self.price(&interaction);
        let flagged = !priced.priced;
        let record = PricedInteraction {
            schema_version: SCHEMA_VERSION,
            interaction,
            cost: priced.cost,
            price_catalog_version: priced.catalog_version,
            priced: priced.priced,
            priced_at_unix_micros: now_unix_micros,
            source: None,
        };
        (record, flagged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{model_call, tool_call};

    fn catalog(version: &str, effective_from: &str, input: &str) -> PriceCatalog {
        PriceCatalog::from_toml(&format!(
            r#"
            version = "{version}"
            effective_from = "{effective_from}"
            [[models]]
            provider = "openai"
            model = "gpt-4o"
            input_per_million = "{input}"
            output_per_million = "10.00"
            [[tools]]
            server = "search"
            tool = "web"
            per_call = "0.005"
            "#
        ))
        .unwrap()
    }

    #[test]
    fn the_version_in_effect_at_the_interaction_prices_it() {
        let mut pricer = Pricer::new(catalog("v1", "2026-01-01", "2.50"));
        pricer.add(catalog("v2", "2026-06-01T12:00:00Z", "2.00"));
        assert_eq!(pricer.versions(), ["v1", "v2"]);
        let june_1_noon = 1_780_315_200_000_000;
        let mut call = model_call("openai", "gpt-4o", 1_000_000, 100_000);
        call.time_unix_micros = june_1_noon - 1;
        let before = pricer.price(&call);
        assert_eq!((before.catalog_version.as_str(), before.cost.input.0), ("v1", 2_500_000_000));
        call.time_unix_micros = june_1_noon;
        let after = pricer.price(&call);
        assert_eq!((after.catalog_version.as_str(), after.cost.input.0), ("v2", 2_000_000_000));
        assert_eq!(after.cost.output.0, 1_000_000_000);
        assert_eq!(after.cost.total.0, 3_000_000_000);
        call.time_unix_micros = 0;
        assert_eq!(pricer.price(&call).catalog_version, "v1", "older than every version: the earliest");
    }

    #[test]
    fn unknown_models_are_unpriced_and_refusals_cost_nothing() {
        let pricer = Pricer::new(catalog("v1", "2026-01-01", "2.50"));
        let unknown = pricer.price(&model_call("openai", "gpt-unknown", 10, 10));
        assert!(!unknown.priced);
        assert_eq!(unknown.cost, Cost::default());
        let mut refused = model_call("openai", "gpt-unknown", 0, 0);
        if let Call::ModelCall(call) = &mut refused.call {
            call.provider = None;
        }
        assert!(pricer.price(&refused).priced, "no provider was called");
    }

    #[test]
    fn tools_cost_their_per_call_price_once_run() {
        let pricer = Pricer::new(catalog("v1", "2026-01-01", "2.50"));
        let ran = pricer.price(&tool_call("search", "web", OutcomeStatus::Ok));
        assert_eq!((ran.cost.total.0, ran.cost.per_call.0), (5_000_000, 5_000_000));
        assert_eq!(pricer.price(&tool_call("search", "web", OutcomeStatus::ToolError)).cost.total.0, 5_000_000);
        assert_eq!(pricer.price(&tool_call("search", "web", OutcomeStatus::BlockedByPolicy)).cost.total.0, 0);
        let free = pricer.price(&tool_call("files", "read", OutcomeStatus::Ok));
        assert!(free.priced && free.cost.total.0 == 0);
    }
}
