//! Pre-authenticated transfer URLs: downloads (`/_download/{token}`, from the 302 of
//! `…/content`) and upload sessions (`/_upload/{id}`, from `createUploadSession`). Like
//! OneDrive's, they need no `Authorization` header; one that is sent anyway is accepted but
//! recorded in the request log (`authorization_header: true`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::Utc;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::graph::{conflict_error, ensure_folders, item_json};
use crate::quickxor::QuickXorHash;
use crate::server::Sim;
use crate::tenant::{Content, DriveConflict, ItemKind};
use crate::wire::{self, ts, Ctx, GraphError};

/// Fragments other than the last must be multiples of 320 KiB (driveitem-createuploadsession).
pub(crate) const FRAGMENT_MULTIPLE_BYTES: u64 = 320 * 1024;
/// Largest fragment accepted in one request.
pub(crate) const MAX_FRAGMENT_BYTES: u64 = 60 * 1024 * 1024;

enum RangeSpec {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range against a length (RFC 9110 §14); anything else means the full body.
fn parse_range(h: Option<&str>, len: u64) -> RangeSpec {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        return match b.parse::<u64>() {
            Ok(0) => RangeSpec::Unsatisfiable,
            Ok(n) if len > 0 => RangeSpec::Part(len.saturating_sub(n), len - 1),
            Ok(_) => RangeSpec::Unsatisfiable,
            Err(_) => RangeSpec::Full,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        RangeSpec::Unsatisfiable
    } else {
        RangeSpec::Part(start, end)
    }
}

async fn body_for(content: &Content, start: u64, len: u64) -> std::io::Result<Body> {
    match content {
        Content::Memory(b) => Ok(Body::from(b.slice(start as usize..(start + len) as usize))),
        Content::Disk { path, .. } => {
            let mut f = tokio::fs::File::open(path).await?;
            f.seek(std::io::SeekFrom::Start(start)).await?;
            Ok(Body::from_stream(tokio_util::io::ReaderStream::new(
                f.take(len),
            )))
        }
    }
}

/// `GET /_download/{token}`: the file's bytes; honours a single `Range`.
pub(crate) async fn download(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(claims) = sim.keys.verify_download(&token) else {
        return GraphError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The download URL is invalid or has expired; request the item's content again.",
        )
        .into_response(&ctx);
    };
    let found = {
        let state = sim.state();
        state.drive_owner(&claims.drive).and_then(|ui| {
            let item = state.users[ui].drive.item(&claims.item)?;
            match &item.kind {
                ItemKind::File {
                    content, mime_type, ..
                } => Some((content.clone(), mime_type.clone(), item.etag(), item.ctag())),
                ItemKind::Folder => None,
            }
        })
    };
    let Some((content, mime_type, etag, ctag)) = found else {
        return GraphError::drive_item_not_found().into_response(&ctx);
    };
    let len = content.len();
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeSpec::Unsatisfiable => {
            let mut r = GraphError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalidRange",
                "The requested range is not satisfiable.",
            )
            .into_response(&ctx);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let body = match body_for(&content, start, count).await {
        Ok(b) => b,
        Err(e) => {
            return GraphError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "generalException",
                e.to_string(),
            )
            .into_response(&ctx)
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let put = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put(h, header::CONTENT_TYPE, mime_type);
    put(h, header::CONTENT_LENGTH, count.to_string());
    put(h, header::ACCEPT_RANGES, "bytes".into());
    put(h, header::ETAG, etag);
    put(h, header::HeaderName::from_static("ctag"), ctag);
    if status == StatusCode::PARTIAL_CONTENT {
        put(
            h,
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    resp
}

fn invalid_range(message: &str) -> GraphError {
    GraphError::new(StatusCode::BAD_REQUEST, "invalidRange", message)
}

fn session_not_found() -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "The upload session was not found; it may have expired, completed or been cancelled.",
    )
}

/// `Content-Range: bytes a-b/total` → `(a, b, total)`; `None` if absent, malformed or `a > b`.
pub(crate) fn parse_content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total) = (
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (a <= b).then_some((a, b, total))
}

/// `PUT /_upload/{id}`: one fragment. 202 with `nextExpectedRanges` until the last, then
/// 201 (new file) or 200 (replaced file) with the driveItem.
pub(crate) async fn upload_fragment(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match upload_fragment_inner(&sim, &id, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(&ctx),
    }
}

async fn upload_fragment_inner(
    sim: &Sim,
    id: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GraphError> {
    let (a, b, total) = parse_content_range(headers).ok_or_else(|| {
        invalid_range("The Content-Range header is missing or invalid; expected 'bytes {start}-{end}/{total}'.")
    })?;
    let len = b - a + 1;
    if body.len() as u64 != len {
        return Err(invalid_range(
            "The Content-Range header does not match the length of the request body.",
        ));
    }
    if b >= total {
        return Err(invalid_range(
            "The Content-Range end is beyond the declared total size.",
        ));
    }
    if len > MAX_FRAGMENT_BYTES {
        return Err(invalid_range("A fragment must not exceed 60 MiB."));
    }
    let is_last = b + 1 == total;
    if !is_last && len % FRAGMENT_MULTIPLE_BYTES != 0 {
        return Err(invalid_range(
            "The fragment size must be a multiple of 320 KiB (327,680 bytes), except for the last fragment.",
        ));
    }
    let finished = {
        let mut state = sim.state();
        let now = Utc::now();
        state.uploads.retain(|_, s| s.expires > now);
        let session = state.uploads.get_mut(id).ok_or_else(session_not_found)?;
        if session.total.is_some_and(|t| t != total) {
            return Err(invalid_range(
                "The total size differs from the one declared by earlier fragments.",
            ));
        }
        let have = session.data.len() as u64;
        if a < have {
            return Err(GraphError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalidRange",
                "Uploaded fragment overlaps with existing data.",
            )
            .with_inner("fragmentOverlap"));
        }
        if a > have {
            return Err(GraphError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalidRange",
                format!("The uploaded fragment is not contiguous: the next expected range starts at {have}."),
            ));
        }
        session.total = Some(total);
        session.data.extend_from_slice(&body);
        if !is_last {
            let v = json!({
                "expirationDateTime": ts(session.expires),
                "nextExpectedRanges": [format!("{}-", b + 1)],
            });
            return Ok(wire::json_response(StatusCode::ACCEPTED, &v));
        }
        state.uploads.remove(id).ok_or_else(session_not_found)?
    };
    let data = Bytes::from(finished.data);
    let hash = {
        let d = data.clone();
        tokio::task::spawn_blocking(move || {
            let mut h = QuickXorHash::new();
            h.update(&d);
            h.finish_base64()
        })
        .await
        .map_err(|e| {
            GraphError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "generalException",
                e.to_string(),
            )
        })?
    };
    let mut state = sim.state();
    let ui = finished.user_index;
    let drive = &mut state.users[ui].drive;
    let comps: Vec<&str> = finished.name.split('/').filter(|c| !c.is_empty()).collect();
    let Some((file, dirs)) = comps.split_last() else {
        return Err(GraphError::invalid_request("A file name is required."));
    };
    let parent = ensure_folders(drive, &finished.parent_id, dirs).map_err(conflict_error)?;
    let (item_id, created) = drive
        .put_file(&parent, file, Content::Memory(data), hash, finished.conflict, Utc::now())
        .map_err(|e| match e {
            DriveConflict::NameExists => GraphError::new(
                StatusCode::CONFLICT,
                "upload_name_conflict",
                "Another file exists with the same name as the uploaded session. You can redirect the upload session to use a new filename by calling PUT with the new metadata and @microsoft.graph.sourceUrl attribute.",
            ),
            other => conflict_error(other),
        })?;
    let user = &state.users[ui];
    let item = user
        .drive
        .item(&item_id)
        .ok_or_else(GraphError::drive_item_not_found)?;
    let sizes = user.drive.folder_sizes();
    let mut v = item_json(sim, user, item, &sizes, true);
    v["@odata.context"] = json!(format!(
        "{}/$metadata#drives('{}')/items/$entity",
        sim.graph_base(),
        user.drive.id
    ));
    Ok(wire::json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &v,
    ))
}

/// `DELETE /_upload/{id}`: cancels the session (204).
pub(crate) async fn cancel_upload(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match sim.state().uploads.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => session_not_found().into_response(&ctx),
    }
}

/// `GET /_upload/{id}`: the session's status (`nextExpectedRanges`), for resuming.
pub(crate) async fn upload_status(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let state = sim.state();
    match state.uploads.get(&id) {
        Some(s) => wire::json_response(
            StatusCode::OK,
            &json!({
                "expirationDateTime": ts(s.expires),
                "nextExpectedRanges": [format!("{}-", s.data.len())],
            }),
        ),
        None => session_not_found().into_response(&ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = |h: &str| match parse_range(Some(h), 10) {
            RangeSpec::Full => "full".to_string(),
            RangeSpec::Part(a, b) => format!("{a}-{b}"),
            RangeSpec::Unsatisfiable => "416".to_string(),
        };
        assert_eq!(p("bytes=0-3"), "0-3");
        assert_eq!(p("bytes=5-"), "5-9");
        assert_eq!(p("bytes=-3"), "7-9");
        assert_eq!(p("bytes=8-100"), "8-9");
        assert_eq!(p("bytes=10-"), "416");
        assert_eq!(p("bytes=0-1,4-5"), "full");
        assert_eq!(p("items=0-1"), "full");
    }
}
