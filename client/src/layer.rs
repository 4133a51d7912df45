//! [`RecorderLayer`]: a tower layer that records every HTTP request it wraps through a
//! [`Recorder`] (feature `tower`).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::header::{HeaderName, USER_AGENT};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Recorder, pb};

/// Who made a request: put it in the request's extensions (from an outer authentication
/// layer) or the response's (from the handler or an inner layer, whose changes to the
/// request the recorder does not see). Requests without an identity are not recorded:
/// reqlog needs an account and a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    /// The account the key belongs to.
    pub account_id: String,
    /// The key's id.
    pub api_key_id: String,
    /// The key's name when the request was made.
    pub api_key_name: String,
    /// The key's public prefix, e.g. `bye_AB12C`.
    pub api_key_prefix: String,
}

/// The caller's address, as a request extension (e.g. from axum's `ConnectInfo`, or a
/// proxy protocol layer). Sent raw to reqlog, which stores only its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Records each request the wrapped service answers: method, path, query, status, latency
/// (until the response head), client IP, user agent and the [`ApiKeyIdentity`].
///
/// Recording uses [`Recorder::try_record`], so the request path never waits; a full
/// buffer drops the record and counts it.
///
/// ```
/// # async fn example() -> Result<(), reqlog_client::ClientError> {
/// use reqlog_client::{Recorder, RecorderConfig, RecorderLayer, ReqlogClient};
///
/// let client = ReqlogClient::builder("http://127.0.0.1:50051").connect_lazy()?;
/// let recorder = Recorder::new(client, RecorderConfig::default());
/// let layer = RecorderLayer::new(recorder)
///     .identity_headers("x-account-id", "x-api-key-id")
///     .client_ip_header("x-forwarded-for");
/// // axum: Router::new().route(...).layer(layer)
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RecorderLayer {
    recorder: Recorder,
    identity_headers: Option<(HeaderName, HeaderName)>,
    client_ip_header: Option<HeaderName>,
}

impl RecorderLayer {
    /// Records into `recorder`; identity and IP come from extensions only.
    pub fn new(recorder: Recorder) -> Self {
        Self {
            recorder,
            identity_headers: None,
            client_ip_header: None,
        }
    }

    /// Also takes the identity from two request headers an upstream authenticator sets:
    /// the account id and the API key id (used when no [`ApiKeyIdentity`] extension is set).
    ///
    /// # Panics
    ///
    /// When a name is not a valid header name.
    pub fn identity_headers(mut self, account_id: &str, api_key_id: &str) -> Self {
        self.identity_headers = Some((header_name(account_id), header_name(api_key_id)));
        self
    }

    /// Also takes the client IP from this request header (its first comma-separated entry,
    /// as in `x-forwarded-for`) when no [`ClientIp`] extension is set. Only name a header
    /// that a trusted proxy sets.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name.
    pub fn client_ip_header(mut self, name: &str) -> Self {
        self.client_ip_header = Some(header_name(name));
        self
    }
}

fn header_name(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes())
        .expect("a header name given to RecorderLayer should be valid")
}

impl<S> Layer<S> for RecorderLayer {
    type Service = RecorderService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecorderService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RecorderLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct RecorderService<S> {
    inner: S,
    layer: RecorderLayer,
}

/// What is known of a request before its response.
#[derive(Debug)]
struct Pending {
    record: pb::RequestRecord,
    identity: Option<ApiKeyIdentity>,
    started: Instant,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RecorderService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let pending = self.pending(&request);
        RecordFuture {
            inner: Box::pin(self.inner.call(request)),
            pending: Some(pending),
            recorder: self.layer.recorder.clone(),
        }
    }
}

impl<S> RecorderService<S> {
    fn pending<B>(&self, request: &http::Request<B>) -> Pending {
        let headers = request.headers();
        let text = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let identity = request
            .extensions()
            .get::<ApiKeyIdentity>()
            .cloned()
            .or_else(|| {
                let (account, key) = self.layer.identity_headers.as_ref()?;
                Some(ApiKeyIdentity {
                    account_id: text(account)?,
                    api_key_id: text(key)?,
                    ..ApiKeyIdentity::default()
                })
            });
        let client_ip = request
            .extensions()
            .get::<ClientIp>()
            .map(|ip| ip.0)
            .or_else(|| {
                let value = text(self.layer.client_ip_header.as_ref()?)?;
                value.split(',').next()?.trim().parse().ok()
            })
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        Pending {
            record: pb::RequestRecord {
                method: request.method().as_str().to_owned(),
                endpoint: request.uri().path().to_owned(),
                query_string: request.uri().query().unwrap_or_default().to_owned(),
                client_ip,
                user_agent: text(&USER_AGENT).unwrap_or_default(),
                timestamp: Some(SystemTime::now().into()),
                ..pb::RequestRecord::default()
            },
            identity,
            started: Instant::now(),
        }
    }
}

/// The future of [`RecorderService`]: the inner response, recorded once it is ready.
#[derive(Debug)]
pub struct RecordFuture<F> {
    // Boxed so this future is `Unpin` without a pin-projection crate.
    inner: Pin<Box<F>>,
    pending: Option<Pending>,
    recorder: Recorder,
}

impl<F, ResBody, E> Future for RecordFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        if let (Ok(response), Some(pending)) = (&result, self.pending.take()) {
            let identity = response
                .extensions()
                .get::<ApiKeyIdentity>()
                .cloned()
                .or(pending.identity);
            if let Some(identity) = identity {
                let mut record = pending.record;
                record.account_id = identity.account_id;
                record.api_key_id = identity.api_key_id;
                record.api_key_name = identity.api_key_name;
                record.api_key_prefix = identity.api_key_prefix;
                record.status_code = i32::from(response.status().as_u16());
                record.duration_ms =
                    u32::try_from(pending.started.elapsed().as_millis()).unwrap_or(u32::MAX);
                // Never waits: a full buffer drops the record and counts it.
                let _ = self.recorder.try_record(record);
            }
        }
        Poll::Ready(result)
    }
}
