//! Certificate-only app registrations and client-assertion replay, against Entra ID's
//! documented behaviour (<https://learn.microsoft.com/entra/identity-platform/certificate-credentials>,
//! <https://learn.microsoft.com/entra/identity-platform/reference-error-codes>).
//!
//! The certificate below is a self-signed RSA-2048 test certificate made once with
//! `openssl req -x509 -newkey rsa:2048 -nodes`; it protects nothing.

use base64::Engine as _;
use m365bk_tenant_sim::{serve, SimOptions, TenantConfig};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::common::*;

/// A certificate-only app: no `client_secret` in its registration.
const CERT_ONLY: &str = "66666666-6666-4666-8666-666666666666";

const TEST_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDJTCCAg2gAwIBAgIUAXaYxleVWEAhl6qiGeZ0AgH5nNswDQYJKoZIhvcNAQEL\n\
BQAwITEfMB0GA1UEAwwWbTM2NWJrLXRlbmFudC1zaW0tdGVzdDAgFw0yNjExMjkx\n\
ODAzMThaGA8yMTI2MTEwNTE4MDMxOFowITEfMB0GA1UEAwwWbTM2NWJrLXRlbmFu\n\
dC1zaW0tdGVzdDCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAMxO+aW6\n\
h2TNxd4DR9xE01XwFhkvVdujj6RJHR/WmjQMs26LTG5nJzdmHrf2yySvsFlG2szT\n\
ZLTfN4kgMQKDogZz4/vm9a1pvUMqzp/ZvV2tHZGeEQBrpe+P6JYpkirME0aLou6x\n\
qDVkY1sGLmDo9/z5yfQdTDnKSU+rgDip0fU0FxPBG8OVAcfFjg8lDrDfRuZldbe2\n\
CaC53AOG2VOM+uaeEtbwr11YmtLodRWgIMEwXLqk5pw/vm3ydEFlrpE1BaJTVY67\n\
a6P4ro9whBHh2IKJ5leVO76rjWyqinq0uPZTqkCyBBBnTsA2wW9M1uNHl1mGg8oW\n\
REzIb5iZQgtrfI8CAwEAAaNTMFEwHQYDVR0OBBYEFC/JVH/sl24cIEm9kjhZ4nss\n\
FZsbMB8GA1UdIwQYMBaAFC/JVH/sl24cIEm9kjhZ4nssFZsbMA8GA1UdEwEB/wQF\n\
MAMBAf8wDQYJKoZIhvcNAQELBQADggEBABqehS/shgA7w+7FimzTglXZkHfalfeL\n\
A3y25Ru7Cv0vg33FFIFSCWsJsgrPetRYWmlDuoHy+1MCK4LTjR0JzFRebl6ws95e\n\
VeZpb/UPsY6VFK5h+pG+UaDCc6I6Hj+Zt0bQGIXyMD/OFZfI3r6t+P4WbavyOuDT\n\
C2NdfYMVCLE3wRx12aR7O1MKH867zg9sfxariYC4WSnjkv6pbUM3fbFkG5wZDKmS\n\
NKJjwrGVXorc6bzQXWcY4Uu3XlPmp+CQcILm1n5QHrCyAmqKIyGxenm6X2nzhvM+\n\
arVyBpgdD43wj3guuKefUebgXbkNEBVvDxr43fKfd9zl5+WnnlWWQEY=\n\
-----END CERTIFICATE-----\n\
";

const TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDMTvmluodkzcXe\n\
A0fcRNNV8BYZL1Xbo4+kSR0f1po0DLNui0xuZyc3Zh639sskr7BZRtrM02S03zeJ\n\
IDECg6IGc+P75vWtab1DKs6f2b1drR2RnhEAa6Xvj+iWKZIqzBNGi6Lusag1ZGNb\n\
Bi5g6Pf8+cn0HUw5yklPq4A4qdH1NBcTwRvDlQHHxY4PJQ6w30bmZXW3tgmgudwD\n\
htlTjPrmnhLW8K9dWJrS6HUVoCDBMFy6pOacP75t8nRBZa6RNQWiU1WOu2uj+K6P\n\
cIQR4diCieZXlTu+q41sqop6tLj2U6pAsgQQZ07ANsFvTNbjR5dZhoPKFkRMyG+Y\n\
mUILa3yPAgMBAAECggEAEEWD7XaPHPCkfxuMyBa1LCV8ZRIXiPAcWw21o5kAW//c\n\
9INkmXBet7NK5ATkRe42Ic4aU/DMFvmmHyYwsQ4Rw+jL8f6Bd4ex2p0YqrN5OPI2\n\
JihMG1f3db5k3DzAVuc868PoPJFqn6H4pcG2xOIZCg1Mz8Pbk8iwEQfMJPclcR1J\n\
7IMZKk14ysYxXgUawA5psBFCsZy2haSCgz1kyLm9nMiN8YyM/Ne1U7vBVzUHinxJ\n\
IKbHSXOjLBbR1RUEnfWMwEoJ9uQ4y7XdjwKDTYF9YRZ66VFhaePw/uRr2WHLsldK\n\
PNiLdHr0oP52Mobo4r6joyEJlM0X75b332L5tKhnUQKBgQD0kZntVbMLNooMuiBd\n\
sGRjvyXX4IXc8btCQjoxz82dEkW70zUCNiWbuTC6mP5TnnCnb7Zc2yO/uFLSNjn2\n\
OsETQdn/WtBD3D/7N/5kHx0CgE7NTqcUI1cfjBjL9tqfszWDggPP/dUOhD+1PTg9\n\
AihaeABL9a8iNkklJdlR2J8Q0QKBgQDV26NPawf+jMUZZDMgIlbAmczI+8gddiwV\n\
fO7HC8DSQ/eulShDqJmFRV2HFmy+txl7nd/mkG8fj0s6KtA2omsVYTII4kVeLSq+\n\
7DnUBdu40nEMoszqA+FYrDD8yidLZ+dQKIJ85+epH5ZE0h11VPgthCFqoCjOuUnU\n\
49v2yegPXwKBgFu/y6k3v0VznnKL2NyM8fxhl0bXWiC7Ju8CfWZ2eMJ2OmbuIzLD\n\
MXSsEtXN04t3IvgNdrJ7G3wvIBLweOogvJIG4EtlvD/Y/r+2D99rtKxdijKHUTLC\n\
10pkemD6KKZEysydF+UNasJZZrUNVG2+w3i9EA9vCdah2uruugp0Y6ghAoGAWeJD\n\
pIiOxp0x5jcoCdSE89RwrvSsKj3Vz34/+abl9zob6uPEFZPSWqJJ6hIxyIK6kitL\n\
xONl4TTf4GXIN35SVZ0RY4x+rVN8iNxOfd+sduT0IOR4Dc9tslBFEqqAk3/rR9SO\n\
66Koynt9NBW/zeXVnYPQa7k/DYvxDSpr9DDueS8CgYEAt0ndmpGcoTezlEGUfjeI\n\
h7hYJptDe3LeiDJ7wRp5t/SKIn9JA4TfavZgZt8BXBRMmtJT8P4lgKTwThYhfdv8\n\
7PtdhqlKmVJI8VclUCY+XGhBul9tM/zE/2ngzd0xdCTnxAZDwMrDBCW6ae5M/GME\n\
4+jDEEl489AwJRDrp/KzS60=\n\
-----END PRIVATE KEY-----\n\
";

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct CertEnv {
    sim: m365bk_tenant_sim::RunningSim,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start_cert_only() -> CertEnv {
    let dir = tempfile::tempdir().unwrap();
    build_corpus(dir.path());
    let toml = format!(
        "{}\n[[apps]]\nclient_id = \"{CERT_ONLY}\"\nroles = [\"Mail.Read\"]\ncertificates = [{:?}]\n",
        config_toml(),
        TEST_CERT
    );
    let tenant = TenantConfig::from_toml(&toml).unwrap();
    let sim = serve(SimOptions::new(dir.path(), tenant)).await.unwrap();
    CertEnv {
        sim,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A PS256 client assertion for `client_id` with `x5t#S256` of the test certificate.
fn assertion(env: &CertEnv, client_id: &str, jti: &str, nbf: i64) -> String {
    let der = pem::parse(TEST_CERT).unwrap().into_contents();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.x5t_s256 =
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)));
    let claims = json!({
        "aud": env.sim.token_url(),
        "iss": client_id,
        "sub": client_id,
        "jti": jti,
        "iat": nbf,
        "nbf": nbf,
        "exp": nbf + 300,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// POSTs a client-credentials request; (status, `error`, first AADSTS code or 0, body).
async fn post(env: &CertEnv, extra: &[(&str, &str)]) -> (u16, String, u64, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    form.extend_from_slice(extra);
    let r = env
        .http
        .post(env.sim.token_url())
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or("").to_string(),
        body["error_codes"][0].as_u64().unwrap_or(0),
        body,
    )
}

#[tokio::test]
async fn certificate_only_app_takes_assertions_and_refuses_secrets_and_nothing() {
    let env = start_cert_only().await;
    let good = assertion(&env, CERT_ONLY, &uuid::Uuid::new_v4().to_string(), now());
    let (status, _, _, body) = post_assertion(&env, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["appid"],
        CERT_ONLY
    );

    // Neither credential: AADSTS7000218, 401 invalid_client.
    let (status, error, code, body) = post(&env, &[("client_id", CERT_ONLY)]).await;
    assert_eq!(
        (status, error.as_str(), code),
        (401, "invalid_client", 7000218),
        "{body}"
    );
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("'client_assertion' or 'client_secret'"));

    // A secret (any secret, even one that is another app's) for an app that has none:
    // AADSTS7000215.
    for secret in ["", SECRET, "guess"] {
        let (status, error, code, body) =
            post(&env, &[("client_id", CERT_ONLY), ("client_secret", secret)]).await;
        assert_eq!(
            (status, error.as_str(), code),
            (401, "invalid_client", 7000215),
            "{secret:?}: {body}"
        );
    }

    // Apps with a secret still take it.
    let (status, _, _, body) =
        post(&env, &[("client_id", MAIL_READ), ("client_secret", SECRET)]).await;
    assert_eq!(status, 200, "{body}");
}

/// POSTs a client assertion for the certificate-only app.
async fn post_assertion(env: &CertEnv, assertion: &str) -> (u16, String, u64, Value) {
    post(
        env,
        &[
            ("client_id", CERT_ONLY),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ],
    )
    .await
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_and_a_fresh_one_works() {
    let env = start_cert_only().await;
    let t = now();
    let jti = uuid::Uuid::new_v4().to_string();
    let first = assertion(&env, CERT_ONLY, &jti, t);
    assert_eq!(post_assertion(&env, &first).await.0, 200);

    // The identical assertion again, still within its lifetime: refused.
    let (status, error, code, body) = post_assertion(&env, &first).await;
    assert_eq!(
        (status, error.as_str(), code),
        (401, "invalid_client", 50013),
        "{body}"
    );
    let d = body["error_description"].as_str().unwrap();
    assert!(d.contains(&jti) && d.contains("already been used"), "{d}");

    // Re-signed with the same jti (a new signature, a later nbf): still a replay.
    let resigned = assertion(&env, CERT_ONLY, &jti, t + 1);
    assert_eq!(post_assertion(&env, &resigned).await.2, 50013);

    // A fresh jti works.
    let fresh = assertion(&env, CERT_ONLY, &uuid::Uuid::new_v4().to_string(), t);
    assert_eq!(post_assertion(&env, &fresh).await.0, 200);

    // A refused assertion does not spend its jti: one with a bad audience, then a good one
    // with the same jti.
    let jti2 = uuid::Uuid::new_v4().to_string();
    let der = pem::parse(TEST_CERT).unwrap().into_contents();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.x5t_s256 =
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)));
    let bad = jsonwebtoken::encode(
        &header,
        &json!({"aud": format!("{}/other", env.sim.token_url()), "iss": CERT_ONLY,
            "sub": CERT_ONLY, "jti": jti2, "nbf": t, "exp": t + 300}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(post_assertion(&env, &bad).await.2, 700023);
    let good2 = assertion(&env, CERT_ONLY, &jti2, t);
    assert_eq!(post_assertion(&env, &good2).await.0, 200);
}
