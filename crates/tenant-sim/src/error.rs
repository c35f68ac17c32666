//! The crate's error type: everything that can stop the simulator from starting.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tenant config file could not be read.
    #[error("cannot read tenant config {path}: {source}")]
    ConfigRead {
        /// The file named by `--tenant-config`.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The tenant config is not valid TOML for [`crate::TenantConfig`] or breaks a rule.
    #[error("invalid tenant config{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// What is wrong and what to change.
        message: String,
    },
    /// A corpus file or directory could not be read.
    #[error("cannot read corpus entry {path}: {source}")]
    CorpusRead {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A corpus entry has content the simulator cannot use.
    #[error("invalid corpus entry {path}: {message}")]
    Corpus {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The listen address is not a loopback address; the simulator has no authentication of
    /// its own admin API and must never be reachable from another machine.
    #[error("refusing to listen on {addr}: the simulator binds loopback addresses only (use 127.0.0.1:PORT)")]
    NotLoopback {
        /// The address that was asked for.
        addr: SocketAddr,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A background task (seeding) failed to run to completion.
    #[error("internal task failed: {message}")]
    Task {
        /// The join error's text.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
