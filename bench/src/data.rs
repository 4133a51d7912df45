//! The benchmark's rows, deterministic from a seed (PERFORMANCE.md's shape): 1,000 accounts
//! with a Zipf-like tail (the biggest holds 20% of rows), ~3,000 keys, 14 endpoints, half
//! the rows with query params, 17% with error codes, timestamps over 30 days in arrival
//! order, request ids half time-ordered (ULID-like) and half random.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqlog_client::pb;

/// Accounts in the data set.
pub(crate) const ACCOUNTS: usize = 1_000;
/// The biggest account, holding 20% of rows.
pub(crate) const BIGGEST: &str = "acct_0000";
/// The endpoints; `/v1/images/generations` (16% of rows) is the frequent search term.
pub(crate) const ENDPOINTS: [(&str, u32); 14] = [
    ("/v1/chat/completions", 30),
    ("/v1/images/generations", 16),
    ("/v1/embeddings", 12),
    ("/v1/models", 8),
    ("/v1/files", 6),
    ("/v1/audio/speech", 5),
    ("/v1/audio/transcriptions", 4),
    ("/v1/moderations", 4),
    ("/v1/batches", 4),
    ("/v1/fine_tuning/jobs", 3),
    ("/v1/assistants", 3),
    ("/v1/threads", 2),
    ("/v1/vector_stores", 2),
    ("/v1/uploads", 1),
];
/// Searched for, found in ~16% of rows (an endpoint).
pub(crate) const FREQUENT_TERM: &str = "images/gen";
/// Searched for, found in ~1% of rows (an error code).
pub(crate) const RARE_TERM: &str = "RTL4290";
/// Searched for, found nowhere.
pub(crate) const ABSENT_TERM: &str = "zz-absent-term";

const ERROR_CODES: [(&str, u32); 5] = [
    ("BSE1001", 6),
    ("BSE1002", 4),
    ("QTA2001", 3),
    ("AUTH3001", 3),
    ("RTL4290", 1),
];
const METHODS: [(&str, u32); 5] = [
    ("POST", 60),
    ("GET", 30),
    ("DELETE", 5),
    ("PUT", 3),
    ("PATCH", 2),
];
const AGENTS: [&str; 4] = [
    "openai-python/1.40.0",
    "node-fetch/3.3.2",
    "curl/8.5.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15",
];

/// A generator of rows.
#[derive(Debug)]
pub(crate) struct Generator {
    rng: StdRng,
    account_cdf: Vec<f64>,
    start_seconds: i64,
    span_seconds: i64,
    total: usize,
    produced: usize,
}

fn pick<'a>(rng: &mut StdRng, table: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = table.iter().map(|(_, weight)| weight).sum();
    let mut draw = rng.random_range(0..total);
    for (value, weight) in table {
        if draw < *weight {
            return value;
        }
        draw -= weight;
    }
    table[0].0
}

/// The name of account `n`.
pub(crate) fn account_name(n: usize) -> String {
    format!("acct_{n:04}")
}

impl Generator {
    /// `total` rows ending about now, from `seed`.
    pub(crate) fn new(seed: u64, total: usize, now_seconds: i64) -> Self {
        // Account 0 holds 20%; the other 999 share 80% with weights 1/rank.
        let tail: f64 = (1..ACCOUNTS).map(|rank| 1.0 / rank as f64).sum();
        let mut cdf = Vec::with_capacity(ACCOUNTS);
        let mut acc = 0.2;
        cdf.push(acc);
        for rank in 1..ACCOUNTS {
            acc += 0.8 * (1.0 / rank as f64) / tail;
            cdf.push(acc);
        }
        let span_seconds = 30 * 86_400;
        Self {
            rng: StdRng::seed_from_u64(seed),
            account_cdf: cdf,
            start_seconds: now_seconds - span_seconds - 60,
            span_seconds,
            total: total.max(1),
            produced: 0,
        }
    }

    fn account(&mut self) -> usize {
        let draw: f64 = self.rng.random();
        self.account_cdf
            .partition_point(|&edge| edge < draw)
            .min(ACCOUNTS - 1)
    }

    /// The next row, in arrival (timestamp) order.
    pub(crate) fn next_record(&mut self) -> pb::RequestRecord {
        let n = self.produced;
        self.produced += 1;
        let account = self.account();
        // ~3 keys per account, more for the big ones.
        let keys = if account == 0 { 40 } else { 1 + account % 5 };
        let key = self.rng.random_range(0..keys);
        let offset = (self.span_seconds as f64 * n as f64 / self.total as f64) as i64;
        let seconds = self.start_seconds + offset;
        let nanos = self.rng.random_range(0..1_000) * 1_000_000;
        let request_id = if self.rng.random_bool(0.5) {
            // ULID-like: time first, then randomness.
            format!(
                "{:012x}{:016x}",
                seconds * 1000 + i64::from(nanos / 1_000_000),
                self.rng.random::<u64>()
            )
        } else {
            format!("{:032x}", self.rng.random::<u128>())
        };
        let status = match self.rng.random_range(0..100) {
            0..=79 => 200,
            80..=84 => 201,
            85..=89 => 400,
            90..=93 => 401,
            94..=96 => 429,
            _ => 500,
        };
        let error_code = if self.rng.random_range(0..100) < 17 {
            pick(&mut self.rng, &ERROR_CODES).to_owned()
        } else {
            String::new()
        };
        let query_string = if self.rng.random_bool(0.5) {
            format!(
                "limit={}&after=obj_{:08x}",
                self.rng.random_range(1..100),
                self.rng.random::<u32>()
            )
        } else {
            String::new()
        };
        pb::RequestRecord {
            account_id: account_name(account),
            request_id,
            api_key_id: format!("key_{account:04}_{key:02}"),
            api_key_name: format!("Key {key} of account {account}"),
            api_key_prefix: format!("bye_{:05X}", (account * 64 + key) % 0xFFFFF),
            method: pick(&mut self.rng, &METHODS).to_owned(),
            endpoint: pick(&mut self.rng, &ENDPOINTS).to_owned(),
            query_string,
            status_code: status,
            error_code,
            client_ip: format!(
                "10.{}.{}.{}",
                account % 256,
                key,
                self.rng.random_range(1..255)
            ),
            user_agent: AGENTS[self.rng.random_range(0..AGENTS.len())].to_owned(),
            duration_ms: self.rng.random_range(5..3_000),
            timestamp: Some(prost_types::Timestamp { seconds, nanos }),
        }
    }

    /// The next `count` rows.
    pub(crate) fn batch(&mut self, count: usize) -> Vec<pb::RequestRecord> {
        (0..count).map(|_| self.next_record()).collect()
    }
}
