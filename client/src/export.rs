//! `ExportLogs` into any `AsyncWrite`, verified against the server's summary.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::pb::export_logs_response::Payload;
use crate::{ClientError, ReqlogClient, pb};

impl ReqlogClient {
    /// Exports an account's logs into `writer`, chunk by chunk as they arrive (the file is
    /// never held in memory), and returns the server's summary once the bytes written
    /// match it: the same byte count and the same SHA-256. `row_count` is reported as the
    /// server counted it.
    ///
    /// A stream that ends without a summary is [`ClientError::ExportTruncated`]; bytes that
    /// do not match the summary are [`ClientError::ExportMismatch`]. In both cases what was
    /// written is incomplete or wrong and should be discarded. A failed write is
    /// [`ClientError::Io`]; the export is then cancelled.
    ///
    /// ```no_run
    /// # async fn example(client: reqlog_client::ReqlogClient) -> Result<(), reqlog_client::ClientError> {
    /// use reqlog_client::pb;
    ///
    /// // Any `AsyncWrite`: a `tokio::fs::File` behind a `BufWriter`, a socket, memory.
    /// let mut csv = Vec::new();
    /// let summary = client
    ///     .export_to(
    ///         &mut csv,
    ///         pb::ExportLogsRequest { account_id: "acct_1".into(), ..Default::default() },
    ///     )
    ///     .await?;
    /// println!("{} rows, sha256 {}", summary.row_count, summary.sha256);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn export_to<W>(
        &self,
        writer: W,
        request: pb::ExportLogsRequest,
    ) -> Result<pb::ExportSummary, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        self.export_to_with(writer, request, |_| {}).await
    }

    /// As [`ReqlogClient::export_to`], calling `on_chunk` with each chunk once it is written
    /// (for a progress line).
    pub async fn export_to_with<W>(
        &self,
        writer: W,
        request: pb::ExportLogsRequest,
        on_chunk: impl FnMut(&[u8]),
    ) -> Result<pb::ExportSummary, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        // tonic's deadline ends when the response starts; a stream's deadline must also
        // cover its body, so the whole transfer runs under it here.
        match self.options.timeout {
            Some(timeout) => {
                tokio::time::timeout(timeout, self.export_inner(writer, request, on_chunk))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Rpc(Box::new(
                            tonic::Status::deadline_exceeded("export deadline exceeded"),
                        )))
                    })
            }
            None => self.export_inner(writer, request, on_chunk).await,
        }
    }

    async fn export_inner<W>(
        &self,
        mut writer: W,
        request: pb::ExportLogsRequest,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<pb::ExportSummary, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let mut stream = self.logs().export_logs(request).await?.into_inner();
        let mut digest = Sha256::new();
        let mut received: u64 = 0;
        while let Some(message) = stream.message().await? {
            match message.payload {
                Some(Payload::Chunk(chunk)) => {
                    digest.update(&chunk);
                    received += chunk.len() as u64;
                    writer.write_all(&chunk).await?;
                    on_chunk(&chunk);
                }
                Some(Payload::Summary(summary)) => {
                    writer.flush().await?;
                    let sha256 = to_hex(&digest.finalize());
                    let complete = u64::try_from(summary.byte_count).ok() == Some(received)
                        && summary.sha256 == sha256;
                    // The summary is the last message: anything after it is a broken stream.
                    if !complete || stream.message().await?.is_some() {
                        return Err(ClientError::ExportMismatch {
                            expected_bytes: summary.byte_count,
                            expected_sha256: summary.sha256,
                            received_bytes: received,
                            received_sha256: sha256,
                        });
                    }
                    return Ok(summary);
                }
                // A message this client does not know (a newer server): it cannot vouch
                // for the file any more.
                None => {
                    return Err(ClientError::ExportTruncated {
                        received_bytes: received,
                    });
                }
            }
        }
        writer.flush().await?;
        Err(ClientError::ExportTruncated {
            received_bytes: received,
        })
    }
}

/// Lower-case hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(
            to_hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
