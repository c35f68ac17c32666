//! Wire helpers shared by every endpoint: per-request context, Graph's error body, JSON
//! responses with Graph's content type, query and path decoding, time formats.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Graph's JSON content type.
pub(crate) const GRAPH_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Per-request identifiers, echoed in headers and error bodies like Graph does.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub request_id: String,
    pub client_request_id: String,
    pub date: DateTime<Utc>,
}

/// The `app_id` to record in the request log, set by handlers that authenticated a caller.
#[derive(Debug, Clone)]
pub(crate) struct AppId(pub String);

/// A Graph error: `{"error":{"code","message","innerError":{…}}}`.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// `innerError.code`, as OneDrive sends for some errors (`fragmentOverlap`).
    pub inner_code: Option<String>,
}

pub(crate) type GResult = Result<Response, GraphError>;

impl GraphError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        GraphError {
            status,
            code: code.to_string(),
            message: message.into(),
            inner_code: None,
        }
    }

    pub(crate) fn with_inner(mut self, code: &str) -> Self {
        self.inner_code = Some(code.to_string());
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn segment_not_found(segment: &str) -> Self {
        Self::bad_request(format!("Resource not found for the segment '{segment}'."))
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest",
            "Specified HTTP method is not allowed for the request target.",
        )
    }

    /// Exchange's 404 for a missing item or folder.
    pub(crate) fn exchange_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    /// Exchange's 400 for an unknown or deleted mailbox owner.
    pub(crate) fn mailbox_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            "The requested user is invalid.",
        )
    }

    pub(crate) fn directory_not_found(key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
        )
    }

    pub(crate) fn drive_item_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "The resource could not be found.",
        )
    }

    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalidRequest", message)
    }

    pub(crate) fn body(&self, ctx: &Ctx) -> Value {
        let mut inner = json!({
            "date": ctx.date.format("%Y-%m-%dT%H:%M:%S").to_string(),
            "request-id": ctx.request_id,
            "client-request-id": ctx.client_request_id,
        });
        if let Some(code) = &self.inner_code {
            inner["code"] = json!(code);
        }
        json!({"error": {"code": self.code, "message": self.message, "innerError": inner}})
    }

    pub(crate) fn into_response(self, ctx: &Ctx) -> Response {
        json_response(self.status, &self.body(ctx))
    }
}

/// A JSON response with Graph's content type.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(GRAPH_JSON));
    resp
}

pub(crate) fn ok_json(value: &Value) -> GResult {
    Ok(json_response(StatusCode::OK, value))
}

pub(crate) fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// Graph's timestamp format: `2018-09-09T03:15:05Z`.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Outlook's `dateTimeTimeZone.dateTime` format: `2017-04-21T10:00:00.0000000`.
pub(crate) fn outlook_time(t: DateTime<Utc>) -> String {
    format!("{}.0000000", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// Percent-decodes a path segment (`+` stays `+`).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters in order, decoded.
pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A query parameter by name, case-insensitive, with or without the OData `$`.
pub(crate) fn query_get<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let bare = name.trim_start_matches('$');
    query
        .iter()
        .find(|(k, _)| {
            let k = k.trim_start_matches('$');
            k.eq_ignore_ascii_case(bare)
        })
        .map(|(_, v)| v.as_str())
}

/// Encodes a query value for use in a link we hand out.
pub(crate) fn enc(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Applies `$select` loosely: keeps the listed properties plus `id` and OData annotations.
pub(crate) fn apply_select(value: &mut Value, select: Option<&str>) {
    let Some(select) = select else { return };
    let wanted: Vec<String> = select
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if wanted.is_empty() {
        return;
    }
    if let Value::Object(map) = value {
        map.retain(|k, _| {
            k == "id" || k.starts_with('@') || wanted.iter().any(|w| w.eq_ignore_ascii_case(k))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%3D"), "a b=");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("a+b"), "a+b");
    }
}
