//! Directory lookups (a user, a user's OneDrive) behind one trait, with two implementations:
//! graph-rs-sdk's typed URL builders ([`SdkDirectory`]) and our own REST path
//! ([`RestDirectory`]).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use crate::client::{api_error, refetch_broken_json, with_auth_admitted, GraphClient};
use crate::error::{error_chain, Error, Result};
use crate::http::{display_url, HttpClient, HttpOptions, USER_AGENT};
use crate::limiter::Workload;
use crate::retry::{AttemptError, Buffered, Call, RetryClass};
use crate::token::TokenProvider;

/// Single, non-paged directory reads.
///
/// # Contract
/// Both implementations send the same request (`GET {base}/users/{id}` and
/// `GET {base}/users/{id}/drive`, the id percent-encoded as one path segment) with a Graph
/// token, go through the same retry/throttle layer and 401 refresh, and map errors the same
/// way ([`Error::Api`] with Graph's code and `request-id`). Idempotent; no caching.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The user object (`id`, `userPrincipalName`, `mail`, ...).
    /// See <https://learn.microsoft.com/graph/api/user-get>.
    ///
    /// # Errors
    /// [`Error::Api`] (404 `Request_ResourceNotFound` for an unknown user, 403 without
    /// `User.Read.All`), transport and token errors.
    async fn user(&self, id_or_upn: &str) -> Result<Value>;

    /// The user's OneDrive (`id`, `driveType`, `quota`, ...).
    /// See <https://learn.microsoft.com/graph/api/drive-get>.
    ///
    /// # Errors
    /// [`Error::Api`] (404 when the OneDrive is not provisioned), transport and token errors.
    async fn user_drive(&self, id_or_upn: &str) -> Result<Value>;
}

/// [`Directory`] on our reqwest path ([`GraphClient::get_json`]).
#[derive(Debug, Clone)]
pub struct RestDirectory {
    graph: GraphClient,
}

impl RestDirectory {
    /// Uses `graph` for every call.
    pub fn new(graph: GraphClient) -> Self {
        RestDirectory { graph }
    }

    fn url(&self, id: &str, tail: Option<&str>) -> String {
        let mut url = (*self.graph.base).clone();
        {
            let mut segments = url.path_segments_mut().expect("Graph base is a base URL");
            segments.pop_if_empty().extend(["users", id]);
            if let Some(tail) = tail {
                segments.push(tail);
            }
        }
        url.to_string()
    }
}

#[async_trait]
impl Directory for RestDirectory {
    async fn user(&self, id_or_upn: &str) -> Result<Value> {
        self.graph.get_json(&self.url(id_or_upn, None)).await
    }

    async fn user_drive(&self, id_or_upn: &str) -> Result<Value> {
        self.graph
            .get_json(&self.url(id_or_upn, Some("drive")))
            .await
    }
}

/// [`Directory`] on graph-rs-sdk 3.0.1's typed request builders
/// (`client.user(id).get_user()`, `client.user(id).drive().get_drive()`).
///
/// What is ours: the token (from [`TokenProvider`], handed to the SDK as a static bearer; the
/// SDK client is rebuilt only when the token changes), the endpoint (set with the SDK's
/// `use_test_endpoint`, which accepts any base, `http://127.0.0.1:PORT` included, where its
/// `use_endpoint` only accepts Microsoft's hosts), the `User-Agent`, timeouts, a fresh
/// `client-request-id`, the retry/throttle layer and the error mapping. What is the SDK's: URL
/// building and sending through its own reqwest 0.12 client, with its retry layers left off.
pub struct SdkDirectory {
    tokens: Arc<TokenProvider>,
    /// For its admission control (the throttling limits are per process, not per client).
    http: HttpClient,
    options: HttpOptions,
    base: Url,
    requests: AtomicU64,
    cached: Mutex<Option<(SecretString, graph_rs_sdk::GraphClient)>>,
}

impl std::fmt::Debug for SdkDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkDirectory")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Lookup {
    User,
    UserDrive,
}

impl SdkDirectory {
    /// A directory on `graph_base` with `http`'s timeouts and retry policy.
    pub fn new(http: &HttpClient, tokens: Arc<TokenProvider>, graph_base: Url) -> Self {
        let mut base = graph_base;
        base.set_query(None);
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_owned();
            base.set_path(&trimmed);
        }
        SdkDirectory {
            tokens,
            http: http.clone(),
            options: http.options().clone(),
            base,
            requests: AtomicU64::new(0),
            cached: Mutex::new(None),
        }
    }

    /// HTTP requests sent through the SDK so far (retries included).
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sdk_client(&self, token: &str) -> graph_rs_sdk::GraphClient {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((secret, client)) = cached.as_ref() {
            if secret.expose_secret() == token {
                return client.clone();
            }
        }
        let config = graph_rs_sdk::GraphClientConfiguration::new()
            .access_token(token)
            .user_agent(HeaderValue::from_static(USER_AGENT))
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.request_timeout)
            .referer(false)
            .https_only(self.base.scheme() == "https");
        let mut client = graph_rs_sdk::GraphClient::from(config);
        client.use_test_endpoint(&self.base);
        *cached = Some((SecretString::from(token.to_owned()), client.clone()));
        client
    }

    fn shown(&self, id: &str, lookup: Lookup) -> String {
        let mut url = self.base.clone();
        {
            let mut segments = url.path_segments_mut().expect("Graph base is a base URL");
            segments.pop_if_empty().extend(["users", id]);
            if let Lookup::UserDrive = lookup {
                segments.push("drive");
            }
        }
        display_url(&url)
    }

    /// One lookup; a truncated or garbled JSON answer is fetched again within the retry
    /// bounds, as [`GraphClient::get_json`] does.
    async fn get(&self, id: &str, lookup: Lookup) -> Result<Value> {
        let shown = self.shown(id, lookup);
        refetch_broken_json(&self.options.retry, &shown, || async {
            Ok(self.get_once(id, lookup).await?.1)
        })
        .await
    }

    async fn get_once(&self, id: &str, lookup: Lookup) -> Result<(String, bytes::Bytes)> {
        let shown = self.shown(id, lookup);
        let shown_ref = shown.as_str();
        // A drive lookup costs 1 SharePoint resource unit: it goes through admission control
        // like every other OneDrive request of the process.
        let workload = matches!(lookup, Lookup::UserDrive)
            .then_some(Workload::SharePoint { resource_units: 1 });
        let resp: Buffered = with_auth_admitted(
            &self.tokens,
            &self.options.retry,
            Call {
                method: "GET",
                url: shown_ref,
                idempotent: true,
                counter: &self.requests,
            },
            true,
            workload
                .as_ref()
                .map(|w| (self.http.limiter(), std::slice::from_ref(w))),
            move |token| async move {
                let token = token.expect("auth requested");
                let client = self.sdk_client(token.secret());
                let handler = match lookup {
                    Lookup::User => client.user(id).get_user(),
                    Lookup::UserDrive => client.user(id).drive().get_drive(),
                };
                let handler = handler.header(
                    HeaderName::from_static("client-request-id"),
                    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                        .expect("uuid is ASCII"),
                );
                let resp = handler
                    .send()
                    .await
                    .map_err(|e| sdk_failure(e, shown_ref))?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.map_err(|e| AttemptError {
                    error: Error::Decode {
                        url: shown_ref.to_owned(),
                        detail: format!("the body broke off (HTTP {status}): {}", error_chain(&e)),
                    },
                    retry: RetryClass::IfIdempotent,
                })?;
                Ok(Buffered {
                    status,
                    headers,
                    body,
                })
            },
        )
        .await?;
        if !(200..300).contains(&resp.status) {
            return Err(api_error(
                "GET",
                &shown,
                resp.status,
                &resp.headers,
                &resp.body,
            ));
        }
        Ok((shown, resp.body))
    }
}

/// Classifies a graph-rs-sdk failure: connect errors and timeouts of its reqwest 0.12 are
/// retried like ours.
fn sdk_failure(e: graph_rs_sdk::GraphFailure, shown: &str) -> AttemptError {
    let transport = match &e {
        graph_rs_sdk::GraphFailure::ReqwestError(r) => Some((r.is_connect(), r.is_timeout())),
        graph_rs_sdk::GraphFailure::Other(boxed) => boxed
            .downcast_ref::<reqwest012::Error>()
            .map(|r| (r.is_connect(), r.is_timeout())),
        _ => None,
    };
    let retry = match transport {
        Some((true, _)) => RetryClass::Always,
        Some((false, true)) => RetryClass::IfIdempotent,
        Some(_) => RetryClass::IfIdempotent,
        None => RetryClass::Never,
    };
    // GraphFailure's Display is a pretty-printed Debug: show the inner error's chain instead.
    let detail = match &e {
        graph_rs_sdk::GraphFailure::ReqwestError(r) => error_chain(r),
        graph_rs_sdk::GraphFailure::Other(boxed) => error_chain(boxed.as_ref()),
        other => error_chain(other)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    AttemptError {
        error: Error::Sdk {
            url: shown.to_owned(),
            detail,
            transient: transport.is_some(),
        },
        retry,
    }
}

#[async_trait]
impl Directory for SdkDirectory {
    async fn user(&self, id_or_upn: &str) -> Result<Value> {
        self.get(id_or_upn, Lookup::User).await
    }

    async fn user_drive(&self, id_or_upn: &str) -> Result<Value> {
        self.get(id_or_upn, Lookup::UserDrive).await
    }
}
