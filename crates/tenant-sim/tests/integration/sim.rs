//! The request log, the binary's CLI contract, and deterministic seeding.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn request_log_records_every_exchange() {
    let env = start().await;
    env.clear_log().await;
    let t = env.token(FULL).await;
    let url = env.graph(&format!("/users/{ADELE}/mailFolders?$top=2"));
    env.get_json(&t, &url).await;
    let r = env
        .get(&env.token(FILES_READ).await, &env.graph("/users"))
        .await;
    assert_eq!(r.status(), 403);
    let log = env.log().await;
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(log[0]["method"], "POST");
    assert_eq!(log[0]["path"], format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["app_id"], FULL);
    assert_eq!(log[0]["authorization_header"], false);
    assert_eq!(
        log[1]["path"],
        format!("/v1.0/users/{ADELE}/mailFolders?$top=2")
    );
    assert_eq!(log[1]["status"], 200);
    assert_eq!(log[1]["app_id"], FULL);
    assert_eq!(log[1]["authorization_header"], true);
    assert!(log[1]["bytes_out"].as_u64().unwrap() > 100);
    assert_eq!(log[3]["status"], 403);
    assert_eq!(log[3]["app_id"], FILES_READ);
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[tokio::test]
async fn seeding_is_deterministic() {
    let a = start().await;
    let b = start().await;
    let ea = a.export(ADELE).await;
    let eb = b.export(ADELE).await;
    assert_eq!(ea["mail"], eb["mail"]);
    assert_eq!(ea["mail"].as_array().unwrap().len(), INBOX_COUNT + 3);
    let ta = a.token(FULL).await;
    let tb = b.token(FULL).await;
    let da = a
        .get_json(
            &ta,
            &a.graph(&format!("/users/{ADELE}/drive/root/children")),
        )
        .await;
    let db = b
        .get_json(
            &tb,
            &b.graph(&format!("/users/{ADELE}/drive/root/children")),
        )
        .await;
    let ids = |v: &Value| {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&da), ids(&db));
    assert_eq!(a.user_id(&ta, ADELE).await, b.user_id(&tb, ADELE).await);
}

#[test]
fn binary_prints_listening_line_and_rejects_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    build_corpus(&dir.path().join("corpus"));
    let cfg = dir.path().join("tenant.toml");
    std::fs::write(&cfg, config_toml()).unwrap();
    let exe = env!("CARGO_BIN_EXE_m365bk-tenant-sim");
    let mut child = Command::new(exe)
        .arg("--corpus")
        .arg(dir.path().join("corpus"))
        .arg("--tenant-config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", FULL),
                ("client_secret", SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .unwrap()
            .status()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);

    // A misspelt key is a configuration error (exit 78) that names the key.
    std::fs::write(
        &cfg,
        config_toml().replace("admin_consent", "admin_consnet"),
    )
    .unwrap();
    let out = Command::new(exe)
        .arg("--corpus")
        .arg(dir.path().join("corpus"))
        .arg("--tenant-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_consnet"));
    // Refuses to listen beyond loopback.
    std::fs::write(&cfg, config_toml()).unwrap();
    let out = Command::new(exe)
        .arg("--corpus")
        .arg(dir.path().join("corpus"))
        .arg("--tenant-config")
        .arg(&cfg)
        .arg("--listen")
        .arg("0.0.0.0:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
