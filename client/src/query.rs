//! Console-side calls: [`LogQuery`] (a builder for filters and orders), the auto-paging
//! [`ReqlogClient::stream_logs`], and [`ReqlogClient::export_to_path`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use futures_core::Stream;

use crate::{ClientError, ReqlogClient, pb};

/// A listing or export query: an account, a [`pb::LogFilter`], an order and a page size.
///
/// Every condition is AND-ed; calling a list-valued setter twice adds a value (e.g. two
/// methods match either).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use reqlog_client::{LogQuery, pb};
///
/// let query = LogQuery::new("acct_1")
///     .search("chat")
///     .method("POST")
///     .status_class(pb::StatusClass::StatusClass5xx)
///     .since(SystemTime::now() - Duration::from_secs(3_600))
///     .order_by(pb::LogField::DurationMs, true)
///     .page_size(200);
/// let request = query.list_request();
/// assert_eq!(request.page_size, 200);
/// assert_eq!(request.filter.unwrap().methods, ["POST"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    account_id: String,
    filter: pb::LogFilter,
    order_by: Option<pb::SortOrder>,
    page_size: i32,
}

impl LogQuery {
    /// Every row of `account_id`, in the default order (newest first).
    pub fn new(account_id: impl Into<String>) -> Self {
        Self {
            account_id: account_id.into(),
            ..Self::default()
        }
    }

    /// Replaces the whole filter.
    pub fn filter(mut self, filter: pb::LogFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Case-insensitive substring over key name and prefix, method, endpoint, query,
    /// status code, error code and IP hash.
    pub fn search(mut self, term: impl Into<String>) -> Self {
        self.filter.search = term.into();
        self
    }

    /// Rows of this API key id (adds to earlier calls).
    pub fn api_key(mut self, api_key_id: impl Into<String>) -> Self {
        self.filter.api_key_ids.push(api_key_id.into());
        self
    }

    /// Rows with this HTTP method (adds to earlier calls).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.filter.methods.push(method.into());
        self
    }

    /// Rows with this status code (adds to earlier calls).
    pub fn status(mut self, status_code: i32) -> Self {
        self.filter.status_codes.push(status_code);
        self
    }

    /// Rows in this status class (adds to earlier calls).
    pub fn status_class(mut self, class: pb::StatusClass) -> Self {
        self.filter.status_classes.push(class as i32);
        self
    }

    /// Rows with this error code (adds to earlier calls).
    pub fn error_code(mut self, code: impl Into<String>) -> Self {
        self.filter.error_codes.push(code.into());
        self
    }

    /// Rows whose IP hash starts with this hex (see [`crate::hash_ip`]).
    pub fn ip_hash_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.filter.ip_hash_prefix = prefix.into();
        self
    }

    /// Rows whose endpoint starts with this path (case-sensitive).
    pub fn endpoint_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.filter.endpoint_prefix = prefix.into();
        self
    }

    /// Rows at or after this time.
    pub fn since(mut self, time: SystemTime) -> Self {
        self.filter.start_time = Some(time.into());
        self
    }

    /// Rows before this time.
    pub fn until(mut self, time: SystemTime) -> Self {
        self.filter.end_time = Some(time.into());
        self
    }

    /// Sorts by `field`; ties break on the row id in the same direction.
    pub fn order_by(mut self, field: pb::LogField, descending: bool) -> Self {
        self.order_by = Some(pb::SortOrder {
            field: field as i32,
            descending,
        });
        self
    }

    /// Rows fetched per call (0 = the server's default, 500; at most 1000).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.page_size = page_size;
        self
    }

    /// The account queried.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The first page's `ListLogs` request.
    pub fn list_request(&self) -> pb::ListLogsRequest {
        pb::ListLogsRequest {
            account_id: self.account_id.clone(),
            filter: Some(self.filter.clone()),
            order_by: self.order_by,
            page_size: self.page_size,
            page_token: String::new(),
            include_total_size: false,
        }
    }

    /// The `ExportLogs` request for this query in `format`.
    pub fn export_request(&self, format: pb::ExportFormat) -> pb::ExportLogsRequest {
        pb::ExportLogsRequest {
            account_id: self.account_id.clone(),
            format: format as i32,
            filter: Some(self.filter.clone()),
            order_by: self.order_by,
            ids: Vec::new(),
        }
    }
}

/// The stream [`ReqlogClient::stream_logs`] returns.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, ClientError>> + Send>>;

struct Pager {
    client: ReqlogClient,
    request: pb::ListLogsRequest,
    buffered: VecDeque<pb::LogEntry>,
    finished: bool,
}

impl ReqlogClient {
    /// Every row matching `query`, fetched a page at a time as the stream is read (one page
    /// is held in memory). Pages follow the server's keyset tokens, so each matching row
    /// comes exactly once even while rows are being recorded. An error ends the stream
    /// after it is yielded.
    ///
    /// ```no_run
    /// # async fn example(client: reqlog_client::ReqlogClient) -> Result<(), reqlog_client::ClientError> {
    /// use futures_util::TryStreamExt;
    /// use reqlog_client::LogQuery;
    ///
    /// let mut logs = client.stream_logs(LogQuery::new("acct_1").error_code("BSE1001"));
    /// while let Some(entry) = logs.try_next().await? {
    ///     println!("{} {} {}", entry.method, entry.endpoint, entry.status_code);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream_logs(&self, query: LogQuery) -> LogStream {
        let pager = Pager {
            client: self.clone(),
            request: query.list_request(),
            buffered: VecDeque::new(),
            finished: false,
        };
        Box::pin(futures_util::stream::unfold(
            pager,
            |mut pager| async move {
                loop {
                    if let Some(entry) = pager.buffered.pop_front() {
                        return Some((Ok(entry), pager));
                    }
                    if pager.finished {
                        return None;
                    }
                    match pager.client.list_logs(pager.request.clone()).await {
                        Ok(page) => {
                            pager.buffered.extend(page.logs);
                            pager.finished = page.next_page_token.is_empty();
                            pager.request.page_token = page.next_page_token;
                        }
                        Err(error) => {
                            pager.finished = true;
                            return Some((Err(error), pager));
                        }
                    }
                }
            },
        ))
    }

    /// Exports `query` in `format` to the file `path`, verified against the server's
    /// summary. The bytes go to a temporary file beside `path` which is synced and renamed
    /// onto `path` only once complete: a failed, cut-off or cancelled export leaves no file
    /// under the final name (and an existing one untouched).
    ///
    /// ```no_run
    /// # async fn example(client: reqlog_client::ReqlogClient) -> Result<(), reqlog_client::ClientError> {
    /// use reqlog_client::{LogQuery, pb};
    ///
    /// let summary = client
    ///     .export_to_path("logs.csv", pb::ExportFormat::Csv, &LogQuery::new("acct_1"))
    ///     .await?;
    /// println!("{} rows", summary.row_count);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn export_to_path(
        &self,
        path: impl AsRef<Path>,
        format: pb::ExportFormat,
        query: &LogQuery,
    ) -> Result<pb::ExportSummary, ClientError> {
        self.export_request_to_path(path, query.export_request(format), |_| {})
            .await
    }

    /// As [`ReqlogClient::export_to_path`] for any `ExportLogs` request (e.g. a selection of
    /// `ids`), calling `on_chunk` with each chunk as it is written (for progress).
    pub async fn export_request_to_path(
        &self,
        path: impl AsRef<Path>,
        request: pb::ExportLogsRequest,
        on_chunk: impl FnMut(&[u8]),
    ) -> Result<pb::ExportSummary, ClientError> {
        let path = path.as_ref();
        let temp = TempFile::beside(path)?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.path)
            .await?;
        let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let summary = self.export_to_with(&mut writer, request, on_chunk).await?;
        // Durable before it takes the final name, so a crash never leaves a short file there.
        writer.into_inner().sync_all().await?;
        tokio::fs::rename(&temp.path, path).await?;
        temp.keep();
        Ok(summary)
    }
}

/// A temporary file removed on drop (error, cancellation) unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// `.<name>.<random>.part` in the same directory, so the rename stays on one file system.
    fn beside(path: &Path) -> Result<Self, ClientError> {
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the export path names no file",
            )
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{:016x}.part", fastrand::u64(..)));
        Ok(Self {
            path: path.with_file_name(temp_name),
            keep: false,
        })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
