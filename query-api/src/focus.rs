//! The chargeback export in the column layout of the FinOps Open Cost and Usage
//! Specification (FOCUS 1.1), so finance tools that read cloud bills read AI spend too.
//!
//! One row per charge period (a UTC hour, day or month) and per distinct org, team, user,
//! project, key, provider and model, or MCP server and tool: a cost report line with every grouping.
//! How Tollgate's terms map to FOCUS columns:
//!
//! | FOCUS | Tollgate |
//! | --- | --- |
//! | `BillingAccountId`, `BillingAccountName` | org |
//! | `SubAccountId`, `SubAccountName` | team |
//! | `ResourceId`, `ResourceName` (`ResourceType` `Virtual Key`) | the virtual key |
//! | `ProviderName`, `PublisherName`, `InvoiceIssuerName` | the model provider (or MCP server for tools) |
//! | `ServiceName`, `SkuId` | the model (or tool) and `provider/model` |
//! | `ConsumedQuantity`, `ConsumedUnit` | input plus output tokens (`Tokens`), or tool calls (`Calls`) |
//! | `BilledCost`, `EffectiveCost`, `ListCost`, `ContractedCost` | the priced cost in USD (list prices, so all four agree) |
//! | `Tags` | `{"user": ..., "project": ...}` as JSON |
//!
//! Costs are exact decimal strings (nine places); the `x_` columns carry Tollgate's own
//! figures (interactions, tokens, integer nano-dollars) as the specification allows.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::params::{ApiError, Bucket};
use crate::store::CostLine;

/// One FOCUS row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FocusRow {
    pub billed_cost: String,
    pub billing_account_id: String,
    pub billing_account_name: String,
    pub billing_currency: &'static str,
    pub billing_period_start: String,
    pub billing_period_end: String,
    pub charge_category: &'static str,
    pub charge_class: Option<&'static str>,
    pub charge_description: String,
    pub charge_frequency: &'static str,
    pub charge_period_start: String,
    pub charge_period_end: String,
    pub consumed_quantity: i64,
    pub consumed_unit: &'static str,
    pub contracted_cost: String,
    pub effective_cost: String,
    pub invoice_issuer_name: String,
    pub list_cost: String,
    pub pricing_category: &'static str,
    pub pricing_quantity: i64,
    pub pricing_unit: &'static str,
    pub provider_name: String,
    pub publisher_name: String,
    pub region_id: Option<String>,
    pub region_name: Option<String>,
    pub resource_id: String,
    pub resource_name: String,
    pub resource_type: &'static str,
    pub service_category: &'static str,
    pub service_name: String,
    pub sku_id: String,
    pub sub_account_id: Option<String>,
    pub sub_account_name: Option<String>,
    pub tags: String,
    #[serde(rename = "x_Interactions")]
    pub x_interactions: i64,
    #[serde(rename = "x_InputTokens")]
    pub x_input_tokens: i64,
    #[serde(rename = "x_OutputTokens")]
    pub x_output_tokens: i64,
    #[serde(rename = "x_CostNanos")]
    pub x_cost_nanos: i64,
}

/// The groupings a chargeback line carries.
pub const GROUPINGS: [&str; 9] = ["org", "team", "user", "project", "key", "provider", "model", "tool", "server"];

fn iso(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The first instant of the month of `time` (UTC) and of the month after.
fn month_of(time: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let start = NaiveDate::from_ymd_opt(time.year(), time.month(), 1)?;
    let next = if time.month() == 12 {
        NaiveDate::from_ymd_opt(time.year() + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(time.year(), time.month() + 1, 1)?
    };
    Some((Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0)?), Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?)))
}

/// The FOCUS rows of cost report `lines`, bucketed by `bucket` in UTC and grouped by
/// every one of [`GROUPINGS`].
pub fn rows(lines: &[CostLine], bucket: Bucket) -> Result<Vec<FocusRow>, ApiError> {
    let mut rows = Vec::with_capacity(lines.len());
    for line in lines {
        let group = |name: &str| line.groups.get(name).cloned().flatten();
        let start = line
            .bucket_start
            .as_deref()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc))
            .ok_or_else(|| ApiError::internal("a chargeback line has no charge period"))?;
        let (month_start, month_end) =
            month_of(start).ok_or_else(|| ApiError::internal(format!("no billing period for {start}")))?;
        let end = match bucket {
            Bucket::Hour => start + Duration::hours(1),
            Bucket::Day => start + Duration::days(1),
            Bucket::Month => month_end,
        };
        // A tool call's provider is its MCP server.
        let provider = group("provider").or_else(|| group("server")).unwrap_or_else(|| "unknown".to_owned());
        let (service, unit, quantity) = match (group("tool"), group("model")) {
            (Some(tool), _) => (tool, "Calls", line.interactions),
            (None, Some(model)) => (model, "Tokens", line.input_tokens + line.output_tokens),
            (None, None) => ("unknown".to_owned(), "Requests", line.interactions),
        };
        let org = group("org").unwrap_or_default();
        let key = group("key").unwrap_or_default();
        let tags = serde_json::json!({ "user": group("user"), "project": group("project") }).to_string();
        rows.push(FocusRow {
            billed_cost: line.cost_usd.clone(),
            billing_account_id: org.clone(),
            billing_account_name: org,
            billing_currency: "USD",
            billing_period_start: iso(month_start),
            billing_period_end: iso(month_end),
            charge_category: "Usage",
            charge_class: None,
            charge_description: format!(
                "{} {service} via {provider}: {} interactions",
                unit.to_lowercase(),
                line.interactions
            ),
            charge_frequency: "Usage-Based",
            charge_period_start: iso(start),
            charge_period_end: iso(end),
            consumed_quantity: quantity,
            consumed_unit: unit,
            contracted_cost: line.cost_usd.clone(),
            effective_cost: line.cost_usd.clone(),
            invoice_issuer_name: provider.clone(),
            list_cost: line.cost_usd.clone(),
            pricing_category: "Standard",
            pricing_quantity: quantity,
            pricing_unit: unit,
            provider_name: provider.clone(),
            publisher_name: provider.clone(),
            region_id: None,
            region_name: None,
            resource_id: key.clone(),
            resource_name: key,
            resource_type: "Virtual Key",
            service_category: "AI and Machine Learning",
            sku_id: format!("{provider}/{service}"),
            service_name: service,
            sub_account_id: group("team"),
            sub_account_name: group("team"),
            tags,
            x_interactions: line.interactions,
            x_input_tokens: line.input_tokens,
            x_output_tokens: line.output_tokens,
            x_cost_nanos: line.cost_nanos,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn line(bucket_start: &str, model: Option<&str>, tool: Option<&str>) -> CostLine {
        let mut groups = BTreeMap::new();
        for name in GROUPINGS {
            groups.insert(name, Some(format!("{name}-1")));
        }
        groups.insert("model", model.map(str::to_owned));
        groups.insert("tool", tool.map(str::to_owned));
        groups.insert("project", None);
        groups.insert("provider", model.map(|_| "provider-1".to_owned()));
        groups.insert("server", tool.map(|_| "server-1".to_owned()));
        CostLine {
            bucket_start: Some(bucket_start.to_owned()),
            groups,
            interactions: 3,
            cost_nanos: 1_500_000_001,
            cost_usd: "1.500000001".to_owned(),
            input_tokens: 100,
            output_tokens: 20,
        }
    }

    #[test]
    fn periods_units_and_money_follow_the_specification() {
        let day = rows(&[line("2026-12-31T00:00:00Z", Some("gpt-4o"), None)], Bucket::Day).unwrap();
        let row = &day[0];
        assert_eq!(row.charge_period_start, "2026-12-31T00:00:00Z");
        assert_eq!(row.charge_period_end, "2027-01-01T00:00:00Z");
        assert_eq!(row.billing_period_start, "2026-12-01T00:00:00Z");
        assert_eq!(row.billing_period_end, "2027-01-01T00:00:00Z");
        assert_eq!((row.consumed_quantity, row.consumed_unit), (120, "Tokens"));
        assert_eq!(row.billed_cost, "1.500000001");
        assert_eq!(row.effective_cost, row.billed_cost);
        assert_eq!(row.sku_id, "provider-1/gpt-4o");
        assert_eq!(row.tags, r#"{"project":null,"user":"user-1"}"#);

        let tool = rows(&[line("2026-02-10T13:00:00Z", None, Some("search"))], Bucket::Hour).unwrap();
        assert_eq!((tool[0].consumed_quantity, tool[0].consumed_unit), (3, "Calls"));
        assert_eq!((tool[0].provider_name.as_str(), tool[0].sku_id.as_str()), ("server-1", "server-1/search"));
        assert_eq!(tool[0].charge_period_end, "2026-02-10T14:00:00Z");
        let month = rows(&[line("2026-02-01T00:00:00Z", None, Some("search"))], Bucket::Month).unwrap();
        assert_eq!(month[0].charge_period_end, "2026-03-01T00:00:00Z");
    }
}
