//! OneDrive: delta (parents first, no path, deleted facet), download (302, Range), uploads.

use std::collections::HashSet;

use m365bk_tenant_sim::QuickXorHash;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

fn qxh(bytes: &[u8]) -> String {
    let mut h = QuickXorHash::new();
    h.update(bytes);
    h.finish_base64()
}

async fn walk_delta(
    env: &Env,
    t: &str,
    mut url: String,
    max_page: usize,
) -> (Vec<Value>, String, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let r = env
            .http
            .get(&url)
            .bearer_auth(t)
            .header("Prefer", format!("odata.maxpagesize={max_page}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        pages += 1;
        let v = page["value"].as_array().unwrap();
        assert!(v.len() <= max_page);
        items.extend(v.iter().cloned());
        if let Some(next) = page["@odata.nextLink"].as_str() {
            assert!(next.contains("/root/delta?token="), "{next}");
            url = next.to_string();
        } else {
            return (
                items,
                page["@odata.deltaLink"].as_str().unwrap().to_string(),
                pages,
            );
        }
    }
}

#[tokio::test]
async fn drive_delta_lists_parents_first_then_changes_and_deletions() {
    let env = start().await;
    let t = env.token(FILES_READ).await;
    let drive = env
        .get_json(&t, &env.graph(&format!("/users/{ADELE}/drive")))
        .await;
    assert_eq!(drive["driveType"], "business");
    assert_eq!(drive["quota"]["used"], 1024 * 1024 + 3 + 17 + 9 + 9);
    let drive_id = drive["id"].as_str().unwrap().to_string();
    let (items, delta_link, pages) = walk_delta(
        &env,
        &t,
        env.graph(&format!("/drives/{drive_id}/root/delta")),
        2,
    )
    .await;
    // root, Documents, big.bin, report.txt, Photos, a.png, readme.md
    assert_eq!(items.len(), 7);
    assert_eq!(pages, 4);
    assert!(items[0].get("root").is_some(), "{}", items[0]);
    let mut seen = HashSet::new();
    for item in &items {
        let parent = &item["parentReference"];
        assert_eq!(parent["driveId"], drive_id.as_str());
        assert!(
            parent.get("path").is_none(),
            "delta items carry no path: {item}"
        );
        if let Some(pid) = parent["id"].as_str() {
            assert!(seen.contains(pid), "child before its parent: {item}");
        }
        seen.insert(item["id"].as_str().unwrap().to_string());
    }
    let big = items.iter().find(|i| i["name"] == "big.bin").unwrap();
    assert_eq!(big["size"], 1024 * 1024 + 3);
    assert_eq!(big["file"]["hashes"]["quickXorHash"], qxh(&big_file()));
    let docs = items.iter().find(|i| i["name"] == "Documents").unwrap();
    assert_eq!(docs["folder"]["childCount"], 2);
    let report = items
        .iter()
        .find(|i| i["name"] == "report.txt")
        .unwrap()
        .clone();

    // Non-delta item requests do carry the path.
    let got = env
        .get_json(
            &t,
            &env.graph(&format!("/drives/{drive_id}/root:/Documents/report.txt")),
        )
        .await;
    assert_eq!(got["id"], report["id"]);
    assert_eq!(
        got["parentReference"]["path"],
        format!("/drives/{drive_id}/root:/Documents")
    );

    // Mutations: content change, a new file in a new folder, a deletion.
    let admin = |p: &str| env.url(&format!("/_sim/admin/users/{ADELE}/drive/{p}"));
    assert_eq!(
        env.http
            .put(admin("Documents/report.txt"))
            .body("v2")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.http
            .put(admin("New/notes.txt"))
            .body("new")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        env.http
            .delete(admin("Photos/a.png"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    let (changes, next_link, _) = walk_delta(&env, &t, delta_link, 10).await;
    let names: Vec<&str> = changes
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    // Removals first, then changed items depth-first by path (folders before contents).
    assert_eq!(
        names,
        ["a.png", "report.txt", "New", "notes.txt"],
        "{changes:?}"
    );
    assert_eq!(changes[0]["deleted"], json!({"state": "deleted"}));
    assert!(changes[0]["parentReference"]["id"].is_string());
    let changed = &changes[1];
    assert_eq!(changed["id"], report["id"]);
    assert_ne!(changed["eTag"], report["eTag"]);
    assert_ne!(changed["cTag"], report["cTag"]);
    assert_eq!(changed["file"]["hashes"]["quickXorHash"], qxh(b"v2"));

    let (none, _, _) = walk_delta(&env, &t, next_link, 10).await;
    assert!(none.is_empty());
    let latest = env
        .get_json(
            &t,
            &env.graph(&format!("/drives/{drive_id}/root/delta?token=latest")),
        )
        .await;
    assert_eq!(latest["value"], json!([]));
    assert!(latest["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .contains("token="));
    let r = env
        .get(
            &t,
            &env.graph(&format!("/drives/{drive_id}/root/delta?token=bogus")),
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn content_redirects_to_a_preauthenticated_url_with_ranges() {
    let env = start().await;
    let t = env.token(FILES_READ).await;
    let r = env
        .get(
            &t,
            &env.graph(&format!(
                "/users/{ADELE}/drive/root:/Documents/big.bin:/content"
            )),
        )
        .await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/_download/", env.sim.base_url)),
        "{location}"
    );

    env.clear_log().await;
    let full = env.http.get(&location).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(
        full.headers()["content-length"],
        (1024 * 1024 + 3).to_string().as_str()
    );
    assert_eq!(full.bytes().await.unwrap().to_vec(), big_file());

    let part = env
        .http
        .get(&location)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-1999/{}", 1024 * 1024 + 3).as_str()
    );
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        big_file()[1000..2000].to_vec()
    );
    let tail = env
        .http
        .get(&location)
        .header("Range", "bytes=1048570-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.bytes().await.unwrap().len(),
        1024 * 1024 + 3 - 1_048_570
    );
    let r = env
        .http
        .get(&location)
        .header("Range", "bytes=2000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", 1024 * 1024 + 3).as_str()
    );

    // A client that (wrongly) sends its token along still gets the bytes, but the log shows it.
    let r = env
        .http
        .get(&location)
        .bearer_auth(&t)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let log = env.log().await;
    let downloads: Vec<&Value> = log
        .iter()
        .filter(|e| e["path"].as_str().unwrap().starts_with("/_download/"))
        .collect();
    assert_eq!(downloads.len(), 5);
    assert_eq!(
        downloads
            .iter()
            .filter(|e| e["authorization_header"] == true)
            .count(),
        1
    );
    assert_eq!(downloads[0]["bytes_out"], 1024 * 1024 + 3);
    assert_eq!(downloads[1]["bytes_out"], 1000);
    assert_eq!(downloads[0]["app_id"], Value::Null);
    assert_eq!(downloads[4]["app_id"], FILES_READ);

    let r = env
        .http
        .get(env.url("/_download/not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn upload_session_enforces_fragment_rules() {
    let env = start().await;
    let t = env.token(FULL).await;
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    let (status, session) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!(
                "/users/{ADELE}/drive/root:/Restore/large.bin:/createUploadSession"
            )),
            &json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}}),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["nextExpectedRanges"], json!(["0-"]));
    let upload = session["uploadUrl"].as_str().unwrap().to_string();
    let put = |a: usize, b: usize| {
        env.http
            .put(&upload)
            .header("Content-Range", format!("bytes {a}-{b}/{}", data.len()))
            .body(data[a..=b].to_vec())
            .send()
    };
    // 100,000 bytes is not a multiple of 320 KiB.
    let r = put(0, 99_999).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(&r.json::<Value>().await.unwrap()), "invalidRange");
    let r = put(0, 327_679).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap()["nextExpectedRanges"],
        json!(["327680-"])
    );
    let r = put(0, 327_679).await.unwrap();
    assert_eq!(r.status(), 416);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (code(&v), v["error"]["innerError"]["code"].as_str()),
        ("invalidRange", Some("fragmentOverlap"))
    );
    let r = put(327_680, 655_359).await.unwrap();
    assert_eq!(r.status(), 202);
    let r = put(655_360, data.len() - 1).await.unwrap();
    assert_eq!(r.status(), 201);
    let item: Value = r.json().await.unwrap();
    assert_eq!(item["name"], "large.bin");
    assert_eq!(item["size"], data.len());
    assert_eq!(item["file"]["hashes"]["quickXorHash"], qxh(&data));
    assert_eq!(
        item["parentReference"]["path"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next(),
        Some("/Restore")
    );
    // The session is gone; the content reads back.
    assert_eq!(put(0, 327_679).await.unwrap().status(), 404);
    let r = env
        .get(
            &t,
            &env.graph(&format!(
                "/users/{ADELE}/drive/items/{}/content",
                item["id"].as_str().unwrap()
            )),
        )
        .await;
    let bytes = env
        .http
        .get(r.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), data);

    // conflictBehavior fail: a second session for the same name fails at completion.
    let (_, s2) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!(
                "/users/{ADELE}/drive/root:/Restore/large.bin:/createUploadSession"
            )),
            &json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}}),
        )
        .await;
    let r = env
        .http
        .put(s2["uploadUrl"].as_str().unwrap())
        .header("Content-Range", "bytes 0-2/3")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Cancel.
    let (_, s3) = env
        .send_json(
            &t,
            Method::POST,
            &env.graph(&format!(
                "/users/{ADELE}/drive/root:/x.bin:/createUploadSession"
            )),
            &json!({}),
        )
        .await;
    let url3 = s3["uploadUrl"].as_str().unwrap();
    assert_eq!(env.http.delete(url3).send().await.unwrap().status(), 204);
    assert_eq!(
        env.http
            .put(url3)
            .header("Content-Range", "bytes 0-2/3")
            .body("abc")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // No upload request carried an Authorization header.
    let log = env.log().await;
    let uploads: Vec<&Value> = log
        .iter()
        .filter(|e| e["path"].as_str().unwrap().starts_with("/_upload/"))
        .collect();
    assert!(uploads.len() >= 7);
    assert!(uploads.iter().all(|e| e["authorization_header"] == false));
}

#[tokio::test]
async fn simple_upload_and_folder_creation() {
    let env = start().await;
    let t = env.token(FULL).await;
    let root = env
        .get_json(&t, &env.graph(&format!("/users/{ADELE}/drive/root")))
        .await;
    let root_id = root["id"].as_str().unwrap();
    let put = |body: &'static str| {
        env.http
            .put(env.graph(&format!(
                "/users/{ADELE}/drive/items/{root_id}:/Restored/hello.txt:/content"
            )))
            .bearer_auth(&t)
            .body(body)
            .send()
    };
    let r = put("hello").await.unwrap();
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["size"], 5);
    let r = put("hello again").await.unwrap();
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["size"], 11);

    let url = env.graph(&format!("/users/{ADELE}/drive/root/children"));
    let (status, f) = env
        .send_json(
            &t,
            Method::POST,
            &url,
            &json!({"name": "Restored", "folder": {}, "@microsoft.graph.conflictBehavior": "fail"}),
        )
        .await;
    assert_eq!((status, code(&f)), (409, "nameAlreadyExists"));
    let (status, f) = env
        .send_json(&t, Method::POST, &url, &json!({"name": "Restored", "folder": {}, "@microsoft.graph.conflictBehavior": "rename"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(f["name"], "Restored 1");
    let children = env.get_json(&t, &format!("{url}?$top=2")).await;
    assert_eq!(children["value"].as_array().unwrap().len(), 2);
    assert!(children["@odata.nextLink"]
        .as_str()
        .unwrap()
        .contains("$skiptoken="));

    // The export reflects the writes.
    let export = env.export(ADELE).await;
    let entry = export["drive"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "Restored/hello.txt")
        .unwrap();
    assert_eq!(entry["size"], 11);
    assert!(export["drive"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == "Restored 1" && e["folder"] == true));
}
