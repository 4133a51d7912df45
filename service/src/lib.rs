//! reqlog: an API platform's request-log store, served over gRPC.
//!
//! `grpc` (handlers, proto conversion) → `domain` (validation, no tonic or SeaORM) ←
//! `store` (SeaORM, the single writer); `app` wires them together.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod health;
pub mod lifecycle;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
pub use error::Error;
