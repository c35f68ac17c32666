//! A local Microsoft 365 tenant for m365bk's tests: the other side of the wire.
//!
//! It serves the Microsoft identity platform's token endpoint and the Microsoft Graph v1.0
//! endpoints m365bk's first slice uses, following Microsoft's documented wire format
//! (property names, paging, delta tokens, error bodies), and enforces Microsoft's
//! per-endpoint application permissions. It depends on no other m365bk crate.
//!
//! # Main types
//! - [`SimOptions`] (corpus directory, [`TenantConfig`], listen address) → [`serve`] →
//!   [`RunningSim`] (`base_url`, stop handle). The binary `m365bk-tenant-sim` wraps the same.
//! - [`TenantConfig`]: TOML with `tenant_id`, `token_lifetime_secs` and `[[apps]]`
//!   (`client_id`, `client_secret` — optional: an app without one is certificate-only —,
//!   `certificates`, `display_name`, `admin_consent`, `roles`);
//!   unknown keys
//!   are errors; an optional `[faults]` section ([`FaultsConfig`]) injects faults, latency
//!   and Microsoft's throttling limits.
//! - [`QuickXorHash`]: OneDrive's content hash, as reported in `file.hashes.quickXorHash`.
//!
//! # Corpus (`--corpus DIR`)
//! `DIR/users/<upn>/user.json` (optional directory properties), `…/mail/<Folder>/…/*.eml`
//! (folders; top-level `Inbox`, `Sent Items`, `Drafts`, `Archive`, `Deleted Items`,
//! `Junk Email`, `Outbox`, `Conversation History` are Outlook's well-known folders, which every
//! mailbox has), `…/drive/<tree>` (OneDrive), `…/calendar/**/*.ics` (events of the default
//! calendar). Contacts are derived from the From/To addresses of each user's messages, in the
//! default Contacts folder. Ids are hashes of (UPN, path): two runs give the same ids. Seeded
//! bytes stay on disk and are read on demand; run-time writes live in memory.
//!
//! # HTTP surface (base URL `B`)
//! - `POST B/{tenant}/oauth2/v2.0/token` — client credentials; `scope` must be exactly
//!   `<resource>/.default` for `https://graph.microsoft.com`, `https://outlook.office365.com`
//!   or `https://<name>.sharepoint.com`. HS256 JWTs with v1.0 app-only claims; `roles` omitted
//!   without admin consent; `expires_in` = `token_lifetime_secs` (`--token-lifetime-secs`,
//!   `PUT B/_sim/admin/token-lifetime`). Certificate credentials: `client_assertion_type`
//!   jwt-bearer + `client_assertion` signed PS256 (`x5t#S256`) or RS256 (`x5t`) with a
//!   certificate registered on the app; each assertion's `jti` is good for one request.
//!   AADSTS errors: 90002 (tenant), 900144 (missing parameter), 70003 (grant type), 700016
//!   (client), 7000215 (wrong secret, or any secret for a certificate-only app), 7000218 (no
//!   credential), 1002012 (scope shape), 70011 (unknown resource), 50027 (assertion not a JWT),
//!   5002738 (algorithm), 700027 (unknown thumbprint or bad signature), 700021 (`iss`/`sub` ≠
//!   `client_id`), 700023 (`aud` ≠ this token endpoint), 700024 (outside `nbf`..`exp` ± 5 min),
//!   50013 (`jti` already used; Entra's own code for a replay is not documented).
//! - `B/v1.0/…` — every request needs a Graph bearer token (401 `InvalidAuthenticationToken`
//!   otherwise) and is matched to a template of Microsoft's `endpointIndex` (plus the
//!   overrides in `permissions.rs`); a token without a granting role gets the 403 of the
//!   workload (`ErrorAccessDenied`, `accessDenied`, `Authorization_RequestDenied`). Responses
//!   carry `request-id` and `client-request-id`. Served: users (list/get), mailFolders
//!   (list/get/childFolders/create), messages (list, get, `$value`, delta, create from MIME or
//!   JSON), mailboxSettings, contactFolders (list = folders inside the default Contacts folder,
//!   as Graph documents; get; create), contacts (list, get, delta, create), calendars (list,
//!   get, create), events (list, get, create), calendarView delta, drive (get), driveItems
//!   (get by id or `:/path:`, children, delta, content → 302, create folder, simple upload,
//!   createUploadSession, PATCH rename/move, DELETE).
//! - `POST B/v1.0/$batch` (JSON batching): each inner request runs through the same router with
//!   the batch's `Authorization`, so permissions, faults, latency, the throttling model and the
//!   request log apply to it as to a request sent alone (an inner 429 keeps its `Retry-After`
//!   in the inner `headers`); up to 4 run at once; `dependsOn` orders them and a dependant of a
//!   failed request gets 424 without running; 400 for more than 20 requests, a repeated id, a
//!   `dependsOn` naming no request of the batch, a cycle, or an absolute `url`.
//! - Delta follows Graph: `Prefer: odata.maxpagesize=N` applies per request (re-send it on
//!   nextLinks), `Preference-Applied` echoes it; `@odata.nextLink` carries `$skiptoken` (drive:
//!   `token`), the last page `@odata.deltaLink`; later rounds return changes and removals
//!   (`@removed` for Exchange, the `deleted` facet for OneDrive). Moved messages get new ids.
//! - `B/_download/{token}` (Range, 206/416) and `B/_upload/{id}` (320 KiB fragment rule,
//!   416 on overlap) are pre-authenticated.
//! - Faults ([`FaultRule`]: which requests by method, path substring or [`RouteKind`]; what
//!   [`Fault`]: an error status with each `Retry-After` form, a connection reset mid-body, a
//!   truncated body, an expired access token, a lost delta sync state (410 with `Location`),
//!   an expired download URL, latency; when: the Nth match, every Nth, a seeded probability,
//!   at most `max_count`), per-request `latency_ms`, and the throttling model
//!   ([`ThrottlingConfig`]: Outlook's 4 concurrent / 10,000 per 10 minutes / 150 MB uploaded
//!   per 5 minutes per mailbox,
//!   OneDrive's resource units per app per minute, with `RateLimit-*` headers,
//!   and per 24 hours), all off by default.
//! - Test API (no auth, loopback only): `GET|DELETE B/_sim/requests` (request log:
//!   `seq, at_ms, method, path, status, app_id, authorization_header, bytes_out, fault`, plus
//!   `fault_rule` for a rule's fault, `batch_request_id` for a request run inside a `$batch`;
//!   `/_sim/` calls are not logged),
//!   `GET|PUT|DELETE B/_sim/admin/faults` (PUT a JSON array of rules or a `[faults]`-shaped
//!   object; GET returns it with each rule's `matched`/`injected` and `throttled` counters), `PUT B/_sim/admin/apps/{client_id}/roles|consent`,
//!   `POST|DELETE B/_sim/admin/apps/{client_id}/certificates` (PEM; answers the thumbprints),
//!   `PUT B/_sim/admin/token-lifetime` (seconds), `PUT B/_sim/admin/clock-offset` (seconds the
//!   simulator's clock is ahead when checking assertions and access tokens),
//!   `POST B/_sim/admin/users/{upn}/messages?folder=A/B` (raw MIME),
//!   `POST …/messages/{id}/move?folder=…`, `DELETE …/messages/{id}`,
//!   `PUT|DELETE B/_sim/admin/users/{upn}/drive/{path}`, `GET B/_sim/admin/users/{upn}/export`.
//!
//! # Example
//! ```no_run
//! # async fn run() -> m365bk_tenant_sim::Result<()> {
//! use m365bk_tenant_sim::{serve, SimOptions, TenantConfig};
//! let tenant = TenantConfig::from_toml(r#"
//!     tenant_id = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11"
//!     [[apps]]
//!     client_id = "0f6d1d5e-7a43-4c55-9d0e-2b7f4c1a9e01"
//!     client_secret = "s3cret"
//!     roles = ["Mail.Read", "User.Read.All"]
//! "#)?;
//! let sim = serve(SimOptions::new("corpus", tenant)).await?;
//! println!("token endpoint: {}", sim.token_url());
//! sim.stop().await;
//! # Ok(()) }
//! ```

mod admin;
mod attachments;
mod batch;
mod config;
mod corpus;
mod delta;
mod error;
mod faults;
mod graph;
mod ics;
mod ids;
mod mime;
mod permissions;
mod quickxor;
mod request_log;
mod server;
mod tenant;
mod token;
mod transfer;
mod wire;

pub use config::{AppConfig, TenantConfig};
pub use error::{Error, Result};
pub use faults::{
    Fault, FaultRule, FaultsConfig, OneDriveLimits, OutlookLimits, RouteKind, ThrottlingConfig,
};
pub use quickxor::QuickXorHash;
pub use server::{serve, RunningSim, SimOptions};
