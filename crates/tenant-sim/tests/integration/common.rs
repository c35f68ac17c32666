//! A tiny corpus, a tenant config with one app per permission profile, and HTTP helpers.

use std::path::Path;

use base64::Engine as _;
use m365bk_tenant_sim::{serve, RunningSim, SimOptions, TenantConfig};
use reqwest::{Client, Method, Response};
use serde_json::Value;

pub const TENANT: &str = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11";
pub const SECRET: &str = "correct-horse";
/// User.Read.All, Mail.ReadWrite, Contacts.ReadWrite, Calendars.ReadWrite, MailboxSettings.Read,
/// Files.ReadWrite.All.
pub const FULL: &str = "11111111-1111-4111-8111-111111111111";
pub const MAIL_READ: &str = "22222222-2222-4222-8222-222222222222";
pub const MAIL_BASIC: &str = "33333333-3333-4333-8333-333333333333";
pub const FILES_READ: &str = "44444444-4444-4444-8444-444444444444";
/// Mail.Read granted but no admin consent.
pub const NO_CONSENT: &str = "55555555-5555-4555-8555-555555555555";

pub const ADELE: &str = "adele@contoso.test";
pub const INBOX_COUNT: usize = 25;

pub fn config_toml() -> String {
    format!(
        r#"
tenant_id = "{TENANT}"
[[apps]]
client_id = "{FULL}"
client_secret = "{SECRET}"
display_name = "m365bk-full"
roles = ["User.Read.All", "Mail.ReadWrite", "Contacts.ReadWrite", "Calendars.ReadWrite", "MailboxSettings.Read", "Files.ReadWrite.All"]
[[apps]]
client_id = "{MAIL_READ}"
client_secret = "{SECRET}"
roles = ["Mail.Read"]
[[apps]]
client_id = "{MAIL_BASIC}"
client_secret = "{SECRET}"
roles = ["Mail.ReadBasic.All"]
[[apps]]
client_id = "{FILES_READ}"
client_secret = "{SECRET}"
roles = ["Files.Read.All"]
[[apps]]
client_id = "{NO_CONSENT}"
client_secret = "{SECRET}"
admin_consent = false
roles = ["Mail.Read"]
"#
    )
}

pub fn eml(n: usize, from: &str, to: &str) -> String {
    format!(
        "From: Sender {n} <{from}>\r\nTo: Adele Vance <{to}>\r\nSubject: Message {n:02}\r\nDate: Mon, {day} Jan 2024 10:00:00 +0000\r\nMessage-ID: <msg{n}@corpus.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody of message {n}.\r\n",
        day = 1 + n % 28
    )
}

/// Bytes of the seeded `Documents/big.bin`: 1 MiB + 3, not a multiple of anything.
pub fn big_file() -> Vec<u8> {
    (0..(1024 * 1024 + 3))
        .map(|i: usize| (i * 7 % 251) as u8)
        .collect()
}

pub fn build_corpus(dir: &Path) {
    let user = dir.join("users").join(ADELE);
    let w = |rel: &str, bytes: &[u8]| {
        let p = user.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    w(
        "user.json",
        br#"{"displayName":"Adele Vance","givenName":"Adele","surname":"Vance","jobTitle":"Retail Manager","preferredLanguage":"en-US"}"#,
    );
    for n in 0..INBOX_COUNT {
        let from = format!("sender{}@fabrikam.test", n % 3);
        w(
            &format!("mail/Inbox/m{n:02}.eml"),
            eml(n, &from, ADELE).as_bytes(),
        );
    }
    w(
        "mail/Inbox/Projects/p1.eml",
        eml(100, "pm@fabrikam.test", ADELE).as_bytes(),
    );
    w(
        "mail/Sent Items/s1.eml",
        eml(101, ADELE, "dana@fabrikam.test").as_bytes(),
    );
    w(
        "mail/Custom/c1.eml",
        eml(102, "x@fabrikam.test", ADELE).as_bytes(),
    );
    w("drive/Documents/report.txt", b"quarterly report\n");
    w("drive/Documents/big.bin", &big_file());
    w("drive/Photos/a.png", b"\x89PNG fake");
    w("drive/readme.md", b"# readme\n");
    w(
        "calendar/work.ics",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:ev1@corpus\r\nSUMMARY:Planning\r\nDTSTART:20240110T100000Z\r\nDTEND:20240110T110000Z\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:ev2@corpus\r\nSUMMARY:Review\r\nDTSTART:20240301T090000Z\r\nDURATION:PT30M\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    );
    std::fs::create_dir_all(dir.join("users").join("bob@contoso.test")).unwrap();
}

pub struct Env {
    pub sim: RunningSim,
    pub http: Client,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    build_corpus(dir.path());
    let tenant = TenantConfig::from_toml(&config_toml()).unwrap();
    let sim = serve(SimOptions::new(dir.path(), tenant)).await.unwrap();
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Env {
        sim,
        http,
        _dir: dir,
    }
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url)
    }

    pub fn graph(&self, path: &str) -> String {
        format!("{}/v1.0{path}", self.sim.base_url)
    }

    pub async fn token_response(&self, form: &[(&str, &str)]) -> Response {
        self.http
            .post(self.sim.token_url())
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn token_for(&self, client_id: &str, scope: &str) -> String {
        let r = self
            .token_response(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", SECRET),
                ("scope", scope),
            ])
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn token(&self, client_id: &str) -> String {
        self.token_for(client_id, "https://graph.microsoft.com/.default")
            .await
    }

    pub async fn call(&self, token: &str, method: Method, url: &str) -> Response {
        self.http
            .request(method, url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, token: &str, url: &str) -> Response {
        self.call(token, Method::GET, url).await
    }

    /// GET that must succeed; returns the JSON body.
    pub async fn get_json(&self, token: &str, url: &str) -> Value {
        let r = self.get(token, url).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "GET {url}: {body}");
        body
    }

    pub async fn send_json(
        &self,
        token: &str,
        method: Method,
        url: &str,
        body: &Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn user_id(&self, token: &str, upn: &str) -> String {
        self.get_json(token, &self.graph(&format!("/users/{upn}")))
            .await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn log(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.url("/_sim/requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().unwrap().clone()
    }

    pub async fn clear_log(&self) {
        let r = self
            .http
            .delete(self.url("/_sim/requests"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    pub async fn export(&self, upn: &str) -> Value {
        self.http
            .get(self.url(&format!("/_sim/admin/users/{upn}/export")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The claims of a JWT (payload decoded without verification).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The `error.code` of a Graph error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}
