//! gRPC handlers: parse, call, convert. No SQL and no business rules here.

pub mod admin;
pub mod convert;
pub mod ingest;
pub mod logs;
