//! Real object-store servers for tests, on free 127.0.0.1 ports: moto (S3) and Azurite (Azure
//! Blob). `scripts/test-servers.sh` installs them into `.cache/` and `scripts/test.sh` exports
//! their paths in `M365BK_TEST_MOTO_SERVER` and `M365BK_TEST_AZURITE`. Each [`Server`] is one
//! child process, killed (by its pid) when dropped. Buckets and containers are made here, outside
//! object_store, as an operator would.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The key of [`AZURITE_ACCOUNT`].
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Installs aws-lc-rs as rustls' process-wide provider (object_store's clients need one when
/// ring is compiled in too, as graph-rs-sdk does), once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A running server process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required_env(var: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "${var} is not set: the {what} tests need the real server. Run scripts/test.sh (it installs moto and Azurite into .cache/ and sets it), or `eval \"$(scripts/test-servers.sh)\"` before cargo"
        )
    });
    assert!(
        path.exists(),
        "${var} = {} does not exist: run scripts/test-servers.sh to install it",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn spawn(name: &str, mut cmd: Command, port: u16) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        server.wait_ready(name);
        server
    }

    /// Waits until the port answers HTTP (60 s at most: moto takes ~4 s to import).
    fn wait_ready(&mut self, name: &str) {
        let start = Instant::now();
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{name} exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && buf.starts_with(b"HTTP/1.")
                {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} did not answer on {} within 60 s:\n{}",
                self.endpoint,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts moto's S3 server (`$M365BK_TEST_MOTO_SERVER`), in memory, accepting any
    /// credentials.
    pub fn moto() -> Server {
        let exe = required_env("M365BK_TEST_MOTO_SERVER", "S3 (moto)");
        let port = free_port();
        let mut cmd = Command::new(exe);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        Server::spawn("moto_server", cmd, port)
    }

    /// Starts moto with IAM authentication on after its first `unauthenticated` requests
    /// (moto's `INITIAL_NO_AUTH_ACTION_COUNT`): later requests must be signed with a key moto's
    /// IAM knows, so any other key gets HTTP 403.
    pub fn moto_with_auth(unauthenticated: u32) -> Server {
        let exe = required_env("M365BK_TEST_MOTO_SERVER", "S3 (moto)");
        let port = free_port();
        let mut cmd = Command::new(exe);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", unauthenticated.to_string());
        Server::spawn("moto_server", cmd, port)
    }

    /// Starts Azurite's blob service (`$M365BK_TEST_AZURITE`), in memory, without telemetry.
    pub fn azurite() -> Server {
        let exe = required_env("M365BK_TEST_AZURITE", "Azure (Azurite)");
        let port = free_port();
        let mut cmd = Command::new(exe);
        cmd.args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]);
        Server::spawn("azurite-blob", cmd, port)
    }

    /// Creates an S3 bucket on moto (a plain `PUT /BUCKET`; moto does not check signatures).
    pub async fn create_bucket(&self, bucket: &str) {
        let resp = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("PUT bucket");
        assert!(
            resp.status().is_success(),
            "create bucket {bucket}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }

    /// The Azure endpoint of Azurite's development account (path style).
    pub fn azure_account_endpoint(&self) -> String {
        format!("{}/{AZURITE_ACCOUNT}", self.endpoint)
    }

    /// Creates a blob container on Azurite: `PUT /ACCOUNT/CONTAINER?restype=container`, signed
    /// with Shared Key (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key).
    pub async fn create_container(&self, container: &str) {
        use base64::Engine as _;
        use hmac::Mac as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        // VERB, then 11 empty standard headers (Content-Length 0 is signed as empty), then the
        // x-ms- headers, then the resource: /account + URL path, and the query parameters.
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = b64.decode(AZURITE_KEY).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature = b64.encode(mac.finalize().into_bytes());
        let resp = reqwest::Client::new()
            .put(format!(
                "{}/{container}?restype=container",
                self.azure_account_endpoint()
            ))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("Content-Length", "0")
            .header(
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .send()
            .await
            .expect("PUT container");
        assert!(
            resp.status().is_success(),
            "create container {container}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
}
