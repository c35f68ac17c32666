//! The OneDrive for Business worker: backup and restore of users' drives through Microsoft
//! Graph.
//!
//! [`backup_drive`] reads one user's drive into a [`m365bk_store::SnapshotDraft`] through the
//! driveItem delta query (https://learn.microsoft.com/graph/api/driveitem-delta): the first
//! run enumerates every folder and file, later runs resume from the stored deltaLink and only
//! download files whose content changed (`cTag`); deleted items (the `deleted` facet) drop
//! out, and paths are rebuilt from `parentReference.id` (OneDrive for Business does not return
//! paths in delta responses). Content is streamed from the pre-authenticated download URL
//! straight into the repository.
//!
//! [`restore_drive`] writes files and folders of a snapshot to the same or another user's
//! drive under `Restored-<timestamp>/`, small files by simple upload, large ones through an
//! upload session.

mod backup;
mod restore;

pub use backup::{backup_drive, BackupOptions, ParentSnapshot};
pub use restore::{restore_drive, RestoreOptions, RestoreReport};

/// Item kinds this worker writes into snapshots.
pub mod kind {
    /// A folder `driveItem`; `path` is relative to the drive root, e.g. `Documents/Reports`.
    pub const FOLDER: &str = "folder";
    /// A file `driveItem`; content = its bytes, metadata = its Graph properties.
    pub const FILE: &str = "file";
}

/// Result alias for this worker.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a drive backup or restore.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Graph request failed after the client's retries.
    #[error("{context}: {source}")]
    Graph {
        /// What the worker was doing.
        context: String,
        /// The Graph failure.
        #[source]
        source: m365bk_graph::Error,
    },
    /// The repository failed.
    #[error("{context}: {source}")]
    Store {
        /// What the worker was doing.
        context: String,
        /// The storage failure.
        #[source]
        source: m365bk_store::Error,
    },
    /// Graph returned something this worker cannot use.
    #[error("unexpected Graph response for {what}: {detail}")]
    Unexpected {
        /// The resource.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The restored content differs in size from the snapshot's record.
    #[error("restoring {path}: the repository returned {actual} bytes, the snapshot records {expected}: run `m365bk check --read-data`")]
    SizeMismatch {
        /// Item path.
        path: String,
        /// Bytes recorded in the snapshot.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
}

impl Error {
    pub(crate) fn graph(context: impl Into<String>) -> impl FnOnce(m365bk_graph::Error) -> Error {
        let context = context.into();
        move |source| Error::Graph { context, source }
    }
    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(m365bk_store::Error) -> Error {
        let context = context.into();
        move |source| Error::Store { context, source }
    }
}
