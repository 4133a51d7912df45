//! Calling a server that has `--auth-file`: auth files written by tests, and the generated
//! clients with an `authorization: Bearer …` interceptor.

use std::path::Path;

use reqlog_client::MAX_MESSAGE_BYTES;
use reqlog_client::pb::admin_service_client::AdminServiceClient;
use reqlog_client::pb::ingest_service_client::IngestServiceClient;
use reqlog_client::pb::log_service_client::LogServiceClient;
use sha2::{Digest, Sha256};
use tonic::Request;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// One `[[principal]]` of an auth file.
#[derive(Debug, Clone)]
pub struct TestPrincipal<'a> {
    /// `name`.
    pub name: &'a str,
    /// The token; the file gets its SHA-256.
    pub token: &'a str,
    /// `role`.
    pub role: &'a str,
    /// `accounts`.
    pub accounts: &'a [&'a str],
}

/// Lower-case hex SHA-256 of the token, as the auth file wants it.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Writes an auth file naming `principals`.
pub fn write_auth_file(path: &Path, principals: &[TestPrincipal<'_>]) {
    let mut text = String::new();
    for principal in principals {
        let accounts: Vec<String> = principal
            .accounts
            .iter()
            .map(|account| format!("{account:?}"))
            .collect();
        text.push_str(&format!(
            "[[principal]]\nname = {:?}\ntoken_sha256 = \"{}\"\nrole = {:?}\naccounts = [{}]\n\n",
            principal.name,
            token_sha256(principal.token),
            principal.role,
            accounts.join(", ")
        ));
    }
    std::fs::write(path, text).expect("the auth file should be writable");
}

/// Adds `authorization: Bearer <token>` to every call (or nothing, for `None`).
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token`.
    pub fn token(token: &str) -> Self {
        Self(Some(
            format!("Bearer {token}")
                .parse()
                .expect("a test token should be valid metadata"),
        ))
    }

    /// Sends no authorization at all.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The three generated clients, each sending one bearer token.
#[derive(Debug, Clone)]
pub struct Clients {
    /// IngestService.
    pub ingest: IngestServiceClient<InterceptedService<Channel, Bearer>>,
    /// LogService.
    pub logs: LogServiceClient<InterceptedService<Channel, Bearer>>,
    /// AdminService.
    pub admin: AdminServiceClient<InterceptedService<Channel, Bearer>>,
}

impl Clients {
    /// Clients over `channel` that send `bearer`.
    pub fn new(channel: Channel, bearer: Bearer) -> Self {
        Self {
            ingest: IngestServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_encoding_message_size(usize::MAX)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            logs: LogServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminServiceClient::with_interceptor(channel, bearer)
                .max_encoding_message_size(usize::MAX)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// Clients sending `token`.
    pub fn with_token(channel: Channel, token: &str) -> Self {
        Self::new(channel, Bearer::token(token))
    }
}
