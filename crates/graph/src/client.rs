//! [`GraphClient`]: authenticated JSON calls, paging, and the request core shared by downloads,
//! upload sessions and the delta walker.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::error::{body_snippet, parse_graph_error, Error, Result};
use crate::http::{classify_send_error, display_url, send_buffered, HttpClient};
use crate::limiter::{Limiter, Workload};
use crate::retry::{self, header_str, AttemptError, Buffered, Call, RetryPolicy, WireResponse};
use crate::token::{AccessToken, Audience, TokenProvider};

/// 320 KiB: upload-session fragments must be a multiple of this.
pub const UPLOAD_FRAGMENT_UNIT: u64 = 320 * 1024;
/// Default upload-session fragment: 32 × 320 KiB = 10 MiB.
pub const DEFAULT_UPLOAD_FRAGMENT: u64 = 32 * UPLOAD_FRAGMENT_UNIT;
/// Microsoft requires each fragment to be smaller than 60 MiB: at most 191 × 320 KiB.
pub const MAX_UPLOAD_FRAGMENT: u64 = 191 * UPLOAD_FRAGMENT_UNIT;

/// Authenticated Microsoft Graph client on the shared [`HttpClient`].
///
/// Every call: a fresh `client-request-id`, the Graph token from [`TokenProvider`] (fetched per
/// request, refreshed once on a 401 `InvalidAuthenticationToken`), the retry/throttle layer of
/// [`RetryPolicy`], and Graph error bodies mapped to [`Error::Api`] (logged at WARN with
/// `request-id`). Cheap to clone (`Arc` inside); `Send + Sync`.
///
/// See <https://learn.microsoft.com/graph/use-the-api> and
/// <https://learn.microsoft.com/graph/best-practices-concept>.
#[derive(Clone)]
pub struct GraphClient {
    pub(crate) shared: Arc<Shared>,
    pub(crate) base: Arc<Url>,
    pub(crate) headers: Arc<HeaderMap>,
    pub(crate) fragment_size: u64,
}

pub(crate) struct Shared {
    pub(crate) http: HttpClient,
    pub(crate) tokens: Arc<TokenProvider>,
    pub(crate) requests: AtomicU64,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base.as_str())
            .field("headers", &self.headers)
            .field("fragment_size", &self.fragment_size)
            .finish_non_exhaustive()
    }
}

/// One request as the core sends it (possibly several times).
pub(crate) struct Req {
    pub method: Method,
    pub url: Url,
    /// `url` without query, for logs and errors.
    pub shown: String,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Send the Graph token (false for pre-authenticated download and upload URLs).
    pub auth: bool,
    pub idempotent: bool,
    /// Whole-request timeout; `None` for streams.
    pub timeout: Option<Duration>,
}

impl Req {
    pub(crate) fn new(method: Method, url: Url) -> Self {
        let shown = display_url(&url);
        Req {
            idempotent: matches!(method, Method::GET | Method::PUT | Method::DELETE),
            method,
            url,
            shown,
            headers: HeaderMap::new(),
            body: None,
            auth: true,
            timeout: None,
        }
    }
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// Runs `attempt` through the retry layer with a Graph token (when `auth`), and on a 401
/// `InvalidAuthenticationToken` drops the token, fetches a new one and runs once more.
///
/// Returns the final response, which may still be an error status for the caller to map;
/// a 401 that survives the refresh is returned as [`Error::Api`]. With `admission`, each
/// attempt first waits for that workload's budget and fences ([`retry::run_admitted`]).
pub(crate) async fn with_auth_admitted<R, F, Fut>(
    tokens: &TokenProvider,
    policy: &RetryPolicy,
    call: Call<'_>,
    auth: bool,
    admission: Option<(&Limiter, &[Workload])>,
    attempt: F,
) -> Result<R>
where
    R: WireResponse,
    F: Fn(Option<AccessToken>) -> Fut,
    Fut: Future<Output = std::result::Result<R, AttemptError>>,
{
    let audience = Audience::Graph;
    let mut refreshed = false;
    loop {
        let used: Mutex<Option<String>> = Mutex::new(None);
        let attempt = &attempt;
        let used_ref = &used;
        let audience_ref = &audience;
        let resp = retry::run_admitted(policy, call, admission, move |_| async move {
            let token = if auth {
                let token = tokens.token(audience_ref).await?;
                *used_ref.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(token.secret().to_owned());
                Some(token)
            } else {
                None
            };
            attempt(token).await
        })
        .await?;
        if !(auth && resp.status() == 401) {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let body = resp.into_body().await;
        let err = api_error(call.method, call.url, 401, &headers, &body);
        let code = err.graph_code().unwrap_or("");
        let stale = used.lock().unwrap_or_else(|p| p.into_inner()).take();
        if refreshed
            || !(code.is_empty() || code.eq_ignore_ascii_case("InvalidAuthenticationToken"))
        {
            return Err(err);
        }
        refreshed = true;
        tracing::info!(
            url = call.url,
            "Graph rejected the access token; fetching a new one once"
        );
        if let Some(stale) = stale {
            tokens.invalidate(&audience, &stale).await;
        }
    }
}

/// Maps an error status to [`Error::Api`] and logs it at WARN with the `request-id`.
pub(crate) fn api_error(
    method: &str,
    shown: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Error {
    let header_rid = header_str(headers, "request-id").map(str::to_owned);
    let (code, message, body_rid) = match parse_graph_error(body) {
        Some(parsed) => parsed,
        None => (String::new(), body_snippet(body), None),
    };
    let request_id = header_rid.or(body_rid);
    tracing::warn!(
        method,
        url = shown,
        status,
        code = code.as_str(),
        request_id = request_id.as_deref().unwrap_or(""),
        "Graph request failed: {message}"
    );
    Error::Api {
        status,
        code,
        message,
        request_id,
        method: method.to_owned(),
        url: shown.to_owned(),
    }
}

/// Runs `fetch` (an idempotent GET returning a 2xx body) and parses the body as `T`. A body
/// that is cut short or garbled (JSON that ends early or breaks its syntax: a proxy or the
/// service truncated it) is fetched again after a backoff, within the policy's attempt and
/// waiting bounds; well-formed JSON of the wrong shape is not retried.
pub(crate) async fn refetch_broken_json<T, F, Fut>(
    policy: &RetryPolicy,
    shown: &str,
    fetch: F,
) -> Result<T>
where
    T: DeserializeOwned,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Bytes>>,
{
    let mut attempt = 0u32;
    let mut waited = Duration::ZERO;
    loop {
        attempt += 1;
        let body = fetch().await?;
        let (detail, broken) = match GraphClient::decode_classified::<T>(&body) {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        let err = Error::Decode {
            url: shown.to_owned(),
            detail,
        };
        if !broken {
            return Err(err);
        }
        let delay = policy.backoff(attempt);
        if attempt >= policy.max_attempts.max(1) || waited + delay > policy.max_total_wait {
            return Err(err);
        }
        tracing::warn!(
            url = shown,
            attempt,
            bytes = body.len(),
            error = %err,
            "the answer's JSON is truncated or garbled; fetching it again"
        );
        tokio::time::sleep(delay).await;
        waited += delay;
    }
}

/// Percent-encodes one path segment the way Graph (and graph-rs-sdk) expect, e.g. a UPN or an
/// item name: `a b/c` → `a%20b%2Fc`.
pub fn encode_segment(segment: &str) -> String {
    let mut url = Url::parse("http://x/").expect("static URL");
    url.path_segments_mut()
        .expect("http URL has a path")
        .pop_if_empty()
        .push(segment);
    url.path()[1..].to_owned()
}

/// Largest request body Microsoft Graph accepts in one request: 4 MB, taken as 4 MiB
/// (<https://learn.microsoft.com/graph/outlook-large-attachments>: a single POST suits
/// attachments under 3 MB, whose base64 stays under 4 MB).
pub const MAX_REQUEST_BODY: u64 = 4 * 1024 * 1024;

impl GraphClient {
    /// A client for the Graph service root `graph_base` (e.g. `https://graph.microsoft.com/v1.0`).
    pub fn new(http: HttpClient, tokens: Arc<TokenProvider>, graph_base: Url) -> Self {
        let mut base = graph_base;
        base.set_query(None);
        base.set_fragment(None);
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_owned();
            base.set_path(&trimmed);
        }
        GraphClient {
            shared: Arc::new(Shared {
                http,
                tokens,
                requests: AtomicU64::new(0),
            }),
            base: Arc::new(base),
            headers: Arc::new(HeaderMap::new()),
            fragment_size: DEFAULT_UPLOAD_FRAGMENT,
        }
    }

    /// Adds a header sent on every Graph request of this client (and every page of a list or
    /// delta walk), e.g. `Prefer: IdType="ImmutableId"`. A `Prefer` header is merged with
    /// `odata.maxpagesize`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed name or value.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| Error::Invalid {
            detail: format!("header name {name:?}: {e}"),
        })?;
        let value = HeaderValue::from_str(value).map_err(|e| Error::Invalid {
            detail: format!("header value for {name}: {e}"),
        })?;
        let mut headers = (*self.headers).clone();
        headers.append(name, value);
        self.headers = Arc::new(headers);
        Ok(self)
    }

    /// Sets the upload-session fragment size (default 10 MiB).
    ///
    /// # Errors
    /// [`Error::Invalid`] unless it is a non-zero multiple of 320 KiB below 60 MiB
    /// (<https://learn.microsoft.com/graph/api/driveitem-createuploadsession>).
    pub fn with_fragment_size(mut self, bytes: u64) -> Result<Self> {
        if bytes == 0 || !bytes.is_multiple_of(UPLOAD_FRAGMENT_UNIT) || bytes > MAX_UPLOAD_FRAGMENT
        {
            return Err(Error::Invalid {
                detail: format!(
                    "upload fragment size {bytes} bytes: must be a non-zero multiple of 320 KiB \
                     (327680 bytes) and at most {MAX_UPLOAD_FRAGMENT} bytes"
                ),
            });
        }
        self.fragment_size = bytes;
        Ok(self)
    }

    /// The Graph service root, without trailing slash.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The token provider this client uses.
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.shared.tokens
    }

    /// HTTP requests this client (and its clones) sent so far: retries, redirects, fragments
    /// and status queries included; token requests not.
    pub fn request_count(&self) -> u64 {
        self.shared
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves a path relative to the base (`/users/{id}`) or an absolute URL (nextLink,
    /// deltaLink), which must have the base's origin.
    pub(crate) fn resolve(&self, path: &str) -> Result<Url> {
        if path.starts_with("https://") || path.starts_with("http://") {
            let url = Url::parse(path).map_err(|e| Error::Invalid {
                detail: format!("URL {path:?}: {e}"),
            })?;
            if url.origin() != self.base.origin() {
                return Err(Error::ForeignUrl {
                    url: display_url(&url),
                    expected_origin: self.base.origin().ascii_serialization(),
                });
            }
            return Ok(url);
        }
        let sep = if path.starts_with('/') { "" } else { "/" };
        let joined = format!("{}{sep}{path}", self.base.as_str().trim_end_matches('/'));
        Url::parse(&joined).map_err(|e| Error::Invalid {
            detail: format!("Graph path {path:?}: {e}"),
        })
    }

    /// The configured headers plus `Prefer: odata.maxpagesize=N`.
    pub(crate) fn page_headers(&self, page_size: Option<u32>) -> HeaderMap {
        let mut headers = (*self.headers).clone();
        if let Some(n) = page_size {
            let mut prefer: Vec<String> = headers
                .get_all("prefer")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            prefer.push(format!("odata.maxpagesize={n}"));
            headers.remove("prefer");
            if let Ok(v) = HeaderValue::from_str(&prefer.join(", ")) {
                headers.insert("prefer", v);
            }
        }
        headers
    }

    /// The throttling workload of an authenticated Graph request (none for pre-authenticated
    /// download and upload URLs, which Microsoft does not meter per app, nor for URLs outside
    /// the Graph base), with its body counted as an Outlook upload when it writes to a
    /// mailbox.
    pub(crate) fn workload(&self, req: &Req) -> Option<Workload> {
        if !req.auth || req.url.origin() != self.base.origin() {
            return None;
        }
        let path = req.url.path().strip_prefix(self.base.path())?;
        let body_bytes = req.body.as_ref().map_or(0, |b| b.len() as u64);
        Workload::classify(req.method.as_str(), path, req.url.query())
            .map(|w| w.with_upload(req.method.as_str(), body_bytes))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared.http.options().request_timeout
    }

    /// Sends `req`, reading the whole body; any status is returned.
    pub(crate) async fn send_buffered_any(&self, req: &Req) -> Result<Buffered> {
        let workload = self.workload(req);
        self.send_buffered_for(req, workload.as_slice()).await
    }

    /// [`GraphClient::send_buffered_any`], admitted under `workloads` (a `$batch` carries
    /// those of its inner requests) instead of the request's own.
    pub(crate) async fn send_buffered_for(
        &self,
        req: &Req,
        workloads: &[Workload],
    ) -> Result<Buffered> {
        let http = self.shared.http.reqwest();
        with_auth_admitted(
            &self.shared.tokens,
            &self.shared.http.options().retry,
            Call {
                method: req.method.as_str(),
                url: &req.shown,
                idempotent: req.idempotent,
                counter: &self.shared.requests,
            },
            req.auth,
            (!workloads.is_empty()).then(|| (self.shared.http.limiter(), workloads)),
            move |token| {
                let mut rb = http
                    .request(req.method.clone(), req.url.clone())
                    .headers(req.headers.clone())
                    .header("client-request-id", uuid::Uuid::new_v4().to_string());
                if let Some(token) = token {
                    rb = rb.bearer_auth(token.secret());
                }
                if let Some(body) = &req.body {
                    rb = rb.body(body.clone());
                }
                if let Some(timeout) = req.timeout {
                    rb = rb.timeout(timeout);
                }
                send_buffered(rb, &req.shown)
            },
        )
        .await
    }

    /// Sends `req`, reading the whole body; error statuses become [`Error::Api`].
    pub(crate) async fn send_buffered(&self, req: &Req) -> Result<Buffered> {
        let resp = self.send_buffered_any(req).await?;
        Self::success(req, resp)
    }

    /// `resp` if its status is 2xx, else its [`Error::Api`].
    pub(crate) fn success(req: &Req, resp: Buffered) -> Result<Buffered> {
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(api_error(
                req.method.as_str(),
                &req.shown,
                resp.status,
                &resp.headers,
                &resp.body,
            ))
        }
    }

    /// Sends `req` and returns the response with its body unread (for downloads); any status.
    pub(crate) async fn send_streaming(&self, req: &Req) -> Result<reqwest::Response> {
        let http = self.shared.http.reqwest();
        let workload = self.workload(req);
        with_auth_admitted(
            &self.shared.tokens,
            &self.shared.http.options().retry,
            Call {
                method: req.method.as_str(),
                url: &req.shown,
                idempotent: req.idempotent,
                counter: &self.shared.requests,
            },
            req.auth,
            workload
                .as_ref()
                .map(|w| (self.shared.http.limiter(), std::slice::from_ref(w))),
            move |token| {
                let mut rb = http
                    .request(req.method.clone(), req.url.clone())
                    .headers(req.headers.clone())
                    .header("client-request-id", uuid::Uuid::new_v4().to_string());
                if let Some(token) = token {
                    rb = rb.bearer_auth(token.secret());
                }
                async move {
                    rb.send()
                        .await
                        .map_err(|e| classify_send_error(e, &req.shown))
                }
            },
        )
        .await
    }

    pub(crate) fn decode<T: DeserializeOwned>(shown: &str, body: &[u8]) -> Result<T> {
        Self::decode_classified(body).map_err(|(detail, _)| Error::Decode {
            url: shown.to_owned(),
            detail,
        })
    }

    /// `GET`s `path` and parses the body as `T`, fetching it again when the JSON is truncated
    /// or garbled (see [`refetch_broken_json`]).
    pub(crate) async fn get_decoded<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: HeaderMap,
    ) -> Result<(String, T)> {
        let mut req = Req::new(Method::GET, self.resolve(path)?);
        req.headers = headers;
        req.timeout = Some(self.request_timeout());
        let req = &req;
        let value = refetch_broken_json(&self.shared.http.options().retry, &req.shown, || async {
            Ok(self.send_buffered(req).await?.body)
        })
        .await?;
        Ok((req.shown.clone(), value))
    }

    /// Parses `body`; on failure, the parser's detail and whether the body looks cut short or
    /// garbled (worth fetching again) rather than well-formed JSON of another shape.
    pub(crate) fn decode_classified<T: DeserializeOwned>(
        body: &[u8],
    ) -> std::result::Result<T, (String, bool)> {
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            body
        };
        serde_json::from_slice(body).map_err(|e| {
            let broken = matches!(
                e.classify(),
                serde_json::error::Category::Eof | serde_json::error::Category::Syntax
            );
            (e.to_string(), broken)
        })
    }

    /// `GET` a JSON resource.
    ///
    /// `path` is relative to the Graph base (`/users/{id}/mailFolders?$top=10`, already
    /// percent-encoded; see [`encode_segment`]) or an absolute URL with the base's origin.
    /// The body is read completely, then parsed; a truncated or garbled body is fetched again
    /// (within the retry bounds).
    ///
    /// # Errors
    /// [`Error::Api`] for an error status, [`Error::Decode`] for a body that is not `T`,
    /// [`Error::ForeignUrl`], [`Error::Throttled`], [`Error::Unreachable`], token errors.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (_, value) = self.get_decoded(path, (*self.headers).clone()).await?;
        Ok(value)
    }

    /// `GET` a collection and follow `@odata.nextLink` to the end, returning every `value`
    /// item. `Prefer: odata.maxpagesize=N` (and the configured headers) go with every page;
    /// each page is retried on its own.
    ///
    /// See <https://learn.microsoft.com/graph/paging>.
    ///
    /// # Errors
    /// As [`GraphClient::get_json`]; [`Error::Protocol`] when a nextLink repeats the page.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        page_size: Option<u32>,
    ) -> Result<Vec<T>> {
        let headers = self.page_headers(page_size);
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(current) = next.take() {
            let (shown, page): (String, Page<T>) =
                self.get_decoded(&current, headers.clone()).await?;
            items.extend(page.value);
            if page.next_link.as_deref() == Some(current.as_str()) {
                return Err(Error::Protocol {
                    url: shown,
                    detail: "@odata.nextLink points at the same page".into(),
                });
            }
            next = page.next_link;
        }
        Ok(items)
    }

    /// `POST` a JSON body and parse the JSON answer (`null` for an empty 2xx body).
    /// Not retried after a timeout (the server may have acted); throttling answers are retried.
    ///
    /// # Errors
    /// As [`GraphClient::get_json`].
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let mut req = Req::new(Method::POST, self.resolve(path)?);
        req.headers = (*self.headers).clone();
        req.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req.body = Some(Bytes::from(serde_json::to_vec(body).map_err(|e| {
            Error::Invalid {
                detail: format!("request body: {e}"),
            }
        })?));
        req.timeout = Some(self.request_timeout());
        let resp = self.send_buffered(&req).await?;
        Self::decode(&req.shown, &resp.body)
    }

    /// Creates a message from MIME: `POST` with `Content-Type: text/plain` and the base64 of
    /// the RFC 822 message (e.g. `/users/{id}/mailFolders/{folder}/messages`).
    ///
    /// Graph refuses request bodies over [`MAX_REQUEST_BODY`] (4 MiB), so MIME over 3 MiB
    /// (4/3 once base64-encoded) must lose its large attachments first and have them sent
    /// through [`GraphClient::attachment_upload_session`].
    ///
    /// See <https://learn.microsoft.com/graph/outlook-create-send-messages> and
    /// <https://learn.microsoft.com/graph/api/user-post-messages>.
    ///
    /// # Errors
    /// As [`GraphClient::post_json`].
    pub async fn post_mime(&self, path: &str, mime: &[u8]) -> Result<serde_json::Value> {
        use base64::Engine as _;
        let mut req = Req::new(Method::POST, self.resolve(path)?);
        req.headers = (*self.headers).clone();
        req.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        req.body = Some(Bytes::from(
            base64::engine::general_purpose::STANDARD.encode(mime),
        ));
        req.timeout = Some(self.request_timeout());
        let resp = self.send_buffered(&req).await?;
        Self::decode(&req.shown, &resp.body)
    }

    /// `PUT` a body (e.g. small file content to `/drives/{d}/items/{parent}:/{name}:/content`,
    /// up to 250 MB) and parse the JSON answer (`null` when empty).
    ///
    /// See <https://learn.microsoft.com/graph/api/driveitem-put-content>.
    ///
    /// # Errors
    /// As [`GraphClient::get_json`]; [`Error::Invalid`] for a malformed content type.
    pub async fn put_bytes(
        &self,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<serde_json::Value> {
        let mut req = Req::new(Method::PUT, self.resolve(path)?);
        req.headers = (*self.headers).clone();
        req.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(content_type).map_err(|e| Error::Invalid {
                detail: format!("content type {content_type:?}: {e}"),
            })?,
        );
        req.body = Some(body);
        req.timeout = Some(self.request_timeout());
        let resp = self.send_buffered(&req).await?;
        Self::decode(&req.shown, &resp.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_writes_are_admitted_with_their_body_as_upload_bytes() {
        let http = HttpClient::new(crate::HttpOptions::default()).unwrap();
        let endpoints = crate::Endpoints {
            authority: Url::parse("http://127.0.0.1:9").unwrap(),
            graph_base: Url::parse("http://127.0.0.1:9/v1.0").unwrap(),
        };
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            endpoints.clone(),
            crate::ClientSecretCredential {
                tenant_id: "t".into(),
                client_id: "c".into(),
                secret: "s".into(),
            },
        ));
        let g = GraphClient::new(http, tokens, endpoints.graph_base);
        let mut req = Req::new(
            Method::POST,
            g.resolve("/users/u1/mailFolders/inbox/messages").unwrap(),
        );
        req.body = Some(Bytes::from_static(b"12345"));
        assert_eq!(
            g.workload(&req),
            Some(Workload::Outlook {
                mailbox: "u1".into(),
                upload_bytes: 5
            })
        );
        // A pre-authenticated URL is not metered per app.
        req.auth = false;
        assert_eq!(g.workload(&req), None);
    }
}
