//! CSV for spreadsheets. Every CSV body the API sends is written here, so one rule keeps
//! a cell from running as a formula when finance opens the file: a cell that begins with
//! `=`, `+`, `-`, `@`, a tab or a carriage return, and is not a number, gets a leading
//! `'` (OWASP's CSV-injection rule). Model, tool, team and project names come from
//! clients, so any of them can begin with `=`.
//!
//! The dashboard writes the CSV files it builds in the browser with the same rule
//! (`csv` in `dashboard/app.js`).

use std::borrow::Cow;

use serde::Serialize;

use crate::params::ApiError;

/// `cell` as it is safe to put in a spreadsheet.
pub fn neutralized(cell: &str) -> Cow<'_, str> {
    let starts_a_formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if starts_a_formula && !is_number(cell) { Cow::Owned(format!("'{cell}")) } else { Cow::Borrowed(cell) }
}

/// A decimal number, optionally signed: `-12`, `+0.5`. Left as it is, so negative
/// amounts stay numbers.
fn is_number(cell: &str) -> bool {
    let digits = cell.strip_prefix(['-', '+']).unwrap_or(cell);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty() && !fraction.is_empty() && (whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit())
}

/// A CSV body being written, a record at a time.
#[derive(Debug)]
pub struct CsvBody {
    writer: csv::Writer<Vec<u8>>,
}

fn failed(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("writing CSV: {error}"))
}

impl CsvBody {
    pub fn new() -> Self {
        CsvBody { writer: csv::Writer::from_writer(Vec::new()) }
    }

    /// Writes one record, each cell neutralized.
    pub fn record<I, T>(&mut self, cells: I) -> Result<(), ApiError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let cells: Vec<String> = cells.into_iter().map(|cell| neutralized(cell.as_ref()).into_owned()).collect();
        self.writer.write_record(&cells).map_err(failed)
    }

    /// `rows` with a header of their field names, each cell neutralized.
    pub fn from_rows<S: Serialize>(rows: &[S]) -> Result<Vec<u8>, ApiError> {
        // The csv crate lays records out from serde (header included); each is read back
        // and written again through the rule.
        let mut plain = csv::Writer::from_writer(Vec::new());
        for row in rows {
            plain.serialize(row).map_err(failed)?;
        }
        let plain = plain.into_inner().map_err(failed)?;
        let mut body = CsvBody::new();
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(plain.as_slice());
        for record in reader.records() {
            body.record(record.map_err(failed)?.iter())?;
        }
        body.finish()
    }

    pub fn finish(self) -> Result<Vec<u8>, ApiError> {
        self.writer.into_inner().map_err(failed)
    }
}

impl Default for CsvBody {
    fn default() -> Self {
        CsvBody::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail by panicking.

    use super::*;

    #[test]
    fn cells_that_would_run_as_formulas_are_neutralized() {
        for (cell, want) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tleading tab", "'\tleading tab"),
            ("\rleading return", "'\rleading return"),
            ("-", "'-"),
            ("-.5", "'-.5"),
            ("gpt-4o", "gpt-4o"),
            ("a=b", "a=b"),
            ("-12", "-12"),
            ("+0.25", "+0.25"),
            ("-3.000000001", "-3.000000001"),
            ("", ""),
        ] {
            assert_eq!(neutralized(cell), want, "{cell:?}");
        }
    }

    #[test]
    fn serialized_rows_go_through_the_rule_and_keep_their_header() {
        #[derive(Serialize)]
        struct Row {
            #[serde(rename = "Name")]
            name: &'static str,
            cost: i64,
        }
        let body =
            CsvBody::from_rows(&[Row { name: "=1+1", cost: -5 }, Row { name: "plain, with comma", cost: 7 }]).unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), "Name,cost\n'=1+1,-5\n\"plain, with comma\",7\n");
    }
}
