//! Repository locks: who is using the repository, so that prune never deletes data that a
//! running backup or restore needs.
//!
//! ```text
//! locks/<64 hex>   header (b"MBKL", version, envelope, 0, 0) ‖ JSON of a LockInfo, sealed if
//!                  encrypted; the name is the BLAKE3 hash of the object's bytes (as stored)
//! ```
//!
//! Locks are ordinary immutable objects written with `PutMode::Create`; nothing is ever
//! overwritten, so the protocol works on any store with create-only puts and a consistent
//! `list` (a local directory, S3, Azure Blob).
//!
//! - **Kinds.** Backup, restore, check, read and forget locks are *shared*: any number may be
//!   held at once. A prune lock is *exclusive*: it excludes every other lock.
//! - **Acquire.** Write the own lock object, then list `locks/`. If a live lock of another
//!   holder conflicts (either side exclusive), delete the own object and try again after a
//!   randomised, doubling back-off, until [`LockOptions::wait`] has passed; then fail with
//!   [`Error::RepositoryLocked`] naming the holder. If two processes write at the same moment
//!   and then both list, each sees the other and both back off: neither proceeds on a conflict
//!   it did not see. The random back-off makes a repeat of the tie unlikely.
//! - **Expiry.** Each lock object says when it expires (`ttl` after it was written, 30 minutes
//!   by default). The holder writes a new object every `ttl / 6` and then deletes the old one.
//!   A lock object past its expiry is *stale*: it is ignored, and whoever sees it deletes it.
//!   A crashed process therefore blocks prune for at most `ttl`; there is no unlock command.
//!   A lock whose holder ran on this machine (same host name, kernel boot and pid namespace,
//!   recorded in the lock) and whose process is gone (`kill(pid, 0)` fails with ESRCH) is
//!   stale at once: a backup killed here does not block
//!   the next prune here. Holders elsewhere are judged by expiry only.
//! - **Lost locks.** A holder that could not refresh in time no longer counts as holding the
//!   lock: [`RepoLock::ensure_valid`] fails, and a backup checks it before each index and
//!   snapshot write.
//! - **Clocks.** Expiry is written by the holder's clock and judged by the reader's. This is
//!   safe while clocks differ by less than the time a lock still has left when it is refreshed
//!   (`ttl - ttl/6`, 25 minutes by default), minus the time one refresh takes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::repository::{RepoInner, Repository};

/// Lock lifetime without refresh, unless [`LockOptions::ttl`] says otherwise.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30 * 60);
/// Longest accepted [`LockOptions::ttl`]; an unreadable lock object counts as live for this
/// long after it was stored.
pub const MAX_LOCK_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Shortest accepted [`LockOptions::ttl`].
pub const MIN_LOCK_TTL: Duration = Duration::from_secs(1);
/// First wait after a conflict; doubles up to [`MAX_BACKOFF`], each randomised to 50–100 %.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// What a lock is taken for. Only [`LockKind::Prune`] and [`LockKind::Repair`] are exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// A backup session (shared): from loading the index until its last snapshot is written.
    Backup,
    /// A restore (shared).
    Restore,
    /// `check` (shared).
    Check,
    /// Listing snapshots or items (shared).
    Read,
    /// `forget` (shared): it only deletes snapshot objects, which can only shrink the set of
    /// blobs in use, so it is safe beside backups and even beside a prune.
    Forget,
    /// `prune` (exclusive): deletes and rewrites packs and index files.
    Prune,
    /// `repair index` (exclusive): rewrites the index files.
    Repair,
}

impl LockKind {
    /// True for the exclusive kinds (prune, repair).
    pub fn is_exclusive(self) -> bool {
        matches!(self, LockKind::Prune | LockKind::Repair)
    }

    /// Lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Backup => "backup",
            LockKind::Restore => "restore",
            LockKind::Check => "check",
            LockKind::Read => "read",
            LockKind::Forget => "forget",
            LockKind::Prune => "prune",
            LockKind::Repair => "repair",
        }
    }
}

impl std::fmt::Display for LockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to take a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOptions {
    /// How long to keep retrying while a conflicting lock is held (0: fail at once).
    pub wait: Duration,
    /// How long each lock object stays valid if it is not refreshed; the holder refreshes it
    /// every `ttl / 6`. Clamped to [`MIN_LOCK_TTL`]..=[`MAX_LOCK_TTL`].
    pub ttl: Duration,
}

impl Default for LockOptions {
    /// No waiting, [`DEFAULT_LOCK_TTL`].
    fn default() -> Self {
        LockOptions {
            wait: Duration::ZERO,
            ttl: DEFAULT_LOCK_TTL,
        }
    }
}

impl LockOptions {
    fn ttl(&self) -> Duration {
        self.ttl.clamp(MIN_LOCK_TTL, MAX_LOCK_TTL)
    }
}

/// The content of one lock object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Random id of the holder (one lock taken by one process); kept across refreshes.
    pub holder: String,
    /// Host of the holding process.
    pub hostname: String,
    /// Process id on that host.
    pub pid: u32,
    /// What the lock is for.
    pub kind: LockKind,
    /// True for an exclusive lock.
    pub exclusive: bool,
    /// When the holder first took the lock (UTC).
    pub created: DateTime<Utc>,
    /// When this lock object was written (UTC).
    pub refreshed: DateTime<Utc>,
    /// When this lock object goes stale unless a newer one replaces it (UTC).
    pub expires: DateTime<Utc>,
    /// Where `pid` means something: the holder's kernel boot id and pid namespace
    /// (`"<boot id>/pid:[<inode>]"`, from `/proc`). A process with the same scope whose `pid`
    /// no longer runs is gone, and its lock stale at once. Absent from locks of older builds
    /// and of systems without `/proc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_scope: Option<String>,
}

/// This process's [`LockInfo::process_scope`], read once.
fn process_scope() -> Option<String> {
    static SCOPE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(format!("{}/{}", boot.trim(), ns.display()))
        })
        .clone()
}

/// True if `other` was taken by a process that this one can see is gone: same host name, same
/// kernel boot and pid namespace, and `kill(pid, 0)` answers ESRCH (no such process). Any other
/// answer (alive, EPERM for another user's process, an error) counts as alive, and so does a
/// pid reused by a new process: the lock then waits for its expiry. A holder elsewhere (another
/// host, container or boot) is never judged gone, only expired.
fn holder_is_gone(other: &LockInfo) -> bool {
    let same_scope = matches!(
        (&other.process_scope, process_scope()),
        (Some(theirs), Some(ours)) if *theirs == ours
    );
    if !same_scope || other.hostname != crate::snapshot::hostname() {
        return false;
    }
    let Some(pid) = i32::try_from(other.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// How an acquirer sees another lock object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Past its expiry: ignore it and delete it.
    Stale,
    /// Live, and compatible with the lock wanted.
    Compatible,
    /// Live, and in conflict with the lock wanted.
    Conflict,
}

/// Judges another holder's lock against one wanted (`exclusive` or not) at `now`.
pub(crate) fn judge(other: &LockInfo, exclusive: bool, now: DateTime<Utc>) -> Verdict {
    if other.expires <= now || holder_is_gone(other) {
        Verdict::Stale
    } else if exclusive || other.exclusive {
        Verdict::Conflict
    } else {
        Verdict::Compatible
    }
}

/// Object path of a lock: `locks/<64 hex>`.
fn lock_path(name: &str) -> Path {
    Path::from(format!("locks/{name}"))
}

/// Handles of lock releases started by `Drop`, so a process can wait for them before exiting.
static PENDING_RELEASES: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits until every lock dropped so far has been deleted from its repository. Call it before
/// the async runtime shuts down (the CLI does at the end of each command): a release that
/// never ran leaves a lock that blocks prune until it expires.
pub async fn finish_lock_releases() {
    loop {
        let pending: Vec<JoinHandle<()>> =
            std::mem::take(&mut *PENDING_RELEASES.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        for handle in pending {
            let _ = handle.await;
        }
    }
}

/// A held repository lock. It is refreshed in the background while held and deleted by
/// [`RepoLock::release`] or, in the background, when dropped (see [`finish_lock_releases`]).
pub struct RepoLock {
    state: Arc<HeldLock>,
    stop: watch::Sender<bool>,
    refresher: Option<JoinHandle<()>>,
}

struct HeldLock {
    repo: Arc<RepoInner>,
    ttl: Duration,
    /// The current lock object's name and content.
    current: Mutex<(String, LockInfo)>,
    /// Set when the holder releases or drops the lock: a [`LockCheck`] then fails.
    released: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock")
            .field("info", &self.info())
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Takes a lock of `kind` (see the module docs of `lock` in `docs/repository-format.md`,
    /// section *Locks*): writes a lock object, lists the others, and retries with back-off
    /// while a live conflicting lock exists, for up to `opts.wait`. Stale locks seen on the way
    /// are deleted.
    ///
    /// # Errors
    /// [`Error::RepositoryLocked`] naming the holder if a conflicting lock is still live when
    /// the wait is over, [`Error::Backend`] if the lock cannot be written or `locks/` listed.
    pub async fn lock(&self, kind: LockKind, opts: &LockOptions) -> Result<RepoLock> {
        let inner = &self.inner;
        let ttl = opts.ttl();
        let deadline = Instant::now() + opts.wait;
        let holder = hex::encode(rand::random::<[u8; 16]>());
        let created = Utc::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (name, info) = write_lock(inner, &holder, kind, created, ttl).await?;
            let conflict = match find_conflict(inner, &name, kind.is_exclusive()).await {
                Ok(c) => c,
                Err(e) => {
                    delete_lock(inner, &name).await;
                    return Err(e);
                }
            };
            let Some((object, other)) = conflict else {
                tracing::debug!(lock = %name, %kind, "repository locked");
                return Ok(RepoLock::start(inner.clone(), ttl, name, info));
            };
            delete_lock(inner, &name).await;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::RepositoryLocked {
                    location: inner.location.clone(),
                    wanted: kind,
                    object,
                    holder: Box::new(other),
                });
            }
            let pause = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0).min(left);
            tracing::info!(
                %kind,
                held_by = %format!("{} lock of pid {} on {}", other.kind, other.pid, other.hostname),
                expires = %other.expires,
                retry_in_ms = pause.as_millis() as u64,
                "repository is locked; waiting"
            );
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Every lock object in the repository, with its name (`locks/…`), stale ones included.
    /// Unreadable lock objects are skipped with a warning.
    ///
    /// # Errors
    /// [`Error::Backend`] if `locks/` cannot be listed.
    pub async fn list_locks(&self) -> Result<Vec<(String, LockInfo)>> {
        let mut out = Vec::new();
        for (name, _) in self.inner.list_names("locks").await? {
            match read_lock(&self.inner, &name).await {
                Ok(Some(info)) => out.push((lock_path(&name).to_string(), info)),
                Ok(None) => {}
                Err(e) => tracing::warn!(lock = %name, error = %e, "unreadable lock object"),
            }
        }
        Ok(out)
    }
}

impl RepoLock {
    fn start(repo: Arc<RepoInner>, ttl: Duration, name: String, info: LockInfo) -> RepoLock {
        let state = Arc::new(HeldLock {
            repo,
            ttl,
            current: Mutex::new((name, info)),
            released: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let refresher = tokio::spawn(refresh_loop(state.clone(), stop_rx));
        RepoLock {
            state,
            stop,
            refresher: Some(refresher),
        }
    }

    /// The current lock object's content.
    pub fn info(&self) -> LockInfo {
        self.state.current.lock().expect("lock state").1.clone()
    }

    /// Succeeds if the lock stays valid for at least `margin` more (by this host's clock).
    ///
    /// # Errors
    /// [`Error::LockLost`] if the last successful refresh was too long ago: another process
    /// may already have treated the lock as stale.
    pub fn ensure_valid(&self, margin: Duration) -> Result<()> {
        self.state.ensure_valid(margin)
    }

    /// A handle that checks this lock's validity from background tasks (a session's index
    /// checkpoints); it does not keep the lock alive.
    pub(crate) fn check(&self) -> LockCheck {
        LockCheck(self.state.clone())
    }

    /// The lock's time to live, as taken.
    pub fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// Stops refreshing and deletes the lock object.
    pub async fn release(mut self) {
        self.state.released.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        if let Some(task) = self.refresher.take() {
            let _ = task.await;
        }
        let name = self.state.current.lock().expect("lock state").0.clone();
        delete_lock(&self.state.repo, &name).await;
        tracing::debug!(lock = %name, "repository lock released");
    }
}

/// Checks a held lock's validity (see [`RepoLock::ensure_valid`]).
#[derive(Clone)]
pub(crate) struct LockCheck(Arc<HeldLock>);

impl LockCheck {
    /// As [`RepoLock::ensure_valid`].
    pub(crate) fn ensure_valid(&self, margin: Duration) -> Result<()> {
        self.0.ensure_valid(margin)
    }

    /// As [`RepoLock::ttl`].
    pub(crate) fn ttl(&self) -> Duration {
        self.0.ttl
    }
}

impl HeldLock {
    fn ensure_valid(&self, margin: Duration) -> Result<()> {
        let info = self.current.lock().expect("lock state").1.clone();
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::TimeDelta::MAX);
        if !self.released.load(Ordering::SeqCst) && info.expires - margin > Utc::now() {
            Ok(())
        } else {
            Err(Error::LockLost {
                location: self.repo.location.clone(),
                kind: info.kind,
                refreshed: info.refreshed,
                expires: info.expires,
            })
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let Some(task) = self.refresher.take() else {
            return; // released
        };
        self.state.released.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let state = self.state.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("lock dropped outside the async runtime: it stays until it expires");
            return;
        };
        let release = handle.spawn(async move {
            let _ = task.await;
            let name = state.current.lock().expect("lock state").0.clone();
            delete_lock(&state.repo, &name).await;
        });
        PENDING_RELEASES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(release);
    }
}

async fn refresh_loop(state: Arc<HeldLock>, mut stop: watch::Receiver<bool>) {
    let every = state.ttl / 6;
    let mut pause = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        let (old, info) = state.current.lock().expect("lock state").clone();
        match write_lock(
            &state.repo,
            &info.holder,
            info.kind,
            info.created,
            state.ttl,
        )
        .await
        {
            Ok((name, new_info)) => {
                *state.current.lock().expect("lock state") = (name, new_info);
                delete_lock(&state.repo, &old).await;
                pause = every;
            }
            Err(e) => {
                tracing::warn!(error = %e, expires = %info.expires, "could not refresh the repository lock; retrying");
                pause = (every / 4).max(Duration::from_millis(100));
            }
        }
    }
}

/// Writes a new lock object; returns its name and content.
async fn write_lock(
    inner: &RepoInner,
    holder: &str,
    kind: LockKind,
    created: DateTime<Utc>,
    ttl: Duration,
) -> Result<(String, LockInfo)> {
    let now = Utc::now();
    let info = LockInfo {
        holder: holder.to_owned(),
        hostname: crate::snapshot::hostname(),
        pid: std::process::id(),
        kind,
        exclusive: kind.is_exclusive(),
        created,
        refreshed: now,
        expires: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::TimeDelta::MAX),
        process_scope: process_scope(),
    };
    let json = serde_json::to_vec(&info).map_err(|e| Error::Internal {
        detail: format!("cannot encode a lock: {e}"),
    })?;
    let bytes = inner.codec.encode(ObjectKind::Lock, &json);
    let name = blake3::hash(&bytes).to_hex().to_string();
    inner
        .put_new(&lock_path(&name), PutPayload::from(Bytes::from(bytes)))
        .await?;
    Ok((name, info))
}

/// Reads a lock object; `Ok(None)` if it is gone.
async fn read_lock(inner: &RepoInner, name: &str) -> Result<Option<LockInfo>> {
    let path = lock_path(name);
    let bytes = match inner.get("lock", &path).await {
        Ok(b) => b,
        Err(Error::MissingObject { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let shown = path.to_string();
    let corrupt = |detail: String| Error::CorruptObject {
        kind: "lock",
        name: shown.clone(),
        detail,
    };
    if blake3::hash(&bytes).to_hex().as_str() != name {
        return Err(corrupt("content does not hash to its name".to_owned()));
    }
    let body = inner.codec.decode(ObjectKind::Lock, &shown, &bytes)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| corrupt(format!("invalid JSON: {e}")))
}

async fn delete_lock(inner: &RepoInner, name: &str) {
    match inner.store.delete(&lock_path(name)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => {
            tracing::warn!(lock = %name, error = %e, "could not delete a lock object; it goes stale on its own")
        }
    }
}

/// Lists `locks/` and returns the first live lock (other than `own`) that conflicts with the
/// one wanted, deleting stale ones on the way.
async fn find_conflict(
    inner: &RepoInner,
    own: &str,
    exclusive: bool,
) -> Result<Option<(String, LockInfo)>> {
    let prefix = Path::from("locks");
    let listed: Vec<object_store::ObjectMeta> = inner
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(Error::backend("list", "locks/"))?;
    let now = Utc::now();
    let mut conflict: Option<(String, LockInfo)> = None;
    for meta in listed {
        let name = meta.location.filename().unwrap_or_default().to_owned();
        if name == own {
            continue;
        }
        let info = match read_lock(inner, &name).await {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            Err(e) => {
                // Perhaps a newer m365bk's lock: respect it as exclusive for the longest
                // lifetime a lock can have.
                let expires =
                    meta.last_modified + chrono::Duration::from_std(MAX_LOCK_TTL).expect("fits");
                tracing::warn!(lock = %meta.location, error = %e, %expires, "unreadable lock object counts as an exclusive lock until it is a day old");
                LockInfo {
                    holder: String::new(),
                    hostname: format!("an unknown host (unreadable lock object: {e})"),
                    pid: 0,
                    kind: LockKind::Prune,
                    exclusive: true,
                    created: meta.last_modified,
                    refreshed: meta.last_modified,
                    expires,
                    process_scope: None,
                }
            }
        };
        match judge(&info, exclusive, now) {
            Verdict::Stale => {
                tracing::info!(
                    lock = %meta.location,
                    kind = %info.kind,
                    host = %info.hostname,
                    pid = info.pid,
                    expires = %info.expires,
                    holder_gone = info.expires > now,
                    "removing a stale lock"
                );
                delete_lock(inner, &name).await;
            }
            Verdict::Compatible => {}
            Verdict::Conflict => {
                // Report an exclusive holder first: it is the one that blocks the longest.
                let better = match &conflict {
                    None => true,
                    Some((_, c)) => info.exclusive && !c.exclusive,
                };
                if better {
                    conflict = Some((meta.location.to_string(), info));
                }
            }
        }
    }
    Ok(conflict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::InitOptions;

    fn info(kind: LockKind, expires_in_secs: i64, now: DateTime<Utc>) -> LockInfo {
        LockInfo {
            holder: "h".into(),
            hostname: "host".into(),
            pid: 1,
            kind,
            exclusive: kind.is_exclusive(),
            created: now,
            refreshed: now,
            expires: now + chrono::Duration::seconds(expires_in_secs),
            process_scope: None,
        }
    }

    #[test]
    fn judge_table() {
        let now = Utc::now();
        use LockKind::*;
        use Verdict::*;
        // (other kind, other expires in s, want exclusive, verdict)
        let table = [
            (Backup, 60, false, Compatible),
            (Backup, 60, true, Conflict),
            (Restore, 1, true, Conflict),
            (Check, 60, false, Compatible),
            (Forget, 60, true, Conflict),
            (Prune, 60, false, Conflict),
            (Prune, 60, true, Conflict),
            (Prune, 0, true, Stale),
            (Prune, -1, false, Stale),
            (Backup, -3600, true, Stale),
        ];
        for (kind, secs, exclusive, want) in table {
            assert_eq!(
                judge(&info(kind, secs, now), exclusive, now),
                want,
                "{kind} expiring in {secs}s, exclusive wanted: {exclusive}"
            );
        }
    }

    async fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().to_str().unwrap(), InitOptions::no_encryption())
            .await
            .unwrap();
        (dir, repo)
    }

    fn lock_files(dir: &tempfile::TempDir) -> usize {
        std::fs::read_dir(dir.path().join("locks"))
            .map(|rd| {
                rd.filter(|e| {
                    !e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains('#')
                })
                .count()
            })
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn shared_locks_coexist_and_exclusive_conflicts_with_them() {
        let (dir, repo) = repo().await;
        let a = repo
            .lock(LockKind::Backup, &LockOptions::default())
            .await
            .unwrap();
        let b = repo
            .lock(LockKind::Check, &LockOptions::default())
            .await
            .unwrap();
        assert_eq!(lock_files(&dir), 2);

        let err = repo
            .lock(LockKind::Prune, &LockOptions::default())
            .await
            .unwrap_err();
        match &err {
            Error::RepositoryLocked {
                wanted,
                holder,
                object,
                ..
            } => {
                assert_eq!(*wanted, LockKind::Prune);
                assert!(matches!(holder.kind, LockKind::Backup | LockKind::Check));
                assert_eq!(holder.pid, std::process::id());
                assert!(object.starts_with("locks/"), "{object}");
            }
            other => panic!("expected RepositoryLocked, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("--lock-wait"), "{text}");
        assert_eq!(
            lock_files(&dir),
            2,
            "the refused prune removed its own lock"
        );

        a.release().await;
        b.release().await;
        assert_eq!(lock_files(&dir), 0);
        let p = repo
            .lock(LockKind::Prune, &LockOptions::default())
            .await
            .unwrap();
        let err = repo
            .lock(LockKind::Backup, &LockOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::RepositoryLocked { holder, .. } if holder.kind == LockKind::Prune && holder.exclusive),
            "{err}"
        );
        let err = repo
            .lock(LockKind::Prune, &LockOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RepositoryLocked { .. }), "{err}");
        p.release().await;
        assert_eq!(lock_files(&dir), 0);
    }

    #[tokio::test]
    async fn waiting_acquirer_gets_the_lock_when_the_holder_releases() {
        let (_dir, repo) = repo().await;
        let backup = repo
            .lock(LockKind::Backup, &LockOptions::default())
            .await
            .unwrap();
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            backup.release().await;
        });
        let started = Instant::now();
        let opts = LockOptions {
            wait: Duration::from_secs(20),
            ..LockOptions::default()
        };
        let prune = repo.lock(LockKind::Prune, &opts).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500));
        releaser.await.unwrap();
        prune.release().await;
    }

    #[tokio::test]
    async fn stale_lock_is_ignored_and_removed() {
        let (dir, repo) = repo().await;
        let short = LockOptions {
            wait: Duration::ZERO,
            ttl: Duration::from_secs(1),
        };
        let crashed = repo.lock(LockKind::Backup, &short).await.unwrap();
        // A crashed holder: no refresh, no release.
        let name = crashed.state.current.lock().unwrap().0.clone();
        let _ = crashed.stop.send(true);
        let mut crashed = crashed;
        crashed.refresher.take().unwrap().await.unwrap();
        drop(crashed); // refresher already taken: Drop deletes nothing
        assert!(dir.path().join("locks").join(&name).exists());

        assert!(matches!(
            repo.lock(LockKind::Prune, &LockOptions::default()).await,
            Err(Error::RepositoryLocked { .. })
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let prune = repo
            .lock(LockKind::Prune, &LockOptions::default())
            .await
            .unwrap();
        assert!(
            !dir.path().join("locks").join(&name).exists(),
            "the stale lock was deleted"
        );
        assert_eq!(lock_files(&dir), 1);
        prune.release().await;
    }

    /// A lock left by a killed process of this host (same boot, same pid namespace) is stale at
    /// once; the same lock claiming another scope waits for its expiry.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn lock_of_a_process_that_is_gone_is_stale_at_once() {
        let (dir, repo) = repo().await;
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let now = Utc::now();
        let plant = |scope: Option<String>| {
            let info = LockInfo {
                pid: dead_pid,
                hostname: crate::snapshot::hostname(),
                process_scope: scope,
                ..info(LockKind::Backup, 1800, now)
            };
            let bytes = repo
                .inner
                .codec
                .encode(ObjectKind::Lock, &serde_json::to_vec(&info).unwrap());
            let name = blake3::hash(&bytes).to_hex().to_string();
            std::fs::create_dir_all(dir.path().join("locks")).unwrap();
            std::fs::write(dir.path().join("locks").join(&name), bytes).unwrap();
            name
        };
        let no_wait = LockOptions {
            wait: Duration::ZERO,
            ..LockOptions::default()
        };

        let elsewhere = plant(Some("another-boot/pid:[1]".into()));
        let err = repo.lock(LockKind::Prune, &no_wait).await.err().unwrap();
        assert!(matches!(err, Error::RepositoryLocked { .. }), "{err}");
        std::fs::remove_file(dir.path().join("locks").join(&elsewhere)).unwrap();

        let ours = plant(process_scope());
        assert!(process_scope().is_some(), "this test runs on Linux");
        let prune = repo.lock(LockKind::Prune, &no_wait).await.unwrap();
        assert!(
            !dir.path().join("locks").join(&ours).exists(),
            "the dead holder's lock was deleted"
        );
        // A live process of this scope (this one) still holds its lock.
        let live = LockInfo {
            pid: std::process::id(),
            hostname: crate::snapshot::hostname(),
            process_scope: process_scope(),
            ..info(LockKind::Backup, 1800, now)
        };
        assert_eq!(judge(&live, true, now), Verdict::Conflict);
        // Pid 1 runs, whoever owns it (kill answers EPERM to a non-root caller): alive.
        let init = LockInfo {
            pid: 1,
            ..live.clone()
        };
        assert_eq!(judge(&init, true, now), Verdict::Conflict);
        // The dead pid under another host name: judged by expiry only.
        let other_host = LockInfo {
            pid: dead_pid,
            hostname: "another-host".into(),
            ..live
        };
        assert_eq!(judge(&other_host, true, now), Verdict::Conflict);
        prune.release().await;
    }

    #[tokio::test]
    async fn holder_refreshes_before_expiry() {
        let (dir, repo) = repo().await;
        let opts = LockOptions {
            wait: Duration::ZERO,
            ttl: Duration::from_millis(1200),
        };
        let held = repo.lock(LockKind::Backup, &opts).await.unwrap();
        let first = held.info();
        // Three lifetimes: without refresh the lock would have gone stale long ago.
        tokio::time::sleep(Duration::from_millis(3600)).await;
        let now = held.info();
        assert_eq!(now.holder, first.holder);
        assert_eq!(now.created, first.created);
        assert!(now.expires > first.expires + chrono::Duration::seconds(2));
        held.ensure_valid(Duration::from_millis(100)).unwrap();
        assert_eq!(
            lock_files(&dir),
            1,
            "each refresh deleted the object it replaced"
        );
        // A prune still sees the live lock.
        assert!(matches!(
            repo.lock(LockKind::Prune, &LockOptions::default()).await,
            Err(Error::RepositoryLocked { .. })
        ));
        let listed = repo.list_locks().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1.holder, first.holder);
        drop(held);
        finish_lock_releases().await;
        assert_eq!(lock_files(&dir), 0, "dropping the lock deleted it");
    }

    #[tokio::test]
    async fn lost_lock_is_detected() {
        let (_dir, repo) = repo().await;
        let opts = LockOptions {
            wait: Duration::ZERO,
            ttl: Duration::from_secs(1),
        };
        let held = repo.lock(LockKind::Backup, &opts).await.unwrap();
        held.ensure_valid(Duration::from_millis(100)).unwrap();
        let err = held.ensure_valid(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::LockLost { .. }), "{err}");
        held.release().await;
    }

    #[tokio::test]
    async fn simultaneous_exclusive_acquirers_never_both_win() {
        let (_dir, repo) = repo().await;
        let opts = LockOptions::default();
        for _ in 0..10 {
            let (a, b) = tokio::join!(
                repo.lock(LockKind::Prune, &opts),
                repo.lock(LockKind::Prune, &opts)
            );
            assert!(
                !(a.is_ok() && b.is_ok()),
                "two exclusive locks were granted at once"
            );
            for l in [a, b].into_iter().flatten() {
                l.release().await;
            }
        }
    }
}
