//! Directory users: `GET /users`, `GET /users/{id | userPrincipalName}` (user-list, user-get).

use base64::Engine as _;
use serde_json::{json, Value};

use super::Call;
use crate::tenant::User;
use crate::wire::{self, GResult, GraphError};

/// The user resource (default properties, as user_get.json).
pub(crate) fn user_json(u: &User) -> Value {
    let p = &u.profile;
    json!({
        "businessPhones": [],
        "displayName": p.display_name,
        "givenName": p.given_name,
        "jobTitle": p.job_title,
        "mail": p.mail,
        "mobilePhone": p.mobile_phone,
        "officeLocation": p.office_location,
        "preferredLanguage": p.preferred_language,
        "surname": p.surname,
        "userPrincipalName": u.upn,
        "id": u.id,
    })
}

fn encode_offset(n: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("users:{n}"))
}

fn decode_offset(t: &str) -> Option<usize> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    String::from_utf8(b)
        .ok()?
        .strip_prefix("users:")?
        .parse()
        .ok()
}

/// `GET /users`: pages of `$top` (default 100, 1–999) with `$skiptoken` nextLinks.
pub(super) fn list(call: &Call<'_>) -> GResult {
    let top = match call.q("$top") {
        None => 100,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=999).contains(&n) => n,
            _ => {
                return Err(GraphError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    format!(
                        "Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."
                    ),
                ))
            }
        },
    };
    let offset = match call.q("$skiptoken") {
        None => 0,
        Some(t) => decode_offset(t).ok_or_else(|| {
            GraphError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "Directory_ExpiredPageToken",
                "The specified page token value has expired and can no longer be included in your request.",
            )
        })?,
    };
    let state = call.sim.state();
    let mut users: Vec<&User> = state.users.iter().collect();
    users.sort_by_key(|u| u.upn.to_lowercase());
    let page: Vec<Value> = users
        .iter()
        .skip(offset)
        .take(top)
        .map(|u| {
            let mut v = user_json(u);
            wire::apply_select(&mut v, call.q("$select"));
            v
        })
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}/$metadata#users", call.sim.graph_base()),
        "value": page,
    });
    if offset + top < users.len() {
        body["@odata.nextLink"] = json!(call.link_with(&[
            ("$top", top.to_string()),
            ("$skiptoken", encode_offset(offset + top)),
        ]));
    }
    wire::ok_json(&body)
}

/// `GET /users/{id | userPrincipalName}`.
pub(super) fn get(call: &Call<'_>, key: &str) -> GResult {
    let state = call.sim.state();
    let idx = state
        .user_index(key)
        .ok_or_else(|| GraphError::directory_not_found(key))?;
    let mut v = user_json(&state.users[idx]);
    wire::apply_select(&mut v, call.q("$select"));
    v["@odata.context"] = json!(format!("{}/$metadata#users/$entity", call.sim.graph_base()));
    wire::ok_json(&v)
}
