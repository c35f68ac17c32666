//! Admission control in front of the retry layer: Microsoft's per-workload throttling limits,
//! kept on the client side so that m365bk stays inside them instead of finding them by 429s,
//! and fences that pause one workload (a mailbox, the tenant's SharePoint budget, a team)
//! after Microsoft throttled it, without pausing the others.
//!
//! Limits implemented (defaults are Microsoft's published values):
//! - Outlook (mail, contacts, calendar, mailbox settings), per app and mailbox: 4 requests in
//!   flight at once, 10,000 requests per 10 minutes, and 150 MB uploaded (request bodies of
//!   POST, PUT and PATCH, attachment upload-session ranges included) per 5 minutes
//!   (<https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits>).
//! - OneDrive and SharePoint, per app per tenant: resource units (RU) per minute and per
//!   24 hours, by licence count (0–1,000 licences: 1,250 per minute, 1,200,000 per day);
//!   a request costs 1 RU (single item, delta with a token, file download), 2 RU (multi-item
//!   query or delta without a token; create, update, delete, upload) or 5 RU (permission
//!   operations, `$expand=permissions`). `RateLimit-Limit`, `-Remaining` and `-Reset`, which
//!   SharePoint sends once 80 % of the minute budget is used, lower the client's own budget
//!   when the service counts more than we did; on a 429 the greater of `Retry-After` and
//!   `RateLimit-Reset` is waited
//!   (<https://learn.microsoft.com/sharepoint/dev/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online>).
//! - Microsoft Teams: 4 requests per second per app on a given team
//!   (<https://learn.microsoft.com/graph/throttling-limits#microsoft-teams-service-limits>).
//!
//! Windows are counted in time buckets, and a bucket counts until its end plus the window plus
//! a small margin: the client's count is never below what a server with an exact sliding
//! window sees, so staying inside the client's budget means staying inside the server's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Microsoft's per-workload limits the client keeps to (see the module docs for sources).
///
/// `Default` is Microsoft's published values for the smallest tenant class (0–1,000 licences).
/// A limit of 0 switches that limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleOptions {
    /// Outlook requests in flight at once per mailbox (Microsoft: 4).
    pub outlook_concurrent_requests: u32,
    /// Outlook requests per [`ThrottleOptions::outlook_window`] per mailbox (Microsoft: 10,000).
    pub outlook_requests_per_window: u32,
    /// The Outlook request-rate window (Microsoft: 10 minutes).
    pub outlook_window: Duration,
    /// OneDrive/SharePoint resource units per minute for this app in the tenant (Microsoft:
    /// 1,250 up to 1,000 licences, 2,500 up to 5,000, 3,750 up to 15,000, 5,000 up to 50,000,
    /// 6,250 above).
    pub sharepoint_resource_units_per_minute: u32,
    /// OneDrive/SharePoint resource units per 24 hours for this app in the tenant (Microsoft:
    /// 1,200,000 up to 1,000 licences, then 2.4, 3.6, 4.8 and 6 million).
    pub sharepoint_resource_units_per_day: u32,
    /// Requests per second per team (Microsoft: 4).
    pub teams_requests_per_second: u32,
    /// Bytes uploaded (request bodies of POST, PUT and PATCH) per
    /// [`ThrottleOptions::outlook_upload_window`] per mailbox (Microsoft: 150 MB per 5 minutes,
    /// [`OUTLOOK_UPLOAD_BYTES_PER_WINDOW`]).
    pub outlook_upload_bytes_per_window: u64,
    /// The Outlook upload window (Microsoft: 5 minutes).
    pub outlook_upload_window: Duration,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        ThrottleOptions {
            outlook_concurrent_requests: 4,
            outlook_requests_per_window: 10_000,
            outlook_window: Duration::from_secs(600),
            sharepoint_resource_units_per_minute: 1_250,
            sharepoint_resource_units_per_day: 1_200_000,
            teams_requests_per_second: 4,
            outlook_upload_bytes_per_window: OUTLOOK_UPLOAD_BYTES_PER_WINDOW,
            outlook_upload_window: OUTLOOK_UPLOAD_WINDOW,
        }
    }
}

impl ThrottleOptions {
    /// No client-side limits at all (fences after a 429 still apply).
    pub fn unlimited() -> Self {
        ThrottleOptions {
            outlook_concurrent_requests: 0,
            outlook_requests_per_window: 0,
            outlook_window: Duration::from_secs(600),
            sharepoint_resource_units_per_minute: 0,
            sharepoint_resource_units_per_day: 0,
            teams_requests_per_second: 0,
            outlook_upload_bytes_per_window: 0,
            outlook_upload_window: OUTLOOK_UPLOAD_WINDOW,
        }
    }
}

/// Bytes a mailbox may receive in uploads per [`OUTLOOK_UPLOAD_WINDOW`]: Microsoft's "150
/// megabytes (MB) upload (PATCH, POST, PUT) in a 5 minute period", read as decimal megabytes
/// so that the client stays under the service whichever unit it counts in
/// (<https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits>).
///
/// The default of [`ThrottleOptions::outlook_upload_bytes_per_window`].
pub const OUTLOOK_UPLOAD_BYTES_PER_WINDOW: u64 = 150 * 1000 * 1000;

/// The window of [`OUTLOOK_UPLOAD_BYTES_PER_WINDOW`]: 5 minutes.
pub const OUTLOOK_UPLOAD_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The throttling scope a Graph request falls in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Workload {
    /// An Outlook mailbox: the user id or UPN as addressed (lower-cased), or `group:{id}`.
    Outlook {
        /// The mailbox key.
        mailbox: String,
        /// Bytes of the request body this request uploads to the mailbox (0 for reads):
        /// counted against [`OUTLOOK_UPLOAD_BYTES_PER_WINDOW`].
        upload_bytes: u64,
    },
    /// The tenant's OneDrive/SharePoint budget, with the request's cost in resource units.
    SharePoint {
        /// Resource units this request costs (1, 2 or 5).
        resource_units: u32,
    },
    /// A team (`/teams/{id}/…`).
    Teams {
        /// The team id (lower-cased).
        team: String,
    },
}

/// Outlook resources under `/users/{id}/` (and `/groups/{id}/` for group mailboxes).
const OUTLOOK_SEGMENTS: &[&str] = &[
    "messages",
    "mailfolders",
    "contacts",
    "contactfolders",
    "calendar",
    "calendars",
    "calendargroups",
    "calendarview",
    "events",
    "mailboxsettings",
    "outlook",
    "inferenceclassification",
    "conversations",
    "threads",
];

/// Last path segments that address a collection (a multi-item query, 2 RU).
const COLLECTION_SEGMENTS: &[&str] = &[
    "children",
    "drives",
    "items",
    "lists",
    "columns",
    "versions",
    "sites",
    "activities",
];

impl Workload {
    /// Classifies a request by its method, its path below the Graph service root
    /// (`/users/a@b/messages/x/$value`, percent-encoded as sent) and its query (`None` without
    /// one). `None` for requests no workload limit applies to (directory reads, `$batch`). An
    /// Outlook workload's `upload_bytes` is 0: see [`Workload::with_upload`].
    pub fn classify(method: &str, path: &str, query: Option<&str>) -> Option<Workload> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let lower = |s: &str| percent_decode(s).to_ascii_lowercase();
        let resource = |i: usize| {
            segs.get(i).map(|s| {
                let s = lower(s);
                s.split('(').next().unwrap_or("").to_string()
            })
        };
        let first = resource(0)?;
        match first.as_str() {
            "users" | "groups" => {
                let id = lower(segs.get(1)?);
                let what = resource(2)?;
                if OUTLOOK_SEGMENTS.contains(&what.as_str()) {
                    let mailbox = if first == "groups" {
                        format!("group:{id}")
                    } else {
                        id
                    };
                    return Some(Workload::Outlook {
                        mailbox,
                        upload_bytes: 0,
                    });
                }
                if matches!(what.as_str(), "drive" | "drives" | "sites") {
                    return Some(sharepoint(method, &segs, query));
                }
                None
            }
            "drives" | "sites" | "shares" => Some(sharepoint(method, &segs, query)),
            "teams" => Some(Workload::Teams {
                team: lower(segs.get(1)?),
            }),
            _ => None,
        }
    }
}

impl Workload {
    /// This workload, uploading a body of `bytes` when `method` is `POST`, `PUT` or `PATCH`
    /// and the workload is an Outlook mailbox (the body counts against the mailbox's upload
    /// budget); otherwise unchanged.
    pub fn with_upload(self, method: &str, bytes: u64) -> Workload {
        let write = ["POST", "PUT", "PATCH"]
            .iter()
            .any(|m| method.eq_ignore_ascii_case(m));
        match self {
            Workload::Outlook { mailbox, .. } if write => Workload::Outlook {
                mailbox,
                upload_bytes: bytes,
            },
            other => other,
        }
    }
}

/// The resource-unit cost of a OneDrive/SharePoint request, as Microsoft documents it.
fn sharepoint(method: &str, segs: &[&str], query: Option<&str>) -> Workload {
    let decoded_query = query
        .map(percent_decode)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let lower: Vec<String> = segs
        .iter()
        .map(|s| percent_decode(s).to_ascii_lowercase())
        .collect();
    let resource_units = if lower.iter().any(|s| s == "permissions")
        || decoded_query.contains("$expand=permissions")
    {
        5
    } else if !method.eq_ignore_ascii_case("GET") {
        2
    } else if let Some(delta) = lower.iter().find(|s| {
        *s == "delta" || s.starts_with("delta(") || s.starts_with("microsoft.graph.delta")
    }) {
        let with_token = delta.contains("token=")
            || decoded_query.contains("token=")
            || decoded_query.contains("$deltatoken")
            || decoded_query.contains("$skiptoken");
        if with_token {
            1
        } else {
            2
        }
    } else if lower
        .last()
        .is_some_and(|s| COLLECTION_SEGMENTS.contains(&s.as_str()))
    {
        2
    } else {
        1
    };
    Workload::SharePoint { resource_units }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests (or resource units) counted in time buckets over a sliding window.
#[derive(Debug)]
struct Window {
    /// The window plus the safety margin.
    span: Duration,
    bucket: Duration,
    /// (bucket start, units), oldest first.
    buckets: VecDeque<(Instant, u64)>,
    used: u64,
}

impl Window {
    fn new(window: Duration, buckets: u32, margin: Duration) -> Self {
        Window {
            span: window + margin,
            bucket: (window / buckets.max(1)).max(Duration::from_millis(1)),
            buckets: VecDeque::new(),
            used: 0,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(start, n)) = self.buckets.front() {
            if start + self.bucket + self.span <= now {
                self.buckets.pop_front();
                self.used -= n;
            } else {
                break;
            }
        }
    }

    /// Records `cost` units if they fit in `limit`, else says when they will.
    fn try_take(&mut self, now: Instant, cost: u64, limit: u64) -> Result<(), Instant> {
        self.expire(now);
        // A request dearer than the whole budget goes alone, into an empty window.
        let fits = self.used + cost <= limit || self.used == 0;
        if !fits {
            let mut freed = 0;
            for &(start, n) in &self.buckets {
                freed += n;
                let left = self.used - freed;
                if left + cost <= limit || left == 0 {
                    return Err(start + self.bucket + self.span);
                }
            }
            unreachable!("an empty window always fits");
        }
        match self.buckets.back_mut() {
            Some((start, n)) if now < *start + self.bucket => *n += cost,
            _ => self.buckets.push_back((now, cost)),
        }
        self.used += cost;
        Ok(())
    }

    fn idle_since(&self) -> Option<Instant> {
        self.buckets.back().map(|(s, _)| *s)
    }
}

/// What the service last said about the SharePoint budget (`RateLimit-*` headers).
#[derive(Debug, Clone, Copy)]
struct ServerHint {
    remaining: u64,
    until: Instant,
}

#[derive(Debug)]
struct Gate {
    fence: Option<Instant>,
    windows: Vec<(Window, u64)>,
    hint: Option<ServerHint>,
}

impl Gate {
    fn new(windows: Vec<(Window, u64)>) -> Self {
        Gate {
            fence: None,
            windows: windows.into_iter().filter(|(_, l)| *l > 0).collect(),
            hint: None,
        }
    }

    /// Takes `cost` if the fence, the server's hint and every window allow it; else when to
    /// ask again.
    fn try_take(&mut self, now: Instant, cost: u64) -> Result<(), Instant> {
        if let Some(f) = self.fence {
            if now < f {
                return Err(f);
            }
            self.fence = None;
        }
        if let Some(h) = self.hint {
            if now >= h.until {
                self.hint = None;
            } else if h.remaining < cost {
                return Err(h.until);
            }
        }
        // Check every window before recording in any.
        for (w, limit) in &mut self.windows {
            w.expire(now);
            if !(w.used + cost <= *limit || w.used == 0) {
                return w.try_take(now, cost, *limit);
            }
        }
        for (w, limit) in &mut self.windows {
            let _ = w.try_take(now, cost, *limit);
        }
        if let Some(h) = &mut self.hint {
            h.remaining -= cost;
        }
        Ok(())
    }

    fn fence_until(&mut self, until: Instant) {
        self.fence = Some(self.fence.map_or(until, |f| f.max(until)));
    }

    fn idle_since(&self) -> Option<Instant> {
        self.windows
            .iter()
            .filter_map(|(w, _)| w.idle_since())
            .max()
    }
}

struct Mailbox {
    slots: Option<Arc<Semaphore>>,
    gate: Mutex<Gate>,
    /// Upload bytes (no fence of its own: a 429 fences `gate`).
    uploads: Mutex<Gate>,
}

/// Counters of the admission layer, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Requests admitted.
    pub admitted: u64,
    /// Requests that had to wait for a budget, a free slot or a fence.
    pub delayed: u64,
    /// Total time requests waited for admission, summed over requests.
    pub waited: Duration,
    /// Fences set after a 429.
    pub fences: u64,
}

/// The admission layer: one per [`crate::HttpClient`], shared by every request of the process.
pub(crate) struct Limiter {
    opts: ThrottleOptions,
    /// Upload bytes per mailbox per window; 0 is off.
    outlook_upload_bytes: u64,
    outlook_upload_window: Duration,
    mailboxes: Mutex<HashMap<String, Arc<Mailbox>>>,
    sharepoint: Mutex<Gate>,
    teams: Mutex<HashMap<String, Gate>>,
    admitted: AtomicU64,
    delayed: AtomicU64,
    waited_micros: AtomicU64,
    fences: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Holds Outlook mailbox slots while a request (or a `$batch` of them) is in flight.
#[derive(Debug)]
pub(crate) struct Admission {
    _slots: Vec<OwnedSemaphorePermit>,
}

/// Requests of one `$batch` that Microsoft Graph dispatches at once: up to four, whatever
/// mailboxes they target, so a batch occupies at most this many slots of one mailbox.
pub(crate) const BATCH_PARALLELISM: u32 = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Margin added to client-side windows, for the time between admitting a request and the
/// server counting it.
const MARGIN: Duration = Duration::from_millis(500);

impl Limiter {
    pub(crate) fn new(opts: ThrottleOptions) -> Self {
        let upload_bytes = opts.outlook_upload_bytes_per_window;
        let upload_window = opts.outlook_upload_window;
        let sharepoint = Gate::new(vec![
            (
                Window::new(Duration::from_secs(60), 60, MARGIN),
                u64::from(opts.sharepoint_resource_units_per_minute),
            ),
            (
                Window::new(Duration::from_secs(24 * 3600), 96, MARGIN),
                u64::from(opts.sharepoint_resource_units_per_day),
            ),
        ]);
        Limiter {
            opts,
            outlook_upload_bytes: upload_bytes,
            outlook_upload_window: upload_window,
            mailboxes: Mutex::new(HashMap::new()),
            sharepoint: Mutex::new(sharepoint),
            teams: Mutex::new(HashMap::new()),
            admitted: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            waited_micros: AtomicU64::new(0),
            fences: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> ThrottleStats {
        ThrottleStats {
            admitted: self.admitted.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            waited: Duration::from_micros(self.waited_micros.load(Ordering::Relaxed)),
            fences: self.fences.load(Ordering::Relaxed),
        }
    }

    fn mailbox(&self, key: &str) -> Arc<Mailbox> {
        let mut map = lock(&self.mailboxes);
        if let Some(m) = map.get(key) {
            return m.clone();
        }
        // Forget mailboxes nobody uses any more, so a daemon's memory stays bounded.
        if map.len() >= 1024 {
            let now = Instant::now();
            let span = self.opts.outlook_window + MARGIN;
            map.retain(|_, m| {
                if Arc::strong_count(m) > 1 {
                    return true;
                }
                let gate = lock(&m.gate);
                gate.idle_since()
                    .is_some_and(|t| now.duration_since(t) < span * 2)
                    || gate.fence.is_some_and(|f| f > now)
            });
        }
        let n = self.opts.outlook_concurrent_requests;
        let m = Arc::new(Mailbox {
            slots: (n > 0).then(|| Arc::new(Semaphore::new(n as usize))),
            gate: Mutex::new(Gate::new(vec![(
                Window::new(self.opts.outlook_window, 60, MARGIN),
                u64::from(self.opts.outlook_requests_per_window),
            )])),
            uploads: Mutex::new(Gate::new(vec![(
                Window::new(self.outlook_upload_window, 60, MARGIN),
                self.outlook_upload_bytes,
            )])),
        });
        map.insert(key.to_string(), m.clone());
        m
    }

    /// Waits until `workload` may send one more request, and takes its share of the budget.
    pub(crate) async fn admit(&self, workload: &Workload) -> Admission {
        let started = Instant::now();
        let mut delayed = false;
        let slot = match workload {
            Workload::Outlook {
                mailbox,
                upload_bytes,
            } => {
                let m = self.mailbox(mailbox);
                // The byte budget first, so a mailbox slot is not held while it is waited for.
                if *upload_bytes > 0 {
                    delayed |= wait_gate(&m.uploads, *upload_bytes).await;
                }
                let slot = match &m.slots {
                    Some(s) => {
                        let permit = match s.clone().try_acquire_owned() {
                            Ok(p) => p,
                            Err(_) => {
                                delayed = true;
                                s.clone()
                                    .acquire_owned()
                                    .await
                                    .expect("the semaphore is never closed")
                            }
                        };
                        Some(permit)
                    }
                    None => None,
                };
                delayed |= wait_gate(&m.gate, 1).await;
                slot
            }
            Workload::SharePoint { resource_units } => {
                delayed |= wait_gate(&self.sharepoint, u64::from(*resource_units)).await;
                None
            }
            Workload::Teams { team } => {
                delayed |= self.wait_team(team, 1).await;
                None
            }
        };
        self.count_admitted(workload, 1, delayed, started);
        Admission {
            _slots: slot.into_iter().collect(),
        }
    }

    async fn wait_team(&self, team: &str, cost: u64) -> bool {
        let mut delayed = false;
        loop {
            let next = self.with_gate(&Workload::Teams { team: team.into() }, |g| {
                g.try_take(Instant::now(), cost)
            });
            match next {
                Ok(()) => return delayed,
                Err(at) => {
                    delayed = true;
                    tokio::time::sleep_until(at).await;
                }
            }
        }
    }

    /// Admits the inner requests of one JSON batch together, each with the budget it would
    /// take if sent alone: one request per mailbox window and Teams window, its resource units
    /// of SharePoint's budget, every fence waited out. A batch holds
    /// `min(requests, 4, outlook_concurrent_requests)` slots of each mailbox it reads, since
    /// Graph runs up to four of its requests at once. Mailboxes are taken in sorted order, so
    /// two batches never wait for each other's slots.
    pub(crate) async fn admit_all(&self, workloads: &[Workload]) -> Admission {
        match workloads {
            [] => return Admission { _slots: Vec::new() },
            [one] => return self.admit(one).await,
            _ => {}
        }
        let started = Instant::now();
        let mut delayed = false;
        let mut mailboxes: BTreeMap<&str, u64> = BTreeMap::new();
        let mut uploads: BTreeMap<&str, u64> = BTreeMap::new();
        let mut teams: BTreeMap<&str, u64> = BTreeMap::new();
        let mut resource_units = 0u64;
        for w in workloads {
            match w {
                Workload::Outlook {
                    mailbox,
                    upload_bytes,
                } => {
                    *mailboxes.entry(mailbox).or_default() += 1;
                    *uploads.entry(mailbox).or_default() += upload_bytes;
                }
                Workload::Teams { team } => *teams.entry(team).or_default() += 1,
                Workload::SharePoint { resource_units: ru } => resource_units += u64::from(*ru),
            }
        }
        let mut slots = Vec::new();
        for (mailbox, n) in &mailboxes {
            let m = self.mailbox(mailbox);
            let bytes = uploads.get(mailbox).copied().unwrap_or(0);
            if bytes > 0 {
                delayed |= wait_gate(&m.uploads, bytes).await;
            }
            if let Some(s) = &m.slots {
                let want = (*n as u32)
                    .min(BATCH_PARALLELISM)
                    .min(self.opts.outlook_concurrent_requests)
                    .max(1);
                let permit = match s.clone().try_acquire_many_owned(want) {
                    Ok(p) => p,
                    Err(_) => {
                        delayed = true;
                        s.clone()
                            .acquire_many_owned(want)
                            .await
                            .expect("the semaphore is never closed")
                    }
                };
                slots.push(permit);
            }
            delayed |= wait_gate(&m.gate, *n).await;
        }
        if resource_units > 0 {
            delayed |= wait_gate(&self.sharepoint, resource_units).await;
        }
        for (team, n) in &teams {
            delayed |= self.wait_team(team, *n).await;
        }
        self.count_admitted(&workloads, workloads.len() as u64, delayed, started);
        Admission { _slots: slots }
    }

    fn count_admitted(
        &self,
        workload: &dyn std::fmt::Debug,
        n: u64,
        delayed: bool,
        started: Instant,
    ) {
        self.admitted.fetch_add(n, Ordering::Relaxed);
        if delayed {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            let waited = started.elapsed();
            self.waited_micros
                .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
            tracing::debug!(
                ?workload,
                waited_ms = waited.as_millis() as u64,
                "request waited for its workload's budget"
            );
        }
    }

    fn with_gate<T>(&self, workload: &Workload, f: impl FnOnce(&mut Gate) -> T) -> T {
        match workload {
            Workload::Outlook { mailbox, .. } => f(&mut lock(&self.mailbox(mailbox).gate)),
            Workload::SharePoint { .. } => f(&mut lock(&self.sharepoint)),
            Workload::Teams { team } => {
                let limit = u64::from(self.opts.teams_requests_per_second);
                let mut teams = lock(&self.teams);
                let gate = teams.entry(team.clone()).or_insert_with(|| {
                    Gate::new(vec![(
                        Window::new(Duration::from_secs(1), 20, MARGIN / 5),
                        limit,
                    )])
                });
                f(gate)
            }
        }
    }

    /// Pauses every request of `workload` for `pause` (after a 429): the fence.
    pub(crate) fn fence(&self, workload: &Workload, pause: Duration) {
        let until = Instant::now() + pause;
        self.fences.fetch_add(1, Ordering::Relaxed);
        self.with_gate(workload, |g| g.fence_until(until));
        tracing::info!(
            ?workload,
            pause_ms = pause.as_millis() as u64,
            "Microsoft throttled this workload: pausing its requests (others go on)"
        );
    }

    /// Reads `RateLimit-Limit`/`-Remaining`/`-Reset` of a SharePoint answer: the service's own
    /// count replaces ours until the reset when it leaves less than ours would.
    pub(crate) fn observe(&self, workload: &Workload, headers: &HeaderMap) {
        if !matches!(workload, Workload::SharePoint { .. }) {
            return;
        }
        let Some(rl) = RateLimit::parse(headers) else {
            return;
        };
        let now = Instant::now();
        let mut gate = lock(&self.sharepoint);
        let until = now + Duration::from_secs(rl.reset_secs);
        gate.hint = match gate.hint {
            Some(h) if h.until > now && h.remaining <= rl.remaining => Some(h),
            _ => Some(ServerHint {
                remaining: rl.remaining,
                until,
            }),
        };
        if rl.remaining == 0 {
            gate.fence_until(until);
        }
        // A service limit below the configured one (a smaller tenant, or Microsoft lowered
        // it) becomes the minute budget.
        let minute = Duration::from_secs(60) + MARGIN;
        if let Some((_, limit)) = gate.windows.iter_mut().find(|(w, _)| w.span == minute) {
            if rl.limit > 0 && rl.limit < *limit {
                tracing::info!(
                    configured = *limit,
                    service = rl.limit,
                    "SharePoint reports a lower resource-unit limit per minute; using it"
                );
                *limit = rl.limit;
            }
        }
    }
}

async fn wait_gate(gate: &Mutex<Gate>, cost: u64) -> bool {
    let mut delayed = false;
    loop {
        let next = lock(gate).try_take(Instant::now(), cost);
        match next {
            Ok(()) => return delayed,
            Err(at) => {
                delayed = true;
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

/// The IETF draft-03 `RateLimit-*` headers SharePoint sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

impl RateLimit {
    pub(crate) fn parse(headers: &HeaderMap) -> Option<RateLimit> {
        let num = |name: &str| -> Option<u64> {
            let v = headers.get(name)?.to_str().ok()?;
            // draft-03 allows `100, 100;w=60`: the first number is the one that applies.
            v.split([',', ';']).next()?.trim().parse().ok()
        };
        Some(RateLimit {
            limit: num("ratelimit-limit")?,
            remaining: num("ratelimit-remaining")?,
            reset_secs: num("ratelimit-reset")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlook(m: &str) -> Workload {
        Workload::Outlook {
            mailbox: m.into(),
            upload_bytes: 0,
        }
    }

    #[test]
    fn only_outlook_writes_carry_upload_bytes() {
        let c = |m: &str, p: &str| Workload::classify(m, p, None).unwrap().with_upload(m, 7);
        assert_eq!(
            c("POST", "/users/u1/mailFolders/inbox/messages"),
            Workload::Outlook {
                mailbox: "u1".into(),
                upload_bytes: 7
            }
        );
        assert_eq!(
            c("PATCH", "/users/u1/messages/AAMk"),
            Workload::Outlook {
                mailbox: "u1".into(),
                upload_bytes: 7
            }
        );
        assert_eq!(c("GET", "/users/u1/messages"), outlook("u1"));
        assert_eq!(
            c("PUT", "/drives/b!1/items/01AB/content"),
            Workload::SharePoint { resource_units: 2 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outlook_upload_bytes_per_mailbox_window() {
        let l = Limiter::new(ThrottleOptions {
            outlook_upload_bytes_per_window: 10_000,
            outlook_upload_window: Duration::from_secs(10),
            ..ThrottleOptions::default()
        });
        let up = |m: &str, n: u64| outlook(m).with_upload("POST", n);
        let t0 = Instant::now();
        drop(l.admit(&up("a", 6_000)).await);
        drop(l.admit(&up("a", 4_000)).await);
        assert_eq!(Instant::now(), t0, "10,000 bytes fit the window");
        // Reads and other mailboxes are not held up by a's spent upload budget.
        drop(l.admit(&outlook("a")).await);
        drop(l.admit(&up("b", 10_000)).await);
        assert_eq!(Instant::now(), t0);
        // One byte more waits until the first bytes leave the window (plus the margin).
        drop(l.admit(&up("a", 1)).await);
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(11),
            "{waited:?}"
        );
        // A batch's bytes for a mailbox are summed.
        let t1 = Instant::now();
        let batch = vec![up("c", 6_000), up("c", 6_000)];
        drop(l.admit_all(&batch).await);
        assert_eq!(
            Instant::now(),
            t1,
            "a batch over the budget goes into an empty window"
        );
        drop(l.admit(&up("c", 1)).await);
        assert!(Instant::now() - t1 >= Duration::from_secs(10));
        // Microsoft's budget by default, off in the unlimited options.
        assert_eq!(
            Limiter::new(ThrottleOptions::default()).outlook_upload_bytes,
            150_000_000
        );
        assert_eq!(
            Limiter::new(ThrottleOptions::unlimited()).outlook_upload_bytes,
            0
        );
    }

    #[test]
    fn classification_and_resource_units() {
        let c = |m, p, q| Workload::classify(m, p, q);
        assert_eq!(
            c(
                "GET",
                "/users/Adele%40contoso.com/messages/AAMk/$value",
                None
            ),
            Some(outlook("adele@contoso.com"))
        );
        assert_eq!(
            c("GET", "/users/u1/mailFolders/inbox/messages/delta", None),
            Some(outlook("u1"))
        );
        assert_eq!(
            c("GET", "/groups/g1/threads", None),
            Some(outlook("group:g1"))
        );
        assert_eq!(
            c("GET", "/users/u1", None),
            None,
            "directory reads are not Outlook"
        );
        assert_eq!(c("POST", "/$batch", None), None);
        let ru = |m, p, q| match c(m, p, q) {
            Some(Workload::SharePoint { resource_units }) => resource_units,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(ru("GET", "/drives/b!1/items/01AB", None), 1);
        assert_eq!(
            ru("GET", "/drives/b!1/items/01AB/content", None),
            1,
            "download"
        );
        assert_eq!(ru("GET", "/users/u1/drive", None), 1);
        assert_eq!(ru("GET", "/drives/b!1/items/01AB/children", None), 2);
        assert_eq!(
            ru("GET", "/drives/b!1/root/delta", None),
            2,
            "delta without a token"
        );
        assert_eq!(ru("GET", "/drives/b!1/root/delta", Some("token=abc")), 1);
        assert_eq!(ru("GET", "/drives/b!1/root/delta(token='abc')", None), 1);
        assert_eq!(
            ru("PUT", "/drives/b!1/items/p:/a.txt:/content", None),
            2,
            "upload"
        );
        assert_eq!(ru("DELETE", "/drives/b!1/items/01AB", None), 2);
        assert_eq!(ru("GET", "/drives/b!1/items/01AB/permissions", None), 5);
        assert_eq!(
            ru(
                "GET",
                "/drives/b!1/items/01AB",
                Some("%24expand=permissions")
            ),
            5
        );
        assert_eq!(
            c("GET", "/teams/T1/channels", None),
            Some(Workload::Teams { team: "t1".into() })
        );
    }

    #[test]
    fn window_never_undercounts_an_exact_sliding_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 60, MARGIN);
        for i in 0..10 {
            assert!(w.try_take(t0 + Duration::from_millis(i), 1, 10).is_ok());
        }
        let at = w.try_take(t0 + Duration::from_secs(1), 1, 10).unwrap_err();
        // The first request leaves an exact 60 s window at t0 + 60 s; ours frees it later,
        // but less than a bucket and the margin later.
        assert!(at >= t0 + Duration::from_secs(60), "{:?}", at - t0);
        assert!(at <= t0 + Duration::from_secs(62), "{:?}", at - t0);
        assert!(w.try_take(at, 1, 10).is_ok());
        // A cost above the whole budget waits for an empty window, then goes.
        let mut w = Window::new(Duration::from_secs(60), 60, MARGIN);
        assert!(w.try_take(t0, 5, 3).is_ok());
        assert!(w.try_take(t0, 5, 3).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_each_inner_requests_budget_and_at_most_four_slots() {
        let l = Arc::new(Limiter::new(ThrottleOptions {
            outlook_requests_per_window: 25,
            ..ThrottleOptions::default()
        }));
        let sp = |ru| Workload::SharePoint { resource_units: ru };
        // 20 inner requests to mailbox a, two to b, 3 RU of SharePoint.
        let mut batch: Vec<Workload> = (0..20).map(|_| outlook("a")).collect();
        batch.extend([outlook("b"), outlook("b"), sp(2), sp(1)]);
        let held = tokio::time::timeout(Duration::from_millis(1), l.admit_all(&batch))
            .await
            .expect("20 requests to one mailbox fit a batch: it takes 4 slots, not 20");
        assert_eq!(l.stats().admitted, 24);
        // Mailbox a's four slots are the batch's: a direct request waits for them...
        let l2 = l.clone();
        let direct = tokio::spawn(async move { l2.admit(&outlook("a")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!direct.is_finished(), "the batch holds mailbox a's slots");
        // ...while b (two of its four slots taken) still has room.
        let b = tokio::time::timeout(Duration::from_millis(1), l.admit(&outlook("b"))).await;
        assert!(b.is_ok());
        drop(held);
        let direct = tokio::time::timeout(Duration::from_millis(1), direct)
            .await
            .expect("slots freed")
            .unwrap();
        drop(direct);
        // The window counted 20 + 1 requests of a: a batch of 5 more must wait for it.
        let more: Vec<Workload> = (0..5).map(|_| outlook("a")).collect();
        let early = tokio::time::timeout(Duration::from_secs(1), l.admit_all(&more)).await;
        assert!(early.is_err(), "25 + 1 would exceed the window's 25");
    }

    #[tokio::test(start_paused = true)]
    async fn outlook_allows_four_in_flight_per_mailbox_and_others_go_on() {
        let l = Arc::new(Limiter::new(ThrottleOptions::default()));
        let a = outlook("a");
        let held: Vec<Admission> = futures::future::join_all((0..4).map(|_| l.admit(&a))).await;
        // A fifth request to the same mailbox waits for a slot...
        let l2 = l.clone();
        let a2 = a.clone();
        let fifth = tokio::spawn(async move { l2.admit(&a2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !fifth.is_finished(),
            "a fifth request to one mailbox must wait"
        );
        // ...while another mailbox is not held up.
        let other = tokio::time::timeout(Duration::from_millis(1), l.admit(&outlook("b"))).await;
        assert!(other.is_ok(), "another mailbox goes on");
        drop(held);
        tokio::time::timeout(Duration::from_millis(1), fifth)
            .await
            .expect("a slot freed: the fifth goes")
            .unwrap();
        assert_eq!(l.stats().delayed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn outlook_request_rate_per_mailbox_window() {
        let l = Limiter::new(ThrottleOptions {
            outlook_requests_per_window: 5,
            outlook_window: Duration::from_secs(10),
            ..ThrottleOptions::default()
        });
        let a = outlook("a");
        let t0 = Instant::now();
        for _ in 0..5 {
            drop(l.admit(&a).await);
        }
        assert_eq!(Instant::now(), t0, "the first five go at once");
        drop(l.admit(&outlook("b")).await);
        assert_eq!(Instant::now(), t0, "another mailbox has its own budget");
        drop(l.admit(&a).await);
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(11),
            "the sixth waits for the window: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_pauses_one_mailbox_only() {
        let l = Limiter::new(ThrottleOptions::default());
        let t0 = Instant::now();
        l.fence(&outlook("a"), Duration::from_secs(3));
        drop(l.admit(&outlook("b")).await);
        assert_eq!(Instant::now(), t0, "mailbox b is not fenced");
        drop(l.admit(&outlook("a")).await);
        assert_eq!(Instant::now() - t0, Duration::from_secs(3));
        assert_eq!(l.stats().fences, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sharepoint_resource_units_per_minute() {
        let l = Limiter::new(ThrottleOptions {
            sharepoint_resource_units_per_minute: 10,
            ..ThrottleOptions::default()
        });
        let t0 = Instant::now();
        let sp = |ru| Workload::SharePoint { resource_units: ru };
        drop(l.admit(&sp(5)).await);
        drop(l.admit(&sp(2)).await);
        drop(l.admit(&sp(2)).await);
        drop(l.admit(&sp(1)).await);
        assert_eq!(Instant::now(), t0, "10 units fit in the minute");
        drop(l.admit(&sp(1)).await);
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_secs(62),
            "{waited:?}"
        );
        // Outlook is not held up by the SharePoint budget.
        let before = Instant::now();
        drop(l.admit(&outlook("a")).await);
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_headers_lower_the_budget_until_the_reset() {
        let l = Limiter::new(ThrottleOptions::default());
        let sp = Workload::SharePoint { resource_units: 1 };
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "1250".parse().unwrap());
        h.insert("ratelimit-remaining", "2".parse().unwrap());
        h.insert("ratelimit-reset", "7".parse().unwrap());
        assert_eq!(
            RateLimit::parse(&h),
            Some(RateLimit {
                limit: 1250,
                remaining: 2,
                reset_secs: 7
            })
        );
        l.observe(&sp, &h);
        let minute_limit = |l: &Limiter| lock(&l.sharepoint).windows[0].1;
        assert_eq!(minute_limit(&l), 1250);
        let t0 = Instant::now();
        drop(l.admit(&sp).await);
        drop(l.admit(&sp).await);
        assert_eq!(Instant::now(), t0, "the two units the service still grants");
        drop(l.admit(&sp).await);
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(7),
            "then the reset"
        );
        // Remaining 0 fences the budget until the reset.
        h.insert("ratelimit-remaining", "0".parse().unwrap());
        h.insert("ratelimit-reset", "4".parse().unwrap());
        l.observe(&sp, &h);
        let t1 = Instant::now();
        drop(l.admit(&sp).await);
        assert_eq!(Instant::now() - t1, Duration::from_secs(4));
        // A lower service limit becomes the budget.
        h.insert("ratelimit-limit", "1200".parse().unwrap());
        l.observe(&sp, &h);
        assert_eq!(minute_limit(&l), 1200);
        // Other workloads ignore SharePoint's headers.
        l.observe(&outlook("a"), &h);
        let t2 = Instant::now();
        drop(l.admit(&outlook("a")).await);
        assert_eq!(Instant::now(), t2);
    }

    #[tokio::test(start_paused = true)]
    async fn teams_four_requests_per_second_per_team() {
        let l = Limiter::new(ThrottleOptions::default());
        let t = Workload::Teams { team: "t".into() };
        let t0 = Instant::now();
        for _ in 0..4 {
            drop(l.admit(&t).await);
        }
        assert_eq!(Instant::now(), t0);
        drop(l.admit(&Workload::Teams { team: "u".into() }).await);
        assert_eq!(Instant::now(), t0, "another team has its own budget");
        drop(l.admit(&t).await);
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1200),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_mailboxes_are_forgotten() {
        let l = Limiter::new(ThrottleOptions {
            outlook_window: Duration::from_secs(10),
            ..ThrottleOptions::default()
        });
        for i in 0..1100 {
            drop(l.admit(&outlook(&format!("m{i}"))).await);
        }
        assert_eq!(lock(&l.mailboxes).len(), 1100);
        l.fence(&outlook("m7"), Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(60)).await;
        drop(l.admit(&outlook("new")).await);
        let left: Vec<String> = lock(&l.mailboxes).keys().cloned().collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"m7".to_string()), "a fenced mailbox is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_admits_at_once() {
        let l = Limiter::new(ThrottleOptions::unlimited());
        let t0 = Instant::now();
        let a = outlook("a");
        let held: Vec<Admission> = futures::future::join_all((0..50).map(|_| l.admit(&a))).await;
        for _ in 0..5000 {
            drop(l.admit(&Workload::SharePoint { resource_units: 5 }).await);
        }
        assert_eq!(Instant::now(), t0);
        drop(held);
    }
}
