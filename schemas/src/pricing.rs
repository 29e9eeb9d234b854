//! The price catalog: what a token or a tool call costs, per provider and model, in one
//! named version.
//!
//! The catalog is a document (TOML in the repository, `pricing/catalog.toml`; JSON inside
//! a `price_catalog` governance change) so finance can read and review it. Prices are
//! decimal strings in US dollars per million tokens (`"2.50"`), or per call for tools, and
//! are turned into integer nano-dollars on load: no float ever touches money. A price
//! finer than one nano-dollar per million tokens is refused rather than rounded.
//!
//! Costs are computed per interaction and component, each rounded half-up to a whole
//! nano-dollar, so a report's total is exactly the sum of the stored per-call costs.
//!
//! A model matches an entry by provider and name: the exact name, one of the entry's
//! `aliases`, or the name with a dated snapshot suffix (`gpt-4o-2024-08-06` and
//! `claude-sonnet-4-5-20250929` match `gpt-4o` and `claude-sonnet-4-5`).

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Nanodollars;
use crate::interaction::Usage;
use crate::priced::Cost;

/// One version of the price catalog, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceCatalogDocument {
    /// The version recorded with every priced interaction, for example `2026-11-01`.
    pub version: String,
    /// When these prices take effect (RFC 3339 date or date-time, UTC).
    pub effective_from: String,
    #[serde(default)]
    pub models: Vec<ModelPriceDocument>,
    #[serde(default)]
    pub tools: Vec<ToolPriceDocument>,
}

/// Prices of one model at one provider, in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPriceDocument {
    /// `gen_ai.provider.name`, for example `openai`.
    pub provider: String,
    pub model: String,
    /// Other names of the same model at this provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Uncached input tokens.
    pub input_per_million: String,
    /// Output tokens (and reasoning tokens, unless `reasoning_per_million` is given).
    pub output_per_million: String,
    /// Input tokens read from the provider's prompt cache. Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_million: Option<String>,
    /// Input tokens written to the provider's prompt cache. Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<String>,
    /// Reasoning tokens. Default: the output price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_million: Option<String>,
    /// Largest output a call can produce, for worst-case reservations when a request
    /// sets no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

/// The price of one MCP tool call, in USD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolPriceDocument {
    /// The MCP server's configured name, or `*` for any.
    pub server: String,
    /// The tool name, or `*` for every tool of the server.
    pub tool: String,
    pub per_call: String,
}

/// A price catalog ready to price with: every price in integer nano-dollars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceCatalog {
    pub version: String,
    pub effective_from: String,
    /// `effective_from` as microseconds since the Unix epoch (UTC).
    pub effective_from_unix_micros: i64,
    /// Provider -> model name (and aliases) -> prices; looked up by `&str`, without
    /// allocating, on every priced call.
    models: HashMap<String, HashMap<String, ModelPrice>>,
    tools: HashMap<(String, String), Nanodollars>,
}

/// One model's prices in nano-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub reasoning: i64,
    pub max_output_tokens: Option<u64>,
}

/// Why a catalog document is unusable; every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid price catalog:\n  - {}", .problems.join("\n  - "))]
pub struct CatalogError {
    pub problems: Vec<String>,
}

/// An RFC 3339 date (midnight UTC) or date-time, as microseconds since the Unix epoch.
pub fn parse_utc_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(time.timestamp_micros());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

/// US dollars as a decimal string, in nano-dollars; `None` if it is not a non-negative
/// decimal with at most nine fractional digits.
pub fn parse_usd(text: &str) -> Option<i64> {
    let value = Decimal::from_str_exact(text.trim()).ok()?;
    if value.is_sign_negative() || value.scale() > 9 {
        return None;
    }
    let nanos = value.checked_mul(Decimal::from(Nanodollars::PER_DOLLAR))?;
    i64::from_str(&nanos.trunc().to_string()).ok()
}

/// The catalog that ships with Tollgate (`pricing/catalog.toml`).
pub const SHIPPED_CATALOG: &str = include_str!("../../pricing/catalog.toml");

impl PriceCatalog {
    /// The catalog that ships with Tollgate.
    pub fn shipped() -> Result<Self, CatalogError> {
        Self::from_toml(SHIPPED_CATALOG)
    }

    /// Parses the TOML form (`pricing/catalog.toml`).
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let document: PriceCatalogDocument = toml::from_str(text)
            .map_err(|error| CatalogError { problems: vec![error.to_string().trim().to_owned()] })?;
        Self::from_document(&document)
    }

    /// Validates a document into a catalog.
    pub fn from_document(document: &PriceCatalogDocument) -> Result<Self, CatalogError> {
        let mut problems = Vec::new();
        if document.version.trim().is_empty() {
            problems.push("version must not be empty".to_owned());
        }
        let effective_from_unix_micros = parse_utc_time(&document.effective_from).unwrap_or_else(|| {
            problems.push(format!(
                "effective_from `{}` is not an RFC 3339 date (2026-11-01) or date-time (2026-11-01T00:00:00Z)",
                document.effective_from
            ));
            0
        });
        let mut models = HashMap::new();
        for entry in &document.models {
            let name = format!("{}/{}", entry.provider, entry.model);
            let mut price = |field: &str, text: &str| {
                parse_usd(text).unwrap_or_else(|| {
                    problems.push(format!(
                        "{name}: {field} `{text}` is not a non-negative decimal with at most 9 fractional digits"
                    ));
                    0
                })
            };
            let input = price("input_per_million", &entry.input_per_million);
            let output = price("output_per_million", &entry.output_per_million);
            let cache_read =
                entry.cache_read_per_million.as_deref().map_or(input, |t| price("cache_read_per_million", t));
            let cache_write =
                entry.cache_write_per_million.as_deref().map_or(input, |t| price("cache_write_per_million", t));
            let reasoning =
                entry.reasoning_per_million.as_deref().map_or(output, |t| price("reasoning_per_million", t));
            let model_price = ModelPrice {
                input,
                output,
                cache_read,
                cache_write,
                reasoning,
                max_output_tokens: entry.max_output_tokens,
            };
            for model in std::iter::once(&entry.model).chain(&entry.aliases) {
                let by_model: &mut HashMap<String, ModelPrice> = models.entry(entry.provider.clone()).or_default();
                if by_model.insert(model.clone(), model_price).is_some() {
                    problems.push(format!("{}/{model} is priced twice", entry.provider));
                }
            }
        }
        let mut tools = HashMap::new();
        for entry in &document.tools {
            let Some(per_call) = parse_usd(&entry.per_call) else {
                problems.push(format!(
                    "tool {}/{}: per_call `{}` is not a valid price",
                    entry.server, entry.tool, entry.per_call
                ));
                continue;
            };
            if tools.insert((entry.server.clone(), entry.tool.clone()), Nanodollars(per_call)).is_some() {
                problems.push(format!("tool {}/{} is priced twice", entry.server, entry.tool));
            }
        }
        if !problems.is_empty() {
            return Err(CatalogError { problems });
        }
        Ok(PriceCatalog {
            version: document.version.clone(),
            effective_from: document.effective_from.clone(),
            effective_from_unix_micros,
            models,
            tools,
        })
    }

    /// The prices of `model` at `provider`, by exact name, alias, or dated snapshot.
    pub fn model(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        let by_model = self.models.get(provider)?;
        by_model.get(model).or_else(|| by_model.get(without_snapshot_suffix(model)?))
    }

    /// The per-call price of a tool: exact, then the server's `*`, then `*`/`*`.
    pub fn tool(&self, server: &str, tool: &str) -> Option<Nanodollars> {
        [(server, tool), (server, "*"), ("*", "*")]
            .into_iter()
            .find_map(|(server, tool)| self.tools.get(&(server.to_owned(), tool.to_owned())).copied())
    }
}

impl ModelPrice {
    /// The cost of `usage` (OpenTelemetry meaning: input includes cache reads and
    /// writes, output includes reasoning), each component rounded half-up.
    pub fn cost(&self, usage: &Usage) -> Cost {
        let cached = usage.cache_read_input_tokens.saturating_add(usage.cache_creation_input_tokens);
        let uncached_input = usage.input_tokens.saturating_sub(cached);
        let reasoning = usage.reasoning_output_tokens.min(usage.output_tokens);
        let plain_output = usage.output_tokens - reasoning;
        let input = tokens_cost(uncached_input, self.input);
        let output = tokens_cost(plain_output, self.output);
        let cache_read_input = tokens_cost(usage.cache_read_input_tokens, self.cache_read);
        let cache_creation_input = tokens_cost(usage.cache_creation_input_tokens, self.cache_write);
        let reasoning_output = tokens_cost(reasoning, self.reasoning);
        let total = [input, output, cache_read_input, cache_creation_input, reasoning_output]
            .iter()
            .fold(Nanodollars::ZERO, |sum, part| Nanodollars(sum.0.saturating_add(part.0)));
        Cost {
            total,
            input,
            output,
            cache_read_input,
            cache_creation_input,
            reasoning_output,
            per_call: Nanodollars::ZERO,
        }
    }

    /// The most a call can cost: `input_tokens` of uncached input and `max_output_tokens`
    /// of output at the dearer of the output and reasoning prices.
    pub fn worst_case(&self, input_tokens: u64, max_output_tokens: u64) -> Nanodollars {
        let input = tokens_cost(input_tokens, self.input);
        let output = tokens_cost(max_output_tokens, self.output.max(self.reasoning));
        Nanodollars(input.0.saturating_add(output.0))
    }
}

/// `tokens` at `per_million` nano-dollars per million tokens, rounded half-up.
fn tokens_cost(tokens: u64, per_million: i64) -> Nanodollars {
    let exact = i128::from(tokens) * i128::from(per_million);
    let rounded = (exact + 500_000) / 1_000_000;
    Nanodollars(i64::try_from(rounded).unwrap_or(i64::MAX))
}

/// `name` without a trailing `-YYYY-MM-DD` or `-YYYYMMDD` snapshot date.
fn without_snapshot_suffix(name: &str) -> Option<&str> {
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let (head, tail) = name.rsplit_once('-')?;
    if tail.len() == 8 && digits(tail) {
        return Some(head);
    }
    // -YYYY-MM-DD: three dash-separated numeric parts.
    let (head, day) = (head, tail);
    let (head, month) = head.rsplit_once('-')?;
    let (head, year) = head.rsplit_once('-')?;
    (year.len() == 4 && digits(year) && month.len() == 2 && digits(month) && day.len() == 2 && digits(day))
        .then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
        version = "test-1"
        effective_from = "2026-11-01"

        [[models]]
        provider = "openai"
        model = "gpt-4o"
        input_per_million = "2.50"
        cache_read_per_million = "1.25"
        output_per_million = "10.00"
        max_output_tokens = 16384

        [[models]]
        provider = "anthropic"
        model = "claude-sonnet-4-5"
        aliases = ["claude-sonnet-4-5-latest"]
        input_per_million = "3"
        output_per_million = "15"
        cache_read_per_million = "0.30"
        cache_write_per_million = "3.75"

        [[tools]]
        server = "search"
        tool = "*"
        per_call = "0.005"
    "#;

    #[test]
    fn usd_parses_exactly_to_nanodollars() {
        assert_eq!(parse_usd("2.50"), Some(2_500_000_000));
        assert_eq!(parse_usd("0.000000001"), Some(1));
        assert_eq!(parse_usd("0.0375"), Some(37_500_000));
        assert_eq!(parse_usd("0.0000000001"), None, "finer than a nano-dollar");
        assert_eq!(parse_usd("-1"), None);
        assert_eq!(parse_usd("1e3"), None);
        assert_eq!(parse_usd("ten"), None);
    }

    #[test]
    fn costs_are_exact_per_component() {
        let catalog = PriceCatalog::from_toml(CATALOG).unwrap();
        let price = catalog.model("openai", "gpt-4o-2024-08-06").unwrap();
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
            cache_read_input_tokens: 400,
            reasoning_output_tokens: 100,
            ..Usage::default()
        };
        let cost = price.cost(&usage);
        // 600 uncached at $2.50/M, 400 cached at $1.25/M, 400 output + 100 reasoning at $10/M.
        assert_eq!(cost.input, Nanodollars(1_500_000));
        assert_eq!(cost.cache_read_input, Nanodollars(500_000));
        assert_eq!(cost.output, Nanodollars(4_000_000));
        assert_eq!(cost.reasoning_output, Nanodollars(1_000_000));
        assert_eq!(cost.total, Nanodollars(7_000_000));
        // One token at $0.0375/M is 37.5 nano-dollars: rounded half-up.
        assert_eq!(tokens_cost(1, 37_500_000), Nanodollars(38));
        assert_eq!(price.worst_case(1_000, 100), Nanodollars(2_500_000 + 1_000_000));
    }

    #[test]
    fn models_match_by_name_alias_and_snapshot() {
        let catalog = PriceCatalog::from_toml(CATALOG).unwrap();
        assert!(catalog.model("anthropic", "claude-sonnet-4-5-20250929").is_some());
        assert!(catalog.model("anthropic", "claude-sonnet-4-5-latest").is_some());
        assert!(catalog.model("openai", "gpt-4o-mini").is_none(), "a different model, not a snapshot");
        assert!(catalog.model("azure", "gpt-4o").is_none(), "prices are per provider");
        assert_eq!(catalog.tool("search", "web"), Some(Nanodollars(5_000_000)));
        assert_eq!(catalog.tool("files", "read"), None);
    }

    #[test]
    fn every_problem_is_reported() {
        let error = PriceCatalog::from_toml(
            r#"
            version = ""
            effective_from = "2026-01-01"
            [[models]]
            provider = "p"
            model = "m"
            input_per_million = "-1"
            output_per_million = "x"
            [[models]]
            provider = "p"
            model = "m"
            input_per_million = "1"
            output_per_million = "1"
            "#,
        )
        .unwrap_err();
        assert_eq!(error.problems.len(), 4, "{error}");
    }

    #[test]
    fn the_shipped_catalog_is_valid() {
        let catalog = PriceCatalog::shipped().unwrap();
        for (provider, model) in [
            ("openai", "gpt-4o"),
            ("openai", "gpt-4o-mini"),
            ("openai", "text-embedding-3-small"),
            ("anthropic", "claude-sonnet-4-5"),
            ("gcp.gemini", "gemini-2.5-pro"),
            ("mistral_ai", "mistral-large-latest"),
            ("groq", "llama-3.3-70b-versatile"),
        ] {
            assert!(catalog.model(provider, model).is_some(), "{provider}/{model}");
        }
    }
}
