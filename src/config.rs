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
/// systemd credential name of the PEM certificate (may also hold its private key).
pub const CERTIFICATE_CREDENTIAL: &str = "client-certificate";
/// systemd credential name of the PEM private key of the certificate.
pub const PRIVATE_KEY_CREDENTIAL: &str = "client-private-key";
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
    /// Microsoft's throttling limits the Graph client keeps to.
    #[serde(default)]
    pub throttling: ThrottlingSection,
}

/// Longest throttling window accepted, in seconds (Microsoft's are 5 and 10 minutes).
const MAX_WINDOW_SECS: u64 = 24 * 3600;

/// `[throttling]`: Microsoft's per-workload limits, kept on the client side (requests wait for
/// their budget instead of being answered 429). Defaults are Microsoft's published limits for
/// a tenant of up to 1,000 licences; raise the SharePoint budgets for bigger tenants
/// (<https://learn.microsoft.com/sharepoint/dev/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online>).
/// 0 switches a limit off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottlingSection {
    /// Outlook requests in flight at once per mailbox (Microsoft: 4).
    pub outlook_concurrent_requests: u32,
    /// Outlook requests per window per mailbox (Microsoft: 10,000 per 10 minutes).
    pub outlook_requests_per_window: u32,
    /// The Outlook request window in seconds (Microsoft: 600).
    pub outlook_window_secs: u64,
    /// OneDrive/SharePoint resource units per minute for the app (Microsoft: 1,250 / 2,500 /
    /// 3,750 / 5,000 / 6,250 by licence count).
    pub sharepoint_resource_units_per_minute: u32,
    /// OneDrive/SharePoint resource units per 24 hours for the app (Microsoft: 1,200,000 up to
    /// 1,000 licences … 6,000,000 above 50,000).
    pub sharepoint_resource_units_per_day: u32,
    /// Requests per second per team (Microsoft: 4).
    pub teams_requests_per_second: u32,
    /// Bytes uploaded to a mailbox per upload window (Microsoft: 150 MB per 5 minutes).
    pub outlook_upload_bytes_per_window: u64,
    /// The Outlook upload window in seconds (Microsoft: 300).
    pub outlook_upload_window_secs: u64,
}

impl Default for ThrottlingSection {
    fn default() -> Self {
        let d = m365bk_graph::ThrottleOptions::default();
        ThrottlingSection {
            outlook_concurrent_requests: d.outlook_concurrent_requests,
            outlook_requests_per_window: d.outlook_requests_per_window,
            outlook_window_secs: d.outlook_window.as_secs(),
            sharepoint_resource_units_per_minute: d.sharepoint_resource_units_per_minute,
            sharepoint_resource_units_per_day: d.sharepoint_resource_units_per_day,
            teams_requests_per_second: d.teams_requests_per_second,
            outlook_upload_bytes_per_window: d.outlook_upload_bytes_per_window,
            outlook_upload_window_secs: d.outlook_upload_window.as_secs(),
        }
    }
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
    /// PEM certificate registered on the app registration (certificate credentials); may
    /// also hold the private key. Replaces the client secret.
    pub certificate_file: Option<PathBuf>,
    /// PEM RSA private key of `certificate_file` (mode 0600 or stricter); default: the key
    /// block inside `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// Client assertion signature: `"PS256"` (default, header `x5t#S256`) or `"RS256"`
    /// (header `x5t`).
    pub assertion_alg: Option<String>,
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
    /// A filesystem path, `file:///path`, `s3://bucket/prefix`, `az://container/prefix` or
    /// `gs://bucket/prefix`.
    pub url: String,
    /// File holding the repository passphrase (mode 0600 or stricter).
    pub passphrase_file: Option<PathBuf>,
    /// Retries of a failed storage request (cloud backends); default 5.
    pub max_retries: Option<usize>,
    /// No retry starts later than this many seconds after the first attempt; default 60.
    pub retry_timeout_secs: Option<u64>,
    /// Non-secret object_store settings of a cloud backend (`region`, `endpoint`,
    /// `allow_http`, `account_name`, `timeout`…); secrets come from the environment.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, toml::Value>,
}

/// Highest `repository.max_retries`.
pub const MAX_RETRIES_LIMIT: usize = 20;
/// Highest `repository.retry_timeout_secs` (object_store: keep retries under 5 minutes, or
/// signed requests expire).
pub const RETRY_TIMEOUT_LIMIT_SECS: u64 = 300;

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
    /// `Prefer: odata.maxpagesize` for driveItem delta (OneDrive); default 200.
    pub drive_page_size: u32,
    /// Concurrent downloads per mailbox / drive (Outlook allows 4 per mailbox).
    pub concurrency: usize,
    /// Mailboxes or drives backed up at once by one job.
    pub parallel_resources: usize,
    /// Uploaded packs after which a running backup writes an index file, so a killed backup's
    /// content is found by the next run (0: only the interval counts).
    pub index_checkpoint_packs: usize,
    /// Seconds after the last index file at which one more uploaded pack makes a running
    /// backup write an index file (0: after every pack).
    pub index_checkpoint_secs: u64,
}

impl Default for BackupSection {
    fn default() -> Self {
        let checkpoint = m365bk_store::IndexCheckpoint::default();
        BackupSection {
            page_size: 100,
            drive_page_size: 200,
            concurrency: 4,
            parallel_resources: 8,
            index_checkpoint_packs: checkpoint.packs,
            index_checkpoint_secs: checkpoint.interval.as_secs(),
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
    /// The certificate or its private key is unusable.
    #[error("certificate credential {path}: {detail}")]
    CertificateFile { path: PathBuf, detail: String },
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
    /// Certificate credentials: the PEM certificate (read lazily, like the secret).
    pub certificate_file: Option<PathBuf>,
    /// The PEM private key of the certificate, when not inside `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// Signature algorithm of client assertions.
    pub assertion_alg: m365bk_graph::AssertionAlgorithm,
    /// Authority URL.
    pub authority: url::Url,
    /// Graph base URL.
    pub graph_base: url::Url,
    /// SharePoint host.
    pub sharepoint_host: Option<String>,
    /// Repository location.
    pub repository: String,
    /// Cloud backend settings: options, retries, the systemd credentials directory.
    pub backend: m365bk_store::BackendOptions,
    /// Where the repository passphrase is read from, if a file (resolved lazily).
    pub passphrase_file: Option<PathBuf>,
    /// Catalog file.
    pub catalog: PathBuf,
    /// Backup page size.
    pub page_size: u32,
    /// driveItem delta page size.
    pub drive_page_size: u32,
    /// Backup concurrency.
    pub concurrency: usize,
    /// Resources (mailboxes, drives) backed up at once.
    pub parallel_resources: usize,
    /// When a running backup writes index files between commits.
    pub index_checkpoint: m365bk_store::IndexCheckpoint,
    /// Microsoft's throttling limits for the Graph client.
    pub throttle: m365bk_graph::ThrottleOptions,
}

/// A correct value for URL setting `key`, for error messages.
fn url_example(key: &str) -> &'static str {
    match key {
        "tenant.graph_url" => DEFAULT_GRAPH,
        "tenant.authority" | "tenant.authority_url" => DEFAULT_AUTHORITY,
        _ => "https://host.example/path",
    }
}

fn parse_url(path: &Path, key: &str, value: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(value).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        detail: format!(
            "{key} = {value:?} is not a URL ({e}); example: {key} = \"{}\"",
            url_example(key)
        ),
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
        if file.backup.drive_page_size == 0 || file.backup.drive_page_size > 1000 {
            return Err(invalid(format!(
                "backup.drive_page_size = {} must be between 1 and 1000",
                file.backup.drive_page_size
            )));
        }
        if file.backup.concurrency == 0 || file.backup.concurrency > 16 {
            return Err(invalid(format!(
                "backup.concurrency = {} must be between 1 and 16",
                file.backup.concurrency
            )));
        }
        for (key, secs, microsoft) in [
            (
                "outlook_window_secs",
                file.throttling.outlook_window_secs,
                600,
            ),
            (
                "outlook_upload_window_secs",
                file.throttling.outlook_upload_window_secs,
                300,
            ),
        ] {
            if !(1..=MAX_WINDOW_SECS).contains(&secs) {
                return Err(invalid(format!(
                    "throttling.{key} = {secs} must be between 1 and {MAX_WINDOW_SECS} (a day); Microsoft's window is {microsoft}"
                )));
            }
        }
        let upload = file.throttling.outlook_upload_bytes_per_window;
        if upload != 0 && upload < m365bk_graph::MAX_REQUEST_BODY {
            return Err(invalid(format!(
                "throttling.outlook_upload_bytes_per_window = {upload} is smaller than one Graph request may carry ({} bytes), so a restore would wait a whole window for every message: give 0 (off) or at least {}; Microsoft's budget is 150000000",
                m365bk_graph::MAX_REQUEST_BODY,
                m365bk_graph::MAX_REQUEST_BODY
            )));
        }
        if file.backup.parallel_resources == 0 || file.backup.parallel_resources > 64 {
            return Err(invalid(format!(
                "backup.parallel_resources = {} must be between 1 and 64",
                file.backup.parallel_resources
            )));
        }
        if file.repository.url.trim().is_empty() {
            return Err(invalid("repository.url is empty: set it to file:///var/lib/m365bk/repository or another location".into()));
        }
        if file.tenant.certificate_file.is_some() && file.tenant.client_secret_file.is_some() {
            return Err(invalid("tenant.certificate_file and tenant.client_secret_file are both set: keep one (a certificate is the stronger credential; remove client_secret_file)".into()));
        }
        if file.tenant.private_key_file.is_some() && file.tenant.certificate_file.is_none() {
            return Err(invalid("tenant.private_key_file is set without tenant.certificate_file: set certificate_file to the PEM certificate registered on the app registration".into()));
        }
        let assertion_alg = match file.tenant.assertion_alg.as_deref() {
            None => m365bk_graph::AssertionAlgorithm::default(),
            Some(a) => a.parse().map_err(|_| {
                invalid(format!(
                    "tenant.assertion_alg = {a:?}: use \"PS256\" (recommended) or \"RS256\""
                ))
            })?,
        };
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
        let backend = backend_options(&file.repository, &repository).map_err(invalid)?;
        Ok(Settings {
            tenant_id: file.tenant.tenant_id,
            client_id: file.tenant.client_id,
            secret_file: file.tenant.client_secret_file.as_deref().map(resolve),
            certificate_file: file.tenant.certificate_file.as_deref().map(resolve),
            private_key_file: file.tenant.private_key_file.as_deref().map(resolve),
            assertion_alg,
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
            backend,
            passphrase_file: file.repository.passphrase_file.as_deref().map(resolve),
            catalog: file
                .catalog
                .path
                .as_deref()
                .map(resolve)
                .unwrap_or_else(default_catalog),
            page_size: file.backup.page_size,
            drive_page_size: file.backup.drive_page_size,
            concurrency: file.backup.concurrency,
            parallel_resources: file.backup.parallel_resources,
            index_checkpoint: m365bk_store::IndexCheckpoint {
                packs: file.backup.index_checkpoint_packs,
                interval: std::time::Duration::from_secs(file.backup.index_checkpoint_secs),
            },
            throttle: m365bk_graph::ThrottleOptions {
                outlook_concurrent_requests: file.throttling.outlook_concurrent_requests,
                outlook_requests_per_window: file.throttling.outlook_requests_per_window,
                outlook_window: std::time::Duration::from_secs(file.throttling.outlook_window_secs),
                sharepoint_resource_units_per_minute: file
                    .throttling
                    .sharepoint_resource_units_per_minute,
                sharepoint_resource_units_per_day: file
                    .throttling
                    .sharepoint_resource_units_per_day,
                teams_requests_per_second: file.throttling.teams_requests_per_second,
                outlook_upload_bytes_per_window: file.throttling.outlook_upload_bytes_per_window,
                outlook_upload_window: std::time::Duration::from_secs(
                    file.throttling.outlook_upload_window_secs,
                ),
            },
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

    /// How the app signs in: `tenant.certificate_file` (+ `private_key_file`) → certificate;
    /// else a client secret from `tenant.client_secret_file` or `$M365BK_CLIENT_SECRET`; else
    /// the systemd credentials `client-certificate` (+ `client-private-key`) → certificate;
    /// else the systemd credential `client-secret`.
    ///
    /// # Errors
    /// [`ConfigError::NoSecret`] when there is no credential at all,
    /// [`ConfigError::SecretFile`] as for [`Settings::client_secret`],
    /// [`ConfigError::CertificateFile`] for an unreadable certificate, a private key file that
    /// other users can read (group or world), or a key that is not the certificate's.
    pub fn client_credential(&self) -> Result<m365bk_graph::ClientCredential, ConfigError> {
        if let Some(cert) = &self.certificate_file {
            return self
                .certificate(cert, self.private_key_file.as_deref())
                .map(Into::into);
        }
        let has_env_secret = std::env::var(SECRET_ENV).is_ok_and(|s| !s.trim().is_empty());
        if self.secret_file.is_none() && !has_env_secret {
            if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
                let dir = PathBuf::from(dir);
                let cert = dir.join(CERTIFICATE_CREDENTIAL);
                if cert.exists() {
                    let key = dir.join(PRIVATE_KEY_CREDENTIAL);
                    let key = key.exists().then_some(key);
                    return self.certificate(&cert, key.as_deref()).map(Into::into);
                }
            }
        }
        let secret = self.client_secret()?;
        Ok(m365bk_graph::ClientSecretCredential {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            secret: secret.into(),
        }
        .into())
    }

    fn certificate(
        &self,
        cert_path: &Path,
        key_path: Option<&Path>,
    ) -> Result<m365bk_graph::CertificateCredential, ConfigError> {
        let cert_err = |path: &Path, detail: String| ConfigError::CertificateFile {
            path: path.to_path_buf(),
            detail,
        };
        let cert_text = std::fs::read(cert_path)
            .map_err(|e| cert_err(cert_path, format!("cannot read it ({e})")))?;
        if key_path.is_none() && !String::from_utf8_lossy(&cert_text).contains("PRIVATE KEY-----") {
            return Err(cert_err(
                cert_path,
                "holds no private key: set tenant.private_key_file to the PEM key of this \
                 certificate (mode 0600), or append the key to this file (then chmod 600 it)"
                    .into(),
            ));
        }
        // The file holding the private key must be private, whichever file that is.
        let key_file = key_path.unwrap_or(cert_path);
        let key_text = secrecy::SecretBox::new(Box::new(
            read_owner_only_file(key_file).map_err(|d| cert_err(key_file, d))?,
        ));
        m365bk_graph::CertificateCredential::from_pem(
            self.tenant_id.clone(),
            self.client_id.clone(),
            &cert_text,
            secrecy::ExposeSecret::expose_secret(&key_text).as_bytes(),
            self.assertion_alg,
        )
        .map_err(|e| {
            let detail = match e {
                m365bk_graph::Error::Invalid { detail } => detail,
                other => other.to_string(),
            };
            let detail = if key_path.is_none() && detail.contains("PRIVATE KEY") {
                format!("{detail}: put the key in the same file or set tenant.private_key_file")
            } else {
                detail
            };
            cert_err(key_file, detail)
        })
    }

    /// The repository passphrase: `repository.passphrase_file`, else `$M365BK_PASSPHRASE`,
    /// else the systemd credential `repository-passphrase`; `None` if there is none (fine for
    /// an unencrypted repository). One line ending at the end is not part of it.
    ///
    /// # Errors
    /// [`ConfigError::PassphraseFile`] for an unreadable, empty or world-readable file.
    pub fn passphrase(&self) -> Result<Option<SecretString>, ConfigError> {
        if let Some(path) = &self.passphrase_file {
            if std::env::var_os(PASSPHRASE_ENV).is_some_and(|v| !v.is_empty()) {
                tracing::warn!(
                    passphrase_file = %path.display(),
                    "{PASSPHRASE_ENV} is set but ignored: repository.passphrase_file comes first (unset one of them)"
                );
            }
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

/// `[repository]`'s backend settings, checked against the location's backend: the options
/// must be object_store keys of that backend and not secrets.
fn backend_options(
    section: &RepositorySection,
    location: &str,
) -> Result<m365bk_store::BackendOptions, String> {
    let parsed = m365bk_store::Location::parse(location).map_err(|e| e.to_string())?;
    let mut retry = m365bk_store::RetryOptions::DEFAULT;
    if let Some(n) = section.max_retries {
        if n > MAX_RETRIES_LIMIT {
            return Err(format!(
                "repository.max_retries = {n} must be between 0 and {MAX_RETRIES_LIMIT}"
            ));
        }
        retry.max_retries = n;
    }
    if let Some(secs) = section.retry_timeout_secs {
        if secs == 0 || secs > RETRY_TIMEOUT_LIMIT_SECS {
            return Err(format!(
                "repository.retry_timeout_secs = {secs} must be between 1 and {RETRY_TIMEOUT_LIMIT_SECS}"
            ));
        }
        retry.retry_timeout = std::time::Duration::from_secs(secs);
    }
    let mut options = std::collections::BTreeMap::new();
    for (key, value) in &section.options {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(format!(
                    "repository.options.{key} = {other} is not a single value: give a string, number or true/false"
                ))
            }
        };
        options.insert(key.clone(), text);
    }
    let backend = m365bk_store::BackendOptions {
        options,
        retry,
        credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    };
    backend.check(&parsed).map_err(|e| e.to_string())?;
    Ok(backend)
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

/// Reads a private key file, refusing one that any other user can read (group or world).
fn read_owner_only_file(path: &Path) -> Result<String, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?;
        if meta.permissions().mode() & 0o044 != 0 {
            return Err(format!(
                "the private key is readable by other users (mode {:o}): run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
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
    fn throttling_defaults_are_microsofts_limits_and_can_be_raised() {
        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), GOOD).unwrap();
        assert_eq!(s.throttle, m365bk_graph::ThrottleOptions::default());
        assert_eq!(s.throttle.outlook_concurrent_requests, 4);
        assert_eq!(s.throttle.outlook_requests_per_window, 10_000);
        assert_eq!(s.throttle.sharepoint_resource_units_per_minute, 1_250);
        assert_eq!(s.parallel_resources, 8);
        assert_eq!(s.index_checkpoint, m365bk_store::IndexCheckpoint::default());
        let text =
            format!("{GOOD}\n[backup]\nindex_checkpoint_packs = 2\nindex_checkpoint_secs = 0\n");
        let c = Settings::parse(Path::new("/cfg/m365bk.toml"), &text)
            .unwrap()
            .index_checkpoint;
        assert_eq!((c.packs, c.interval.as_secs()), (2, 0));
        let text = format!(
            "{GOOD}\n[throttling]\nsharepoint_resource_units_per_minute = 2500\noutlook_concurrent_requests = 2\n"
        );
        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), &text).unwrap();
        assert_eq!(s.throttle.sharepoint_resource_units_per_minute, 2_500);
        assert_eq!(s.throttle.outlook_concurrent_requests, 2);
        let e = Settings::parse(
            Path::new("c.toml"),
            &text.replace("outlook_concurrent_requests", "outlook_concurrency"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("outlook_concurrency"), "{e}");

        // The Outlook upload budget: Microsoft's 150 MB per 5 minutes unless set.
        assert_eq!(s.throttle.outlook_upload_bytes_per_window, 150_000_000);
        assert_eq!(s.throttle.outlook_upload_window.as_secs(), 300);
        let text = format!(
            "{GOOD}\n[throttling]\noutlook_upload_bytes_per_window = 0\noutlook_upload_window_secs = 60\n"
        );
        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), &text).unwrap();
        assert_eq!(s.throttle.outlook_upload_bytes_per_window, 0);
        assert_eq!(s.throttle.outlook_upload_window.as_secs(), 60);
        let e = Settings::parse(Path::new("c.toml"), &text.replace("= 60", "= 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outlook_upload_window_secs = 0"), "{e}");
        // A window so long that the deadline overflows, and a budget smaller than one request
        // (a restore would wait a window per message), are refused too.
        let e = Settings::parse(
            Path::new("c.toml"),
            &text.replace("= 60", "= 18446744073709551615"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("between 1 and 86400"), "{e}");
        let e = Settings::parse(
            Path::new("c.toml"),
            &text.replace(
                "outlook_upload_bytes_per_window = 0",
                "outlook_upload_bytes_per_window = 1",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 4194304"), "{e}");
    }

    #[test]
    fn cloud_repository_options_and_retries() {
        let text = GOOD.replace(
            "url = \"repo\"",
            "url = \"s3://backups/m365\"\nmax_retries = 2\nretry_timeout_secs = 15\n[repository.options]\nregion = \"eu-west-1\"\nallow_http = true\nendpoint = \"http://127.0.0.1:9000\"",
        );
        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), &text).unwrap();
        assert_eq!(s.repository, "s3://backups/m365");
        assert_eq!(s.backend.retry.max_retries, 2);
        assert_eq!(s.backend.retry.retry_timeout.as_secs(), 15);
        assert_eq!(s.backend.options["region"], "eu-west-1");
        assert_eq!(s.backend.options["allow_http"], "true");

        let s = Settings::parse(Path::new("/cfg/m365bk.toml"), GOOD).unwrap();
        assert_eq!(s.backend.retry, m365bk_store::RetryOptions::DEFAULT);
        assert!(s.backend.options.is_empty());
    }

    /// The example config's commented `[repository.options]` tables, uncommented under the
    /// matching `url`, are valid.
    #[test]
    fn example_backend_options_parse() {
        let text = include_str!("../config/m365bk.example.toml");
        let mut tables = Vec::new();
        let mut current: Option<Vec<String>> = None;
        for line in text.lines() {
            if line == "# [repository.options]" {
                if let Some(t) = current.take() {
                    tables.push(t);
                }
                current = Some(Vec::new());
            } else if let Some(t) = current.as_mut() {
                match line.strip_prefix("# ") {
                    Some(kv) if kv.contains(" = ") => t.push(kv.to_string()),
                    _ => tables.push(current.take().unwrap()),
                }
            }
        }
        assert_eq!(
            tables.len(),
            2,
            "an S3 table and an Azure table: {tables:?}"
        );
        for (url, table) in ["s3://backups/m365", "az://backups/m365"]
            .iter()
            .zip(&tables)
        {
            assert!(table.len() >= 2, "{table:?}");
            let repo = format!(
                "url = \"{url}\"\n[repository.options]\n{}",
                table.join("\n")
            );
            let s = Settings::parse(Path::new("c.toml"), &GOOD.replace("url = \"repo\"", &repo))
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(s.backend.options.len(), table.len(), "{url}");
        }
    }

    #[test]
    fn cloud_repository_mistakes_name_the_setting() {
        for (repo, says) in [
            (
                "url = \"s3://b/p\"\n[repository.options]\nsecret_access_key = \"x\"",
                "$AWS_SECRET_ACCESS_KEY",
            ),
            (
                "url = \"az://c/p\"\n[repository.options]\naccount_key = \"x\"",
                "$AZURE_STORAGE_ACCOUNT_KEY",
            ),
            (
                "url = \"s3://b/p\"\n[repository.options]\nregoin = \"x\"",
                "repository.options.regoin",
            ),
            (
                "url = \"repo\"\n[repository.options]\nregion = \"x\"",
                "only to s3://, az:// and gs://",
            ),
            (
                "url = \"s3://b/p\"\n[repository.options]\nregion = [1]",
                "repository.options.region = [1] is not a single value",
            ),
            (
                "url = \"s3://b/p\"\nmax_retries = 99",
                "repository.max_retries = 99",
            ),
            (
                "url = \"s3://b/p\"\nretry_timeout_secs = 0",
                "repository.retry_timeout_secs = 0",
            ),
            ("url = \"ftp://h/p\"", "unknown scheme ftp://"),
        ] {
            let text = GOOD.replace("url = \"repo\"", repo);
            let e = Settings::parse(Path::new("c.toml"), &text).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{repo}: {e}");
            assert!(e.to_string().contains(says), "{repo}: {e}");
        }
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
