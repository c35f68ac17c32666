//! Issue 4, authentication: certificate credentials (client assertions signed PS256 with
//! `x5t#S256`, or RS256 with `x5t`) through the real binary against the simulator, each bad
//! case with the operator error that names the fix; and the simulator's checks of the
//! assertion itself (signature, thumbprint, `iss`/`sub`, `aud`, `nbf`/`exp`), answered with the
//! `AADSTS` codes Entra ID uses.
//!
//! Test certificates are self-signed RSA-2048 certificates made at test time with rcgen.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use m365bk_graph::{AssertionAlgorithm, CertificateCredential, CLIENT_ASSERTION_TYPE};
use reqwest::Method;
use serde_json::Value;

use super::harness::{matrix_permissions, Env, Run, Sim, CLIENT_ID, TENANT_ID};

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

fn write_private(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Rewrites the test config's `[tenant]` section to use a certificate instead of a secret.
fn use_certificate(env: &Env, cert: &Path, key: Option<&Path>, alg: &str) {
    let text: String = std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .filter(|l| {
            !["certificate_file", "private_key_file", "assertion_alg"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let mut lines = format!(
        "client_id = \"{CLIENT_ID}\"\ncertificate_file = \"{}\"\nassertion_alg = \"{alg}\"\n",
        cert.display()
    );
    if let Some(key) = key {
        lines.push_str(&format!("private_key_file = \"{}\"\n", key.display()));
    }
    let start = text.find("client_id = ").unwrap();
    let end = start + text[start..].find('\n').unwrap() + 1;
    let text = format!("{}{}{}", &text[..start], lines, &text[end..]);
    std::fs::write(&env.config, text).unwrap();
}

/// Runs without any client secret (no `$M365BK_CLIENT_SECRET`, no credentials directory).
async fn run_without_secret(env: &Env, args: &[&str]) -> Run {
    env.run_env(args, &[("M365BK_CLIENT_SECRET", None)]).await
}

async fn register(sim: &Sim, cert_pem: &str) -> Value {
    sim.admin(
        Method::POST,
        &format!("apps/{CLIENT_ID}/certificates"),
        cert_pem.as_bytes().to_vec(),
    )
    .await
}

fn roles() -> Vec<String> {
    matrix_permissions("exchange", &["discovery", "backup"])
}

fn token_statuses(log: &[Value]) -> Vec<u64> {
    log.iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .unwrap_or("")
                .ends_with("/oauth2/v2.0/token")
        })
        .map(|e| e["status"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn certificate_credentials_ps256_and_rs256_back_up_and_bad_cases_name_the_fix() {
    let corpus = super::harness::corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &roles()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();

    let (cert, key) = make_certificate();
    let thumbprints = register(&sim, &cert).await;
    let cert_path = env.dir.path().join("app.crt");
    let key_path = env.dir.path().join("app.key");
    std::fs::write(&cert_path, &cert).unwrap();
    write_private(&key_path, &key, 0o600);

    // PS256 with x5t#S256, the default, from separate certificate and key files.
    use_certificate(&env, &cert_path, Some(&key_path), "PS256");
    sim.clear_requests().await;
    let run = run_without_secret(
        &env,
        &["--json", "backup", "--service", "exchange", "--user", ADELE],
    )
    .await
    .ok();
    assert!(
        run.json()["snapshots"][0]["id"].is_string(),
        "{}",
        run.stdout
    );
    let statuses = token_statuses(&sim.requests().await);
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200),
        "{statuses:?}"
    );

    // RS256 with x5t, certificate and key in one file (mode 0600).
    let both = env.dir.path().join("app.pem");
    write_private(&both, &format!("{cert}{key}"), 0o600);
    use_certificate(&env, &both, None, "RS256");
    sim.clear_requests().await;
    let run = run_without_secret(
        &env,
        &["--json", "backup", "--service", "exchange", "--user", ADELE],
    )
    .await
    .ok();
    assert!(
        run.json()["snapshots"][0]["id"].is_string(),
        "{}",
        run.stdout
    );
    assert!(token_statuses(&sim.requests().await)
        .iter()
        .all(|s| *s == 200));
    // The admin API's thumbprints are the ones m365bk computes.
    let c = CertificateCredential::from_pem(
        TENANT_ID,
        CLIENT_ID,
        cert.as_bytes(),
        key.as_bytes(),
        AssertionAlgorithm::Rs256,
    )
    .unwrap();
    assert_eq!(thumbprints["x5t"], c.thumbprint_sha1());
    assert_eq!(thumbprints["x5t#S256"], c.thumbprint_sha256());

    let backup = ["backup", "--service", "exchange", "--user", ADELE];

    // A private key other users can read is refused before anything is sent.
    write_private(&key_path, &key, 0o640);
    use_certificate(&env, &cert_path, Some(&key_path), "PS256");
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("chmod 600") && run.stderr.contains("app.key"),
        "{}",
        run.stderr
    );
    write_private(&key_path, &key, 0o600);

    // A key that is not the certificate's: refused locally, naming the mismatch.
    let (_, other_key) = make_certificate();
    let other_key_path = env.dir.path().join("other.key");
    write_private(&other_key_path, &other_key, 0o600);
    use_certificate(&env, &cert_path, Some(&other_key_path), "PS256");
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("does not belong to the certificate"),
        "{}",
        run.stderr
    );

    // The certificate file holds no key and no key file is given.
    use_certificate(&env, &cert_path, None, "PS256");
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("tenant.private_key_file"),
        "{}",
        run.stderr
    );

    // An unknown algorithm is a config error naming both choices.
    use_certificate(&env, &cert_path, Some(&key_path), "ES256");
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("PS256") && run.stderr.contains("RS256"),
        "{}",
        run.stderr
    );

    // A certificate that is not registered on the app: AADSTS700027, says to upload it.
    let (new_cert, new_key) = make_certificate();
    let new_cert_path = env.dir.path().join("new.crt");
    let new_key_path = env.dir.path().join("new.key");
    std::fs::write(&new_cert_path, &new_cert).unwrap();
    write_private(&new_key_path, &new_key, 0o600);
    use_certificate(&env, &new_cert_path, Some(&new_key_path), "PS256");
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 77, "{}", run.stderr);
    assert!(run.stderr.contains("AADSTS700027"), "{}", run.stderr);
    assert!(
        run.stderr.contains("Certificates & secrets"),
        "{}",
        run.stderr
    );

    // This host's clock an hour behind the authority's: AADSTS700024, says to fix the clock.
    use_certificate(&env, &cert_path, Some(&key_path), "PS256");
    sim.admin(Method::PUT, "clock-offset", b"3600".to_vec())
        .await;
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 77, "{}", run.stderr);
    assert!(run.stderr.contains("AADSTS700024"), "{}", run.stderr);
    assert!(run.stderr.contains("clock"), "{}", run.stderr);
    sim.admin(Method::PUT, "clock-offset", b"0".to_vec()).await;

    // Certificate and secret both configured: one must go.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace(
            "certificate_file",
            "client_secret_file = \"s\"\ncertificate_file",
        ),
    )
    .unwrap();
    let run = run_without_secret(&env, &backup).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(run.stderr.contains("both set"), "{}", run.stderr);
    std::fs::write(&env.config, text).unwrap();

    // systemd credentials: client-certificate + client-private-key in $CREDENTIALS_DIRECTORY.
    let creds = env.dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client-certificate"), &cert).unwrap();
    write_private(&creds.join("client-private-key"), &key, 0o400);
    let text = std::fs::read_to_string(&env.config).unwrap();
    let no_cert: String = text
        .lines()
        .filter(|l| !l.starts_with("certificate_file") && !l.starts_with("private_key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env.config, no_cert).unwrap();
    sim.clear_requests().await;
    let creds_dir = creds.to_string_lossy().into_owned();
    let run = env
        .run_env(
            &["--json", "backup", "--service", "exchange", "--user", ADELE],
            &[
                ("M365BK_CLIENT_SECRET", None),
                ("CREDENTIALS_DIRECTORY", Some(&creds_dir)),
            ],
        )
        .await
        .ok();
    assert!(
        run.json()["snapshots"][0]["id"].is_string(),
        "{}",
        run.stdout
    );
}

/// POSTs a hand-made assertion to the simulator's token endpoint; (status, AADSTS code).
async fn post_assertion(sim: &Sim, client_id: &str, assertion: &str) -> (u16, u64) {
    let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", sim.base);
    let r = reqwest::Client::new()
        .post(&url)
        .form(&[
            ("client_id", client_id),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error_codes"][0].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn simulator_checks_assertions_like_entra_id() {
    let corpus = super::harness::corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &roles()).await;
    let (cert, key) = make_certificate();
    register(&sim, &cert).await;
    let endpoint = format!("{}/{TENANT_ID}/oauth2/v2.0/token", sim.base);
    let now = SystemTime::now();
    let cred = |client_id: &str, alg| {
        CertificateCredential::from_pem(TENANT_ID, client_id, cert.as_bytes(), key.as_bytes(), alg)
            .unwrap()
    };

    for alg in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
        let good = cred(CLIENT_ID, alg).assertion(&endpoint, now).unwrap();
        assert_eq!(post_assertion(&sim, CLIENT_ID, &good).await.0, 200, "{alg}");
    }
    let good = cred(CLIENT_ID, AssertionAlgorithm::Ps256)
        .assertion(&endpoint, now)
        .unwrap();

    // Wrong signature: the header and claims of a good assertion, another key's signature.
    let (other_cert, other_key) = make_certificate();
    let other = CertificateCredential::from_pem(
        TENANT_ID,
        CLIENT_ID,
        other_cert.as_bytes(),
        other_key.as_bytes(),
        AssertionAlgorithm::Ps256,
    )
    .unwrap()
    .assertion(&endpoint, now)
    .unwrap();
    let (head, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", other.rsplit_once('.').unwrap().1);
    assert_eq!(
        post_assertion(&sim, CLIENT_ID, &forged).await,
        (401, 700027)
    );
    // Unknown thumbprint (a certificate never registered).
    assert_eq!(post_assertion(&sim, CLIENT_ID, &other).await, (401, 700027));
    // Expired an hour ago; and not valid for another hour.
    let old = cred(CLIENT_ID, AssertionAlgorithm::Ps256)
        .assertion(&endpoint, now - Duration::from_secs(3600))
        .unwrap();
    assert_eq!(post_assertion(&sim, CLIENT_ID, &old).await, (401, 700024));
    let future = cred(CLIENT_ID, AssertionAlgorithm::Rs256)
        .assertion(&endpoint, now + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        post_assertion(&sim, CLIENT_ID, &future).await,
        (401, 700024)
    );
    // iss/sub name another application than client_id.
    let stranger = cred(
        "0b9e7c1a-1111-4222-8333-944455556666",
        AssertionAlgorithm::Ps256,
    )
    .assertion(&endpoint, now)
    .unwrap();
    assert_eq!(
        post_assertion(&sim, CLIENT_ID, &stranger).await,
        (401, 700021)
    );
    // aud is another token endpoint.
    let elsewhere = cred(CLIENT_ID, AssertionAlgorithm::Ps256)
        .assertion(
            &format!("https://login.microsoftonline.com/{TENANT_ID}/oauth2/v2.0/token"),
            now,
        )
        .unwrap();
    assert_eq!(
        post_assertion(&sim, CLIENT_ID, &elsewhere).await,
        (401, 700023)
    );
    // Not a JWT at all.
    assert_eq!(post_assertion(&sim, CLIENT_ID, "abc").await, (400, 50027));
    // After the certificate is removed from the app, the good assertion is refused too.
    sim.admin(
        Method::DELETE,
        &format!("apps/{CLIENT_ID}/certificates"),
        Vec::new(),
    )
    .await;
    assert_eq!(post_assertion(&sim, CLIENT_ID, &good).await, (401, 700027));
}
