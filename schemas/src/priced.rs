//! [`PricedInteraction`]: an interaction with its cost, as the processor stores it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Nanodollars, SourceOffset};
use crate::interaction::Interaction;

/// An [`Interaction`] priced against one version of the price catalog. Published on
/// [`crate::topics::PRICED_INTERACTIONS`] and written to Parquet and ClickHouse; its id is
/// the interaction's id, so replays overwrite rather than duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PricedInteraction {
    pub schema_version: u16,
    pub interaction: Interaction,
    pub cost: Cost,
    /// The price catalog version used, for example `2026-11-01`.
    pub price_catalog_version: String,
    /// False when no price was known for the model or tool: the cost is zero and an
    /// `unpriced_model` violation was raised.
    pub priced: bool,
    /// When the processor priced it.
    pub priced_at_unix_micros: i64,
    /// Where the interaction was read from. Priced records of one source partition are
    /// published in source order, so a record whose source offset is not above the
    /// highest one already seen is a replay's copy: the archive drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceOffset>,
}

/// The cost of one interaction, by component. `total` is the sum of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cost {
    pub total: Nanodollars,
    /// Uncached input tokens.
    pub input: Nanodollars,
    /// Output tokens other than reasoning tokens.
    pub output: Nanodollars,
    pub cache_read_input: Nanodollars,
    pub cache_creation_input: Nanodollars,
    pub reasoning_output: Nanodollars,
    /// Per-call price (tools, or per-request model fees).
    pub per_call: Nanodollars,
}

impl PricedInteraction {
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.interaction.validate().map_err(|problem| format!("interaction: {problem}"))?;
        let components = [
            self.cost.input,
            self.cost.output,
            self.cost.cache_read_input,
            self.cost.cache_creation_input,
            self.cost.reasoning_output,
            self.cost.per_call,
        ];
        let sum = components.iter().try_fold(Nanodollars::ZERO, |acc, part| acc.checked_add(*part));
        if sum != Some(self.cost.total) {
            return Err("cost.total must equal the sum of the cost components".to_owned());
        }
        Ok(())
    }
}
