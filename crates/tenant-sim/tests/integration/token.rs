//! The token endpoint: success body and claims, and each AADSTS error.

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn client_credentials_token_has_app_only_claims() {
    let env = start().await;
    let r = env
        .token_response(&[
            ("grant_type", "client_credentials"),
            ("client_id", FULL),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let jwt = body["access_token"].as_str().unwrap();
    let header: Value = {
        use base64::Engine as _;
        let h = jwt.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(header["typ"], "JWT");
    let c = claims(jwt);
    assert_eq!(c["aud"], "https://graph.microsoft.com");
    assert_eq!(c["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["appid"], FULL);
    assert_eq!(c["app_displayname"], "m365bk-full");
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["oid"], c["sub"]);
    let exp = c["exp"].as_u64().unwrap();
    let iat = c["iat"].as_u64().unwrap();
    assert!(exp > iat && c["nbf"].as_u64().unwrap() <= iat + 1);
    let roles: Vec<&str> = c["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(roles.contains(&"Mail.ReadWrite") && roles.contains(&"Files.ReadWrite.All"));
}

#[tokio::test]
async fn other_audiences_and_roles_claim_absent_without_consent() {
    let env = start().await;
    let outlook = env
        .token_for(MAIL_READ, "https://outlook.office365.com/.default")
        .await;
    assert_eq!(claims(&outlook)["aud"], "https://outlook.office365.com");
    let sp = env
        .token_for(MAIL_READ, "https://contoso.sharepoint.com/.default")
        .await;
    assert_eq!(claims(&sp)["aud"], "https://contoso.sharepoint.com");

    let no_consent = claims(&env.token(NO_CONSENT).await);
    assert!(no_consent.get("roles").is_none(), "{no_consent}");
    // Consent granted at run time shows up in tokens issued afterwards.
    let r = env
        .http
        .put(env.url(&format!("/_sim/admin/apps/{NO_CONSENT}/consent")))
        .body("true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        claims(&env.token(NO_CONSENT).await)["roles"],
        serde_json::json!(["Mail.Read"])
    );
    // Role changes too; an empty role list means no roles claim at all.
    let r = env
        .http
        .put(env.url(&format!("/_sim/admin/apps/{NO_CONSENT}/roles")))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(claims(&env.token(NO_CONSENT).await).get("roles").is_none());
}

async fn expect_aad_error(
    env: &Env,
    url: &str,
    form: &[(&str, &str)],
    status: u16,
    error: &str,
    code: u64,
) -> Value {
    let r = env.http.post(url).form(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{form:?}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["error_codes"], serde_json::json!([code]), "{v}");
    let d = v["error_description"].as_str().unwrap();
    assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
    assert!(
        d.contains("\r\nTrace ID: ")
            && d.contains("\r\nCorrelation ID: ")
            && d.contains("\r\nTimestamp: "),
        "{d}"
    );
    assert_eq!(
        v["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    assert!(v["trace_id"].as_str().unwrap().len() == 36 && v["correlation_id"].is_string());
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    v
}

#[tokio::test]
async fn token_errors_follow_aadsts() {
    let env = start().await;
    let good = |scope: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", FULL),
            ("client_secret", SECRET),
            ("scope", scope),
        ]
    };
    let graph = "https://graph.microsoft.com/.default";
    let other_tenant = format!(
        "{}/contoso.onmicrosoft.com/oauth2/v2.0/token",
        env.sim.base_url
    );
    let v = expect_aad_error(
        &env,
        &other_tenant,
        &good(graph),
        400,
        "invalid_request",
        90002,
    )
    .await;
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("Tenant 'contoso.onmicrosoft.com' not found"));

    let url = env.sim.token_url();
    let mut unknown = good(graph);
    unknown[1] = ("client_id", "99999999-9999-4999-8999-999999999999");
    expect_aad_error(&env, &url, &unknown, 400, "unauthorized_client", 700016).await;

    let mut wrong = good(graph);
    wrong[2] = ("client_secret", "nope");
    let v = expect_aad_error(&env, &url, &wrong, 401, "invalid_client", 7000215).await;
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("Ensure the secret being sent in the request is the client secret value, not the client secret ID"));

    expect_aad_error(
        &env,
        &url,
        &good("https://graph.microsoft.com/.default offline_access"),
        400,
        "invalid_scope",
        1002012,
    )
    .await;
    expect_aad_error(
        &env,
        &url,
        &good("https://graph.microsoft.com/Mail.Read"),
        400,
        "invalid_scope",
        1002012,
    )
    .await;
    expect_aad_error(
        &env,
        &url,
        &good("https://foo.microsoft.com/.default"),
        400,
        "invalid_scope",
        70011,
    )
    .await;

    let mut grant = good(graph);
    grant[0] = ("grant_type", "password");
    expect_aad_error(&env, &url, &grant, 400, "unsupported_grant_type", 70003).await;

    let missing = vec![
        ("grant_type", "client_credentials"),
        ("client_id", FULL),
        ("client_secret", SECRET),
    ];
    expect_aad_error(&env, &url, &missing, 400, "invalid_request", 900144).await;
}
