//! Any query string: never a panic, the same pairs and names come out, and a pair whose
//! name reads as a sensitive one never keeps its value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqlog_service::domain::query::{REDACTED, Sanitizer};

fuzz_target!(|query: &str| {
    let clean = Sanitizer::new(["token"]).sanitize(query);
    let before: Vec<&str> = query.split('&').collect();
    let after: Vec<&str> = clean.split('&').collect();
    assert_eq!(before.len(), after.len());
    for (old, new) in before.iter().zip(&after) {
        let name = |pair: &str| pair.split('=').next().map(str::to_owned);
        assert_eq!(name(old), name(new));
        if old.split_once('=').is_some_and(|(name, _)| name.eq_ignore_ascii_case("token")) {
            assert_eq!(new.split_once('=').map(|(_, value)| value), Some(REDACTED));
        }
    }
});
