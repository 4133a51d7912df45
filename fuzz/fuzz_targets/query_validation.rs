//! Any bytes as a ListLogs call: decoding and validating the filter, order and page size
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use reqlog_client::pb;
use reqlog_service::domain::filter::{LogQuery, effective_page_size};
use reqlog_service::grpc::convert;

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = pb::ListLogsRequest::decode(bytes) else {
        return;
    };
    let _ = effective_page_size(request.page_size);
    let (Ok(filter), Ok(order)) = (
        convert::filter(request.filter.as_ref()),
        convert::order(request.order_by.as_ref()),
    ) else {
        return;
    };
    let _ = LogQuery::new(&request.account_id, filter, order);
});
