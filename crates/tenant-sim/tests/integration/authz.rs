//! Authentication (401), per-endpoint authorisation (403 per workload) and the overrides.

use reqwest::Method;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn graph_requires_a_valid_graph_token() {
    let env = start().await;
    let url = env.graph("/users");
    let r = env
        .http
        .get(&url)
        .header("client-request-id", "c0ffee00-0000-4000-8000-000000000001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["client-request-id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    let request_id = r.headers()["request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "InvalidAuthenticationToken");
    assert_eq!(v["error"]["message"], "Access token is empty.");
    assert_eq!(v["error"]["innerError"]["request-id"], request_id);
    assert_eq!(
        v["error"]["innerError"]["client-request-id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );

    // A token for another audience, and a forged one, are refused.
    let outlook = env
        .token_for(FULL, "https://outlook.office365.com/.default")
        .await;
    let r = env.get(&outlook, &url).await;
    assert_eq!(r.status(), 401);
    let good = env.token(FULL).await;
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(env.get(&forged, &url).await.status(), 401);
    assert_eq!(env.get(&good, &url).await.status(), 200);
}

#[tokio::test]
async fn each_workload_returns_its_own_403() {
    let env = start().await;
    let mail = env.token(MAIL_READ).await;
    let files = env.token(FILES_READ).await;
    let none = env.token(NO_CONSENT).await;

    // Directory.
    let r = env.get(&mail, &env.graph("/users")).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "Authorization_RequestDenied");
    assert_eq!(
        v["error"]["message"],
        "Insufficient privileges to complete the operation."
    );

    // Exchange.
    let delta = env.graph(&format!("/users/{ADELE}/mailFolders/inbox/messages/delta"));
    let r = env.get(&files, &delta).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "ErrorAccessDenied");
    assert_eq!(
        v["error"]["message"],
        "Access is denied. Check credentials and try again."
    );
    assert_eq!(env.get(&mail, &delta).await.status(), 200);

    // OneDrive: with roles, and without any roles claim.
    let drive = env.graph(&format!("/users/{ADELE}/drive"));
    let r = env.get(&mail, &drive).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "accessDenied");
    assert_eq!(v["error"]["message"], "Access denied");
    let r = env.get(&none, &drive).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "Either scp or roles claim need to be present in the token."
    );
    assert_eq!(env.get(&files, &drive).await.status(), 200);

    // Files.Read.All cannot write.
    let (status, v) = env
        .send_json(
            &files,
            Method::POST,
            &env.graph(&format!("/users/{ADELE}/drive/root/children")),
            &serde_json::json!({"name": "x", "folder": {}}),
        )
        .await;
    assert_eq!((status, code(&v)), (403, "accessDenied"));
}

#[tokio::test]
async fn overrides_for_message_value_and_upload_sessions() {
    let env = start().await;
    let basic = env.token(MAIL_BASIC).await;
    let read = env.token(MAIL_READ).await;
    let full = env.token(FULL).await;
    let page = env
        .get_json(
            &read,
            &env.graph(&format!("/users/{ADELE}/mailFolders/inbox/messages/delta")),
        )
        .await;
    let id = page["value"][0]["id"].as_str().unwrap().to_string();
    let msg = env.graph(&format!("/users/{ADELE}/messages/{id}"));
    let value = format!("{msg}/$value");

    // Mail.ReadBasic.All: the message without its body, but never the MIME.
    let m = env.get_json(&basic, &msg).await;
    assert_eq!(m["id"], id.as_str());
    assert!(
        m.get("body").is_none() && m.get("bodyPreview").is_none(),
        "{m}"
    );
    let r = env.get(&basic, &value).await;
    assert_eq!(r.status(), 403);
    assert_eq!(code(&r.json::<Value>().await.unwrap()), "ErrorAccessDenied");
    // Mail.Read and Mail.ReadWrite (missing from Microsoft's data) may.
    assert_eq!(env.get(&read, &value).await.status(), 200);
    assert_eq!(env.get(&full, &value).await.status(), 200);
    assert!(env.get_json(&full, &msg).await["body"]["content"]
        .as_str()
        .unwrap()
        .contains("Body of message"));

    // Files.ReadWrite.All may create upload sessions (data lists only Sites.ReadWrite.All),
    // path-addressed too (absent from the data).
    let (status, v) = env
        .send_json(
            &full,
            Method::POST,
            &env.graph(&format!(
                "/users/{ADELE}/drive/root:/up.bin:/createUploadSession"
            )),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["uploadUrl"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/_upload/", env.sim.base_url)));
}

#[tokio::test]
async fn unknown_routes_are_graph_shaped_400s() {
    let env = start().await;
    let full = env.token(FULL).await;
    let r = env
        .get(&full, &env.graph(&format!("/users/{ADELE}/bogus")))
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "BadRequest");
    assert_eq!(
        v["error"]["message"],
        "Resource not found for the segment 'bogus'."
    );
    let r = env.get(&full, &env.graph("/me/messages")).await;
    assert_eq!(r.status(), 400);
    let r = env.call(&full, Method::DELETE, &env.graph("/users")).await;
    assert_eq!(r.status(), 405);
    // Malformed JSON bodies get a 400, never a crash.
    let r = env
        .http
        .post(env.graph(&format!("/users/{ADELE}/mailFolders")))
        .bearer_auth(&full)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(&r.json::<Value>().await.unwrap()), "BadRequest");
}
