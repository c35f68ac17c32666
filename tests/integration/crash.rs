//! Issue 3, done-when 2: `kill -9` at random points of a backup, 20 times in a loop. After each
//! kill, `m365bk check` is clean, every snapshot committed before it restores byte for byte
//! (sha256 of every message and file, against the simulator's ground truth at the time of that
//! snapshot's backup), and the next backup succeeds.
//!
//! Each round first changes the tenant: a few small messages or files that stay (so every
//! snapshot differs from the one before), and about 10–40 MB of bulk (large attachments or
//! files, mostly incompressible, some text) that the killed backup must download, chunk,
//! compress, seal and upload in several packs. The bulk is deleted again after the kill, so the
//! snapshots that every later round restores stay small. The kill delay is drawn uniformly
//! from 0 to 1.2 times the measured duration of an uninterrupted backup of the same shape
//! (timed in a scratch repository at the start, then from rounds whose backup finished before
//! its kill), so kills land anywhere from process start to exit: before any upload, between
//! pack uploads, before or after the index file, the snapshot or the catalog. The simulator
//! adds 5 ms to every Graph request of the killed backup. The random seed is
//! printed; set `M365BK_CRASH_SEED` to replay a run.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::harness::{all_roles, content_set, corpus, Env, Sim, PASSPHRASE, SECRET, TEST_KDF_ENV};

const ADELE: &str = "adele.vance@contoso.onmicrosoft.com";
const ZOE: &str = "zoe.angstrom@contoso.onmicrosoft.com";
const ROUNDS: usize = 20;
/// Added to every Graph request of the killed backups by the simulator, as a real tenant
/// would.
const LATENCY_MS: u64 = 5;

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014):
/// a small deterministic generator, so a printed seed replays the same kill delays and content.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Text of roughly `n` bytes from a small vocabulary: compressible like mail bodies.
    fn text(&mut self, n: usize) -> String {
        const WORDS: [&str; 16] = [
            "quarterly",
            "report",
            "meeting",
            "Contoso",
            "budget",
            "review",
            "please",
            "find",
            "attached",
            "the",
            "draft",
            "for",
            "Thursday",
            "regards",
            "update",
            "project",
        ];
        let mut s = String::with_capacity(n + 16);
        while s.len() < n {
            s.push_str(WORDS[(self.next() % 16) as usize]);
            s.push(if self.next().is_multiple_of(12) {
                '\n'
            } else {
                ' '
            });
        }
        s
    }
}

fn area(service: &str) -> &'static str {
    match service {
        "exchange" => "mail",
        _ => "drive",
    }
}

/// The backup command of a round: Adele's mail only (restores then carry mail only), or her
/// whole drive.
fn backup_args(service: &str) -> Vec<&str> {
    let mut args = vec!["--json", "backup", "--service", service, "--user", ADELE];
    if service == "exchange" {
        args.extend(["--items", "mail"]);
    }
    args
}

/// A snapshot committed by a completed backup, with what the tenant held when it was taken.
struct Committed {
    id: String,
    service: &'static str,
    want: BTreeMap<(String, String), usize>,
}

fn eml(round: usize, n: usize, body: &str, attachment: &[u8]) -> Vec<u8> {
    let b64 = base64_lines(attachment);
    format!(
        "From: Megan <megan@contoso.test>\r\nTo: Adele <{ADELE}>\r\nSubject: round {round} message {n}\r\n\
         Message-ID: <crash-{round}-{n}@contoso.test>\r\nDate: Tue, 3 Mar 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"data-{round}-{n}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}--b--\r\n"
    )
    .into_bytes()
}

/// What a round added and deletes again after the kill.
enum Bulk {
    Messages(Vec<String>),
    Files(Vec<String>),
}

/// Changes Adele's mailbox or drive: small messages or files that stay, and bulk that is
/// returned for [`remove_bulk`]. Messages carry a text body and a base64 attachment of random
/// (incompressible) bytes; files are text or random bytes.
async fn change_tenant(sim: &Sim, rng: &mut Rng, round: usize, service: &str) -> Bulk {
    if service == "exchange" {
        let mut bulk = Vec::new();
        for n in 0..rng.range(5, 8) {
            // The first two stay (small); the others are bulk (large attachments).
            let keep = n < 2;
            let body_len = rng.range(2_000, 40_000) as usize;
            let body = rng.text(body_len);
            let attachment_len = if keep {
                rng.range(20_000, 200_000)
            } else {
                rng.range(3_000_000, 6_000_000)
            } as usize;
            let attachment = rng.bytes(attachment_len);
            let added = sim
                .admin(
                    Method::POST,
                    &format!("users/{ADELE}/messages?folder=Inbox"),
                    eml(round, n as usize, &body, &attachment),
                )
                .await;
            if !keep {
                bulk.push(added["id"].as_str().unwrap().to_string());
            }
        }
        Bulk::Messages(bulk)
    } else {
        let text_len = rng.range(10_000, 200_000) as usize;
        let binary_len = rng.range(50_000, 500_000) as usize;
        let big_text_len = rng.range(1_000_000, 4_000_000) as usize;
        let video_lens = [
            rng.range(8_000_000, 20_000_000) as usize,
            rng.range(8_000_000, 20_000_000) as usize,
        ];
        let files = [
            ("notes.txt", rng.text(text_len).into_bytes(), true),
            ("scan.bin", rng.bytes(binary_len), true),
            ("export.csv", rng.text(big_text_len).into_bytes(), false),
            ("video-1.mp4", rng.bytes(video_lens[0]), false),
            ("video-2.mp4", rng.bytes(video_lens[1]), false),
        ];
        let mut bulk = Vec::new();
        for (name, bytes, keep) in files {
            let dir = if keep { "Crash" } else { "Bulk" };
            let path = format!("{dir}/round-{round}/{name}");
            sim.admin(Method::PUT, &format!("users/{ADELE}/drive/{path}"), bytes)
                .await;
            if !keep {
                bulk.push(path);
            }
        }
        Bulk::Files(bulk)
    }
}

async fn remove_bulk(sim: &Sim, bulk: Bulk) {
    match bulk {
        Bulk::Messages(ids) => {
            for id in ids {
                sim.admin(
                    Method::DELETE,
                    &format!("users/{ADELE}/messages/{id}"),
                    Vec::new(),
                )
                .await;
            }
        }
        Bulk::Files(paths) => {
            for p in paths {
                sim.admin(
                    Method::DELETE,
                    &format!("users/{ADELE}/drive/{p}"),
                    Vec::new(),
                )
                .await;
            }
        }
    }
}

fn base64_lines(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + data.len() / 38 + 8);
    for (i, c) in data.chunks(3).enumerate() {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
        if i % 19 == 18 {
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out
}

/// Runs a backup to completion and records its snapshot; returns its duration.
async fn backup_ok(
    sim: &Sim,
    env: &Env,
    service: &'static str,
    committed: &mut Vec<Committed>,
) -> Duration {
    let started = Instant::now();
    let summary = env.run(&backup_args(service)).await.ok().json();
    let took = started.elapsed();
    let snapshots = summary["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "one snapshot per backup: {summary}");
    let want = content_set(&sim.export(ADELE).await, area(service), "");
    assert!(!want.is_empty());
    committed.push(Committed {
        id: snapshots[0]["id"].as_str().unwrap().to_string(),
        service,
        want,
    });
    took
}

/// How a backup started by [`backup_killed_after`] ended.
struct Outcome {
    /// It was still running when it got SIGKILL.
    killed: bool,
    /// Time from start to exit.
    ran: Duration,
    /// Its last log line (the last step it finished).
    last_event: String,
    /// Packs it uploaded, and whether it wrote an index file.
    packs: usize,
    indexed: bool,
}

/// Starts a backup and sends it SIGKILL after `delay`, unless it exits before (then it must
/// have succeeded).
async fn backup_killed_after(env: &Env, service: &str, delay: Duration, log: &Path) -> Outcome {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365bk"));
    cmd.arg("--config")
        .arg(&env.config)
        .args(backup_args(service))
        .env("M365BK_CLIENT_SECRET", SECRET)
        .env("M365BK_PASSPHRASE", PASSPHRASE)
        .env("M365BK_LOG", "info,m365bk_store=debug")
        .env_remove("M365BK_NEW_PASSPHRASE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in TEST_KDF_ENV {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start m365bk backup");
    let status = match tokio::time::timeout(delay, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            // SIGKILL on Unix: no destructor, no flush, no cleanup runs.
            child.start_kill().unwrap();
            child.wait().await.unwrap()
        }
    };
    let ran = started.elapsed();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last_event = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(nothing logged)")
        .chars()
        .take(160)
        .collect();
    let packs = text.matches("pack uploaded").count();
    let indexed = text.contains("index written");
    let killed = status.signal() == Some(9);
    assert!(
        killed || status.success(),
        "the backup exited with {status} before it was killed:\n{text}"
    );
    Outcome {
        killed,
        ran,
        last_event,
        packs,
        indexed,
    }
}

/// Restores `snap` into Zoe under a fresh folder, compares it with the ground truth, then
/// deletes the restored copy (so later exports stay small).
async fn assert_restores(sim: &Sim, env: &Env, snap: &Committed, folder: &str) {
    env.run(&[
        "--json",
        "restore",
        &snap.id,
        "--to-user",
        ZOE,
        "--folder-name",
        folder,
    ])
    .await
    .ok();
    let area = area(snap.service);
    let export = sim.export(ZOE).await;
    let got = content_set(&export, area, folder);
    assert_eq!(
        got, snap.want,
        "snapshot {} ({}) restores byte for byte after the kill",
        snap.id, snap.service
    );
    if area == "drive" {
        sim.admin(
            Method::DELETE,
            &format!("users/{ZOE}/drive/{folder}"),
            Vec::new(),
        )
        .await;
    } else {
        for m in export["mail"].as_array().unwrap() {
            let f = m["folder"].as_str().unwrap();
            if f == folder || f.starts_with(&format!("{folder}/")) {
                sim.admin(
                    Method::DELETE,
                    &format!("users/{ZOE}/messages/{}", m["id"].as_str().unwrap()),
                    Vec::new(),
                )
                .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_of_backups_loses_nothing() {
    let seed = std::env::var("M365BK_CRASH_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("M365BK_CRASH_SEED is a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed: {seed} (replay with M365BK_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let corpus = corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &all_roles()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();

    // Full backups first: the snapshots every round restores.
    let mut committed: Vec<Committed> = Vec::new();
    for service in ["exchange", "onedrive"] {
        backup_ok(&sim, &env, service, &mut committed).await;
    }

    // How long a round's backup takes uninterrupted: timed in a scratch repository (whose
    // snapshots nobody restores), with bulk and latency as in the rounds.
    let mut duration: BTreeMap<&str, Duration> = BTreeMap::new();
    {
        let scratch = Env::new(&sim.base);
        scratch.run(&["init"]).await.ok();
        let mut ignored = Vec::new();
        for service in ["exchange", "onedrive"] {
            backup_ok(&sim, &scratch, service, &mut ignored).await;
            let bulk = change_tenant(&sim, &mut rng, 1000, service).await;
            sim.set_latency(LATENCY_MS).await;
            let took = backup_ok(&sim, &scratch, service, &mut ignored).await;
            sim.set_latency(0).await;
            remove_bulk(&sim, bulk).await;
            duration.insert(service, took);
        }
        eprintln!("uninterrupted round backups take {duration:?}");
    }
    // The calibration's small additions are part of the tenant now: back them up.
    for service in ["exchange", "onedrive"] {
        backup_ok(&sim, &env, service, &mut committed).await;
    }

    let mut interrupted = 0;
    let mut left_packs = 0;
    let mut left_snapshots = 0;
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let service: &'static str = if round % 2 == 0 {
            "exchange"
        } else {
            "onedrive"
        };
        let bulk = change_tenant(&sim, &mut rng, round, service).await;
        // A fifth beyond the estimate, as a round's bulk varies: a kill after the exit counts
        // as not interrupted.
        let span = duration[service].as_millis().max(1) as u64;
        let delay = Duration::from_millis(rng.range(0, span + span / 5));
        sim.set_latency(LATENCY_MS).await;
        let log = env.dir.path().join(format!("killed-{round}.log"));
        let outcome = backup_killed_after(&env, service, delay, &log).await;
        sim.set_latency(0).await;
        remove_bulk(&sim, bulk).await;
        let killed = outcome.killed;
        if killed {
            interrupted += 1;
            eprintln!(
                "round {round}: {service} backup killed after {} ms of a ~{span} ms backup, \
                 {} pack(s) uploaded, index {}; its last event: {}",
                delay.as_millis(),
                outcome.packs,
                if outcome.indexed {
                    "written"
                } else {
                    "not written"
                },
                outcome.last_event
            );
        } else {
            // It finished first: its run time is the better estimate for the next rounds.
            eprintln!(
                "round {round}: {service} backup finished in {} ms, before the kill at {} ms",
                outcome.ran.as_millis(),
                delay.as_millis()
            );
            duration.insert(service, outcome.ran);
        }
        delays.push(delay.as_millis() as f64 / span as f64);

        // 1. check is clean: packs the killed backup left unindexed are noted, not errors.
        let check = env.run(&["--json", "check"]).await;
        assert_eq!(check.code, 0, "check after the kill of round {round}");
        let report = check.json();
        assert_eq!(report["errors"], json!([]), "round {round}: {report}");
        let unindexed = report["unindexed_packs"].as_array().unwrap().len();
        let snapshots = report["snapshots_checked"].as_u64().unwrap() as usize;
        eprintln!(
            "round {round}: check clean; {snapshots} snapshot(s), {unindexed} pack(s) in no index (left by killed backups)"
        );
        if unindexed > left_packs {
            left_packs = unindexed;
        }
        // Snapshots beyond those of completed backups: committed by a killed one.
        left_snapshots = snapshots - committed.len() - (round + 1 - interrupted);

        // 2. Every snapshot committed before the kill restores byte for byte.
        for (k, snap) in committed.iter().enumerate() {
            assert_restores(&sim, &env, snap, &format!("R{round}-{k}")).await;
        }

        // 3. The next backup succeeds and stores the tenant as it is now.
        backup_ok(&sim, &env, service, &mut committed).await;
    }

    // The kills were spread over the backups, and most of them interrupted one.
    delays.sort_by(f64::total_cmp);
    eprintln!("kill points as fractions of the backup's duration: {delays:.2?}");
    eprintln!(
        "{interrupted} of {ROUNDS} kills interrupted a running backup; they left {left_packs} pack(s) in no index \
         and {left_snapshots} snapshot(s) committed by a backup killed before it exited"
    );
    assert!(
        interrupted >= ROUNDS * 2 / 3,
        "only {interrupted} of {ROUNDS} kills hit a running backup (seed {seed})"
    );

    // Finally every blob of every pack re-hashes, and the last snapshots restore once more.
    let check = env.run(&["--json", "check", "--read-data"]).await;
    assert_eq!(check.code, 0, "check --read-data at the end");
    assert_eq!(check.json()["errors"], json!([]));
    let last = committed.len() - 2;
    for (k, snap) in committed[last..].iter().enumerate() {
        assert_restores(&sim, &env, snap, &format!("Final-{k}")).await;
    }
}
