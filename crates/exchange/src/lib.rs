//! The Exchange Online worker: backup and restore of user mailboxes through Microsoft Graph.
//!
//! [`backup_mailbox`] reads one mailbox into a [`SnapshotDraft`]: every `mailFolder`
//! (recursively), each `message`'s MIME (`GET /users/{id}/messages/{id}/$value`) plus its Graph
//! metadata, contacts, calendar events and mailbox settings, depending on the job's selected
//! item types. It is incremental through per-folder delta queries
//! (https://learn.microsoft.com/graph/delta-query-messages): with a parent snapshot, only
//! messages the delta reports as new or changed are downloaded, removed ones drop out, and
//! everything else is carried over, so every snapshot is a complete view of the mailbox.
//!
//! [`restore_mailbox`] writes items of a snapshot to the same or another mailbox, into a new
//! folder `Restored-<timestamp>` (messages from MIME, contacts, events).
//!
//! Both take an [`AuthorizedJob`]: a job that skipped the gate cannot reach Graph here.

mod backup;
mod restore;

pub use backup::{backup_mailbox, BackupOptions, ParentSnapshot};
pub use restore::{restore_mailbox, RestoreOptions, RestoreReport};

/// Item kinds this worker writes into snapshots.
pub mod kind {
    /// A `mailFolder`; `path` is its display-name path, e.g. `Inbox/Projects`.
    pub const MAIL_FOLDER: &str = "mailFolder";
    /// A `message`; content = its MIME, metadata = its Graph properties.
    pub const MESSAGE: &str = "message";
    /// A `contactFolder`.
    pub const CONTACT_FOLDER: &str = "contactFolder";
    /// A `contact`; metadata = its Graph properties (no content).
    pub const CONTACT: &str = "contact";
    /// An `event` of the mailbox's calendar view; metadata = its Graph properties.
    pub const EVENT: &str = "event";
    /// The user's `mailboxSettings`.
    pub const MAILBOX_SETTINGS: &str = "mailboxSettings";
}

/// Result alias for this worker.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a mailbox backup or restore.
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
