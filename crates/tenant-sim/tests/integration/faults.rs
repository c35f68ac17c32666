//! Fault injection, latency and the throttling model: the wire shape of each fault, the
//! request log's `fault` field, the admin API's counters, and `[faults]` in the config.

use std::time::{Duration, Instant};

use m365bk_tenant_sim::{serve, SimOptions, TenantConfig};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

impl Env {
    async fn set_faults(&self, body: Value) {
        let r = self
            .http
            .put(self.url("/_sim/admin/faults"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 204, "{}", r.text().await.unwrap());
    }

    async fn faults(&self) -> Value {
        self.http
            .get(self.url("/_sim/admin/faults"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn faulted(log: &[Value]) -> Vec<(String, u64, String)> {
    log.iter()
        .filter(|e| !e["fault"].is_null())
        .map(|e| {
            (
                e["fault"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
                e["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn error_statuses_carry_graph_bodies_and_each_retry_after_form() {
    let env = start().await;
    let t = env.token(FULL).await;
    let folders = format!("/users/{ADELE}/mailFolders");
    env.set_faults(json!([
        {"path_contains": "mailFolders", "nth": 1, "fault": {"kind": "status", "status": 429, "retry_after": "2"}},
        {"path_contains": "mailFolders", "nth": 2, "fault": {"kind": "status", "status": 429, "retry_after": "0.2"}},
        {"path_contains": "mailFolders", "nth": 3, "fault": {"kind": "status", "status": 429, "retry_after_http_date_secs": 5}},
        {"path_contains": "mailFolders", "nth": 4, "fault": {"kind": "status", "status": 429}},
        {"path_contains": "mailFolders", "nth": 5, "fault": {"kind": "status", "status": 503, "retry_after": "1"}},
        {"path_contains": "mailFolders", "nth": 6, "fault": {"kind": "status", "status": 504}},
        {"path_contains": "mailFolders", "nth": 7, "fault": {"kind": "status", "status": 509, "code": "bandwidthLimitExceeded"}},
    ]))
    .await;
    env.clear_log().await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        let r = env.get(&t, &env.graph(&folders)).await;
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(r.headers().contains_key("request-id"));
        let body: Value = r.json().await.unwrap();
        seen.push((status, retry_after, body));
    }
    assert_eq!(seen[0].0, 429);
    assert_eq!(seen[0].1.as_deref(), Some("2"));
    assert_eq!(code(&seen[0].2), "TooManyRequests");
    assert!(seen[0].2["error"]["innerError"]["request-id"].is_string());
    assert_eq!(seen[1].1.as_deref(), Some("0.2"));
    let date = seen[2].1.as_deref().unwrap();
    assert!(
        date.ends_with(" GMT") && date.contains(", "),
        "HTTP-date: {date}"
    );
    assert_eq!(seen[3].0, 429);
    assert_eq!(seen[3].1, None, "no Retry-After");
    assert_eq!((seen[4].0, code(&seen[4].2)), (503, "serviceNotAvailable"));
    assert_eq!(seen[5].0, 504);
    assert_eq!(
        (seen[6].0, code(&seen[6].2)),
        (509, "bandwidthLimitExceeded")
    );
    assert_eq!(seen[7].0, 200, "the eighth request is not faulted");
    assert!(seen[7].2["value"].is_array());

    let log = env.log().await;
    let f = faulted(&log);
    assert_eq!(f.len(), 7, "{log:#?}");
    assert!(f.iter().all(|(k, _, _)| k == "status"));
    let statuses: Vec<u64> = f.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses, [429, 429, 429, 429, 503, 504, 509]);
    assert_eq!(log[0]["fault_rule"], 0);
    assert!(log[7]["fault"].is_null());

    let report = env.faults().await;
    for (i, rule) in report["rules"].as_array().unwrap().iter().enumerate() {
        assert_eq!(rule["injected"], 1, "rule {i}: {rule}");
        assert_eq!(rule["matched"], 8, "rule {i} counts every matching request");
    }
}

#[tokio::test]
async fn reset_cuts_the_connection_mid_body_and_truncate_sends_a_short_complete_body() {
    let env = start().await;
    let t = env.token(FULL).await;
    let big = format!("/users/{ADELE}/drive/root:/Documents/big.bin:/content");
    env.set_faults(json!([
        {"route": "download", "max_count": 1, "fault": {"kind": "reset", "after_bytes": 100000}},
        {"route": "graph-json", "path_contains": "/mailFolders", "max_count": 1, "fault": {"kind": "truncate"}},
    ]))
    .await;
    env.clear_log().await;
    let r = env.get(&t, &env.graph(&big)).await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = env.http.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big_file().len().to_string().as_str(),
        "the declared length stays"
    );
    let mut got = 0usize;
    let mut stream = r.bytes_stream();
    let mut broke = false;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "the body broke off");
    assert_eq!(got, 100000, "exactly after_bytes were delivered");
    // The next download is whole.
    let again = env.http.get(&location).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap().len(), big_file().len());

    let url = env.graph(&format!("/users/{ADELE}/mailFolders"));
    let whole = {
        // The first listing is truncated, the second whole.
        let cut = env.get(&t, &url).await;
        assert_eq!(cut.status(), 200);
        let declared: usize = cut.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = cut.bytes().await.unwrap();
        assert_eq!(body.len(), declared, "a complete HTTP message");
        assert!(
            serde_json::from_slice::<Value>(&body).is_err(),
            "truncated JSON"
        );
        let whole = env.get(&t, &url).await.bytes().await.unwrap();
        assert_eq!(body.len(), whole.len() / 2);
        whole
    };
    assert!(serde_json::from_slice::<Value>(&whole).is_ok());
    let f = faulted(&env.log().await);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].0, "reset");
    assert!(f[0].2.starts_with("/_download/"));
    assert_eq!((f[1].0.as_str(), f[1].1), ("truncate", 200));
}

#[tokio::test]
async fn expired_token_stays_expired_until_a_new_one_is_used() {
    let env = start().await;
    let t = env.token(FULL).await;
    let url = env.graph(&format!("/users/{ADELE}"));
    env.set_faults(json!([{"route": "graph", "nth": 2, "fault": {"kind": "token_expired"}}]))
        .await;
    env.clear_log().await;
    assert_eq!(env.get(&t, &url).await.status(), 200);
    let r = env.get(&t, &url).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "InvalidAuthenticationToken");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("token is expired"));
    assert_eq!(
        env.get(&t, &url).await.status(),
        401,
        "the old token stays expired"
    );
    let fresh = env.token(FULL).await;
    assert_eq!(env.get(&fresh, &url).await.status(), 200);
    let f = faulted(&env.log().await);
    assert_eq!(
        f.iter().map(|x| (x.0.as_str(), x.1)).collect::<Vec<_>>(),
        [("token_expired", 401), ("token_expired", 401)]
    );
}

#[tokio::test]
async fn lost_sync_state_is_a_410_with_microsofts_code_and_a_restart_location() {
    let env = start().await;
    let t = env.token(FULL).await;
    env.set_faults(json!([{"route": "delta", "fault": {"kind": "sync_state_lost"}}]))
        .await;
    // A first round (no token) is never refused.
    let drive_delta = env.graph(&format!("/users/{ADELE}/drive/root/delta"));
    let first = env.get_json(&t, &drive_delta).await;
    let link = first["@odata.deltaLink"]
        .as_str()
        .or(first["@odata.nextLink"].as_str())
        .unwrap()
        .to_string();
    let r = env.get(&t, &link).await;
    assert_eq!(r.status(), 410);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.ends_with("/root/delta") && !location.contains("token"),
        "{location}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "resyncRequired");
    assert_eq!(
        body["error"]["innerError"]["code"],
        "resyncChangesApplyDifferences"
    );
    // The Location restarts the enumeration.
    let restarted = env.get_json(&t, &location).await;
    assert!(restarted["value"].as_array().unwrap().len() >= 4);

    let mail_delta = env.graph(&format!("/users/{ADELE}/mailFolders/inbox/messages/delta"));
    let first = env.get_json(&t, &mail_delta).await;
    let link = first["@odata.nextLink"]
        .as_str()
        .or(first["@odata.deltaLink"].as_str())
        .unwrap()
        .to_string();
    let r = env.get(&t, &link).await;
    assert_eq!(r.status(), 410);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.ends_with("/messages/delta") && !location.contains("token"),
        "{location}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "SyncStateNotFound");
    // A calendarView round gets its window back in the Location.
    let view = env.graph(&format!(
        "/users/{ADELE}/calendarView/delta?startDateTime=2024-01-01T00:00:00Z&endDateTime=2025-01-01T00:00:00Z"
    ));
    let first = env.get_json(&t, &view).await;
    let link = first["@odata.deltaLink"].as_str().unwrap().to_string();
    let r = env.get(&t, &link).await;
    assert_eq!(r.status(), 410);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("/calendarView/delta?startDateTime=2024-01-01")
            && location.contains("endDateTime=2025-01-01")
            && !location.contains("token"),
        "{location}"
    );
    assert_eq!(env.get(&t, &location).await.status(), 200);
    let report = env.faults().await;
    assert_eq!(report["rules"][0]["injected"], 3);
    assert_eq!(
        report["rules"][0]["matched"], 3,
        "token-less rounds do not match"
    );
}

#[tokio::test]
async fn expired_download_url_answers_401_until_a_new_url_is_fetched() {
    let env = start().await;
    let t = env.token(FULL).await;
    let content = env.graph(&format!(
        "/users/{ADELE}/drive/root:/Documents/report.txt:/content"
    ));
    env.set_faults(
        json!([{"route": "download", "nth": 1, "fault": {"kind": "download_url_expired"}}]),
    )
    .await;
    env.clear_log().await;
    let first = env.get(&t, &content).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let r = env.http.get(&first).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "unauthenticated");
    assert_eq!(
        env.http.get(&first).send().await.unwrap().status(),
        401,
        "the expired URL stays expired"
    );
    // A new URL works.
    let second = env.get(&t, &content).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    let r = env.http.get(&second).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"quarterly report\n");

    env.set_faults(
        json!([{"route": "download", "fault": {"kind": "download_url_expired", "status": 403}}]),
    )
    .await;
    let third = env.get(&t, &content).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let r = env.http.get(&third).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let f = faulted(&env.log().await);
    assert_eq!(
        f.iter().map(|x| x.1).collect::<Vec<_>>(),
        [401, 401, 403],
        "{f:?}"
    );
}

#[tokio::test]
async fn latency_is_added_per_request_and_per_rule() {
    let env = start().await;
    let t = env.token(FULL).await;
    let url = env.graph(&format!("/users/{ADELE}"));
    env.set_faults(json!({"latency_ms": 150})).await;
    let started = Instant::now();
    assert_eq!(env.get(&t, &url).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    env.set_faults(
        json!({"rules": [{"path_contains": "/users/", "fault": {"kind": "latency", "ms": 200}}]}),
    )
    .await;
    env.clear_log().await;
    let started = Instant::now();
    assert_eq!(env.get(&t, &url).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let log = env.log().await;
    assert_eq!(log[0]["fault"], "latency");
    assert_eq!(log[0]["status"], 200);
}

#[tokio::test]
async fn outlook_limits_mailbox_concurrency_and_request_rate() {
    let env = start().await;
    let t = env.token(FULL).await;
    env.set_faults(json!({
        "latency_ms": 300,
        "throttling": {"outlook": {"concurrency_retry_after": "0.5"}}
    }))
    .await;
    env.clear_log().await;
    let url = env.graph(&format!("/users/{ADELE}/mailFolders"));
    let calls = (0..6).map(|_| env.get(&t, &url));
    let answers = futures::future::join_all(calls).await;
    let mut throttled = 0;
    for r in answers {
        if r.status() == 429 {
            throttled += 1;
            assert_eq!(r.headers()["retry-after"], "0.5");
            let body: Value = r.json().await.unwrap();
            assert_eq!(code(&body), "ApplicationThrottled");
            assert_eq!(
                body["error"]["message"],
                "Application is over its MailboxConcurrency limit."
            );
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert_eq!(
        throttled, 2,
        "4 concurrent requests per mailbox are allowed"
    );
    // Other mailboxes and other workloads are not affected.
    assert_eq!(
        env.get(&t, &env.graph("/users/bob@contoso.test/mailFolders"))
            .await
            .status(),
        200
    );
    let log = env.log().await;
    assert_eq!(
        log.iter()
            .filter(|e| e["fault"] == "throttle_outlook_concurrency")
            .count(),
        2
    );

    env.set_faults(
        json!({"throttling": {"outlook": {"requests_per_window": 3, "window_secs": 600}}}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(env.get(&t, &url).await.status(), 200);
    }
    let r = env.get(&t, &url).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Application is over its RequestRate limit."
    );
    assert_eq!(env.faults().await["throttled"]["outlook_rate"], 1);
}

#[tokio::test]
async fn onedrive_resource_units_send_ratelimit_headers_then_429() {
    let env = start().await;
    let t = env.token(FULL).await;
    env.set_faults(json!({"throttling": {"onedrive": {"resource_units_per_minute": 10}}}))
        .await;
    let children = env.graph(&format!("/users/{ADELE}/drive/root/children"));
    let item = env.graph(&format!("/users/{ADELE}/drive/root:/readme.md"));
    // 2 + 2 + 2 RU: below 80 % no headers.
    for _ in 0..3 {
        let r = env.get(&t, &children).await;
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("ratelimit-remaining"));
    }
    // 8 of 10: the headers appear.
    let r = env.get(&t, &children).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-limit"], "10");
    assert_eq!(r.headers()["ratelimit-remaining"], "2");
    assert!(r.headers().contains_key("ratelimit-reset"));
    // A single item costs 1.
    assert_eq!(env.get(&t, &item).await.status(), 200);
    let r = env.get(&t, &children).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(r.headers()["ratelimit-remaining"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "activityLimitReached");
    // Mail is another workload.
    assert_eq!(
        env.get(&t, &env.graph(&format!("/users/{ADELE}/mailFolders")))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn probability_rules_are_reproducible_with_a_seed() {
    let run = || async {
        let env = start().await;
        let t = env.token(FULL).await;
        env.set_faults(json!({"seed": 42, "rules": [{"route": "graph", "probability": 0.5, "fault": {"kind": "status", "status": 503}}]}))
            .await;
        let url = env.graph(&format!("/users/{ADELE}"));
        let mut out = Vec::new();
        for _ in 0..16 {
            out.push(env.get(&t, &url).await.status().as_u16());
        }
        out
    };
    let a = run().await;
    assert_eq!(a, run().await);
    let failures = a.iter().filter(|s| **s == 503).count();
    assert!((2..=14).contains(&failures), "{a:?}");
}

#[tokio::test]
async fn faults_from_the_config_file_and_bad_rules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    build_corpus(dir.path());
    let toml = format!(
        "{}\n[faults]\n[[faults.rules]]\nroute = \"token\"\nnth = 1\nfault = {{ kind = \"status\", status = 503, retry_after = \"0.1\" }}\n",
        config_toml()
    );
    let tenant = TenantConfig::from_toml(&toml).unwrap();
    let sim = serve(SimOptions::new(dir.path(), tenant)).await.unwrap();
    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", FULL),
        ("client_secret", SECRET),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let r = http.post(sim.token_url()).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "0.1");
    let r = http.post(sim.token_url()).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let bad = http
        .request(Method::PUT, format!("{}/_sim/admin/faults", sim.base_url))
        .json(&json!([{"fault": {"kind": "status", "status": 200}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("rules[0].fault.status"));
    let bad = http
        .request(Method::PUT, format!("{}/_sim/admin/faults", sim.base_url))
        .json(&json!([{"fault": {"kind": "explode"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let cleared = http
        .delete(format!("{}/_sim/admin/faults", sim.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    let report: Value = http
        .get(format!("{}/_sim/admin/faults", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["rules"], json!([]));
    sim.stop().await;
}
