//! The one retry and throttling layer every request goes through (token requests included).
//!
//! Implements <https://learn.microsoft.com/graph/throttling>: 429, 503, 504 and 509 are retried
//! after `Retry-After` (integer seconds, fractional seconds such as `2.128`, or an HTTP-date), or
//! else after a jittered exponential backoff; attempts and total waiting are bounded.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::Rng;
use reqwest::header::HeaderMap;

use crate::error::{parse_graph_error, Error, Result};
use crate::limiter::{Limiter, RateLimit, Workload};

/// Bounds for retrying throttled and failed requests.
///
/// Defaults: 6 attempts (the first included), 5 minutes of total waiting, backoff base 1 s,
/// cap 60 s. See <https://learn.microsoft.com/graph/throttling>.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests sent at most for one call, the first included (≥ 1).
    pub max_attempts: u32,
    /// Total sleeping allowed for one call; a `Retry-After` that would exceed it ends the call.
    pub max_total_wait: Duration,
    /// First backoff delay when Microsoft gives no `Retry-After`; doubled per attempt.
    pub base: Duration,
    /// Largest single backoff delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            max_total_wait: Duration::from_secs(5 * 60),
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Jittered exponential delay before retry number `retry` (1 = first retry): uniformly
    /// drawn from `[d/2, d]` with `d = min(cap, base × 2^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let full = self
            .base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap);
        let half = full / 2;
        let extra_nanos = (full - half).as_nanos() as u64;
        let jitter = if extra_nanos == 0 {
            0
        } else {
            rand::rng().random_range(0..=extra_nanos)
        };
        half + Duration::from_nanos(jitter)
    }
}

/// Statuses retried for every method: throttling and "try again" answers.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 503 | 504 | 509)
}

/// Parses `Retry-After` as integer seconds, fractional seconds or an HTTP-date (relative to
/// `now`; a date in the past means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = value.parse().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How a transport-level failure may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryClass {
    /// Nothing reached the server (connect/DNS failure): safe for every method.
    Always,
    /// The server may have acted (timeout, reset, broken body): only for idempotent requests.
    IfIdempotent,
    /// Not a transport problem: give up.
    Never,
}

/// A failed attempt that produced no HTTP status.
#[derive(Debug)]
pub(crate) struct AttemptError {
    pub error: Error,
    pub retry: RetryClass,
}

impl AttemptError {
    pub(crate) fn fatal(error: Error) -> Self {
        AttemptError {
            error,
            retry: RetryClass::Never,
        }
    }
}

impl From<Error> for AttemptError {
    fn from(error: Error) -> Self {
        AttemptError::fatal(error)
    }
}

/// An HTTP answer as seen by the retry loop: reqwest's streaming response or a buffered one
/// (from graph-rs-sdk's reqwest 0.12, or read fully for JSON).
pub(crate) trait WireResponse: Send {
    fn status(&self) -> u16;
    fn headers(&self) -> &HeaderMap;
    /// The body, best effort (errors yield an empty body): used for error reports only.
    fn into_body(self) -> impl Future<Output = Bytes> + Send;
}

/// A response whose body has been read completely.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl WireResponse for Buffered {
    fn status(&self) -> u16 {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    async fn into_body(self) -> Bytes {
        self.body
    }
}

impl WireResponse for reqwest::Response {
    fn status(&self) -> u16 {
        reqwest::Response::status(self).as_u16()
    }
    fn headers(&self) -> &HeaderMap {
        reqwest::Response::headers(self)
    }
    async fn into_body(self) -> Bytes {
        self.bytes().await.unwrap_or_default()
    }
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the loop needs to know about the call, for retry decisions and logs.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub method: &'a str,
    /// URL without query, for logs and errors.
    pub url: &'a str,
    pub idempotent: bool,
    /// Incremented once per request sent.
    pub counter: &'a AtomicU64,
}

/// Sends with `attempt` until it yields a non-retryable status, a fatal error, or the policy's
/// budget is spent. `attempt` gets the attempt number (1-based).
///
/// Returns the response (any non-retryable status, success or not) for the caller to map.
pub(crate) async fn run<R, F, Fut>(policy: &RetryPolicy, call: Call<'_>, attempt: F) -> Result<R>
where
    R: WireResponse,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = std::result::Result<R, AttemptError>>,
{
    run_admitted(policy, call, None, attempt).await
}

/// [`run`] with admission control: before each attempt, `admission`'s workloads (one, or the
/// inner requests of a `$batch`) wait for their budget and fences ([`Limiter::admit_all`]);
/// each answer's `RateLimit-*` headers are read, and a 429 fences the workloads for the delay
/// waited (the greater of `Retry-After` and
/// `RateLimit-Reset`), so that its other requests pause too while other workloads go on.
pub(crate) async fn run_admitted<R, F, Fut>(
    policy: &RetryPolicy,
    call: Call<'_>,
    admission: Option<(&Limiter, &[Workload])>,
    mut attempt: F,
) -> Result<R>
where
    R: WireResponse,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = std::result::Result<R, AttemptError>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut waited = Duration::ZERO;
    let mut n = 0u32;
    loop {
        n += 1;
        let slot = match admission {
            Some((limiter, workloads)) => Some(limiter.admit_all(workloads).await),
            None => None,
        };
        call.counter.fetch_add(1, Ordering::Relaxed);
        let outcome = attempt(n).await;
        drop(slot);
        let delay = match outcome {
            Ok(resp) => {
                let status = resp.status();
                if let Some((limiter, workloads)) = admission {
                    for workload in workloads {
                        limiter.observe(workload, resp.headers());
                    }
                }
                if !is_retryable_status(status) {
                    return Ok(resp);
                }
                let retry_after = header_str(resp.headers(), "retry-after")
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // SharePoint: when `RateLimit-Reset` is longer than `Retry-After`, Microsoft
                // says to honour the greater of the two.
                let reset = (status == 429)
                    .then(|| RateLimit::parse(resp.headers()))
                    .flatten()
                    .map(|r| Duration::from_secs(r.reset_secs));
                let retry_after = match (retry_after, reset) {
                    (Some(a), Some(r)) => Some(a.max(r)),
                    (a, r) => a.or(r),
                };
                let request_id = header_str(resp.headers(), "request-id").map(str::to_owned);
                let body = resp.into_body().await;
                let code = parse_graph_error(&body)
                    .map(|(c, _, _)| c)
                    .unwrap_or_default();
                tracing::warn!(
                    method = call.method,
                    url = call.url,
                    status,
                    code = code.as_str(),
                    request_id = request_id.as_deref().unwrap_or(""),
                    attempt = n,
                    retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                    "Microsoft throttled or deferred the request"
                );
                let delay = retry_after.unwrap_or_else(|| policy.backoff(n));
                if status == 429 {
                    if let Some((limiter, workloads)) = admission {
                        for workload in workloads {
                            limiter.fence(workload, delay);
                        }
                    }
                }
                if n >= max_attempts || waited + delay > policy.max_total_wait {
                    return Err(Error::Throttled {
                        url: call.url.to_owned(),
                        attempts: n,
                        waited,
                    });
                }
                delay
            }
            Err(AttemptError { error, retry }) => {
                let retry = match retry {
                    RetryClass::Always => true,
                    RetryClass::IfIdempotent => call.idempotent,
                    RetryClass::Never => false,
                };
                if !retry {
                    return Err(error);
                }
                let delay = policy.backoff(n);
                if n >= max_attempts || waited + delay > policy.max_total_wait {
                    return Err(error);
                }
                tracing::warn!(
                    method = call.method,
                    url = call.url,
                    attempt = n,
                    error = %error,
                    "request failed without an answer; retrying"
                );
                delay
            }
        };
        tokio::time::sleep(delay).await;
        waited += delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("2.128", now),
            Some(Duration::from_millis(2128))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        for retry in 1..40 {
            let d = p.backoff(retry);
            let full = (p.base * 2u32.pow((retry - 1).min(20))).min(p.cap);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        assert!(p.backoff(1) <= Duration::from_secs(1));
        assert!(p.backoff(10) >= Duration::from_secs(30));
    }
}
