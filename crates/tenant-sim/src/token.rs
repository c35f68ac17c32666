//! The Microsoft identity platform's token endpoint (client credentials grant) and the
//! simulator's own token signing and verification.
//!
//! Tokens are HS256 JWTs signed with a random key generated at start (clients must treat Graph
//! tokens as opaque; only the claims matter). Claims follow Microsoft's v1.0 app-only access
//! tokens: `aud`, `iss`, `iat`, `nbf`, `exp`, `tid`, `appid`, `app_displayname`, `idtyp`,
//! `oid`, `sub`, `ver`, and `roles` — omitted entirely without admin consent or roles.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ids;
use crate::server::Sim;
use crate::wire::{AppId, Ctx};

pub(crate) const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

/// Claims of an app-only access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub aud: String,
    pub iss: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub app_displayname: String,
    pub appid: String,
    pub appidacr: String,
    pub idp: String,
    pub idtyp: String,
    pub oid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    pub sub: String,
    pub tid: String,
    pub uti: String,
    pub ver: String,
}

/// Claims of a pre-authenticated download URL token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DownloadClaims {
    /// Always `"download"`, so an access token can never pass as a download token.
    pub typ: String,
    pub drive: String,
    pub item: String,
    pub exp: u64,
    /// Makes every URL unique, as OneDrive's are (an expired one is never handed out again).
    #[serde(default)]
    pub jti: String,
}

/// Why a bearer token was refused (401 `InvalidAuthenticationToken`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRejection {
    Missing,
    Malformed,
    Invalid,
    Expired,
    WrongAudience,
}

impl TokenRejection {
    /// Graph's message for each case.
    pub(crate) fn message(self) -> &'static str {
        match self {
            TokenRejection::Missing => "Access token is empty.",
            TokenRejection::Malformed => {
                "IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in JWS or JWE Compact Serialization Format."
            }
            TokenRejection::Invalid => "Access token validation failure.",
            TokenRejection::Expired => "Lifetime validation failed, the token is expired.",
            TokenRejection::WrongAudience => "Access token validation failure. Invalid audience.",
        }
    }
}

/// The simulator's signing key.
pub(crate) struct TokenKeys {
    secret: [u8; 32],
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl TokenKeys {
    pub(crate) fn generate() -> Self {
        TokenKeys {
            secret: rand::random(),
        }
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&self.secret))
            .unwrap_or_default()
    }

    pub(crate) fn issue(&self, claims: &Claims) -> String {
        self.sign(claims)
    }

    /// Verifies signature and lifetime; `audience` `None` accepts any audience.
    pub(crate) fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Claims, TokenRejection> {
        self.verify_with_clock_offset(token, audience, 0)
    }

    /// [`TokenKeys::verify`] with the simulator's clock `clock_offset_secs` ahead of the
    /// system clock (a client whose clock is behind: its tokens expire earlier than it thinks).
    pub(crate) fn verify_with_clock_offset(
        &self,
        token: &str,
        audience: Option<&str>,
        clock_offset_secs: i64,
    ) -> Result<Claims, TokenRejection> {
        if token.is_empty() {
            return Err(TokenRejection::Missing);
        }
        if token.split('.').count() != 3 {
            return Err(TokenRejection::Malformed);
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "nbf", "aud"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenRejection::Expired,
                    _ => TokenRejection::Invalid,
                })?;
        if clock_offset_secs != 0 && (data.claims.exp as i64) < now() as i64 + clock_offset_secs {
            return Err(TokenRejection::Expired);
        }
        if let Some(aud) = audience {
            if !data
                .claims
                .aud
                .trim_end_matches('/')
                .eq_ignore_ascii_case(aud)
            {
                return Err(TokenRejection::WrongAudience);
            }
        }
        Ok(data.claims)
    }

    pub(crate) fn sign_download(&self, drive: &str, item: &str, lifetime_secs: u64) -> String {
        self.sign(&DownloadClaims {
            typ: "download".into(),
            drive: drive.into(),
            item: item.into(),
            exp: now() + lifetime_secs,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    pub(crate) fn verify_download(&self, token: &str) -> Option<DownloadClaims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<DownloadClaims>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &v,
        )
        .ok()?;
        (data.claims.typ == "download").then_some(data.claims)
    }
}

/// A certificate registered on an app (its public key and thumbprints), for verifying client
/// assertions.
#[derive(Clone)]
pub(crate) struct KeyCredential {
    /// base64url SHA-256 of the DER certificate (`x5t#S256`).
    pub x5t_s256: String,
    /// base64url SHA-1 of the DER certificate (`x5t`).
    pub x5t: String,
    key: DecodingKey,
}

impl std::fmt::Debug for KeyCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCredential")
            .field("x5t#S256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

impl KeyCredential {
    /// The first `CERTIFICATE` block of `pem_text`, which must hold an RSA public key.
    pub(crate) fn from_pem(pem_text: &str) -> Result<Self, String> {
        use sha2::Digest as _;
        let blocks = pem::parse_many(pem_text).map_err(|e| format!("not PEM text ({e})"))?;
        let cert = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or("no -----BEGIN CERTIFICATE----- block")?;
        let key = DecodingKey::from_rsa_pem(pem::encode(cert).as_bytes())
            .map_err(|e| format!("the certificate holds no RSA public key ({e})"))?;
        let b64 = |d: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
        };
        Ok(KeyCredential {
            x5t_s256: b64(&sha2::Sha256::digest(cert.contents())),
            x5t: b64(&sha1::Sha1::digest(cert.contents())),
            key,
        })
    }
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew Entra ID tolerates on an assertion's `nbf`/`exp`.
const ASSERTION_SKEW_SECS: i64 = 300;

#[derive(Deserialize)]
struct AssertionHeader {
    alg: String,
    #[serde(default)]
    x5t: Option<String>,
    #[serde(default, rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// The `jti` of every client assertion the token endpoint accepted, kept until the assertion
/// could no longer pass the time check anyway (`exp` plus the clock skew allowed), so that an
/// assertion is good for one token request only.
///
/// Microsoft's certificate-credential format requires `jti` ("a unique identifier ... that
/// can be used to prevent replay",
/// <https://learn.microsoft.com/entra/identity-platform/certificate-credentials>) and Entra ID
/// refuses a replayed assertion; the AADSTS code it answers with is not documented on
/// <https://learn.microsoft.com/entra/identity-platform/reference-error-codes>, so the
/// simulator answers 401 `invalid_client` with [`REPLAY_CODE`] (`InvalidAssertion`, the
/// documented catch-all for an assertion refused "because of various reasons") and a
/// description that says the `jti` was used before. An assertion without `jti` cannot be
/// checked and is let through (what Entra ID does with one is not documented either).
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    /// `client_id/jti` (client id lower-cased) → unix second from which it may be forgotten.
    seen: std::collections::HashMap<String, i64>,
}

/// AADSTS code of a replayed assertion: `InvalidAssertion` (Entra's replay-specific code, if
/// any, is not documented).
const REPLAY_CODE: u32 = 50013;

impl ReplayCache {
    /// Records `jti` for `client_id` until `forget_at`; `false` when it is already recorded
    /// (a replay). Forgets entries whose time is up.
    fn first_use(&mut self, client_id: &str, jti: &str, now: i64, forget_at: i64) -> bool {
        self.seen.retain(|_, until| *until >= now);
        match self
            .seen
            .entry(format!("{}/{jti}", client_id.to_ascii_lowercase()))
        {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(forget_at);
                true
            }
        }
    }
}

/// Checks a certificate credential the way Entra ID does: the assertion names a certificate
/// registered on the app (`x5t#S256` or `x5t`), its signature verifies with that certificate
/// (`PS256` or `RS256`), `iss` and `sub` are the client id, `aud` is this token endpoint,
/// now (plus the admin clock offset, `PUT /_sim/admin/clock-offset`) lies within `nbf`..`exp`
/// give or take 5 minutes, and its `jti` was not used before ([`ReplayCache`]).
fn check_assertion(
    sim: &Sim,
    app: &crate::tenant::App,
    tenant: &str,
    client_id: &str,
    assertion: &str,
) -> Result<(), AadError> {
    use base64::Engine as _;
    let malformed = || {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        )
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, _sig] = parts.as_slice() else {
        return Err(malformed());
    };
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .ok()
    };
    let header: AssertionHeader = decode(header_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let claims: AssertionClaims = decode(claims_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let alg = match header.alg.as_str() {
        "PS256" => Algorithm::PS256,
        "RS256" => Algorithm::RS256,
        other => {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                5002738,
                format!(
                    "Invalid JWT token. '{other}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, RS384, RS512, PS256, PS384, PS512'"
                ),
            ))
        }
    };
    let used = header
        .x5t_s256
        .as_deref()
        .map(|t| ("x5t#S256", t))
        .or(header.x5t.as_deref().map(|t| ("x5t", t)));
    let cert = used.and_then(|(kind, thumb)| {
        app.certificates.iter().find(|c| match kind {
            "x5t#S256" => c.x5t_s256 == thumb,
            _ => c.x5t == thumb,
        })
    });
    let Some(cert) = cert else {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                used.map(|(_, t)| t).unwrap_or(""),
                app.client_id
            ),
        ));
    };
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    if jsonwebtoken::decode::<Value>(assertion, &cert.key, &v).is_err() {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    if claims.iss.as_deref() != Some(client_id) || claims.sub.as_deref() != Some(client_id) {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
        ));
    }
    let audiences: Vec<String> = match &claims.aud {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let realm = [
        format!("{}/{}/oauth2/v2.0/token", sim.base_url, tenant),
        format!("{}/{}/oauth2/token", sim.base_url, tenant),
    ];
    if !audiences.iter().any(|a| {
        realm
            .iter()
            .any(|r| r.eq_ignore_ascii_case(a.trim_end_matches('/')))
    }) {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials . (aud {:?}, expected {:?})",
                audiences, realm[0]
            ),
        ));
    }
    let now = now() as i64
        + sim
            .clock_offset_secs
            .load(std::sync::atomic::Ordering::Relaxed);
    let (Some(nbf), Some(exp)) = (claims.nbf.or(claims.exp.map(|e| e - 600)), claims.exp) else {
        return Err(malformed());
    };
    if now + ASSERTION_SKEW_SECS < nbf || now - ASSERTION_SKEW_SECS > exp {
        let fmt = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|d| d.format("%m/%d/%Y %H:%M:%S").to_string())
                .unwrap_or_default()
        };
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
                fmt(now),
                fmt(nbf),
                fmt(exp)
            ),
        ));
    }
    if let Some(jti) = claims.jti.as_deref() {
        let first = sim
            .assertion_ids()
            .first_use(client_id, jti, now, exp + ASSERTION_SKEW_SECS);
        if !first {
            return Err(aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                REPLAY_CODE,
                format!(
                    "The client assertion with identifier (jti) '{jti}' has already been used. A client assertion is good for one token request: sign a new one with a new jti for every request. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials ."
                ),
            ));
        }
    }
    Ok(())
}

/// Extracts the bearer token from an `Authorization` header value.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

// ---------------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------------

struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

fn aad_error(
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: impl Into<String>,
) -> AadError {
    AadError {
        status,
        error,
        code,
        description: description.into(),
    }
}

fn aad_response(e: AadError, ctx: &Ctx) -> Response {
    let ts = ctx.date.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": e.error,
        "error_description": format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            e.code, e.description, ctx.request_id, ctx.client_request_id, ts
        ),
        "error_codes": [e.code],
        "timestamp": ts,
        "trace_id": ctx.request_id,
        "correlation_id": ctx.client_request_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={}", e.code),
    });
    aad_json(e.status, &body)
}

fn aad_json(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn missing(param: &str) -> AadError {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

/// The audience a `scope` names, if it is a single `<resource>/.default` the tenant serves.
fn audience_for_scope(scope: &str) -> Result<String, AadError> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let bad_shape = || {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )
    };
    let [single] = scopes.as_slice() else {
        return Err(bad_shape());
    };
    let Some(resource) = single.strip_suffix("/.default") else {
        return Err(bad_shape());
    };
    let resource = resource.trim_end_matches('/');
    let lower = resource.to_ascii_lowercase();
    let known = lower == GRAPH_AUDIENCE
        || lower == "https://outlook.office365.com"
        || url::Url::parse(&lower).ok().is_some_and(|u| {
            u.scheme() == "https"
                && u.path() == "/"
                && u.host_str().is_some_and(|h| {
                    h.ends_with(".sharepoint.com") && h.len() > ".sharepoint.com".len()
                })
        });
    if known {
        Ok(lower)
    } else {
        Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {single} is not valid."
            ),
        ))
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token_endpoint(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    match issue_token(&sim, &tenant, &body) {
        Ok((app_id, body)) => {
            let mut r = aad_json(StatusCode::OK, &body);
            r.extensions_mut().insert(AppId(app_id));
            r
        }
        Err(e) => aad_response(e, &ctx),
    }
}

fn issue_token(sim: &Sim, tenant: &str, body: &[u8]) -> Result<(String, Value), AadError> {
    if !tenant.eq_ignore_ascii_case(&sim.tenant_id) {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        ));
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let grant = get("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant != "client_credentials" {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let client_id = get("client_id").ok_or_else(|| missing("client_id"))?;
    let app = {
        let state = sim.state();
        state.app(client_id).cloned()
    };
    let Some(app) = app else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                sim.tenant_id
            ),
        ));
    };
    match (get("client_secret"), get("client_assertion")) {
        // A certificate-only app has no secret, so any secret is wrong (7000215).
        (Some(secret), _) => {
            if app.client_secret.as_deref() != Some(secret) {
                return Err(aad_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                        app.client_id
                    ),
                ));
            }
        }
        (None, Some(assertion)) => {
            if get("client_assertion_type") != Some(JWT_BEARER) {
                return Err(missing("client_assertion_type"));
            }
            check_assertion(sim, &app, tenant, client_id, assertion)?;
        }
        (None, None) => {
            return Err(aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    }
    let scope = get("scope").ok_or_else(|| missing("scope"))?;
    let aud = audience_for_scope(scope)?;
    let now = now();
    let lifetime = sim
        .token_lifetime_secs
        .load(std::sync::atomic::Ordering::Relaxed);
    let issued = now.saturating_sub(300);
    let oid = ids::guid(&["serviceprincipal", &app.client_id.to_ascii_lowercase()]);
    let iss = format!("https://sts.windows.net/{}/", sim.tenant_id);
    let claims = Claims {
        aud,
        iss: iss.clone(),
        iat: issued,
        nbf: issued,
        exp: now + lifetime,
        app_displayname: app.display_name.clone(),
        appid: app.client_id.clone(),
        appidacr: "1".into(),
        idp: iss,
        idtyp: "app".into(),
        oid: oid.clone(),
        roles: (app.admin_consent && !app.roles.is_empty()).then(|| app.roles.clone()),
        sub: oid,
        tid: sim.tenant_id.clone(),
        uti: ids::random_token(),
        ver: "1.0".into(),
    };
    let token = sim.keys.issue(&claims);
    Ok((
        app.client_id.clone(),
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules() {
        assert_eq!(
            audience_for_scope("https://graph.microsoft.com/.default").ok(),
            Some(GRAPH_AUDIENCE.to_string())
        );
        assert!(audience_for_scope("https://contoso.sharepoint.com/.default").is_ok());
        assert!(audience_for_scope("https://outlook.office365.com/.default").is_ok());
        assert_eq!(
            audience_for_scope("https://graph.microsoft.com/.default offline_access")
                .err()
                .map(|e| e.code),
            Some(1002012)
        );
        assert_eq!(
            audience_for_scope("https://graph.microsoft.com/Mail.Read")
                .err()
                .map(|e| e.code),
            Some(1002012)
        );
        assert_eq!(
            audience_for_scope("https://foo.microsoft.com/.default")
                .err()
                .map(|e| e.code),
            Some(70011)
        );
        assert_eq!(
            audience_for_scope("https://evil.com/x.sharepoint.com/.default")
                .err()
                .map(|e| e.code),
            Some(70011)
        );
    }

    #[test]
    fn a_jti_is_good_once_until_it_may_be_forgotten() {
        let mut c = ReplayCache::default();
        assert!(c.first_use("App", "j1", 100, 200));
        assert!(
            !c.first_use("app", "j1", 150, 250),
            "same app, same jti: replay"
        );
        assert!(c.first_use("other", "j1", 150, 250), "jti is per app");
        assert!(c.first_use("app", "j2", 150, 250));
        // Past its time the entry is forgotten (the time check refuses such an assertion).
        assert!(c.first_use("app", "j1", 201, 300));
        assert_eq!(c.seen.len(), 3);
    }

    #[test]
    fn download_tokens_are_not_access_tokens() {
        let k = TokenKeys::generate();
        let dl = k.sign_download("d", "i", 60);
        assert!(k.verify_download(&dl).is_some());
        assert!(k.verify(&dl, None).is_err());
        let other = TokenKeys::generate();
        assert!(other.verify_download(&dl).is_none());
    }
}
