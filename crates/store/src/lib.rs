//! The m365bk storage core: a deduplicating, compressing backup repository on an object store,
//! and the SQLite catalog that caches it.
//!
//! - [`Repository`]: [`init`](Repository::init) / [`open`](Repository::open) a repository
//!   at a [`Location`] (a local directory, `file://`, `s3://`, `az://` or `gs://` URL, with
//!   [`BackendOptions`]; any [`object_store::ObjectStore`] via [`Repository::open_with_store`]),
//!   list and read snapshots, [`check`](Repository::check) it.
//!   Encrypted by default ([`InitOptions`], [`Encryption`]): every object sealed with
//!   XChaCha20-Poly1305 under a random master key that key slots wrap, one per passphrase,
//!   with Argon2id ([`KdfParams`]); [`Repository::add_key`], [`Repository::list_keys`],
//!   [`Repository::remove_key`], [`Repository::change_passphrase`] manage them.
//! - [`BackupWriter`]: one backup session. Each item's content goes through a
//!   [`ContentWriter`], which cuts it into content-defined chunks (FastCDC v2020, 64 KiB min,
//!   256 KiB average, 2 MiB max), names each chunk by its keyed BLAKE3 hash ([`BlobId`]),
//!   stores only chunks the repository lacks (zstd-compressed when that helps) in 16 MiB pack
//!   files, and returns a [`ContentRef`]. [`BackupWriter::commit_snapshot`] then writes an
//!   index file and a [`Snapshot`] listing the resource's [`Item`]s.
//! - [`Catalog`]: snapshots, items and job runs in SQLite, rebuildable from the repository.
//! - Maintenance: [`Repository::lock`] takes a shared or exclusive [`RepoLock`] (lock objects
//!   under `locks/`, refreshed while held, stale after their expiry); backups hold a shared
//!   one. [`Repository::forget`] applies a retention policy ([`ForgetOptions`],
//!   [`ForgetPlan`]); [`Repository::prune`] deletes unused data and repacks sparse packs under
//!   the exclusive lock ([`PruneOptions`], [`PruneReport`]).
//!
//! The on-disk format is described in `docs/repository-format.md`.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::TryStreamExt;
//! use m365bk_store::{
//!     Cipher, Encryption, InitOptions, Item, KdfParams, Repository, SecretString, SnapshotDraft,
//! };
//!
//! let dir = tempfile::tempdir()?;
//! let location = dir.path().to_str().unwrap();
//! let passphrase = SecretString::from("correct horse battery staple");
//! let repo = Repository::init(location, InitOptions {
//!     encryption: Encryption::Passphrase(passphrase.clone()),
//!     // Cheap key derivation keeps this example fast; real repositories use the default,
//!     // KdfParams::RECOMMENDED (64 MiB, 3 iterations).
//!     kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
//!     cipher: Cipher::Xaes256Gcm,
//! }).await?;
//!
//! let backup = repo.begin_backup().await?;
//! let mut writer = backup.content_writer();
//! writer.write(b"Subject: hello\r\n\r\n").await?;
//! writer.write(b"Hi there").await?;
//! let content = writer.finish().await?;
//! let snapshot = backup
//!     .commit_snapshot(SnapshotDraft {
//!         service: "exchange".into(),
//!         resource_id: "adele@contoso.com".into(),
//!         items: vec![Item {
//!             kind: "message".into(),
//!             id: "AAMk1".into(),
//!             parent_id: None,
//!             path: "Inbox/hello.eml".into(),
//!             change_key: None,
//!             size: content.size,
//!             modified: None,
//!             metadata: serde_json::json!({}),
//!             content: Some(content),
//!         }],
//!         ..Default::default()
//!     })
//!     .await?;
//! backup.finish().await?;
//!
//! let repo = Repository::open(location, Some(passphrase)).await?;
//! let found = repo.find_snapshot(&snapshot.id.to_string()[..8]).await?;
//! let items = repo.load_items(&found).await?;
//! let bytes: Vec<bytes::Bytes> = repo
//!     .read_content(items[0].content.as_ref().unwrap())
//!     .try_collect()
//!     .await?;
//! assert_eq!(bytes.concat(), b"Subject: hello\r\n\r\nHi there");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod backup;
mod blob;
mod bulk_read;
mod catalog;
mod check;
mod chunker;
mod compute;
mod config;
mod crypto;
mod error;
mod filter;
mod forget;
mod format;
mod id;
mod index;
mod index_cache;
mod keys;
mod location;
mod lock;
mod malloc;
mod pack;
mod prune;
mod repair;
mod repository;
mod snapshot;

#[doc(hidden)]
pub mod bench_api;

pub use backup::{BackupWriter, ContentWriter, IndexCheckpoint, WriteStats};
pub use bulk_read::ContentPiece;
pub use catalog::{
    Catalog, DeltaPageRow, ItemJournal, ItemRow, JobRun, SnapshotRow, StoredItem, SyncStats,
};
pub use check::{AffectedItem, CheckOptions, CheckProblem, CheckReport, MAX_AFFECTED_ITEMS};
pub use crypto::Cipher;
pub use error::{Error, Result};
pub use forget::{ForgetGroup, ForgetOptions, ForgetPlan, ForgetReport, PlannedSnapshot};
pub use id::{BlobId, IndexId, KeyId, PackId, SnapshotId};
pub use index::default_cache_dir;
#[doc(hidden)]
pub use index::BenchBlob;
pub use keys::{KdfParams, KeyInfo};
pub use location::{Backend, BackendOptions, Location, RetryOptions, CREDENTIAL_FILES};
pub use lock::{
    finish_lock_releases, LockInfo, LockKind, LockOptions, RepoLock, DEFAULT_LOCK_TTL,
    MAX_LOCK_TTL, MIN_LOCK_TTL,
};
pub use malloc::limit_malloc_arenas;
pub use prune::{PruneOptions, PruneReport, DEFAULT_MAX_UNUSED_PERCENT};
pub use repair::{DamagedPack, RepairReport};
pub use repository::{
    Encryption, InitOptions, RepoStats, Repository, SnapshotScan, UnreadableSnapshot,
};
/// Passphrases are passed as `secrecy`'s `SecretString` (zeroed on drop, redacted in `Debug`).
pub use secrecy::SecretString;
pub use snapshot::{ContentRef, Item, SkippedItem, Snapshot, SnapshotDraft};

/// One kibibyte, in bytes.
pub const KIB: u64 = 1024;
/// One mebibyte, in bytes.
pub const MIB: u64 = 1024 * KIB;
