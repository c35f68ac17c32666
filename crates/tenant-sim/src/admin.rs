//! Test-only admin API under `/_sim/` (loopback only, no authentication): the request log,
//! consent changes, mailbox and drive mutations that feed delta, and a ground-truth export.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::faults::{FaultRule, FaultsConfig};
use crate::graph::ensure_folders;
use crate::mime;
use crate::quickxor::QuickXorHash;
use crate::server::Sim;
use crate::tenant::{ConflictBehavior, Content, ItemKind};

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn no_user(upn: &str) -> Response {
    admin_error(
        StatusCode::NOT_FOUND,
        format!("no user '{upn}' in the tenant"),
    )
}

/// `GET /_sim/requests`: the request log as a JSON array.
pub(crate) async fn get_requests(State(sim): State<Arc<Sim>>) -> Response {
    let entries = sim.log().entries.clone();
    axum::Json(entries).into_response()
}

/// `DELETE /_sim/requests`: clears the log (sequence numbers keep counting).
pub(crate) async fn clear_requests(State(sim): State<Arc<Sim>>) -> Response {
    sim.log().entries.clear();
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /_sim/admin/faults`: the fault configuration with each rule's `matched` and
/// `injected` counters, and `throttled` counters of the throttling model.
pub(crate) async fn get_faults(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.faults().report()).into_response()
}

/// `PUT /_sim/admin/faults` with a JSON array of rules (replacing the rules, keeping seed,
/// latency and throttling) or an object shaped like the config's `[faults]` section
/// (replacing everything). Counters start again. 204; 400 naming what is wrong.
pub(crate) async fn put_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let config = match value {
        Value::Array(_) => match serde_json::from_value::<Vec<FaultRule>>(value) {
            Ok(rules) => FaultsConfig {
                rules,
                ..sim.faults().config().clone()
            },
            Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("rules: {e}")),
        },
        other => match serde_json::from_value::<FaultsConfig>(other) {
            Ok(c) => c,
            Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("faults: {e}")),
        },
    };
    if let Err(m) = config.validate() {
        return admin_error(StatusCode::BAD_REQUEST, format!("faults.{m}"));
    }
    sim.faults().configure(config);
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /_sim/admin/faults`: no rules, no latency, no throttling. 204.
pub(crate) async fn delete_faults(State(sim): State<Arc<Sim>>) -> Response {
    sim.faults().configure(FaultsConfig::default());
    StatusCode::NO_CONTENT.into_response()
}

/// `PUT /_sim/admin/apps/{client_id}/roles` with a JSON array of application permissions.
pub(crate) async fn put_roles(
    State(sim): State<Arc<Sim>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(roles) = serde_json::from_slice::<Vec<String>>(&body) else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "body must be a JSON array of role names",
        );
    };
    match sim.state().app_mut(&client_id) {
        Some(app) => {
            app.roles = roles;
            StatusCode::NO_CONTENT.into_response()
        }
        None => admin_error(StatusCode::NOT_FOUND, format!("no app '{client_id}'")),
    }
}

/// `PUT /_sim/admin/apps/{client_id}/consent` with `true` or `false`.
pub(crate) async fn put_consent(
    State(sim): State<Arc<Sim>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(consent) = serde_json::from_slice::<bool>(&body) else {
        return admin_error(StatusCode::BAD_REQUEST, "body must be true or false");
    };
    match sim.state().app_mut(&client_id) {
        Some(app) => {
            app.admin_consent = consent;
            StatusCode::NO_CONTENT.into_response()
        }
        None => admin_error(StatusCode::NOT_FOUND, format!("no app '{client_id}'")),
    }
}

/// `POST /_sim/admin/apps/{client_id}/certificates` with a PEM certificate: registers it for
/// certificate credentials, as uploading a `.cer` under *Certificates & secrets* does. 201
/// `{"x5t#S256", "x5t"}` (base64url SHA-256 and SHA-1 thumbprints of the DER certificate).
pub(crate) async fn post_certificate(
    State(sim): State<Arc<Sim>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body);
    let cert = match crate::token::KeyCredential::from_pem(&text) {
        Ok(c) => c,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    let answer = json!({ "x5t#S256": cert.x5t_s256.clone(), "x5t": cert.x5t.clone() });
    match sim.state().app_mut(&client_id) {
        Some(app) => {
            app.certificates.retain(|c| c.x5t_s256 != cert.x5t_s256);
            app.certificates.push(cert);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        None => admin_error(StatusCode::NOT_FOUND, format!("no app '{client_id}'")),
    }
}

/// `DELETE /_sim/admin/apps/{client_id}/certificates`: removes every registered certificate.
pub(crate) async fn delete_certificates(
    State(sim): State<Arc<Sim>>,
    Path(client_id): Path<String>,
) -> Response {
    match sim.state().app_mut(&client_id) {
        Some(app) => {
            app.certificates.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        None => admin_error(StatusCode::NOT_FOUND, format!("no app '{client_id}'")),
    }
}

/// `PUT /_sim/admin/token-lifetime` with a number of seconds (≥ 1): the `expires_in` of
/// access tokens issued from now on.
pub(crate) async fn put_token_lifetime(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<u64>(&body) {
        Ok(secs) if secs >= 1 => {
            sim.token_lifetime_secs
                .store(secs, std::sync::atomic::Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => admin_error(
            StatusCode::BAD_REQUEST,
            "body must be a whole number of seconds, at least 1",
        ),
    }
}

/// `PUT /_sim/admin/clock-offset` with a signed number of seconds: how far the simulator's
/// clock is ahead of the clients' when it checks client assertions' `nbf`/`exp` and access
/// tokens' `exp` (a client with a slow clock presents tokens Graph already considers expired).
pub(crate) async fn put_clock_offset(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<i64>(&body) {
        Ok(secs) => {
            sim.clock_offset_secs
                .store(secs, std::sync::atomic::Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) => admin_error(
            StatusCode::BAD_REQUEST,
            "body must be a whole number of seconds",
        ),
    }
}

/// `POST /_sim/admin/users/{upn}/messages?folder=Inbox/Sub` with raw MIME: delivers a new
/// (unread) message, creating folders on the path. 201 `{"id"}`.
pub(crate) async fn post_message(
    State(sim): State<Arc<Sim>>,
    Path(upn): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(meta) = mime::parse(&body) else {
        return admin_error(StatusCode::BAD_REQUEST, "body is not a MIME message");
    };
    let folder = q.get("folder").map(String::as_str).unwrap_or("Inbox");
    let mut state = sim.state();
    let Some(ui) = state.user_index(&upn) else {
        return no_user(&upn);
    };
    let mb = &mut state.users[ui].mailbox;
    let folder_id = mb.ensure_folder_path(folder);
    let is_draft = mb.folder("drafts").is_some_and(|f| f.id == folder_id);
    let id = mb.add_message(
        &folder_id,
        None,
        Content::Memory(body),
        meta,
        Utc::now(),
        false,
        is_draft,
    );
    (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
}

/// `POST /_sim/admin/users/{upn}/messages/{id}/move?folder=Archive`: 200 `{"id": new id}`.
pub(crate) async fn move_message(
    State(sim): State<Arc<Sim>>,
    Path((upn, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(folder) = q.get("folder") else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "query parameter 'folder' is required",
        );
    };
    let mut state = sim.state();
    let Some(ui) = state.user_index(&upn) else {
        return no_user(&upn);
    };
    let mb = &mut state.users[ui].mailbox;
    if !mb.messages.contains_key(&id) {
        return admin_error(StatusCode::NOT_FOUND, format!("no message '{id}'"));
    }
    let dest = mb.ensure_folder_path(folder);
    match mb.move_message(&id, &dest) {
        Some(new_id) => axum::Json(json!({"id": new_id})).into_response(),
        None => admin_error(StatusCode::NOT_FOUND, format!("no message '{id}'")),
    }
}

/// `DELETE /_sim/admin/users/{upn}/messages/{id}`: 204.
pub(crate) async fn delete_message(
    State(sim): State<Arc<Sim>>,
    Path((upn, id)): Path<(String, String)>,
) -> Response {
    let mut state = sim.state();
    let Some(ui) = state.user_index(&upn) else {
        return no_user(&upn);
    };
    if state.users[ui].mailbox.delete_message(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        admin_error(StatusCode::NOT_FOUND, format!("no message '{id}'"))
    }
}

/// `PUT /_sim/admin/users/{upn}/drive/{path…}` with the file's bytes: creates or replaces the
/// file, creating parent folders. A path ending in `/` creates a folder. 201/200 `{"id"}`.
pub(crate) async fn put_drive_file(
    State(sim): State<Arc<Sim>>,
    Path((upn, path)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let is_folder = path.ends_with('/');
    let comps: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if comps.is_empty() {
        return admin_error(StatusCode::BAD_REQUEST, "a drive path is required");
    }
    let hash = {
        let b = body.clone();
        tokio::task::spawn_blocking(move || {
            let mut h = QuickXorHash::new();
            h.update(&b);
            h.finish_base64()
        })
        .await
        .unwrap_or_default()
    };
    let mut state = sim.state();
    let Some(ui) = state.user_index(&upn) else {
        return no_user(&upn);
    };
    let drive = &mut state.users[ui].drive;
    let root = drive.root_id.clone();
    let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
    let result = if is_folder {
        ensure_folders(drive, &root, &refs).map(|id| (id, true))
    } else {
        let (file, dirs) = refs.split_last().unwrap_or((&"", &[]));
        ensure_folders(drive, &root, dirs).and_then(|parent| {
            drive.put_file(
                &parent,
                file,
                Content::Memory(body),
                hash,
                ConflictBehavior::Replace,
                Utc::now(),
            )
        })
    };
    match result {
        Ok((id, created)) => (
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            axum::Json(json!({"id": id})),
        )
            .into_response(),
        Err(e) => admin_error(
            StatusCode::CONFLICT,
            format!("cannot write '{path}': {e:?}"),
        ),
    }
}

/// `DELETE /_sim/admin/users/{upn}/drive/{path…}`: deletes a file or folder (with contents).
pub(crate) async fn delete_drive_item(
    State(sim): State<Arc<Sim>>,
    Path((upn, path)): Path<(String, String)>,
) -> Response {
    let mut state = sim.state();
    let Some(ui) = state.user_index(&upn) else {
        return no_user(&upn);
    };
    let drive = &mut state.users[ui].drive;
    let root = drive.root_id.clone();
    match drive.resolve_path(&root, &path) {
        Some(id) if id != root => match drive.delete(&id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => admin_error(StatusCode::CONFLICT, format!("{e:?}")),
        },
        _ => admin_error(StatusCode::NOT_FOUND, format!("no drive item at '{path}'")),
    }
}

fn sha256_hex(content: &Content) -> (String, u64) {
    match content.read_all_blocking() {
        Ok(b) => (hex::encode(Sha256::digest(&b)), b.len() as u64),
        Err(e) => (format!("unreadable: {e}"), content.len()),
    }
}

/// `GET /_sim/admin/users/{upn}/export`: ground truth for verifying backups and restores.
pub(crate) async fn export(State(sim): State<Arc<Sim>>, Path(upn): Path<String>) -> Response {
    // Snapshot under the lock; hash outside it.
    let snapshot = {
        let state = sim.state();
        let Some(ui) = state.user_index(&upn) else {
            return no_user(&upn);
        };
        let user = &state.users[ui];
        let mb = &user.mailbox;
        let mut mail: Vec<(Value, Content)> = mb
            .messages
            .values()
            .map(|m| {
                (
                    json!({
                        "folder": mb.folder_path(&m.folder_id),
                        "id": m.id,
                        "internetMessageId": m.meta.internet_message_id,
                        "subject": m.meta.subject,
                        "hasAttachments": m.meta.has_attachments,
                    }),
                    m.mime.clone(),
                )
            })
            .collect();
        mail.sort_by_key(|(v, _)| {
            (
                v["folder"].to_string(),
                v["subject"].to_string(),
                v["id"].to_string(),
            )
        });
        let drive = &user.drive;
        let mut files: Vec<(String, Option<Content>)> = drive
            .items
            .values()
            .filter(|i| i.parent_id.is_some())
            .map(|i| {
                let path = drive.path_names(&i.id).join("/");
                match &i.kind {
                    ItemKind::File { content, .. } => (path, Some(content.clone())),
                    ItemKind::Folder => (path, None),
                }
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let contact_folder_path = |id: &str| {
            let mut parts = Vec::new();
            let mut cur = mb.contact_folder(id);
            while let Some(f) = cur {
                parts.push(f.display_name.clone());
                cur = mb.contact_folder(&f.parent_id);
            }
            parts.reverse();
            parts.join("/")
        };
        let mut contacts: Vec<Value> = mb
            .contacts
            .values()
            .map(|c| {
                json!({
                    "folder": contact_folder_path(&c.folder_id),
                    "displayName": c.props.get("displayName").cloned().unwrap_or(Value::Null),
                    "emailAddresses": c.props.get("emailAddresses").cloned().unwrap_or(json!([])),
                })
            })
            .collect();
        contacts.sort_by_key(|v| (v["folder"].to_string(), v["displayName"].to_string()));
        let mut events: Vec<Value> = mb
            .events
            .values()
            .map(|e| {
                json!({
                    "calendar": mb.calendar(&e.calendar_id).map(|c| c.name.clone()),
                    "id": e.id,
                    "subject": e.props.get("subject").cloned().unwrap_or(Value::Null),
                    "iCalUId": e.props.get("iCalUId").cloned().unwrap_or(Value::Null),
                    "start": crate::wire::ts(e.start),
                    "end": crate::wire::ts(e.end),
                })
            })
            .collect();
        events.sort_by_key(|v| {
            (
                v["calendar"].to_string(),
                v["start"].to_string(),
                v["subject"].to_string(),
            )
        });
        (mail, files, contacts, events)
    };
    let (mail, files, contacts, events) = snapshot;
    let hashed = tokio::task::spawn_blocking(move || {
        let mail: Vec<Value> = mail
            .into_iter()
            .map(|(mut v, content)| {
                let (sha, size) = sha256_hex(&content);
                v["sha256"] = json!(sha);
                v["size"] = json!(size);
                // File attachments, decoded: (name, size, sha256) in MIME order.
                if v["hasAttachments"] == json!(true) {
                    if let Ok(raw) = content.read_all_blocking() {
                        v["attachments"] = json!(crate::attachments::attachment_digests(&raw));
                    }
                }
                v
            })
            .collect();
        let drive: Vec<Value> = files
            .into_iter()
            .map(|(path, content)| match content {
                Some(c) => {
                    let (sha, size) = sha256_hex(&c);
                    json!({"path": path, "sha256": sha, "size": size})
                }
                None => json!({"path": path, "folder": true}),
            })
            .collect();
        (mail, drive)
    })
    .await;
    match hashed {
        Ok((mail, drive)) => axum::Json(json!({
            "mail": mail,
            "drive": drive,
            "contacts": contacts,
            "events": events,
        }))
        .into_response(),
        Err(e) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
