//! Command-line options, parsed without I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// m365bk: gated, incremental, deduplicating backup of Microsoft 365.
#[derive(Debug, Parser)]
#[command(name = "m365bk", version, about, long_about = None)]
pub struct Opts {
    /// Configuration file (TOML; see config/m365bk.example.toml).
    #[arg(
        long,
        short,
        global = true,
        env = "M365BK_CONFIG",
        default_value = "/etc/m365bk/m365bk.toml"
    )]
    pub config: PathBuf,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print results as JSON on standard output.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per event (for journald/log shippers).
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository at `repository.url`.
    Init,
    /// Back up a service's resources into a new snapshot per resource.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots {
        /// Only snapshots of this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// List the items of a snapshot.
    Ls {
        /// Snapshot id (or unique prefix).
        snapshot: String,
    },
    /// Restore items of a snapshot to the same or another user, into a new folder.
    Restore(RestoreArgs),
    /// Work with the permissions a job needs.
    Permissions {
        /// What to do.
        #[command(subcommand)]
        command: PermissionsCommand,
    },
    /// Verify the repository's structure (and with --read-data, every blob's hash).
    Check {
        /// Read and re-hash every blob.
        #[arg(long)]
        read_data: bool,
    },
    /// Repair derived state.
    Repair {
        /// What to repair.
        #[command(subcommand)]
        command: RepairCommand,
    },
}

/// Which users a job covers.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct UserArgs {
    /// A user (principal name or object id); repeat for several.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Every user in the directory.
    #[arg(long)]
    pub all_users: bool,
}

/// `m365bk backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Service to back up: exchange or onedrive.
    #[arg(long)]
    pub service: String,
    /// Resources.
    #[command(flatten)]
    pub users: UserArgs,
    /// Exchange item types (comma-separated): mail, calendar, contacts, mailbox_settings, onenote. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub items: Vec<String>,
}

/// `m365bk restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id (or unique prefix).
    pub snapshot: String,
    /// Target user (principal name or object id). Default: the snapshot's own user.
    #[arg(long)]
    pub to_user: Option<String>,
    /// Only items under this path (e.g. `Inbox/Projects`, `Documents/Reports`); repeatable.
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Name of the folder created for the restored items. Default: `Restored-<UTC timestamp>`.
    #[arg(long)]
    pub folder_name: Option<String>,
}

/// `m365bk permissions …`.
#[derive(Debug, Subcommand)]
pub enum PermissionsCommand {
    /// Get the job's tokens and report which of its permissions are granted (no data request).
    Check {
        /// Service: exchange, group_mailbox, onedrive, sharepoint, teams.
        #[arg(long)]
        service: String,
        /// Operation: discovery, backup, recovery.
        #[arg(long)]
        operation: String,
        /// Exchange item types (comma-separated). Default: all.
        #[arg(long, value_delimiter = ',')]
        items: Vec<String>,
        /// Conditional job variants to include (e.g. item_attachment, certificate_auth).
        #[arg(long = "condition")]
        conditions: Vec<String>,
    },
    /// Print the permission matrix (what to grant, per service and operation).
    List,
}

/// `m365bk repair …`.
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the SQLite catalog from the repository alone.
    Catalog,
}
