//! gRPC handlers: parse, call, convert. No SQL and no business rules here.

pub mod admin;
pub mod convert;
pub mod export;
pub mod ingest;
pub mod logs;
pub mod stats;
