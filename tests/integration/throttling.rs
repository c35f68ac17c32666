//! Microsoft's per-workload limits during a real backup: several mailboxes backed up at once
//! against the simulator's throttling model with tight budgets and a 429 on one mailbox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{matrix_permissions, pct_decode, Env, Sim};

const USERS: [&str; 4] = [
    "ada.lovelace@contoso.onmicrosoft.com",
    "alan.turing@contoso.onmicrosoft.com",
    "grace.hopper@contoso.onmicrosoft.com",
    "edsger.dijkstra@contoso.onmicrosoft.com",
];
const MESSAGES_PER_USER: usize = 36;
/// The `Retry-After` of the injected 429, in seconds.
const PAUSE_SECS: u64 = 2;

/// A small generated corpus: four mailboxes, two folders each, small distinct messages.
fn write_corpus(dir: &Path) {
    for (u, upn) in USERS.iter().enumerate() {
        for i in 0..MESSAGES_PER_USER {
            let folder = if i % 3 == 0 { "Archive" } else { "Inbox" };
            let d = dir.join("users").join(upn).join("mail").join(folder);
            std::fs::create_dir_all(&d).unwrap();
            let eml = format!(
                "From: Sender {i} <sender{i}@fabrikam.example>\r\nTo: {upn}\r\nSubject: Message {i} of user {u}\r\nDate: Mon, 1 Jan 2024 10:{:02}:00 +0000\r\nMessage-ID: <{u}.{i}@fabrikam.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody of message {i} for {upn}.\r\n",
                i % 60
            );
            std::fs::write(d.join(format!("{i:04}.eml")), eml).unwrap();
        }
    }
}

fn mailbox_of(path: &str) -> Option<String> {
    let rest = pct_decode(path);
    let rest = rest.strip_prefix("/v1.0/users/")?;
    let (user, tail) = rest.split_once('/')?;
    let resource = tail.split(['/', '?']).next()?.to_ascii_lowercase();
    matches!(
        resource.as_str(),
        "messages"
            | "mailfolders"
            | "contacts"
            | "contactfolders"
            | "calendarview"
            | "mailboxsettings"
    )
    .then(|| user.to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_backed_up_at_once_keep_to_outlook_limits_and_a_429_fences_one_mailbox_only() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    write_corpus(&corpus);
    let roles = matrix_permissions("exchange", &["discovery", "backup"]);
    let sim = Sim::start(tmp.path(), &corpus, &roles).await;
    // Microsoft's 4 concurrent requests per mailbox, a tight request budget (30 per 3 s per
    // mailbox instead of 10,000 per 10 minutes), 20 ms per request, and one 429 with
    // `Retry-After: 2` on the first message download.
    let faults = json!({
        "latency_ms": 20,
        "rules": [{
            "route": "$value",
            "fault": {"kind": "status", "status": 429, "retry_after": PAUSE_SECS.to_string()},
            "nth": 1
        }],
        "throttling": {"outlook": {"concurrent_requests": 4, "requests_per_window": 30, "window_secs": 3}}
    });
    sim.admin(Method::PUT, "faults", faults.to_string().into_bytes())
        .await;
    let env = Env::new(&sim.base);
    // The client keeps the same budget; each worker would run 8 downloads per mailbox, so the
    // client's per-mailbox limit of 4 is what keeps it inside Microsoft's.
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(
        "\n[backup]\nconcurrency = 8\nparallel_resources = 4\n\n[throttling]\noutlook_concurrent_requests = 4\noutlook_requests_per_window = 30\noutlook_window_secs = 3\n",
    );
    std::fs::write(&env.config, config).unwrap();
    env.run(&["init"]).await.ok();
    let mut args = vec!["--json", "backup", "--service", "exchange"];
    for u in USERS {
        args.extend(["--user", u]);
    }
    let summary = env.run(&args).await.ok().json();
    let report = sim.admin(Method::GET, "faults", Vec::new()).await;
    let log = sim.requests().await;

    // 1. Never more than 4 requests in flight per mailbox; never a 429 of the model.
    let mailboxes = report["outlook_mailboxes"].as_object().unwrap();
    assert_eq!(mailboxes.len(), USERS.len(), "{report:#}");
    for (mailbox, c) in mailboxes {
        let peak = c["peak_in_flight"].as_u64().unwrap();
        assert!(peak <= 4, "{mailbox}: {peak} requests in flight at once");
        assert_eq!(
            c["throttled"], 0,
            "{mailbox} was throttled by the model: {c}"
        );
    }
    assert!(
        report["throttled"]["outlook_peak_in_flight"]
            .as_u64()
            .unwrap()
            >= 2,
        "the backup ran requests to one mailbox concurrently: {report:#}"
    );
    assert!(log
        .iter()
        .all(|e| !e["fault"].as_str().unwrap_or("").starts_with("throttle_")));

    // 2. The 429 fenced its mailbox for Retry-After, and only that mailbox.
    let throttled: Vec<&Value> = log.iter().filter(|e| e["status"] == 429).collect();
    assert_eq!(throttled.len(), 1, "exactly the injected 429");
    let t429 = throttled[0]["at_ms"].as_u64().unwrap();
    let victim = mailbox_of(throttled[0]["path"].as_str().unwrap()).unwrap();
    let fence_end = t429 + PAUSE_SECS * 1000;
    let during: Vec<(String, u64)> = log
        .iter()
        .filter(|e| e["seq"].as_u64() > throttled[0]["seq"].as_u64())
        .filter_map(|e| {
            let at = e["at_ms"].as_u64().unwrap();
            let m = mailbox_of(e["path"].as_str().unwrap())?;
            // 100 ms for the 429 to reach the client and set the fence.
            (at > t429 + 100 && at < fence_end).then_some((m, at))
        })
        .collect();
    assert!(
        during.iter().all(|(m, _)| *m != victim),
        "the throttled mailbox {victim} sent requests while fenced: {during:?}"
    );
    let others: BTreeSet<&String> = during.iter().map(|(m, _)| m).collect();
    assert!(
        !others.is_empty(),
        "other mailboxes went on while {victim} was fenced"
    );
    assert!(
        log.iter().any(|e| {
            e["at_ms"].as_u64().unwrap() >= fence_end
                && mailbox_of(e["path"].as_str().unwrap()).as_deref() == Some(victim.as_str())
        }),
        "the fenced mailbox resumed after Retry-After"
    );

    // 3. Every message of every mailbox is in its snapshot.
    let snapshots = summary["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), USERS.len(), "{summary:#}");
    assert_eq!(summary["outcome"], "ok", "{summary:#}");
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for s in snapshots {
        let id = s["id"].as_str().unwrap();
        let items = env.run(&["--json", "ls", id]).await.ok().json();
        let messages = items
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "message" && i["size"].as_u64() > Some(0))
            .count();
        stored.insert(s["resource"].as_str().unwrap().to_string(), messages);
    }
    for upn in USERS {
        let export = sim.export(upn).await;
        let truth = export["mail"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e.get("folder").and_then(Value::as_bool) != Some(true))
            .count();
        assert_eq!(truth, MESSAGES_PER_USER);
        assert_eq!(stored.get(upn), Some(&truth), "{upn}: {stored:?}");
    }
    env.run(&["check", "--read-data"]).await.ok();
}
