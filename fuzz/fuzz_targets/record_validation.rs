//! Any bytes as a RecordRequests call: decoding and validating each record never panics,
//! and what validation accepts is within the documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use reqlog_client::pb;
use reqlog_service::domain::ip::IpHasher;
use reqlog_service::domain::query::Sanitizer;
use reqlog_service::domain::record::RecordRules;
use reqlog_service::grpc::convert::record_input;

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = pb::RecordRequestsRequest::decode(bytes) else {
        return;
    };
    let rules = RecordRules {
        sanitizer: Sanitizer::default(),
        ip_hasher: IpHasher::Plain,
    };
    for record in &request.records {
        if let Ok(entry) = rules.validate(&record_input(record), 1_800_000_000_000_000) {
            assert!(!entry.account_id.is_empty() && entry.account_id.len() <= 64);
            assert!(entry.ip_hash.is_empty() || entry.ip_hash.len() == 64);
        }
    }
});
