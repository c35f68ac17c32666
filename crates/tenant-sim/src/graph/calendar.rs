//! Exchange calendars: calendars (user-list-calendars, user-post-calendars, calendar-get),
//! events (calendar-list-events, calendar-post-events, event-get) and the calendar view delta
//! of the default calendar (event-delta, delta-query-events).

use axum::http::StatusCode;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Map, Value};

use super::mail::{
    delta_page_size, delta_state, removed_json, user_index, with_preference_applied,
};
use super::Call;
use crate::delta::{self, Cursor};
use crate::ids;
use crate::tenant::{Calendar, Event, FolderConflict, User};
use crate::wire::{self, outlook_time, ts, GResult, GraphError};

const OWNED: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "@odata.etag",
    "@odata.context",
    "@odata.type",
    "start",
    "end",
];

fn calendar_json(user: &User, c: &Calendar) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "color": "auto",
        "hexColor": "",
        "isDefaultCalendar": c.is_default,
        "changeKey": ids::change_key(&c.id, c.version),
        "canShare": true,
        "canViewPrivateItems": true,
        "canEdit": true,
        "isRemovable": !c.is_default,
        "isTallyingResponses": true,
        "allowedOnlineMeetingProviders": ["teamsForBusiness"],
        "defaultOnlineMeetingProvider": "teamsForBusiness",
        "owner": {"name": user.profile.display_name, "address": user.profile.mail},
    })
}

pub(crate) fn event_json(e: &Event) -> Value {
    let ck = ids::change_key(&e.id, e.version);
    let mut m = Map::new();
    m.insert("@odata.etag".into(), json!(format!("W/\"{ck}\"")));
    m.insert("id".into(), json!(e.id));
    m.insert("createdDateTime".into(), json!(ts(e.created)));
    m.insert("lastModifiedDateTime".into(), json!(ts(e.modified)));
    m.insert("changeKey".into(), json!(ck));
    for (k, v) in &e.props {
        m.insert(k.clone(), v.clone());
    }
    m.insert(
        "start".into(),
        json!({"dateTime": outlook_time(e.start), "timeZone": "UTC"}),
    );
    m.insert(
        "end".into(),
        json!({"dateTime": outlook_time(e.end), "timeZone": "UTC"}),
    );
    Value::Object(m)
}

fn ctx_url(call: &Call<'_>, frag: &str) -> String {
    format!("{}/$metadata#{frag}", call.sim.graph_base())
}

fn calendar_or_404<'a>(user: &'a User, id: &str) -> Result<&'a Calendar, GraphError> {
    user.mailbox
        .calendar(id)
        .ok_or_else(GraphError::exchange_not_found)
}

/// `GET /users/{id}/calendars`.
pub(super) fn list_calendars(call: &Call<'_>, u: &str) -> GResult {
    let top = call.top(10, 1000)?;
    let skip: usize = call.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let cals = &user.mailbox.calendars;
    let value: Vec<Value> = cals
        .iter()
        .skip(skip)
        .take(top)
        .map(|c| calendar_json(user, c))
        .collect();
    let mut body = json!({
        "@odata.context": ctx_url(call, &format!("users('{}')/calendars", user.id)),
        "value": value
    });
    if skip + top < cals.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[("$skip", (skip + top).to_string())]));
    }
    wire::ok_json(&body)
}

/// `GET /users/{id}/calendars/{id}`.
pub(super) fn get_calendar(call: &Call<'_>, u: &str, c: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mut v = calendar_json(user, calendar_or_404(user, c)?);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/calendars/$entity", user.id)
    ));
    wire::ok_json(&v)
}

/// `POST /users/{id}/calendars` with `{name}`; 409 `ErrorFolderExists` on a duplicate name.
pub(super) fn create_calendar(call: &Call<'_>, u: &str) -> GResult {
    let body = call.json_body()?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidRequest",
                "The name property is required to create a calendar.",
            )
        })?
        .to_string();
    let mut state = call.sim.state();
    let ui = user_index(&state, u)?;
    let id = state.users[ui]
        .mailbox
        .create_calendar(&name)
        .map_err(|e| match e {
            FolderConflict::Exists => GraphError::new(
                StatusCode::CONFLICT,
                "ErrorFolderExists",
                "A folder with the specified name already exists.",
            ),
            FolderConflict::ParentNotFound => GraphError::exchange_not_found(),
        })?;
    let user = &state.users[ui];
    let mut v = calendar_json(user, calendar_or_404(user, &id)?);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/calendars/$entity", user.id)
    ));
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

/// `GET /users/{id}/calendars/{id}/events`: by start time, `$top` (default 10), `$skip`.
pub(super) fn list_events(call: &Call<'_>, u: &str, c: &str) -> GResult {
    let top = call.top(10, 1000)?;
    let skip: usize = call.q("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let cal = calendar_or_404(user, c)?;
    let mut events: Vec<&Event> = user
        .mailbox
        .events
        .values()
        .filter(|e| e.calendar_id == cal.id)
        .collect();
    events.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
    let value: Vec<Value> = events
        .iter()
        .skip(skip)
        .take(top)
        .map(|e| event_json(e))
        .collect();
    let mut body = json!({
        "@odata.context": ctx_url(call, &format!("users('{}')/calendars('{}')/events", user.id, cal.id)),
        "value": value
    });
    if skip + top < events.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[("$skip", (skip + top).to_string())]));
    }
    wire::ok_json(&body)
}

/// Reads an ISO 8601 date-time; zone-less values are UTC (the simulator has no zone database,
/// so `timeZone` names other than UTC are recorded but not applied).
pub(crate) fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let s = s.trim_end_matches('Z');
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn date_time_time_zone(body: &Map<String, Value>, key: &str) -> Option<(DateTime<Utc>, String)> {
    let v = body.get(key)?;
    let t = parse_instant(v.get("dateTime")?.as_str()?)?;
    let tz = v
        .get("timeZone")
        .and_then(Value::as_str)
        .unwrap_or("UTC")
        .to_string();
    Some((t, tz))
}

/// `POST /users/{id}/calendars/{id}/events`: stores the posted event; `start`/`end`
/// (`dateTimeTimeZone`) are required.
pub(super) fn create_event(call: &Call<'_>, u: &str, c: &str) -> GResult {
    let body = call.json_body()?;
    let (Some((start, start_tz)), Some((end, end_tz))) = (
        date_time_time_zone(&body, "start"),
        date_time_time_zone(&body, "end"),
    ) else {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The event must have a valid Start and End (dateTimeTimeZone).",
        ));
    };
    if end < start {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The event's End must not be before its Start.",
        ));
    }
    let mut props = body.clone();
    for k in OWNED {
        props.remove(*k);
    }
    props.entry("subject").or_insert(json!(""));
    props.entry("isAllDay").or_insert(json!(false));
    props.entry("type").or_insert(json!("singleInstance"));
    props
        .entry("originalStartTimeZone")
        .or_insert(json!(start_tz));
    props.entry("originalEndTimeZone").or_insert(json!(end_tz));
    let mut state = call.sim.state();
    let ui = user_index(&state, u)?;
    let mb = &mut state.users[ui].mailbox;
    let cal_id = mb
        .calendar(c)
        .ok_or_else(GraphError::exchange_not_found)?
        .id
        .clone();
    let id = mb.add_event(&cal_id, None, props, start, end, Utc::now());
    let user = &state.users[ui];
    let e = user
        .mailbox
        .events
        .get(&id)
        .ok_or_else(GraphError::exchange_not_found)?;
    let mut v = event_json(e);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/events/$entity", user.id)
    ));
    Ok(wire::json_response(StatusCode::CREATED, &v))
}

/// `GET /users/{id}/events/{id}`.
pub(super) fn get_event(call: &Call<'_>, u: &str, e: &str) -> GResult {
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let ev = user
        .mailbox
        .events
        .get(e)
        .ok_or_else(GraphError::exchange_not_found)?;
    let mut v = event_json(ev);
    v["@odata.context"] = json!(ctx_url(
        call,
        &format!("users('{}')/events/$entity", user.id)
    ));
    wire::ok_json(&v)
}

/// `GET /users/{id}/calendarView/delta?startDateTime=…&endDateTime=…`: events of the default
/// calendar overlapping the window; later rounds take the window from the token.
pub(super) fn view_delta(call: &Call<'_>, u: &str) -> GResult {
    let (size, applied) = delta_page_size(call, 10);
    let state = call.sim.state();
    let user = &state.users[user_index(&state, u)?];
    let mb = &user.mailbox;
    let cal = mb.default_calendar_id();
    let has_token = call.q("$skiptoken").is_some() || call.q("$deltatoken").is_some();
    let mut st = delta_state(call, "event", &cal, mb.seq)?;
    if !has_token {
        let (Some(s), Some(e)) = (call.q("startDateTime"), call.q("endDateTime")) else {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
            ));
        };
        st.window = Some((s.to_string(), e.to_string()));
    }
    let (ws, we) = st
        .window
        .as_ref()
        .and_then(|(s, e)| Some((parse_instant(s)?, parse_instant(e)?)))
        .ok_or_else(|| {
            GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidParameter",
                "The value of StartDateTime or EndDateTime is not a valid date-time.",
            )
        })?;
    let mut entries: Vec<(Cursor, Value)> = Vec::new();
    if st.base > 0 {
        for t in mb
            .event_tombstones
            .iter()
            .filter(|t| t.container_id == cal && t.seq > st.base)
        {
            entries.push((
                Cursor {
                    phase: 0,
                    seq: t.seq,
                    key: t.id.clone(),
                },
                removed_json("#microsoft.graph.event", &t.id),
            ));
        }
    }
    for e in mb
        .events
        .values()
        .filter(|e| e.calendar_id == cal && e.seq > st.base && e.start < we && e.end > ws)
    {
        let mut v = event_json(e);
        v["@odata.type"] = json!("#microsoft.graph.event");
        wire::apply_select(&mut v, call.q("$select"));
        entries.push((
            Cursor {
                phase: 1,
                seq: e.seq,
                key: e.id.clone(),
            },
            v,
        ));
    }
    let page = delta::page(entries, st.after.as_ref(), size);
    let link = format!(
        "{}/users/{}/calendarView/delta",
        call.sim.graph_base(),
        user.id
    );
    let mut body =
        json!({"@odata.context": ctx_url(call, "Collection(event)"), "value": page.items});
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
