//! Content downloads: one redirect to a pre-authenticated URL (without our token), streamed,
//! resumed with `Range` when the body breaks off.
//!
//! Implements <https://learn.microsoft.com/graph/api/driveitem-get-content> (302 to a
//! pre-authenticated URL; partial range downloads) and
//! <https://learn.microsoft.com/graph/api/message-get> (`/$value`, body served directly).

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::Method;
use url::Url;

use crate::client::{api_error, GraphClient, Req};
use crate::error::{error_chain, Error, Result};
use crate::http::display_url;
use crate::retry::header_str;

/// New download URLs requested for one open after the download host refused one.
const EXPIRED_URL_REFETCHES: u32 = 2;

/// Why opening a download failed.
enum Hop {
    /// The pre-authenticated URL was refused (401/403): a new one may work.
    Expired(Error),
    Failed(Error),
}

impl From<Error> for Hop {
    fn from(e: Error) -> Self {
        Hop::Failed(e)
    }
}

/// A body being downloaded.
pub struct Download {
    /// The total size from `Content-Length`, when the server sent it.
    pub content_length: Option<u64>,
    stream: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// The body as chunks, in order. Breaks are resumed transparently; the stream ends with an
    /// error if resuming fails or the byte count does not match `content_length`.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        self.stream
    }
}

struct Opened {
    resp: reqwest::Response,
    /// The URL the body came from (after the redirect), without query.
    shown: String,
}

struct State {
    client: GraphClient,
    url: Url,
    shown: String,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes delivered to the caller.
    offset: u64,
    /// Bytes still to drop from the current body (a server that ignored `Range`).
    skip: u64,
    total: Option<u64>,
    etag: Option<String>,
    failures: u32,
    done: bool,
}

impl GraphClient {
    /// `GET` content as a stream.
    ///
    /// A 3xx answer is followed ONCE, to the `Location` given, WITHOUT the `Authorization`
    /// header (it is a pre-authenticated URL, often on another host); `/$value` answers are the
    /// body directly. When the body breaks off, the download is re-opened from `path` with
    /// `Range: bytes={offset}-` (a new pre-authenticated URL is obtained, so an expired one
    /// does not matter) up to [`crate::HttpOptions::download_resumes`] times in a row without
    /// progress. A download URL the download host refuses with 401/403 (expired) is replaced
    /// by a new one from `path`, twice at most. A resumed body whose `ETag` differs from the first is refused.
    ///
    /// # Errors
    /// [`Error::Api`] for an error status on either hop, [`Error::Protocol`] for a redirect
    /// without `Location` or a second redirect; the stream yields [`Error::Interrupted`] when
    /// resuming gives up.
    pub async fn download(&self, path: &str) -> Result<Download> {
        let url = self.resolve(path)?;
        let opened = self.open_download(&url, 0).await?;
        let headers = opened.resp.headers();
        let content_length =
            header_str(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
        let etag = header_str(headers, ETAG.as_str()).map(str::to_owned);
        let state = State {
            client: self.clone(),
            shown: opened.shown,
            url,
            body: Some(opened.resp.bytes_stream().boxed()),
            offset: 0,
            skip: 0,
            total: content_length,
            etag,
            failures: 0,
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_chunk().await?;
            Some((item, state))
        })
        .boxed();
        Ok(Download {
            content_length,
            stream,
        })
    }

    /// Opens the download at `offset`. When the pre-authenticated URL is refused (401/403 from
    /// the download host: it expired or was revoked), `url` is asked again for a fresh one, up
    /// to [`EXPIRED_URL_REFETCHES`] times.
    async fn open_download(&self, url: &Url, offset: u64) -> Result<Opened> {
        let mut refetches = 0;
        loop {
            match self.open_download_once(url, offset).await {
                Err(Hop::Expired(err)) if refetches < EXPIRED_URL_REFETCHES => {
                    refetches += 1;
                    tracing::warn!(
                        url = %display_url(url),
                        error = %err,
                        "the download URL was refused (expired); requesting the item's content again for a new one"
                    );
                }
                Err(Hop::Expired(err) | Hop::Failed(err)) => return Err(err),
                Ok(opened) => return Ok(opened),
            }
        }
    }

    async fn open_download_once(&self, url: &Url, offset: u64) -> Result<Opened, Hop> {
        let range = (offset > 0).then(|| {
            HeaderValue::from_str(&format!("bytes={offset}-")).expect("ASCII header value")
        });
        let mut req = Req::new(Method::GET, url.clone());
        req.headers = (*self.headers).clone();
        if let Some(range) = &range {
            req.headers.insert(RANGE, range.clone());
        }
        let resp = self.send_streaming(&req).await?;
        let status = resp.status().as_u16();
        if !(300..400).contains(&status) {
            return Ok(self.checked(&req, resp).await?);
        }
        let location =
            header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| Error::Protocol {
                url: req.shown.clone(),
                detail: format!("HTTP {status} redirect without a Location header"),
            })?;
        let target = url.join(location).map_err(|e| Error::Protocol {
            url: req.shown.clone(),
            detail: format!("redirect Location {location:?} is not a URL: {e}"),
        })?;
        // Pre-authenticated URL: no Authorization, and none of our Graph headers.
        let mut hop = Req::new(Method::GET, target);
        hop.auth = false;
        if let Some(range) = range {
            hop.headers.insert(RANGE, range);
        }
        let resp = self.send_streaming(&hop).await?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            return Err(Hop::Failed(Error::Protocol {
                url: hop.shown.clone(),
                detail: "the download URL redirected again; only one redirect is followed".into(),
            }));
        }
        match self.checked(&hop, resp).await {
            Err(e) if matches!(status, 401 | 403) => Err(Hop::Expired(e)),
            other => Ok(other?),
        }
    }

    async fn checked(&self, req: &Req, resp: reqwest::Response) -> Result<Opened> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Opened {
                resp,
                shown: req.shown.clone(),
            });
        }
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        Err(api_error(
            req.method.as_str(),
            &req.shown,
            status,
            &headers,
            &body,
        ))
    }
}

impl State {
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            let detail = match self.body.as_mut()?.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(chunk.len() as u64);
                        self.skip -= drop;
                        chunk = chunk.slice(drop as usize..);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.offset += chunk.len() as u64;
                    self.failures = 0;
                    if let Some(total) = self.total {
                        if self.offset > total {
                            self.done = true;
                            return Some(Err(Error::Protocol {
                                url: self.shown.clone(),
                                detail: format!(
                                    "received {} bytes, more than Content-Length {total}",
                                    self.offset
                                ),
                            }));
                        }
                    }
                    return Some(Ok(chunk));
                }
                None => match self.total {
                    Some(total) if self.offset < total => {
                        format!("body ended after {} of {total} bytes", self.offset)
                    }
                    _ => {
                        self.done = true;
                        return None;
                    }
                },
                Some(Err(e)) => error_chain(&e),
            };
            if let Err(e) = self.resume(detail).await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    /// Re-opens the download at `offset`, with backoff, until it works or the budget is spent.
    async fn resume(&mut self, mut detail: String) -> Result<()> {
        self.body = None;
        let max = self.client.shared.http.options().download_resumes;
        let policy = self.client.shared.http.options().retry.clone();
        loop {
            if self.failures >= max {
                return Err(Error::Interrupted {
                    url: self.shown.clone(),
                    offset: self.offset,
                    detail: format!("{detail} (gave up after {max} resumes without progress)"),
                });
            }
            self.failures += 1;
            tracing::warn!(
                url = self.shown.as_str(),
                offset = self.offset,
                resume = self.failures,
                "download broke off ({detail}); resuming with Range"
            );
            let delay = if self.failures == 1 {
                Duration::ZERO
            } else {
                policy.backoff(self.failures - 1)
            };
            tokio::time::sleep(delay).await;
            match self.client.open_download(&self.url, self.offset).await {
                Ok(opened) => return self.accept(opened),
                Err(e) if e.is_transient() => detail = e.to_string(),
                Err(e) => return Err(e),
            }
        }
    }

    fn accept(&mut self, opened: Opened) -> Result<()> {
        let headers = opened.resp.headers();
        let protocol = |detail: String| Error::Protocol {
            url: opened.shown.clone(),
            detail,
        };
        let etag = header_str(headers, ETAG.as_str());
        if let (Some(first), Some(now)) = (self.etag.as_deref(), etag) {
            if first != now {
                return Err(protocol(format!(
                    "the content changed during the download (ETag {first} became {now})"
                )));
            }
        }
        match opened.resp.status().as_u16() {
            206 => {
                let range = header_str(headers, CONTENT_RANGE.as_str()).unwrap_or("");
                let (start, total) = parse_content_range(range).ok_or_else(|| {
                    protocol(format!("206 with unusable Content-Range {range:?}"))
                })?;
                if start != self.offset {
                    return Err(protocol(format!(
                        "asked for bytes from {} but got a range starting at {start}",
                        self.offset
                    )));
                }
                if let (Some(expected), Some(total)) = (self.total, total) {
                    if expected != total {
                        return Err(protocol(format!(
                            "the size changed during the download ({expected} became {total})"
                        )));
                    }
                }
                self.skip = 0;
            }
            // The server ignored Range: drop what the caller already has.
            _ => self.skip = self.offset,
        }
        tracing::info!(
            url = opened.shown.as_str(),
            offset = self.offset,
            "download resumed"
        );
        self.shown = opened.shown;
        self.body = Some(opened.resp.bytes_stream().boxed());
        Ok(())
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → `(START, TOTAL)`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
