//! JSON batching (`$batch`) between m365bk-graph and the real simulator binary over HTTP on
//! loopback: a request set split into batches of 20, `dependsOn` with 424 for the dependant of
//! a failed request, an inner 429 sent again (with its 424 dependant) after its own
//! `Retry-After`, the simulator's 400 for 21 requests, and a mailbox backup that reads its
//! folder lists and settings in batches instead of one request each.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use m365bk_graph::{
    Audience, BatchRequest, ClientSecretCredential, Endpoints, GraphClient, HttpClient,
    HttpOptions, TokenProvider,
};
use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{matrix_permissions, pct_decode, Env, Sim, CLIENT_ID, SECRET, TENANT_ID};

const UPN: &str = "batch.user@contoso.onmicrosoft.com";

/// One mailbox with nested folders: Inbox/Projects/{Alpha,Beta}, Archive/2023.
fn write_corpus(dir: &Path) {
    let folders = [
        "Inbox",
        "Inbox/Projects",
        "Inbox/Projects/Alpha",
        "Inbox/Projects/Beta",
        "Archive",
        "Archive/2023",
    ];
    for (i, folder) in folders.iter().enumerate() {
        let d = dir.join("users").join(UPN).join("mail").join(folder);
        std::fs::create_dir_all(&d).unwrap();
        let eml = format!(
            "From: Sender <sender@fabrikam.example>\r\nTo: {UPN}\r\nSubject: Message in {folder}\r\nDate: Mon, 1 Jan 2024 10:{i:02}:00 +0000\r\nMessage-ID: <{i}@fabrikam.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody {i}.\r\n"
        );
        std::fs::write(d.join("0001.eml"), eml).unwrap();
    }
}

async fn start(dir: &Path) -> Sim {
    let corpus = dir.join("corpus");
    write_corpus(&corpus);
    let roles = matrix_permissions("exchange", &["discovery", "backup"]);
    Sim::start(dir, &corpus, &roles).await
}

fn client(sim: &Sim) -> GraphClient {
    let http = HttpClient::new(HttpOptions::default()).unwrap();
    let endpoints = Endpoints {
        authority: url::Url::parse(&sim.base).unwrap(),
        graph_base: url::Url::parse(&format!("{}/v1.0", sim.base)).unwrap(),
    };
    let credential = ClientSecretCredential {
        tenant_id: TENANT_ID.into(),
        client_id: CLIENT_ID.into(),
        secret: SECRET.into(),
    };
    let tokens = Arc::new(TokenProvider::new(
        http.clone(),
        endpoints.clone(),
        credential,
    ));
    GraphClient::new(http, tokens, endpoints.graph_base)
}

fn is_batch_post(e: &Value) -> bool {
    e["method"] == "POST" && e["path"] == "/v1.0/$batch"
}

fn in_batch(e: &Value) -> bool {
    e["batch_request_id"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_six_reads_go_in_three_batches_and_an_inner_404_is_an_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(tmp.path()).await;
    let graph = client(&sim);
    let mut requests: Vec<BatchRequest> = (0..45)
        .map(|i| BatchRequest::get(format!("r{i}"), format!("/users/{UPN}/mailFolders/inbox")))
        .collect();
    requests.push(BatchRequest::get(
        "missing",
        format!("/users/{UPN}/mailFolders/no-such-folder"),
    ));
    sim.clear_requests().await;
    let answers = graph.batch(requests).await.unwrap();

    assert_eq!(answers.len(), 46);
    for (i, a) in answers.iter().take(45).enumerate() {
        assert_eq!(a.id, format!("r{i}"), "answers come in request order");
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.attempts, 1);
        let folder: Value = a.json().unwrap();
        assert_eq!(folder["displayName"], "Inbox");
    }
    let missing = &answers[45];
    assert_eq!(missing.status, 404);
    let err = missing.json::<Value>().unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("no-such-folder"), "{err}");

    let log = sim.requests().await;
    let posts = log.iter().filter(|e| is_batch_post(e)).count();
    let inner = log.iter().filter(|e| in_batch(e)).count();
    assert_eq!(
        posts, 3,
        "46 requests in batches of at most 20: 20 + 20 + 6"
    );
    assert_eq!(inner, 46, "every inner request ran once through the router");
    assert_eq!(
        log.iter()
            .filter(|e| !in_batch(e)
                && !is_batch_post(e)
                && e["path"].as_str().unwrap().starts_with("/v1.0/"))
            .count(),
        0,
        "no Graph request went alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dependant_of_a_failed_request_gets_424_and_is_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(tmp.path()).await;
    let graph = client(&sim);
    sim.clear_requests().await;
    let answers = graph
        .batch(vec![
            BatchRequest::get("first", format!("/users/{UPN}/mailFolders/no-such-folder")),
            BatchRequest::get("dependant", format!("/users/{UPN}/mailFolders/inbox"))
                .depends_on("first"),
            BatchRequest::get("independent", format!("/users/{UPN}/mailFolders/inbox")),
        ])
        .await
        .unwrap();
    let status: Vec<(&str, u16)> = answers.iter().map(|a| (a.id.as_str(), a.status)).collect();
    assert_eq!(
        status,
        vec![("first", 404), ("dependant", 424), ("independent", 200)]
    );
    assert_eq!(answers[1].json::<Value>().unwrap_err().status(), Some(424));
    let log = sim.requests().await;
    let ran: Vec<&str> = log
        .iter()
        .filter_map(|e| e["batch_request_id"].as_str())
        .collect();
    assert!(!ran.contains(&"dependant"), "the dependant ran: {ran:?}");
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert_eq!(log.iter().filter(|e| is_batch_post(e)).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_429_is_sent_again_with_its_dependant_after_its_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(tmp.path()).await;
    let graph = client(&sim);
    // The first mailboxSettings request, wherever it is sent from, answers 429 with
    // `Retry-After: 1.5`.
    let faults = json!({
        "rules": [{
            "path_contains": "/mailboxSettings",
            "fault": {"kind": "status", "status": 429, "retry_after": "1.5"},
            "nth": 1
        }]
    });
    sim.admin(Method::PUT, "faults", faults.to_string().into_bytes())
        .await;
    sim.clear_requests().await;
    let started = Instant::now();
    let answers = graph
        .batch(vec![
            BatchRequest::get("settings", format!("/users/{UPN}/mailboxSettings")),
            BatchRequest::get(
                "children",
                format!("/users/{UPN}/mailFolders/inbox/childFolders"),
            )
            .depends_on("settings"),
            BatchRequest::get("inbox", format!("/users/{UPN}/mailFolders/inbox")),
        ])
        .await
        .unwrap();
    let elapsed = started.elapsed();

    let by_id = |id: &str| answers.iter().find(|a| a.id == id).unwrap();
    assert_eq!(by_id("settings").status, 200, "{:?}", by_id("settings"));
    assert_eq!(by_id("settings").attempts, 2);
    assert_eq!(by_id("children").status, 200);
    assert_eq!(
        by_id("children").attempts,
        2,
        "the 424 went again with its dependency"
    );
    assert_eq!(
        by_id("inbox").attempts,
        1,
        "the request that succeeded was not sent again"
    );
    assert!(by_id("settings").waited >= Duration::from_millis(1500));
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    let children: Vec<Value> = graph.list_from_batch(by_id("children")).await.unwrap();
    assert!(children.iter().any(|c| c["displayName"] == "Projects"));

    let log = sim.requests().await;
    let posts: Vec<&Value> = log.iter().filter(|e| is_batch_post(e)).collect();
    assert_eq!(
        posts.len(),
        2,
        "one batch, then one retry of the throttled part"
    );
    let gap = posts[1]["at_ms"].as_u64().unwrap() - posts[0]["at_ms"].as_u64().unwrap();
    assert!(gap >= 1500, "the retry came {gap} ms after the first batch");
    let sent = |id: &str| {
        log.iter()
            .filter(|e| e["batch_request_id"] == id)
            .map(|e| e["status"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(sent("settings"), vec![429, 200]);
    assert_eq!(
        sent("children"),
        vec![200],
        "not run while its dependency was throttled"
    );
    assert_eq!(sent("inbox"), vec![200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_refuses_a_batch_of_21_requests_with_400() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(tmp.path()).await;
    let graph = client(&sim);
    let token = graph.tokens().token(&Audience::Graph).await.unwrap();
    let requests: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{UPN}/mailboxSettings")}))
        .collect();
    sim.clear_requests().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1.0/$batch", sim.base))
        .bearer_auth(token.secret())
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BadRequest");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 20"),
        "{body}"
    );
    let log = sim.requests().await;
    assert_eq!(log.iter().filter(|e| in_batch(e)).count(), 0, "nothing ran");
}

/// Graph round trips a mailbox backup makes, and the requests they carried.
struct Trips {
    round_trips: usize,
    batched: usize,
    posts: usize,
}

fn graph_trips(log: &[Value]) -> Trips {
    let graph = |e: &&Value| e["path"].as_str().unwrap_or("").starts_with("/v1.0/");
    Trips {
        round_trips: log.iter().filter(graph).filter(|e| !in_batch(e)).count(),
        batched: log.iter().filter(graph).filter(|e| in_batch(e)).count(),
        posts: log.iter().filter(|e| is_batch_post(e)).count(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_backup_reads_folder_lists_and_settings_in_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(tmp.path()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();
    sim.clear_requests().await;
    env.run(&["--json", "backup", "--service", "exchange", "--user", UPN])
        .await
        .ok();
    let log = sim.requests().await;
    let trips = graph_trips(&log);

    // The first reads and every childFolders listing went inside a batch.
    let alone = |needle: &str| {
        log.iter()
            .filter(|e| !in_batch(e))
            .filter(|e| pct_decode(e["path"].as_str().unwrap()).contains(needle))
            .count()
    };
    for needle in [
        "/mailFolders?",
        "/childFolders",
        "/contactFolders?",
        "/contacts?",
        "/mailboxSettings",
    ] {
        assert_eq!(alone(needle), 0, "{needle} was sent on its own");
    }
    let children_batched = log
        .iter()
        .filter(|e| in_batch(e) && e["path"].as_str().unwrap().contains("/childFolders"))
        .count();
    // Folders with children: Inbox, Projects, Archive (and whatever else the simulator's
    // well-known folders hold).
    assert!(
        children_batched >= 3,
        "{children_batched} childFolders reads"
    );
    // Before batching each inner request was a round trip of its own.
    let before = trips.round_trips - trips.posts + trips.batched;
    eprintln!(
        "mailbox backup: {} Graph round trips ({} batches carrying {} requests); {before} without batching",
        trips.round_trips, trips.posts, trips.batched
    );
    assert!(trips.posts >= 2, "first reads, then the folder levels");
    assert!(
        trips.round_trips + 3 <= before,
        "{} round trips with batching, {before} without",
        trips.round_trips
    );
    // Folder levels: top level (one batch with the first reads), then one batch per level that
    // has children (Inbox and Archive's children, then Projects' children).
    assert_eq!(
        trips.posts, 3,
        "one batch for the first reads and one per folder level with children"
    );
}
