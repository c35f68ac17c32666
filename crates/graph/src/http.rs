//! The process-wide HTTP client.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::limiter::{Limiter, ThrottleOptions, ThrottleStats};
use crate::retry::RetryPolicy;

/// The `User-Agent` every request carries: `ISV|m365bk|m365bk/<version>`, the form Microsoft
/// asks ISVs to use so throttling can be attributed
/// (<https://learn.microsoft.com/sharepoint/dev/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online>).
pub const USER_AGENT: &str = concat!("ISV|m365bk|m365bk/", env!("CARGO_PKG_VERSION"));

/// Settings for [`HttpClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// TCP + TLS connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// Whole-request timeout for non-streaming calls (JSON, token requests). Default 120 s.
    pub request_timeout: Duration,
    /// Idle timeout between two reads of a response, which is what bounds streaming
    /// downloads (they have no whole-request timeout). Default 60 s.
    pub read_timeout: Duration,
    /// Consecutive download resumes (with `Range`) allowed without receiving a byte in between.
    /// Default 5.
    pub download_resumes: u32,
    /// Retry/throttle bounds used by every call.
    pub retry: RetryPolicy,
    /// Microsoft's per-workload limits (Outlook per mailbox, SharePoint resource units per
    /// tenant, Teams per team), kept by admission control in front of the retry layer.
    /// Default: Microsoft's published limits.
    pub throttle: ThrottleOptions,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(60),
            download_resumes: 5,
            retry: RetryPolicy::default(),
            throttle: ThrottleOptions::default(),
        }
    }
}

/// The shared reqwest client (rustls, connection pool, m365bk's `User-Agent`, timeouts,
/// no automatic redirects), plus the [`HttpOptions`]. Cheap to clone; build one per process.
#[derive(Clone, Debug)]
pub struct HttpClient(Arc<HttpInner>);

#[derive(Debug)]
struct HttpInner {
    client: reqwest::Client,
    options: HttpOptions,
    limiter: Limiter,
}

impl HttpClient {
    /// Builds the client.
    ///
    /// Redirects are never followed automatically: downloads follow one redirect themselves so
    /// that no `Authorization` header reaches a pre-authenticated URL.
    ///
    /// # Errors
    /// [`Error::Invalid`] when reqwest cannot build a client (TLS backend initialisation).
    pub fn new(options: HttpOptions) -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Invalid {
                detail: format!(
                    "cannot build the HTTP client: {}",
                    crate::error::error_chain(&e)
                ),
            })?;
        let limiter = Limiter::new(options.throttle.clone());
        Ok(HttpClient(Arc::new(HttpInner {
            client,
            options,
            limiter,
        })))
    }

    /// The settings this client was built with.
    pub fn options(&self) -> &HttpOptions {
        &self.0.options
    }

    pub(crate) fn reqwest(&self) -> &reqwest::Client {
        &self.0.client
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.0.limiter
    }

    /// What admission control did so far: requests admitted, delayed (waiting for a budget,
    /// a mailbox slot or a fence) and for how long in total, fences set after a 429.
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.0.limiter.stats()
    }
}

/// A URL as shown in logs and errors: without query (skip tokens, `$filter`) and fragment.
pub(crate) fn display_url(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Maps a reqwest send error to a retry decision.
pub(crate) fn classify_send_error(e: reqwest::Error, url: &str) -> crate::retry::AttemptError {
    use crate::retry::{AttemptError, RetryClass};
    if e.is_builder() {
        return AttemptError::fatal(Error::Invalid {
            detail: format!(
                "cannot build a request for {url}: {}",
                crate::error::error_chain(&e)
            ),
        });
    }
    let retry = if e.is_connect() {
        RetryClass::Always
    } else {
        RetryClass::IfIdempotent
    };
    AttemptError {
        error: Error::Unreachable {
            url: url.to_owned(),
            source: e,
        },
        retry,
    }
}

/// Sends `request` and reads the whole body (bounded by the request's timeout).
///
/// A body that breaks off is an [`Error::Decode`] naming the URL, retried for idempotent calls.
pub(crate) async fn send_buffered(
    request: reqwest::RequestBuilder,
    url: &str,
) -> std::result::Result<crate::retry::Buffered, crate::retry::AttemptError> {
    use crate::retry::{AttemptError, Buffered, RetryClass};
    let resp = request
        .send()
        .await
        .map_err(|e| classify_send_error(e, url))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| AttemptError {
        error: Error::Decode {
            url: url.to_owned(),
            detail: format!(
                "the body broke off (HTTP {status}): {}",
                crate::error::error_chain(&e)
            ),
        },
        retry: RetryClass::IfIdempotent,
    })?;
    Ok(Buffered {
        status,
        headers,
        body,
    })
}
