//! The layout of the Parquet archive, shared by the processor that writes it and the query
//! API that reads it.
//!
//! One directory per table, hive-partitioned by the UTC date of each record's event time,
//! and one file per source partition and offset range:
//!
//! ```text
//! priced_interactions/date=2026-11-26/priced_interactions-p003-00000000000000001200-00000000000000001799.parquet
//! ```
//!
//! A range of records that spans several dates is one file in each date's directory, all
//! with the same name. Because a file's name is fixed by what it holds, writing a range
//! again (after a crash, say) replaces the file instead of adding a duplicate. Each file
//! also carries its table, topic, partition and offsets as Parquet key-value metadata
//! ([`METADATA_TOPIC`] and its neighbours).
//!
//! Progress markers live under [`PROGRESS_DIR`]; they are not Parquet and readers skip
//! them.

use crate::topics;

/// One archived table and the topic it is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Directory and SQL table name.
    pub name: &'static str,
    pub topic: &'static str,
}

pub const PRICED_INTERACTIONS: Table = Table { name: "priced_interactions", topic: topics::PRICED_INTERACTIONS };
pub const POLICY_VIOLATIONS: Table = Table { name: "policy_violations", topic: topics::POLICY_VIOLATIONS };
pub const QUOTA_DECISIONS: Table = Table { name: "quota_decisions", topic: topics::QUOTA_DECISIONS };
pub const GOVERNANCE_CHANGES: Table = Table { name: "governance_changes", topic: topics::GOVERNANCE };
pub const ACCESS_EVENTS: Table = Table { name: "access_events", topic: topics::ACCESS };
pub const UPSTREAM_HEALTH: Table = Table { name: "upstream_health", topic: topics::UPSTREAM_HEALTH };

/// Every archived table.
pub const TABLES: [Table; 6] =
    [PRICED_INTERACTIONS, POLICY_VIOLATIONS, QUOTA_DECISIONS, GOVERNANCE_CHANGES, ACCESS_EVENTS, UPSTREAM_HEALTH];

/// The hive partition column of every table.
pub const DATE_COLUMN: &str = "date";

/// Where the archive keeps its own progress (not data).
pub const PROGRESS_DIR: &str = "_progress";

/// Key-value metadata keys of every archived file.
pub const METADATA_TABLE: &str = "tollgate.table";
pub const METADATA_TOPIC: &str = "tollgate.topic";
pub const METADATA_PARTITION: &str = "tollgate.partition";
pub const METADATA_FIRST_OFFSET: &str = "tollgate.first_offset";
pub const METADATA_LAST_OFFSET: &str = "tollgate.last_offset";

impl Table {
    /// The table whose topic is `topic`.
    pub fn for_topic(topic: &str) -> Option<Table> {
        TABLES.into_iter().find(|table| table.topic == topic)
    }

    /// The path, relative to the archive's root, of the file holding offsets
    /// `first..=last` of `partition` whose records fall on `date` (`YYYY-MM-DD`).
    pub fn file_path(&self, date: &str, partition: i32, first: i64, last: i64) -> String {
        format!("{0}/{DATE_COLUMN}={date}/{0}-p{partition:03}-{first:020}-{last:020}.parquet", self.name)
    }

    /// The path of the progress marker of `partition`.
    pub fn progress_path(&self, partition: i32) -> String {
        format!("{PROGRESS_DIR}/{}/p{partition:03}.json", self.name)
    }
}

/// The date partition (`YYYY-MM-DD`, UTC) of an event time.
pub fn date_partition(time_unix_micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(time_unix_micros) {
        Some(time) => time.format("%Y-%m-%d").to_string(),
        // Outside chrono's range (about 262,000 years either side of 1970).
        None => "invalid".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sort_by_offset_and_name_their_range() {
        let path = PRICED_INTERACTIONS.file_path("2026-11-26", 3, 1_200, 1_799);
        assert_eq!(
            path,
            "priced_interactions/date=2026-11-26/priced_interactions-p003-00000000000000001200-00000000000000001799.parquet"
        );
        assert!(
            PRICED_INTERACTIONS.file_path("2026-11-26", 3, 9, 10)
                < PRICED_INTERACTIONS.file_path("2026-11-26", 3, 10, 11)
        );
        assert_eq!(Table::for_topic(topics::GOVERNANCE), Some(GOVERNANCE_CHANGES));
        assert_eq!(Table::for_topic(topics::INTERACTIONS), None);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(date_partition(0), "1970-01-01");
        // 2026-11-26T23:59:59.999999Z and one microsecond later.
        assert_eq!(date_partition(1_795_737_599_999_999), "2026-11-26");
        assert_eq!(date_partition(1_795_737_600_000_000), "2026-11-27");
        assert_eq!(date_partition(i64::MIN), "invalid");
    }
}
