//! The crate's one error type, and the parsers for Microsoft's two error body shapes.

use std::time::Duration;

use serde::Deserialize;

/// `Result` with this crate's [`enum@Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to Microsoft.
///
/// Classify with the methods ([`Error::is_transient`], [`Error::status`],
/// [`Error::graph_code`], [`Error::is_access_denied`]), not by matching message text.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The Microsoft identity platform token endpoint refused the client-credentials request.
    ///
    /// `aadsts` is the numeric `AADSTS` code (`7000215` wrong secret, `7000222` expired secret,
    /// `700016` unknown application, `90002` unknown tenant, `700027` certificate not
    /// registered or bad signature, `700024` assertion outside its time range (clock), ...);
    /// the message names the fix.
    /// See <https://learn.microsoft.com/entra/identity-platform/reference-error-codes>.
    #[error(
        "token request refused (HTTP {status}, {error}{}): {}; {}",
        aadsts.map(|c| format!(", AADSTS{c}")).unwrap_or_default(),
        first_line(description),
        token_fix(*aadsts, error)
    )]
    Token {
        /// HTTP status of the token endpoint's answer.
        status: u16,
        /// OAuth `error` field (`invalid_client`, `unauthorized_client`, `invalid_request`, ...).
        error: String,
        /// First entry of `error_codes`, else the number after `AADSTS` in the description.
        aadsts: Option<u32>,
        /// `error_description` as sent (contains trace and correlation ids).
        description: String,
    },

    /// No HTTP answer at all: DNS, connection refused, TLS, timeout, connection reset.
    #[error(
        "could not reach {url}: {}; check authority_url / graph_url in the configuration and \
         the network path (DNS, proxy, firewall, TLS inspection)",
        error_chain(source)
    )]
    Unreachable {
        /// The URL that could not be reached (without query).
        url: String,
        /// What reqwest reported.
        source: reqwest::Error,
    },

    /// Microsoft Graph (or a download/upload host) answered with an error status.
    ///
    /// See <https://learn.microsoft.com/graph/errors>.
    #[error(
        "{method} {url} failed: HTTP {status} {code}: {message} (request-id {}){}",
        request_id.as_deref().unwrap_or("none"),
        api_hint(*status, code)
    )]
    Api {
        /// HTTP status.
        status: u16,
        /// Graph error code (`ErrorAccessDenied`, `accessDenied`, `Authorization_RequestDenied`,
        /// `InvalidAuthenticationToken`, `SyncStateNotFound`, ...); empty when the body had none.
        code: String,
        /// Graph's message, or the start of an unparsable body.
        message: String,
        /// The `request-id` response header (or `innerError.request-id`): quote it to Microsoft.
        request_id: Option<String>,
        /// HTTP method.
        method: String,
        /// URL without query.
        url: String,
    },

    /// A success answer whose body is not the JSON expected (invalid, truncated, wrong shape).
    #[error("invalid or truncated JSON from {url}: {detail}")]
    Decode {
        /// URL without query.
        url: String,
        /// Parser or transport detail.
        detail: String,
    },

    /// Microsoft kept answering 429/503/504/509 until the retry budget ran out.
    ///
    /// See <https://learn.microsoft.com/graph/throttling>.
    #[error(
        "{url}: still throttled or unavailable after {attempts} attempts and {waited:?} of \
         waiting (see https://learn.microsoft.com/graph/throttling); lower the job's \
         concurrency or run it later"
    )]
    Throttled {
        /// URL without query.
        url: String,
        /// Requests sent, the first included.
        attempts: u32,
        /// Total time slept between them.
        waited: Duration,
    },

    /// An absolute URL (nextLink, deltaLink) that does not belong to the configured Graph base.
    #[error("refusing to send a token to {url}: it is not under the Graph base {expected_origin}")]
    ForeignUrl {
        /// The URL refused.
        url: String,
        /// Origin of the configured Graph base URL.
        expected_origin: String,
    },

    /// Microsoft answered something this client cannot continue from (missing `uploadUrl`,
    /// redirect without `Location`, resumed download of a changed file, ...).
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// URL without query.
        url: String,
        /// What was wrong.
        detail: String,
    },

    /// A download's body broke off and could not be resumed.
    #[error("download from {url} broke off at byte {offset}: {detail}")]
    Interrupted {
        /// URL without query.
        url: String,
        /// Bytes delivered to the caller before the break.
        offset: u64,
        /// Transport detail.
        detail: String,
    },

    /// Reading the caller's upload source failed, or it did not hold `total_size` bytes.
    #[error("upload source for {url}: {detail}")]
    Source {
        /// Upload session URL (without query).
        url: String,
        /// What was wrong.
        detail: String,
        /// The source's I/O error, if that was the cause.
        #[source]
        source: Option<std::io::Error>,
    },

    /// graph-rs-sdk failed before or while sending (no HTTP answer).
    #[error("graph-rs-sdk request to {url} failed: {detail}")]
    Sdk {
        /// URL without query.
        url: String,
        /// The SDK's error, flattened.
        detail: String,
        /// True for connect failures and timeouts.
        transient: bool,
    },

    /// The access token is not a decodable JWT.
    #[error("access token is not a readable JWT: {detail}")]
    Claims {
        /// What was wrong.
        detail: String,
    },

    /// A caller-supplied value was invalid (path, header, fragment size, client settings).
    #[error("invalid input: {detail}")]
    Invalid {
        /// What was wrong and what to do.
        detail: String,
    },

    /// A [`crate::DeltaJournal`] could not save or read delta pages.
    #[error("saving delta progress failed: {detail}")]
    Journal {
        /// What failed (the storage's own error text).
        detail: String,
    },
}

impl Error {
    /// True when the same request may succeed later without anyone changing anything:
    /// throttling, 5xx, network failures, broken downloads. Permission errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Throttled { .. } | Error::Unreachable { .. } | Error::Interrupted { .. } => true,
            Error::Api { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504 | 509),
            Error::Token { status, .. } => *status >= 500 || *status == 429,
            Error::Sdk { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The HTTP status Microsoft answered with, for [`Error::Api`] and [`Error::Token`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Token { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Graph error code (`error.code`) of an [`Error::Api`], when the body had one.
    pub fn graph_code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// The `AADSTS` number of an [`Error::Token`].
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            Error::Token { aadsts, .. } => *aadsts,
            _ => None,
        }
    }

    /// The `request-id` Microsoft gave the failed request, to quote in a support case.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// True for HTTP 403 from Graph: a missing permission, an application access policy, a
    /// protected API not approved, ... (the gate tells these apart).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Error::Api { status: 403, .. })
    }

    /// True when a delta token is no longer usable and the caller must start a full
    /// enumeration again (HTTP 410 `SyncStateNotFound` / `resyncRequired`, ...).
    ///
    /// See <https://learn.microsoft.com/graph/delta-query-overview>.
    pub fn is_resync_required(&self) -> bool {
        match self {
            Error::Api { status: 410, .. } => true,
            Error::Api { code, .. } => {
                let c = code.to_ascii_lowercase();
                c == "syncstatenotfound"
                    || c == "syncstateinvalid"
                    || c == "resyncrequired"
                    || c == "errorinvalidsyncstatedata"
            }
            _ => false,
        }
    }

    /// True when a stored delta or next link cannot be followed and the collection must be
    /// enumerated again: [`Error::is_resync_required`], or a link under another origin than the
    /// configured Graph base (the Graph URL in the config changed since it was stored).
    pub fn is_sync_state_lost(&self) -> bool {
        matches!(self, Error::ForeignUrl { .. }) || self.is_resync_required()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// Flattens an error and its sources ("error sending request: connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// What an administrator should do about a token refusal.
fn token_fix(aadsts: Option<u32>, error: &str) -> &'static str {
    match aadsts {
        Some(7000215) => {
            "check that the client secret (tenant.client_secret_file, else $M365BK_CLIENT_SECRET, else \
             the client-secret credential) holds the secret VALUE (shown once when the secret was \
             created), not the secret ID"
        }
        Some(7000222) => "the client secret has expired: create a new one in Entra ID and update tenant.client_secret_file (or $M365BK_CLIENT_SECRET, or the client-secret credential)",
        Some(700016) => {
            "check client_id / tenant_id: no application with this client_id exists in this \
             tenant (wrong tenant, or the app was never consented there)"
        }
        Some(90002) | Some(900023) | Some(900021) => {
            "check tenant_id: the tenant does not exist (use the directory (tenant) ID GUID or a \
             verified domain)"
        }
        Some(7000229) => "the application has no service principal in this tenant: an administrator must grant admin consent",
        Some(500011) | Some(500021) => {
            "the requested resource (API audience) is not available in this tenant"
        }
        Some(700027) => {
            "the certificate that signed the client assertion is not registered on the app \
             registration, or the private key does not belong to it: upload the certificate of \
             tenant.certificate_file under Certificates & secrets in Entra ID (its thumbprint there \
             must equal `openssl x509 -in CERTFILE -noout -fingerprint -sha1`), or point \
             tenant.private_key_file at the key of the registered certificate"
        }
        Some(700024) => {
            "the client assertion is outside its valid time range: this host's clock is wrong; \
             sync it (NTP, `timedatectl`) — m365bk signs each assertion valid for 5 minutes \
             from its own clock"
        }
        Some(700021) => {
            "the client assertion's iss/sub does not match client_id: check tenant.client_id \
             is the Application (client) ID of the app the certificate is registered on"
        }
        Some(700023) => {
            "the client assertion's audience is not this token endpoint: check \
             tenant.authority_url and tenant.tenant_id (the assertion is addressed to \
             {authority_url}/{tenant_id}/oauth2/v2.0/token)"
        }
        Some(5002738) => {
            "the assertion's signature algorithm is refused: set tenant.assertion_alg to \
             \"PS256\" (recommended) or \"RS256\""
        }
        Some(65001) => "admin consent has not been granted for this application",
        Some(50126) | Some(7000218) => "check the credential type: this client needs a client secret or certificate",
        _ if error == "invalid_client" => {
            "check client_id, tenant_id and the client secret or certificate"
        }
        _ => "see https://learn.microsoft.com/entra/identity-platform/reference-error-codes",
    }
}

fn api_hint(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (401, _) => "; the access token was rejected (expired, wrong audience, or the API refuses app-only tokens)",
        (403, _) => {
            "; the application lacks a permission for this call or an access policy excludes \
             this resource (check admin consent and application access policies)"
        }
        (410, _) => "; the delta token expired: a full enumeration is needed",
        _ => "",
    }
}

#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphErrorInner,
}

#[derive(Deserialize)]
struct GraphErrorInner {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "innerError", alias = "innererror")]
    inner_error: Option<GraphInnerError>,
}

#[derive(Deserialize)]
struct GraphInnerError {
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

/// Graph error `code`, `message` and `innerError.request-id` from a body, if it is Graph's shape.
pub(crate) fn parse_graph_error(body: &[u8]) -> Option<(String, String, Option<String>)> {
    let parsed: GraphErrorBody = serde_json::from_slice(body).ok()?;
    let inner = parsed.error;
    Some((
        inner.code,
        inner.message,
        inner.inner_error.and_then(|i| i.request_id),
    ))
}

#[derive(Deserialize)]
struct TokenErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// `(error, aadsts, description)` from a token endpoint error body.
pub(crate) fn parse_token_error(body: &[u8]) -> Option<(String, Option<u32>, String)> {
    let parsed: TokenErrorBody = serde_json::from_slice(body).ok()?;
    let aadsts = parsed
        .error_codes
        .first()
        .copied()
        .or_else(|| aadsts_from_text(&parsed.error_description));
    Some((parsed.error, aadsts, parsed.error_description))
}

fn aadsts_from_text(text: &str) -> Option<u32> {
    let start = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The start of a body that is not JSON, for an error message.
pub(crate) fn body_snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut s: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > MAX {
        s.push_str(" ...");
    }
    if s.is_empty() {
        "(empty body)".to_owned()
    } else {
        format!("unparsable body: {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_error_body_is_parsed() {
        let body = br#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied.","innerError":{"request-id":"abc","date":"2024-01-01T00:00:00"}}}"#;
        let (code, message, rid) = parse_graph_error(body).unwrap();
        assert_eq!(code, "ErrorAccessDenied");
        assert_eq!(message, "Access is denied.");
        assert_eq!(rid.as_deref(), Some("abc"));
    }

    #[test]
    fn token_error_takes_code_from_list_or_text() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#;
        assert_eq!(parse_token_error(body).unwrap().1, Some(7000215));
        let body = br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#;
        assert_eq!(parse_token_error(body).unwrap().1, Some(90002));
    }

    #[test]
    fn token_error_display_names_the_fix() {
        let e = Error::Token {
            status: 401,
            error: "invalid_client".into(),
            aadsts: Some(7000215),
            description: "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1".into(),
        };
        let text = e.to_string();
        assert!(text.contains("AADSTS7000215"), "{text}");
        assert!(text.contains("holds the secret VALUE"), "{text}");
        assert!(!text.contains("Trace ID"), "{text}");
    }

    #[test]
    fn classification() {
        let api = |status: u16, code: &str| Error::Api {
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
            method: "GET".into(),
            url: "u".into(),
        };
        assert!(api(403, "ErrorAccessDenied").is_access_denied());
        assert!(!api(403, "x").is_transient());
        assert!(api(503, "").is_transient());
        assert_eq!(api(503, "").graph_code(), None);
        assert_eq!(
            api(410, "SyncStateNotFound").graph_code(),
            Some("SyncStateNotFound")
        );
        assert!(api(410, "").is_resync_required());
        assert_eq!(
            body_snippet(b"<html>\n oops </html>"),
            "unparsable body: <html> oops </html>"
        );
    }

    #[test]
    fn certificate_refusals_name_the_fix() {
        let refusal = |code: u32| {
            Error::Token {
                status: 401,
                error: "invalid_client".into(),
                aadsts: Some(code),
                description: format!("AADSTS{code}: refused"),
            }
            .to_string()
        };
        assert!(refusal(700027).contains("Certificates & secrets"));
        assert!(refusal(700024).contains("clock"));
        assert!(refusal(700021).contains("tenant.client_id"));
        assert!(refusal(700023).contains("tenant.authority_url"));
        assert!(refusal(5002738).contains("assertion_alg"));
    }
}
