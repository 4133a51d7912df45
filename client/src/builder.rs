//! [`ClientBuilder`]: endpoint, token, TLS and deadlines in one place.

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::{CallOptions, ClientError, ReqlogClient};

/// Builds a [`ReqlogClient`]; from [`ReqlogClient::builder`].
///
/// ```no_run
/// # async fn example() -> Result<(), reqlog_client::ClientError> {
/// use std::time::Duration;
/// use reqlog_client::ReqlogClient;
///
/// let client = ReqlogClient::builder("http://127.0.0.1:50051")
///     .token(std::env::var("REQLOG_TOKEN").unwrap_or_default())
///     .connect_timeout(Duration::from_secs(3))
///     .timeout(Duration::from_secs(30))
///     .connect()
///     .await?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    token: Option<String>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<TlsOptions>,
}

// Written by hand: the token must never reach a log line.
impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder for `endpoint`, e.g. `http://127.0.0.1:50051` or `https://reqlog.internal`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            token: None,
            timeout: None,
            connect_timeout: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Sends `authorization: Bearer <token>` on every call; an empty token sends nothing.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// The default deadline of every call ([`ReqlogClient::with_timeout`] changes it per
    /// call). An export's deadline covers the whole stream, not only its start.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Connects over TLS with these options (an `https://` endpoint).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())?;
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.to_tonic())?;
        }
        Ok(endpoint)
    }

    fn options(&self) -> Result<CallOptions, ClientError> {
        let mut options = match &self.token {
            Some(token) => CallOptions::with_token(token)?,
            None => CallOptions::default(),
        };
        options.timeout = self.timeout;
        Ok(options)
    }

    /// Connects now; fails when the server cannot be reached.
    pub async fn connect(self) -> Result<ReqlogClient, ClientError> {
        let options = self.options()?;
        let channel = self.endpoint()?.connect().await?;
        Ok(ReqlogClient::from_channel_with(channel, options))
    }

    /// A client that connects on its first call (and reconnects after failures), for a
    /// gateway that must start while reqlog is down.
    pub fn connect_lazy(self) -> Result<ReqlogClient, ClientError> {
        let options = self.options()?;
        let channel = self.endpoint()?.connect_lazy();
        Ok(ReqlogClient::from_channel_with(channel, options))
    }
}

/// TLS settings for [`ClientBuilder::tls`] (feature `tls`: rustls with ring).
///
/// ```no_run
/// # fn example() -> std::io::Result<()> {
/// use reqlog_client::TlsOptions;
///
/// let tls = TlsOptions::new()
///     .ca_certificate_pem(std::fs::read("ca.pem")?)
///     .identity_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?)
///     .domain_name("reqlog.internal");
/// # let _ = tls;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "tls")]
#[derive(Clone, Default)]
pub struct TlsOptions {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain_name: Option<String>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_certificate", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

#[cfg(feature = "tls")]
impl TlsOptions {
    /// Empty options. No system roots are compiled in, so set the CA that signed the
    /// server's certificate with [`TlsOptions::ca_certificate_pem`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts this CA certificate (PEM) for the server's certificate.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS.
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it differs from the endpoint's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    fn to_tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        if let Some(pem) = &self.ca_pem {
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}
