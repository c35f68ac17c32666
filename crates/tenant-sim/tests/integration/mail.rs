//! Mail folders, message delta (paging, Prefer re-sent or not, changes and removals), MIME.

use std::collections::HashSet;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

async fn delta_page(
    env: &Env,
    token: &str,
    url: &str,
    max_page: Option<usize>,
) -> (Value, Option<String>) {
    let mut req = env.http.get(url).bearer_auth(token);
    if let Some(n) = max_page {
        req = req.header("Prefer", format!("odata.maxpagesize={n}"));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let applied = r
        .headers()
        .get("preference-applied")
        .map(|v| v.to_str().unwrap().to_string());
    (r.json().await.unwrap(), applied)
}

fn ids(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn mail_folders_list_get_create() {
    let env = start().await;
    let t = env.token(FULL).await;
    let uid = env.user_id(&t, ADELE).await;
    // Top-level folders, 4 per page, following nextLinks ($skip).
    let mut url = env.graph(&format!("/users/{uid}/mailFolders?$top=4"));
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = env.get_json(&t, &url).await;
        pages += 1;
        names.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["displayName"].as_str().unwrap().to_string()),
        );
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(next.contains("$skip="), "{next}");
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        [
            "Archive",
            "Conversation History",
            "Custom",
            "Deleted Items",
            "Drafts",
            "Inbox",
            "Junk Email",
            "Outbox",
            "Sent Items"
        ]
    );
    // Well-known name addressing and counts.
    let inbox = env
        .get_json(
            &t,
            &env.graph(&format!("/users/{ADELE}/mailFolders('Inbox')")),
        )
        .await;
    assert_eq!(inbox["displayName"], "Inbox");
    assert_eq!(inbox["totalItemCount"], INBOX_COUNT);
    assert_eq!(inbox["childFolderCount"], 1);
    assert_eq!(inbox["isHidden"], false);
    let inbox_id = inbox["id"].as_str().unwrap();
    let children = env
        .get_json(
            &t,
            &env.graph(&format!(
                "/users/{ADELE}/mailFolders/{inbox_id}/childFolders"
            )),
        )
        .await;
    assert_eq!(children["value"][0]["displayName"], "Projects");
    assert_eq!(children["value"][0]["parentFolderId"], inbox_id);
    assert_eq!(children["value"][0]["totalItemCount"], 1);

    // Restore writes: a child folder, then the same name again.
    let url = env.graph(&format!("/users/{ADELE}/mailFolders/inbox/childFolders"));
    let (status, created) = env
        .send_json(&t, Method::POST, &url, &json!({"displayName": "Restored"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["parentFolderId"], inbox_id);
    assert_eq!(created["totalItemCount"], 0);
    let (status, dup) = env
        .send_json(&t, Method::POST, &url, &json!({"displayName": "restored"}))
        .await;
    assert_eq!((status, code(&dup)), (409, "ErrorFolderExists"));
    let (status, top) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/mailFolders")),
            &json!({"displayName": "Top"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(top["displayName"], "Top");
}

#[tokio::test]
async fn message_delta_pages_honour_prefer_per_request_then_report_changes() {
    let env = start().await;
    let t = env.token(MAIL_READ).await;
    let first_url = env.graph(&format!("/users/{ADELE}/mailFolders/inbox/messages/delta"));

    // Page 1 with Prefer: 4 items. Page 2 without it: Graph's default 10. Page 3 with 20: rest.
    let (p1, applied) = delta_page(&env, &t, &first_url, Some(4)).await;
    assert_eq!(applied.as_deref(), Some("odata.maxpagesize=4"));
    assert_eq!(ids(&p1).len(), 4);
    let next = p1["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(next.contains("/messages/delta?$skiptoken="), "{next}");
    assert!(p1.get("@odata.deltaLink").is_none());
    let (p2, applied) = delta_page(&env, &t, &next, None).await;
    assert_eq!(applied, None);
    assert_eq!(ids(&p2).len(), 10);
    let (p3, _) = delta_page(&env, &t, p2["@odata.nextLink"].as_str().unwrap(), Some(20)).await;
    assert_eq!(ids(&p3).len(), INBOX_COUNT - 14);
    let delta_link = p3["@odata.deltaLink"].as_str().unwrap().to_string();
    assert!(
        delta_link.contains("/messages/delta?$deltatoken="),
        "{delta_link}"
    );
    let all: Vec<String> = [ids(&p1), ids(&p2), ids(&p3)].concat();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), INBOX_COUNT);
    let m = &p1["value"][0];
    assert_eq!(m["@odata.type"], "#microsoft.graph.message");
    for key in [
        "changeKey",
        "receivedDateTime",
        "internetMessageId",
        "parentFolderId",
        "conversationId",
        "from",
        "toRecipients",
        "isRead",
        "isDraft",
        "hasAttachments",
        "bodyPreview",
    ] {
        assert!(m.get(key).is_some(), "{key} missing in {m}");
    }
    assert_eq!(m["toRecipients"][0]["emailAddress"]["address"], ADELE);

    // Nothing changed: the deltaLink returns nothing.
    let (same, _) = delta_page(&env, &t, &delta_link, None).await;
    assert_eq!(ids(&same).len(), 0);
    let delta_link = same["@odata.deltaLink"].as_str().unwrap().to_string();

    // Mutations: a new message, one moved to Archive, one deleted.
    let admin = |p: String| env.url(&format!("/_sim/admin/users/{ADELE}{p}"));
    let r = env
        .http
        .post(admin("/messages?folder=Inbox".into()))
        .body(eml(500, "new@fabrikam.test", ADELE))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let new_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let moved = all[0].clone();
    let deleted = all[1].clone();
    let r = env
        .http
        .post(admin(format!("/messages/{moved}/move?folder=Archive")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let moved_new_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(moved_new_id, moved);
    let r = env
        .http
        .delete(admin(format!("/messages/{deleted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let (changes, _) = delta_page(&env, &t, &delta_link, None).await;
    let value = changes["value"].as_array().unwrap();
    assert_eq!(value.len(), 3, "{changes}");
    let removed: HashSet<&str> = value
        .iter()
        .filter(|v| v["@removed"]["reason"] == "deleted")
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, HashSet::from([moved.as_str(), deleted.as_str()]));
    let added: Vec<&Value> = value
        .iter()
        .filter(|v| v.get("@removed").is_none())
        .collect();
    assert_eq!(added[0]["id"], new_id.as_str());
    assert_eq!(added[0]["subject"], "Message 500");
    assert_eq!(added[0]["isRead"], false);

    // The moved message appears, under its new id, in the Archive's feed.
    let (archive, _) = delta_page(
        &env,
        &t,
        &env.graph(&format!(
            "/users/{ADELE}/mailFolders/archive/messages/delta"
        )),
        None,
    )
    .await;
    assert_eq!(ids(&archive), vec![moved_new_id.clone()]);
    // And the moved message's old id is gone.
    let r = env
        .get(&t, &env.graph(&format!("/users/{ADELE}/messages/{moved}")))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.json::<Value>().await.unwrap()), "ErrorItemNotFound");
}

#[tokio::test]
async fn garbage_or_foreign_delta_tokens_are_rejected() {
    let env = start().await;
    let t = env.token(MAIL_READ).await;
    let r = env
        .get(
            &t,
            &env.graph(&format!(
                "/users/{ADELE}/mailFolders/inbox/messages/delta?$deltatoken=garbage"
            )),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        code(&r.json::<Value>().await.unwrap()),
        "ErrorInvalidSyncStateData"
    );
    // A token of one folder is not valid for another.
    let (page, _) = delta_page(
        &env,
        &t,
        &env.graph(&format!(
            "/users/{ADELE}/mailFolders/sentitems/messages/delta"
        )),
        None,
    )
    .await;
    let token = page["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .split("$deltatoken=")
        .nth(1)
        .unwrap()
        .to_string();
    let r = env
        .get(
            &t,
            &env.graph(&format!(
                "/users/{ADELE}/mailFolders/inbox/messages/delta?$deltatoken={token}"
            )),
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn message_created_from_mime_round_trips_byte_for_byte() {
    let env = start().await;
    let t = env.token(FULL).await;
    // CRLF and bare LF, trailing spaces, a non-UTF-8 byte: all must survive.
    let mut mime = b"From: Restore <restore@contoso.test>\r\nTo: adele@contoso.test\r\nSubject: Restored \r\nDate: Tue, 2 Jan 2024 08:00:00 +0000\r\nMessage-ID: <restored@contoso.test>\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nLine one  \r\nbare\n".to_vec();
    mime.extend_from_slice(&[0xE9, b'\r', b'\n']);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&mime);
    let url = env.graph(&format!("/users/{ADELE}/mailFolders/Custom/messages"));
    // "Custom" is a display name, not an id or well-known name: Graph answers 404 for it.
    let r = env
        .http
        .post(&url)
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body(b64.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let folders = env
        .get_json(
            &t,
            &env.graph(&format!("/users/{ADELE}/mailFolders?$top=20")),
        )
        .await;
    let custom = folders["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["displayName"] == "Custom")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = env.graph(&format!("/users/{ADELE}/mailFolders/{custom}/messages"));
    let r = env
        .http
        .post(&url)
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body(b64)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["subject"], "Restored");
    assert_eq!(created["parentFolderId"], custom.as_str());
    assert_eq!(created["internetMessageId"], "<restored@contoso.test>");
    let id = created["id"].as_str().unwrap();
    let r = env
        .get(
            &t,
            &env.graph(&format!("/users/{ADELE}/messages/{id}/$value")),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.bytes().await.unwrap().to_vec(), mime);

    let r = env
        .http
        .post(&url)
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("@@not base64@@")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        code(&r.json::<Value>().await.unwrap()),
        "ErrorMimeContentInvalidBase64String"
    );
    let r = env
        .http
        .post(&url)
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        code(&r.json::<Value>().await.unwrap()),
        "ErrorMimeContentInvalid"
    );

    // The export sees the restored message with the exact size.
    let export = env.export(ADELE).await;
    let entry = export["mail"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap();
    assert_eq!(entry["folder"], "Custom");
    assert_eq!(entry["size"], mime.len());
    assert_eq!(entry["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn mailbox_settings_are_realistic() {
    let env = start().await;
    let t = env.token(FULL).await;
    let s = env
        .get_json(&t, &env.graph(&format!("/users/{ADELE}/mailboxSettings")))
        .await;
    assert_eq!(s["timeZone"], "Pacific Standard Time");
    assert_eq!(s["language"]["locale"], "en-US");
    assert_eq!(s["automaticRepliesSetting"]["status"], "disabled");
    assert_eq!(s["workingHours"]["daysOfWeek"].as_array().unwrap().len(), 5);
    // Mail.Read does not grant mailbox settings.
    let r = env
        .get(
            &env.token(MAIL_READ).await,
            &env.graph(&format!("/users/{ADELE}/mailboxSettings")),
        )
        .await;
    assert_eq!(r.status(), 403);
}
