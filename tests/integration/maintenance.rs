//! Issue 3, done-when 4: two concurrent backups and a concurrent prune on one repository lose
//! nothing; and prune against a live lock (exit 11, naming the holder) and a stale one
//! (ignored, removed). Real `m365bk` processes, the simulator over HTTP, the small corpus.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{
    all_roles, content_set, corpus, corpus_users, flip_middle_byte, packs, Env, Sim, PASSPHRASE,
    SECRET, TEST_KDF_ENV,
};

/// Deterministic incompressible bytes.
/// The small corpus served by a simulator with every permission, and an initialised
/// repository. Keep the `TempDir` alive as long as the simulator.
async fn simulated_tenant_and_repository() -> (tempfile::TempDir, Sim, Env, Vec<String>) {
    let corpus = corpus(true);
    let users = corpus_users(&corpus);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &all_roles()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();
    (tmp, sim, env, users)
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn area(service: &str) -> &'static str {
    if service == "exchange" {
        "mail"
    } else {
        "drive"
    }
}

/// What each user's mail and drive held: (user, area) → content set.
type Truth = BTreeMap<(String, &'static str), BTreeMap<(String, String), usize>>;

async fn truth(sim: &Sim, users: &[String]) -> Truth {
    let mut out = BTreeMap::new();
    for u in users {
        let e = sim.export(u).await;
        for a in ["mail", "drive"] {
            out.insert((u.clone(), a), content_set(&e, a, ""));
        }
    }
    out
}

/// A `m365bk` command started in the background with the tests' environment.
fn spawn(env: &Env, args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365bk"));
    cmd.arg("--config")
        .arg(&env.config)
        .args(args)
        .env("M365BK_CLIENT_SECRET", SECRET)
        .env("M365BK_PASSPHRASE", PASSPHRASE)
        .env("M365BK_LOG", "info")
        .env_remove("M365BK_NEW_PASSPHRASE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in TEST_KDF_ENV {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start m365bk")
}

async fn finish(child: tokio::process::Child, what: &str) -> (i32, String, String) {
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "$ m365bk {what}\n-> {}\n{}",
        out.status,
        stderr
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn last_json(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .unwrap_or_else(|| panic!("no JSON on stdout: {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// Lock objects in the repository (staging files of interrupted writes excluded).
fn lock_objects(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.repo.join("locks"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.contains('#'))
                .collect()
        })
        .unwrap_or_default()
}

/// Restores `id` into its own user under `folder` and compares the result with `want`.
async fn assert_restores(
    sim: &Sim,
    env: &Env,
    id: &str,
    user: &str,
    service: &str,
    folder: &str,
    want: &BTreeMap<(String, String), usize>,
) {
    env.run(&["--json", "restore", id, "--folder-name", folder])
        .await
        .ok();
    let export = sim.export(user).await;
    let got = content_set(&export, area(service), folder);
    assert!(!want.is_empty(), "{user} has {service} content");
    assert_eq!(
        &got, want,
        "snapshot {id} ({service} of {user}) restores byte for byte"
    );
}

/// Backs up every user's drive (tagged `first`) with a 3 MB incompressible file in the first
/// user's drive, deletes the file at the source, and backs up again. Returns the tenant's
/// files as of the second backup.
async fn two_drive_backups_around_a_deleted_file(sim: &Sim, env: &Env, users: &[String]) -> Truth {
    let u0 = &users[0];
    sim.admin(
        Method::PUT,
        &format!("users/{u0}/drive/Scratch/big.bin"),
        noise(7, 3_000_000),
    )
    .await;
    env.run(&[
        "backup",
        "--service",
        "onedrive",
        "--all-users",
        "--tag",
        "first",
    ])
    .await
    .ok();
    sim.admin(
        Method::DELETE,
        &format!("users/{u0}/drive/Scratch/big.bin"),
        Vec::new(),
    )
    .await;
    let truth_second = truth(sim, users).await;
    env.run(&["backup", "--service", "onedrive", "--all-users"])
        .await
        .ok();
    truth_second
}

/// `forget --prune` forgets and then frees the forgotten data in one run: the deleted 3 MB
/// file's blobs are repacked away (`--max-unused 0`), and what is left checks clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_with_prune_frees_the_forgotten_data_in_one_run() {
    let (_tmp, sim, env, users) = simulated_tenant_and_repository().await;
    two_drive_backups_around_a_deleted_file(&sim, &env, &users).await;
    let before = env.repo_bytes();

    let r = env
        .run(&["forget", "--keep-last", "1", "--max-unused", "0"])
        .await;
    assert_eq!(r.code, 2, "--max-unused needs --prune: {}", r.stderr);
    // The dry run changes nothing and predicts what the real run frees.
    let dry = env
        .run(&[
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--max-unused",
            "0",
            "--dry-run",
        ])
        .await
        .ok()
        .json();
    assert_eq!(env.repo_bytes(), before, "a dry run changes nothing");
    assert_eq!(dry["prune"]["snapshots"], users.len(), "{dry}");
    let out = env
        .run(&[
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--max-unused",
            "0",
        ])
        .await
        .ok()
        .json();
    assert_eq!(out["forget"]["removed"], users.len(), "{out}");
    assert_eq!(out["prune"]["snapshots"], users.len(), "{out}");
    assert!(
        out["prune"]["bytes_freed"].as_u64().unwrap() >= 3_000_000,
        "the deleted file's 3 MB: {out}"
    );
    assert!(env.repo_bytes() + 3_000_000 <= before, "{out}");
    // A dry run writes no packs or index file, so it cannot count their headers: its
    // estimate is off by those few hundred bytes at most.
    let (predicted, freed) = (
        dry["prune"]["bytes_freed"].as_u64().unwrap(),
        out["prune"]["bytes_freed"].as_u64().unwrap(),
    );
    assert!(
        predicted.abs_diff(freed) < 64 * 1024,
        "the dry run predicted {predicted} bytes freed, the prune freed {freed}: {dry}"
    );
    env.run(&["check", "--read-data"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_backups_and_a_concurrent_prune_lose_nothing() {
    let (_tmp, sim, env, users) = simulated_tenant_and_repository().await;
    let u0 = users[0].clone();

    // 1. A drive backup that includes a 3 MB file, which is then deleted at the source; a
    //    second backup without it; forget the first: the file's blobs become garbage that
    //    sits in a pack with blobs still in use.
    let truth_second = two_drive_backups_around_a_deleted_file(&sim, &env, &users).await;
    let dry = env
        .run(&["--json", "forget", "--keep-last", "1", "--dry-run"])
        .await
        .ok()
        .json();
    let doomed: usize = dry["plan"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["remove"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        doomed,
        users.len(),
        "dry run: the first drive snapshot of each user"
    );
    let forgot = env
        .run(&[
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--service",
            "onedrive",
        ])
        .await
        .ok()
        .json();
    assert_eq!(forgot["removed"], users.len());
    let listed = env.run(&["--json", "snapshots"]).await.ok().json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        users.len(),
        "the catalog forgot them too"
    );
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["tags"].as_array().unwrap().is_empty()));

    // 2. A new file for the concurrent drive backup to store.
    sim.admin(
        Method::PUT,
        &format!("users/{u0}/drive/Scratch/new.bin"),
        noise(8, 1_500_000),
    )
    .await;
    let truth_third = truth(&sim, &users).await;
    let before = env.repo_bytes();

    // 3. Two backups and a prune at once. Whoever holds the lock first, the others wait.
    let wait = ["--lock-wait", "120"];
    let ex = spawn(
        &env,
        &[
            &wait[..],
            &["--json", "backup", "--service", "exchange", "--all-users"],
        ]
        .concat(),
    );
    let od = spawn(
        &env,
        &[
            &wait[..],
            &["--json", "backup", "--service", "onedrive", "--all-users"],
        ]
        .concat(),
    );
    let pr = spawn(
        &env,
        &[&wait[..], &["--json", "prune", "--max-unused", "10"]].concat(),
    );
    let (ex, od, pr) = tokio::join!(
        finish(ex, "backup exchange"),
        finish(od, "backup onedrive"),
        finish(pr, "prune")
    );
    assert_eq!(ex.0, 0, "exchange backup: {}", ex.2);
    assert_eq!(od.0, 0, "onedrive backup: {}", od.2);
    assert_eq!(pr.0, 0, "prune: {}", pr.2);
    let report = last_json(&pr.1);
    eprintln!("prune report: {report}");
    assert!(
        report["bytes_freed"].as_u64().unwrap() > 2_500_000,
        "prune freed the deleted file's 3 MB: {report}"
    );
    assert!(
        report["packs_repacked"].as_u64().unwrap() + report["packs_deleted"].as_u64().unwrap() >= 1
    );
    eprintln!(
        "repository {before} B before the concurrent run, {} B after",
        env.repo_bytes()
    );
    assert!(lock_objects(&env).is_empty(), "every lock was released");

    // 4. Again, with the backups first (slowed down by the simulator) and the prune started
    //    while they hold their locks: it waits for them, then runs.
    sim.set_latency(100).await;
    let ex = spawn(
        &env,
        &[
            &wait[..],
            &["--json", "backup", "--service", "exchange", "--all-users"],
        ]
        .concat(),
    );
    let od = spawn(
        &env,
        &[
            &wait[..],
            &["--json", "backup", "--service", "onedrive", "--all-users"],
        ]
        .concat(),
    );
    let started = Instant::now();
    while lock_objects(&env).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a backup took its lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pr = spawn(
        &env,
        &[&wait[..], &["--json", "prune", "--max-unused", "0"]].concat(),
    );
    let (ex, od, pr) = tokio::join!(
        finish(ex, "backup exchange"),
        finish(od, "backup onedrive"),
        finish(pr, "prune")
    );
    sim.set_latency(0).await;
    assert_eq!(
        (ex.0, od.0, pr.0),
        (0, 0, 0),
        "{}\n{}\n{}",
        ex.2,
        od.2,
        pr.2
    );
    assert!(
        pr.2.contains("repository is locked; waiting") && pr.2.contains("held_by=backup lock"),
        "prune waited for a backup: {}",
        pr.2
    );
    assert!(lock_objects(&env).is_empty(), "every lock was released");

    // 5. check --read-data is clean; every snapshot restores byte for byte.
    let check = env
        .run(&["--json", "check", "--read-data"])
        .await
        .ok()
        .json();
    assert_eq!(check["errors"], json!([]), "{check}");
    let snaps = env.run(&["--json", "snapshots"]).await.ok().json();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 5 * users.len(), "{snaps:#?}");
    let mut drive_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (n, s) in snaps.iter().enumerate() {
        let id = s["id"].as_str().unwrap();
        let service = s["service"].as_str().unwrap();
        let user = s["resource_name"].as_str().unwrap();
        let want = if service == "exchange" {
            &truth_third[&(user.to_string(), "mail")]
        } else {
            // Oldest first: the second drive backup, then the concurrent one.
            let k = drive_seen.entry(user.to_string()).or_insert(0);
            *k += 1;
            let t = if *k == 1 { &truth_second } else { &truth_third };
            &t[&(user.to_string(), "drive")]
        };
        assert_restores(
            &sim,
            &env,
            id,
            user,
            service,
            &format!("Restored-check-{n}"),
            want,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_exits_11_on_a_live_backup_lock_and_ignores_it_once_its_process_is_gone() {
    let (_tmp, sim, env, users) = simulated_tenant_and_repository().await;
    env.run(&["backup", "--service", "onedrive", "--user", &users[0]])
        .await
        .ok();
    let want = content_set(&sim.export(&users[0]).await, "drive", "");

    // A slow backup holding a lock that lives 10 minutes unless refreshed.
    sim.set_latency(300).await;
    let mut child = spawn(
        &env,
        &[
            "--lock-ttl",
            "600",
            "backup",
            "--service",
            "onedrive",
            "--all-users",
        ],
    );
    let pid = child.id().unwrap();
    let started = Instant::now();
    while lock_objects(&env).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the backup took its lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Live: prune refuses at once with exit code 11 and names the holder.
    let refused = env.run(&["prune"]).await;
    assert_eq!(refused.code, 11, "{}", refused.stderr);
    for needle in [
        "is locked",
        "backup lock (shared)",
        &format!("pid {pid}"),
        "--lock-wait",
        "ignored at once by m365bk on that host",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "{needle:?} in {}",
            refused.stderr
        );
    }

    // Killed with SIGKILL: its lock stays behind, 10 minutes from expiry.
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "killed while running");
    sim.set_latency(0).await;
    assert_eq!(
        lock_objects(&env).len(),
        1,
        "the dead backup's lock is left"
    );
    // Its process is gone on this machine: prune, not waiting, removes the lock and runs.
    let pruned = env.run(&["--json", "prune"]).await.ok();
    assert!(
        pruned.stderr.contains("removing a stale lock")
            && pruned.stderr.contains(&format!("pid={pid}")),
        "{}",
        pruned.stderr
    );
    let report = pruned.json();
    assert!(
        report["unindexed_packs_deleted"].as_u64().unwrap() <= 2,
        "{report}"
    );
    assert!(lock_objects(&env).is_empty());

    let check = env
        .run(&["--json", "check", "--read-data"])
        .await
        .ok()
        .json();
    assert_eq!(check["errors"], json!([]), "{check}");
    assert_eq!(
        check["unindexed_packs"],
        json!([]),
        "prune removed the dead backup's packs"
    );
    let snaps = env
        .run(&["--json", "snapshots", "--service", "onedrive"])
        .await
        .ok()
        .json();
    let first = snaps[0]["id"].as_str().unwrap();
    assert_restores(
        &sim,
        &env,
        first,
        &users[0],
        "onedrive",
        "Restored-after-prune",
        &want,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_refuse_bad_options_and_change_nothing() {
    // No simulator needed: nothing here talks to Microsoft.
    let env = Env::new("http://127.0.0.1:9");
    // A missing rule is a usage error before anything else, even with no repository yet.
    let r = env.run(&["forget"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    env.run(&["init"]).await.ok();
    let before = env.repo_bytes();

    let r = env.run(&["forget"]).await;
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);
    assert!(
        r.stderr.contains("no retention rule given") && r.stderr.contains("--keep-last"),
        "{}",
        r.stderr
    );
    let r = env
        .run(&["forget", "--keep-last", "1", "--service", "fax"])
        .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("fax"), "{}", r.stderr);
    let r = env.run(&["prune", "--max-unused", "150"]).await;
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);
    assert!(r.stderr.contains("from 0 to 100"), "{}", r.stderr);

    // An empty repository: both run, report nothing to do, and leave no lock behind.
    let dry = env.run(&["--json", "prune", "--dry-run"]).await.ok().json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["bytes_freed"], 0);
    let forgot = env
        .run(&["--json", "forget", "--keep-daily", "7"])
        .await
        .ok()
        .json();
    assert_eq!(forgot["removed"], 0);
    assert!(lock_objects(&env).is_empty());
    assert_eq!(env.repo_bytes(), before, "nothing was written");
}

/// A backup of some item types (`--items mail`) does not push the whole mailbox out of
/// `forget --keep-last 1`: snapshots are kept per service, resource and selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_keeps_whole_mailbox_snapshots_apart_from_items_subsets() {
    let (_tmp, _sim, env, users) = simulated_tenant_and_repository().await;
    let user = &users[0];
    env.run(&["backup", "--service", "exchange", "--user", user])
        .await
        .ok();
    env.run(&[
        "backup",
        "--service",
        "exchange",
        "--user",
        user,
        "--items",
        "mail",
    ])
    .await
    .ok();

    let out = env
        .run(&["--json", "forget", "--keep-last", "1"])
        .await
        .ok()
        .json();
    let groups = out["plan"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{out}");
    let selections: Vec<&Value> = groups.iter().map(|g| &g["selection"]).collect();
    assert!(selections.contains(&&json!([])), "{out}");
    assert!(selections.contains(&&json!(["mail"])), "{out}");
    assert!(
        groups
            .iter()
            .all(|g| g["keep"].as_array().unwrap().len() == 1
                && g["remove"].as_array().unwrap().is_empty()),
        "{out}"
    );
    let text = env
        .run(&["forget", "--keep-last", "1", "--dry-run"])
        .await
        .ok();
    assert!(text.stdout.contains("[--items mail]"), "{}", text.stdout);
}

/// One damaged snapshot object does not stop the repository's other work: `snapshots` lists
/// the rest and names it (exit 3), a backup of the same resource succeeds, `forget` by rule
/// keeps it and says so, `prune` refuses and says how to remove it, and
/// `forget --snapshot` removes it, after which prune and check are clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_object_is_named_and_can_be_forgotten_by_id() {
    let (_tmp, _sim, env, users) = simulated_tenant_and_repository().await;
    let damaged = env.backup_one("onedrive", &users[0]).await;
    let other = env.backup_one("onedrive", &users[1]).await;
    let object = env.repo.join("snapshots").join(&damaged);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&object, &bytes).unwrap();

    let listed = env.run(&["snapshots"]).await;
    assert_eq!(listed.code, 3, "listing is incomplete: {}", listed.stderr);
    assert!(
        listed
            .stdout
            .contains("(listed above from the catalog's earlier record)"),
        "the backup recorded it before the damage: {}",
        listed.stdout
    );
    assert!(listed.stdout.contains(&other[..12]), "{}", listed.stdout);
    assert!(
        listed
            .stdout
            .contains(&format!("unreadable snapshot {damaged}"))
            && listed
                .stdout
                .contains(&format!("m365bk forget --snapshot {damaged}")),
        "{}",
        listed.stdout
    );

    let checked = env.run(&["check"]).await;
    assert_ne!(checked.code, 0, "{}", checked.stdout);
    assert!(
        checked.stdout.contains(&format!("snapshots/{damaged}"))
            && checked.stdout.contains("m365bk forget --snapshot ID"),
        "{}",
        checked.stdout
    );

    let rebuilt = env.run(&["repair", "catalog"]).await;
    assert_eq!(rebuilt.code, 3, "{}", rebuilt.stderr);
    assert!(
        rebuilt.stdout.contains("1 snapshot(s) recorded")
            && rebuilt
                .stdout
                .contains(&format!("unreadable snapshot {damaged} (not recorded)")),
        "{}",
        rebuilt.stdout
    );

    // The damaged snapshot's resource backs up again (with no usable parent).
    let fresh = env.backup_one("onedrive", &users[0]).await;
    assert_ne!(fresh, damaged);

    let refused = env.run(&["prune"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("snapshot {damaged} is unreadable"))
            && refused
                .stderr
                .contains(&format!("m365bk forget --snapshot {damaged}")),
        "{}",
        refused.stderr
    );

    // With --prune, the forget report comes first, then prune's refusal (exit 1).
    let both = env.run(&["forget", "--keep-last", "5", "--prune"]).await;
    assert_eq!(both.code, 1, "{}", both.stderr);
    assert!(
        both.stdout.contains("prune did not run")
            && both.stdout.contains("keep 1")
            && both
                .stderr
                .contains(&format!("snapshot {damaged} is unreadable")),
        "{}\n{}",
        both.stdout,
        both.stderr
    );

    let kept = env.run(&["forget", "--keep-last", "1"]).await.ok();
    assert!(
        kept.stdout
            .contains(&format!("unreadable snapshot {damaged} (kept")),
        "{}",
        kept.stdout
    );
    assert!(object.exists(), "forget by rule keeps what it cannot read");

    let dry = env
        .run(&["forget", "--snapshot", &damaged[..8], "--dry-run"])
        .await
        .ok();
    assert!(dry.stdout.contains(&damaged), "{}", dry.stdout);
    assert!(object.exists(), "a dry run deletes nothing");
    let removed = env
        .run(&["--json", "forget", "--snapshot", &damaged[..8], "--prune"])
        .await
        .ok()
        .json();
    assert_eq!(removed["forget"]["removed"], 1, "{removed}");
    assert!(!object.exists());

    let missing = env.run(&["forget", "--snapshot", &damaged[..8]]).await;
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains(&damaged[..8]), "{}", missing.stderr);
    let bad = env.run(&["forget", "--snapshot", "zz"]).await;
    assert_eq!(
        bad.code, 2,
        "a malformed id is a usage error: {}",
        bad.stderr
    );
    assert!(bad.stderr.contains("4 hex digits"), "{}", bad.stderr);
    let both = env
        .run(&["forget", "--snapshot", &other[..8], "--keep-last", "1"])
        .await;
    assert_eq!(
        both.code, 2,
        "--snapshot and rules conflict: {}",
        both.stderr
    );

    env.run(&["check", "--read-data"]).await.ok();
    let listed = env.run(&["--json", "snapshots"]).await.ok().json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&other.as_str()) && ids.contains(&fresh.as_str()));
    assert!(!ids.contains(&damaged.as_str()));
}

/// Every pack damaged (a flipped byte in each): `repair index` drops the damaged blobs, and the
/// next incremental backups (nothing changed in Microsoft 365, so Graph's delta reports
/// nothing) download the messages and files whose stored content is incomplete instead of
/// referring to it; their snapshots restore byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_repair_index_incremental_backups_download_what_damaged_packs_lost() {
    let (_tmp, sim, env, users) = simulated_tenant_and_repository().await;
    let user = &users[0];
    let want = truth(&sim, std::slice::from_ref(user)).await;
    for service in ["exchange", "onedrive"] {
        env.run(&["backup", "--service", service, "--user", user])
            .await
            .ok();
    }
    let damaged = packs(&env.repo);
    assert!(!damaged.is_empty());
    for pack in &damaged {
        flip_middle_byte(pack);
    }
    let check = env.run(&["check", "--read-data"]).await;
    assert_ne!(check.code, 0, "{}", check.stdout);

    let repaired = env.run(&["--json", "repair", "index"]).await.ok().json();
    assert!(
        repaired["blobs_dropped"].as_u64().unwrap() >= damaged.len() as u64,
        "{repaired}"
    );
    assert_eq!(repaired["index_changed"], true, "{repaired}");

    for service in ["exchange", "onedrive"] {
        let out = env
            .run(&["--json", "backup", "--service", service, "--user", user])
            .await
            .ok();
        assert!(
            out.stderr.contains("incomplete in the repository"),
            "{service}: the lost items are downloaded again: {}",
            out.stderr
        );
        let id = out.json()["snapshots"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let folder = format!("Restored-After-Repair-{service}");
        assert_restores(
            &sim,
            &env,
            &id,
            user,
            service,
            &folder,
            &want[&(user.clone(), area(service))],
        )
        .await;
    }
    // The simulator serves the same bytes again, so the stored-again blobs heal the first
    // snapshots too: check is clean, and prune deletes the damaged packs.
    env.run(&["check", "--read-data"]).await.ok();
    env.run(&["prune"]).await.ok();
    assert!(damaged.iter().all(|p| !p.exists()), "prune deleted them");
    env.run(&["check", "--read-data"]).await.ok();
}
