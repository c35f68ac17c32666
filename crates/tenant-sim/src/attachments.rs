//! Outlook attachment upload sessions (attachment-createuploadsession,
//! <https://learn.microsoft.com/graph/outlook-large-attachments>) and Graph's 4 MB cap on a
//! single request body.
//!
//! `POST /users/{id}/messages/{id}/attachments/createUploadSession` with
//! `{"AttachmentItem": {"attachmentType": "file", "name", "size", "contentType"?, "isInline"?,
//! "contentId"?}}` answers 201 with an `uploadSession` whose `uploadUrl` is
//! `/_attach/{session}` (pre-authenticated: no `Authorization` header). Each `PUT` carries at
//! most 4 MiB (`Content-Range: bytes a-b/size`), in order: 200 with `nextExpectedRanges`
//! (`["4194304"]`) until the last, then 201 with an empty body and `Location` (the attachment).
//! A range that does not start where the session stands is refused with 416 (overlap) or 409
//! (a gap); `GET` on the URL gives the session's `nextExpectedRanges`. The finished file is
//! added to the message's MIME as a new `multipart/mixed` part (base64), so `$value` and the
//! ground-truth export show it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{json, Value};

use crate::graph::Call;
use crate::server::Sim;
use crate::tenant::Content;
use crate::transfer::parse_content_range;
use crate::wire::{self, ts, Ctx, GResult, GraphError};

/// Largest request body Graph accepts in one request (4 MB, taken as 4 MiB).
pub(crate) const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;
/// Largest range in one PUT to an attachment session ("up to 4 MB each time").
pub(crate) const MAX_RANGE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest attachment a session takes (150 MB).
pub(crate) const MAX_ATTACHMENT_BYTES: u64 = 150 * 1024 * 1024;
/// How long the `uploadUrl`'s embedded token lives.
const SESSION_LIFETIME_MINUTES: i64 = 15;

/// An open attachment upload session.
#[derive(Debug)]
pub(crate) struct AttachmentSession {
    pub user_index: usize,
    /// The app that opened the session: the `uploadUrl` carries no token, but its PUTs count
    /// against that app's Outlook upload budget for the mailbox.
    pub app_id: String,
    pub message_id: String,
    pub name: String,
    pub content_type: String,
    pub is_inline: bool,
    pub content_id: Option<String>,
    pub size: u64,
    pub data: Vec<u8>,
    pub expires: DateTime<Utc>,
}

/// The 413 Graph answers to a request body over [`MAX_REQUEST_BODY`].
pub(crate) fn too_large(len: usize) -> GraphError {
    GraphError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!(
            "The request body is {len} bytes; the maximum request length supported is 4MB. \
             Attach large files through an upload session (attachments/createUploadSession)."
        ),
    )
}

/// `POST /users/{id}/messages/{id}/attachments/createUploadSession`.
pub(crate) fn create_session(call: &Call<'_>, u: &str, m: &str) -> GResult {
    let body = call.json_body()?;
    let item = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("attachmentItem"))
        .map(|(_, v)| v)
        .and_then(Value::as_object)
        .ok_or_else(|| GraphError::bad_request("The AttachmentItem parameter is required."))?;
    let kind = item
        .get("attachmentType")
        .and_then(Value::as_str)
        .unwrap_or("file");
    if !kind.eq_ignore_ascii_case("file") {
        return Err(GraphError::bad_request(format!(
            "attachmentType '{kind}' is not supported; only 'file' can be uploaded in a session."
        )));
    }
    let name = item
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| GraphError::bad_request("AttachmentItem.name is required."))?
        .to_string();
    let size = item
        .get("size")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            GraphError::bad_request("AttachmentItem.size is required and must be positive.")
        })?;
    if size > MAX_ATTACHMENT_BYTES {
        return Err(GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ErrorAttachmentSizeLimitExceeded",
            format!("The attachment is {size} bytes; an upload session takes at most 150 MB."),
        ));
    }
    let mut state = call.sim.state();
    let ui = state
        .user_index(u)
        .ok_or_else(GraphError::mailbox_not_found)?;
    let message_id = state.users[ui]
        .mailbox
        .messages
        .keys()
        .find(|k| k.as_str() == m)
        .cloned()
        .ok_or_else(GraphError::exchange_not_found)?;
    let expires = Utc::now() + Duration::minutes(SESSION_LIFETIME_MINUTES);
    let id = crate::ids::random_token();
    state.attachment_uploads.insert(
        id.clone(),
        AttachmentSession {
            user_index: ui,
            app_id: call.claims.appid.clone(),
            message_id,
            name,
            content_type: item
                .get("contentType")
                .and_then(Value::as_str)
                .unwrap_or("application/octet-stream")
                .to_string(),
            is_inline: item
                .get("isInline")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            content_id: item
                .get("contentId")
                .and_then(Value::as_str)
                .map(str::to_string),
            size,
            data: Vec::new(),
            expires,
        },
    );
    let v = json!({
        "@odata.context": format!("{}/$metadata#microsoft.graph.uploadSession", call.sim.graph_base()),
        "uploadUrl": format!("{}/_attach/{id}?authtoken={}", call.sim.base_url, crate::ids::random_token()),
        "expirationDateTime": ts(expires),
        "nextExpectedRanges": ["0-"],
    });
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

fn session_not_found() -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The upload session was not found; it may have expired or completed.",
    )
}

fn status_json(s: &AttachmentSession) -> Value {
    json!({
        "expirationDateTime": ts(s.expires),
        "nextExpectedRanges": [s.data.len().to_string()],
    })
}

/// `PUT /_attach/{id}`: one range.
pub(crate) async fn put_range(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match put_range_inner(&sim, &id, &headers, body) {
        Ok(r) => r,
        Err(e) => e.into_response(&ctx),
    }
}

fn put_range_inner(
    sim: &Sim,
    id: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GraphError> {
    let bad = |m: &str| GraphError::new(StatusCode::BAD_REQUEST, "InvalidContentRange", m);
    let (a, b, total) = parse_content_range(headers).ok_or_else(|| {
        bad("The Content-Range header is missing or invalid; expected 'bytes {start}-{end}/{total}'.")
    })?;
    let len = b - a + 1;
    if body.len() as u64 != len {
        return Err(bad(
            "The Content-Range header does not match the length of the request body.",
        ));
    }
    if len > MAX_RANGE_BYTES {
        return Err(GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "A range must not exceed 4 MB; split the file into smaller ranges.",
        ));
    }
    let mut state = sim.state();
    let now = Utc::now();
    state.attachment_uploads.retain(|_, s| s.expires > now);
    let session = state
        .attachment_uploads
        .get_mut(id)
        .ok_or_else(session_not_found)?;
    if total != session.size || b >= total {
        return Err(bad(
            "The Content-Range total differs from the size declared in the AttachmentItem.",
        ));
    }
    let have = session.data.len() as u64;
    if a != have {
        let (status, what) = if a < have {
            (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "overlaps bytes already received",
            )
        } else {
            (StatusCode::CONFLICT, "leaves a gap")
        };
        let mut r = GraphError::new(
            status,
            "InvalidContentRange",
            format!("The range {what}: the next expected range starts at {have}."),
        );
        r = r.with_inner("rangeOutOfOrder");
        return Err(r);
    }
    session.data.extend_from_slice(&body);
    if b + 1 < total {
        let v = status_json(session);
        return Ok(wire::json_response(StatusCode::OK, &v));
    }
    let s = state
        .attachment_uploads
        .remove(id)
        .ok_or_else(session_not_found)?;
    let mailbox = &mut state.users[s.user_index].mailbox;
    let seq = mailbox.next_seq();
    let msg = mailbox
        .messages
        .get_mut(&s.message_id)
        .ok_or_else(GraphError::exchange_not_found)?;
    let raw = msg.mime.read_all_blocking().map_err(|e| {
        GraphError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ErrorInternalServerError",
            e.to_string(),
        )
    })?;
    let new = append_attachment(
        &raw,
        &s.name,
        &s.content_type,
        s.is_inline,
        s.content_id.as_deref(),
        &s.data,
    );
    if let Some(meta) = crate::mime::parse(&new) {
        msg.meta = meta;
    }
    msg.mime = Content::Memory(Bytes::from(new));
    msg.seq = seq;
    msg.version += 1;
    msg.modified = now;
    let attachment_id = crate::ids::exchange_id("AAMkA", &[&msg.id, "attachment", id]);
    let location = format!(
        "{}/users('{}')/messages('{}')/attachments('{attachment_id}')",
        sim.graph_base(),
        state.users[s.user_index].id,
        s.message_id
    );
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// `GET /_attach/{id}`: the session's `nextExpectedRanges`.
pub(crate) async fn status(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let state = sim.state();
    match state.attachment_uploads.get(&id) {
        Some(s) => wire::json_response(StatusCode::OK, &status_json(s)),
        None => session_not_found().into_response(&ctx),
    }
}

/// `DELETE /_attach/{id}`: cancels the session (204).
pub(crate) async fn cancel(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match sim.state().attachment_uploads.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => session_not_found().into_response(&ctx),
    }
}

/// Quotes a MIME parameter value.
fn quoted(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' { '\'' } else { c })
        .collect();
    format!("\"{clean}\"")
}

/// One attachment body part: headers, blank line, base64 in 76-column lines.
fn attachment_part(
    name: &str,
    content_type: &str,
    is_inline: bool,
    content_id: Option<&str>,
    data: &[u8],
) -> Vec<u8> {
    let name_param = if name.is_ascii() {
        quoted(name)
    } else {
        format!(
            "\"=?utf-8?B?{}?=\"",
            base64::engine::general_purpose::STANDARD.encode(name)
        )
    };
    let mut out = format!(
        "Content-Type: {content_type}; name={name_param}\r\nContent-Disposition: {}; filename={name_param}\r\nContent-Transfer-Encoding: base64\r\n",
        if is_inline { "inline" } else { "attachment" }
    );
    if let Some(cid) = content_id {
        out.push_str(&format!(
            "Content-ID: <{}>\r\n",
            cid.trim_matches(['<', '>'])
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    for line in b64.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `raw` with the attachment added: inserted before the closing delimiter of a top-level
/// `multipart/mixed`, or else the message wrapped in a new `multipart/mixed`.
pub(crate) fn append_attachment(
    raw: &[u8],
    name: &str,
    content_type: &str,
    is_inline: bool,
    content_id: Option<&str>,
    data: &[u8],
) -> Vec<u8> {
    let part = attachment_part(name, content_type, is_inline, content_id, data);
    let parsed = MessageParser::default().parse(raw);
    let mixed_boundary = parsed.as_ref().and_then(|m| {
        let ct = m.root_part().content_type()?;
        let is_mixed = ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("mixed"));
        is_mixed
            .then(|| ct.attribute("boundary").map(str::to_string))
            .flatten()
    });
    if let Some(boundary) = mixed_boundary {
        let close = format!("--{boundary}--");
        if let Some(at) = find_last(raw, close.as_bytes()) {
            let mut out = Vec::with_capacity(raw.len() + part.len() + boundary.len() + 8);
            out.extend_from_slice(&raw[..at]);
            if !out.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            out.extend_from_slice(&part);
            out.extend_from_slice(&raw[at..]);
            return out;
        }
    }
    // Wrap: the old content headers move into the first part.
    let split = find_first(raw, b"\r\n\r\n")
        .map(|i| (i + 2, i + 4))
        .or_else(|| find_first(raw, b"\n\n").map(|i| (i + 1, i + 2)))
        .unwrap_or((raw.len(), raw.len()));
    let head = String::from_utf8_lossy(&raw[..split.0]);
    let body = &raw[split.1..];
    let mut top = String::new();
    let mut inner = String::new();
    let mut into_inner = false;
    let mut skip = false;
    for line in head.split_inclusive('\n') {
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if !continuation {
            let lower = line.to_ascii_lowercase();
            into_inner = lower.starts_with("content-type:")
                || lower.starts_with("content-transfer-encoding:");
            skip = lower.starts_with("mime-version:");
        }
        if skip {
            continue;
        }
        if into_inner {
            inner.push_str(line);
        } else {
            top.push_str(line);
        }
    }
    let boundary = format!("sim-mixed-{}", crate::ids::random_token());
    let mut out = top.into_bytes();
    if !out.ends_with(b"\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n"
        )
        .as_bytes(),
    );
    if inner.is_empty() {
        inner.push_str("Content-Type: text/plain; charset=us-ascii\r\n");
    }
    out.extend_from_slice(inner.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    if !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(&part);
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn find_first(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// The file attachments of a MIME message: (name, size, sha256 hex of the decoded bytes).
pub(crate) fn attachment_digests(raw: &[u8]) -> Vec<Value> {
    use sha2::Digest as _;
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    msg.attachments()
        .map(|a| {
            let bytes = a.contents();
            json!({
                "name": a.attachment_name().unwrap_or_default(),
                "size": bytes.len(),
                "sha256": hex::encode(sha2::Sha256::digest(bytes)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_and_bytes(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
        let m = MessageParser::default().parse(raw).expect("parses");
        m.attachments()
            .map(|a| {
                (
                    a.attachment_name().unwrap_or_default().to_string(),
                    a.contents().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn appends_to_multipart_mixed_and_keeps_the_rest() {
        let raw = b"From: a@b.c\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--XX--\r\n";
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let out = append_attachment(raw, "big.bin", "application/zip", false, None, &data);
        let got = names_and_bytes(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("a.pdf".to_string(), vec![0, 1, 2]));
        assert_eq!(got[1], ("big.bin".to_string(), data));
        let m = MessageParser::default().parse(&out).unwrap();
        assert_eq!(m.subject(), Some("s"));
        assert_eq!(m.body_text(0).unwrap().trim(), "hello");
    }

    #[test]
    fn wraps_a_single_part_message() {
        let raw = b"From: a@b.c\r\nSubject: plain\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbody text\r\n";
        let out = append_attachment(raw, "x.txt", "text/plain", true, Some("cid1"), b"attached");
        let got = names_and_bytes(&out);
        assert_eq!(got, vec![("x.txt".to_string(), b"attached".to_vec())]);
        let m = MessageParser::default().parse(&out).unwrap();
        assert_eq!(m.subject(), Some("plain"));
        assert_eq!(m.body_text(0).unwrap().trim(), "body text");
        assert!(String::from_utf8_lossy(&out).contains("Content-ID: <cid1>"));
    }
}
