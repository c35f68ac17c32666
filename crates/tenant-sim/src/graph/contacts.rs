//! Exchange contacts: contact folders (user-list-contactfolders: the folders *below* the
//! default Contacts folder), contacts (contactfolder-list-contacts, user-list-contacts,
//! contact-get, contact-delta) and creation (user-post-contactfolders, contactfolder-post-contacts).

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::mail::{
    delta_page_size, delta_state, removed_json, user_index, with_preference_applied,
};
use super::Call;
use crate::delta::{self, Cursor};
use crate::ids;
use crate::tenant::{Contact, ContactFolder, FolderConflict, Mailbox, User};
use crate::wire::{self, ts, GResult, GraphError};

/// Properties the simulator owns; a client cannot set them.
const OWNED: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "parentFolderId",
    "@odata.etag",
    "@odata.context",
    "@odata.type",
];

fn folder_json(f: &ContactFolder) -> Value {
    json!({"id": f.id, "displayName": f.display_name, "parentFolderId": f.parent_id})
}

pub(crate) fn contact_json(c: &Contact) -> Value {
    let ck = ids::change_key(&c.id, c.version);
    let mut m = Map::new();
    m.insert("@odata.etag".into(), json!(format!("W/\"{ck}\"")));
    m.insert("id".into(), json!(c.id));
    m.insert("createdDateTime".into(), json!(ts(c.created)));
    m.insert("lastModifiedDateTime".into(), json!(ts(c.modified)));
    m.insert("changeKey".into(), json!(ck));
    m.insert("parentFolderId".into(), json!(c.folder_id));
    for (k, v) in &c.props {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn folder_or_404<'a>(mb: &'a Mailbox, id: &str) -> Result<&'a ContactFolder, GraphError> {
    mb.contact_folder(id)
        .ok_or_else(GraphError::exchange_not_found)
}

fn ctx_url(call: &Call<'_>, frag: &str) -> String {
    format!("{}/$metadata#{frag}", call.sim.graph_base())
}

/// `GET /users/{id}/contactFolders`: the folders in the user's default Contacts folder (the
/// default folder itself is not listed, as Graph documents; find it through a contact's
/// `parentFolderId` from `GET /users/{id}/contacts`).
pub(super) fn list_folders(call: &Call<'_>, u: &str) -> GResult {
    let top = call.top(10, 1000)?;
    let skip: usize = call.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mb = &user.mailbox;
    let mut folders: Vec<&ContactFolder> = mb
        .contact_folders
        .iter()
        .filter(|f| f.parent_id == mb.contacts_folder_id)
        .collect();
    folders.sort_by_key(|f| f.display_name.to_lowercase());
    let value: Vec<Value> = folders
        .iter()
        .skip(skip)
        .take(top)
        .map(|f| folder_json(f))
        .collect();
    let mut body = json!({
        "@odata.context": ctx_url(call, &format!("users('{}')/contactFolders", user.id)),
        "value": value
    });
    if skip + top < folders.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[("$skip", (skip + top).to_string())]));
    }
    wire::ok_json(&body)
}

/// `GET /users/{id}/contactFolders/{id}`.
pub(super) fn get_folder(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mut v = folder_json(folder_or_404(&user.mailbox, f)?);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/contactFolders/$entity", user.id)
    ));
    wire::ok_json(&v)
}

/// `POST /users/{id}/contactFolders` with `{displayName}`: a folder in the default Contacts
/// folder. 409 `ErrorFolderExists` on a duplicate name.
pub(super) fn create_folder(call: &Call<'_>, u: &str) -> GResult {
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
    let parent = mb.contacts_folder_id.clone();
    let id = mb
        .create_contact_folder(&parent, &name)
        .map_err(|e| match e {
            FolderConflict::Exists => GraphError::new(
                StatusCode::CONFLICT,
                "ErrorFolderExists",
                "A folder with the specified name already exists.",
            ),
            FolderConflict::ParentNotFound => GraphError::exchange_not_found(),
        })?;
    let user = &state.users[ui];
    let mut v = folder_json(folder_or_404(&user.mailbox, &id)?);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/contactFolders/$entity", user.id)
    ));
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

/// `GET /users/{id}/contactFolders/{id}/contacts` or (folder `None`) `GET /users/{id}/contacts`
/// for the default Contacts folder; `$top` (default 10), `$skip`.
pub(super) fn list(call: &Call<'_>, u: &str, folder: Option<&str>) -> GResult {
    let top = call.top(10, 1000)?;
    let skip: usize = call.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mb = &user.mailbox;
    let folder_id = match folder {
        Some(f) => folder_or_404(mb, f)?.id.clone(),
        None => mb.contacts_folder_id.clone(),
    };
    let mut contacts: Vec<&Contact> = mb
        .contacts
        .values()
        .filter(|c| c.folder_id == folder_id)
        .collect();
    contacts.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    let value: Vec<Value> = contacts
        .iter()
        .skip(skip)
        .take(top)
        .map(|c| {
            let mut v = contact_json(c);
            wire::apply_select(&mut v, call.q("$select"));
            v
        })
        .collect();
    let mut body = json!({
        "@odata.context": ctx_url(call, &format!("users('{}')/contacts", user.id)),
        "value": value
    });
    if skip + top < contacts.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[("$skip", (skip + top).to_string())]));
    }
    wire::ok_json(&body)
}

fn find<'a>(user: &'a User, id: &str) -> Result<&'a Contact, GraphError> {
    user.mailbox
        .contacts
        .get(id)
        .ok_or_else(GraphError::exchange_not_found)
}

/// `GET /users/{id}/contacts/{id}`.
pub(super) fn get(call: &Call<'_>, u: &str, c: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mut v = contact_json(find(user, c)?);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/contacts/$entity", user.id)
    ));
    wire::ok_json(&v)
}

/// `POST /users/{id}/contactFolders/{id}/contacts`: stores the posted contact properties.
pub(super) fn create(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let mut props = call.json_body()?;
    for k in OWNED {
        props.remove(*k);
    }
    if let Some(v) = props.get("emailAddresses") {
        if !v.is_array() {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidRequest",
                "emailAddresses must be a collection.",
            ));
        }
    }
    let mut state = call.sim.state();
    let ui = user_index(&state, u)?;
    let mb = &mut state.users[ui].mailbox;
    let folder_id = folder_or_404(mb, f)?.id.clone();
    let id = mb.add_contact(&folder_id, None, props, Utc::now());
    let user = &state.users[ui];
    let mut v = contact_json(find(user, &id)?);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/contacts/$entity", user.id)
    ));
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

/// `GET /users/{id}/contactFolders/{id}/contacts/delta` (contact-delta): same mechanics as
/// message delta.
pub(super) fn delta(call: &Call<'_>, u: &str, f: &str) -> GResult {
    let (size, applied) = delta_page_size(call, 10);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mb = &user.mailbox;
    let folder = folder_or_404(mb, f)?;
    let st = delta_state(call, "contact", &folder.id, mb.seq)?;
    let mut entries: Vec<(Cursor, Value)> = Vec::new();
    if st.base > 0 {
        for t in mb
            .contact_tombstones
            .iter()
            .filter(|t| t.container_id == folder.id && t.seq > st.base)
        {
            entries.push((
                Cursor {
                    phase: 0,
                    seq: t.seq,
                    key: t.id.clone(),
                },
                removed_json("#microsoft.graph.contact", &t.id),
            ));
        }
    }
    for c in mb
        .contacts
        .values()
        .filter(|c| c.folder_id == folder.id && c.seq > st.base)
    {
        let mut v = contact_json(c);
        v["@odata.type"] = json!("#microsoft.graph.contact");
        wire::apply_select(&mut v, call.q("$select"));
        entries.push((
            Cursor {
                phase: 1,
                seq: c.seq,
                key: c.id.clone(),
            },
            v,
        ));
    }
    let page = delta::page(entries, st.after.as_ref(), size);
    let link = format!(
        "{}/users/{}/contactFolders/{}/contacts/delta",
        call.sim.graph_base(),
        user.id,
        folder.id
    );
    let mut body =
        json!({"@odata.context": ctx_url(call, "Collection(contact)"), "value": page.items});
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
