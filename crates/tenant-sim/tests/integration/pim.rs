//! Users, contacts and calendars.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn users_list_pages_and_get_by_upn_or_id() {
    let env = start().await;
    let t = env.token(FULL).await;
    let p1 = env.get_json(&t, &env.graph("/users?$top=1")).await;
    assert_eq!(p1["value"][0]["userPrincipalName"], ADELE);
    assert_eq!(p1["value"][0]["displayName"], "Adele Vance");
    assert_eq!(p1["value"][0]["jobTitle"], "Retail Manager");
    let next = p1["@odata.nextLink"].as_str().unwrap();
    assert!(next.contains("$skiptoken="), "{next}");
    let p2 = env.get_json(&t, next).await;
    assert_eq!(p2["value"][0]["userPrincipalName"], "bob@contoso.test");
    assert_eq!(p2["value"][0]["mail"], "bob@contoso.test");
    assert!(p2.get("@odata.nextLink").is_none());
    let id = p1["value"][0]["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).map(|_| ()), Ok(()));
    let by_id = env.get_json(&t, &env.graph(&format!("/users/{id}"))).await;
    assert_eq!(by_id["userPrincipalName"], ADELE);
    let r = env.get(&t, &env.graph("/users/nobody@contoso.test")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        code(&r.json::<Value>().await.unwrap()),
        "Request_ResourceNotFound"
    );
    let r = env.get(&t, &env.graph("/users?$top=1000")).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn contacts_are_derived_from_mail_and_follow_delta() {
    let env = start().await;
    let t = env.token(FULL).await;
    // The default Contacts folder is not in the contactFolders list (Graph lists its subfolders).
    let folders = env
        .get_json(&t, &env.graph(&format!("/users/{ADELE}/contactFolders")))
        .await;
    assert_eq!(folders["value"], json!([]));
    let contacts = env
        .get_json(&t, &env.graph(&format!("/users/{ADELE}/contacts?$top=50")))
        .await;
    let list = contacts["value"].as_array().unwrap();
    let mut addrs: Vec<&str> = list
        .iter()
        .map(|c| c["emailAddresses"][0]["address"].as_str().unwrap())
        .collect();
    addrs.sort();
    // From/To correspondents of all seeded messages, without Adele herself.
    assert_eq!(
        addrs,
        [
            "dana@fabrikam.test",
            "pm@fabrikam.test",
            "sender0@fabrikam.test",
            "sender1@fabrikam.test",
            "sender2@fabrikam.test",
            "x@fabrikam.test"
        ]
    );
    let default_folder = list[0]["parentFolderId"].as_str().unwrap().to_string();
    let folder = env
        .get_json(
            &t,
            &env.graph(&format!("/users/{ADELE}/contactFolders/{default_folder}")),
        )
        .await;
    assert_eq!(folder["displayName"], "Contacts");

    let delta_url = env.graph(&format!(
        "/users/{ADELE}/contactFolders/{default_folder}/contacts/delta"
    ));
    let first = env.get_json(&t, &delta_url).await;
    assert_eq!(first["value"].as_array().unwrap().len(), 6);
    assert_eq!(first["value"][0]["@odata.type"], "#microsoft.graph.contact");
    let delta_link = first["@odata.deltaLink"].as_str().unwrap().to_string();

    let (status, created) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/contactFolders/{default_folder}/contacts")),
            &json!({"givenName": "Pavel", "surname": "Bansky", "displayName": "Pavel Bansky", "emailAddresses": [{"address": "pavelb@fabrikam.test", "name": "Pavel Bansky"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["parentFolderId"], default_folder.as_str());
    let changes = env.get_json(&t, &delta_link).await;
    assert_eq!(changes["value"].as_array().unwrap().len(), 1);
    assert_eq!(changes["value"][0]["displayName"], "Pavel Bansky");

    let url = env.graph(&format!("/users/{ADELE}/contactFolders"));
    let (status, f) = env
        .send_json(&t, Method::POST, &url, &json!({"displayName": "Restored"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(f["parentFolderId"], default_folder.as_str());
    let (status, dup) = env
        .send_json(&t, Method::POST, &url, &json!({"displayName": "Restored"}))
        .await;
    assert_eq!((status, code(&dup)), (409, "ErrorFolderExists"));
    let folders = env.get_json(&t, &url).await;
    assert_eq!(folders["value"][0]["displayName"], "Restored");
}

#[tokio::test]
async fn calendars_events_and_calendar_view_delta() {
    let env = start().await;
    let t = env.token(FULL).await;
    let cals = env
        .get_json(&t, &env.graph(&format!("/users/{ADELE}/calendars")))
        .await;
    assert_eq!(cals["value"][0]["name"], "Calendar");
    assert_eq!(cals["value"][0]["isDefaultCalendar"], true);

    let view = env.graph(&format!("/users/{ADELE}/calendarView/delta"));
    let r = env.get(&t, &view).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        code(&r.json::<Value>().await.unwrap()),
        "ErrorInvalidParameter"
    );
    // Only the January event falls in the window.
    let page = env
        .get_json(
            &t,
            &format!("{view}?startDateTime=2024-01-01T00:00:00Z&endDateTime=2024-02-01T00:00:00Z"),
        )
        .await;
    let v = page["value"].as_array().unwrap();
    assert_eq!(v.len(), 1, "{page}");
    assert_eq!(v[0]["subject"], "Planning");
    assert_eq!(v[0]["iCalUId"], "ev1@corpus");
    assert_eq!(
        v[0]["start"],
        json!({"dateTime": "2024-01-10T10:00:00.0000000", "timeZone": "UTC"})
    );
    let delta_link = page["@odata.deltaLink"].as_str().unwrap().to_string();

    // An event created in the default calendar inside the window shows up in the next round;
    // one in another calendar does not.
    let default_id = cals["value"][0]["id"].as_str().unwrap();
    let (status, ev) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/calendars/{default_id}/events")),
            &json!({"subject": "Restored", "start": {"dateTime": "2024-01-20T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2024-01-20T10:00:00", "timeZone": "UTC"}}),
        )
        .await;
    assert_eq!(status, 201, "{ev}");
    let (status, cal) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/calendars")),
            &json!({"name": "Restore target"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/calendars/{}/events", cal["id"].as_str().unwrap())),
            &json!({"subject": "Elsewhere", "start": {"dateTime": "2024-01-21T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2024-01-21T10:00:00", "timeZone": "UTC"}}),
        )
        .await;
    assert_eq!(status, 201);
    let changes = env.get_json(&t, &delta_link).await;
    let v = changes["value"].as_array().unwrap();
    assert_eq!(v.len(), 1, "{changes}");
    assert_eq!(v[0]["id"], ev["id"]);
    let (status, _) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/calendars")),
            &json!({"name": "restore TARGET"}),
        )
        .await;
    assert_eq!(status, 409);
}
