//! Microsoft's published limits in the throttling model, beyond concurrency and request rate:
//! Outlook's upload budget per mailbox
//! (<https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits>) and the
//! OneDrive/SharePoint resource units per app per 24 hours
//! (<https://learn.microsoft.com/sharepoint/dev/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online>).

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

const BOB: &str = "bob@contoso.test";

async fn set_faults(env: &Env, body: Value) {
    let r = env
        .http
        .put(env.url("/_sim/admin/faults"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

async fn fault_report(env: &Env) -> Value {
    env.http
        .get(env.url("/_sim/admin/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A MIME message whose base64 request body is exactly `body_bytes` long (a multiple of 4).
fn mime_body(body_bytes: usize) -> String {
    let head = "From: a@contoso.test\r\nSubject: upload budget\r\n\r\n";
    let raw = body_bytes / 4 * 3;
    let text = format!("{head}{}", "x".repeat(raw - head.len()));
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    assert_eq!(b64.len(), body_bytes);
    b64
}

/// POSTs a message (MIME, base64) into `upn`'s Inbox; the response.
async fn post_message(env: &Env, token: &str, upn: &str, body: String) -> reqwest::Response {
    env.http
        .post(env.graph(&format!("/users/{upn}/mailFolders/inbox/messages")))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn expect_upload_429(r: reqwest::Response) -> u64 {
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "ApplicationThrottled");
    assert_eq!(
        body["error"]["message"],
        "Application is over its UploadSize limit."
    );
    wait
}

#[tokio::test]
async fn outlook_upload_bytes_per_mailbox_window_then_429_with_retry_after() {
    let env = start().await;
    let t = env.token(FULL).await;
    set_faults(
        &env,
        json!({"throttling": {"outlook": {"upload_bytes_per_window": 10_000, "upload_window_secs": 300}}}),
    )
    .await;
    // 4,000 + 4,000 bytes fit in 10,000; 4,000 more do not.
    for _ in 0..2 {
        assert_eq!(
            post_message(&env, &t, ADELE, mime_body(4000))
                .await
                .status(),
            201
        );
    }
    let wait = expect_upload_429(post_message(&env, &t, ADELE, mime_body(4000)).await).await;
    assert!((295..=300).contains(&wait), "{wait}");
    // 2,000 still fit; reads do not count; another mailbox has its own budget.
    assert_eq!(
        post_message(&env, &t, ADELE, mime_body(2000))
            .await
            .status(),
        201
    );
    let folders = env.graph(&format!("/users/{ADELE}/mailFolders"));
    assert_eq!(env.get(&t, &folders).await.status(), 200);
    assert_eq!(
        post_message(&env, &t, BOB, mime_body(4000)).await.status(),
        201
    );

    // Attachment upload-session PUTs carry no token but count for the app that opened the
    // session: Bob's mailbox has 4,000 + the session request's bytes spent.
    let r = post_message(&env, &t, BOB, mime_body(400)).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let data = vec![7u8; 8000];
    let (status, session) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!(
                "/users/{BOB}/messages/{id}/attachments/createUploadSession"
            )),
            &json!({"AttachmentItem": {"attachmentType": "file", "name": "f.bin",
                "size": data.len()}}),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let url = session["uploadUrl"].as_str().unwrap().to_string();
    let put = |range: std::ops::Range<usize>| {
        env.http
            .put(&url)
            .header(
                "content-range",
                format!("bytes {}-{}/{}", range.start, range.end - 1, data.len()),
            )
            .body(data[range].to_vec())
            .send()
    };
    assert_eq!(put(0..4000).await.unwrap().status(), 200);
    expect_upload_429(put(4000..8000).await.unwrap()).await;
    let report = fault_report(&env).await;
    assert_eq!(report["throttled"]["outlook_upload"], 2, "{report}");

    // With the model off there is no upload budget.
    set_faults(&env, json!({})).await;
    assert_eq!(put(4000..8000).await.unwrap().status(), 201);
    for _ in 0..3 {
        assert_eq!(
            post_message(&env, &t, ADELE, mime_body(4000))
                .await
                .status(),
            201
        );
    }
}

#[tokio::test]
async fn outlook_upload_window_slides() {
    let env = start().await;
    let t = env.token(FULL).await;
    set_faults(
        &env,
        json!({"throttling": {"outlook": {"upload_bytes_per_window": 5000, "upload_window_secs": 1}}}),
    )
    .await;
    assert_eq!(
        post_message(&env, &t, ADELE, mime_body(4000))
            .await
            .status(),
        201
    );
    let wait = expect_upload_429(post_message(&env, &t, ADELE, mime_body(4000)).await).await;
    assert_eq!(wait, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        post_message(&env, &t, ADELE, mime_body(4000))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn sharepoint_daily_resource_units_then_429_until_units_leave_the_day_window() {
    let env = start().await;
    let t = env.token(FULL).await;
    // A day budget of 5 RU, far below the minute budget.
    set_faults(
        &env,
        json!({"throttling": {"onedrive": {"resource_units_per_minute": 1000, "resource_units_per_day": 5}}}),
    )
    .await;
    let children = env.graph(&format!("/users/{ADELE}/drive/root/children"));
    let item = env.graph(&format!("/users/{ADELE}/drive/root:/readme.md"));
    // 2 + 2 + 1 = 5 RU.
    assert_eq!(env.get(&t, &children).await.status(), 200);
    assert_eq!(env.get(&t, &children).await.status(), 200);
    assert_eq!(env.get(&t, &item).await.status(), 200);
    let r = env.get(&t, &item).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((86_390..=86_400).contains(&wait), "{wait}");
    assert!(
        !r.headers().contains_key("ratelimit-remaining"),
        "the RateLimit headers are the minute budget's"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "activityLimitReached");
    // Mail is another workload.
    let folders = env.graph(&format!("/users/{ADELE}/mailFolders"));
    assert_eq!(env.get(&t, &folders).await.status(), 200);
    let report = fault_report(&env).await;
    assert_eq!(report["throttled"]["onedrive_daily"], 1, "{report}");
    assert_eq!(report["throttled"]["onedrive"], 0, "{report}");
    let log = env.log().await;
    assert!(log.iter().any(|e| e["fault"] == "throttle_onedrive_daily"));

    // The window slides: with a 1-second "day", the units come back.
    set_faults(
        &env,
        json!({"throttling": {"onedrive": {"resource_units_per_day": 2, "day_window_secs": 1}}}),
    )
    .await;
    assert_eq!(env.get(&t, &children).await.status(), 200);
    let r = env.get(&t, &item).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(env.get(&t, &item).await.status(), 200);
}
