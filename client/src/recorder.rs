//! [`Recorder`]: what a gateway calls on its request path. Records go into a bounded
//! buffer; a background task sends them in `RecordRequests` batches and retries what the
//! server could not take, reusing each record's `request_id` so a retry never stores a row
//! twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use crate::{ClientError, ReqlogClient, pb};

/// The server's default limit on records a `RecordRequests` call.
const SERVER_MAX_BATCH: usize = 1000;

/// What [`Recorder::record`] does when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the new record and count it in [`RecorderStats::dropped`]: the gateway never
    /// waits (the default).
    #[default]
    Drop,
    /// Wait for room: the gateway slows down to reqlog's pace instead of losing records.
    Wait,
}

/// How a [`Recorder`] batches and retries.
///
/// ```
/// use std::time::Duration;
/// use reqlog_client::{Overflow, RecorderConfig};
///
/// let config = RecorderConfig::default()
///     .max_batch(250)
///     .max_delay(Duration::from_millis(50))
///     .capacity(50_000)
///     .overflow(Overflow::Wait);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    max_batch: usize,
    max_delay: Duration,
    capacity: usize,
    overflow: Overflow,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_attempts: u32,
    call_timeout: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_delay: Duration::from_millis(200),
            capacity: 10_000,
            overflow: Overflow::Drop,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: 12,
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl RecorderConfig {
    /// Records per `RecordRequests` call, 1 to 1000 (default 500); a full batch is sent at once.
    pub fn max_batch(mut self, records: usize) -> Self {
        self.max_batch = records.clamp(1, SERVER_MAX_BATCH);
        self
    }

    /// The longest a record waits for its batch to fill before it is sent (default 200 ms).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Records the buffer holds while batches are sent or retried (default 10,000).
    pub fn capacity(mut self, records: usize) -> Self {
        self.capacity = records.max(1);
        self
    }

    /// What a full buffer does to a new record (default [`Overflow::Drop`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// The first retry's delay and the cap the doubling stops at (defaults 100 ms and 5 s).
    /// Each delay is jittered to between half and all of its value.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Attempts per batch before its records are given up and counted as
    /// [`RecorderStats::failed`] (default 12, about 45 s of retrying).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The deadline of one `RecordRequests` call (default 10 s); a call that runs out is
    /// retried.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// Why [`Recorder::record`] did not take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The buffer was full under [`Overflow::Drop`]; counted in [`RecorderStats::dropped`].
    #[error("recorder buffer full: record dropped")]
    Dropped,
    /// The recorder was shut down.
    #[error("recorder is shut down")]
    Closed,
}

/// A snapshot of a [`Recorder`]'s counters (records, not calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Records the server confirmed: stored, or already stored (`duplicates`).
    pub sent: u64,
    /// Of `sent`, those the server already had (a retry of a call whose answer was lost).
    pub duplicates: u64,
    /// Records sent again after a retryable failure (once per retry).
    pub retried: u64,
    /// Records the server refused as invalid (logged with the field at fault).
    pub rejected: u64,
    /// Records dropped because the buffer was full.
    pub dropped: u64,
    /// Records given up after `max_attempts`, or refused by a non-retryable error.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
enum Message {
    Record(Box<pb::RequestRecord>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Inner {
    sender: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    overflow: Overflow,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// Records requests for a gateway without holding up its request path.
///
/// [`Recorder::record`] stamps the record (a `request_id` when it has none, the time when it
/// has none) and puts it in a bounded buffer; it never waits for the network. A background
/// task sends `RecordRequests` batches when `max_batch` records are waiting or the oldest
/// has waited `max_delay`, and retries `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, deadlines and
/// broken connections with jittered exponential backoff. A retried batch carries the same
/// request ids and timestamps, so the server stores each record once. Cheap to clone;
/// clones share the buffer.
///
/// ```no_run
/// # async fn example() -> Result<(), reqlog_client::ClientError> {
/// use reqlog_client::{pb, Recorder, RecorderConfig, ReqlogClient};
///
/// let client = ReqlogClient::builder("http://127.0.0.1:50051").connect_lazy()?;
/// let recorder = Recorder::new(client, RecorderConfig::default());
/// let _ = recorder.record(pb::RequestRecord {
///     account_id: "acct_1".into(),
///     api_key_id: "key_1".into(),
///     method: "GET".into(),
///     endpoint: "/v1/models".into(),
///     status_code: 200,
///     ..Default::default()
/// }).await;
/// recorder.shutdown().await; // delivers what is buffered
/// println!("{:?}", recorder.stats());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// Starts the background sender on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new(client: ReqlogClient, config: RecorderConfig) -> Self {
        let (sender, receiver) = mpsc::channel(config.capacity);
        let counters = Arc::new(Counters::default());
        let overflow = config.overflow;
        let worker = Worker {
            client: client.with_timeout(config.call_timeout),
            config,
            counters: counters.clone(),
        };
        let handle = tokio::spawn(worker.run(receiver));
        Self {
            inner: Arc::new(Inner {
                sender,
                counters,
                overflow,
                worker: Mutex::new(Some(handle)),
            }),
        }
    }

    /// Buffers `record` for sending. Under [`Overflow::Drop`] this never waits; under
    /// [`Overflow::Wait`] it waits only while the buffer is full.
    pub async fn record(&self, record: pb::RequestRecord) -> Result<(), RecordError> {
        match self.inner.overflow {
            Overflow::Drop => self.try_record(record),
            Overflow::Wait => self
                .inner
                .sender
                .send(Message::Record(Box::new(stamp(record))))
                .await
                .map_err(|_| RecordError::Closed),
        }
    }

    /// Buffers `record` without ever waiting, whatever the policy: a full buffer drops it
    /// (counted). For synchronous code and tower middleware.
    pub fn try_record(&self, record: pb::RequestRecord) -> Result<(), RecordError> {
        match self
            .inner
            .sender
            .try_send(Message::Record(Box::new(stamp(record))))
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&self.inner.counters.dropped, 1);
                Err(RecordError::Dropped)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RecordError::Closed),
        }
    }

    /// Returns once every record buffered before the call was delivered (or given up).
    pub async fn flush(&self) -> Result<(), RecordError> {
        let (ack, done) = oneshot::channel();
        self.inner
            .sender
            .send(Message::Flush(ack))
            .await
            .map_err(|_| RecordError::Closed)?;
        done.await.map_err(|_| RecordError::Closed)
    }

    /// Delivers everything buffered, then stops the background task; later records are
    /// refused with [`RecordError::Closed`]. Calling it again does nothing.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.inner.sender.send(Message::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .inner
            .worker
            .lock()
            .map(|mut worker| worker.take())
            .unwrap_or_default();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> RecorderStats {
        let c = &self.inner.counters;
        RecorderStats {
            sent: c.sent.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }
}

/// Gives the record what a retry must repeat: its own id and its own time.
fn stamp(mut record: pb::RequestRecord) -> pb::RequestRecord {
    if record.request_id.is_empty() {
        record.request_id = uuid::Uuid::now_v7().to_string();
    }
    if record.timestamp.is_none() {
        record.timestamp = Some(SystemTime::now().into());
    }
    record
}

struct Worker {
    client: ReqlogClient,
    config: RecorderConfig,
    counters: Arc<Counters>,
}

impl Worker {
    async fn run(self, mut receiver: mpsc::Receiver<Message>) {
        let mut batch: Vec<pb::RequestRecord> = Vec::with_capacity(self.config.max_batch);
        let mut deadline = Instant::now();
        loop {
            let message = if batch.is_empty() {
                receiver.recv().await
            } else {
                tokio::select! {
                    message = receiver.recv() => message,
                    () = tokio::time::sleep_until(deadline) => {
                        self.deliver(&mut batch).await;
                        continue;
                    }
                }
            };
            match message {
                Some(Message::Record(record)) => {
                    if batch.is_empty() {
                        deadline = Instant::now() + self.config.max_delay;
                    }
                    batch.push(*record);
                    if batch.len() >= self.config.max_batch {
                        self.deliver(&mut batch).await;
                    }
                }
                Some(Message::Flush(ack)) => {
                    self.deliver(&mut batch).await;
                    let _ = ack.send(());
                }
                Some(Message::Shutdown(ack)) => {
                    // Refuse new records, then deliver what is already queued.
                    receiver.close();
                    let mut acks = vec![ack];
                    while let Some(message) = receiver.recv().await {
                        match message {
                            Message::Record(record) => {
                                batch.push(*record);
                                if batch.len() >= self.config.max_batch {
                                    self.deliver(&mut batch).await;
                                }
                            }
                            Message::Flush(ack) | Message::Shutdown(ack) => acks.push(ack),
                        }
                    }
                    self.deliver(&mut batch).await;
                    for ack in acks {
                        let _ = ack.send(());
                    }
                    return;
                }
                // Every Recorder was dropped: deliver what is left and stop.
                None => {
                    self.deliver(&mut batch).await;
                    return;
                }
            }
        }
    }

    /// Sends `batch` until the server answers or the attempts run out; empties it.
    async fn deliver(&self, batch: &mut Vec<pb::RequestRecord>) {
        if batch.is_empty() {
            return;
        }
        let records = std::mem::take(batch);
        let count = records.len();
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1;
        loop {
            match self.client.record_batch(records.clone()).await {
                Ok(response) => {
                    let rejected = response.rejected.len();
                    for rejection in &response.rejected {
                        tracing::warn!(
                            field = %rejection.field,
                            reason = %rejection.reason,
                            "reqlog rejected a record"
                        );
                    }
                    Counters::add(&self.counters.sent, count.saturating_sub(rejected));
                    Counters::add(
                        &self.counters.duplicates,
                        response.duplicates.max(0) as usize,
                    );
                    Counters::add(&self.counters.rejected, rejected);
                    return;
                }
                Err(error) if is_retryable(&error) && attempt < self.config.max_attempts => {
                    tracing::debug!(%error, attempt, records = count, "retrying a reqlog batch");
                    Counters::add(&self.counters.retried, count);
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, records = count, "reqlog batch given up");
                    Counters::add(&self.counters.failed, count);
                    return;
                }
            }
        }
    }
}

/// Whether a failed batch may be sent again. Wider than [`ClientError::is_retryable`]: a
/// broken connection (`UNKNOWN`, `CANCELLED`) may or may not have stored the batch, and
/// that is safe to retry here because every record carries its request id.
fn is_retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Rpc(status) => matches!(
            status.code(),
            Code::ResourceExhausted
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Unknown
                | Code::Cancelled
        ),
        ClientError::Transport(_) => true,
        other => other.is_retryable(),
    }
}

/// A delay between half and all of `backoff` ("equal jitter"), so that gateways that lost
/// the server together do not come back together.
fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_fills_id_and_time_but_keeps_given_ones() {
        let stamped = stamp(pb::RequestRecord::default());
        assert_eq!(stamped.request_id.len(), 36);
        assert!(stamped.timestamp.is_some());
        let again = stamp(stamped.clone());
        assert_eq!(again, stamped);
        assert_ne!(
            stamp(pb::RequestRecord::default()).request_id,
            stamped.request_id
        );
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let delay = jitter(Duration::from_millis(400));
            assert!(delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400));
        }
    }

    #[test]
    fn batches_never_exceed_the_server_limit() {
        assert_eq!(RecorderConfig::default().max_batch(5_000).max_batch, 1000);
        assert_eq!(RecorderConfig::default().max_batch(0).max_batch, 1);
    }

    #[test]
    fn broken_connections_and_overload_are_retried_but_bad_input_is_not() {
        assert!(is_retryable(&ClientError::Unavailable("down".into())));
        assert!(is_retryable(&ClientError::Rpc(Box::new(
            tonic::Status::resource_exhausted("busy")
        ))));
        assert!(is_retryable(&ClientError::Rpc(Box::new(
            tonic::Status::unknown("connection reset")
        ))));
        assert!(!is_retryable(&ClientError::FailedPrecondition(
            "purged".into()
        )));
        assert!(!is_retryable(&ClientError::Rpc(Box::new(
            tonic::Status::permission_denied("no")
        ))));
    }
}
