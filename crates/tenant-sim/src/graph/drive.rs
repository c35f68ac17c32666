//! OneDrive for Business: drive-get, driveitem-get, driveitem-list-children, driveitem-delta,
//! driveitem-get-content (302 to a pre-authenticated URL), driveitem-post-children,
//! driveitem-put-content (simple upload), driveitem-createuploadsession, driveitem-update,
//! driveitem-delete.

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use base64::Engine as _;
use chrono::{Duration, Utc};
use serde_json::{json, Value};

use super::mail::{delta_page_size, with_preference_applied};
use super::{Call, DriveSel, ItemAddr};
use crate::delta::{self, Cursor, DeltaState};
use crate::quickxor::QuickXorHash;
use crate::server::Sim;
use crate::tenant::{
    ConflictBehavior, Content, Drive, DriveConflict, DriveItem, DriveTombstone, ItemKind, Tenant,
    UploadSession, User,
};
use crate::wire::{self, ts, GResult, GraphError};

/// Quota reported for every drive: 1 TiB.
const QUOTA_TOTAL_BYTES: u64 = 1024 * 1024 * 1024 * 1024;
/// Lifetime of pre-authenticated download URLs.
const DOWNLOAD_URL_LIFETIME_SECS: u64 = 3600;
/// Lifetime of upload sessions.
pub(crate) const UPLOAD_SESSION_LIFETIME_HOURS: i64 = 24;

pub(crate) fn resolve_drive(state: &Tenant, sel: &DriveSel) -> Result<usize, GraphError> {
    match sel {
        DriveSel::Id(d) => state
            .drive_owner(d)
            .ok_or_else(GraphError::drive_item_not_found),
        DriveSel::User(u) => state
            .user_index(u)
            .ok_or_else(|| GraphError::directory_not_found(u)),
    }
}

fn resolve_item(drive: &Drive, addr: &ItemAddr) -> Result<String, GraphError> {
    let base = match &addr.base {
        None => drive.root_id.clone(),
        // `items/root` is Graph's alias of the root driveItem
        // (https://learn.microsoft.com/graph/api/driveitem-get).
        Some(id) if id.eq_ignore_ascii_case("root") => drive.root_id.clone(),
        Some(id) => drive
            .item(id)
            .map(|i| i.id.clone())
            .ok_or_else(GraphError::drive_item_not_found)?,
    };
    match &addr.path {
        None => Ok(base),
        Some(p) => drive
            .resolve_path(&base, p)
            .ok_or_else(GraphError::drive_item_not_found),
    }
}

pub(crate) fn conflict_error(e: DriveConflict) -> GraphError {
    match e {
        DriveConflict::NameExists | DriveConflict::KindMismatch => GraphError::new(
            StatusCode::CONFLICT,
            "nameAlreadyExists",
            "Name already exists",
        ),
        DriveConflict::ParentNotFound => GraphError::drive_item_not_found(),
        DriveConflict::ParentNotFolder => {
            GraphError::invalid_request("The parent item is not a folder.")
        }
        DriveConflict::InvalidName => {
            GraphError::invalid_request("The provided name cannot contain any illegal characters.")
        }
        DriveConflict::RootImmutable => {
            GraphError::invalid_request("The root folder cannot be changed or deleted.")
        }
    }
}

pub(crate) fn item_download_url(sim: &Sim, drive_id: &str, item_id: &str) -> String {
    format!(
        "{}/_download/{}",
        sim.base_url,
        sim.keys
            .sign_download(drive_id, item_id, DOWNLOAD_URL_LIFETIME_SECS)
    )
}

fn identity(user: &User) -> Value {
    json!({"user": {"id": user.id, "displayName": user.profile.display_name, "email": user.profile.mail}})
}

/// The driveItem resource. `with_path` adds `parentReference.path`, which OneDrive for Business
/// returns from item requests but not from delta.
pub(crate) fn item_json(
    sim: &Sim,
    user: &User,
    item: &DriveItem,
    sizes: &HashMap<String, u64>,
    with_path: bool,
) -> Value {
    let drive = &user.drive;
    let web_base = format!(
        "https://contoso-my.sharepoint.com/personal/{}/Documents",
        user.upn.replace(['@', '.'], "_")
    );
    let names = drive.path_names(&item.id);
    let mut v = json!({
        "id": item.id,
        "name": item.name,
        "eTag": item.etag(),
        "cTag": item.ctag(),
        "createdDateTime": ts(item.created),
        "lastModifiedDateTime": ts(item.modified),
        "webUrl": if names.is_empty() { web_base.clone() } else { format!("{web_base}/{}", names.iter().map(|n| wire::enc(n).replace('+', "%20")).collect::<Vec<_>>().join("/")) },
        "createdBy": identity(user),
        "lastModifiedBy": identity(user),
        "fileSystemInfo": {"createdDateTime": ts(item.created), "lastModifiedDateTime": ts(item.modified)},
    });
    let mut parent = json!({"driveId": drive.id, "driveType": "business"});
    if let Some(pid) = &item.parent_id {
        parent["id"] = json!(pid);
        if with_path {
            let mut pnames = names.clone();
            pnames.pop();
            let tail: String = pnames.iter().map(|n| format!("/{n}")).collect();
            parent["path"] = json!(format!("/drives/{}/root:{tail}", drive.id));
        }
    }
    v["parentReference"] = parent;
    match &item.kind {
        ItemKind::Folder => {
            v["size"] = json!(sizes.get(&item.id).copied().unwrap_or(0));
            v["folder"] = json!({"childCount": drive.child_count(&item.id)});
            if item.parent_id.is_none() {
                v["root"] = json!({});
            }
        }
        ItemKind::File {
            content,
            quick_xor,
            mime_type,
        } => {
            v["size"] = json!(content.len());
            v["file"] = json!({"mimeType": mime_type, "hashes": {"quickXorHash": quick_xor}});
            v["@microsoft.graph.downloadUrl"] = json!(item_download_url(sim, &drive.id, &item.id));
        }
    }
    v
}

fn item_response(call: &Call<'_>, user: &User, id: &str, status: StatusCode) -> GResult {
    let item = user
        .drive
        .item(id)
        .ok_or_else(GraphError::drive_item_not_found)?;
    let sizes = user.drive.folder_sizes();
    let mut v = item_json(call.sim, user, item, &sizes, true);
    v["@odata.context"] = json!(format!(
        "{}/$metadata#drives('{}')/items/$entity",
        call.sim.graph_base(),
        user.drive.id
    ));
    wire::apply_select(&mut v, call.q("$select"));
    Ok(wire::json_response(status, &v))
}

/// `GET /users/{id}/drive`, `GET /drives/{id}`.
pub(super) fn get_drive(call: &Call<'_>, sel: &DriveSel) -> GResult {
    let state = call.sim.state();
    let user = &state.users[resolve_drive(&state, sel)?];
    let used = user.drive.used_bytes();
    let v = json!({
        "@odata.context": format!("{}/$metadata#drives/$entity", call.sim.graph_base()),
        "id": user.drive.id,
        "driveType": "business",
        "name": "OneDrive",
        "description": "",
        "createdDateTime": ts(user.drive.created),
        "lastModifiedDateTime": ts(user.drive.created),
        "webUrl": format!("https://contoso-my.sharepoint.com/personal/{}/Documents", user.upn.replace(['@', '.'], "_")),
        "createdBy": {"user": {"displayName": "System Account"}},
        "owner": identity(user),
        "quota": {
            "deleted": 0,
            "remaining": QUOTA_TOTAL_BYTES.saturating_sub(used),
            "state": "normal",
            "total": QUOTA_TOTAL_BYTES,
            "used": used,
        },
    });
    wire::ok_json(&v)
}

/// `GET /drives/{id}/root`, `/items/{id}`, `/root:/path:`.
pub(super) fn get_item(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let state = call.sim.state();
    let user = &state.users[resolve_drive(&state, sel)?];
    let id = resolve_item(&user.drive, addr)?;
    item_response(call, user, &id, StatusCode::OK)
}

fn offset_token(n: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("children:{n}"))
}

fn parse_offset_token(t: &str) -> Option<usize> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    String::from_utf8(b)
        .ok()?
        .strip_prefix("children:")?
        .parse()
        .ok()
}

/// `GET …/children`: by name, `$top` (default 200), `$skiptoken` nextLinks.
pub(super) fn list_children(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let top = call.top(200, 1000)?;
    let offset = match call.q("$skiptoken") {
        None => 0,
        Some(t) => parse_offset_token(t)
            .ok_or_else(|| GraphError::invalid_request("Invalid skip token."))?,
    };
    let state = call.sim.state();
    let user = &state.users[resolve_drive(&state, sel)?];
    let id = resolve_item(&user.drive, addr)?;
    let children = user.drive.children(&id);
    let sizes = user.drive.folder_sizes();
    let value: Vec<Value> = children
        .iter()
        .skip(offset)
        .take(top)
        .map(|i| {
            let mut v = item_json(call.sim, user, i, &sizes, true);
            wire::apply_select(&mut v, call.q("$select"));
            v
        })
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}/$metadata#drives('{}')/items('{}')/children", call.sim.graph_base(), user.drive.id, id),
        "value": value,
    });
    if offset + top < children.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[
            ("$top", top.to_string()),
            ("$skiptoken", offset_token(offset + top)),
        ]));
    }
    wire::ok_json(&body)
}

enum DriveFeed<'a> {
    Deleted(&'a DriveTombstone),
    Live(&'a DriveItem),
}

/// `GET /drives/{id}/root/delta[?token=…]` (driveitem-delta): the first round returns the root
/// and every item, folders before their contents; later rounds the items changed since (latest
/// state) and removed ones with the `deleted` facet. `token=latest` returns no items and a
/// deltaLink for "now". Page size: `Prefer: odata.maxpagesize` or `$top` (default 200).
pub(super) fn delta(call: &Call<'_>, sel: &DriveSel, token_arg: Option<&str>) -> GResult {
    let (size, applied) = match delta_page_size(call, 200) {
        (s, Some(a)) => (s, Some(a)),
        (_, None) => (call.top(200, 1000)?, None),
    };
    let state = call.sim.state();
    let user = &state.users[resolve_drive(&state, sel)?];
    let drive = &user.drive;
    let link = format!("{}/drives/{}/root/delta", call.sim.graph_base(), drive.id);
    let context = format!("{}/$metadata#Collection(driveItem)", call.sim.graph_base());
    let token = token_arg.or_else(|| call.q("token"));
    let fresh = DeltaState {
        kind: "drive".into(),
        scope: drive.id.clone(),
        base: 0,
        high: drive.seq,
        after: None,
        complete: false,
        window: None,
    };
    let st = match token {
        None => fresh,
        Some(t) if t.eq_ignore_ascii_case("latest") => {
            let body = json!({
                "@odata.context": context,
                "value": [],
                "@odata.deltaLink": format!("{link}?token={}", fresh.finished().encode()),
            });
            return Ok(with_preference_applied(
                wire::json_response(StatusCode::OK, &body),
                applied,
            ));
        }
        Some(t) => DeltaState::decode(t)
            .filter(|s| s.kind == "drive" && s.scope == drive.id && s.high <= drive.seq)
            .map(|s| s.resume(drive.seq))
            .ok_or_else(|| {
                GraphError::invalid_request(
                    "The delta token is not valid. Start again without a token.",
                )
            })?,
    };
    let mut entries: Vec<(Cursor, DriveFeed<'_>)> = Vec::new();
    if st.base > 0 {
        for t in drive.tombstones.iter().filter(|t| t.seq > st.base) {
            entries.push((
                Cursor {
                    phase: 0,
                    seq: t.seq,
                    key: t.id.clone(),
                },
                DriveFeed::Deleted(t),
            ));
        }
    }
    for item in drive.items.values().filter(|i| i.seq > st.base) {
        let key = format!("{}\u{0}{}", drive.path_key(&item.id), item.id);
        entries.push((
            Cursor {
                phase: 1,
                seq: 0,
                key,
            },
            DriveFeed::Live(item),
        ));
    }
    let page = delta::page(entries, st.after.as_ref(), size);
    let sizes = drive.folder_sizes();
    let value: Vec<Value> = page
        .items
        .iter()
        .map(|e| match e {
            DriveFeed::Deleted(t) => {
                let mut v = json!({
                    "@odata.type": "#microsoft.graph.driveItem",
                    "id": t.id,
                    "name": t.name,
                    "parentReference": {"driveId": drive.id, "driveType": "business", "id": t.parent_id},
                    "deleted": {"state": "deleted"},
                });
                v[if t.is_folder { "folder" } else { "file" }] = json!({});
                v
            }
            DriveFeed::Live(item) => {
                let mut v = item_json(call.sim, user, item, &sizes, false);
                v["@odata.type"] = json!("#microsoft.graph.driveItem");
                wire::apply_select(&mut v, call.q("$select"));
                v
            }
        })
        .collect();
    let mut body = json!({"@odata.context": context, "value": value});
    match page.next {
        Some(c) => {
            body["@odata.nextLink"] = json!(format!("{link}?token={}", st.next_page(c).encode()))
        }
        None => {
            body["@odata.deltaLink"] = json!(format!("{link}?token={}", st.finished().encode()))
        }
    }
    Ok(with_preference_applied(
        wire::json_response(StatusCode::OK, &body),
        applied,
    ))
}

/// `GET …/content`: 302 to a pre-authenticated download URL (no `Authorization` needed there).
pub(super) fn get_content(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let state = call.sim.state();
    let user = &state.users[resolve_drive(&state, sel)?];
    let id = resolve_item(&user.drive, addr)?;
    let item = user
        .drive
        .item(&id)
        .ok_or_else(GraphError::drive_item_not_found)?;
    if item.is_folder() {
        return Err(GraphError::invalid_request(
            "The item is a folder and has no content stream.",
        ));
    }
    let url = item_download_url(call.sim, &user.drive.id, &id);
    let mut resp = wire::empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn conflict_param(
    call: &Call<'_>,
    body: Option<&serde_json::Map<String, Value>>,
    default: ConflictBehavior,
) -> Result<ConflictBehavior, GraphError> {
    let raw = call
        .q("@microsoft.graph.conflictBehavior")
        .map(str::to_string)
        .or_else(|| {
            body.and_then(|b| {
                b.get("@microsoft.graph.conflictBehavior")
                    .or_else(|| {
                        b.get("item")
                            .and_then(|i| i.get("@microsoft.graph.conflictBehavior"))
                    })
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        });
    match raw {
        None => Ok(default),
        Some(s) => ConflictBehavior::parse(&s).ok_or_else(|| {
            GraphError::invalid_request(format!(
                "Invalid value '{s}' for @microsoft.graph.conflictBehavior (fail, replace, rename)."
            ))
        }),
    }
}

/// Ensures the folders along `components` below `base_id` exist; returns the last one.
pub(crate) fn ensure_folders(
    drive: &mut Drive,
    base_id: &str,
    components: &[&str],
) -> Result<String, DriveConflict> {
    let mut cur = base_id.to_string();
    for c in components {
        cur = match drive.child_by_name(&cur, c) {
            Some(existing) if existing.is_folder() => existing.id.clone(),
            Some(_) => return Err(DriveConflict::ParentNotFolder),
            None => {
                drive
                    .create_folder(&cur, c, ConflictBehavior::Fail, Utc::now())?
                    .0
            }
        };
    }
    Ok(cur)
}

/// `POST …/children` with `{name, folder: {}, "@microsoft.graph.conflictBehavior"}` (default
/// `fail`): 201 with the new folder; 409 `nameAlreadyExists` on conflict with `fail`.
pub(super) fn create_child(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let body = call.json_body()?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::invalid_request("The 'name' property is required."))?
        .to_string();
    if !body.get("folder").is_some_and(Value::is_object) {
        return Err(GraphError::invalid_request(
            "Only folders can be created this way: include a 'folder' facet ({}).",
        ));
    }
    let conflict = conflict_param(call, Some(&body), ConflictBehavior::Fail)?;
    let mut state = call.sim.state();
    let ui = resolve_drive(&state, sel)?;
    let drive = &mut state.users[ui].drive;
    let parent = resolve_item(drive, addr)?;
    let (id, created) = drive
        .create_folder(&parent, &name, conflict, Utc::now())
        .map_err(conflict_error)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    item_response(call, &state.users[ui], &id, status)
}

fn hash_bytes(b: &[u8]) -> String {
    let mut h = QuickXorHash::new();
    h.update(b);
    h.finish_base64()
}

/// `PUT …/items/{parent-id}:/{filename}:/content` (create or replace: 201/200) and
/// `PUT …/items/{id}/content` (replace: 200). Any size is accepted, as Graph documents simple
/// upload up to 250 MB. Missing folders on the path are created.
pub(super) async fn put_content(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let body = call.body.clone();
    let hash = {
        let b = body.clone();
        tokio::task::spawn_blocking(move || hash_bytes(&b))
            .await
            .map_err(|e| {
                GraphError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "generalException",
                    e.to_string(),
                )
            })?
    };
    let conflict = conflict_param(call, None, ConflictBehavior::Replace)?;
    let mut state = call.sim.state();
    let ui = resolve_drive(&state, sel)?;
    let drive = &mut state.users[ui].drive;
    let content = Content::Memory(body);
    let (id, created) = match &addr.path {
        None => {
            let id = resolve_item(drive, addr)?;
            if !drive.replace_content(&id, content, hash, Utc::now()) {
                return Err(GraphError::invalid_request("The target item is a folder."));
            }
            (id, false)
        }
        Some(path) => {
            let base = resolve_item(
                drive,
                &ItemAddr {
                    base: addr.base.clone(),
                    path: None,
                },
            )?;
            let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            let Some((file, dirs)) = comps.split_last() else {
                return Err(GraphError::invalid_request("A file name is required."));
            };
            let parent = ensure_folders(drive, &base, dirs).map_err(conflict_error)?;
            drive
                .put_file(&parent, file, content, hash, conflict, Utc::now())
                .map_err(conflict_error)?
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    item_response(call, &state.users[ui], &id, status)
}

/// `POST …/createUploadSession`, path-addressed (`items/{parent-id}:/{filename}:`) for a new or
/// replaced file, or id-addressed on an existing file to replace it. Conflict behaviour from
/// `item["@microsoft.graph.conflictBehavior"]` or the query (default `replace`, as for PUT),
/// applied when the last fragment arrives.
pub(super) fn create_upload_session(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let body = if call.body.is_empty() {
        serde_json::Map::new()
    } else {
        call.json_body()?
    };
    let conflict = conflict_param(call, Some(&body), ConflictBehavior::Replace)?;
    let mut state = call.sim.state();
    let ui = resolve_drive(&state, sel)?;
    let drive = &state.users[ui].drive;
    let (parent_id, name) = match &addr.path {
        Some(path) => {
            let base = resolve_item(
                drive,
                &ItemAddr {
                    base: addr.base.clone(),
                    path: None,
                },
            )?;
            (base, path.clone())
        }
        None => {
            let id = resolve_item(drive, addr)?;
            let item = drive
                .item(&id)
                .ok_or_else(GraphError::drive_item_not_found)?;
            if item.is_folder() {
                let name = body
                    .get("item")
                    .and_then(|i| i.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| GraphError::invalid_request("Address the new file by path: items/{parent-id}:/{filename}:/createUploadSession."))?;
                (id, name.to_string())
            } else {
                (
                    item.parent_id.clone().unwrap_or_default(),
                    item.name.clone(),
                )
            }
        }
    };
    if name.split('/').all(str::is_empty) {
        return Err(GraphError::invalid_request("A file name is required."));
    }
    let expires = Utc::now() + Duration::hours(UPLOAD_SESSION_LIFETIME_HOURS);
    let session_id = crate::ids::random_token();
    state.uploads.insert(
        session_id.clone(),
        UploadSession {
            user_index: ui,
            parent_id,
            name,
            conflict,
            data: Vec::new(),
            total: None,
            expires,
        },
    );
    let v = json!({
        "@odata.context": format!("{}/$metadata#microsoft.graph.uploadSession", call.sim.graph_base()),
        "uploadUrl": format!("{}/_upload/{session_id}", call.sim.base_url),
        "expirationDateTime": ts(expires),
        "nextExpectedRanges": ["0-"],
    });
    wire::ok_json(&v)
}

/// `PATCH /drives/{id}/items/{id}` with `name` and/or `parentReference.id` (rename/move).
pub(super) fn update_item(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let body = call.json_body()?;
    let name = body.get("name").and_then(Value::as_str).map(str::to_string);
    let parent = body
        .get("parentReference")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut state = call.sim.state();
    let ui = resolve_drive(&state, sel)?;
    let drive = &mut state.users[ui].drive;
    let id = resolve_item(drive, addr)?;
    if let Some(p) = &parent {
        if drive.item(p).is_none() {
            return Err(GraphError::drive_item_not_found());
        }
    }
    drive
        .update(&id, name.as_deref(), parent.as_deref())
        .map_err(conflict_error)?;
    item_response(call, &state.users[ui], &id, StatusCode::OK)
}

/// `DELETE /drives/{id}/items/{id}`: 204.
pub(super) fn delete_item(call: &Call<'_>, sel: &DriveSel, addr: &ItemAddr) -> GResult {
    let mut state = call.sim.state();
    let ui = resolve_drive(&state, sel)?;
    let drive = &mut state.users[ui].drive;
    let id = resolve_item(drive, addr)?;
    drive.delete(&id).map_err(conflict_error)?;
    Ok(wire::empty(StatusCode::NO_CONTENT))
}
