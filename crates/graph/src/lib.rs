//! m365bk's HTTP layer to Microsoft: app-only tokens, Microsoft Graph calls, paging, delta,
//! content downloads and upload sessions, all through one retry/throttle layer.
//!
//! # Main types
//! - [`HttpClient`]: the one reqwest client of the process (rustls, `User-Agent`
//!   `ISV|m365bk|m365bk/<version>`, timeouts, [`RetryPolicy`]), with admission control for
//!   Microsoft's per-workload limits ([`ThrottleOptions`]: 4 requests in flight, 10,000 per
//!   10 minutes and [`OUTLOOK_UPLOAD_BYTES_PER_WINDOW`] uploaded per 5 minutes per Outlook
//!   mailbox, SharePoint resource units per minute and day, 4 requests
//!   per second per team; a 429 fences only its [`Workload`]).
//! - [`TokenProvider`]: client-credentials tokens per [`Audience`] (Graph, Exchange Online,
//!   SharePoint) with a client secret or a certificate ([`CertificateCredential`]: a PS256 or
//!   RS256 client assertion), cached and refreshed 5 minutes before expiry; [`AccessToken::claims`] reads
//!   the `roles` claim for the permission gate.
//! - [`GraphClient`]: JSON calls ([`GraphClient::get_json`], [`GraphClient::list`],
//!   [`GraphClient::post_json`], ...), JSON batches of reads ([`GraphClient::batch`]: up to 20
//!   GETs per round trip, inner throttling answers retried per request), the [`DeltaWalker`],
//!   [`GraphClient::download`], [`GraphClient::upload_session`] and
//!   [`GraphClient::attachment_upload_session`].
//! - [`Directory`]: user and OneDrive lookups, on graph-rs-sdk ([`SdkDirectory`]) or our own
//!   path ([`RestDirectory`]).
//! - [`enum@Error`]: one error enum, classified by [`Error::is_transient`], [`Error::status`],
//!   [`Error::graph_code`], [`Error::is_access_denied`].
//!
//! graph-rs-sdk is used only where it is sound (typed URL builders for single GETs); tokens,
//! paging, delta, retry, downloads and uploads are ours (see DESIGN.md §6).
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use m365bk_graph::{
//!     ClientSecretCredential, DeltaStart, Endpoints, GraphClient, HttpClient, HttpOptions,
//!     TokenProvider,
//! };
//!
//! # async fn run() -> m365bk_graph::Result<()> {
//! let http = HttpClient::new(HttpOptions::default())?;
//! let endpoints = Endpoints::default();
//! let credential = ClientSecretCredential {
//!     tenant_id: "contoso.onmicrosoft.com".into(),
//!     client_id: "00000000-0000-0000-0000-000000000000".into(),
//!     secret: std::fs::read_to_string("/run/credentials/m365bk/secret").unwrap().trim().into(),
//! };
//! let tokens = Arc::new(TokenProvider::new(http.clone(), endpoints.clone(), credential));
//! let graph = GraphClient::new(http, tokens, endpoints.graph_base);
//!
//! let folders: Vec<serde_json::Value> =
//!     graph.list("/users/adele@contoso.com/mailFolders", Some(100)).await?;
//! let mut walker = graph.delta(
//!     DeltaStart::Initial("/users/adele@contoso.com/mailFolders/inbox/messages/delta".into()),
//!     Some(50),
//! );
//! while let Some(page) = walker.next_page().await? {
//!     println!("{} changes; deltaLink {:?}", page.items.len(), page.delta_link);
//! }
//! # let _ = folders;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod batch;
mod certificate;
mod client;
mod delta;
mod directory;
mod download;
mod error;
mod http;
mod limiter;
mod retry;
mod token;
mod upload;

pub use batch::{BatchRequest, BatchResponse, StoredVersion, MAX_BATCH_REQUESTS};
pub use certificate::{
    AssertionAlgorithm, CertificateCredential, ASSERTION_LIFETIME, CLIENT_ASSERTION_TYPE,
};
pub use client::{
    encode_segment, GraphClient, DEFAULT_UPLOAD_FRAGMENT, MAX_REQUEST_BODY, MAX_UPLOAD_FRAGMENT,
    UPLOAD_FRAGMENT_UNIT,
};
pub use delta::{is_removed, DeltaJournal, DeltaPage, DeltaStart, DeltaWalker};
pub use directory::{Directory, RestDirectory, SdkDirectory};
pub use download::Download;
pub use error::{Error, Result};
pub use http::{HttpClient, HttpOptions, USER_AGENT};
pub use limiter::{
    ThrottleOptions, ThrottleStats, Workload, OUTLOOK_UPLOAD_BYTES_PER_WINDOW,
    OUTLOOK_UPLOAD_WINDOW,
};
pub use retry::{parse_retry_after, RetryPolicy};
pub use token::{
    AccessToken, Audience, ClientCredential, ClientSecretCredential, Endpoints, TokenClaims,
    TokenProvider, REFRESH_MARGIN,
};
pub use upload::{
    OUTLOOK_ATTACHMENT_FRAGMENT, OUTLOOK_SESSION_MAX_BYTES, OUTLOOK_SESSION_MIN_BYTES,
};
