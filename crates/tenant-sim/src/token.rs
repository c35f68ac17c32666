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
        (Some(secret), _) => {
            if secret != app.client_secret {
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
        (None, Some(_)) => {
            return Err(aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. (The simulator accepts client secrets only.)",
            ));
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
    let issued = now.saturating_sub(300);
    let oid = ids::guid(&["serviceprincipal", &app.client_id.to_ascii_lowercase()]);
    let iss = format!("https://sts.windows.net/{}/", sim.tenant_id);
    let claims = Claims {
        aud,
        iss: iss.clone(),
        iat: issued,
        nbf: issued,
        exp: now + sim.token_lifetime_secs,
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
            "expires_in": sim.token_lifetime_secs,
            "ext_expires_in": sim.token_lifetime_secs,
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
    fn download_tokens_are_not_access_tokens() {
        let k = TokenKeys::generate();
        let dl = k.sign_download("d", "i", 60);
        assert!(k.verify_download(&dl).is_some());
        assert!(k.verify(&dl, None).is_err());
        let other = TokenKeys::generate();
        assert!(other.verify_download(&dl).is_none());
    }
}
