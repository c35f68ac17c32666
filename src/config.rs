//! The configuration file (strict TOML) resolved into validated [`Settings`].

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Microsoft's public-cloud authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Microsoft Graph v1.0 in the public cloud.
pub const DEFAULT_GRAPH: &str = "https://graph.microsoft.com/v1.0";
/// Environment variable that may hold the client secret value.
pub const SECRET_ENV: &str = "M365BK_CLIENT_SECRET";
/// systemd credential name (`LoadCredential=client-secret:…`).
pub const SECRET_CREDENTIAL: &str = "client-secret";
/// Environment variable that may hold the repository passphrase.
pub const PASSPHRASE_ENV: &str = "M365BK_PASSPHRASE";
/// systemd credential name for the repository passphrase.
pub const PASSPHRASE_CREDENTIAL: &str = "repository-passphrase";
/// Environment variable that may hold the new passphrase for `m365bk key add|passwd`.
pub const NEW_PASSPHRASE_ENV: &str = "M365BK_NEW_PASSPHRASE";

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The tenant and the app registration.
    pub tenant: TenantSection,
    /// Where backups go.
    pub repository: RepositorySection,
    /// The local catalog.
    #[serde(default)]
    pub catalog: CatalogSection,
    /// Backup tunables.
    #[serde(default)]
    pub backup: BackupSection,
}

/// `[tenant]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// File holding the client secret value (mode 0600 or stricter).
    pub client_secret_file: Option<PathBuf>,
    /// OAuth authority; default Microsoft's public cloud.
    pub authority_url: Option<String>,
    /// Graph base URL; default `https://graph.microsoft.com/v1.0`.
    pub graph_url: Option<String>,
    /// `TENANT.sharepoint.com`, for jobs that call the SharePoint API.
    pub sharepoint_host: Option<String>,
}

/// `[repository]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    /// `file:///path` or a filesystem path.
    pub url: String,
    /// File holding the repository passphrase (mode 0600 or stricter).
    pub passphrase_file: Option<PathBuf>,
}

/// `[catalog]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// SQLite file; default `$STATE_DIRECTORY/catalog.sqlite` under systemd, else
    /// `$XDG_STATE_HOME/m365bk/catalog.sqlite` (`~/.local/state/m365bk/catalog.sqlite`).
    pub path: Option<PathBuf>,
}

/// `[backup]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// `Prefer: odata.maxpagesize` for delta and list requests.
    pub page_size: u32,
    /// Concurrent downloads per mailbox / drive (Outlook allows 4 per mailbox).
    pub concurrency: usize,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            page_size: 100,
            concurrency: 4,
        }
    }
}

/// A configuration problem, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}. Pass --config FILE (or set M365BK_CONFIG); config/m365bk.example.toml shows every setting")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("config file {path} is invalid: {detail}. Fix that setting; config/m365bk.example.toml shows every setting and its format")]
    Parse { path: PathBuf, detail: String },
    /// A value is out of range or malformed.
    #[error("config file {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    /// No client secret anywhere.
    #[error("no client secret: set tenant.client_secret_file to a file holding the secret value (mode 0600), or set ${SECRET_ENV}, or pass a systemd credential named `{SECRET_CREDENTIAL}`. Secrets are never taken from the command line")]
    NoSecret,
    /// The secret file is unusable.
    #[error("client secret file {path}: {detail}")]
    SecretFile { path: PathBuf, detail: String },
    /// No repository passphrase anywhere, for `init`.
    #[error("no repository passphrase: set repository.passphrase_file to a file holding it (mode 0600), or set ${PASSPHRASE_ENV}, or pass a systemd credential named `{PASSPHRASE_CREDENTIAL}`; or run `m365bk init --no-encryption` for an unencrypted repository. Passphrases are never taken from the command line")]
    NoPassphrase,
    /// No new passphrase for `key add` / `key passwd`.
    #[error("no new passphrase: pass --new-passphrase-file FILE (mode 0600) or set ${NEW_PASSPHRASE_ENV}. Passphrases are never taken from the command line")]
    NoNewPassphrase,
    /// A passphrase file is unusable.
    #[error("passphrase file {path}: {detail}")]
    PassphraseFile { path: PathBuf, detail: String },
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tenant id.
    pub tenant_id: String,
    /// Client id.
    pub client_id: String,
    /// Where the secret is read from (resolved lazily: commands that need no token work without it).
    pub secret_file: Option<PathBuf>,
    /// Authority URL.
    pub authority: url::Url,
    /// Graph base URL.
    pub graph_base: url::Url,
    /// SharePoint host.
    pub sharepoint_host: Option<String>,
    /// Repository location.
    pub repository: String,
    /// Where the repository passphrase is read from, if a file (resolved lazily).
    pub passphrase_file: Option<PathBuf>,
    /// Catalog file.
    pub catalog: PathBuf,
    /// Backup page size.
    pub page_size: u32,
    /// Backup concurrency.
    pub concurrency: usize,
}

fn parse_url(path: &Path, key: &str, value: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(value).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        detail: format!("{key} = {value:?} is not a URL ({e}); example: {key} = \"https://login.microsoftonline.com\""),
    })?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            detail: format!("{key} = {value:?} must be an https:// URL"),
        });
    }
    Ok(u)
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn default_catalog() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated: use the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first).join("catalog.sqlite");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("m365bk").join("catalog.sqlite")
}

impl Settings {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the setting and the fix.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(path, &text)
    }

    /// Validates the text of a config file.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string().trim().replace('\n', " "),
        })?;
        let invalid = |detail: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        if !is_guid(&file.tenant.tenant_id) {
            return Err(invalid(format!(
                "tenant.tenant_id = {:?} is not a GUID: copy the Directory (tenant) ID from the app registration's Overview page in the Entra admin center",
                file.tenant.tenant_id
            )));
        }
        if !is_guid(&file.tenant.client_id) {
            return Err(invalid(format!(
                "tenant.client_id = {:?} is not a GUID: copy the Application (client) ID from the app registration's Overview page",
                file.tenant.client_id
            )));
        }
        if file.backup.page_size == 0 || file.backup.page_size > 1000 {
            return Err(invalid(format!(
                "backup.page_size = {} must be between 1 and 1000",
                file.backup.page_size
            )));
        }
        if file.backup.concurrency == 0 || file.backup.concurrency > 16 {
            return Err(invalid(format!(
                "backup.concurrency = {} must be between 1 and 16",
                file.backup.concurrency
            )));
        }
        if file.repository.url.trim().is_empty() {
            return Err(invalid("repository.url is empty: set it to file:///var/lib/m365bk/repository or another location".into()));
        }
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let mut graph_base = parse_url(
            path,
            "tenant.graph_url",
            file.tenant.graph_url.as_deref().unwrap_or(DEFAULT_GRAPH),
        )?;
        if !graph_base.path().ends_with('/') {
            // keep "…/v1.0" as a directory so relative joins stay below it
            let p = format!("{}/", graph_base.path());
            graph_base.set_path(&p);
        }
        let repository = if file.repository.url.contains("://") {
            file.repository.url.clone()
        } else {
            resolve(Path::new(&file.repository.url))
                .to_string_lossy()
                .into_owned()
        };
        Ok(Settings {
            tenant_id: file.tenant.tenant_id,
            client_id: file.tenant.client_id,
            secret_file: file.tenant.client_secret_file.as_deref().map(resolve),
            authority: parse_url(
                path,
                "tenant.authority_url",
                file.tenant
                    .authority_url
                    .as_deref()
                    .unwrap_or(DEFAULT_AUTHORITY),
            )?,
            graph_base,
            sharepoint_host: file.tenant.sharepoint_host,
            repository,
            passphrase_file: file.repository.passphrase_file.as_deref().map(resolve),
            catalog: file
                .catalog
                .path
                .as_deref()
                .map(resolve)
                .unwrap_or_else(default_catalog),
            page_size: file.backup.page_size,
            concurrency: file.backup.concurrency,
        })
    }

    /// The client secret: `tenant.client_secret_file`, else `$M365BK_CLIENT_SECRET`, else the
    /// systemd credential `client-secret`.
    ///
    /// # Errors
    /// [`ConfigError::NoSecret`], or [`ConfigError::SecretFile`] for an unreadable, empty or
    /// world-readable file.
    pub fn client_secret(&self) -> Result<String, ConfigError> {
        if let Some(path) = &self.secret_file {
            return read_secret_file(path);
        }
        if let Ok(s) = std::env::var(SECRET_ENV) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = PathBuf::from(dir).join(SECRET_CREDENTIAL);
            if p.exists() {
                return read_secret_file(&p);
            }
        }
        Err(ConfigError::NoSecret)
    }

    /// The repository passphrase: `repository.passphrase_file`, else `$M365BK_PASSPHRASE`,
    /// else the systemd credential `repository-passphrase`; `None` if there is none (fine for
    /// an unencrypted repository). One line ending at the end is not part of it.
    ///
    /// # Errors
    /// [`ConfigError::PassphraseFile`] for an unreadable, empty or world-readable file.
    pub fn passphrase(&self) -> Result<Option<SecretString>, ConfigError> {
        if let Some(path) = &self.passphrase_file {
            return read_passphrase_file(path).map(Some);
        }
        if let Some(s) = passphrase_env(PASSPHRASE_ENV) {
            return Ok(Some(s));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = PathBuf::from(dir).join(PASSPHRASE_CREDENTIAL);
            if p.exists() {
                return read_passphrase_file(&p).map(Some);
            }
        }
        Ok(None)
    }
}

/// A new passphrase for `key add` / `key passwd`: `file`, else `$M365BK_NEW_PASSPHRASE`.
///
/// # Errors
/// [`ConfigError::NoNewPassphrase`], [`ConfigError::PassphraseFile`].
pub fn new_passphrase(file: Option<&Path>) -> Result<SecretString, ConfigError> {
    if let Some(path) = file {
        return read_passphrase_file(path);
    }
    passphrase_env(NEW_PASSPHRASE_ENV).ok_or(ConfigError::NoNewPassphrase)
}

fn passphrase_env(var: &str) -> Option<SecretString> {
    let value = std::env::var(var).ok()?;
    let value = strip_line_end(&value);
    (!value.is_empty()).then(|| SecretString::from(value))
}

/// Removes one trailing `\n` or `\r\n` (what `echo` and editors add); other whitespace is part
/// of the passphrase.
fn strip_line_end(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
}

fn read_passphrase_file(path: &Path) -> Result<SecretString, ConfigError> {
    let err = |detail: String| ConfigError::PassphraseFile {
        path: path.to_path_buf(),
        detail,
    };
    let text = secrecy::SecretBox::new(Box::new(read_private_file(path).map_err(err)?));
    let value = strip_line_end(secrecy::ExposeSecret::expose_secret(&text));
    if value.is_empty() {
        return Err(err("is empty: put the repository passphrase in it".into()));
    }
    Ok(SecretString::from(value))
}

/// Reads a file that holds a secret, refusing one every user can read.
fn read_private_file(path: &Path) -> Result<String, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(format!(
                "is readable by every user: run `chmod 600 {}`",
                path.display()
            ));
        }
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({e})"))
}

fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let err = |detail: String| ConfigError::SecretFile {
        path: path.to_path_buf(),
        detail,
    };
    let s = read_private_file(path).map_err(err)?;
    let s = s.trim();
    if s.is_empty() {
        return Err(err(
            "is empty: put the client secret VALUE in it (not the secret ID)".into(),
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[tenant]
tenant_id = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_file = "secret"
[repository]
url = "repo"
"#;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/m365bk.example.toml");
        let s =
            Settings::parse(Path::new("/etc/m365bk/m365bk.toml"), text).expect("example parses");
        assert_eq!(s.authority.as_str(), "https://login.microsoftonline.com/");
        assert_eq!(s.graph_base.as_str(), "https://graph.microsoft.com/v1.0/");
    }

    #[test]
    fn defaults_and_relative_paths() {
        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), GOOD).unwrap();
        assert_eq!(s.repository, "/cfg/repo");
        assert_eq!(s.secret_file.as_deref(), Some(Path::new("/cfg/secret")));
        assert_eq!(s.passphrase_file, None);
        assert_eq!(s.page_size, 100);
        let text = GOOD.replace(
            "url = \"repo\"",
            "url = \"repo\"\npassphrase_file = \"pass\"",
        );
        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), &text).unwrap();
        assert_eq!(s.passphrase_file.as_deref(), Some(Path::new("/cfg/pass")));
    }

    #[cfg(unix)]
    #[test]
    fn passphrase_files_must_be_private_and_keep_inner_whitespace() {
        use secrecy::ExposeSecret;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, " two words \n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = new_passphrase(Some(&file)).unwrap();
        assert_eq!(p.expose_secret(), " two words ");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = new_passphrase(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("pass"), "{e}");
        std::fs::write(&file, "\r\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = new_passphrase(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn unknown_field_names_the_field_and_the_fix() {
        let text = GOOD.replace("[repository]", "[repository]\nurll = \"x\"");
        let e = Settings::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `urll`"), "{e}");
        assert!(e.contains("m365bk.example.toml"), "{e}");
    }

    #[test]
    fn bad_tenant_id_says_where_to_find_it() {
        let text = GOOD.replace("8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11", "contoso");
        let e = Settings::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenant.tenant_id") && e.contains("Directory (tenant) ID"),
            "{e}"
        );
    }
}
