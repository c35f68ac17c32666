//! Command-line options, parsed without I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use m365bk_store::Cipher;

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
    /// Seconds to wait while another process holds a conflicting repository lock (a prune
    /// excludes everything else); after that, exit with code 11.
    #[arg(
        long,
        global = true,
        env = "M365BK_LOCK_WAIT",
        value_name = "SECONDS",
        default_value_t = 0
    )]
    pub lock_wait: u64,
    /// Seconds a repository lock stays valid if its holder stops refreshing it (a crash); the
    /// holder refreshes it every sixth of this. Clocks of hosts sharing a repository must agree
    /// to well within it.
    #[arg(
        long,
        global = true,
        env = "M365BK_LOCK_TTL",
        value_name = "SECONDS",
        default_value_t = 1800,
        value_parser = clap::value_parser!(u64).range(1..=86400)
    )]
    pub lock_ttl: u64,
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
        #[arg(long, value_parser = service_name)]
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
        /// Read and re-hash only a random PERCENT of the packs (1-100, e.g. `10` or `10%`),
        /// drawn afresh on every run; implies --read-data.
        #[arg(long, value_name = "PERCENT", value_parser = parse_subset_percent)]
        read_data_subset: Option<u8>,
    },
    /// Repair derived state.
    Repair {
        /// What to repair.
        #[command(subcommand)]
        command: RepairCommand,
    },
    /// Delete snapshots that a retention policy does not keep (per service and resource);
    /// `prune` then frees their data.
    Forget(ForgetArgs),
    /// Delete data no snapshot refers to and repack sparse packs (takes the exclusive lock).
    Prune(PruneArgs),
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
    /// The cipher every object is sealed with: xaes-256-gcm (fastest on CPUs with AES
    /// instructions: x86-64 since 2010, ARMv8 with Crypto Extensions) or xchacha20-poly1305
    /// (for CPUs without them). Fixed for the repository's lifetime.
    #[arg(long, value_name = "CIPHER", default_value = "xaes-256-gcm", value_parser = parse_cipher, conflicts_with = "no_encryption")]
    pub cipher: Cipher,
    /// Key derivation cost of the first key slot.
    #[command(flatten)]
    pub kdf: KdfArgs,
}

/// An item type name, checked while the command line is parsed (so a typo is a usage error,
/// exit 2, like any other bad argument).
fn item_type(s: &str) -> Result<String, String> {
    s.parse::<m365bk_gate::ItemType>()?;
    Ok(s.to_owned())
}

/// A service name, checked while the command line is parsed, in its canonical spelling
/// (`group-mailbox` becomes `group_mailbox`, as snapshots record it).
fn service_name(s: &str) -> Result<String, String> {
    Ok(s.parse::<m365bk_gate::Service>()?.as_str().to_owned())
}

fn parse_cipher(s: &str) -> Result<Cipher, String> {
    Cipher::from_name(s).ok_or_else(|| {
        format!(
            "unknown cipher {s:?}: use {} or {}",
            Cipher::Xaes256Gcm,
            Cipher::XChaCha20Poly1305
        )
    })
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
    #[arg(long, value_parser = service_name)]
    pub service: String,
    /// Resources.
    #[command(flatten)]
    pub users: UserArgs,
    /// Exchange item types (comma-separated): mail, calendar, contacts, mailbox_settings, onenote. Default: all.
    #[arg(long, value_delimiter = ',', value_parser = item_type)]
    pub items: Vec<String>,
    /// Tag the new snapshots (repeatable); `forget --keep-tag`/`--tag` select by tag.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

/// `m365bk forget`. Counts of 0 are off; at least one rule (or `--snapshot`) is required.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the N newest snapshots of each resource.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the N newest hours that have one (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// … of each of the N newest days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// … of each of the N newest ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// … of each of the N newest months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// … of each of the N newest years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Only consider snapshots with this tag (repeatable: any of them); others are left alone.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Forget exactly this snapshot (id or unique prefix; repeatable), instead of applying
    /// retention rules; works on a damaged snapshot that cannot be read.
    #[arg(long = "snapshot", value_name = "ID", conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_tags", "tags", "service"])]
    pub snapshots: Vec<String>,
    /// Only consider snapshots of this service.
    #[arg(long, value_parser = service_name)]
    pub service: Option<String>,
    /// Show what would be forgotten; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Then prune, as `m365bk prune` (with `--dry-run`: what prune would free).
    #[arg(long)]
    pub prune: bool,
    /// With `--prune`: as `m365bk prune --max-unused`.
    #[arg(long, value_name = "PERCENT", default_value_t = 50.0, value_parser = parse_percent, requires = "prune")]
    pub max_unused: f64,
}

/// `m365bk prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Repack a pack once more than this percentage of its bytes is unused (0–100; 100 only
    /// deletes wholly unused packs).
    #[arg(long, value_name = "PERCENT", default_value_t = 50.0, value_parser = parse_percent)]
    pub max_unused: f64,
    /// Show what would be deleted and repacked; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a number: give a percentage from 0 to 100"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is out of range: give a percentage from 0 to 100"
        ))
    }
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
        #[arg(long, value_parser = service_name)]
        service: String,
        /// Operation: discovery, backup, recovery.
        #[arg(long)]
        operation: String,
        /// Exchange item types (comma-separated). Default: all.
        #[arg(long, value_delimiter = ',', value_parser = item_type)]
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
    /// Rebuild the index from the packs: read every pack, keep the blobs that verify (takes
    /// the exclusive lock). After `check --read-data` finds a damaged or missing pack, or an
    /// index file is lost; the next backup then stores the lost content again.
    Index {
        /// Show what would change; write and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `10` or `10%` → 10: a whole percentage from 1 to 100.
fn parse_subset_percent(text: &str) -> Result<u8, String> {
    let v = parse_percent(text).unwrap_or(f64::NAN);
    if (1.0..=100.0).contains(&v) && v.fract() == 0.0 {
        Ok(v as u8)
    } else {
        Err(format!(
            "{text:?}: give a whole percentage from 1 to 100 (for example 10 or 10%)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{parse_subset_percent, Command, Opts};

    #[test]
    fn read_data_subset_takes_a_percentage_and_refuses_the_rest() {
        assert_eq!(parse_subset_percent("10"), Ok(10));
        assert_eq!(parse_subset_percent("10%"), Ok(10));
        assert_eq!(parse_subset_percent("100%"), Ok(100));
        for bad in ["0", "101", "10.5", "ten", "%", ""] {
            let err = parse_subset_percent(bad).unwrap_err();
            assert!(err.contains("percentage from"), "{bad}: {err}");
        }
        let opts = Opts::try_parse_from(["m365bk", "check", "--read-data-subset", "25%"]).unwrap();
        assert!(matches!(
            opts.command,
            Command::Check {
                read_data: false,
                read_data_subset: Some(25)
            }
        ));
        // One message for every bad value.
        for bad in ["0", "150", "abc", "2.5"] {
            let err =
                Opts::try_parse_from(["m365bk", "check", "--read-data-subset", bad]).unwrap_err();
            assert!(err.to_string().contains("from 1 to 100"), "{bad}: {err}");
        }
    }
}
