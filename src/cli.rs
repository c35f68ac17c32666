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
    /// Create a new repository at `repository.url`, encrypted with the repository passphrase
    /// (repository.passphrase_file, $M365BK_PASSPHRASE or the systemd credential
    /// repository-passphrase).
    Init(InitArgs),
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
    /// Manage the repository's key slots (one per passphrase).
    Key {
        /// What to do.
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `m365bk init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Store everything in plaintext: anyone who can read the repository can read the backups.
    #[arg(long)]
    pub no_encryption: bool,
    /// Key derivation cost of the first key slot.
    #[command(flatten)]
    pub kdf: KdfArgs,
}

/// Argon2id cost of a new key slot. The defaults (64 MiB, 3 iterations, 4 lanes; RFC 9106)
/// are for real use; lower values are for tests only, and m365bk logs a warning when it makes
/// or opens a key slot with them.
#[derive(Debug, Args)]
pub struct KdfArgs {
    /// Argon2id memory, in KiB [default: 65536].
    #[arg(long, env = "M365BK_KDF_MEMORY_KIB", value_name = "KIB")]
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id iterations [default: 3].
    #[arg(long, env = "M365BK_KDF_ITERATIONS", value_name = "N")]
    pub kdf_iterations: Option<u32>,
    /// Argon2id lanes [default: 4].
    #[arg(long, env = "M365BK_KDF_PARALLELISM", value_name = "N")]
    pub kdf_parallelism: Option<u32>,
}

/// Where a new passphrase comes from (never the command line itself).
#[derive(Debug, Args)]
pub struct NewPassphraseArgs {
    /// File holding the new passphrase (mode 0600); default: $M365BK_NEW_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

/// `m365bk key …`. Each opens the repository with the current passphrase first.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a key slot for a new passphrase; the current one keeps working.
    Add {
        /// The new passphrase.
        #[command(flatten)]
        new: NewPassphraseArgs,
        /// Key derivation cost of the new slot.
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// List the key slots.
    List,
    /// Remove a key slot (not the last one, nor the one the current passphrase opens).
    Remove {
        /// Key slot id, or a unique prefix of at least 4 hex digits (`m365bk key list`).
        id: String,
    },
    /// Change the current passphrase: add a slot for the new one, then remove the current slot.
    Passwd {
        /// The new passphrase.
        #[command(flatten)]
        new: NewPassphraseArgs,
        /// Key derivation cost of the new slot.
        #[command(flatten)]
        kdf: KdfArgs,
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
