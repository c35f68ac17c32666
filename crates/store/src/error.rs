//! The crate's one error type.

/// Result alias used throughout the storage core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage core.
///
/// Each message names the object and says what to do about it, so the CLI can print it as is.
/// Object kinds are `"config"`, `"pack"`, `"index"`, `"snapshot"`, `"blob"`, `"key"`.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// No `config` object at the location.
    #[error(
        "no m365bk repository at {location}: run `m365bk init` first, or fix repository.url in the config"
    )]
    RepositoryNotFound {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
    },

    /// `init` found a `config` object already there.
    #[error(
        "an m365bk repository already exists at {location}: use it as it is, or choose an empty location to create a new one"
    )]
    RepositoryExists {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
    },

    /// The location is not a filesystem path, `file://`, `s3://`, `az://`/`azure://` or `gs://`
    /// URL, or is malformed.
    #[error(
        "cannot use {location:?} as a repository location ({detail}): give a filesystem path, file:///PATH, s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX in repository.url"
    )]
    UnsupportedLocation {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
        /// Why it was rejected.
        detail: String,
    },

    /// A cloud backend cannot be set up from the settings: an unknown, secret or reserved
    /// option in `[repository.options]`, an unreadable credential file, or settings its builder
    /// refuses (no account name for Azure, say). Nothing was sent.
    #[error("cannot set up the {backend} backend for {location}: {detail}. To fix: {hint}; options go in [repository.options] (see config/m365bk.example.toml)")]
    BackendConfig {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
        /// Its backend.
        backend: crate::Backend,
        /// What is wrong.
        detail: String,
        /// Where the settings and credentials come from.
        hint: &'static str,
    },

    /// The bucket or container a location names does not exist (or the credentials cannot
    /// see it). m365bk never creates buckets: that needs more rights than a backup should hold.
    #[error(
        "the {noun} {container:?} of repository {location} does not exist, or these credentials cannot see it: create it first (aws s3 mb s3://NAME, az storage container create --name NAME, gcloud storage buckets create gs://NAME), or fix repository.url"
    )]
    ContainerNotFound {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
        /// `"bucket"` or `"container"`.
        noun: &'static str,
        /// Its name.
        container: String,
    },

    /// The backend refused the request: credentials missing, wrong or without permission
    /// (HTTP 401/403, or a local permission error).
    #[error(
        "the storage backend refused to {operation} {name} ({source}): the credentials are missing or wrong, or may not {operation} in this bucket, container or directory. Check them: $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY for s3://, $AZURE_STORAGE_ACCOUNT_NAME/$AZURE_STORAGE_ACCOUNT_KEY for az://, $GOOGLE_SERVICE_ACCOUNT for gs:// (or the systemd credentials named in the README), the directory's owner and mode for a local path"
    )]
    AccessDenied {
        /// `"read"`, `"write"`, `"list"`, `"stat"`, `"delete"`.
        operation: &'static str,
        /// Object name or prefix.
        name: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },

    /// The repository is encrypted and no passphrase was given.
    #[error(
        "repository {location} is encrypted and no passphrase was given: set repository.passphrase_file (a file of mode 0600 holding it), $M365BK_PASSPHRASE, or a systemd credential named repository-passphrase"
    )]
    PassphraseRequired {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
    },

    /// The passphrase opens none of the repository's key slots. Nothing was read or written.
    #[error(
        "the passphrase does not open any key slot of repository {location}: check repository.passphrase_file / $M365BK_PASSPHRASE"
    )]
    WrongPassphrase {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
    },

    /// The repository is encrypted, but no key slot under `keys/` can be read.
    #[error(
        "repository {location} is encrypted but has no readable key slot under keys/, so no passphrase can open it: restore keys/ from a copy of the repository"
    )]
    NoKeySlot {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
    },

    /// A key operation on a repository made without encryption.
    #[error(
        "repository {location} is not encrypted (it was created with `m365bk init --no-encryption`), so it has no key slots"
    )]
    NotEncrypted {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
    },

    /// No key slot with this id or prefix.
    #[error("no key slot {id} in the repository: run `m365bk key list` to list the key ids")]
    KeyNotFound {
        /// The id or prefix asked for.
        id: String,
    },

    /// A key id prefix matches more than one key slot.
    #[error("key id prefix {prefix:?} matches {matches} key slots: give more hex digits")]
    AmbiguousKeyId {
        /// The prefix asked for.
        prefix: String,
        /// How many slots it matches.
        matches: usize,
    },

    /// Removing this key slot would leave the repository without any.
    #[error(
        "key slot {id} is the repository's only one, and without it nothing could open the repository: add another with `m365bk key add` first, or change its passphrase with `m365bk key passwd`"
    )]
    LastKey {
        /// The slot.
        id: crate::KeyId,
    },

    /// The key slot to remove is the one the given passphrase opened.
    #[error(
        "key slot {id} is the one the given passphrase opened: to remove it, run the command with another key slot's passphrase, or change this one's passphrase with `m365bk key passwd`"
    )]
    KeyInUse {
        /// The slot.
        id: crate::KeyId,
    },

    /// Argon2id parameters out of range.
    #[error("invalid key derivation parameters: {detail}")]
    InvalidKdfParams {
        /// What is wrong.
        detail: String,
    },

    /// A new passphrase was empty.
    #[error("an empty passphrase is not allowed: choose a long one (a few random words)")]
    EmptyPassphrase,

    /// An object was written by a newer format version.
    #[error(
        "{kind} {name} has format version {found}, but this m365bk reads versions up to {supported}: upgrade m365bk"
    )]
    UnsupportedVersion {
        /// Object kind.
        kind: &'static str,
        /// Object name (path in the repository).
        name: String,
        /// Version found in the object's header.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },

    /// An object uses an encoding (e.g. encryption envelope) this build does not know.
    #[error("{kind} {name} uses {detail}, which this m365bk cannot read: upgrade m365bk")]
    UnsupportedEncoding {
        /// Object kind.
        kind: &'static str,
        /// Object name (path in the repository).
        name: String,
        /// What was found.
        detail: String,
    },

    /// An object's bytes do not match what it claims to be.
    #[error(
        "{kind} {name} is corrupt ({detail}): run `m365bk check --read-data` to list affected snapshots; restore those items from an earlier snapshot"
    )]
    CorruptObject {
        /// Object kind.
        kind: &'static str,
        /// Object name (path in the repository).
        name: String,
        /// What is wrong.
        detail: String,
    },

    /// An object the index or a snapshot refers to is absent.
    #[error(
        "{kind} {name} is missing from the repository: run `m365bk check` to list affected snapshots; restore those items from another snapshot"
    )]
    MissingObject {
        /// Object kind.
        kind: &'static str,
        /// Object name (path in the repository, or blob id).
        name: String,
    },

    /// A blob a snapshot refers to is listed in no index file.
    #[error(
        "blob {id} is in no index file (an index file is missing, the backup that wrote it crashed before its index, or `m365bk repair index` dropped it as damaged): run `m365bk check` to list affected snapshots"
    )]
    BlobNotIndexed {
        /// The blob's id.
        id: crate::BlobId,
    },

    /// No snapshot with this id or prefix.
    #[error("no snapshot {id} in the repository: run `m365bk snapshots` to list the snapshot ids")]
    SnapshotNotFound {
        /// The id or prefix asked for.
        id: String,
    },

    /// A snapshot id prefix matches more than one snapshot.
    #[error("snapshot id prefix {prefix:?} matches {matches} snapshots: give more hex digits")]
    AmbiguousSnapshotId {
        /// The prefix asked for.
        prefix: String,
        /// How many snapshots it matches.
        matches: usize,
    },

    /// Text that should be an id is not.
    #[error("{input:?} is not a valid {kind} id: expected {expected}")]
    InvalidId {
        /// Id kind.
        kind: &'static str,
        /// The text given.
        input: String,
        /// What an id looks like.
        expected: &'static str,
    },

    /// The storage backend (object_store) failed.
    #[error(
        "storage backend failed to {operation} {name}: {source}; check that the repository location is reachable and writable, then retry"
    )]
    Backend {
        /// `"read"`, `"write"`, `"list"`, `"stat"`, `"delete"`.
        operation: &'static str,
        /// Object name or prefix.
        name: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },

    /// SQLite failed.
    #[error(
        "catalog {path} failed: {source}; the catalog is only a cache: if this persists, delete the file and run `m365bk repair catalog`"
    )]
    Catalog {
        /// Catalog file.
        path: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// The catalog file was written by a newer m365bk.
    #[error(
        "catalog {path} has schema version {found}, but this m365bk knows up to {supported}: upgrade m365bk, or delete the file and run `m365bk repair catalog`"
    )]
    CatalogVersion {
        /// Catalog file.
        path: String,
        /// Schema version found.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },

    /// Local filesystem error outside object_store (creating the repository directory, the
    /// catalog's directory).
    #[error("cannot use {path}: {source}; check that the path exists and is writable")]
    Io {
        /// The path concerned.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A pack upload of this backup session failed, so content already handed out may refer to
    /// data that never reached the repository.
    #[error(
        "this backup session cannot commit any more snapshots ({detail}): start a new backup; snapshots committed earlier are intact"
    )]
    SessionFailed {
        /// The first failure.
        detail: String,
    },

    /// Another process holds a lock that conflicts with the one asked for, and it was still
    /// live when the wait ran out.
    #[error(
        "repository {location} is locked: {kind} lock ({mode}) held by pid {pid} on {hostname} since {since}, valid until {expires} unless refreshed ({object}); this {wanted} cannot run beside it: retry when it has finished, or give --lock-wait SECONDS to wait for it; if that process is gone, its lock is ignored at once by m365bk on that host, and by others from {expires}",
        kind = holder.kind,
        mode = if holder.exclusive { "exclusive" } else { "shared" },
        pid = holder.pid,
        hostname = holder.hostname,
        since = holder.created.format("%Y-%m-%d %H:%M:%S UTC"),
        expires = holder.expires.format("%Y-%m-%d %H:%M:%S UTC"),
    )]
    RepositoryLocked {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
        /// The lock that was asked for.
        wanted: crate::LockKind,
        /// The conflicting lock object (`locks/…`).
        object: String,
        /// What that lock object says.
        holder: Box<crate::LockInfo>,
    },

    /// A held lock could not be refreshed in time, so other processes may treat it as stale.
    #[error(
        "the {kind} lock on repository {location} was last refreshed at {refreshed} and expires at {expires}: a prune may run once it has expired, so this {kind} stops before writing anything that could refer to data prune deletes; check that the repository is reachable, then run it again"
    )]
    LockLost {
        /// The location: a local directory as its absolute path, a cloud URL as given.
        location: String,
        /// What the lock was for.
        kind: crate::LockKind,
        /// When the lock object was last written.
        refreshed: chrono::DateTime<chrono::Utc>,
        /// When it goes stale.
        expires: chrono::DateTime<chrono::Utc>,
    },

    /// `prune` found the repository in a state where deleting anything could lose data.
    #[error("prune stopped before deleting anything: {detail}")]
    PruneRefused {
        /// What is wrong.
        detail: String,
    },

    /// A `forget` policy that would keep nothing was given.
    #[error("{detail}")]
    InvalidPolicy {
        /// What is wrong, and what to give instead.
        detail: String,
    },

    /// A bug: a worker thread panicked or an invariant broke.
    #[error("internal error in the m365bk storage core ({detail}): please report this as a bug")]
    Internal {
        /// What happened.
        detail: String,
    },
}

impl Error {
    /// What is wrong, without the advice on what to run next that the display text ends with:
    /// for `check`, whose report is that advice's answer (its lines would otherwise tell the
    /// operator to run `m365bk check`). The same as the display text for errors without
    /// advice.
    pub fn cause(&self) -> String {
        match self {
            Error::CorruptObject { kind, name, detail } => {
                format!("{kind} {name} is corrupt ({detail})")
            }
            Error::MissingObject { kind, name } => {
                format!("{kind} {name} is missing from the repository")
            }
            Error::BlobNotIndexed { id } => format!(
                "blob {id} is in no index file (an index file is missing, the backup that wrote it crashed before its index, or `m365bk repair index` dropped it as damaged)"
            ),
            other => other.to_string(),
        }
    }

    /// True if retrying the same operation later may succeed (a backend hiccup), false if the
    /// repository, its objects or the input are wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Error::Catalog { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }

    pub(crate) fn backend(
        operation: &'static str,
        name: impl Into<String>,
    ) -> impl FnOnce(object_store::Error) -> Error {
        let name = name.into();
        move |source| match source {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::AccessDenied {
                operation,
                name,
                source,
            },
            source if matches!(http_status(&source), Some(401 | 403)) => Error::AccessDenied {
                operation,
                name,
                source,
            },
            source => Error::Backend {
                operation,
                name,
                source,
            },
        }
    }

    pub(crate) fn join(err: tokio::task::JoinError) -> Error {
        Error::Internal {
            detail: format!("background task failed: {err}"),
        }
    }
}

/// The HTTP status of a cloud request that failed with one, when object_store reports it only
/// inside a `Generic` error (its list requests do: the `RetryError` carrying the status is
/// private). Read from the message object_store 0.14 gives it, "Server returned non-2xx status
/// code: 403 Forbidden: …", anywhere in the source chain.
pub(crate) fn http_status(err: &object_store::Error) -> Option<u16> {
    const MARK: &str = "non-2xx status code: ";
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if let Some(at) = text.find(MARK) {
            let digits: String = text[at + MARK.len()..].chars().take(3).collect();
            if let Ok(code) = digits.parse() {
                return Some(code);
            }
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cause` is the display text without its advice: the two are written out separately, so
    /// this catches one changed without the other.
    #[test]
    fn cause_is_the_start_of_the_display_text() {
        let errors = [
            Error::CorruptObject {
                kind: "pack",
                name: "data/ab/abcd".into(),
                detail: "blob x fails authentication".into(),
            },
            Error::MissingObject {
                kind: "pack",
                name: "data/ab/abcd".into(),
            },
            Error::BlobNotIndexed {
                id: crate::BlobId::from_bytes([7; 32]),
            },
        ];
        for e in errors {
            let (cause, shown) = (e.cause(), e.to_string());
            assert!(shown.starts_with(&cause), "{shown:?} vs {cause:?}");
            assert!(
                shown.len() > cause.len() + 10,
                "the display text adds advice: {shown}"
            );
            assert!(!cause.contains("run `m365bk"), "{cause}");
        }
    }
}
