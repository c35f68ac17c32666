//! Microsoft Graph v1.0 (`/v1.0/...`): authentication, route parsing into a typed [`Route`] plus
//! the `endpointIndex` template it matches, per-endpoint authorisation, and dispatch to the
//! workload modules.

mod calendar;
mod contacts;
mod drive;
mod mail;
mod users;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Extension;

use crate::permissions::{Decision, Workload};
use crate::server::Sim;
use crate::token::{self, Claims, TokenRejection, GRAPH_AUDIENCE};
use crate::wire::{self, AppId, Ctx, GResult, GraphError};

pub(crate) use drive::{conflict_error, ensure_folders, item_json};

/// A parsed Graph request, handed to the endpoint handlers.
pub(crate) struct Call<'a> {
    pub sim: &'a Sim,
    pub claims: &'a Claims,
    pub method: Method,
    /// The request path as received (percent-encoded), for `nextLink`s.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call<'_> {
    pub(crate) fn q(&self, name: &str) -> Option<&str> {
        wire::query_get(&self.query, name)
    }

    pub(crate) fn roles(&self) -> &[String] {
        self.claims.roles.as_deref().unwrap_or_default()
    }

    pub(crate) fn has_role(&self, role: &str) -> bool {
        self.roles().iter().any(|r| r.eq_ignore_ascii_case(role))
    }

    /// This request's URL with paging parameters replaced by `params`.
    pub(crate) fn link_with(&self, params: &[(&str, String)]) -> String {
        let drop: Vec<&str> = params
            .iter()
            .map(|(k, _)| k.trim_start_matches('$'))
            .collect();
        let mut parts: Vec<String> = self
            .query
            .iter()
            .filter(|(k, _)| {
                let k = k.trim_start_matches('$');
                !drop.iter().any(|d| d.eq_ignore_ascii_case(k))
                    && !k.eq_ignore_ascii_case("skip")
                    && !k.eq_ignore_ascii_case("skiptoken")
            })
            .map(|(k, v)| format!("{}={}", wire::enc(k).replace("%24", "$"), wire::enc(v)))
            .collect();
        for (k, v) in params {
            parts.push(format!("{k}={}", wire::enc(v)));
        }
        format!("{}{}?{}", self.sim.base_url, self.path, parts.join("&"))
    }

    /// `$top` as a page size (1..=max), or the default.
    pub(crate) fn top(&self, default: usize, max: usize) -> Result<usize, GraphError> {
        match self.q("$top") {
            None => Ok(default),
            Some(t) => match t.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n.min(max)),
                _ => Err(GraphError::bad_request(format!(
                    "Invalid value '{t}' for query option $top."
                ))),
            },
        }
    }

    pub(crate) fn json_body(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, GraphError> {
        if self.body.is_empty() {
            return Err(GraphError::bad_request(
                "Empty Payload. JSON content expected.",
            ));
        }
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => Err(GraphError::bad_request(
                "Invalid request: a JSON object is expected.",
            )),
            Err(e) => Err(GraphError::bad_request(format!(
                "Unable to read JSON request payload: {e}"
            ))),
        }
    }
}

/// Which drive a drive route addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DriveSel {
    Id(String),
    User(String),
}

/// A driveItem address: by id (`None` = root) and optionally a path below it (`:/a/b:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ItemAddr {
    pub base: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Users,
    User(String),
    MailFolders(String),
    MailFolder(String, String),
    ChildFolders(String, String),
    FolderMessages(String, String),
    MessagesDelta(String, String),
    Message(String, String),
    MessageValue(String, String),
    AttachmentSession(String, String),
    MailboxSettings(String),
    ContactFolders(String),
    ContactFolder(String, String),
    FolderContacts(String, String),
    ContactsDelta(String, String),
    Contacts(String),
    Contact(String, String),
    Calendars(String),
    Calendar(String, String),
    CalendarEvents(String, String),
    CalendarViewDelta(String),
    Event(String, String),
    Drive(DriveSel),
    RootDelta(DriveSel, Option<String>),
    Item(DriveSel, ItemAddr),
    Children(DriveSel, ItemAddr),
    Content(DriveSel, ItemAddr),
    CreateUploadSession(DriveSel, ItemAddr),
}

impl Route {
    fn methods(&self) -> &'static [&'static str] {
        use Route::*;
        match self {
            MailFolders(_) | ChildFolders(..) | FolderMessages(..) | ContactFolders(_)
            | FolderContacts(..) | Calendars(_) | CalendarEvents(..) | Children(..) => {
                &["GET", "POST"]
            }
            Content(..) => &["GET", "PUT"],
            Item(_, a) if a.base.is_none() && a.path.is_none() => &["GET"],
            Item(..) => &["GET", "PATCH", "DELETE"],
            CreateUploadSession(..) | AttachmentSession(..) => &["POST"],
            _ => &["GET"],
        }
    }
}

struct Seg {
    text: String,
    lower: String,
}

fn seg(text: String) -> Seg {
    Seg {
        lower: text.to_ascii_lowercase(),
        text,
    }
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('\'').trim_matches('"').to_string()
}

/// Splits `…/items/{id}:/a/b.txt:/content` into the part before the first `:`, and the
/// decoded item path with the remaining suffix.
fn split_drive_addressing(rel: &str) -> (&str, Option<(String, &str)>) {
    let Some(i) = rel.find(':') else {
        return (rel, None);
    };
    let prefix = &rel[..i];
    let rest = &rel[i + 1..];
    let (path, suffix) = match rest.find(':') {
        Some(j) => (&rest[..j], &rest[j + 1..]),
        None => (rest, ""),
    };
    let path = wire::percent_decode(path).trim_matches('/').to_string();
    (prefix, Some((path, suffix)))
}

/// Path segments, percent-decoded, with OData key syntax (`mailFolders('inbox')`) and function
/// calls (`delta()`, `microsoft.graph.delta(token='…')`) expanded. Returns the `token` argument
/// of a `delta(token='…')` call when present.
fn split_segments(raw: &str) -> (Vec<Seg>, Option<String>) {
    let mut out = Vec::new();
    let mut token = None;
    for s in raw.split('/').filter(|s| !s.is_empty()) {
        let s = wire::percent_decode(s);
        let (name, arg) = match (s.find('('), s.ends_with(')')) {
            (Some(open), true) => (
                s[..open].to_string(),
                Some(s[open + 1..s.len() - 1].to_string()),
            ),
            _ => (s.clone(), None),
        };
        let name = match name.to_ascii_lowercase().strip_prefix("microsoft.graph.") {
            Some(n) => n.to_string(),
            None => name,
        };
        out.push(seg(name));
        if let Some(arg) = arg.filter(|a| !a.trim().is_empty()) {
            match arg.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("token") => token = Some(unquote(v)),
                Some((_, v)) => out.push(seg(unquote(v))),
                None => out.push(seg(unquote(&arg))),
            }
        }
    }
    (out, token)
}

/// Parses a Graph path (after `/v1.0`) into a route and its `endpointIndex` template.
pub(crate) fn parse_route(rel: &str) -> Result<(Route, String), GraphError> {
    let (prefix, addr) = split_drive_addressing(rel);
    let (segs, delta_arg) = split_segments(prefix);
    let Some(first) = segs.first() else {
        return Err(GraphError::bad_request("Invalid request."));
    };
    match first.lower.as_str() {
        "me" => Err(GraphError::bad_request(
            "/me request is only valid with delegated authentication flow.",
        )),
        "users" => users_route(&segs[1..], addr, delta_arg),
        "drives" => match segs.get(1) {
            Some(d) => drive_route(DriveSel::Id(d.text.clone()), &segs[2..], addr, delta_arg),
            None => Err(GraphError::bad_request(
                "Unable to retrieve the user's drives: an app-only token must address a drive by id or owner.",
            )),
        },
        _ => Err(GraphError::segment_not_found(&first.text)),
    }
}

fn users_route(
    rest: &[Seg],
    addr: Option<(String, &str)>,
    delta_arg: Option<String>,
) -> Result<(Route, String), GraphError> {
    let Some(user) = rest.first() else {
        return no_addr(addr, (Route::Users, "/users".into()));
    };
    let u = user.text.clone();
    let r = &rest[1..];
    if r.first().is_some_and(|s| s.lower == "drive") {
        if r.len() == 1 && addr.is_none() {
            return Ok((Route::Drive(DriveSel::User(u)), "/users/{id}/drive".into()));
        }
        return drive_route(DriveSel::User(u), &r[1..], addr, delta_arg);
    }
    let names: Vec<&str> = r.iter().map(|s| s.lower.as_str()).collect();
    let t = |i: usize| r[i].text.clone();
    use Route::*;
    let parsed = match names.as_slice() {
        [] => (User(u), "/users/{id}"),
        ["mailfolders"] => (MailFolders(u), "/users/{id}/mailfolders"),
        ["mailfolders", _] => (MailFolder(u, t(1)), "/users/{id}/mailfolders/{id}"),
        ["mailfolders", _, "childfolders"] => (
            ChildFolders(u, t(1)),
            "/users/{id}/mailfolders/{id}/childfolders",
        ),
        ["mailfolders", _, "messages"] => (
            FolderMessages(u, t(1)),
            "/users/{id}/mailfolders/{id}/messages",
        ),
        ["mailfolders", _, "messages", "delta"] => (
            MessagesDelta(u, t(1)),
            "/users/{id}/mailfolders/{id}/messages/delta",
        ),
        ["messages", _] => (Message(u, t(1)), "/users/{id}/messages/{id}"),
        ["messages", _, "$value"] => (MessageValue(u, t(1)), "/users/{id}/messages/{id}/$value"),
        ["messages", _, "attachments", "createuploadsession"] => (
            AttachmentSession(u, t(1)),
            "/users/{id}/messages/{id}/attachments/createuploadsession",
        ),
        ["mailboxsettings"] => (MailboxSettings(u), "/users/{id}/mailboxsettings"),
        ["contactfolders"] => (ContactFolders(u), "/users/{id}/contactfolders"),
        ["contactfolders", _] => (ContactFolder(u, t(1)), "/users/{id}/contactfolders/{id}"),
        ["contactfolders", _, "contacts"] => (
            FolderContacts(u, t(1)),
            "/users/{id}/contactfolders/{id}/contacts",
        ),
        ["contactfolders", _, "contacts", "delta"] => (
            ContactsDelta(u, t(1)),
            "/users/{id}/contactfolders/{id}/contacts/delta",
        ),
        ["contacts"] => (Contacts(u), "/users/{id}/contacts"),
        ["contacts", _] => (Contact(u, t(1)), "/users/{id}/contacts/{id}"),
        ["calendars"] => (Calendars(u), "/users/{id}/calendars"),
        ["calendars", _] => (Calendar(u, t(1)), "/users/{id}/calendars/{id}"),
        ["calendars", _, "events"] => {
            (CalendarEvents(u, t(1)), "/users/{id}/calendars/{id}/events")
        }
        ["calendarview", "delta"] => (CalendarViewDelta(u), "/users/{id}/calendarview/delta"),
        ["events", _] => (Event(u, t(1)), "/users/{id}/events/{id}"),
        _ => {
            // Report the first segment that does not fit.
            let bad = first_unknown(r);
            return Err(GraphError::segment_not_found(&bad));
        }
    };
    no_addr(addr, (parsed.0, parsed.1.to_string()))
}

fn first_unknown(r: &[Seg]) -> String {
    const KNOWN: &[&str] = &[
        "mailfolders",
        "childfolders",
        "messages",
        "delta",
        "$value",
        "attachments",
        "createuploadsession",
        "mailboxsettings",
        "contactfolders",
        "contacts",
        "calendars",
        "events",
        "calendarview",
    ];
    r.iter()
        .enumerate()
        .find(|(i, s)| i % 2 == 0 && !KNOWN.contains(&s.lower.as_str()))
        .or_else(|| r.last().map(|s| (0, s)))
        .map(|(_, s)| s.text.clone())
        .unwrap_or_default()
}

fn no_addr(
    addr: Option<(String, &str)>,
    ok: (Route, String),
) -> Result<(Route, String), GraphError> {
    match addr {
        Some((path, _)) => Err(GraphError::segment_not_found(&format!(":{path}:"))),
        None => Ok(ok),
    }
}

fn drive_route(
    drive: DriveSel,
    rest: &[Seg],
    addr: Option<(String, &str)>,
    delta_arg: Option<String>,
) -> Result<(Route, String), GraphError> {
    let names: Vec<&str> = rest.iter().map(|s| s.lower.as_str()).collect();
    let (base, tail): (Option<String>, Vec<Seg>) = match names.as_slice() {
        [] => return no_addr(addr, (Route::Drive(drive), "/drives/{id}".into())),
        ["root", ..] => (
            None,
            rest[1..].iter().map(|s| seg(s.text.clone())).collect(),
        ),
        ["items", _, ..] => (
            Some(rest[1].text.clone()),
            rest[2..].iter().map(|s| seg(s.text.clone())).collect(),
        ),
        _ => return Err(GraphError::segment_not_found(&rest[0].text)),
    };
    let (path, tail) = match addr {
        Some((path, suffix)) => {
            if !tail.is_empty() {
                return Err(GraphError::segment_not_found(&tail[0].text));
            }
            (Some(path), split_segments(suffix).0)
        }
        None => (None, tail),
    };
    let path = path.filter(|p| !p.is_empty());
    let is_root = base.is_none() && path.is_none();
    let item_prefix = if path.is_some() {
        "/drives/{id}/items/{id}:/{id}:"
    } else {
        "/drives/{id}/items/{id}"
    };
    let a = ItemAddr { base, path };
    let tail_names: Vec<&str> = tail.iter().map(|s| s.lower.as_str()).collect();
    let (route, template) = match tail_names.as_slice() {
        [] if is_root => (Route::Item(drive, a), "/drives/{id}/root".to_string()),
        [] => (Route::Item(drive, a), item_prefix.to_string()),
        ["children"] => (Route::Children(drive, a), format!("{item_prefix}/children")),
        ["content"] => (Route::Content(drive, a), format!("{item_prefix}/content")),
        ["createuploadsession"] => (
            Route::CreateUploadSession(drive, a),
            format!("{item_prefix}/createuploadsession"),
        ),
        ["delta"] if is_root => (
            Route::RootDelta(drive, delta_arg),
            "/drives/{id}/root/delta".to_string(),
        ),
        _ => return Err(GraphError::segment_not_found(&tail[0].text)),
    };
    Ok((route, template))
}

pub(crate) fn unauthorized(ctx: &Ctx, why: TokenRejection) -> Response {
    let mut r = GraphError::new(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        why.message(),
    )
    .into_response(ctx);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ),
    );
    r
}

/// The 403 each workload returns when the token lacks a permission.
pub(crate) fn forbidden(workload: Workload, has_roles: bool) -> GraphError {
    match workload {
        Workload::Directory => GraphError::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        Workload::Files if !has_roles => GraphError::new(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "Either scp or roles claim need to be present in the token.",
        ),
        Workload::Files => GraphError::new(StatusCode::FORBIDDEN, "accessDenied", "Access denied"),
        Workload::Exchange | Workload::Other => GraphError::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
    }
}

/// The claims of the request's Graph access token, or why it is refused.
pub(crate) fn verify_graph_token(sim: &Sim, headers: &HeaderMap) -> Result<Claims, TokenRejection> {
    match token::bearer(headers) {
        None => Err(TokenRejection::Missing),
        Some(t) => sim.keys.verify_with_clock_offset(
            t,
            Some(GRAPH_AUDIENCE),
            sim.clock_offset_secs
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    }
}

/// Every `/v1.0/…` request.
pub(crate) async fn handle(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let claims = match verify_graph_token(&sim, &parts.headers) {
        Ok(c) => c,
        Err(why) => return unauthorized(&ctx, why),
    };
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => {
            return GraphError::bad_request("The request body could not be read.")
                .into_response(&ctx)
        }
    };
    let path = parts.uri.path().to_string();
    let rel = path.strip_prefix("/v1.0").unwrap_or(&path).to_string();
    let call = Call {
        sim: &sim,
        claims: &claims,
        method: parts.method.clone(),
        path,
        query: wire::parse_query(parts.uri.query()),
        headers: parts.headers,
        body,
    };
    let mut resp = match dispatch(&call, &rel).await {
        Ok(r) => r,
        Err(e) => e.into_response(&ctx),
    };
    resp.extensions_mut().insert(AppId(claims.appid.clone()));
    resp
}

async fn dispatch(call: &Call<'_>, rel: &str) -> GResult {
    let (route, template) = parse_route(rel)?;
    let method = if call.method == Method::HEAD {
        "GET"
    } else {
        call.method.as_str()
    };
    if !route.methods().contains(&method) {
        return Err(GraphError::method_not_allowed());
    }
    match call
        .sim
        .perms
        .check(method, &template, call.claims.roles.as_deref())
    {
        Decision::Allowed => {}
        Decision::Denied(w) => return Err(forbidden(w, call.claims.roles.is_some())),
        Decision::NoRule => return Err(forbidden(Workload::Other, call.claims.roles.is_some())),
    }
    // Graph caps a request body at 4 MB (drive content PUTs excepted: up to 250 MB).
    if matches!(method, "POST" | "PATCH")
        && call.body.len() > crate::attachments::MAX_REQUEST_BODY
        && !matches!(route, Route::Content(..))
    {
        return Err(crate::attachments::too_large(call.body.len()));
    }
    use Route::*;
    match (method, route) {
        ("GET", Users) => users::list(call),
        ("GET", User(u)) => users::get(call, &u),
        ("GET", MailFolders(u)) => mail::list_folders(call, &u, None),
        ("POST", MailFolders(u)) => mail::create_folder(call, &u, None),
        ("GET", MailFolder(u, f)) => mail::get_folder(call, &u, &f),
        ("GET", ChildFolders(u, f)) => mail::list_folders(call, &u, Some(&f)),
        ("POST", ChildFolders(u, f)) => mail::create_folder(call, &u, Some(&f)),
        ("GET", FolderMessages(u, f)) => mail::list_messages(call, &u, &f),
        ("POST", FolderMessages(u, f)) => mail::create_message(call, &u, &f),
        ("GET", MessagesDelta(u, f)) => mail::delta(call, &u, &f),
        ("GET", Message(u, m)) => mail::get_message(call, &u, &m),
        ("GET", MessageValue(u, m)) => mail::get_mime(call, &u, &m).await,
        ("POST", AttachmentSession(u, m)) => crate::attachments::create_session(call, &u, &m),
        ("GET", MailboxSettings(u)) => mail::mailbox_settings(call, &u),
        ("GET", ContactFolders(u)) => contacts::list_folders(call, &u),
        ("POST", ContactFolders(u)) => contacts::create_folder(call, &u),
        ("GET", ContactFolder(u, f)) => contacts::get_folder(call, &u, &f),
        ("GET", FolderContacts(u, f)) => contacts::list(call, &u, Some(&f)),
        ("POST", FolderContacts(u, f)) => contacts::create(call, &u, &f),
        ("GET", ContactsDelta(u, f)) => contacts::delta(call, &u, &f),
        ("GET", Contacts(u)) => contacts::list(call, &u, None),
        ("GET", Contact(u, c)) => contacts::get(call, &u, &c),
        ("GET", Calendars(u)) => calendar::list_calendars(call, &u),
        ("POST", Calendars(u)) => calendar::create_calendar(call, &u),
        ("GET", Calendar(u, c)) => calendar::get_calendar(call, &u, &c),
        ("GET", CalendarEvents(u, c)) => calendar::list_events(call, &u, &c),
        ("POST", CalendarEvents(u, c)) => calendar::create_event(call, &u, &c),
        ("GET", CalendarViewDelta(u)) => calendar::view_delta(call, &u),
        ("GET", Event(u, e)) => calendar::get_event(call, &u, &e),
        ("GET", Drive(d)) => drive::get_drive(call, &d),
        ("GET", RootDelta(d, t)) => drive::delta(call, &d, t.as_deref()),
        ("GET", Item(d, a)) => drive::get_item(call, &d, &a),
        ("PATCH", Item(d, a)) => drive::update_item(call, &d, &a),
        ("DELETE", Item(d, a)) => drive::delete_item(call, &d, &a),
        ("GET", Children(d, a)) => drive::list_children(call, &d, &a),
        ("POST", Children(d, a)) => drive::create_child(call, &d, &a),
        ("GET", Content(d, a)) => drive::get_content(call, &d, &a),
        ("PUT", Content(d, a)) => drive::put_content(call, &d, &a).await,
        ("POST", CreateUploadSession(d, a)) => drive::create_upload_session(call, &d, &a),
        _ => Err(GraphError::method_not_allowed()),
    }
}

/// Anything outside the served paths.
pub(crate) async fn not_found(Extension(ctx): Extension<Ctx>) -> Response {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "UnknownError",
        "No HTTP resource was found that matches the request URI.",
    )
    .into_response(&ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permissions::PermissionTable;

    fn tpl(p: &str) -> String {
        parse_route(p)
            .map(|(_, t)| t)
            .unwrap_or_else(|e| format!("ERR {}", e.message))
    }

    #[test]
    fn templates() {
        assert_eq!(tpl("/users"), "/users");
        assert_eq!(
            tpl("/users/a@b.com/mailFolders('inbox')/messages/delta()"),
            "/users/{id}/mailfolders/{id}/messages/delta"
        );
        assert_eq!(
            tpl("/users/x/mailFolders/AQMk%3D/messages/microsoft.graph.delta"),
            "/users/{id}/mailfolders/{id}/messages/delta"
        );
        assert_eq!(
            tpl("/users/x/messages/AAMk=/$value"),
            "/users/{id}/messages/{id}/$value"
        );
        assert_eq!(
            tpl("/drives/b!x/root:/a/b%20c.txt:/content"),
            "/drives/{id}/items/{id}:/{id}:/content"
        );
        assert_eq!(
            tpl("/drives/b!x/items/01X:/f.bin:/createUploadSession"),
            "/drives/{id}/items/{id}:/{id}:/createuploadsession"
        );
        assert_eq!(tpl("/drives/b!x/root"), "/drives/{id}/root");
        assert_eq!(
            tpl("/drives/b!x/root/children"),
            "/drives/{id}/items/{id}/children"
        );
        assert_eq!(tpl("/users/x/drive/root/delta"), "/drives/{id}/root/delta");
        assert_eq!(tpl("/users/x/drive"), "/users/{id}/drive");
        assert!(tpl("/users/x/bogus").contains("'bogus'"));
        assert!(tpl("/me/messages").contains("delegated"));
        match parse_route("/drives/d/root/delta(token='abc')") {
            Ok((Route::RootDelta(_, Some(t)), _)) => assert_eq!(t, "abc"),
            other => panic!("{other:?}"),
        }
        match parse_route("/drives/d/root:/a/b.txt") {
            Ok((Route::Item(_, a), t)) => {
                assert_eq!(a.path.as_deref(), Some("a/b.txt"));
                assert_eq!(t, "/drives/{id}/items/{id}:/{id}:");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Every route the simulator serves has permission data (after overrides), so none is
    /// refused for lack of a rule.
    #[test]
    fn every_served_endpoint_has_a_rule() {
        let perms = PermissionTable::load().unwrap();
        let cases = [
            "/users",
            "/users/u",
            "/users/u/mailFolders",
            "/users/u/mailFolders/f",
            "/users/u/mailFolders/f/childFolders",
            "/users/u/mailFolders/f/messages",
            "/users/u/mailFolders/f/messages/delta",
            "/users/u/messages/m",
            "/users/u/messages/m/$value",
            "/users/u/messages/m/attachments/createUploadSession",
            "/users/u/mailboxSettings",
            "/users/u/contactFolders",
            "/users/u/contactFolders/f",
            "/users/u/contactFolders/f/contacts",
            "/users/u/contactFolders/f/contacts/delta",
            "/users/u/contacts",
            "/users/u/contacts/c",
            "/users/u/calendars",
            "/users/u/calendars/c",
            "/users/u/calendars/c/events",
            "/users/u/calendarView/delta",
            "/users/u/events/e",
            "/users/u/drive",
            "/drives/d",
            "/drives/d/root",
            "/drives/d/root/delta",
            "/drives/d/items/i",
            "/drives/d/items/i/children",
            "/drives/d/items/i/content",
            "/drives/d/items/i/createUploadSession",
            "/drives/d/root:/a/b:/content",
            "/drives/d/root:/a/b:/createUploadSession",
            "/drives/d/root:/a/b:",
            "/drives/d/root:/a:/children",
        ];
        for p in cases {
            let (route, t) = parse_route(p).unwrap();
            for m in route.methods() {
                assert!(
                    perms.rule(m, &t).is_some(),
                    "{m} {t} has no permission rule"
                );
            }
        }
    }
}
