//! Export files: the request's rules and the CSV, JSON and NDJSON encodings. Pure: no tonic,
//! no SeaORM, no I/O beyond writing into a byte buffer.
//!
//! The file format is normative (API.md, "Export file format"): users' scripts parse it, so
//! a change here is a breaking change even when every test is adjusted along with it.

use std::borrow::Cow;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Violation;
use super::filter::{LogFilter, LogQuery};
use super::ip::to_hex;
use super::time::{MAX_SECONDS, MICROS_PER_SECOND};

/// Most ids one `ids` export may list: a console's selection, not a bulk lookup.
pub const MAX_EXPORT_IDS: usize = 10_000;

/// Largest chunk of the file one stream message carries (API.md: at most 64 KiB).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// The CSV header line, and the JSON keys in their order.
pub const COLUMNS: [&str; 9] = [
    "apikey_name",
    "apikey_prefix",
    "method",
    "endpoint",
    "query_params",
    "status_code",
    "error_code",
    "ip_hash",
    "timestamp",
];

/// The file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header line, `\n` line ends, formula-defused fields.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object a line.
    Ndjson,
}

impl ExportFormat {
    /// The format for a proto enum value: 0 (UNSPECIFIED) and 1 are CSV, 2 JSON, 3 NDJSON.
    pub fn from_proto(value: i32) -> Result<Self, Violation> {
        match value {
            0 | 1 => Ok(Self::Csv),
            2 => Ok(Self::Json),
            3 => Ok(Self::Ndjson),
            _ => Err(Violation::new("format", "is not a known ExportFormat")),
        }
    }
}

/// The row ids of an `ids` export: sorted, without repeats. Ids are the decimal strings
/// `LogEntry.id` carries; anything else is refused (an unknown but well-formed id is not: it
/// is skipped when reading).
pub fn parse_ids(ids: &[String]) -> Result<Vec<i64>, Violation> {
    if ids.len() > MAX_EXPORT_IDS {
        return Err(Violation::new(
            "ids",
            format!("may list at most {MAX_EXPORT_IDS} ids"),
        ));
    }
    let mut parsed = ids
        .iter()
        .map(|id| {
            id.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| id.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| Violation::new("ids", "must be ids as LogEntry.id returns them"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_unstable();
    parsed.dedup();
    Ok(parsed)
}

/// What an export reads: the ListLogs query, or (`ids`) a console's selection of rows in
/// the query's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    /// The account and order; the filter is empty when `ids` is set.
    pub query: LogQuery,
    /// Only these row ids (sorted, distinct), when set; ids of other accounts or of no row
    /// select nothing.
    pub ids: Option<Vec<i64>>,
}

impl ExportQuery {
    /// An export of `query`, or, when `ids` is non-empty, of exactly those rows: API.md
    /// says the filter is then ignored (it was still validated: bad input is refused even
    /// where it would not be used).
    pub fn new(mut query: LogQuery, ids: &[String]) -> Result<Self, Violation> {
        if ids.is_empty() {
            return Ok(Self { query, ids: None });
        }
        let ids = parse_ids(ids)?;
        query.filter = LogFilter::default();
        Ok(Self {
            query,
            ids: Some(ids),
        })
    }
}

/// One exported row: the nine exported columns (no `user_agent`, no ids). The text is
/// borrowed where it can be from what the rows were read from (a page of JSON text), so
/// that reading a page does not allocate every value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow<'a> {
    /// The key's name when the request was made.
    pub api_key_name: Cow<'a, str>,
    /// The key's prefix when the request was made.
    pub api_key_prefix: Cow<'a, str>,
    /// Upper-case HTTP method.
    pub method: Cow<'a, str>,
    /// The path.
    pub endpoint: Cow<'a, str>,
    /// The sanitized query string, if any.
    pub query_params: Option<Cow<'a, str>>,
    /// The HTTP status.
    pub status_code: i32,
    /// The platform error code, if any.
    pub error_code: Option<Cow<'a, str>>,
    /// The full SHA-256 hex of the client IP, or "" when none was recorded.
    pub ip_hash: Cow<'a, str>,
    /// When the request happened, microseconds since the epoch (UTC).
    pub timestamp_micros: i64,
}

/// A timestamp as RFC 3339 UTC with milliseconds, `2026-03-06T12:30:45.000Z`; 24 ASCII bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Millis([u8; 24]);

impl Rfc3339Millis {
    /// Formats microseconds since the epoch, truncated to the millisecond. Stored times lie
    /// in 1970..=9999 (ingest refuses others); anything outside is clamped into that range
    /// so that the output always has its fixed shape.
    pub fn new(micros: i64) -> Self {
        let max_micros = MAX_SECONDS * MICROS_PER_SECOND + (MICROS_PER_SECOND - 1);
        let micros = micros.clamp(0, max_micros);
        let seconds = micros / MICROS_PER_SECOND;
        let millis = (micros % MICROS_PER_SECOND) / 1_000;
        let days = seconds / 86_400;
        let second_of_day = seconds % 86_400;
        let (year, month, day) = civil_from_days(days);

        let mut out = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut out[0..4], year);
        put_digits(&mut out[5..7], month);
        put_digits(&mut out[8..10], day);
        put_digits(&mut out[11..13], second_of_day / 3_600);
        put_digits(&mut out[14..16], second_of_day % 3_600 / 60);
        put_digits(&mut out[17..19], second_of_day % 60);
        put_digits(&mut out[20..23], millis);
        Self(out)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written into the array.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

/// Writes `value`'s last `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut value: i64) {
    for slot in out.iter_mut().rev() {
        // `value` is non-negative and `% 10` < 10, so the cast cannot truncate.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of a day number since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, valid for every day number).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let shifted_month = (5 * day_of_year + 2) / 153; // [0, 11], March first
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1; // [1, 31]
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A CSV field defused against spreadsheet formula injection (OWASP): a value that would
/// start with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'`, so that
/// spreadsheet programs show it as text instead of evaluating it.
pub fn defuse(field: &str) -> Cow<'_, str> {
    match field.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{field}")),
        _ => Cow::Borrowed(field),
    }
}

/// One row as a JSON object: exactly the nine keys, in the header's order.
#[derive(Serialize)]
struct JsonRow<'a> {
    apikey_name: &'a str,
    apikey_prefix: &'a str,
    method: &'a str,
    endpoint: &'a str,
    query_params: Option<&'a str>,
    status_code: i32,
    error_code: Option<&'a str>,
    ip_hash: &'a str,
    timestamp: &'a str,
}

impl<'a> JsonRow<'a> {
    fn new(row: &'a ExportRow<'_>, timestamp: &'a Rfc3339Millis) -> Self {
        Self {
            apikey_name: &row.api_key_name,
            apikey_prefix: &row.api_key_prefix,
            method: &row.method,
            endpoint: &row.endpoint,
            query_params: row.query_params.as_deref(),
            status_code: row.status_code,
            error_code: row.error_code.as_deref(),
            ip_hash: &row.ip_hash,
            timestamp: timestamp.as_str(),
        }
    }
}

/// Writing a row failed. Writing into memory cannot fail in practice; this keeps the
/// encoders free of `unwrap`.
#[derive(Debug, thiserror::Error)]
#[error("export encoding failed: {0}")]
pub struct EncodeError(String);

impl From<csv::Error> for EncodeError {
    fn from(error: csv::Error) -> Self {
        Self(error.to_string())
    }
}

impl From<serde_json::Error> for EncodeError {
    fn from(error: serde_json::Error) -> Self {
        Self(error.to_string())
    }
}

impl From<std::io::Error> for EncodeError {
    fn from(error: std::io::Error) -> Self {
        Self(error.to_string())
    }
}

/// Turns rows into the bytes of an export file, appended to a caller's buffer: `begin`,
/// then `rows` any number of times, then `finish`. It keeps no rows, so the file can be as
/// long as the database holds.
#[derive(Debug)]
pub struct Encoder {
    format: ExportFormat,
    rows: u64,
}

impl Encoder {
    /// An encoder for `format`.
    pub fn new(format: ExportFormat) -> Self {
        Self { format, rows: 0 }
    }

    /// Rows encoded so far.
    pub fn row_count(&self) -> u64 {
        self.rows
    }

    /// What comes before the first row: the CSV header, or the JSON array's opening.
    pub fn begin(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self.format {
            ExportFormat::Csv => {
                let mut writer = csv_writer(out);
                writer.write_record(COLUMNS)?;
                writer.flush()?;
            }
            ExportFormat::Json => out.push(b'['),
            ExportFormat::Ndjson => {}
        }
        Ok(())
    }

    /// Appends `rows`.
    pub fn rows(&mut self, rows: &[ExportRow<'_>], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self.format {
            ExportFormat::Csv => {
                let mut writer = csv_writer(out);
                let mut status = itoa::Buffer::new();
                for row in rows {
                    let timestamp = Rfc3339Millis::new(row.timestamp_micros);
                    writer.write_record([
                        defuse(&row.api_key_name).as_bytes(),
                        defuse(&row.api_key_prefix).as_bytes(),
                        defuse(&row.method).as_bytes(),
                        defuse(&row.endpoint).as_bytes(),
                        defuse(row.query_params.as_deref().unwrap_or_default()).as_bytes(),
                        status.format(row.status_code).as_bytes(),
                        defuse(row.error_code.as_deref().unwrap_or_default()).as_bytes(),
                        defuse(&row.ip_hash).as_bytes(),
                        timestamp.as_str().as_bytes(),
                    ])?;
                }
                writer.flush()?;
            }
            ExportFormat::Json => {
                for (n, row) in rows.iter().enumerate() {
                    let first = self.rows == 0 && n == 0;
                    out.extend_from_slice(if first { b"\n" } else { b",\n" });
                    let timestamp = Rfc3339Millis::new(row.timestamp_micros);
                    serde_json::to_writer(&mut *out, &JsonRow::new(row, &timestamp))?;
                }
            }
            ExportFormat::Ndjson => {
                for row in rows {
                    let timestamp = Rfc3339Millis::new(row.timestamp_micros);
                    serde_json::to_writer(&mut *out, &JsonRow::new(row, &timestamp))?;
                    out.push(b'\n');
                }
            }
        }
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// What comes after the last row: the JSON array's closing (`[\n{…},\n{…}\n]\n`, or
    /// `[]\n` when there are no rows).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.format == ExportFormat::Json {
            out.extend_from_slice(if self.rows == 0 { b"]\n" } else { b"\n]\n" });
        }
    }
}

/// A CSV writer appending to `out`: RFC 4180 quoting (only where needed), `\n` line ends.
fn csv_writer(out: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out)
}

/// Cuts the file into stream chunks and keeps the summary: byte count and SHA-256 of
/// every byte handed out.
#[derive(Debug, Default)]
pub struct Chunker {
    pending: Vec<u8>,
    bytes: u64,
    digest: Sha256,
}

/// What an export added up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows in the file.
    pub row_count: u64,
    /// Bytes in the file.
    pub byte_count: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

impl Chunker {
    /// An empty chunker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffer encoders append to.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Takes the next full chunk, if [`MAX_CHUNK_BYTES`] are pending.
    pub fn full_chunk(&mut self) -> Option<Vec<u8>> {
        (self.pending.len() >= MAX_CHUNK_BYTES).then(|| self.take(MAX_CHUNK_BYTES))
    }

    /// Takes what is pending as a last, possibly short, chunk (none when nothing is).
    pub fn last_chunk(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| self.take(self.pending.len().min(MAX_CHUNK_BYTES)))
    }

    fn take(&mut self, len: usize) -> Vec<u8> {
        // Copy out rather than split: the chunk is exactly sized, and `pending` keeps its
        // capacity for the next rows.
        let chunk = self.pending[..len].to_vec();
        self.pending.drain(..len);
        self.bytes += chunk.len() as u64;
        self.digest.update(&chunk);
        chunk
    }

    /// The summary of every chunk taken, for `row_count` rows.
    pub fn summary(self, row_count: u64) -> Summary {
        Summary {
            row_count,
            byte_count: self.bytes,
            sha256: to_hex(&self.digest.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ExportRow<'static> {
        ExportRow {
            api_key_name: "Key 1".into(),
            api_key_prefix: "bye_AB12C".into(),
            method: "GET".into(),
            endpoint: "/v1/models".into(),
            query_params: Some("page=2".into()),
            status_code: 200,
            error_code: None,
            ip_hash: "".into(),
            timestamp_micros: 1_772_800_245_123_456,
        }
    }

    fn encode(format: ExportFormat, rows: &[ExportRow<'_>]) -> String {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(format);
        encoder.begin(&mut out).unwrap();
        for row in rows {
            encoder.rows(std::slice::from_ref(row), &mut out).unwrap();
        }
        encoder.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (999, "1970-01-01T00:00:00.000Z"),
            (1_000, "1970-01-01T00:00:00.001Z"),
            (1_772_800_245_123_456, "2026-03-06T12:30:45.123Z"),
            (1_772_800_245_000_000, "2026-03-06T12:30:45.000Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999_999, "2000-02-29T23:59:59.999Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000Z"),
            (1_704_067_199_999_000, "2023-12-31T23:59:59.999Z"),
            (1_709_164_800_000_000, "2024-02-29T00:00:00.000Z"),
            (
                MAX_SECONDS * MICROS_PER_SECOND + 999_999,
                "9999-12-31T23:59:59.999Z",
            ),
            // Out of the stored range: clamped, never malformed.
            (-1, "1970-01-01T00:00:00.000Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
        ];
        for (micros, expected) in cases {
            assert_eq!(Rfc3339Millis::new(micros).as_str(), expected, "{micros}");
        }
    }

    #[test]
    fn timestamps_agree_with_day_arithmetic_for_every_day_of_four_centuries() {
        // Walk day by day from 1970 to 2400 and check the calendar advances by one day.
        let (mut year, mut month, mut day) = (1970, 1, 1);
        for days in 0..(430 * 366) {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let month_days = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_days {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn formula_leads_are_defused() {
        for (input, expected) in [
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=b", "a=b"),
            ("", ""),
            ("'quoted", "'quoted"),
            (" =x", " =x"),
        ] {
            assert_eq!(defuse(input), expected);
        }
    }

    #[test]
    fn csv_quotes_only_where_needed_and_defuses() {
        let mut tricky = row();
        tricky.api_key_name = "=HYPERLINK(\"http://x\",\"a,b\")".into();
        tricky.api_key_prefix = "-1".into();
        tricky.query_params = Some("q=\"a b\"&x=1,2".into());
        tricky.error_code = Some("@E".into());
        tricky.ip_hash = "ab".repeat(32).into();
        let csv = encode(ExportFormat::Csv, &[row(), tricky]);
        assert_eq!(
            csv,
            format!(
                "apikey_name,apikey_prefix,method,endpoint,query_params,status_code,error_code,ip_hash,timestamp\n\
                 Key 1,bye_AB12C,GET,/v1/models,page=2,200,,,2026-03-06T12:30:45.123Z\n\
                 \"'=HYPERLINK(\"\"http://x\"\",\"\"a,b\"\")\",'-1,GET,/v1/models,\"q=\"\"a b\"\"&x=1,2\",200,'@E,{},2026-03-06T12:30:45.123Z\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn csv_quotes_line_breaks() {
        let mut broken = row();
        broken.api_key_name = "a\nb".into();
        broken.api_key_prefix = "c\rd".into();
        let csv = encode(ExportFormat::Csv, &[broken]);
        assert!(
            csv.ends_with(
                "\"a\nb\",\"c\rd\",GET,/v1/models,page=2,200,,,2026-03-06T12:30:45.123Z\n"
            )
        );
    }

    #[test]
    fn json_is_one_array_with_keys_in_order() {
        let json = encode(ExportFormat::Json, &[row(), row()]);
        let object = r#"{"apikey_name":"Key 1","apikey_prefix":"bye_AB12C","method":"GET","endpoint":"/v1/models","query_params":"page=2","status_code":200,"error_code":null,"ip_hash":"","timestamp":"2026-03-06T12:30:45.123Z"}"#;
        assert_eq!(json, format!("[\n{object},\n{object}\n]\n"));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert_eq!(encode(ExportFormat::Json, &[]), "[]\n");
        // Values are not defused outside CSV.
        let mut formula = row();
        formula.api_key_name = "=1+1".into();
        assert!(encode(ExportFormat::Json, &[formula]).contains(r#""apikey_name":"=1+1""#));
    }

    #[test]
    fn ndjson_is_one_object_a_line() {
        let ndjson = encode(ExportFormat::Ndjson, &[row(), row(), row()]);
        assert_eq!(ndjson.lines().count(), 3);
        for line in ndjson.lines() {
            let object: serde_json::Value = serde_json::from_str(line).unwrap();
            let keys: Vec<&str> = object
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys.len(), 9);
        }
        assert_eq!(encode(ExportFormat::Ndjson, &[]), "");
    }

    #[test]
    fn formats_come_from_the_proto_enum() {
        assert_eq!(ExportFormat::from_proto(0), Ok(ExportFormat::Csv));
        assert_eq!(ExportFormat::from_proto(1), Ok(ExportFormat::Csv));
        assert_eq!(ExportFormat::from_proto(2), Ok(ExportFormat::Json));
        assert_eq!(ExportFormat::from_proto(3), Ok(ExportFormat::Ndjson));
        assert_eq!(ExportFormat::from_proto(4).unwrap_err().field, "format");
        assert_eq!(ExportFormat::from_proto(-1).unwrap_err().field, "format");
    }

    #[test]
    fn ids_parse_sort_and_dedupe() {
        let ids: Vec<String> = ["7", "3", "7", "0"].map(String::from).to_vec();
        assert_eq!(parse_ids(&ids), Ok(vec![0, 3, 7]));
        for bad in ["", "abc", "-1", "+1", " 1", "99999999999999999999"] {
            assert_eq!(
                parse_ids(&[bad.to_owned()]).unwrap_err().field,
                "ids",
                "{bad}"
            );
        }
        let too_many = vec!["1".to_owned(); MAX_EXPORT_IDS + 1];
        assert_eq!(parse_ids(&too_many).unwrap_err().field, "ids");
        assert!(parse_ids(&vec!["1".to_owned(); MAX_EXPORT_IDS]).is_ok());
    }

    #[test]
    fn ids_replace_the_filter() {
        let filter = LogFilter {
            search: Some("x".into()),
            ..Default::default()
        };
        let query = LogQuery::new("acct", filter, Default::default()).unwrap();
        let by_filter = ExportQuery::new(query.clone(), &[]).unwrap();
        assert_eq!(by_filter.ids, None);
        assert_eq!(by_filter.query, query);
        let by_ids = ExportQuery::new(query, &["5".to_owned(), "2".to_owned()]).unwrap();
        assert_eq!(by_ids.ids, Some(vec![2, 5]));
        assert_eq!(by_ids.query.filter, LogFilter::default());
        assert_eq!(by_ids.query.account_id, "acct");
    }

    #[test]
    fn chunks_are_bounded_and_summarised() {
        let mut chunker = Chunker::new();
        chunker
            .buffer()
            .extend(std::iter::repeat_n(b'x', MAX_CHUNK_BYTES * 2 + 10));
        let mut chunks = Vec::new();
        while let Some(chunk) = chunker.full_chunk() {
            chunks.push(chunk);
        }
        assert_eq!(chunks.len(), 2);
        chunks.extend(chunker.last_chunk());
        assert!(chunker.last_chunk().is_none());
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 10]
        );
        let all: Vec<u8> = chunks.concat();
        let summary = chunker.summary(3);
        assert_eq!(summary.row_count, 3);
        assert_eq!(summary.byte_count, all.len() as u64);
        assert_eq!(summary.sha256, to_hex(&Sha256::digest(&all)));
        assert_eq!(
            Chunker::new().summary(0).sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
