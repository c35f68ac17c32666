//! Large uploads through an upload session, with bounded memory and resume.
//!
//! Implements <https://learn.microsoft.com/graph/api/driveitem-createuploadsession>
//! (and <https://learn.microsoft.com/graph/api/resources/uploadsession>) for drive items, and
//! <https://learn.microsoft.com/graph/api/attachment-createuploadsession> with
//! <https://learn.microsoft.com/graph/outlook-large-attachments> for Outlook attachments.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderValue, CONTENT_RANGE};
use reqwest::Method;
use serde_json::Value;
use url::Url;

use crate::client::{api_error, GraphClient, Req};
use crate::error::{Error, Result};
use crate::http::{display_url, send_buffered};
use crate::retry::{header_str, is_retryable_status, parse_retry_after};

/// Lowest throughput assumed when sizing a fragment PUT's timeout: 64 KiB/s.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 64 * 1024;

/// The caller's byte source, read one fragment at a time.
struct Source<S> {
    stream: S,
    pending: Bytes,
    read: u64,
    total: u64,
    shown: String,
}

impl<S> Source<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
{
    fn err(&self, detail: String, source: Option<std::io::Error>) -> Error {
        Error::Source {
            url: self.shown.clone(),
            detail,
            source,
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        loop {
            match self.stream.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => return Ok(Some(chunk)),
                Some(Err(e)) => {
                    // The cause in the message too: a restore's per-item failure list shows
                    // only this error's text (e.g. the damaged pack the store names).
                    return Err(self.err(
                        format!("reading failed after {} bytes: {e}", self.read),
                        Some(e),
                    ));
                }
                None => return Ok(None),
            }
        }
    }

    /// Exactly `len` bytes (one fragment).
    async fn fragment(&mut self, len: usize) -> Result<Bytes> {
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            let Some(mut chunk) = self.next_chunk().await? else {
                return Err(self.err(
                    format!(
                        "ended after {} bytes, but total_size is {}",
                        self.read + buf.len() as u64,
                        self.total
                    ),
                    None,
                ));
            };
            let want = len - buf.len();
            if chunk.len() > want {
                self.pending = chunk.split_off(want);
            }
            buf.extend_from_slice(&chunk);
        }
        self.read += len as u64;
        if self.read == self.total {
            if let Some(extra) = self.next_chunk().await? {
                return Err(self.err(
                    format!(
                        "holds more than total_size {} bytes ({} more at least)",
                        self.total,
                        extra.len()
                    ),
                    None,
                ));
            }
        }
        Ok(buf.freeze())
    }
}

/// Largest range PUT to an Outlook attachment upload session: 4 MiB ("up to 4 MB each time",
/// attachment-createuploadsession).
pub const OUTLOOK_ATTACHMENT_FRAGMENT: u64 = 4 * 1024 * 1024;

/// Smallest attachment Microsoft sends through an upload session: 3 MB (smaller files are
/// POSTed to `…/attachments` in one request; outlook-large-attachments).
pub const OUTLOOK_SESSION_MIN_BYTES: u64 = 3 * 1024 * 1024;

/// Largest attachment an upload session takes: 150 MB (outlook-large-attachments).
pub const OUTLOOK_SESSION_MAX_BYTES: u64 = 150 * 1024 * 1024;

/// Which service runs the session: decides the fragment size and the answers' shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionKind {
    /// OneDrive/SharePoint: 202 with `nextExpectedRanges` per fragment, 200/201 with the
    /// driveItem at the end.
    Drive,
    /// Outlook: 200 with `nextExpectedRanges` per range, 201 with an empty body and a
    /// `Location` header (the attachment) at the end.
    OutlookAttachment,
}

/// What one fragment PUT came to.
enum PutOutcome {
    /// 202: the server wants more, from this offset.
    Accepted(Option<u64>),
    /// 200/201: the upload is complete; the driveItem.
    Done(Value),
    /// A transient failure; wait this long (if Microsoft said), then ask the session status.
    Retry(Option<Duration>, String),
}

impl GraphClient {
    /// Uploads `total_size` bytes from `source` through an upload session and returns the
    /// resulting driveItem.
    ///
    /// 1. `POST create_session_path` with `body` (e.g. `{"item": {"@microsoft.graph.conflictBehavior":
    ///    "replace"}}`) → `uploadUrl`.
    /// 2. `PUT` fragments of the configured size (default 10 MiB = 32 × 320 KiB; the last one is
    ///    the remainder) to `uploadUrl` with `Content-Range: bytes START-END/TOTAL` and NO
    ///    `Authorization` header. The source is read one fragment at a time (memory: one
    ///    fragment buffer plus one source chunk).
    /// 3. On a transient failure (429/5xx, connection loss) wait (`Retry-After` or backoff),
    ///    `GET uploadUrl` for `nextExpectedRanges`, and continue from there, up to
    ///    `max_attempts` failures in a row.
    ///
    /// # Errors
    /// [`Error::Invalid`] for `total_size == 0` (use [`GraphClient::put_bytes`]);
    /// [`Error::Source`] when the source fails or does not hold exactly `total_size` bytes;
    /// [`Error::Protocol`] when `uploadUrl` is missing or the server asks for bytes already
    /// dropped; [`Error::Api`] (404: the session expired), [`Error::Throttled`] and friends.
    pub async fn upload_session<S>(
        &self,
        create_session_path: &str,
        body: &Value,
        total_size: u64,
        source: S,
    ) -> Result<Value>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        self.run_session(
            SessionKind::Drive,
            create_session_path,
            body,
            total_size,
            source,
        )
        .await
    }

    /// Attaches a file of `total_size` bytes from `source` to an Outlook message or event
    /// through an attachment upload session, and returns the `Location` of the new attachment
    /// (`…/Attachments('{id}')`, when the server sends one).
    ///
    /// 1. `POST {item_path}/attachments/createUploadSession` with
    ///    `{"AttachmentItem": attachment_item}` (an `attachmentItem`: `attachmentType: "file"`,
    ///    `name`, `size` = `total_size`, optional `contentType`, `isInline`, `contentId`)
    ///    → `uploadUrl`.
    /// 2. `PUT` ranges of [`OUTLOOK_ATTACHMENT_FRAGMENT`] (4 MiB; the last is the remainder), in
    ///    order, to `uploadUrl` with `Content-Range: bytes START-END/TOTAL`,
    ///    `Content-Type: application/octet-stream` and NO `Authorization` header. Each answer is
    ///    200 with `nextExpectedRanges` (`["4194304"]`); the last is 201 with `Location`.
    /// 3. On a transient failure (429/5xx, connection loss) or a 409/416 (range out of order or
    ///    already received) wait (`Retry-After` or backoff), `GET uploadUrl` for
    ///    `nextExpectedRanges` and continue from there, up to `max_attempts` failures in a row.
    ///
    /// Memory: one 4 MiB range buffer plus one source chunk. Microsoft uses sessions for files
    /// of [`OUTLOOK_SESSION_MIN_BYTES`]..=[`OUTLOOK_SESSION_MAX_BYTES`]; the size is not checked
    /// here.
    ///
    /// # Errors
    /// As [`GraphClient::upload_session`]; a 413 or 400 from `createUploadSession` (attachment
    /// too large for the mailbox's message size limit) is an [`Error::Api`].
    pub async fn attachment_upload_session<S>(
        &self,
        item_path: &str,
        attachment_item: &Value,
        total_size: u64,
        source: S,
    ) -> Result<Option<String>>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let path = format!(
            "{}/attachments/createUploadSession",
            item_path.trim_end_matches('/')
        );
        let done = self
            .run_session(
                SessionKind::OutlookAttachment,
                &path,
                &serde_json::json!({ "AttachmentItem": attachment_item }),
                total_size,
                source,
            )
            .await?;
        Ok(done
            .get("location")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    async fn run_session<S>(
        &self,
        kind: SessionKind,
        create_session_path: &str,
        body: &Value,
        total_size: u64,
        source: S,
    ) -> Result<Value>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        if total_size == 0 {
            return Err(Error::Invalid {
                detail: "upload sessions cannot create empty files; PUT the content instead".into(),
            });
        }
        // An attachment session's ranges go to a pre-authenticated URL, but Outlook counts
        // them against the mailbox's upload budget: admit them under the mailbox's workload.
        let mailbox = match kind {
            SessionKind::OutlookAttachment => {
                self.workload(&Req::new(Method::POST, self.resolve(create_session_path)?))
            }
            SessionKind::Drive => None,
        };
        let session: Value = self.post_json(create_session_path, body).await?;
        let session_shown = display_url(&self.resolve(create_session_path)?);
        let upload_url = session
            .get("uploadUrl")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Protocol {
                url: session_shown.clone(),
                detail: "createUploadSession answer has no uploadUrl".into(),
            })?;
        let upload_url = Url::parse(upload_url).map_err(|e| Error::Protocol {
            url: session_shown,
            detail: format!("uploadUrl is not a URL: {e}"),
        })?;
        let shown = display_url(&upload_url);
        let mut source = Source {
            stream: source,
            pending: Bytes::new(),
            read: 0,
            total: total_size,
            shown: shown.clone(),
        };
        let policy = self.shared.http.options().retry.clone();
        let fragment_size = match kind {
            SessionKind::Drive => self.fragment_size,
            SessionKind::OutlookAttachment => OUTLOOK_ATTACHMENT_FRAGMENT,
        };

        let mut offset = 0u64;
        while offset < total_size {
            let len = fragment_size.min(total_size - offset);
            let fragment = source.fragment(len as usize).await?;
            let start = offset;
            let end = start + len; // exclusive
            let mut send_from = start;
            let mut failures = 0u32;
            let mut waited = Duration::ZERO;
            loop {
                let part = fragment.slice((send_from - start) as usize..);
                match self
                    .put_fragment(
                        kind,
                        mailbox.as_ref(),
                        &upload_url,
                        &shown,
                        part,
                        send_from,
                        total_size,
                    )
                    .await?
                {
                    PutOutcome::Done(item) => {
                        if end != total_size {
                            return Err(Error::Protocol {
                                url: shown,
                                detail: format!(
                                    "the upload completed after byte {end} of {total_size}"
                                ),
                            });
                        }
                        return Ok(item);
                    }
                    PutOutcome::Accepted(next) => {
                        // Usually `end`; a server that kept less makes us resend from there.
                        match next {
                            Some(n) if n < end => {
                                send_from = self.check_resume_point(&shown, n, start, end)?;
                                failures = 0;
                            }
                            _ => break,
                        }
                    }
                    PutOutcome::Retry(retry_after, detail) => {
                        failures += 1;
                        let delay = retry_after.unwrap_or_else(|| policy.backoff(failures));
                        if failures >= policy.max_attempts.max(1)
                            || waited + delay > policy.max_total_wait
                        {
                            return Err(Error::Throttled {
                                url: shown,
                                attempts: failures,
                                waited,
                            });
                        }
                        tracing::warn!(
                            url = shown.as_str(),
                            offset = send_from,
                            failures,
                            "upload fragment failed ({detail}); asking the session where to resume"
                        );
                        tokio::time::sleep(delay).await;
                        waited += delay;
                        let next = self.session_next_expected(&upload_url, &shown).await?;
                        match next {
                            Some(n) if n >= end => break,
                            Some(n) => {
                                send_from = self.check_resume_point(&shown, n, start, end)?
                            }
                            None => {
                                return Err(Error::Protocol {
                                    url: shown,
                                    detail: "upload session status has no nextExpectedRanges"
                                        .into(),
                                })
                            }
                        }
                    }
                }
            }
            offset = end;
        }
        Err(Error::Protocol {
            url: shown,
            detail: "all bytes were accepted but the session never returned the driveItem".into(),
        })
    }

    fn check_resume_point(&self, shown: &str, next: u64, start: u64, end: u64) -> Result<u64> {
        if next < start || next >= end {
            return Err(Error::Protocol {
                url: shown.to_owned(),
                detail: format!(
                    "the session expects byte {next}, outside the fragment held in memory \
                     ({start}..{end}); the upload must start over"
                ),
            });
        }
        Ok(next)
    }

    /// One PUT of `part` at `from`, sent once (resume handles failures); admitted under
    /// `mailbox` with `part` as its upload bytes when the session is an Outlook attachment's.
    #[allow(clippy::too_many_arguments)]
    async fn put_fragment(
        &self,
        kind: SessionKind,
        mailbox: Option<&crate::limiter::Workload>,
        upload_url: &Url,
        shown: &str,
        part: Bytes,
        from: u64,
        total: u64,
    ) -> Result<PutOutcome> {
        let _admission = match mailbox {
            Some(w) => Some(
                self.shared
                    .http
                    .limiter()
                    .admit(&w.clone().with_upload("PUT", part.len() as u64))
                    .await,
            ),
            None => None,
        };
        let last = from + part.len() as u64 - 1;
        let range = format!("bytes {from}-{last}/{total}");
        let options = self.shared.http.options();
        let timeout = options.request_timeout.max(Duration::from_secs(
            part.len() as u64 / MIN_UPLOAD_BYTES_PER_SEC,
        ));
        self.shared
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = self.shared.http.reqwest().put(upload_url.clone());
        if kind == SessionKind::OutlookAttachment {
            request = request.header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        let request = request
            .header(
                CONTENT_RANGE,
                HeaderValue::from_str(&range).expect("ASCII header value"),
            )
            .header("client-request-id", uuid::Uuid::new_v4().to_string())
            .timeout(timeout)
            .body(part);
        let resp = match send_buffered(request, shown).await {
            Ok(resp) => resp,
            Err(failure) if failure.retry != crate::retry::RetryClass::Never => {
                return Ok(PutOutcome::Retry(None, failure.error.to_string()))
            }
            Err(failure) => return Err(failure.error),
        };
        let outlook = kind == SessionKind::OutlookAttachment;
        match resp.status {
            201 if outlook => {
                let location = header_str(&resp.headers, "location");
                Ok(PutOutcome::Done(
                    serde_json::json!({ "location": location }),
                ))
            }
            200 | 202 if outlook => {
                let body: Value = GraphClient::decode(shown, &resp.body)?;
                Ok(PutOutcome::Accepted(next_expected(&body)))
            }
            200 | 201 => Ok(PutOutcome::Done(GraphClient::decode(shown, &resp.body)?)),
            202 => {
                let body: Value = GraphClient::decode(shown, &resp.body)?;
                Ok(PutOutcome::Accepted(next_expected(&body)))
            }
            s if is_retryable_status(s)
                || s == 500
                || s == 502
                || s == 416
                || (outlook && s == 409) =>
            {
                let retry_after = header_str(&resp.headers, "retry-after")
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let rid = header_str(&resp.headers, "request-id").unwrap_or("");
                Ok(PutOutcome::Retry(
                    retry_after.or((s == 416 || s == 409).then_some(Duration::ZERO)),
                    format!("HTTP {s}, request-id {rid}"),
                ))
            }
            s => Err(api_error("PUT", shown, s, &resp.headers, &resp.body)),
        }
    }

    /// `GET uploadUrl` (no token): the first `nextExpectedRanges` start.
    async fn session_next_expected(&self, upload_url: &Url, shown: &str) -> Result<Option<u64>> {
        let mut req = Req::new(Method::GET, upload_url.clone());
        req.auth = false;
        req.timeout = Some(self.shared.http.options().request_timeout);
        let resp = self.send_buffered(&req).await?;
        let body: Value = GraphClient::decode(shown, &resp.body)?;
        Ok(next_expected(&body))
    }
}

/// Start of the first `nextExpectedRanges` entry (`"26-"`, `"26-99"`, or Outlook's `"26"`).
fn next_expected(body: &Value) -> Option<u64> {
    let first = body
        .get("nextExpectedRanges")?
        .as_array()?
        .first()?
        .as_str()?;
    first.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::next_expected;

    #[test]
    fn next_expected_forms() {
        let v = |r: &str| serde_json::json!({ "nextExpectedRanges": [r] });
        assert_eq!(next_expected(&v("26-")), Some(26));
        assert_eq!(next_expected(&v("26-99")), Some(26));
        assert_eq!(next_expected(&v("26")), Some(26));
        assert_eq!(next_expected(&serde_json::json!({})), None);
    }
}
