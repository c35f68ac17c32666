//! Issue 4, resumable delta: every delta page is saved in the catalog as it arrives, so a
//! backup that stops part-way resumes each enumeration from its last saved page instead of
//! from the start. The stop is a 500 the client does not retry, injected on a delta page in
//! the middle of a folder: the real binary exits having saved the pages before it; the rerun
//! must not ask for those pages again (neither the folders already enumerated nor the first
//! pages of the stopped one), and its snapshot must equal the simulator's content.
//!
//! Resumable downloads: content stored before the stop is in the repository's index (written at
//! the end of a failed run, or by an index checkpoint before a `kill -9`), and the catalog's
//! `stored_items` journal names the item version it belongs to, so the rerun does not download
//! it again.

use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{
    content_set, corpus, matrix_permissions, pct_decode, Env, Sim, PASSPHRASE, SECRET, TEST_KDF_ENV,
};

const ADELE: &str = "adele.vance@contoso.onmicrosoft.com";
const ZOE: &str = "zoe.angstrom@contoso.onmicrosoft.com";

fn path(e: &Value) -> &str {
    e["path"].as_str().unwrap()
}

fn status(e: &Value) -> u64 {
    e["status"].as_u64().unwrap()
}

fn is_message_delta(e: &Value) -> bool {
    path(e).contains("/messages/delta")
}

/// The simulator on the small corpus with every permission of `service`'s discovery, backup
/// and recovery, and an initialised repository whose config has `backup` (`key = value`
/// lines) as its `[backup]` table.
async fn start(dir: &std::path::Path, service: &str, backup: &str) -> (Sim, Env) {
    let corpus = corpus(true);
    let roles = matrix_permissions(service, &["discovery", "backup", "recovery"]);
    let sim = Sim::start(dir, &corpus, &roles).await;
    let env = Env::new(&sim.base);
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{config}\n[backup]\n{backup}")).unwrap();
    env.run(&["init"]).await.ok();
    (sim, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_resumes_delta_from_the_last_saved_page() {
    let tmp = tempfile::tempdir().unwrap();
    // Two messages per page: many pages per folder.
    let (sim, env) = start(tmp.path(), "exchange", "page_size = 2\n").await;
    let source = sim.export(ADELE).await;

    // The second nextLink page of a message delta answers 500 (not retried): the backup stops
    // in the middle of a folder's enumeration, after other pages of it were saved.
    sim.admin(
        Method::PUT,
        "faults",
        json!([{"route": "delta", "path_contains": "messages/delta?$skiptoken", "nth": 2,
                "fault": {"kind": "status", "status": 500}}])
        .to_string()
        .into_bytes(),
    )
    .await;
    let backup = ["--json", "backup", "--service", "exchange", "--user", ADELE];
    let first = env.run(&backup).await;
    assert_ne!(first.code, 0, "the injected 500 stopped the backup");
    let log1 = sim.requests().await;
    let pages1: Vec<&Value> = log1.iter().filter(|e| is_message_delta(e)).collect();
    let stop = pages1
        .iter()
        .position(|e| status(e) == 500)
        .unwrap_or_else(|| panic!("{:#?}", log1.iter().map(path).collect::<Vec<_>>()));
    assert_eq!(
        stop + 1,
        pages1.len(),
        "nothing after the stop: {pages1:#?}"
    );
    let fetched_before: Vec<&str> = pages1[..stop].iter().map(|e| path(e)).collect();
    let stopped_at = path(pages1[stop]);
    let folder = pct_decode(stopped_at.split('?').next().unwrap());
    assert!(
        fetched_before
            .iter()
            .any(|p| pct_decode(p).starts_with(&folder)),
        "pages of the stopped folder were saved before the stop"
    );

    // The rerun, without faults.
    sim.admin(Method::DELETE, "faults", Vec::new()).await;
    sim.clear_requests().await;
    let second = env.run(&backup).await.ok();
    let log2 = sim.requests().await;
    let pages2: Vec<&str> = log2
        .iter()
        .filter(|e| is_message_delta(e))
        .map(path)
        .collect();
    for p in &fetched_before {
        assert!(
            !pages2.contains(p),
            "page {p} was saved before the stop and is not requested again: {pages2:#?}"
        );
    }
    assert_eq!(
        pages2.first().copied(),
        Some(stopped_at),
        "the rerun starts where the first run stopped"
    );
    // The stopped run indexed what it stored before it exited (`finish`), and journaled each
    // message: the rerun downloads only the messages the first run did not.
    let mime = |log: &[Value]| log.iter().filter(|e| path(e).ends_with("/$value")).count();
    eprintln!(
        "resume: first run {} message-delta pages (the last one refused), {} MIME downloads; \
         rerun {} pages, {} MIME downloads",
        pages1.len(),
        mime(&log1),
        pages2.len(),
        mime(&log2)
    );
    let messages: usize = content_set(&source, "mail", "").values().sum();
    assert!(
        mime(&log1) > 0,
        "the first run stored messages before the stop"
    );
    assert_eq!(
        mime(&log1) + mime(&log2),
        messages,
        "no message downloaded twice across the stop"
    );

    // The snapshot is the mailbox: restore it and compare, message by message.
    let snapshot = second.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run(&[
        "--json",
        "restore",
        &snapshot,
        "--to-user",
        ZOE,
        "--folder-name",
        "Resumed",
    ])
    .await
    .ok();
    let want = content_set(&source, "mail", "");
    let got = content_set(&sim.export(ZOE).await, "mail", "Resumed");
    assert!(!want.is_empty());
    assert_eq!(
        got, want,
        "restored mail equals the simulator's, sha256 by sha256"
    );

    // The saved pages were dropped with the commit: the next incremental starts from the
    // stored deltaLinks and fetches only the new message.
    sim.admin(
        Method::POST,
        &format!("users/{ADELE}/messages?folder=Inbox"),
        b"From: a@b.test\r\nTo: c@d.test\r\nSubject: after the resume\r\nMessage-ID: <resume@x.test>\r\n\r\nbody\r\n".to_vec(),
    )
    .await;
    sim.clear_requests().await;
    env.run(&backup).await.ok();
    let log3 = sim.requests().await;
    let mime = log3.iter().filter(|e| path(e).ends_with("/$value")).count();
    assert_eq!(mime, 1, "only the new message is downloaded");
    assert!(
        log3.iter()
            .filter(|e| is_message_delta(e))
            .all(|e| path(e).contains("deltatoken")),
        "every folder resumed from its deltaLink"
    );
}

/// The same with `kill -9`: the binary is killed while it walks message deltas (150 ms per
/// request), after at least 8 pages were answered. Every page answered before the last one
/// was saved before the next was requested, so the rerun must not ask for any of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backup_resumes_delta_without_the_pages_it_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, env) = start(tmp.path(), "exchange", "page_size = 2\n").await;
    let source = sim.export(ADELE).await;
    sim.set_latency(150).await;
    sim.clear_requests().await;

    let backup = ["--json", "backup", "--service", "exchange", "--user", ADELE];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365bk"));
    cmd.arg("--config")
        .arg(&env.config)
        .args(backup)
        .env("M365BK_CLIENT_SECRET", SECRET)
        .env("M365BK_PASSPHRASE", PASSPHRASE)
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in TEST_KDF_ENV {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let answered: Vec<String> = loop {
        let log = sim.requests().await;
        let answered: Vec<String> = log
            .iter()
            .filter(|e| is_message_delta(e) && status(e) == 200)
            .map(|e| path(e).to_string())
            .collect();
        if answered.len() >= 8 {
            break answered;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    child.start_kill().unwrap(); // SIGKILL
    let killed = child.wait().await.unwrap();
    assert!(!killed.success(), "killed: {killed:?}");
    let saved = &answered[..answered.len() - 1];

    sim.admin(Method::DELETE, "faults", Vec::new()).await;
    sim.clear_requests().await;
    let second = env.run(&backup).await.ok();
    let pages2: Vec<String> = sim
        .requests()
        .await
        .iter()
        .filter(|e| is_message_delta(e))
        .map(|e| path(e).to_string())
        .collect();
    for p in saved {
        assert!(
            !pages2.contains(p),
            "page {p} was saved before the kill and is not requested again: {pages2:#?}"
        );
    }
    eprintln!(
        "kill -9: {} message-delta pages answered before the kill, rerun asked for {}",
        answered.len(),
        pages2.len()
    );
    let snapshot = second.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run(&[
        "--json",
        "restore",
        &snapshot,
        "--to-user",
        ZOE,
        "--folder-name",
        "AfterKill",
    ])
    .await
    .ok();
    let want = content_set(&source, "mail", "");
    let got = content_set(&sim.export(ZOE).await, "mail", "AfterKill");
    assert_eq!(
        got, want,
        "restored mail equals the simulator's, sha256 by sha256"
    );
}

/// OneDrive: five driveItems per delta page; the third page answers 500. The rerun replays
/// the two saved pages, asks only for the rest, and the restored drive equals the simulator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_drive_backup_resumes_from_the_last_saved_page() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, env) = start(tmp.path(), "onedrive", "drive_page_size = 5\n").await;
    let source = sim.export(ADELE).await;
    sim.admin(
        Method::PUT,
        "faults",
        json!([{"route": "delta", "path_contains": "/root/delta", "nth": 3,
                "fault": {"kind": "status", "status": 500}}])
        .to_string()
        .into_bytes(),
    )
    .await;
    let backup = ["--json", "backup", "--service", "onedrive", "--user", ADELE];
    let first = env.run(&backup).await;
    assert_ne!(first.code, 0, "the injected 500 stopped the backup");
    let is_drive_delta = |e: &Value| path(e).contains("/root/delta");
    let log1 = sim.requests().await;
    let pages1: Vec<&Value> = log1.iter().filter(|e| is_drive_delta(e)).collect();
    assert_eq!(pages1.len(), 3, "{pages1:#?}");
    assert_eq!(status(pages1[2]), 500);

    sim.admin(Method::DELETE, "faults", Vec::new()).await;
    sim.clear_requests().await;
    let second = env.run(&backup).await.ok();
    let pages2: Vec<String> = sim
        .requests()
        .await
        .iter()
        .filter(|e| is_drive_delta(e))
        .map(|e| path(e).to_string())
        .collect();
    assert_eq!(
        pages2.first().map(String::as_str),
        Some(path(pages1[2])),
        "the rerun starts at the page that failed"
    );
    for p in &pages1[..2] {
        assert!(
            !pages2.iter().any(|q| q == path(p)),
            "{} asked again",
            path(p)
        );
    }
    eprintln!(
        "drive resume: first run 2 pages saved, rerun asked for {} pages",
        pages2.len()
    );
    let snapshot = second.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run(&[
        "--json",
        "restore",
        &snapshot,
        "--to-user",
        ZOE,
        "--folder-name",
        "ResumedDrive",
    ])
    .await
    .ok();
    let want = content_set(&source, "drive", "");
    let got = content_set(&sim.export(ZOE).await, "drive", "ResumedDrive");
    assert!(!want.is_empty());
    assert_eq!(
        got, want,
        "restored drive equals the simulator's, sha256 by sha256"
    );
}

/// Complete objects in the repository directory `dir` (`index`, `snapshots`), not temp files.
fn objects(env: &Env, dir: &str) -> usize {
    std::fs::read_dir(env.repo.join(dir)).map_or(0, |d| {
        d.filter(|f| {
            !f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains('#')
        })
        .count()
    })
}

/// Random (incompressible) bytes from a seed (SplitMix64).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bulk items of about 1 MiB each stored: 16 fill a 16 MiB pack.
const BULK_ITEMS: usize = 48;
/// Items the rerun may download again beyond those the first run never finished: a pack's
/// worth (the open pack is not indexed at a checkpoint) plus the downloads in flight.
const REDOWNLOAD_ALLOWANCE: usize = 16 + CONCURRENCY;
const CONCURRENCY: usize = 2;

/// Runs `args` (a backup) with an index checkpoint after every pack upload and the simulator
/// adding 100 ms to each request, and kills it (SIGKILL) once `index_files` index files are in
/// the repository, before any snapshot.
async fn kill_after_index_checkpoints(sim: &Sim, env: &Env, args: &[&str], index_files: usize) {
    sim.set_latency(100).await;
    sim.clear_requests().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365bk"));
    cmd.arg("--config")
        .arg(&env.config)
        .args(args)
        .env("M365BK_CLIENT_SECRET", SECRET)
        .env("M365BK_PASSPHRASE", PASSPHRASE)
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in TEST_KDF_ENV {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while objects(env, "index") < index_files {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before {index_files} index checkpoints"
        );
        assert!(std::time::Instant::now() < deadline, "no index checkpoints");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let killed = child.wait().await.unwrap();
    assert!(!killed.success(), "killed: {killed:?}");
    assert_eq!(objects(env, "snapshots"), 0, "killed before its commit");
    sim.admin(Method::DELETE, "faults", Vec::new()).await;
}

/// `kill -9` of a drive backup after two index checkpoints (two packs, about 32 of 48 one-MiB
/// files), then a rerun: the files in the indexed packs are not downloaded again, so both runs
/// together download each file about once (at most a pack's worth and the downloads in flight
/// twice), where without the journal the rerun downloads them all; the snapshot is the drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_drive_backup_does_not_download_again_what_it_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, env) = start(
        tmp.path(),
        "onedrive",
        &format!("concurrency = {CONCURRENCY}\nindex_checkpoint_secs = 0\n"),
    )
    .await;
    let mut bulk = Vec::new();
    for i in 0..BULK_ITEMS {
        let added = sim
            .admin(
                Method::PUT,
                &format!("users/{ADELE}/drive/Bulk/part-{i:02}.bin"),
                random_bytes(i as u64, 1 << 20),
            )
            .await;
        bulk.push(added["id"].as_str().unwrap().to_string());
    }
    let files: usize = content_set(&sim.export(ADELE).await, "drive", "")
        .values()
        .sum();
    let backup = ["--json", "backup", "--service", "onedrive", "--user", ADELE];
    let downloads = |log: &[Value]| log.iter().filter(|e| path(e).ends_with("/content")).count();

    kill_after_index_checkpoints(&sim, &env, &backup, 2).await;
    let log1 = sim.requests().await;
    let first = downloads(&log1);
    // The two bulk files downloaded first (in the first, indexed pack) change before the
    // rerun: one is deleted, one gets new content. The rerun must notice both.
    let early: Vec<usize> = log1
        .iter()
        .filter(|e| path(e).ends_with("/content"))
        .filter_map(|e| {
            bulk.iter()
                .position(|id| pct_decode(path(e)).contains(id.as_str()))
        })
        .take(2)
        .collect();
    assert_eq!(early.len(), 2, "bulk files downloaded before the kill");
    sim.admin(
        Method::DELETE,
        &format!("users/{ADELE}/drive/Bulk/part-{:02}.bin", early[0]),
        Vec::new(),
    )
    .await;
    sim.admin(
        Method::PUT,
        &format!("users/{ADELE}/drive/Bulk/part-{:02}.bin", early[1]),
        random_bytes(1000 + early[1] as u64, 1 << 20),
    )
    .await;
    let want = content_set(&sim.export(ADELE).await, "drive", "");
    sim.clear_requests().await;
    let second = env.run(&backup).await.ok();
    let rerun = downloads(&sim.requests().await);
    eprintln!(
        "drive kill -9 after 2 index checkpoints: {files} files; first run {first} downloads, \
         rerun {rerun}"
    );
    assert!(
        first > REDOWNLOAD_ALLOWANCE,
        "two packs' worth downloaded before the kill: {first}"
    );
    assert!(
        first + rerun <= files + 1 + REDOWNLOAD_ALLOWANCE,
        "{first} + {rerun} downloads for {files} files (one changed): the rerun downloaded \
         again what the killed run had indexed"
    );

    let snapshot = second.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run(&[
        "--json",
        "restore",
        &snapshot,
        "--to-user",
        ZOE,
        "--folder-name",
        "AfterKill",
    ])
    .await
    .ok();
    let got = content_set(&sim.export(ZOE).await, "drive", "AfterKill");
    assert_eq!(
        got, want,
        "restored drive equals the simulator's, sha256 by sha256"
    );
}

/// The same for a mailbox: 48 messages with a 1 MiB random attachment each; the messages in
/// the indexed packs are not downloaded again (`/$value`), and the snapshot is the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mailbox_backup_does_not_download_again_what_it_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, env) = start(
        tmp.path(),
        "exchange",
        &format!("concurrency = {CONCURRENCY}\nindex_checkpoint_secs = 0\n"),
    )
    .await;
    let mut bulk = Vec::new();
    for i in 0..BULK_ITEMS {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(random_bytes(i as u64, 1 << 20));
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let eml = format!(
            "From: Megan <megan@contoso.test>\r\nTo: Adele <{ADELE}>\r\nSubject: bulk {i}\r\n\
             Message-ID: <bulk-{i}@contoso.test>\r\nDate: Tue, 3 Mar 2026 10:00:00 +0000\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbulk {i}\r\n\
             --b\r\nContent-Type: application/octet-stream; name=\"bulk-{i}.bin\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
            lines.join("\r\n")
        );
        let added = sim
            .admin(
                Method::POST,
                &format!("users/{ADELE}/messages?folder=Inbox"),
                eml.into_bytes(),
            )
            .await;
        bulk.push(added["id"].as_str().unwrap().to_string());
    }
    let messages: usize = content_set(&sim.export(ADELE).await, "mail", "")
        .values()
        .sum();
    let backup = [
        "--json",
        "backup",
        "--service",
        "exchange",
        "--user",
        ADELE,
        "--items",
        "mail",
    ];
    let downloads = |log: &[Value]| log.iter().filter(|e| path(e).ends_with("/$value")).count();

    kill_after_index_checkpoints(&sim, &env, &backup, 2).await;
    let log1 = sim.requests().await;
    let first = downloads(&log1);
    // The bulk message downloaded first (in the first, indexed pack) is deleted before the
    // rerun, which must leave it out.
    let gone = log1
        .iter()
        .filter(|e| path(e).ends_with("/$value"))
        .find_map(|e| {
            bulk.iter()
                .find(|id| pct_decode(path(e)).contains(id.as_str()))
        })
        .expect("a bulk message downloaded before the kill");
    sim.admin(
        Method::DELETE,
        &format!("users/{ADELE}/messages/{gone}"),
        Vec::new(),
    )
    .await;
    let want = content_set(&sim.export(ADELE).await, "mail", "");
    sim.clear_requests().await;
    let second = env.run(&backup).await.ok();
    let rerun = downloads(&sim.requests().await);
    eprintln!(
        "mailbox kill -9 after 2 index checkpoints: {messages} messages; first run {first} \
         downloads, rerun {rerun}"
    );
    assert!(
        first > REDOWNLOAD_ALLOWANCE,
        "two packs' worth downloaded before the kill: {first}"
    );
    assert!(
        first + rerun <= messages + REDOWNLOAD_ALLOWANCE,
        "{first} + {rerun} downloads for {messages} messages: the rerun downloaded again what \
         the killed run had indexed"
    );

    let snapshot = second.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run(&[
        "--json",
        "restore",
        &snapshot,
        "--to-user",
        ZOE,
        "--folder-name",
        "AfterKill",
    ])
    .await
    .ok();
    let got = content_set(&sim.export(ZOE).await, "mail", "AfterKill");
    assert_eq!(
        got, want,
        "restored mail equals the simulator's, sha256 by sha256"
    );
}
