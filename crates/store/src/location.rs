//! Where a repository lives: a location string from the config (`repository.url`) resolved to
//! an [`ObjectStore`].
//!
//! | location | backend | store |
//! |---|---|---|
//! | `/abs/path`, `rel/path`, `file:///abs/path` | [`Backend::Local`] | `LocalFileSystem` (fsync on) |
//! | `s3://BUCKET[/PREFIX]` (also `s3a://`) | [`Backend::S3`] | `AmazonS3`, conditional create by `If-None-Match` |
//! | `az://CONTAINER[/PREFIX]` (also `azure://`) | [`Backend::Azure`] | `MicrosoftAzure` |
//! | `gs://BUCKET[/PREFIX]` | [`Backend::Gcs`] | `GoogleCloudStorage` |
//!
//! A non-empty prefix wraps the store in a `PrefixStore`, so several repositories can share a
//! bucket. Buckets and containers are never created here: that needs account-level rights a
//! backup job should not hold.
//!
//! Non-secret settings (region, endpoint, `allow_http`, timeouts…) come from
//! [`BackendOptions::options`], with object_store's configuration key names
//! (`AmazonS3ConfigKey`, `AzureConfigKey`, `GoogleConfigKey`, `ClientConfigKey`). Secrets are
//! refused there: they come only from the standard environment variables, read by object_store
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; `AZURE_STORAGE_ACCOUNT_NAME`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_TOKEN`, `AZURE_CLIENT_SECRET`;
//! `GOOGLE_SERVICE_ACCOUNT` (a key file's path), `GOOGLE_APPLICATION_CREDENTIALS`), from the
//! cloud's own instance or workload identity, or from files in a systemd credentials directory
//! ([`BackendOptions::credentials_dir`], names in [`CREDENTIAL_FILES`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::error::{Error, Result};

/// The kind of storage a [`Location`] names.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A local directory (`LocalFileSystem`).
    Local,
    /// Amazon S3 or an S3-compatible server that honours `If-None-Match: *`.
    S3,
    /// Azure Blob Storage (or Azurite).
    Azure,
    /// Google Cloud Storage.
    Gcs,
}

impl Backend {
    /// What this backend calls the top-level namespace: `"bucket"` or `"container"`.
    pub fn container_noun(self) -> &'static str {
        match self {
            Backend::Azure => "container",
            Backend::Local => "directory",
            Backend::S3 | Backend::Gcs => "bucket",
        }
    }

    /// Where this backend's credentials come from, for error messages.
    fn credentials_hint(self) -> &'static str {
        match self {
            Backend::Local => "check the directory's owner and mode",
            Backend::S3 => "set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (and $AWS_SESSION_TOKEN for temporary keys), or the systemd credentials aws-access-key-id and aws-secret-access-key, or run where an instance or task role applies",
            Backend::Azure => "set $AZURE_STORAGE_ACCOUNT_NAME (or repository.options.account_name) and $AZURE_STORAGE_ACCOUNT_KEY or $AZURE_STORAGE_SAS_TOKEN, or the systemd credential azure-storage-account-key, or use a managed identity",
            Backend::Gcs => "set $GOOGLE_SERVICE_ACCOUNT to the path of a service-account key file, or the systemd credential google-service-account-key, or run where application default credentials apply",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Local => "local filesystem",
            Backend::S3 => "S3",
            Backend::Azure => "Azure Blob",
            Backend::Gcs => "Google Cloud Storage",
        })
    }
}

/// Systemd credential file names (in `$CREDENTIALS_DIRECTORY`) read for each backend, and the
/// object_store key each one sets. A credential is used only when the environment does not
/// already set that key.
pub const CREDENTIAL_FILES: &[(Backend, &str, &str)] = &[
    (Backend::S3, "aws-access-key-id", "aws_access_key_id"),
    (
        Backend::S3,
        "aws-secret-access-key",
        "aws_secret_access_key",
    ),
    (Backend::S3, "aws-session-token", "aws_session_token"),
    (
        Backend::Azure,
        "azure-storage-account-key",
        "azure_storage_account_key",
    ),
    (
        Backend::Azure,
        "azure-storage-sas-token",
        "azure_storage_sas_token",
    ),
    (Backend::Azure, "azure-client-secret", "azure_client_secret"),
    (
        Backend::Gcs,
        "google-service-account-key",
        "google_service_account_key",
    ),
];

/// How often and how long object_store retries a failed request (connection errors, 5xx,
/// 429) before the operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryOptions {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
}

impl RetryOptions {
    /// m365bk's default: 5 retries within 60 s (object_store's own, 10 within 180 s, keeps a
    /// job hanging for minutes when an endpoint is down).
    pub const DEFAULT: RetryOptions = RetryOptions {
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
    };

    fn to_config(self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions::DEFAULT
    }
}

/// Settings for the cloud backends, beside the location itself.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// object_store configuration keys and values, without secrets: `region`, `endpoint`,
    /// `allow_http`, `timeout`, `connect_timeout`, `virtual_hosted_style_request`,
    /// `account_name`, `use_emulator`, `proxy_url`…; the `aws_`/`azure_`/`google_` prefixed
    /// forms work too. Keys are checked by [`BackendOptions::check`].
    pub options: BTreeMap<String, String>,
    /// Retrying of failed requests.
    pub retry: RetryOptions,
    /// A systemd credentials directory (`$CREDENTIALS_DIRECTORY`) to read secrets from; see
    /// [`CREDENTIAL_FILES`].
    pub credentials_dir: Option<PathBuf>,
}

/// A parsed repository location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    raw: String,
    target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Local(PathBuf),
    Cloud {
        backend: Backend,
        /// `scheme://container` (what the builders parse).
        root: String,
        container: String,
        prefix: Path,
    },
}

impl Location {
    /// Parses a location: a filesystem path (relative paths resolve against the current
    /// directory), `file:///abs/path`, `s3://bucket/prefix`, `s3a://…`, `az://container/prefix`,
    /// `azure://…`, or `gs://bucket/prefix`. The prefix may be empty.
    ///
    /// # Errors
    /// [`Error::UnsupportedLocation`] naming what is wrong: an empty location, an unknown
    /// scheme, a missing bucket or container name, a prefix that is not a valid object path
    /// (empty segments, `.` or `..`), a relative `file:` URL. [`Error::Io`] if the current
    /// directory cannot be read for a relative path.
    pub fn parse(location: &str) -> Result<Location> {
        let unsupported = |detail: String| Error::UnsupportedLocation {
            location: location.to_owned(),
            detail,
        };
        if location.trim().is_empty() {
            return Err(unsupported("empty location".into()));
        }
        let local = |path: PathBuf| Location {
            raw: location.to_owned(),
            target: Target::Local(path),
        };
        if location.starts_with("file:") {
            if !location.starts_with("file://") {
                return Err(unsupported(
                    "not an absolute local file URL: write file:///ABSOLUTE/PATH, or a plain path"
                        .into(),
                ));
            }
            let url = url::Url::parse(location).map_err(|e| unsupported(e.to_string()))?;
            let path = url
                .to_file_path()
                .map_err(|()| unsupported("not an absolute local file URL".into()))?;
            return Ok(local(path));
        }
        let Some((scheme, _)) = location.split_once("://") else {
            let path = PathBuf::from(location);
            if path.is_absolute() {
                return Ok(local(path));
            }
            let cwd = std::env::current_dir().map_err(|source| Error::Io {
                path: ".".to_owned(),
                source,
            })?;
            return Ok(local(cwd.join(path)));
        };
        let backend = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Backend::S3,
            "az" | "azure" => Backend::Azure,
            "gs" => Backend::Gcs,
            "http" | "https" => {
                return Err(unsupported(format!(
                    "{scheme}:// URLs are ambiguous; for an S3-compatible server write s3://BUCKET/PREFIX and set repository.options.endpoint = \"{scheme}://HOST:PORT\", for Azure write az://CONTAINER/PREFIX and set repository.options.account_name"
                )))
            }
            _ => return Err(unsupported(format!("unknown scheme {scheme}://"))),
        };
        let url = url::Url::parse(location).map_err(|e| unsupported(e.to_string()))?;
        let noun = backend.container_noun();
        let container = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                unsupported(format!(
                    "no {noun} name: write {scheme}://{}/PREFIX",
                    noun.to_ascii_uppercase()
                ))
            })?
            .to_owned();
        if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
            return Err(unsupported(format!(
                "user names, passwords and ports do not belong in a {scheme}:// URL: write {scheme}://{}/PREFIX and put the account or endpoint in repository.options, secrets in the environment",
                noun.to_ascii_uppercase()
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(unsupported(
                "a query or fragment (?…, #…) does not belong in a repository URL: put options in repository.options, secrets in the environment".into(),
            ));
        }
        // From the text as written: URL parsing would silently resolve `a/../b` to `b`.
        let after_scheme = location.split_once("://").map_or("", |(_, rest)| rest);
        let prefix_text = after_scheme
            .split_once('/')
            .map_or("", |(_, p)| p)
            .trim_end_matches('/');
        let prefix = Path::parse(prefix_text).map_err(|e| {
            unsupported(format!(
                "the prefix {prefix_text:?} is not a valid object path ({e}): use segments separated by single slashes, without . or .."
            ))
        })?;
        Ok(Location {
            raw: location.to_owned(),
            target: Target::Cloud {
                backend,
                root: format!("{}://{container}", scheme.to_ascii_lowercase()),
                container,
                prefix,
            },
        })
    }

    /// The location as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Which backend it names.
    pub fn backend(&self) -> Backend {
        match &self.target {
            Target::Local(_) => Backend::Local,
            Target::Cloud { backend, .. } => *backend,
        }
    }

    /// The absolute directory of a local location, `None` for a cloud one.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match &self.target {
            Target::Local(p) => Some(p),
            Target::Cloud { .. } => None,
        }
    }

    /// The bucket or container of a cloud location, `None` for a local one.
    pub fn container(&self) -> Option<&str> {
        match &self.target {
            Target::Local(_) => None,
            Target::Cloud { container, .. } => Some(container),
        }
    }

    /// The object prefix inside the bucket or container (empty: its root).
    pub fn prefix(&self) -> Option<&Path> {
        match &self.target {
            Target::Local(_) => None,
            Target::Cloud { prefix, .. } => Some(prefix),
        }
    }

    /// Builds the object store. Local: `LocalFileSystem` rooted at the directory (which must
    /// exist), with fsync. Cloud: the backend's builder, seeded from its standard environment
    /// variables, then `opts.options`, then credential files, with `opts.retry`; S3 with
    /// `S3ConditionalPut::ETagMatch` so that `PutMode::Create` sends `If-None-Match: *`.
    /// Makes no request.
    ///
    /// # Errors
    /// [`Error::BackendConfig`] for an option that is unknown, secret or reserved, an
    /// unreadable credential file, or a builder that refuses the settings (say, Azure without
    /// an account name); [`Error::Backend`] if the local directory cannot be opened.
    pub fn open_store(&self, opts: &BackendOptions) -> Result<Arc<dyn ObjectStore>> {
        match &self.target {
            Target::Local(path) => {
                let store = LocalFileSystem::new_with_prefix(path)
                    .map_err(Error::backend("open", path.display().to_string()))?
                    .with_fsync(true);
                Ok(Arc::new(store))
            }
            Target::Cloud {
                backend,
                root,
                prefix,
                ..
            } => {
                let options = opts.parse_keys(self)?;
                let credentials = self.read_credentials(opts)?;
                let config_error = |e: object_store::Error| self.config_error(e.to_string());
                let retry = opts.retry.to_config();
                let store: Arc<dyn ObjectStore> = match (backend, options) {
                    (Backend::S3, Parsed::S3(keys)) => {
                        let mut b = AmazonS3Builder::from_env().with_url(root.as_str());
                        for (k, v) in keys {
                            b = b.with_config(k, v);
                        }
                        for (k, v) in credentials {
                            let k: AmazonS3ConfigKey = k.parse().expect("known credential key");
                            if b.get_config_value(&k).is_none() {
                                b = b.with_config(k, v);
                            }
                        }
                        let b = b
                            .with_conditional_put(S3ConditionalPut::ETagMatch)
                            .with_retry(retry);
                        Arc::new(b.build().map_err(config_error)?)
                    }
                    (Backend::Azure, Parsed::Azure(keys)) => {
                        let mut b = MicrosoftAzureBuilder::from_env().with_url(root.as_str());
                        for (k, v) in keys {
                            b = b.with_config(k, v);
                        }
                        for (k, v) in credentials {
                            let k: AzureConfigKey = k.parse().expect("known credential key");
                            if b.get_config_value(&k).is_none() {
                                b = b.with_config(k, v);
                            }
                        }
                        Arc::new(b.with_retry(retry).build().map_err(config_error)?)
                    }
                    (Backend::Gcs, Parsed::Gcs(keys)) => {
                        let mut b = GoogleCloudStorageBuilder::from_env().with_url(root.as_str());
                        for (k, v) in keys {
                            b = b.with_config(k, v);
                        }
                        for (k, v) in credentials {
                            let k: GoogleConfigKey = k.parse().expect("known credential key");
                            if b.get_config_value(&k).is_none() {
                                b = b.with_config(k, v);
                            }
                        }
                        Arc::new(b.with_retry(retry).build().map_err(config_error)?)
                    }
                    _ => unreachable!("options are parsed for the location's backend"),
                };
                if prefix.as_ref().is_empty() {
                    Ok(store)
                } else {
                    Ok(Arc::new(PrefixStore::new(store, prefix.clone())))
                }
            }
        }
    }

    fn config_error(&self, detail: String) -> Error {
        let backend = self.backend();
        Error::BackendConfig {
            location: self.raw.clone(),
            backend,
            detail,
            hint: backend.credentials_hint(),
        }
    }

    /// Secrets from the systemd credentials directory, as (object_store key, value).
    fn read_credentials(&self, opts: &BackendOptions) -> Result<Vec<(&'static str, String)>> {
        let Some(dir) = &opts.credentials_dir else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for (backend, file, key) in CREDENTIAL_FILES {
            if *backend != self.backend() {
                continue;
            }
            let path = dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let value = text.trim();
                    if value.is_empty() {
                        return Err(self.config_error(format!(
                            "the credential file {} is empty",
                            path.display()
                        )));
                    }
                    found.push((*key, value.to_owned()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.config_error(format!(
                        "cannot read the credential file {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        Ok(found)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

enum Parsed {
    Local,
    S3(Vec<(AmazonS3ConfigKey, String)>),
    Azure(Vec<(AzureConfigKey, String)>),
    Gcs(Vec<(GoogleConfigKey, String)>),
}

impl BackendOptions {
    /// Checks `options` for `location`'s backend: each key must be one of object_store's
    /// configuration keys for it, not a secret (those come from the environment or credential
    /// files) and not one m365bk sets itself (bucket or container name: from the URL; S3
    /// `conditional_put`: always `etag`). Options given for a local location are refused.
    ///
    /// # Errors
    /// [`Error::BackendConfig`] naming the key and the fix.
    pub fn check(&self, location: &Location) -> Result<()> {
        self.parse_keys(location).map(|_| ())
    }

    fn parse_keys(&self, location: &Location) -> Result<Parsed> {
        let backend = location.backend();
        let bad = |key: &str, why: String| {
            location.config_error(format!("repository.options.{key}: {why}"))
        };
        let secret = |key: &str, env: &str| {
            bad(
                key,
                format!(
                    "is a secret, and secrets are not read from the config file: set ${env} or a systemd credential instead"
                ),
            )
        };
        let reserved = |key: &str, why: &str| bad(key, why.to_owned());
        let unknown = |key: &str, examples: &str| {
            bad(
                key,
                format!("is not a {backend} option (known ones include {examples})"),
            )
        };
        match backend {
            Backend::Local => match self.options.keys().next() {
                Some(key) => Err(bad(
                    key,
                    "options apply only to s3://, az:// and gs:// locations: remove [repository.options]".into(),
                )),
                None => Ok(Parsed::Local),
            },
            Backend::S3 => {
                let mut out = Vec::new();
                for (key, value) in &self.options {
                    let k: AmazonS3ConfigKey = key.to_ascii_lowercase().parse().map_err(|_| {
                        unknown(key, "region, endpoint, allow_http, virtual_hosted_style_request, timeout, connect_timeout, proxy_url")
                    })?;
                    match k {
                        AmazonS3ConfigKey::AccessKeyId => return Err(secret(key, "AWS_ACCESS_KEY_ID")),
                        AmazonS3ConfigKey::SecretAccessKey => {
                            return Err(secret(key, "AWS_SECRET_ACCESS_KEY"))
                        }
                        AmazonS3ConfigKey::Token => return Err(secret(key, "AWS_SESSION_TOKEN")),
                        // S3EncryptionConfigKey is not exported: name the SSE-C key by its
                        // canonical name.
                        AmazonS3ConfigKey::Encryption(_)
                            if k.as_ref() == "aws_sse_customer_key_base64" =>
                        {
                            return Err(secret(key, "AWS_SSE_CUSTOMER_KEY_BASE64"))
                        }
                        AmazonS3ConfigKey::Bucket => {
                            return Err(reserved(key, "the bucket comes from repository.url (s3://BUCKET/PREFIX): remove this option"))
                        }
                        AmazonS3ConfigKey::ConditionalPut => {
                            return Err(reserved(key, "m365bk always uses conditional put with If-None-Match (etag), which its format relies on: remove this option"))
                        }
                        _ => out.push((k, value.clone())),
                    }
                }
                Ok(Parsed::S3(out))
            }
            Backend::Azure => {
                let mut out = Vec::new();
                for (key, value) in &self.options {
                    let k: AzureConfigKey = key.to_ascii_lowercase().parse().map_err(|_| {
                        unknown(key, "account_name, endpoint, use_emulator, allow_http, timeout, connect_timeout, proxy_url")
                    })?;
                    match k {
                        AzureConfigKey::AccessKey => {
                            return Err(secret(key, "AZURE_STORAGE_ACCOUNT_KEY"))
                        }
                        AzureConfigKey::SasKey => return Err(secret(key, "AZURE_STORAGE_SAS_TOKEN")),
                        AzureConfigKey::ClientSecret => {
                            return Err(secret(key, "AZURE_CLIENT_SECRET"))
                        }
                        AzureConfigKey::Token => return Err(secret(key, "AZURE_STORAGE_TOKEN")),
                        AzureConfigKey::FabricSessionToken => {
                            return Err(secret(key, "AZURE_FABRIC_SESSION_TOKEN"))
                        }
                        AzureConfigKey::EncryptionKey => {
                            return Err(secret(key, "AZURE_STORAGE_ENCRYPTION_KEY"))
                        }
                        AzureConfigKey::ContainerName => {
                            return Err(reserved(key, "the container comes from repository.url (az://CONTAINER/PREFIX): remove this option"))
                        }
                        _ => out.push((k, value.clone())),
                    }
                }
                Ok(Parsed::Azure(out))
            }
            Backend::Gcs => {
                let mut out = Vec::new();
                for (key, value) in &self.options {
                    let k: GoogleConfigKey = key.to_ascii_lowercase().parse().map_err(|_| {
                        unknown(key, "service_account (a key file's path), timeout, connect_timeout, proxy_url")
                    })?;
                    match k {
                        GoogleConfigKey::ServiceAccountKey => {
                            return Err(secret(key, "GOOGLE_SERVICE_ACCOUNT_KEY"))
                        }
                        GoogleConfigKey::BearerToken => {
                            return Err(secret(key, "GOOGLE_BEARER_TOKEN"))
                        }
                        GoogleConfigKey::Bucket => {
                            return Err(reserved(key, "the bucket comes from repository.url (gs://BUCKET/PREFIX): remove this option"))
                        }
                        _ => out.push((k, value.clone())),
                    }
                }
                Ok(Parsed::Gcs(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BackendOptions {
        BackendOptions {
            options: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cloud_urls_name_backend_container_and_prefix() {
        for (url, backend, container, prefix) in [
            ("s3://bucket/a/b", Backend::S3, "bucket", "a/b"),
            ("s3a://bucket", Backend::S3, "bucket", ""),
            ("s3://bucket/a/b/", Backend::S3, "bucket", "a/b"),
            ("az://backups/m365", Backend::Azure, "backups", "m365"),
            ("azure://backups/m365", Backend::Azure, "backups", "m365"),
            ("gs://bkt/x", Backend::Gcs, "bkt", "x"),
        ] {
            let loc = Location::parse(url).unwrap();
            assert_eq!(loc.backend(), backend, "{url}");
            assert_eq!(loc.container(), Some(container), "{url}");
            assert_eq!(loc.prefix().unwrap().as_ref(), prefix, "{url}");
            assert_eq!(loc.local_path(), None);
            assert_eq!(loc.to_string(), url);
        }
    }

    #[test]
    fn paths_and_file_urls_are_local() {
        let loc = Location::parse("/var/lib/m365bk/repo").unwrap();
        assert_eq!(loc.backend(), Backend::Local);
        assert_eq!(
            loc.local_path(),
            Some(std::path::Path::new("/var/lib/m365bk/repo"))
        );
        let loc = Location::parse("file:///srv/repo").unwrap();
        assert_eq!(loc.local_path(), Some(std::path::Path::new("/srv/repo")));
        let loc = Location::parse("rel/repo").unwrap();
        assert!(loc.local_path().unwrap().is_absolute());
        assert!(loc.local_path().unwrap().ends_with("rel/repo"));
    }

    #[test]
    fn bad_locations_say_what_is_wrong() {
        for (url, says) in [
            ("", "empty location"),
            ("ftp://host/x", "unknown scheme ftp://"),
            ("https://s3.example.com/b", "repository.options.endpoint"),
            ("s3:///prefix", "no bucket name: write s3://BUCKET/PREFIX"),
            (
                "az:///prefix",
                "no container name: write az://CONTAINER/PREFIX",
            ),
            ("s3://key:secret@bucket/p", "secrets in the environment"),
            ("s3://bucket:9000/p", "ports do not belong"),
            ("s3://bucket/p?region=x", "query or fragment"),
            ("s3://bucket/a//b", "not a valid object path"),
            ("s3://bucket/a/../b", "not a valid object path"),
            ("file:relative", "not an absolute local file URL"),
        ] {
            let err = Location::parse(url).unwrap_err();
            assert!(
                matches!(err, Error::UnsupportedLocation { .. }),
                "{url}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains(says), "{url}: {text}");
            assert!(text.contains("repository.url"), "{url}: {text}");
        }
    }

    #[test]
    fn options_are_checked_per_backend() {
        let s3 = Location::parse("s3://b/p").unwrap();
        let az = Location::parse("az://c/p").unwrap();
        let local = Location::parse("/srv/repo").unwrap();
        for (key, value) in [
            ("region", "eu-west-1"),
            ("endpoint", "http://127.0.0.1:9000"),
            ("allow_http", "true"),
            ("AWS_REGION", "eu-west-1"),
            ("timeout", "30s"),
            ("virtual_hosted_style_request", "false"),
        ] {
            opts(&[(key, value)]).check(&s3).unwrap();
        }
        for key in [
            "account_name",
            "use_emulator",
            "endpoint",
            "connect_timeout",
        ] {
            opts(&[(key, "x")]).check(&az).unwrap();
        }
        let cases: &[(&Location, &str, &str)] = &[
            (&s3, "secret_access_key", "$AWS_SECRET_ACCESS_KEY"),
            (&s3, "aws_access_key_id", "$AWS_ACCESS_KEY_ID"),
            (&s3, "session_token", "$AWS_SESSION_TOKEN"),
            (
                &s3,
                "sse_customer_key_base64",
                "$AWS_SSE_CUSTOMER_KEY_BASE64",
            ),
            (&s3, "conditional_put", "If-None-Match"),
            (&s3, "bucket", "comes from repository.url"),
            (&s3, "regoin", "is not a S3 option"),
            (&az, "account_key", "$AZURE_STORAGE_ACCOUNT_KEY"),
            (&az, "sas_token", "$AZURE_STORAGE_SAS_TOKEN"),
            (&az, "client_secret", "$AZURE_CLIENT_SECRET"),
            (&az, "container_name", "comes from repository.url"),
            (&local, "region", "only to s3://, az:// and gs://"),
        ];
        for (loc, key, says) in cases {
            let err = opts(&[(key, "v")]).check(loc).unwrap_err();
            assert!(matches!(err, Error::BackendConfig { .. }), "{key}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("repository.options.{key}")),
                "{text}"
            );
            assert!(text.contains(says), "{key}: {text}");
        }
    }

    #[test]
    fn credential_files_fill_only_what_the_environment_leaves_unset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("azure-storage-account-key"), "  \n").unwrap();
        let az = Location::parse("az://c/p").unwrap();
        let backend = BackendOptions {
            options: [("account_name".to_string(), "acct".to_string())].into(),
            credentials_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let err = az.open_store(&backend).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        // Files of other backends are not read.
        let s3 = Location::parse("s3://b").unwrap();
        assert!(s3.read_credentials(&backend).unwrap().is_empty());
    }

    #[test]
    fn retry_defaults_are_lower_than_object_stores() {
        let ours = RetryOptions::default().to_config();
        let theirs = RetryConfig::default();
        assert!(ours.max_retries < theirs.max_retries);
        assert!(ours.retry_timeout < theirs.retry_timeout);
    }
}
