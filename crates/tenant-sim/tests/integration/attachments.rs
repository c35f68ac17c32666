//! Outlook attachment upload sessions (attachment-createuploadsession) and Graph's 4 MB cap on
//! a single request body.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

const MIB: usize = 1024 * 1024;

async fn post_mime(env: &Env, token: &str, mime: &[u8]) -> (u16, Value) {
    let r = env
        .http
        .post(env.graph(&format!("/users/{ADELE}/mailFolders/inbox/messages")))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(base64::engine::general_purpose::STANDARD.encode(mime))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn put_range(
    env: &Env,
    url: &str,
    data: &[u8],
    start: usize,
    total: usize,
) -> reqwest::Response {
    env.http
        .put(url)
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("bytes {start}-{}/{total}", start + data.len() - 1),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn single_posts_over_4_mib_are_refused_and_sessions_attach_large_files_in_order() {
    let env = start().await;
    let t = env.token(FULL).await;
    let file: Vec<u8> = (0..5 * MIB + 123).map(|i| (i * 13 % 251) as u8).collect();

    // The whole message in one POST: 413, as Graph answers a body over 4 MB.
    let mut big = b"From: a@contoso.test\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\nContent-Type: application/octet-stream; name=\"f.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    big.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(&file)
            .as_bytes(),
    );
    big.extend_from_slice(b"\r\n--b1--\r\n");
    let (status, body) = post_mime(&env, &t, &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "RequestEntityTooLarge");

    // Without the attachment it fits; then the file goes through a session.
    let small = b"From: a@contoso.test\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1--\r\n";
    let (status, msg) = post_mime(&env, &t, small).await;
    assert_eq!(status, 201, "{msg}");
    let id = msg["id"].as_str().unwrap().to_string();
    let session_url = env.graph(&format!(
        "/users/{ADELE}/messages/{id}/attachments/createUploadSession"
    ));
    let item = json!({"AttachmentItem": {"attachmentType": "file", "name": "f.bin",
        "size": file.len(), "contentType": "application/octet-stream"}});

    // Mail.Read cannot create one.
    let reader = env.token(MAIL_READ).await;
    let (status, _) = env
        .send_json(&reader, Method::POST, &session_url, &item)
        .await;
    assert_eq!(status, 403);

    let (status, session) = env.send_json(&t, Method::POST, &session_url, &item).await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["nextExpectedRanges"], json!(["0-"]));
    let url = session["uploadUrl"].as_str().unwrap().to_string();
    let total = file.len();

    // More than 4 MiB in one range: refused.
    let r = put_range(&env, &url, &file[..4 * MIB + 1], 0, total).await;
    assert_eq!(r.status(), 413);
    // First range (no Authorization header needed): 200 with the next offset.
    let r = put_range(&env, &url, &file[..4 * MIB], 0, total).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["nextExpectedRanges"], json!([(4 * MIB).to_string()]));
    // The same range again overlaps: 416; a gap: 409.
    let r = put_range(&env, &url, &file[..MIB], 0, total).await;
    assert_eq!(r.status(), 416);
    let r = put_range(&env, &url, &file[4 * MIB + 10..], 4 * MIB + 10, total).await;
    assert_eq!(r.status(), 409);
    // The status says where to go on.
    let v: Value = env
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["nextExpectedRanges"], json!([(4 * MIB).to_string()]));
    // The last range: 201, empty body, Location of the attachment.
    let r = put_range(&env, &url, &file[4 * MIB..], 4 * MIB, total).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains(&format!("messages('{id}')/attachments('")));
    assert!(r.bytes().await.unwrap().is_empty());
    // The session is gone.
    assert_eq!(env.http.get(&url).send().await.unwrap().status(), 404);

    // The message's MIME now carries the file; the export shows it.
    let mime = env
        .get(
            &t,
            &env.graph(&format!("/users/{ADELE}/messages/{id}/$value")),
        )
        .await
        .bytes()
        .await
        .unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(&mime[..])
        .unwrap();
    let att: Vec<_> = parsed.attachments().collect();
    assert_eq!(att.len(), 1);
    assert_eq!(att[0].contents(), &file[..]);
    let export = env.export(ADELE).await;
    let m = export["mail"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id.as_str())
        .unwrap();
    assert_eq!(m["attachments"][0]["name"], "f.bin");
    assert_eq!(m["attachments"][0]["size"], file.len());
}

#[tokio::test]
async fn session_requests_with_bad_items_are_refused_with_the_reason() {
    let env = start().await;
    let t = env.token(FULL).await;
    let (_, msg) = post_mime(
        &env,
        &t,
        b"From: a@contoso.test\r\nSubject: s\r\n\r\nbody\r\n",
    )
    .await;
    let id = msg["id"].as_str().unwrap();
    let url = env.graph(&format!(
        "/users/{ADELE}/messages/{id}/attachments/createUploadSession"
    ));
    for (item, status) in [
        (json!({}), 400),
        (
            json!({"AttachmentItem": {"attachmentType": "file", "size": 10}}),
            400,
        ),
        (
            json!({"AttachmentItem": {"attachmentType": "item", "name": "x", "size": 10}}),
            400,
        ),
        (
            json!({"AttachmentItem": {"attachmentType": "file", "name": "x", "size": 151 * MIB}}),
            413,
        ),
    ] {
        let (got, body) = env.send_json(&t, Method::POST, &url, &item).await;
        assert_eq!(got, status, "{item} -> {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let missing = env.graph(&format!(
        "/users/{ADELE}/messages/AAMknope/attachments/createUploadSession"
    ));
    let ok_item = json!({"AttachmentItem": {"attachmentType": "file", "name": "x", "size": 10}});
    let (got, _) = env.send_json(&t, Method::POST, &missing, &ok_item).await;
    assert_eq!(got, 404);
}
