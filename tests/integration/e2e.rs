//! Done-when 1–3 of the walking skeleton: full backup and cross-user restore of the real
//! corpus, an incremental backup after the tenant changes, and dedup across users.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use super::harness::{all_roles, content_set, corpus, corpus_users, pct_decode, Env, Sim};

fn snapshot_ids(summary: &Value) -> BTreeMap<String, String> {
    summary["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["resource"].as_str().unwrap().to_string(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn contact_names(export: &Value, folder_prefix: Option<&str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in export["contacts"].as_array().unwrap() {
        let folder = c["folder"].as_str().unwrap_or_default();
        let keep = match folder_prefix {
            Some(p) => folder == p,
            None => !folder.contains("Restored-"),
        };
        if keep {
            *out.entry(c["displayName"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    out
}

async fn assert_no_403(sim: &Sim, what: &str) {
    let denied: Vec<Value> = sim
        .requests()
        .await
        .into_iter()
        .filter(|r| r["status"] == 403 || r["status"] == 401)
        .collect();
    assert!(
        denied.is_empty(),
        "{what}: requests refused by the simulator: {denied:#?}"
    );
}

async fn assert_restored(sim: &Sim, src: &Value, source: &str, target: &str, folder: &str) {
    let dst = sim.export(target).await;
    let want_mail = content_set(src, "mail", "");
    let got_mail = content_set(&dst, "mail", folder);
    assert!(!want_mail.is_empty(), "{source} has mail");
    assert_eq!(got_mail, want_mail, "restored mail of {source} in {target}/{folder} equals the source, message by message (sha256 of MIME)");
    let want_files = content_set(src, "drive", "");
    let got_files = content_set(&dst, "drive", folder);
    assert!(!want_files.is_empty(), "{source} has files");
    assert_eq!(
        got_files, want_files,
        "restored files of {source} in {target}/{folder} equal the source byte for byte"
    );
    assert_eq!(
        contact_names(&dst, Some(&format!("Contacts/{folder}"))),
        contact_names(src, None),
        "contacts restored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backup_cross_user_restore_incremental_and_dedup_on_real_corpus() {
    let corpus = corpus(false);
    let users = corpus_users(&corpus);
    assert!(users.len() >= 5, "corpus has ≥ 5 users");
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &all_roles()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();
    // Only the operator can read the repository and the catalog, whatever the caller's umask.
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [
            env.repo.join("config"),
            env.dir.path().join("catalog.sqlite"),
        ] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
        }
    }

    // 1. Full backup of every user's mailbox and OneDrive.
    let ex = env
        .run(&["--json", "backup", "--service", "exchange", "--all-users"])
        .await
        .ok()
        .json();
    let od = env
        .run(&["--json", "backup", "--service", "onedrive", "--all-users"])
        .await
        .ok()
        .json();
    assert_no_403(&sim, "full backup with exactly the matrix's permissions").await;
    let ex_snaps = snapshot_ids(&ex);
    let od_snaps = snapshot_ids(&od);
    assert_eq!(ex_snaps.keys().cloned().collect::<Vec<_>>(), users);
    assert_eq!(od_snaps.keys().cloned().collect::<Vec<_>>(), users);

    // 3. Dedup: the same attachments and files under several users are stored once.
    let mut exports: BTreeMap<String, Value> = BTreeMap::new();
    for u in &users {
        exports.insert(u.clone(), sim.export(u).await);
    }
    let mut total = 0u64;
    let mut distinct: BTreeMap<String, u64> = BTreeMap::new();
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (u, e) in &exports {
        for area in ["mail", "drive"] {
            for x in e[area].as_array().unwrap() {
                if x.get("folder").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                let size = x["size"].as_u64().unwrap();
                let sha = x["sha256"].as_str().unwrap().to_string();
                total += size;
                distinct.insert(sha.clone(), size);
                owners.entry(sha).or_default().insert(u.clone());
            }
        }
    }
    // A snapshot's size is its items' own bytes (a folder's Graph size is its subtree's).
    for s in od["snapshots"].as_array().unwrap() {
        let user = s["resource"].as_str().unwrap();
        let files: u64 = exports[user]["drive"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x.get("folder").and_then(Value::as_bool) != Some(true))
            .map(|x| x["size"].as_u64().unwrap())
            .sum();
        assert_eq!(
            s["bytes"].as_u64().unwrap(),
            files,
            "OneDrive snapshot size of {user}"
        );
    }
    let distinct_bytes: u64 = distinct.values().sum();
    let shared_bytes: u64 = owners
        .iter()
        .filter(|(_, o)| o.len() > 1)
        .map(|(s, o)| distinct[s] * (o.len() as u64 - 1))
        .sum();
    let bytes_new = ex["bytes_new"].as_u64().unwrap() + od["bytes_new"].as_u64().unwrap();
    let bytes_in = ex["bytes_in"].as_u64().unwrap() + od["bytes_in"].as_u64().unwrap();
    let repo_bytes = env.repo_bytes();
    eprintln!(
        "dedup: source {total} B, distinct items {distinct_bytes} B, duplicated across users {shared_bytes} B; \
         read {bytes_in} B, new blob bytes {bytes_new} B, repository {repo_bytes} B"
    );
    assert!(
        shared_bytes > 1024 * 1024,
        "the corpus shares content across users ({shared_bytes} B)"
    );
    assert!(
        bytes_in >= total,
        "every source byte was read ({bytes_in} < {total})"
    );
    // Unique chunk bytes can't exceed the distinct content (plus item-list trees): every
    // duplicated copy was stored once.
    assert!(
        bytes_new <= distinct_bytes + distinct_bytes / 50 + 4 * 1024 * 1024,
        "new blob bytes {bytes_new} ≤ distinct content {distinct_bytes} (+ trees)"
    );
    assert!(repo_bytes < total - shared_bytes / 2, "repository {repo_bytes} B is smaller than the source {total} B minus half of its duplicates");

    // 2. The tenant changes; the next backup fetches only what changed.
    let u0 = &users[0];
    let before = exports[u0].clone();
    let inbox: Vec<&Value> = before["mail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["folder"] == "Inbox")
        .collect();
    assert!(inbox.len() >= 3, "{u0} has at least 3 messages in Inbox");
    let moved_id = inbox[0]["id"].as_str().unwrap().to_string();
    let deleted_id = inbox[1]["id"].as_str().unwrap().to_string();
    // A real message from another user's mailbox, added to this one.
    let eml = walk_files(&corpus.join("users").join(&users[1]).join("mail"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .unwrap();
    let new_mime = std::fs::read(&eml).unwrap();
    let added = sim
        .admin(
            Method::POST,
            &format!("users/{u0}/messages?folder=Inbox"),
            new_mime.clone(),
        )
        .await;
    let added_id = added["id"].as_str().unwrap().to_string();
    let moved = sim
        .admin(
            Method::POST,
            &format!("users/{u0}/messages/{moved_id}/move?folder=Archive"),
            Vec::new(),
        )
        .await;
    let moved_new_id = moved["id"].as_str().unwrap().to_string();
    sim.admin(
        Method::DELETE,
        &format!("users/{u0}/messages/{deleted_id}"),
        Vec::new(),
    )
    .await;
    let files: Vec<&Value> = before["drive"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f.get("folder").and_then(Value::as_bool) != Some(true)
                && !f["path"].as_str().unwrap().starts_with("Restored-")
        })
        .collect();
    let changed_path = files[0]["path"].as_str().unwrap().to_string();
    let deleted_path = files[1]["path"].as_str().unwrap().to_string();
    // Real files of another user: one added, one replacing an existing file's content.
    let other: Vec<std::path::PathBuf> =
        walk_files(&corpus.join("users").join(&users[2]).join("drive"));
    let add_src = other
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 100_000)
        .unwrap_or(&other[0]);
    let change_src = other.iter().rev().find(|p| *p != add_src).unwrap();
    let add_bytes = std::fs::read(add_src).unwrap();
    let change_bytes = std::fs::read(change_src).unwrap();
    sim.admin(
        Method::PUT,
        &format!(
            "users/{u0}/drive/Incremental/added-{}",
            add_src.file_name().unwrap().to_string_lossy()
        ),
        add_bytes.clone(),
    )
    .await;
    sim.admin(
        Method::PUT,
        &format!("users/{u0}/drive/{changed_path}"),
        change_bytes.clone(),
    )
    .await;
    sim.admin(
        Method::DELETE,
        &format!("users/{u0}/drive/{deleted_path}"),
        Vec::new(),
    )
    .await;

    sim.clear_requests().await;
    let repo_before = env.repo_bytes();
    let ex2 = env
        .run(&["--json", "backup", "--service", "exchange", "--user", u0])
        .await
        .ok()
        .json();
    let od2 = env
        .run(&["--json", "backup", "--service", "onedrive", "--user", u0])
        .await
        .ok()
        .json();
    let growth = env.repo_bytes() - repo_before;
    let log = sim.requests().await;
    let paths: Vec<String> = log
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let mime_gets: BTreeSet<String> = paths
        .iter()
        .filter(|p| p.contains("/$value"))
        .map(|p| {
            pct_decode(
                p.split("/messages/")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches("/$value"),
            )
        })
        .collect();
    assert_eq!(
        mime_gets,
        [added_id.clone(), moved_new_id.clone()]
            .into_iter()
            .collect(),
        "MIME downloaded only for the added and the moved message"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/messages/delta") && p.contains("deltatoken")),
        "message delta resumed from deltaLinks"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/root/delta") && p.contains("token=")),
        "drive delta resumed from its deltaLink"
    );
    let content_gets = paths
        .iter()
        .filter(|p| p.ends_with("/content") && p.contains("/drives/"))
        .count();
    let downloads = paths.iter().filter(|p| p.contains("/_download/")).count();
    assert_eq!(
        content_gets, 2,
        "file content requested only for the added and the changed file: {paths:#?}"
    );
    assert_eq!(downloads, 2, "two file downloads");
    assert_no_403(&sim, "incremental backup").await;
    let after = sim.export(u0).await;
    let changed_bytes = (new_mime.len() + add_bytes.len() + change_bytes.len()) as u64;
    eprintln!("incremental: changed {changed_bytes} B, repository grew {growth} B; exchange {ex2}, onedrive {od2}");
    // Only changed content was read: the new MIME and the two files, plus the item lists.
    let read = ex2["bytes_in"].as_u64().unwrap() + od2["bytes_in"].as_u64().unwrap();
    assert!(
        read <= changed_bytes + 2 * 1024 * 1024,
        "incremental read {read} B for {changed_bytes} B changed"
    );
    assert!(growth > 0, "the repository grew");
    assert!(
        growth <= changed_bytes + changed_bytes / 10 + 1024 * 1024,
        "repository grew by about the changed bytes ({growth} B for {changed_bytes} B changed)"
    );

    // 1. Restore everything to other users, then compare content exactly.
    sim.clear_requests().await;
    for (i, u) in users.iter().enumerate() {
        let target = &users[(i + 1) % users.len()];
        let folder = format!("Restored-A{i}");
        env.run(&[
            "--json",
            "restore",
            &ex_snaps[u],
            "--to-user",
            target,
            "--folder-name",
            &folder,
        ])
        .await
        .ok();
        env.run(&[
            "--json",
            "restore",
            &od_snaps[u],
            "--to-user",
            target,
            "--folder-name",
            &folder,
        ])
        .await
        .ok();
    }
    assert_no_403(
        &sim,
        "restore with exactly the matrix's recovery permissions",
    )
    .await;
    let uploads = sim
        .requests()
        .await
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap_or_default().contains("/_upload/"))
        .count();
    assert!(uploads > 0, "large files went through upload sessions");
    for (i, u) in users.iter().enumerate() {
        assert_restored(
            &sim,
            &exports[u],
            u,
            &users[(i + 1) % users.len()],
            &format!("Restored-A{i}"),
        )
        .await;
    }

    // Restoring the second snapshot gives the changed tenant exactly.
    let ex2_id = snapshot_ids(&ex2)[u0].clone();
    let od2_id = snapshot_ids(&od2)[u0].clone();
    let target = &users[1];
    env.run(&[
        "restore",
        &ex2_id,
        "--to-user",
        target,
        "--folder-name",
        "Restored-B",
    ])
    .await
    .ok();
    env.run(&[
        "restore",
        &od2_id,
        "--to-user",
        target,
        "--folder-name",
        "Restored-B",
    ])
    .await
    .ok();
    assert_restored(&sim, &after, u0, target, "Restored-B").await;
    let restored = content_set(&sim.export(target).await, "mail", "Restored-B");
    assert!(
        restored.keys().any(|(folder, _)| folder == "Archive"),
        "the moved message is in Archive"
    );

    // The listing commands see the snapshots.
    let list = env.run(&["--json", "snapshots"]).await.ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2 * users.len() + 2);
    let ls = env.run(&["--json", "ls", &od2_id]).await.ok().json();
    assert!(ls.as_array().unwrap().iter().any(|i| i["path"]
        .as_str()
        .unwrap()
        .starts_with("Incremental/added-")));
    assert!(!ls
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["path"] == deleted_path.as_str()));
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out.sort();
    out
}
