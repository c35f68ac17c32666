//! App-only access tokens from the Microsoft identity platform (client-credentials flow),
//! one cached token per API audience.
//!
//! Implements <https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow>.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::certificate::{CertificateCredential, CLIENT_ASSERTION_TYPE};
use crate::error::{body_snippet, parse_token_error, Error, Result};
use crate::http::{display_url, send_buffered, HttpClient};
use crate::retry::{self, header_str, Call};

/// A cached token is replaced when it has less than this left — or less than a quarter of
/// its lifetime, for tokens shorter than 20 minutes.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Where the identity platform and Microsoft Graph are.
///
/// Defaults: authority `https://login.microsoftonline.com`, Graph base
/// `https://graph.microsoft.com/v1.0`. The token endpoint is
/// `{authority}/{tenant}/oauth2/v2.0/token`; Graph paths are appended to `graph_base`.
/// National clouds and the local tenant simulator (`http://127.0.0.1:PORT`) set both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Identity platform authority (scheme, host, optional path; no tenant).
    pub authority: Url,
    /// Graph service root including the version segment.
    pub graph_base: Url,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            authority: Url::parse("https://login.microsoftonline.com").expect("static URL"),
            graph_base: Url::parse("https://graph.microsoft.com/v1.0").expect("static URL"),
        }
    }
}

/// The API a token is for; each has its own token (its own `aud` and `roles`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Microsoft Graph: `https://graph.microsoft.com`.
    Graph,
    /// Exchange Online (EWS, `full_access_as_app`): `https://outlook.office365.com`.
    ExchangeOnline,
    /// SharePoint Online REST of one tenant: `https://{tenant_host}`
    /// (`tenant_host` like `contoso.sharepoint.com`).
    SharePoint {
        /// Host name of the tenant's SharePoint, without scheme.
        tenant_host: String,
    },
}

impl Audience {
    /// The resource identifier URI, e.g. `https://graph.microsoft.com`.
    pub fn resource(&self) -> String {
        match self {
            Audience::Graph => "https://graph.microsoft.com".to_owned(),
            Audience::ExchangeOnline => "https://outlook.office365.com".to_owned(),
            Audience::SharePoint { tenant_host } => {
                let host = tenant_host
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/');
                format!("https://{host}")
            }
        }
    }

    /// The client-credentials scope: `{resource}/.default` (all application permissions the
    /// administrator consented to).
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource())
    }
}

/// An application's client secret (the secret's VALUE, not its ID).
#[derive(Clone, Debug)]
pub struct ClientSecretCredential {
    /// Directory (tenant) ID GUID or a verified domain.
    pub tenant_id: String,
    /// Application (client) ID GUID.
    pub client_id: String,
    /// The client secret value.
    pub secret: SecretString,
}

/// How the application proves its identity to the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientCredential {
    /// `client_secret=` (a shared secret).
    Secret(ClientSecretCredential),
    /// `client_assertion=` (a JWT signed with the certificate's private key).
    Certificate(CertificateCredential),
}

impl ClientCredential {
    fn tenant_id(&self) -> &str {
        match self {
            ClientCredential::Secret(c) => &c.tenant_id,
            ClientCredential::Certificate(c) => &c.tenant_id,
        }
    }

    fn client_id(&self) -> &str {
        match self {
            ClientCredential::Secret(c) => &c.client_id,
            ClientCredential::Certificate(c) => &c.client_id,
        }
    }
}

impl From<ClientSecretCredential> for ClientCredential {
    fn from(c: ClientSecretCredential) -> Self {
        ClientCredential::Secret(c)
    }
}

impl From<CertificateCredential> for ClientCredential {
    fn from(c: CertificateCredential) -> Self {
        ClientCredential::Certificate(c)
    }
}

/// A bearer token and when it stops working.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    expires_at: SystemTime,
    /// The lifetime the token endpoint granted (`expires_in`); the refresh margin is a
    /// quarter of it when that is less than [`REFRESH_MARGIN`].
    lifetime: Option<Duration>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[REDACTED]")
            .field("expires_at", &httpdate::fmt_http_date(self.expires_at))
            .finish()
    }
}

impl AccessToken {
    /// Wraps a token obtained elsewhere.
    pub fn new(secret: impl Into<String>, expires_at: SystemTime) -> Self {
        AccessToken {
            secret: SecretString::from(secret.into()),
            expires_at,
            lifetime: None,
        }
    }

    /// The bearer value for `Authorization: Bearer …`. Never log it.
    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// When the token expires (from `expires_in`, counted from when the request was sent).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Decodes (does NOT verify) the JWT payload.
    ///
    /// Graph tokens are opaque to clients and cannot be verified by them; trust comes from
    /// having fetched the token over TLS from the configured authority.
    /// See <https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference>.
    ///
    /// # Errors
    /// [`Error::Claims`] when the token is not three dot-separated base64url parts with a JSON
    /// payload.
    pub fn claims(&self) -> Result<TokenClaims> {
        let claims_err = |detail: String| Error::Claims { detail };
        let mut parts = self.secret().split('.');
        let (Some(_header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(claims_err("expected three dot-separated parts".into()));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| claims_err(format!("payload is not base64url: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| claims_err(format!("payload is not the expected JSON: {e}")))
    }
}

/// The claims of an access token m365bk reads. Decoded, NOT verified.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Audience (`https://graph.microsoft.com` or the resource app ID).
    pub aud: Option<String>,
    /// Tenant ID.
    pub tid: Option<String>,
    /// Client ID of the application (v1 tokens; v2 tokens carry `azp`).
    pub appid: Option<String>,
    /// Application permissions (app roles) granted with admin consent; absent when none.
    pub roles: Option<Vec<String>>,
    /// Delegated permissions, space-separated.
    pub scp: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<i64>,
    /// `app` for app-only tokens, `user` for delegated ones.
    pub idtyp: Option<String>,
}

type Slot = Arc<tokio::sync::Mutex<Option<AccessToken>>>;

/// Acquires and caches app-only tokens, one per [`Audience`].
///
/// A cached token is reused until less than [`REFRESH_MARGIN`] (5 min) of it is left;
/// concurrent callers for the same audience wait for one shared request. `Send + Sync`: share
/// it in an `Arc`.
pub struct TokenProvider {
    http: HttpClient,
    endpoints: Endpoints,
    credential: ClientCredential,
    slots: Mutex<HashMap<Audience, Slot>>,
    requests: AtomicU64,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("authority", &self.endpoints.authority.as_str())
            .field("tenant_id", &self.credential.tenant_id())
            .field("client_id", &self.credential.client_id())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds; v1 endpoints sent it as a string.
    expires_in: serde_json::Value,
}

impl TokenProvider {
    /// A provider for one application in one tenant, with a client secret
    /// ([`ClientSecretCredential`]) or a certificate ([`CertificateCredential`]).
    pub fn new(
        http: HttpClient,
        endpoints: Endpoints,
        credential: impl Into<ClientCredential>,
    ) -> Self {
        TokenProvider {
            http,
            endpoints,
            credential: credential.into(),
            slots: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// The endpoints this provider was built with.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Token requests sent so far (retries included).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A token for `audience` with at least [`REFRESH_MARGIN`] left (or a quarter of its
    /// lifetime, if that is shorter), from the cache or from
    /// `POST {authority}/{tenant}/oauth2/v2.0/token` (`grant_type=client_credentials`,
    /// `scope={resource}/.default`, and `client_secret` or a fresh `client_assertion` per
    /// attempt), retried like every call.
    ///
    /// # Errors
    /// [`Error::Token`] when the endpoint refuses (with the `AADSTS` code and the fix),
    /// [`Error::Unreachable`] when the authority cannot be reached, [`Error::Throttled`],
    /// [`Error::Decode`] for a success answer without a token, [`Error::Api`] for an
    /// unparsable error answer.
    pub async fn token(&self, audience: &Audience) -> Result<AccessToken> {
        let slot = self.slot(audience);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref() {
            if is_fresh(token) {
                return Ok(token.clone());
            }
        }
        let token = self.request(audience).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Drops the cached token for `audience` if it is still `stale` (a token Graph rejected),
    /// so the next [`TokenProvider::token`] fetches a new one. Concurrent callers that saw the
    /// same rejection cause one refresh, not one each.
    pub async fn invalidate(&self, audience: &Audience, stale: &str) {
        let slot = self.slot(audience);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|t| t.secret() == stale) {
            *cached = None;
        }
    }

    fn slot(&self, audience: &Audience) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(audience.clone()).or_default().clone()
    }

    fn token_url(&self) -> Result<Url> {
        let mut url = self.endpoints.authority.clone();
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| Error::Invalid {
                detail: format!(
                    "authority_url {} cannot take a path",
                    self.endpoints.authority
                ),
            })?
            .pop_if_empty()
            .extend([self.credential.tenant_id(), "oauth2", "v2.0", "token"]);
        Ok(url)
    }

    async fn request(&self, audience: &Audience) -> Result<AccessToken> {
        let url = self.token_url()?;
        let shown = display_url(&url);
        let scope = audience.scope();
        let options = self.http.options();
        let mut form: Vec<(&'static str, String)> = vec![
            ("client_id", self.credential.client_id().to_owned()),
            ("scope", scope.clone()),
            ("grant_type", "client_credentials".to_owned()),
        ];
        let certificate = match &self.credential {
            ClientCredential::Secret(c) => {
                form.push(("client_secret", c.secret.expose_secret().to_owned()));
                None
            }
            ClientCredential::Certificate(c) => {
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
                Some(c.clone())
            }
        };
        let aud = url.to_string();
        let sent_at = Mutex::new(SystemTime::now());
        let call = Call {
            method: "POST",
            url: &shown,
            idempotent: true,
            counter: &self.requests,
        };
        let resp = retry::run(&options.retry, call, |_| {
            let mut form = form.clone();
            let certificate = certificate.clone();
            let aud = aud.clone();
            let url = url.clone();
            let sent_at = &sent_at;
            let shown = &shown;
            async move {
                // A fresh assertion (new jti, new nbf/exp) for every attempt, signed off the
                // async runtime.
                if let Some(cert) = certificate {
                    let signed = tokio::task::spawn_blocking(move || {
                        cert.assertion(&aud, SystemTime::now())
                    })
                    .await
                    .map_err(|e| Error::Invalid {
                        detail: format!("signing the client assertion failed: {e}"),
                    })??;
                    form.push(("client_assertion", signed));
                }
                *sent_at.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
                let request = self
                    .http
                    .reqwest()
                    .post(url)
                    .header("client-request-id", uuid::Uuid::new_v4().to_string())
                    .timeout(options.request_timeout)
                    .form(&form);
                send_buffered(request, shown).await
            }
        })
        .await?;
        let sent_at = sent_at.into_inner().unwrap_or_else(|p| p.into_inner());

        let request_id = header_str(&resp.headers, "x-ms-request-id")
            .or_else(|| header_str(&resp.headers, "request-id"))
            .map(str::to_owned);
        if (200..300).contains(&resp.status) {
            let parsed: TokenResponse =
                serde_json::from_slice(&resp.body).map_err(|e| Error::Decode {
                    url: shown.clone(),
                    detail: format!("token response: {e}"),
                })?;
            let expires_in = match &parsed.expires_in {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| Error::Decode {
                url: shown.clone(),
                detail: format!(
                    "token response has no usable expires_in: {}",
                    parsed.expires_in
                ),
            })?;
            tracing::debug!(audience = %audience.resource(), expires_in, "acquired access token");
            return Ok(AccessToken {
                secret: SecretString::from(parsed.access_token),
                expires_at: sent_at + Duration::from_secs(expires_in),
                lifetime: Some(Duration::from_secs(expires_in)),
            });
        }
        let err = match parse_token_error(&resp.body) {
            Some((error, aadsts, description)) => Error::Token {
                status: resp.status,
                error,
                aadsts,
                description,
            },
            None => Error::Api {
                status: resp.status,
                code: String::new(),
                message: body_snippet(&resp.body),
                request_id: request_id.clone(),
                method: "POST".to_owned(),
                url: shown.clone(),
            },
        };
        tracing::warn!(
            method = "POST",
            url = shown.as_str(),
            status = resp.status,
            code = err.aadsts().map(|c| format!("AADSTS{c}")).unwrap_or_default(),
            request_id = request_id.as_deref().unwrap_or(""),
            audience = %audience.resource(),
            "token request refused: {err}"
        );
        Err(err)
    }
}

/// A token is used until [`REFRESH_MARGIN`] before it expires; a short-lived token (under 20
/// minutes, as sovereign-cloud policies and the simulator can issue) until a quarter of its
/// lifetime is left, so it is not refetched for every request.
fn is_fresh(token: &AccessToken) -> bool {
    let margin = token
        .lifetime
        .map_or(REFRESH_MARGIN, |l| REFRESH_MARGIN.min(l / 4));
    token
        .expires_at
        .duration_since(SystemTime::now())
        .is_ok_and(|left| left > margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences() {
        assert_eq!(
            Audience::Graph.scope(),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            Audience::ExchangeOnline.resource(),
            "https://outlook.office365.com"
        );
        let sp = Audience::SharePoint {
            tenant_host: "https://contoso.sharepoint.com/".into(),
        };
        assert_eq!(sp.scope(), "https://contoso.sharepoint.com/.default");
    }

    #[test]
    fn claims_are_decoded_without_verification() {
        let payload = serde_json::json!({
            "aud": "https://graph.microsoft.com", "tid": "t", "appid": "a",
            "roles": ["Mail.Read", "Files.Read.All"], "exp": 1700000000, "idtyp": "app"
        });
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"RS256"}"#),
            b64.encode(payload.to_string())
        );
        let token = AccessToken::new(jwt, SystemTime::now());
        let claims = token.claims().unwrap();
        assert_eq!(
            claims.roles.unwrap(),
            vec!["Mail.Read".to_owned(), "Files.Read.All".to_owned()]
        );
        assert_eq!(claims.idtyp.as_deref(), Some("app"));
        assert_eq!(claims.scp, None);
        assert!(AccessToken::new("opaque", SystemTime::now())
            .claims()
            .is_err());
        assert!(!format!("{token:?}").contains("sig"));
    }
}
