//! Fault injection, latency injection and Microsoft's throttling limits.
//!
//! Configured by the tenant config's `[faults]` section ([`FaultsConfig`]) and at run time by
//! `PUT /_sim/admin/faults`. A [`FaultRule`] selects requests (method, path substring, route
//! kind), says what goes wrong ([`Fault`]) and when (the Nth matching request, every Nth, or
//! with a probability drawn from an RNG seeded by [`FaultsConfig::seed`]; at most `max_count`
//! times). Every rule counts each request it matches; the first rule (in order) that fires
//! decides the request's fault, and a later rule whose turn falls on the same request lets it
//! pass. Faulted requests are recorded in the request log
//! with a `fault` field (the fault's `kind`, or `throttle_*` for the throttling model) and the
//! index of the rule (`fault_rule`).
//!
//! The throttling model ([`ThrottlingConfig`]) is off unless configured. It follows
//! <https://learn.microsoft.com/graph/throttling-limits>: Outlook allows 4 concurrent requests,
//! 10,000 requests per 10 minutes and 150 MB of uploads (POST, PUT, PATCH bodies, attachment
//! upload-session ranges included) per 5 minutes per app and mailbox (429
//! `ApplicationThrottled`, "Application is over its MailboxConcurrency limit." / "...
//! RequestRate limit." / "... UploadSize limit."); OneDrive
//! and SharePoint meter resource units per app per minute (1 for a single-item request or a
//! delta with a token, 2 for listings, delta without a token and writes, 5 for permission
//! requests), send `RateLimit-Limit`/`-Remaining`/`-Reset` from 80 % of the budget on, and
//! answer 429 `activityLimitReached` with `Retry-After` beyond it; and per app per 24 hours
//! (1,200,000 for the smallest tenants), answering 429 `activityLimitReached` with the wait
//! until units leave the 24-hour window. Only authenticated Graph requests are metered
//! (pre-authenticated download and upload URLs carry no app id), except the range `PUT`s of
//! an Outlook attachment upload session, which count against the upload budget of the app
//! that opened it. Both models apply at once when both are configured, each to its own
//! requests. The fault report (`GET /_sim/admin/faults`) counts what the model admitted and
//! refused (`throttled`: also `outlook_peak_in_flight`, `outlook_upload_bytes`,
//! `onedrive_resource_units`) and, per `app/mailbox`, the most requests it had in flight at
//! once (`outlook_mailboxes`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::server::Sim;
use crate::token::{self, TokenRejection};
use crate::wire::{Ctx, GraphError};

/// The `[faults]` section of the tenant config, and the body of `PUT /_sim/admin/faults`.
///
/// ```toml
/// [faults]
/// seed = 7                  # RNG seed for `probability` rules (default 0)
/// latency_ms = 0            # delay added to every request (default 0)
///
/// [[faults.rules]]
/// route = "delta"           # token, graph, graph-json, delta, $value, content, download, upload
/// path_contains = "/mailFolders/"
/// fault = { kind = "status", status = 429, retry_after = "0.2" }
/// nth = 2                   # or every = N, or probability = 0.1; default: every match
/// max_count = 1
///
/// [faults.throttling.outlook]    # Microsoft's limits unless overridden
/// upload_bytes_per_window = 157286400   # 150 MB per 5 minutes per mailbox
/// upload_window_secs = 300
/// [faults.throttling.onedrive]
/// resource_units_per_minute = 1250
/// resource_units_per_day = 1200000
/// day_window_secs = 86400
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    /// Seed of the RNG behind `probability` rules (one RNG per rule, seeded `seed + index`).
    #[serde(default)]
    pub seed: u64,
    /// Delay added to every request (the test API under `/_sim/` excepted), in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// The rules, consulted in order.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Microsoft's throttling limits; off by default.
    #[serde(default)]
    pub throttling: ThrottlingConfig,
}

/// Which requests a rule applies to, what goes wrong, and when.
///
/// A request matches when every given selector matches (`method`, `path_contains`, `route`)
/// and the fault applies to it (`sync_state_lost` only to delta requests carrying a token,
/// `download_url_expired` only to download URLs, `token_expired` only to requests with a
/// bearer token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// HTTP method, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Substring of the path and query, as sent or percent-decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    /// The kind of endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteKind>,
    /// What goes wrong.
    pub fault: Fault,
    /// Fire on the Nth matching request only (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    /// Fire on every Nth matching request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Fire with this probability (0..=1) per matching request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Fire at most this many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
}

/// Kinds of endpoint a rule can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Token,
    /// Every `/v1.0/…` request.
    Graph,
    /// `/v1.0/…` requests other than `$value` and `content` (the JSON ones).
    GraphJson,
    /// Delta queries (`…/delta`, first pages and token pages alike).
    Delta,
    /// A message's MIME, `…/messages/{id}/$value`.
    #[serde(rename = "$value", alias = "value")]
    Value,
    /// A driveItem's `…/content` (the 302 to the download URL, or an upload).
    Content,
    /// The pre-authenticated download URL host, `/_download/{token}`.
    Download,
    /// Upload session URLs, `/_upload/{id}`.
    Upload,
}

/// What goes wrong with a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// An error status (429, 503, 504, 509, ...) with a Graph error body, instead of the
    /// answer. `Retry-After` is sent verbatim from `retry_after` ("2", "0.2"), or as an
    /// HTTP-date `retry_after_http_date_secs` seconds from now, or not at all.
    Status {
        /// The HTTP status, 400..=599.
        status: u16,
        /// `error.code`; default by status (`TooManyRequests`, `serviceNotAvailable`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// `error.message`; default by status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// `Retry-After` value as sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<String>,
        /// `Retry-After` as an HTTP-date this many seconds ahead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_http_date_secs: Option<u64>,
    },
    /// The real answer, but the connection is aborted after `after_bytes` bytes of its body
    /// (the declared `Content-Length` stays). A body this short or shorter goes out whole and
    /// does not count as injected (so `max_count` waits for a body long enough to cut).
    Reset {
        /// Body bytes sent before the connection is cut.
        after_bytes: u64,
    },
    /// The real answer with its body cut to `after_bytes` bytes (default: half), and a
    /// `Content-Length` that matches: a complete HTTP message with truncated JSON.
    Truncate {
        /// Body bytes kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_bytes: Option<u64>,
    },
    /// 401 `InvalidAuthenticationToken` "Lifetime validation failed, the token is expired.";
    /// the caller's token stays expired for every later request, so only a new token helps.
    TokenExpired,
    /// The delta token is no longer valid: 410 Gone (or `status`) with `code` (default
    /// `resyncRequired` for drive delta, `SyncStateNotFound` for Outlook) and a `Location`
    /// header holding the delta URL without a token, to restart the enumeration from.
    SyncStateLost {
        /// HTTP status (default 410).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// `error.code`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// The download URL expired: 401 (or 403) from the download host; the URL stays
    /// expired, so only a new one (from `…/content` again) helps.
    DownloadUrlExpired {
        /// 401 or 403.
        #[serde(default = "default_401")]
        status: u16,
    },
    /// The real answer, `ms` milliseconds late.
    Latency {
        /// Delay in milliseconds.
        ms: u64,
    },
}

fn default_401() -> u16 {
    401
}

impl Fault {
    /// The name recorded in the request log's `fault` field.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Status { .. } => "status",
            Fault::Reset { .. } => "reset",
            Fault::Truncate { .. } => "truncate",
            Fault::TokenExpired => "token_expired",
            Fault::SyncStateLost { .. } => "sync_state_lost",
            Fault::DownloadUrlExpired { .. } => "download_url_expired",
            Fault::Latency { .. } => "latency",
        }
    }
}

/// Microsoft's throttling limits, each off unless present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottlingConfig {
    /// Outlook (mail, contacts, calendar, mailbox settings) limits per app and mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlook: Option<OutlookLimits>,
    /// OneDrive resource units per app per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onedrive: Option<OneDriveLimits>,
}

/// Outlook service limits (<https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits>).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlookLimits {
    /// Requests in progress at once per app and mailbox (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrent_requests: u32,
    /// Requests per window per app and mailbox (default 10,000).
    #[serde(default = "default_requests")]
    pub requests_per_window: u32,
    /// The window, in seconds (default 600).
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// `Retry-After` sent with a MailboxConcurrency 429 (default "1").
    #[serde(default = "default_concurrency_retry_after")]
    pub concurrency_retry_after: String,
    /// Bytes of request bodies uploaded per upload window per app and mailbox (default
    /// 150 MB, taken as 150 MiB like the simulator's other MB limits): the bodies of `POST`,
    /// `PUT` and `PATCH` requests to a mailbox (message creation from MIME or JSON,
    /// attachments, ...) and of the `PUT`s to an attachment upload session's `uploadUrl`
    /// (counted for the app that opened the session). Microsoft: "150 megabytes (MB) upload
    /// (PATCH, POST, PUT) in a 5 minute period"
    /// (<https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits>). A
    /// request that would go over it gets 429 `ApplicationThrottled` "Application is over its
    /// UploadSize limit." (the limit's name in the message is the simulator's; Microsoft does
    /// not document it) with `Retry-After` = the seconds until enough bytes leave the window.
    /// A single body larger than the whole budget is let through when the window is empty, so
    /// scaled-down test limits cannot wedge a mailbox.
    #[serde(default = "default_upload_bytes")]
    pub upload_bytes_per_window: u64,
    /// The upload window, in seconds (default 300).
    #[serde(default = "default_upload_window")]
    pub upload_window_secs: u64,
}

impl Default for OutlookLimits {
    fn default() -> Self {
        OutlookLimits {
            concurrent_requests: default_concurrency(),
            requests_per_window: default_requests(),
            window_secs: default_window(),
            concurrency_retry_after: default_concurrency_retry_after(),
            upload_bytes_per_window: default_upload_bytes(),
            upload_window_secs: default_upload_window(),
        }
    }
}

fn default_upload_bytes() -> u64 {
    150 * 1024 * 1024
}
fn default_upload_window() -> u64 {
    300
}

fn default_concurrency() -> u32 {
    4
}
fn default_requests() -> u32 {
    10_000
}
fn default_window() -> u64 {
    600
}
fn default_concurrency_retry_after() -> String {
    "1".into()
}

/// OneDrive and SharePoint resource units per app in the tenant, per minute and per 24 hours
/// (<https://learn.microsoft.com/sharepoint/dev/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online>,
/// "Application" limits by tenant size; the defaults are the 0–1,000 licences row).
///
/// Both windows slide. A request over the minute budget gets 429 `activityLimitReached` with
/// `Retry-After` and the `RateLimit-*` headers; one over the 24-hour budget gets 429
/// `activityLimitReached` with `Retry-After` = the seconds until enough units leave the
/// 24-hour window, and no `RateLimit-*` headers (Microsoft documents those for the minute
/// budget only). The 24-hour window counts in 1-second buckets (so it may free units up to a
/// second early).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneDriveLimits {
    /// Resource units per app per minute (default 1,250, the smallest tenant's budget).
    #[serde(default = "default_resource_units")]
    pub resource_units_per_minute: u32,
    /// Resource units per app per [`OneDriveLimits::day_window_secs`] (default 1,200,000, the
    /// smallest tenant's 24-hour budget).
    #[serde(default = "default_resource_units_per_day")]
    pub resource_units_per_day: u32,
    /// The "24-hour" window in seconds (default 86,400; scaled down in tests).
    #[serde(default = "default_day_window")]
    pub day_window_secs: u64,
}

impl Default for OneDriveLimits {
    fn default() -> Self {
        OneDriveLimits {
            resource_units_per_minute: default_resource_units(),
            resource_units_per_day: default_resource_units_per_day(),
            day_window_secs: default_day_window(),
        }
    }
}

fn default_resource_units() -> u32 {
    1250
}
fn default_resource_units_per_day() -> u32 {
    1_200_000
}
fn default_day_window() -> u64 {
    24 * 3600
}

impl FaultsConfig {
    /// Checks the rules; the message names the offending entry (`rules[2].probability`).
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            let when = [r.nth.is_some(), r.every.is_some(), r.probability.is_some()];
            if when.iter().filter(|w| **w).count() > 1 {
                return Err(format!(
                    "rules[{i}]: give at most one of nth, every, probability"
                ));
            }
            if r.nth == Some(0) || r.every == Some(0) {
                return Err(format!("rules[{i}]: nth and every count from 1"));
            }
            if let Some(p) = r.probability {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("rules[{i}].probability {p} is not between 0 and 1"));
                }
            }
            match &r.fault {
                Fault::Status { status, .. } if !(400..=599).contains(status) => {
                    return Err(format!(
                        "rules[{i}].fault.status {status} is not an error status (400-599)"
                    ))
                }
                Fault::Status {
                    retry_after: Some(_),
                    retry_after_http_date_secs: Some(_),
                    ..
                } => {
                    return Err(format!(
                        "rules[{i}].fault: give retry_after or retry_after_http_date_secs, not both"
                    ))
                }
                Fault::SyncStateLost {
                    status: Some(s), ..
                } if !(400..=599).contains(s) => {
                    return Err(format!(
                        "rules[{i}].fault.status {s} is not an error status (400-599)"
                    ))
                }
                Fault::DownloadUrlExpired { status } if !matches!(status, 401 | 403) => {
                    return Err(format!(
                        "rules[{i}].fault.status {status}: an expired download URL answers 401 or 403"
                    ))
                }
                _ => {}
            }
        }
        if let Some(o) = &self.throttling.outlook {
            if o.concurrent_requests == 0
                || o.requests_per_window == 0
                || o.window_secs == 0
                || o.upload_bytes_per_window == 0
                || o.upload_window_secs == 0
            {
                return Err("throttling.outlook: limits must be at least 1".into());
            }
        }
        if let Some(d) = &self.throttling.onedrive {
            if d.resource_units_per_day == 0 || d.day_window_secs == 0 {
                return Err(
                    "throttling.onedrive: resource_units_per_day and day_window_secs must be at least 1"
                        .into(),
                );
            }
            if d.resource_units_per_minute == 0 {
                return Err(
                    "throttling.onedrive.resource_units_per_minute must be at least 1".into(),
                );
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Run-time state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct RuleCounter {
    matched: u64,
    injected: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct ThrottleCounters {
    outlook_concurrency: u64,
    outlook_rate: u64,
    /// Outlook requests refused by the upload-bytes budget.
    outlook_upload: u64,
    /// Request-body bytes the upload budget admitted (all mailboxes).
    outlook_upload_bytes: u64,
    onedrive: u64,
    /// OneDrive requests refused by the 24-hour budget.
    onedrive_daily: u64,
    /// Outlook requests admitted by the model (all mailboxes).
    outlook_admitted: u64,
    /// The most Outlook requests one mailbox ever had in flight at once.
    outlook_peak_in_flight: u32,
    /// OneDrive requests admitted by the model, and the resource units they cost.
    onedrive_admitted: u64,
    onedrive_resource_units: u64,
}

/// What the throttling model saw of one mailbox.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct MailboxCounters {
    peak_in_flight: u32,
    admitted: u64,
    throttled: u64,
}

/// The configured faults, their counters, and what the throttling model remembers.
#[derive(Debug)]
pub(crate) struct FaultState {
    config: FaultsConfig,
    counters: Vec<RuleCounter>,
    rngs: Vec<StdRng>,
    /// `uti` of access tokens a `token_expired` fault expired.
    expired_tokens: HashSet<String>,
    /// Download URL tokens a `download_url_expired` fault expired.
    expired_downloads: HashSet<String>,
    outlook_in_flight: HashMap<String, u32>,
    /// Per mailbox (`app/mailbox`): the most requests in flight at once, requests admitted,
    /// requests throttled.
    outlook_mailboxes: BTreeMap<String, MailboxCounters>,
    outlook_recent: HashMap<String, VecDeque<Instant>>,
    /// Per `app/mailbox`: (when, bytes) of request bodies in the upload window.
    outlook_uploads: HashMap<String, VecDeque<(Instant, u64)>>,
    onedrive_recent: HashMap<String, VecDeque<(Instant, u32)>>,
    /// Per app: (second, resource units) in the 24-hour window.
    onedrive_daily: HashMap<String, VecDeque<(Instant, u64)>>,
    throttled: ThrottleCounters,
}

impl FaultState {
    pub(crate) fn new(config: FaultsConfig) -> Self {
        let mut s = FaultState {
            config: FaultsConfig::default(),
            counters: Vec::new(),
            rngs: Vec::new(),
            expired_tokens: HashSet::new(),
            expired_downloads: HashSet::new(),
            outlook_in_flight: HashMap::new(),
            outlook_mailboxes: BTreeMap::new(),
            outlook_recent: HashMap::new(),
            outlook_uploads: HashMap::new(),
            onedrive_recent: HashMap::new(),
            onedrive_daily: HashMap::new(),
            throttled: ThrottleCounters::default(),
        };
        s.configure(config);
        s
    }

    /// Replaces the configuration; counters and RNGs start again. Expired tokens and download
    /// URLs stay expired.
    pub(crate) fn configure(&mut self, config: FaultsConfig) {
        self.counters = vec![RuleCounter::default(); config.rules.len()];
        self.rngs = (0..config.rules.len())
            .map(|i| StdRng::seed_from_u64(config.seed.wrapping_add(i as u64)))
            .collect();
        self.throttled = ThrottleCounters::default();
        self.outlook_mailboxes.clear();
        self.outlook_recent.clear();
        self.outlook_uploads.clear();
        self.onedrive_recent.clear();
        self.onedrive_daily.clear();
        self.config = config;
    }

    pub(crate) fn config(&self) -> &FaultsConfig {
        &self.config
    }

    /// The configuration with each rule's `matched`/`injected` counters, for
    /// `GET /_sim/admin/faults`.
    pub(crate) fn report(&self) -> Value {
        let rules: Vec<Value> = self
            .config
            .rules
            .iter()
            .zip(&self.counters)
            .map(|(r, c)| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                v["matched"] = json!(c.matched);
                v["injected"] = json!(c.injected);
                v
            })
            .collect();
        json!({
            "seed": self.config.seed,
            "latency_ms": self.config.latency_ms,
            "rules": rules,
            "throttling": self.config.throttling,
            "throttled": self.throttled,
            "outlook_mailboxes": self.outlook_mailboxes,
        })
    }

    /// The first rule that fires for this request. Every matching rule counts the request.
    fn fire(&mut self, req: &ReqInfo) -> Option<(usize, Fault)> {
        let mut chosen = None;
        for (i, rule) in self.config.rules.iter().enumerate() {
            if !rule_matches(rule, req) {
                continue;
            }
            let c = &mut self.counters[i];
            c.matched += 1;
            if chosen.is_some() || rule.max_count.is_some_and(|m| c.injected >= m) {
                continue;
            }
            let fire = if let Some(n) = rule.nth {
                c.matched == n
            } else if let Some(e) = rule.every {
                c.matched.is_multiple_of(e)
            } else if let Some(p) = rule.probability {
                self.rngs[i].random_bool(p)
            } else {
                true
            };
            if fire {
                c.injected += 1;
                chosen = Some((i, rule.fault.clone()));
            }
        }
        chosen
    }
}

/// What the middleware knows about a request.
struct ReqInfo {
    method: String,
    /// Path only, as sent.
    path: String,
    /// Path and query, as sent and percent-decoded.
    path_query: String,
    decoded: String,
    has_bearer: bool,
    /// Length of the request body, when the request has one (`Content-Length`, or counted).
    body_bytes: u64,
}

impl ReqInfo {
    fn is(&self, kind: RouteKind) -> bool {
        let p = self.path.to_ascii_lowercase();
        let graph = p.starts_with("/v1.0/") || p == "/v1.0";
        let value = graph && (p.ends_with("/$value") || p.ends_with("/%24value"));
        let content = graph && p.ends_with("/content");
        match kind {
            RouteKind::Token => p.ends_with("/oauth2/v2.0/token"),
            RouteKind::Graph => graph,
            RouteKind::GraphJson => graph && !value && !content,
            RouteKind::Delta => graph && is_delta_path(&p),
            RouteKind::Value => value,
            RouteKind::Content => content,
            RouteKind::Download => p.starts_with("/_download/"),
            RouteKind::Upload => p.starts_with("/_upload/"),
        }
    }

    /// A delta request that carries state (`$deltatoken`, `$skiptoken`, drive `token`).
    fn has_delta_token(&self) -> bool {
        self.is(RouteKind::Delta) && self.decoded.to_ascii_lowercase().contains("token=")
    }

    fn is_drive(&self) -> bool {
        let p = self.path.to_ascii_lowercase();
        p.starts_with("/v1.0/drives/") || p.contains("/drive/") || p.ends_with("/drive")
    }
}

fn is_delta_path(lower_path: &str) -> bool {
    lower_path
        .split('/')
        .any(|s| s == "delta" || s.starts_with("delta(") || s.starts_with("microsoft.graph.delta"))
}

fn rule_matches(rule: &FaultRule, req: &ReqInfo) -> bool {
    if rule
        .method
        .as_deref()
        .is_some_and(|m| !m.eq_ignore_ascii_case(&req.method))
    {
        return false;
    }
    if let Some(s) = rule.path_contains.as_deref() {
        if !req.path_query.contains(s) && !req.decoded.contains(s) {
            return false;
        }
    }
    if rule.route.is_some_and(|k| !req.is(k)) {
        return false;
    }
    match rule.fault {
        Fault::SyncStateLost { .. } => req.has_delta_token(),
        Fault::DownloadUrlExpired { .. } => req.is(RouteKind::Download),
        Fault::TokenExpired => req.has_bearer,
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// The middleware
// ---------------------------------------------------------------------------------------------

/// Set on a response that a fault or the throttling model produced or changed; the request
/// log records it.
#[derive(Debug, Clone)]
pub(crate) struct FaultLabel {
    pub fault: String,
    pub rule: Option<usize>,
}

fn labelled(mut resp: Response, fault: &str, rule: Option<usize>) -> Response {
    resp.extensions_mut().insert(FaultLabel {
        fault: fault.to_string(),
        rule,
    });
    resp
}

/// Decrements the Outlook in-flight count of a mailbox when the request is done.
struct InFlight {
    sim: Arc<Sim>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.sim.faults();
        if let Some(n) = st.outlook_in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.outlook_in_flight.remove(&self.key);
            }
        }
    }
}

enum Throttle {
    Pass {
        guard: Option<InFlight>,
        rate_limit_headers: Option<(u32, u32, u64)>,
    },
    Reject(Response, &'static str),
}

/// Every request except `/_sim/…`: expired credentials, fault rules, latency, throttling.
pub(crate) async fn middleware(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    let path_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let ctx = req
        .extensions()
        .get::<Ctx>()
        .cloned()
        .unwrap_or_else(|| Ctx {
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: uuid::Uuid::new_v4().to_string(),
            date: chrono::Utc::now(),
        });
    let (req, body_bytes) = body_length(&sim, req).await;
    let bearer = token::bearer(req.headers()).map(str::to_string);
    let claims = bearer
        .as_deref()
        .and_then(|t| sim.keys.verify(t, None).ok());
    let info = ReqInfo {
        method: req.method().to_string(),
        decoded: crate::wire::percent_decode(&path_query),
        path,
        path_query,
        has_bearer: bearer.is_some(),
        body_bytes,
    };

    let (fired, latency) = {
        let mut st = sim.faults();
        if claims
            .as_ref()
            .is_some_and(|c| st.expired_tokens.contains(&c.uti))
        {
            drop(st);
            let resp = crate::graph::unauthorized(&ctx, TokenRejection::Expired);
            return labelled(resp, "token_expired", None);
        }
        if let Some(t) = info.path.strip_prefix("/_download/") {
            if st.expired_downloads.contains(t) {
                drop(st);
                return labelled(download_expired(&ctx, 401), "download_url_expired", None);
            }
        }
        let fired = st.fire(&info);
        (fired, Duration::from_millis(st.config.latency_ms))
    };
    let mut latency = latency;
    if let Some((_, Fault::Latency { ms })) = &fired {
        latency += Duration::from_millis(*ms);
    }

    // Faults that replace the answer.
    if let Some((rule, fault)) = &fired {
        let rule = Some(*rule);
        let replaced = match fault {
            Fault::Status {
                status,
                code,
                message,
                retry_after,
                retry_after_http_date_secs,
            } => {
                let retry_after = retry_after.clone().or_else(|| {
                    retry_after_http_date_secs.map(|s| {
                        (chrono::Utc::now() + chrono::Duration::seconds(s as i64))
                            .format("%a, %d %b %Y %H:%M:%S GMT")
                            .to_string()
                    })
                });
                Some(status_response(
                    &ctx,
                    *status,
                    code.as_deref(),
                    message.as_deref(),
                    retry_after.as_deref(),
                ))
            }
            Fault::TokenExpired => {
                if let Some(c) = &claims {
                    sim.faults().expired_tokens.insert(c.uti.clone());
                }
                Some(crate::graph::unauthorized(&ctx, TokenRejection::Expired))
            }
            Fault::SyncStateLost { status, code } => {
                Some(sync_state_lost(&sim, &ctx, &info, *status, code.as_deref()))
            }
            Fault::DownloadUrlExpired { status } => {
                if let Some(t) = info.path.strip_prefix("/_download/") {
                    sim.faults().expired_downloads.insert(t.to_string());
                }
                Some(download_expired(&ctx, *status))
            }
            Fault::Reset { .. } | Fault::Truncate { .. } | Fault::Latency { .. } => None,
        };
        if let Some(resp) = replaced {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            return labelled(resp, fault.name(), rule);
        }
    }

    let throttle = throttle(&sim, &ctx, &info, claims.as_ref().map(|c| c.appid.as_str()));
    let (guard, rate_limit_headers) = match throttle {
        Throttle::Reject(resp, name) => return labelled(resp, name, None),
        Throttle::Pass {
            guard,
            rate_limit_headers,
        } => (guard, rate_limit_headers),
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut resp = next.run(req).await;
    drop(guard);
    if let Some((limit, remaining, reset)) = rate_limit_headers {
        let h = resp.headers_mut();
        for (name, v) in [
            ("ratelimit-limit", limit.to_string()),
            ("ratelimit-remaining", remaining.to_string()),
            ("ratelimit-reset", reset.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name, v);
            }
        }
    }
    match fired {
        Some((rule, Fault::Reset { after_bytes })) => {
            if body_len(&resp).is_some_and(|len| len <= after_bytes) {
                // Nothing to cut: the answer goes out whole and the rule is not spent.
                if let Some(c) = sim.faults().counters.get_mut(rule) {
                    c.injected = c.injected.saturating_sub(1);
                }
                return resp;
            }
            labelled(reset_after(resp, after_bytes), "reset", Some(rule))
        }
        Some((rule, Fault::Truncate { after_bytes })) => {
            labelled(truncate(resp, after_bytes).await, "truncate", Some(rule))
        }
        Some((rule, f @ Fault::Latency { .. })) => labelled(resp, f.name(), Some(rule)),
        _ => resp,
    }
}

/// The request and the length of its body: `Content-Length` or the body's exact size; a
/// body of unknown length (chunked) is read into memory and counted when the Outlook model is
/// on and the request is a write, since the upload budget needs its size before it runs.
async fn body_length(sim: &Sim, req: Request) -> (Request, u64) {
    let known = req.body().size_hint().exact().or_else(|| {
        req.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    if let Some(n) = known {
        return (req, n);
    }
    let write = ["POST", "PUT", "PATCH"]
        .iter()
        .any(|m| req.method().as_str().eq_ignore_ascii_case(m));
    if !write || sim.faults().config.throttling.outlook.is_none() {
        return (req, 0);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let n = bytes.len() as u64;
    (Request::from_parts(parts, Body::from(bytes)), n)
}

fn default_error(status: u16) -> (&'static str, &'static str) {
    match status {
        429 => (
            "TooManyRequests",
            "Too many requests. Retry after the time given in the Retry-After header.",
        ),
        503 => (
            "serviceNotAvailable",
            "The service is temporarily unavailable. Retry after the time given in the Retry-After header.",
        ),
        504 => ("gatewayTimeout", "The gateway timed out."),
        509 => ("bandwidthLimitExceeded", "Bandwidth limit exceeded."),
        500 => ("generalException", "An unspecified error has occurred."),
        _ => ("UnknownError", "An error was injected by the tenant simulator."),
    }
}

fn status_response(
    ctx: &Ctx,
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
    retry_after: Option<&str>,
) -> Response {
    let (dcode, dmessage) = default_error(status);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = GraphError::new(
        status,
        code.unwrap_or(dcode),
        message.unwrap_or(dmessage).to_string(),
    )
    .into_response(ctx);
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn download_expired(ctx: &Ctx, status: u16) -> Response {
    let (status, code) = if status == 403 {
        (StatusCode::FORBIDDEN, "accessDenied")
    } else {
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    };
    GraphError::new(
        status,
        code,
        "The download URL has expired; request the item's content again for a new one.",
    )
    .into_response(ctx)
}

/// 410 with Microsoft's body and a `Location` to restart the enumeration from: the delta URL
/// without its state parameters.
fn sync_state_lost(
    sim: &Sim,
    ctx: &Ctx,
    info: &ReqInfo,
    status: Option<u16>,
    code: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(status.unwrap_or(410)).unwrap_or(StatusCode::GONE);
    let drive = info.is_drive();
    let mut err = if drive {
        GraphError::new(
            status,
            code.unwrap_or("resyncRequired"),
            "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about.",
        )
        .with_inner("resyncChangesApplyDifferences")
    } else {
        GraphError::new(
            status,
            code.unwrap_or("SyncStateNotFound"),
            "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
        )
    };
    if code.is_some() {
        err.inner_code = None;
    }
    let mut resp = err.into_response(ctx);
    let mut location = restart_url(&sim.base_url, &info.path_query);
    // A calendarView round needs its window again; the token carries it.
    if info.path.to_ascii_lowercase().contains("/calendarview/") && !location.contains('?') {
        let window = crate::wire::parse_query(info.path_query.split_once('?').map(|(_, q)| q))
            .into_iter()
            .find(|(k, _)| {
                k.trim_start_matches('$')
                    .to_ascii_lowercase()
                    .ends_with("token")
            })
            .and_then(|(_, t)| crate::delta::DeltaState::decode(&t))
            .and_then(|st| st.window);
        if let Some((start, end)) = window {
            location = format!(
                "{location}?startDateTime={}&endDateTime={}",
                crate::wire::enc(&start),
                crate::wire::enc(&end)
            );
        }
    }
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `base + path` of a delta request with `delta(token='…')` reduced to `delta` and the
/// `$deltatoken`/`$skiptoken`/`token` parameters removed.
fn restart_url(base: &str, path_query: &str) -> String {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let path = match path.to_ascii_lowercase().find("delta(") {
        Some(i) => format!("{}delta", &path[..i]),
        None => path.to_string(),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            let k = k.trim_start_matches("%24").trim_start_matches('$');
            !matches!(k, "deltatoken" | "skiptoken" | "token")
        })
        .collect();
    if kept.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{}", kept.join("&"))
    }
}

fn body_len(resp: &Response) -> Option<u64> {
    resp.body().size_hint().exact().or_else(|| {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    })
}

/// The answer with its connection aborted after `after` body bytes.
fn reset_after(resp: Response, after: u64) -> Response {
    let len = body_len(&resp);
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = len {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    enum St {
        Sending(u64),
        Cut,
        Done,
    }
    let stream = body.into_data_stream();
    let cut = futures::stream::unfold((stream, St::Sending(0)), move |(mut s, st)| async move {
        match st {
            St::Done => None,
            St::Cut => {
                // Let the bytes sent so far reach the client before the connection drops.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset by the tenant simulator (fault injection)",
                    )),
                    (s, St::Done),
                ))
            }
            St::Sending(sent) => {
                if sent >= after {
                    return Some((Ok(Bytes::new()), (s, St::Cut)));
                }
                match s.next().await {
                    Some(Ok(chunk)) => {
                        let left = after - sent;
                        if (chunk.len() as u64) < left {
                            let n = chunk.len() as u64;
                            Some((Ok(chunk), (s, St::Sending(sent + n))))
                        } else {
                            Some((Ok(chunk.slice(..left as usize)), (s, St::Cut)))
                        }
                    }
                    Some(Err(e)) => Some((Err(std::io::Error::other(e)), (s, St::Done))),
                    None => None,
                }
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(cut))
}

/// The answer with its body cut to `after` bytes (default half) and a matching length.
async fn truncate(resp: Response, after: Option<u64>) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let keep = after
        .map(|a| a.min(bytes.len() as u64) as usize)
        .unwrap_or(bytes.len() / 2);
    let cut = bytes.slice(..keep);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(cut.len() as u64));
    Response::from_parts(parts, Body::from(cut))
}

// ---------------------------------------------------------------------------------------------
// Throttling model
// ---------------------------------------------------------------------------------------------

const OUTLOOK_SEGMENTS: &[&str] = &[
    "messages",
    "mailfolders",
    "contacts",
    "contactfolders",
    "calendar",
    "calendars",
    "calendarview",
    "events",
    "mailboxsettings",
];

/// The mailbox an Outlook request addresses (`/v1.0/users/{id}/messages…`), as a user id.
fn outlook_mailbox(sim: &Sim, info: &ReqInfo) -> Option<String> {
    let rest = info.path.strip_prefix("/v1.0/users/")?;
    let mut segs = rest.split('/');
    let user = crate::wire::percent_decode(segs.next()?);
    let resource = segs.next()?.to_ascii_lowercase();
    let resource = resource.split('(').next().unwrap_or("");
    if !OUTLOOK_SEGMENTS.contains(&resource) {
        return None;
    }
    let state = sim.state();
    Some(
        state
            .user_index(&user)
            .map(|i| state.users[i].id.clone())
            .unwrap_or_else(|| user.to_ascii_lowercase()),
    )
}

/// Resource units of a OneDrive request, or `None` for requests that are not OneDrive's.
fn resource_units(info: &ReqInfo) -> Option<u32> {
    if !info.is(RouteKind::Graph) || !info.is_drive() {
        return None;
    }
    let lower = info.decoded.to_ascii_lowercase();
    if lower.contains("permissions") {
        return Some(5);
    }
    if info.is(RouteKind::Delta) {
        return Some(if info.has_delta_token() { 1 } else { 2 });
    }
    if !info.method.eq_ignore_ascii_case("GET") || info.path.ends_with("/children") {
        return Some(2);
    }
    Some(1)
}

/// Whether a request uploads a body that counts against Outlook's upload budget.
fn is_upload(info: &ReqInfo) -> bool {
    ["POST", "PUT", "PATCH"]
        .iter()
        .any(|m| info.method.eq_ignore_ascii_case(m))
        && info.body_bytes > 0
}

/// The app and mailbox (user id) of a `PUT` to an attachment upload session's `uploadUrl`
/// (`/_attach/{id}`, which carries no token).
fn attachment_upload_owner(sim: &Sim, info: &ReqInfo) -> Option<(String, String)> {
    let id = info.path.strip_prefix("/_attach/")?;
    if !info.method.eq_ignore_ascii_case("PUT") {
        return None;
    }
    let state = sim.state();
    let session = state.attachment_uploads.get(id)?;
    let user = state.users.get(session.user_index)?.id.clone();
    Some((session.app_id.clone(), user))
}

/// Drops what left a sliding window of `(when, amount)` and says how long until `cost` more
/// fit in `limit` (`None`: they fit now). A cost larger than the whole budget fits an empty
/// window.
fn window_wait(
    recent: &mut VecDeque<(Instant, u64)>,
    now: Instant,
    window: Duration,
    limit: u64,
    cost: u64,
) -> Option<Duration> {
    while recent
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) >= window)
    {
        recent.pop_front();
    }
    let used: u64 = recent.iter().map(|(_, b)| *b).sum();
    if used + cost <= limit || recent.is_empty() {
        return None;
    }
    let left_at = |t: &Instant| window.saturating_sub(now.duration_since(*t));
    let mut freed = 0;
    for (t, b) in recent.iter() {
        freed += b;
        if used - freed + cost <= limit {
            return Some(left_at(t));
        }
    }
    Some(recent.back().map(|(t, _)| left_at(t)).unwrap_or(window))
}

/// Records `cost` at `now`, in the last entry when it is less than `bucket` old (so a long
/// window holds one entry per bucket, not one per request).
fn window_record(recent: &mut VecDeque<(Instant, u64)>, now: Instant, cost: u64, bucket: Duration) {
    match recent.back_mut() {
        Some((t, n)) if now.duration_since(*t) < bucket => *n += cost,
        _ => recent.push_back((now, cost)),
    }
}

/// Admits `bytes` into a sliding upload window, or says how long until they fit.
fn admit_upload(
    recent: &mut VecDeque<(Instant, u64)>,
    now: Instant,
    window: Duration,
    limit: u64,
    bytes: u64,
) -> Result<(), Duration> {
    if let Some(wait) = window_wait(recent, now, window, limit, bytes) {
        return Err(wait);
    }
    window_record(recent, now, bytes, Duration::ZERO);
    Ok(())
}

/// Whole seconds, rounded up, at least 1: a `Retry-After` value.
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Spends a request's body against the upload budget of `key` (`app/mailbox`); the 429 when
/// it does not fit.
fn outlook_upload(
    st: &mut FaultState,
    ctx: &Ctx,
    o: &OutlookLimits,
    key: &str,
    bytes: u64,
) -> Option<Throttle> {
    let recent = st.outlook_uploads.entry(key.to_string()).or_default();
    let window = Duration::from_secs(o.upload_window_secs);
    match admit_upload(
        recent,
        Instant::now(),
        window,
        o.upload_bytes_per_window,
        bytes,
    ) {
        Ok(()) => {
            st.throttled.outlook_upload_bytes += bytes;
            None
        }
        Err(wait) => {
            st.throttled.outlook_upload += 1;
            st.outlook_mailboxes
                .entry(key.to_string())
                .or_default()
                .throttled += 1;
            Some(Throttle::Reject(
                outlook_throttled(ctx, "UploadSize", &retry_secs(wait).to_string()),
                "throttle_outlook_upload",
            ))
        }
    }
}

fn throttle(sim: &Arc<Sim>, ctx: &Ctx, info: &ReqInfo, app: Option<&str>) -> Throttle {
    let pass = Throttle::Pass {
        guard: None,
        rate_limit_headers: None,
    };
    let limits = sim.faults().config.throttling.clone();
    // Attachment upload-session PUTs carry no token: they count against the upload budget
    // of the app that opened the session, and nothing else.
    if let Some(o) = &limits.outlook {
        if app.is_none() && is_upload(info) {
            if let Some((app, mailbox)) = attachment_upload_owner(sim, info) {
                let key = format!("{app}/{mailbox}");
                let mut st = sim.faults();
                if let Some(reject) = outlook_upload(&mut st, ctx, o, &key, info.body_bytes) {
                    return reject;
                }
                return pass;
            }
        }
    }
    let Some(app) = app else { return pass };
    // A request is Outlook's (a mailbox) or OneDrive's (resource units), never both: each
    // model applies to its own requests, both at once when both are configured.
    let mailbox = limits
        .outlook
        .as_ref()
        .and_then(|_| outlook_mailbox(sim, info));
    if let (Some(o), Some(mailbox)) = (&limits.outlook, mailbox) {
        let key = format!("{app}/{mailbox}");
        let now = Instant::now();
        let window = Duration::from_secs(o.window_secs);
        let mut st = sim.faults();
        if st.outlook_in_flight.get(&key).copied().unwrap_or(0) >= o.concurrent_requests {
            st.throttled.outlook_concurrency += 1;
            st.outlook_mailboxes
                .entry(key.clone())
                .or_default()
                .throttled += 1;
            drop(st);
            return Throttle::Reject(
                outlook_throttled(ctx, "MailboxConcurrency", &o.concurrency_retry_after),
                "throttle_outlook_concurrency",
            );
        }
        let recent = st.outlook_recent.entry(key.clone()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            recent.pop_front();
        }
        if recent.len() as u64 >= u64::from(o.requests_per_window) {
            let wait = recent
                .front()
                .map(|t| window.saturating_sub(now.duration_since(*t)))
                .unwrap_or(window);
            st.throttled.outlook_rate += 1;
            st.outlook_mailboxes
                .entry(key.clone())
                .or_default()
                .throttled += 1;
            drop(st);
            return Throttle::Reject(
                outlook_throttled(ctx, "RequestRate", &retry_secs(wait).to_string()),
                "throttle_outlook_rate",
            );
        }
        if is_upload(info) {
            if let Some(reject) = outlook_upload(&mut st, ctx, o, &key, info.body_bytes) {
                return reject;
            }
        }
        st.outlook_recent
            .entry(key.clone())
            .or_default()
            .push_back(now);
        let in_flight = st.outlook_in_flight.entry(key.clone()).or_insert(0);
        *in_flight += 1;
        let in_flight = *in_flight;
        st.throttled.outlook_admitted += 1;
        st.throttled.outlook_peak_in_flight = st.throttled.outlook_peak_in_flight.max(in_flight);
        let m = st.outlook_mailboxes.entry(key.clone()).or_default();
        m.admitted += 1;
        m.peak_in_flight = m.peak_in_flight.max(in_flight);
        drop(st);
        return Throttle::Pass {
            guard: Some(InFlight {
                sim: sim.clone(),
                key,
            }),
            rate_limit_headers: None,
        };
    }
    if let Some(d) = &limits.onedrive {
        let Some(cost) = resource_units(info) else {
            return pass;
        };
        let window = Duration::from_secs(60);
        let now = Instant::now();
        let mut st = sim.faults();
        // The 24-hour budget first: when both are spent, its wait is the one that matters.
        let daily = st.onedrive_daily.entry(app.to_string()).or_default();
        let day = Duration::from_secs(d.day_window_secs);
        let per_day = u64::from(d.resource_units_per_day);
        if let Some(wait) = window_wait(daily, now, day, per_day, u64::from(cost)) {
            st.throttled.onedrive_daily += 1;
            drop(st);
            let resp = status_response(
                ctx,
                429,
                Some("activityLimitReached"),
                Some("The request has been throttled"),
                Some(&retry_secs(wait).to_string()),
            );
            return Throttle::Reject(resp, "throttle_onedrive_daily");
        }
        let recent = st.onedrive_recent.entry(app.to_string()).or_default();
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            recent.pop_front();
        }
        let used: u32 = recent.iter().map(|(_, c)| *c).sum();
        let limit = d.resource_units_per_minute;
        let reset_in = |recent: &VecDeque<(Instant, u32)>| {
            recent
                .front()
                .map(|(t, _)| window.saturating_sub(now.duration_since(*t)))
                .unwrap_or(Duration::ZERO)
        };
        if used + cost > limit {
            // Wait until enough units leave the window.
            let mut freed = 0;
            let mut wait = window;
            for (t, c) in recent.iter() {
                freed += c;
                if used - freed + cost <= limit {
                    wait = window.saturating_sub(now.duration_since(*t));
                    break;
                }
            }
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            let reset = reset_in(recent).as_secs().max(1);
            st.throttled.onedrive += 1;
            drop(st);
            let mut resp = status_response(
                ctx,
                429,
                Some("activityLimitReached"),
                Some("The request has been throttled"),
                Some(&secs.to_string()),
            );
            let h = resp.headers_mut();
            h.insert("ratelimit-limit", HeaderValue::from(limit));
            h.insert(
                "ratelimit-remaining",
                HeaderValue::from(limit.saturating_sub(used)),
            );
            h.insert("ratelimit-reset", HeaderValue::from(reset));
            return Throttle::Reject(resp, "throttle_onedrive");
        }
        recent.push_back((now, cost));
        let used = used + cost;
        // Microsoft sends the RateLimit headers once 80 % of the budget is used.
        let headers = (u64::from(used) * 5 >= u64::from(limit) * 4)
            .then(|| (limit, limit - used, reset_in(recent).as_secs().max(1)));
        if let Some(daily) = st.onedrive_daily.get_mut(app) {
            window_record(daily, now, u64::from(cost), Duration::from_secs(1));
        }
        st.throttled.onedrive_admitted += 1;
        st.throttled.onedrive_resource_units += u64::from(cost);
        return Throttle::Pass {
            guard: None,
            rate_limit_headers: headers,
        };
    }
    pass
}

fn outlook_throttled(ctx: &Ctx, limit: &str, retry_after: &str) -> Response {
    let mut resp = status_response(
        ctx,
        429,
        Some("ApplicationThrottled"),
        Some(&format!("Application is over its {limit} limit.")),
        Some(retry_after),
    );
    if let Ok(v) = HeaderValue::from_str(limit) {
        resp.headers_mut().insert("ratelimit-exceeded", v);
    }
    resp.headers_mut()
        .insert("ratelimit-scope", HeaderValue::from_static("Mailbox"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, pq: &str) -> ReqInfo {
        ReqInfo {
            method: method.into(),
            path: pq.split('?').next().unwrap().into(),
            path_query: pq.into(),
            decoded: crate::wire::percent_decode(pq),
            has_bearer: true,
            body_bytes: 0,
        }
    }

    #[test]
    fn route_kinds() {
        let d = info(
            "GET",
            "/v1.0/users/a/mailFolders/x/messages/delta?$deltatoken=abc",
        );
        assert!(d.is(RouteKind::Delta) && d.is(RouteKind::GraphJson) && d.has_delta_token());
        let first = info("GET", "/v1.0/drives/b!1/root/delta");
        assert!(first.is(RouteKind::Delta) && !first.has_delta_token() && first.is_drive());
        assert!(info("GET", "/v1.0/drives/b/root/delta(token='x')").has_delta_token());
        let v = info("GET", "/v1.0/users/a/messages/AAMk%3D/$value");
        assert!(v.is(RouteKind::Value) && !v.is(RouteKind::GraphJson));
        assert!(info("GET", "/v1.0/drives/d/items/i/content").is(RouteKind::Content));
        assert!(info("GET", "/_download/tok").is(RouteKind::Download));
        assert!(info("PUT", "/_upload/id").is(RouteKind::Upload));
        assert!(info("POST", "/t/oauth2/v2.0/token").is(RouteKind::Token));
    }

    #[test]
    fn when_nth_every_probability_and_max_count() {
        let rule = |nth, every, probability, max_count| FaultRule {
            method: None,
            path_contains: Some("/x".into()),
            route: None,
            fault: Fault::Latency { ms: 0 },
            nth,
            every,
            probability,
            max_count,
        };
        let run = |r: FaultRule, seed: u64| {
            let mut st = FaultState::new(FaultsConfig {
                seed,
                rules: vec![r],
                ..Default::default()
            });
            (1..=20)
                .filter(|_| st.fire(&info("GET", "/x")).is_some())
                .collect::<Vec<_>>()
        };
        let seq = |r: FaultRule| {
            let mut st = FaultState::new(FaultsConfig {
                rules: vec![r],
                ..Default::default()
            });
            (1..=20u32)
                .filter(|_| st.fire(&info("GET", "/x")).is_some())
                .count()
        };
        assert_eq!(seq(rule(Some(3), None, None, None)), 1);
        assert_eq!(seq(rule(None, Some(5), None, None)), 4);
        assert_eq!(seq(rule(None, Some(5), None, Some(2))), 2);
        assert_eq!(seq(rule(None, None, None, Some(3))), 3);
        let p = |seed| run(rule(None, None, Some(0.5), None), seed);
        assert_eq!(p(7), p(7), "same seed, same faults");
        let n = p(7).len();
        assert!((3..=17).contains(&n), "{n} of 20");
        assert_eq!(seq(rule(None, None, Some(0.0), None)), 0);
        let mut st = FaultState::new(FaultsConfig {
            rules: vec![rule(Some(1), None, None, None)],
            ..Default::default()
        });
        assert!(st.fire(&info("GET", "/y")).is_none(), "path does not match");
        assert_eq!(st.counters[0].matched, 0);
    }

    #[test]
    fn fault_specific_applicability() {
        let mut r = FaultRule {
            method: None,
            path_contains: None,
            route: None,
            fault: Fault::SyncStateLost {
                status: None,
                code: None,
            },
            nth: None,
            every: None,
            probability: None,
            max_count: None,
        };
        assert!(!rule_matches(&r, &info("GET", "/v1.0/drives/d/root/delta")));
        assert!(rule_matches(
            &r,
            &info("GET", "/v1.0/drives/d/root/delta?token=t")
        ));
        r.fault = Fault::DownloadUrlExpired { status: 401 };
        assert!(!rule_matches(
            &r,
            &info("GET", "/v1.0/drives/d/items/i/content")
        ));
        assert!(rule_matches(&r, &info("GET", "/_download/t")));
    }

    #[test]
    fn restart_urls_drop_state_only() {
        assert_eq!(
            restart_url("http://h", "/v1.0/drives/d/root/delta?token=abc"),
            "http://h/v1.0/drives/d/root/delta"
        );
        assert_eq!(
            restart_url("http://h", "/v1.0/drives/d/root/delta(token='abc')"),
            "http://h/v1.0/drives/d/root/delta"
        );
        assert_eq!(
            restart_url(
                "http://h",
                "/v1.0/users/u/calendarView/delta?startDateTime=1&endDateTime=2&%24deltatoken=x"
            ),
            "http://h/v1.0/users/u/calendarView/delta?startDateTime=1&endDateTime=2"
        );
    }

    #[test]
    fn upload_window_admits_until_full_then_says_when_enough_bytes_leave() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut w = VecDeque::new();
        assert_eq!(admit_upload(&mut w, t0, window, 100, 60), Ok(()));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(admit_upload(&mut w, t1, window, 100, 30), Ok(()));
        // 60 + 30 + 20 > 100: once the 60 leave (at t0 + 10 s) the 20 fit.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(
            admit_upload(&mut w, t2, window, 100, 20),
            Err(Duration::from_secs(8))
        );
        assert_eq!(
            admit_upload(&mut w, t2, window, 100, 10),
            Ok(()),
            "exactly full"
        );
        // After the window the bytes are gone.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(admit_upload(&mut w, later, window, 100, 55), Ok(()));
        // A body over the whole budget waits for an empty window, then goes through.
        let mut w = VecDeque::new();
        assert_eq!(admit_upload(&mut w, t0, window, 100, 1), Ok(()));
        assert_eq!(
            admit_upload(&mut w, t1, window, 100, 150),
            Err(Duration::from_secs(9))
        );
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(admit_upload(&mut w, t10, window, 100, 150), Ok(()));
        assert_eq!(retry_secs(Duration::from_millis(8001)), 9);
        // A coarse window keeps one entry per bucket.
        let mut w = VecDeque::new();
        window_record(&mut w, t0, 1, Duration::from_secs(1));
        window_record(
            &mut w,
            t0 + Duration::from_millis(999),
            2,
            Duration::from_secs(1),
        );
        window_record(&mut w, t1, 4, Duration::from_secs(1));
        assert_eq!(w, VecDeque::from([(t0, 3), (t1, 4)]));
        assert_eq!(retry_secs(Duration::ZERO), 1);
    }

    #[test]
    fn config_is_strict_and_validated() {
        let ok: FaultsConfig = toml::from_str(
            r#"
seed = 3
latency_ms = 5
[[rules]]
route = "$value"
fault = { kind = "status", status = 503, retry_after = "0.2" }
every = 2
[[rules]]
route = "download"
fault = { kind = "download_url_expired" }
[throttling.outlook]
[throttling.onedrive]
resource_units_per_minute = 10
"#,
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.rules[0].route, Some(RouteKind::Value));
        assert_eq!(ok.rules[1].fault, Fault::DownloadUrlExpired { status: 401 });
        assert_eq!(ok.throttling.outlook, Some(OutlookLimits::default()));
        let o = OutlookLimits::default();
        assert_eq!(
            (o.upload_bytes_per_window, o.upload_window_secs),
            (150 * 1024 * 1024, 300),
            "Microsoft: 150 MB per 5 minutes"
        );
        let bad =
            toml::from_str::<FaultsConfig>("[throttling.outlook]\nupload_bytes_per_window = 0\n")
                .unwrap()
                .validate()
                .unwrap_err();
        assert!(bad.contains("throttling.outlook"), "{bad}");
        let d = OneDriveLimits::default();
        assert_eq!(
            (
                d.resource_units_per_minute,
                d.resource_units_per_day,
                d.day_window_secs
            ),
            (1_250, 1_200_000, 86_400),
            "Microsoft: 0-1,000 licences"
        );
        let bad = toml::from_str::<FaultsConfig>("[throttling.onedrive]\nday_window_secs = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(bad.contains("throttling.onedrive"), "{bad}");
        let bad = toml::from_str::<FaultsConfig>(
            "[[rules]]\nfault = { kind = \"reset\", after_bytes = 1, extra = 2 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("extra"), "{bad}");
        let bad = toml::from_str::<FaultsConfig>(
            "[[rules]]\nroute = \"graph\"\nfault = { kind = \"status\", status = 200 }\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(bad.contains("rules[0].fault.status"), "{bad}");
        let bad = toml::from_str::<FaultsConfig>(
            "[[rules]]\nnth = 1\nevery = 2\nfault = { kind = \"token_expired\" }\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(bad.contains("at most one"), "{bad}");
    }
}
