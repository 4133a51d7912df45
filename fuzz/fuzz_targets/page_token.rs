//! Any text offered as a page token: never a panic, and never a cursor unless the server
//! sealed it for this very query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqlog_service::domain::filter::{LogFilter, LogQuery, SortOrder};
use reqlog_service::domain::page_token::{Cursor, CursorValue, PageTokenKey};

fuzz_target!(|token: &str| {
    let key = PageTokenKey::new(vec![5; 32]);
    let query = LogQuery::new("acct_fuzz", LogFilter::default(), SortOrder::default())
        .expect("a literal account is valid");
    let sealed = key.seal(
        &query,
        &Cursor {
            value: CursorValue::Int(1),
            id: 1,
        },
    );
    if key.open(token, &query).is_ok() {
        assert_eq!(token, sealed, "only a token this key sealed may open");
    }
});
