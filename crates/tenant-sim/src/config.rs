//! The tenant config (`--tenant-config FILE`, TOML): tenant id, token lifetime, registered apps.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::faults::FaultsConfig;

const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3599;

/// The simulated tenant's identity and its registered applications.
///
/// ```toml
/// tenant_id = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11"
/// token_lifetime_secs = 3599          # optional, default 3599
/// [[apps]]
/// client_id = "0f6d1d5e-7a43-4c55-9d0e-2b7f4c1a9e01"
/// client_secret = "s3cret"            # optional: an app may have certificates only
/// display_name = "m365bk"             # optional, default "m365bk"
/// admin_consent = true                # optional, default true; false → no `roles` claim
/// roles = ["Mail.Read", "User.Read.All"]
/// certificates = ["-----BEGIN CERTIFICATE-----\n…"]  # optional: PEM, for client assertions
/// [faults]                            # optional: see FaultsConfig
/// latency_ms = 0
/// ```
///
/// Unknown keys are rejected, so a misspelt key fails loudly instead of being ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The directory (tenant) id, a GUID; the token endpoint answers only under this id.
    pub tenant_id: String,
    /// Lifetime of issued access tokens, in seconds (`expires_in`).
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u64,
    /// Registered applications (service principals) allowed to request tokens.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Fault injection, latency and throttling; none by default.
    #[serde(default)]
    pub faults: FaultsConfig,
}

/// One app registration: its credentials (a client secret, certificates, or both) and its
/// granted application permissions.
///
/// An app without a secret is a certificate-only registration, as Microsoft recommends for
/// daemons (<https://learn.microsoft.com/entra/identity-platform/certificate-credentials>):
/// the token endpoint accepts only client assertions from it, refuses a request carrying
/// neither credential with `AADSTS7000218` and a client secret with `AADSTS7000215`
/// (<https://learn.microsoft.com/entra/identity-platform/reference-error-codes>). An app with
/// neither a secret nor a certificate is allowed (certificates can be registered at run time)
/// but cannot get a token until it has one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Application (client) id, a GUID.
    pub client_id: String,
    /// The client secret value; `None` for a certificate-only app.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// PEM X.509 certificates registered for certificate credentials (client assertions
    /// signed PS256 with `x5t#S256` or RS256 with `x5t`); more can be added at run time with
    /// `POST /_sim/admin/apps/{client_id}/certificates`.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// `app_displayname` claim.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Whether an administrator granted consent; without it tokens carry no `roles` claim.
    #[serde(default = "default_true")]
    pub admin_consent: bool,
    /// Application permissions (app roles) granted, e.g. `Mail.Read`.
    #[serde(default)]
    pub roles: Vec<String>,
}

fn default_token_lifetime() -> u64 {
    DEFAULT_TOKEN_LIFETIME_SECS
}

fn default_true() -> bool {
    true
}

impl TenantConfig {
    /// Parses and validates a config from TOML text.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key when the text is not valid TOML, has unknown
    /// keys, or a value breaks a rule (ids must be GUIDs, client ids unique, secrets non-empty,
    /// token lifetime at least 1 second).
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: TenantConfig = toml::from_str(text).map_err(|e| Error::Config {
            path: None,
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| Error::Config {
            path: None,
            message,
        })?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// [`Error::ConfigRead`] when the file cannot be read, [`Error::Config`] as for
    /// [`TenantConfig::from_toml`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config { message, .. } => Error::Config {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if uuid::Uuid::parse_str(&self.tenant_id).is_err() {
            return Err(format!(
                "tenant_id {:?} is not a GUID (expected e.g. \"8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11\")",
                self.tenant_id
            ));
        }
        if self.token_lifetime_secs == 0 {
            return Err("token_lifetime_secs must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            if uuid::Uuid::parse_str(&app.client_id).is_err() {
                return Err(format!(
                    "apps[{i}].client_id {:?} is not a GUID",
                    app.client_id
                ));
            }
            if !seen.insert(app.client_id.to_ascii_lowercase()) {
                return Err(format!(
                    "apps[{i}].client_id {} is listed twice",
                    app.client_id
                ));
            }
            if app.client_secret.as_deref() == Some("") {
                return Err(format!(
                    "apps[{i}].client_secret must not be empty (leave the key out for a certificate-only app)"
                ));
            }
            for (j, pem) in app.certificates.iter().enumerate() {
                crate::token::KeyCredential::from_pem(pem)
                    .map_err(|e| format!("apps[{i}].certificates[{j}]: {e}"))?;
            }
        }
        self.faults.validate().map_err(|m| format!("faults.{m}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
tenant_id = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11"
[[apps]]
client_id = "0f6d1d5e-7a43-4c55-9d0e-2b7f4c1a9e01"
client_secret = "x"
roles = ["Mail.Read"]
"#;

    #[test]
    fn defaults_apply() {
        let c = TenantConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.token_lifetime_secs, 3599);
        assert!(c.apps[0].admin_consent);
        assert_eq!(c.apps[0].roles, vec!["Mail.Read".to_string()]);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("roles =", "rolez =");
        let err = TenantConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("rolez"), "{err}");
    }

    #[test]
    fn faults_section_is_parsed_strictly() {
        let text = format!(
            "{GOOD}\n[faults]\nlatency_ms = 3\n[[faults.rules]]\nroute = \"delta\"\nfault = {{ kind = \"status\", status = 429, retry_after = \"0.2\" }}\nnth = 1\n"
        );
        let c = TenantConfig::from_toml(&text).unwrap();
        assert_eq!(c.faults.latency_ms, 3);
        assert_eq!(c.faults.rules.len(), 1);
        let err = TenantConfig::from_toml(&text.replace("nth = 1", "nth = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("faults.rules[0]"), "{err}");
        let err = TenantConfig::from_toml(&text.replace("latency_ms", "latency"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("latency"), "{err}");
    }

    #[test]
    fn certificate_only_apps_have_no_secret_and_an_empty_secret_is_refused() {
        let c = TenantConfig::from_toml(&GOOD.replace("client_secret = \"x\"\n", "")).unwrap();
        assert_eq!(c.apps[0].client_secret, None);
        let err = TenantConfig::from_toml(&GOOD.replace("\"x\"", "\"\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps[0].client_secret"), "{err}");
    }

    #[test]
    fn non_guid_tenant_is_rejected() {
        let text = GOOD.replace("8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11", "contoso");
        let err = TenantConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("tenant_id"), "{err}");
    }
}
