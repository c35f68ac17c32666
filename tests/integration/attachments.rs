//! Issue 4, transfers: a message too large for one Graph request (4 MiB) is restored by the
//! real `m365bk` binary through Outlook attachment upload sessions against the simulator,
//! which refuses larger single POSTs with 413 as Graph does. Its large attachments (real PDFs
//! of the full corpus) arrive byte for byte although one range fails with 503 and another
//! range's answer is cut off mid-body; both are resumed from `nextExpectedRanges`.

use std::collections::BTreeMap;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{content_set, corpus, matrix_permissions, Env, Sim};

const ADELE: &str = "adele.vance@contoso.onmicrosoft.com";
const ZOE: &str = "zoe.angstrom@contoso.onmicrosoft.com";
const MIB: u64 = 1024 * 1024;

fn roles() -> Vec<String> {
    let mut roles = Vec::new();
    for p in matrix_permissions("exchange", &["discovery", "backup", "recovery"]) {
        if !roles.contains(&p) {
            roles.push(p);
        }
    }
    roles
}

/// A multipart/mixed message with a text body and `files` attached (base64, 76 columns).
fn mime_with(files: &[(&str, &str, Vec<u8>)]) -> Vec<u8> {
    let mut out = format!(
        "From: Adele Vance <{ADELE}>\r\nTo: Zoe Angstrom <{ZOE}>\r\nSubject: Manuals for the review\r\nDate: Tue, 03 Nov 2026 09:30:00 +0000\r\nMessage-ID: <big-attachments-1@contoso.onmicrosoft.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_m365bk_big\"\r\n\r\n--=_m365bk_big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe manuals are attached.\r\n"
    )
    .into_bytes();
    for (name, ctype, data) in files {
        out.extend_from_slice(
            format!("--=_m365bk_big\r\nContent-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").as_bytes(),
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        for line in b64.as_bytes().chunks(76) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"--=_m365bk_big--\r\n");
    out
}

fn big_message<'a>(export: &'a Value, folder: &str) -> &'a Value {
    export["mail"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["folder"] == folder && m["subject"] == "Manuals for the review")
        .unwrap_or_else(|| panic!("no big message in {folder}"))
}

#[tokio::test]
async fn large_attachments_restore_through_upload_sessions_and_resume_after_faults() {
    let full = corpus(false);
    let drive = |user: &str, path: &str| {
        std::fs::read(full.join("users").join(user).join("drive").join(path)).unwrap()
    };
    let files = vec![
        (
            "cht-chart-type.pptx",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            drive(ADELE, "Documents/Présentations/cht-chart-type.pptx"),
        ),
        (
            "internals.pdf",
            "application/pdf",
            drive(
                "alex.wilber@contoso.onmicrosoft.com",
                "Documents/Manuals/internals.pdf",
            ),
        ),
        (
            "learning.pdf",
            "application/pdf",
            drive(ADELE, "Documents/learning.pdf"),
        ),
    ];
    assert!(
        files[0].2.len() < 3 * MIB as usize,
        "one attachment small enough to stay in the MIME"
    );
    assert!(files[1].2.len() as u64 > 4 * MIB && files[2].2.len() as u64 > 4 * MIB);
    let mime = mime_with(&files);
    assert!(
        mime.len() as u64 > 4 * MIB,
        "the message needs more than one request"
    );

    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus(true), &roles()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();
    sim.admin(
        Method::POST,
        &format!("users/{ADELE}/messages?folder=Inbox/Big"),
        mime.clone(),
    )
    .await;
    let source = sim.export(ADELE).await;
    let want = big_message(&source, "Inbox/Big")["attachments"].clone();
    let names: Vec<&str> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cht-chart-type.pptx", "internals.pdf", "learning.pdf"]
    );

    let backup = env
        .run(&["--json", "backup", "--service", "exchange", "--user", ADELE])
        .await
        .ok();
    let snapshot = backup.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Ranges go to /_attach/: the 2nd PUT fails with 503 before it is stored; the 4th is
    // stored but its answer is cut after 5 bytes.
    sim.admin(
        Method::PUT,
        "faults",
        json!({"rules": [
            {"method": "PUT", "path_contains": "/_attach/", "nth": 2, "max_count": 1,
             "fault": {"kind": "status", "status": 503, "retry_after": "0.1"}},
            {"method": "PUT", "path_contains": "/_attach/", "nth": 4, "max_count": 1,
             "fault": {"kind": "reset", "after_bytes": 5}},
        ]})
        .to_string()
        .into_bytes(),
    )
    .await;
    sim.clear_requests().await;
    let restored = env
        .run(&[
            "--json",
            "restore",
            &snapshot,
            "--to-user",
            ZOE,
            "--folder-name",
            "Restored-Big",
        ])
        .await
        .ok();
    let report = restored.json();
    assert_eq!(report["report"]["failed"], json!([]), "{report}");
    assert_eq!(report["outcome"], "ok");

    // The big message: every attachment, decoded, equals the source's (name, size, sha256).
    let target = sim.export(ZOE).await;
    let got = big_message(&target, "Restored-Big/Inbox/Big");
    assert_eq!(
        got["attachments"], want,
        "attachments arrive byte for byte, in order"
    );
    assert_eq!(
        got["internetMessageId"],
        big_message(&source, "Inbox/Big")["internetMessageId"]
    );
    // Every other message is restored byte for byte as before.
    let mut want_mail = content_set(&source, "mail", "");
    let big_sha = big_message(&source, "Inbox/Big")["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    want_mail.retain(|(_, sha), _| *sha != big_sha);
    let mut got_mail = content_set(&target, "mail", "Restored-Big");
    let restored_big = got["sha256"].as_str().unwrap().to_string();
    got_mail.retain(|(_, sha), _| *sha != restored_big);
    assert_eq!(got_mail, want_mail);

    // The wire: two sessions, ranges of at most 4 MiB without Authorization, both faults
    // injected and resumed from the session's status, no request over 4 MiB refused.
    let log = sim.requests().await;
    let path = |e: &Value| e["path"].as_str().unwrap_or_default().to_string();
    let sessions = log
        .iter()
        .filter(|e| e["method"] == "POST" && path(e).ends_with("/attachments/createUploadSession"))
        .count();
    assert_eq!(sessions, 2, "one session per large attachment");
    let puts: Vec<&Value> = log
        .iter()
        .filter(|e| e["method"] == "PUT" && path(e).starts_with("/_attach/"))
        .collect();
    assert!(puts.iter().all(|e| e["authorization_header"] == false));
    let faults: BTreeMap<String, usize> =
        puts.iter()
            .filter_map(|e| e["fault"].as_str())
            .fold(BTreeMap::new(), |mut m, f| {
                *m.entry(f.to_string()).or_insert(0) += 1;
                m
            });
    assert_eq!(
        faults,
        BTreeMap::from([("reset".into(), 1), ("status".into(), 1)])
    );
    // 2 + 2 ranges, plus the 503's resend; the cut-off range is not resent.
    assert_eq!(puts.len(), 5, "{puts:#?}");
    let status_queries = log
        .iter()
        .filter(|e| e["method"] == "GET" && path(e).starts_with("/_attach/"))
        .count();
    assert_eq!(
        status_queries, 2,
        "each failure resumed from nextExpectedRanges"
    );
    assert!(
        log.iter().all(|e| e["status"] != 413),
        "no request was refused as too large"
    );
}
