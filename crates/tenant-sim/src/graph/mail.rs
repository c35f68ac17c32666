//! Exchange mail: mail folders (user-list-mailfolders, mailfolder-get, mailfolder-post-childfolders),
//! messages (message-get, message-delta, mailfolder-post-messages incl. MIME), mailbox settings.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::Call;
use crate::delta::{self, Cursor, DeltaState};
use crate::ids;
use crate::mime::{self, EmailAddress};
use crate::tenant::{Content, FolderConflict, MailFolder, Mailbox, Message, Tenant, User};
use crate::wire::{self, ts, GResult, GraphError};

pub(super) fn user_index(state: &Tenant, key: &str) -> Result<usize, GraphError> {
    state
        .user_index(key)
        .ok_or_else(GraphError::mailbox_not_found)
}

fn folder_or_404<'a>(mb: &'a Mailbox, key: &str) -> Result<&'a MailFolder, GraphError> {
    mb.folder(key).ok_or_else(GraphError::exchange_not_found)
}

pub(crate) fn folder_json(mb: &Mailbox, f: &MailFolder) -> Value {
    let (total, unread) = mb.folder_counts(&f.id);
    json!({
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": f.parent_id,
        "childFolderCount": mb.child_folders(&f.id).len(),
        "unreadItemCount": unread,
        "totalItemCount": total,
        "isHidden": f.is_hidden,
    })
}

fn address_json(a: &EmailAddress) -> Value {
    json!({"emailAddress": {"name": a.name, "address": a.address}})
}

/// The message resource (message_get.json's properties).
pub(crate) fn message_json(user: &User, m: &Message) -> Value {
    let meta = &m.meta;
    let ck = ids::change_key(&m.id, m.version);
    let conversation = ids::exchange_id(
        "AAQkA",
        &[&user.mailbox.key, "conversation", &meta.conversation_key],
    );
    json!({
        "@odata.etag": format!("W/\"{ck}\""),
        "id": m.id,
        "createdDateTime": ts(m.created),
        "lastModifiedDateTime": ts(m.modified),
        "changeKey": ck,
        "categories": [],
        "receivedDateTime": ts(m.received),
        "sentDateTime": meta.sent.map(ts),
        "hasAttachments": meta.has_attachments,
        "internetMessageId": meta.internet_message_id,
        "subject": meta.subject,
        "bodyPreview": meta.body_preview,
        "importance": meta.importance,
        "parentFolderId": m.folder_id,
        "conversationId": conversation,
        "isDeliveryReceiptRequested": false,
        "isReadReceiptRequested": meta.read_receipt,
        "isRead": m.is_read,
        "isDraft": m.is_draft,
        "webLink": format!(
            "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel=ReadMessageItem",
            wire::enc(&m.id)
        ),
        "inferenceClassification": "focused",
        "body": {"contentType": meta.body_type, "content": meta.body},
        "sender": meta.sender.as_ref().map(address_json),
        "from": meta.from.as_ref().map(address_json),
        "toRecipients": meta.to.iter().map(address_json).collect::<Vec<_>>(),
        "ccRecipients": meta.cc.iter().map(address_json).collect::<Vec<_>>(),
        "bccRecipients": meta.bcc.iter().map(address_json).collect::<Vec<_>>(),
        "replyTo": meta.reply_to.iter().map(address_json).collect::<Vec<_>>(),
        "flag": {"flagStatus": "notFlagged"},
    })
}

/// Mail.ReadBasic.All reads everything except the body (permissions reference).
fn strip_for_basic(call: &Call<'_>, v: &mut Value) {
    if !call.has_role("Mail.Read") && !call.has_role("Mail.ReadWrite") {
        if let Value::Object(m) = v {
            m.remove("body");
            m.remove("bodyPreview");
            m.remove("uniqueBody");
        }
    }
}

fn context(call: &Call<'_>, fragment: &str) -> String {
    format!("{}/$metadata#{fragment}", call.sim.graph_base())
}

/// `GET /users/{id}/mailFolders` (top level) or `…/mailFolders/{id}/childFolders`: pages of
/// `$top` (default 10) with `$skip` nextLinks, ordered by display name.
pub(super) fn list_folders(call: &Call<'_>, u: &str, parent: Option<&str>) -> GResult {
    let top = call.top(10, 1000)?;
    let skip: usize = call.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mb = &user.mailbox;
    let (parent_id, ctx) = match parent {
        None => (
            mb.root_id.clone(),
            format!("users('{}')/mailFolders", user.id),
        ),
        Some(p) => {
            let f = folder_or_404(mb, p)?;
            (
                f.id.clone(),
                format!("users('{}')/mailFolders('{}')/childFolders", user.id, f.id),
            )
        }
    };
    let folders = mb.child_folders(&parent_id);
    let value: Vec<Value> = folders
        .iter()
        .skip(skip)
        .take(top)
        .map(|f| {
            let mut v = folder_json(mb, f);
            wire::apply_select(&mut v, call.q("$select"));
            v
        })
        .collect();
    let mut body = json!({"@odata.context": context(call, &ctx), "value": value});
    if skip + top < folders.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[("$skip", (skip + top).to_string())]));
    }
    wire::ok_json(&body)
}

/// `GET /users/{id}/mailFolders/{id | well-known name}`.
pub(super) fn get_folder(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let folder = folder_or_404(&user.mailbox, f)?;
    let mut v = folder_json(&user.mailbox, folder);
    wire::apply_select(&mut v, call.q("$select"));
    v["@odata.context"] = json!(context(
        call,
        &format!("users('{}')/mailFolders/$entity", user.id)
    ));
    wire::ok_json(&v)
}

/// `POST /users/{id}/mailFolders` or `…/mailFolders/{id}/childFolders` with `{displayName}`.
pub(super) fn create_folder(call: &Call<'_>, u: &str, parent: Option<&str>) -> GResult {
    let body = call.json_body()?;
    let name = body
        .get("displayName")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidRequest",
                "The displayName property is required to create a folder.",
            )
        })?
        .to_string();
    let mut state = call.sim.state();
    let ui = user_index(&state, u)?;
    let mb = &mut state.users[ui].mailbox;
    let parent_id = match parent {
        None => mb.root_id.clone(),
        Some(p) => folder_or_404(mb, p)?.id.clone(),
    };
    let id = mb.create_folder(&parent_id, &name).map_err(|e| match e {
        FolderConflict::Exists => GraphError::new(
            StatusCode::CONFLICT,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
        ),
        FolderConflict::ParentNotFound => GraphError::exchange_not_found(),
    })?;
    if body.get("isHidden").and_then(Value::as_bool) == Some(true) {
        if let Some(f) = mb.folders.iter_mut().find(|f| f.id == id) {
            f.is_hidden = true;
        }
    }
    let user = &state.users[ui];
    let folder = user
        .mailbox
        .folder(&id)
        .ok_or_else(GraphError::exchange_not_found)?;
    let mut v = folder_json(&user.mailbox, folder);
    v["@odata.context"] = json!(context(
        call,
        &format!("users('{}')/mailFolders/$entity", user.id)
    ));
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

/// `GET /users/{id}/mailFolders/{id}/messages`: newest first, `$top` (default 10), `$skip`.
pub(super) fn list_messages(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let top = call.top(10, 1000)?;
    let skip: usize = call.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let folder = folder_or_404(&user.mailbox, f)?;
    let mut msgs: Vec<&Message> = user
        .mailbox
        .messages
        .values()
        .filter(|m| m.folder_id == folder.id)
        .collect();
    msgs.sort_by(|a, b| b.received.cmp(&a.received).then(a.id.cmp(&b.id)));
    let value: Vec<Value> = msgs
        .iter()
        .skip(skip)
        .take(top)
        .map(|m| {
            let mut v = message_json(user, m);
            strip_for_basic(call, &mut v);
            wire::apply_select(&mut v, call.q("$select"));
            v
        })
        .collect();
    let mut body = json!({
        "@odata.context": context(call, &format!("users('{}')/mailFolders('{}')/messages", user.id, folder.id)),
        "value": value,
    });
    if skip + top < msgs.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[("$skip", (skip + top).to_string())]));
    }
    wire::ok_json(&body)
}

/// Page size from `Prefer: odata.maxpagesize` (per request: nextLink requests must send it
/// again), and the value to echo in `Preference-Applied`.
pub(super) fn delta_page_size(call: &Call<'_>, default: usize) -> (usize, Option<usize>) {
    match delta::prefer_max_page_size(&call.headers) {
        Some(n) => {
            let n = n.clamp(1, 1000);
            (n, Some(n))
        }
        None => (default, None),
    }
}

pub(super) fn with_preference_applied(
    mut resp: axum::response::Response,
    applied: Option<usize>,
) -> axum::response::Response {
    if let Some(n) = applied {
        if let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={n}")) {
            resp.headers_mut().insert("preference-applied", v);
        }
    }
    resp
}

pub(super) fn invalid_sync_state() -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "ErrorInvalidSyncStateData",
        "The sync state data is corrupt or otherwise invalid: SyncStateNotFound. Start a new synchronization without a state token.",
    )
}

/// The state for this delta request: fresh, or decoded from `$skiptoken`/`$deltatoken`.
pub(super) fn delta_state(
    call: &Call<'_>,
    kind: &str,
    scope: &str,
    current_seq: u64,
) -> Result<DeltaState, GraphError> {
    let token = call.q("$skiptoken").or_else(|| call.q("$deltatoken"));
    match token {
        None => Ok(DeltaState {
            kind: kind.into(),
            scope: scope.into(),
            base: 0,
            high: current_seq,
            after: None,
            complete: false,
            window: None,
        }),
        Some(t) => DeltaState::decode(t)
            .filter(|s| s.kind == kind && s.scope == scope && s.high <= current_seq)
            .map(|s| s.resume(current_seq))
            .ok_or_else(invalid_sync_state),
    }
}

pub(super) fn removed_json(odata_type: &str, id: &str) -> Value {
    json!({"@odata.type": odata_type, "id": id, "@removed": {"reason": "deleted"}})
}

enum FeedRef<'a> {
    Removed(&'a str),
    Live(&'a Message),
}

/// `GET /users/{id}/mailFolders/{id}/messages/delta` (message-delta, delta-query-messages).
pub(super) fn delta(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let (size, applied) = delta_page_size(call, 10);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mb = &user.mailbox;
    let folder = folder_or_404(mb, f)?;
    let st = delta_state(call, "message", &folder.id, mb.seq)?;
    let mut entries: Vec<(Cursor, FeedRef<'_>)> = Vec::new();
    if st.base > 0 {
        for t in mb
            .mail_tombstones
            .iter()
            .filter(|t| t.container_id == folder.id && t.seq > st.base)
        {
            entries.push((
                Cursor {
                    phase: 0,
                    seq: t.seq,
                    key: t.id.clone(),
                },
                FeedRef::Removed(&t.id),
            ));
        }
    }
    for m in mb
        .messages
        .values()
        .filter(|m| m.folder_id == folder.id && m.seq > st.base)
    {
        entries.push((
            Cursor {
                phase: 1,
                seq: m.seq,
                key: m.id.clone(),
            },
            FeedRef::Live(m),
        ));
    }
    let page = delta::page(entries, st.after.as_ref(), size);
    let value: Vec<Value> = page
        .items
        .iter()
        .map(|e| match e {
            FeedRef::Removed(id) => removed_json("#microsoft.graph.message", id),
            FeedRef::Live(m) => {
                let mut v = message_json(user, m);
                v["@odata.type"] = json!("#microsoft.graph.message");
                strip_for_basic(call, &mut v);
                wire::apply_select(&mut v, call.q("$select"));
                v
            }
        })
        .collect();
    let link = format!(
        "{}/users/{}/mailFolders/{}/messages/delta",
        call.sim.graph_base(),
        user.id,
        folder.id
    );
    let mut body = json!({"@odata.context": context(call, "Collection(message)"), "value": value});
    match page.next {
        Some(c) => {
            body["@odata.nextLink"] =
                json!(format!("{link}?$skiptoken={}", st.next_page(c).encode()))
        }
        None => {
            body["@odata.deltaLink"] =
                json!(format!("{link}?$deltatoken={}", st.finished().encode()))
        }
    }
    Ok(with_preference_applied(
        wire::json_response(StatusCode::OK, &body),
        applied,
    ))
}

fn find_message<'a>(user: &'a User, id: &str) -> Result<&'a Message, GraphError> {
    user.mailbox
        .messages
        .get(id)
        .ok_or_else(GraphError::exchange_not_found)
}

/// `GET /users/{id}/messages/{id}`.
pub(super) fn get_message(call: &Call<'_>, u: &str, m: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let msg = find_message(user, m)?;
    let mut v = message_json(user, msg);
    strip_for_basic(call, &mut v);
    wire::apply_select(&mut v, call.q("$select"));
    v["@odata.context"] = json!(context(
        call,
        &format!("users('{}')/messages/$entity", user.id)
    ));
    wire::ok_json(&v)
}

/// `GET /users/{id}/messages/{id}/$value`: the MIME content, byte for byte. Graph's docs show
/// `Content-Type: text/plain` for this response.
pub(super) async fn get_mime(call: &Call<'_>, u: &str, m: &str) -> GResult {
    let content: Content = {
        let state = call.sim.state();
        let user = &state.users[user_index(&state, u)?];
        find_message(user, m)?.mime.clone()
    };
    let bytes = content.read_all().await.map_err(|e| {
        GraphError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ErrorInternalServerError",
            e.to_string(),
        )
    })?;
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

fn encode_header_text(s: &str) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        format!(
            "=?utf-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

fn mime_addresses(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let e = r.get("emailAddress")?;
                    let addr = e.get("address")?.as_str()?;
                    Some(match e.get("name").and_then(Value::as_str) {
                        Some(n) if !n.is_empty() => format!("{} <{addr}>", encode_header_text(n)),
                        _ => addr.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A MIME rendering of a JSON message body (subject, body, recipients), for JSON creates.
fn synthesize_mime(m: &Map<String, Value>, owner: &str) -> Vec<u8> {
    let mut out = String::new();
    let from = mime_addresses(m.get("from").map(|f| json!([f])).as_ref());
    out += &format!(
        "From: {}\r\n",
        from.first().cloned().unwrap_or_else(|| owner.to_string())
    );
    for (hdr, key) in [
        ("To", "toRecipients"),
        ("Cc", "ccRecipients"),
        ("Bcc", "bccRecipients"),
    ] {
        let list = mime_addresses(m.get(key));
        if !list.is_empty() {
            out += &format!("{hdr}: {}\r\n", list.join(", "));
        }
    }
    let subject = m.get("subject").and_then(Value::as_str).unwrap_or_default();
    out += &format!("Subject: {}\r\n", encode_header_text(subject));
    out += &format!("Date: {}\r\n", Utc::now().to_rfc2822());
    out += &format!(
        "Message-ID: <{}@tenant-sim.invalid>\r\n",
        uuid::Uuid::new_v4()
    );
    let body = m.get("body");
    let html = body
        .and_then(|b| b.get("contentType"))
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("html"));
    let content = body
        .and_then(|b| b.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    out += "MIME-Version: 1.0\r\n";
    out += &format!(
        "Content-Type: text/{}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{content}",
        if html { "html" } else { "plain" }
    );
    out.into_bytes()
}

/// `POST /users/{id}/mailFolders/{id}/messages`: with `Content-Type: text/plain` the body is
/// base64 MIME (stored byte for byte), otherwise a JSON message. Like Graph, the created
/// message is a draft (`isDraft: true`).
pub(super) fn create_message(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let owner = {
        let state = call.sim.state();
        state.users[user_index(&state, u)?].profile.mail.clone()
    };
    let raw: Vec<u8> = if content_type.starts_with("text/plain") {
        let text: Vec<u8> = call
            .body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|_| {
                GraphError::new(
                    StatusCode::BAD_REQUEST,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                )
            })?
    } else {
        synthesize_mime(&call.json_body()?, &owner)
    };
    let meta = mime::parse(&raw).ok_or_else(|| {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalid",
            "The MIME content is invalid.",
        )
    })?;
    let mut state = call.sim.state();
    let ui = user_index(&state, u)?;
    let mb = &mut state.users[ui].mailbox;
    let folder_id = folder_or_404(mb, f)?.id.clone();
    let id = mb.add_message(
        &folder_id,
        None,
        Content::Memory(Bytes::from(raw)),
        meta,
        Utc::now(),
        true,
        true,
    );
    let user = &state.users[ui];
    let msg = find_message(user, &id)?;
    let mut v = message_json(user, msg);
    v["@odata.context"] = json!(context(
        call,
        &format!("users('{}')/messages/$entity", user.id)
    ));
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

fn time_zone_for(locale: &str) -> (&'static str, &'static str) {
    match locale.to_ascii_lowercase().as_str() {
        "en-us" => ("Pacific Standard Time", "English (United States)"),
        "en-gb" => ("GMT Standard Time", "English (United Kingdom)"),
        "de-de" => ("W. Europe Standard Time", "German (Germany)"),
        "fr-fr" => ("Romance Standard Time", "French (France)"),
        "nl-nl" => ("W. Europe Standard Time", "Dutch (Netherlands)"),
        "es-es" => ("Romance Standard Time", "Spanish (Spain)"),
        "ja-jp" => ("Tokyo Standard Time", "Japanese (Japan)"),
        _ => ("UTC", ""),
    }
}

/// `GET /users/{id}/mailboxSettings`.
pub(super) fn mailbox_settings(call: &Call<'_>, u: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let locale = user.profile.preferred_language.clone();
    let (tz, lang_name) = time_zone_for(&locale);
    let archive = user.mailbox.folder("archive").map(|f| f.id.clone());
    let v = json!({
        "@odata.context": context(call, &format!("users('{}')/mailboxSettings", user.id)),
        "archiveFolder": archive,
        "timeZone": tz,
        "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
        "dateFormat": "M/d/yyyy",
        "timeFormat": "h:mm tt",
        "userPurpose": "user",
        "automaticRepliesSetting": {
            "status": "disabled",
            "externalAudience": "all",
            "internalReplyMessage": "",
            "externalReplyMessage": "",
            "scheduledStartDateTime": {"dateTime": "2024-01-01T00:00:00.0000000", "timeZone": "UTC"},
            "scheduledEndDateTime": {"dateTime": "2024-01-02T00:00:00.0000000", "timeZone": "UTC"}
        },
        "language": {"locale": locale, "displayName": if lang_name.is_empty() { locale.clone() } else { lang_name.to_string() }},
        "workingHours": {
            "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
            "startTime": "08:00:00.0000000",
            "endTime": "17:00:00.0000000",
            "timeZone": {"name": tz}
        }
    });
    wire::ok_json(&v)
}
