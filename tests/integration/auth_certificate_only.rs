//! Issue 4, authentication against the simulator's Entra ID fidelity: a certificate-only app
//! registration (no client secret) with the real binary, and a fresh client assertion (new
//! `jti`) for a token request retried after its answer was lost — the simulator refuses a
//! replayed `jti`, as Entra ID does
//! (<https://learn.microsoft.com/entra/identity-platform/certificate-credentials>).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::harness::{matrix_permissions, Env, CLIENT_ID, TENANT_ID};

const ADELE: &str = "adele.vance@contoso.onmicrosoft.com";

/// (certificate PEM, PKCS#8 private key PEM) of a fresh self-signed RSA-2048 certificate.
fn make_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["m365bk-test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The simulator binary with one app, [`CLIENT_ID`], registered with `cert_pem` only.
struct CertOnlySim {
    _child: Child,
    base: String,
    http: reqwest::Client,
}

impl CertOnlySim {
    async fn start(dir: &Path, corpus: &Path, cert_pem: &str) -> CertOnlySim {
        let roles: Vec<String> = matrix_permissions("exchange", &["discovery", "backup"])
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        let cfg = format!(
            "tenant_id = \"{TENANT_ID}\"\n[[apps]]\nclient_id = \"{CLIENT_ID}\"\n\
             roles = [{}]\ncertificates = [{cert_pem:?}]\n",
            roles.join(", ")
        );
        let cfg_path = dir.join("tenant.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let exe = Path::new(env!("CARGO_BIN_EXE_m365bk")).with_file_name("m365bk-tenant-sim");
        let mut child = Command::new(&exe)
            .arg("--corpus")
            .arg(corpus)
            .arg("--tenant-config")
            .arg(&cfg_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the simulator");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(120), lines.next_line())
            .await
            .expect("simulator printed its address within 120 s")
            .unwrap()
            .expect("simulator printed a line");
        let base = line
            .strip_prefix("listening on ")
            .expect("`listening on URL`")
            .trim()
            .to_string();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        CertOnlySim {
            _child: child,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }
}

/// Points the config's `[tenant]` at a certificate and key instead of a secret.
fn use_certificate(env: &Env, cert: &Path, key: &Path) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let line = format!("client_id = \"{CLIENT_ID}\"\n");
    let with_cert = format!(
        "{line}certificate_file = \"{}\"\nprivate_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&env.config, text.replacen(&line, &with_cert, 1)).unwrap();
}

fn token_entries(log: &[Value]) -> Vec<(u64, Value)> {
    log.iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .unwrap_or("")
                .ends_with("/oauth2/v2.0/token")
        })
        .map(|e| (e["status"].as_u64().unwrap(), e["fault"].clone()))
        .collect()
}

#[tokio::test]
async fn certificate_only_app_backs_up_and_a_lost_token_answer_is_retried_with_a_fresh_assertion() {
    let corpus = super::harness::corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate();
    let sim = CertOnlySim::start(tmp.path(), &corpus, &cert).await;

    // A client secret for an app that has none: refused (AADSTS7000215), and said so.
    let with_secret = Env::new(&sim.base);
    with_secret.run(&["init"]).await.ok();
    let run = with_secret
        .run(&["--json", "backup", "--service", "exchange", "--user", ADELE])
        .await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("7000215"), "{}", run.stderr);

    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();
    let cert_path = env.dir.path().join("app.crt");
    let key_path = env.dir.path().join("app.key");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    use_certificate(&env, &cert_path, &key_path);

    // The first token answer is cut after 10 bytes: the simulator has accepted (and
    // remembered) that assertion's jti, the client sees a broken answer and retries. Sending
    // the same assertion again would be refused as a replay; a fresh one gets the token.
    sim.call(
        Method::PUT,
        "/_sim/admin/faults",
        Some(json!([{"route": "token", "fault": {"kind": "reset", "after_bytes": 10}, "nth": 1}])),
    )
    .await;
    sim.call(Method::DELETE, "/_sim/requests", None).await;
    let run = env
        .run_env(
            &["--json", "backup", "--service", "exchange", "--user", ADELE],
            &[("M365BK_CLIENT_SECRET", None)],
        )
        .await
        .ok();
    assert!(
        run.json()["snapshots"][0]["id"].is_string(),
        "{}",
        run.stdout
    );
    let tokens = token_entries(
        sim.call(Method::GET, "/_sim/requests", None)
            .await
            .as_array()
            .unwrap(),
    );
    assert_eq!(
        tokens.first().map(|t| t.1.clone()),
        Some(json!("reset")),
        "{tokens:?}"
    );
    assert!(
        tokens.len() >= 2 && tokens.iter().all(|(status, _)| *status == 200),
        "a retried token request is answered 200, not 401 (a replayed jti): {tokens:?}"
    );
    let report = sim.call(Method::GET, "/_sim/admin/faults", None).await;
    assert_eq!(report["rules"][0]["injected"], 1, "{report}");
}
