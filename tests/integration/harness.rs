//! Starting the simulator, configuring m365bk, running both, reading the simulator's state.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const TENANT_ID: &str = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11";
pub const CLIENT_ID: &str = "5b1f3c8e-7a2d-4e9f-b6c1-0d2e4f6a8b10";
pub const SECRET: &str = "m365bk-test-secret-value";
pub const ADMIN_ID: &str = "9f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
/// The repository passphrase every run gets through `$M365BK_PASSPHRASE`: `init` makes an
/// encrypted repository, as it does by default.
pub const PASSPHRASE: &str = "m365bk test passphrase: four random words";
/// Argon2id cost for the tests' key slots (64 KiB, 1 iteration), set through the documented
/// `M365BK_KDF_*` variables: real repositories use the default 64 MiB, 3 iterations. Only
/// `init` and `key add|passwd` read them; m365bk logs a warning whenever it uses such a slot.
pub const TEST_KDF_ENV: [(&str, &str); 3] = [
    ("M365BK_KDF_MEMORY_KIB", "64"),
    ("M365BK_KDF_ITERATIONS", "1"),
    ("M365BK_KDF_PARALLELISM", "1"),
];

/// A corpus directory built by `scripts/build-corpus.py`.
pub fn corpus(small: bool) -> PathBuf {
    let (var, dir) = if small {
        ("M365BK_TEST_CORPUS_SMALL", "corpus-small")
    } else {
        ("M365BK_TEST_CORPUS", "corpus")
    };
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
    assert!(
        p.join("users").is_dir(),
        "no corpus at {}: run `scripts/test.sh` (it builds the corpus with scripts/build-corpus.py{}) or set {var}",
        p.display(),
        if small { " --small" } else { "" }
    );
    p
}

/// Permissions of the matrix (the gate's compiled copy of the shared CSV), read here
/// independently of the gate's code: (permission, api) for `service` and any of `operations`,
/// unconditional rows only.
pub fn matrix_permissions(service: &str, operations: &[&str]) -> Vec<String> {
    let text = include_str!("../../crates/gate/data/permission-matrix.csv");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let cols: Vec<&str> = line.splitn(7, ',').collect();
        if cols.len() < 6 || cols[3] != service || !cols[5].is_empty() {
            continue;
        }
        if cols[4].split_whitespace().any(|o| operations.contains(&o))
            && !out.contains(&cols[0].to_string())
        {
            out.push(cols[0].to_string());
        }
    }
    out
}

/// Every unconditional permission the matrix lists for Exchange and OneDrive discovery, backup
/// and recovery: the roles of a fully consented app in the simulator.
pub fn all_roles() -> Vec<String> {
    let mut roles = Vec::new();
    for service in ["exchange", "onedrive"] {
        for p in matrix_permissions(service, &["discovery", "backup", "recovery"]) {
            if !roles.contains(&p) {
                roles.push(p);
            }
        }
    }
    roles
}

/// App-role id of a Graph permission, from the compiled permission-ids.csv.
pub fn app_role_id(permission: &str) -> String {
    let text = include_str!("../../crates/gate/data/permission-ids.csv");
    text.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|c| c[0] == permission && c[1] == "00000003-0000-0000-c000-000000000000")
        .map(|c| c[3].to_string())
        .unwrap_or_else(|| panic!("no app role id for {permission}"))
}

pub struct Sim {
    child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Sim {
    /// Starts `m365bk-tenant-sim` on 127.0.0.1:0 with the backup app (`roles`) and an admin app
    /// holding every write permission (for the tests' own checks).
    pub async fn start(dir: &Path, corpus: &Path, roles: &[String]) -> Sim {
        let roles_toml: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
        let cfg = format!(
            r#"tenant_id = "{TENANT_ID}"
[[apps]]
client_id = "{CLIENT_ID}"
client_secret = "{SECRET}"
display_name = "m365bk"
admin_consent = true
roles = [{}]
"#,
            roles_toml.join(", ")
        );
        let cfg_path = dir.join("tenant.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let exe = Path::new(env!("CARGO_BIN_EXE_m365bk")).with_file_name("m365bk-tenant-sim");
        assert!(
            exe.exists(),
            "{} missing: build it with `cargo build -p m365bk-tenant-sim`",
            exe.display()
        );
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
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
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
        // Keep draining stdout so the simulator never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Sim {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn requests(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_sim/requests", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn clear_requests(&self) {
        let r = self
            .http
            .delete(format!("{}/_sim/requests", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn set_roles(&self, roles: &[String]) {
        let r = self
            .http
            .put(format!("{}/_sim/admin/apps/{CLIENT_ID}/roles", self.base))
            .json(&roles)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "set roles: {}", r.status());
    }

    pub async fn set_consent(&self, consent: bool) {
        let r = self
            .http
            .put(format!("{}/_sim/admin/apps/{CLIENT_ID}/consent", self.base))
            .json(&consent)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "set consent: {}", r.status());
    }

    pub async fn export(&self, upn: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/_sim/admin/users/{upn}/export", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "export {upn}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Sets the simulator's added latency per request (`faults.latency_ms`), in milliseconds;
    /// 0 removes it. Replaces any other injected faults.
    pub async fn set_latency(&self, ms: u64) {
        self.admin(
            reqwest::Method::PUT,
            "faults",
            serde_json::json!({ "latency_ms": ms })
                .to_string()
                .into_bytes(),
        )
        .await;
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> Value {
        let r = self
            .http
            .request(method.clone(), format!("{}/_sim/admin/{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// The users of a corpus (directory names = UPNs), sorted.
pub fn corpus_users(corpus: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(corpus.join("users"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A temp directory with an m365bk config pointing at the simulator.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub repo: PathBuf,
}

impl Env {
    pub fn new(sim_base: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let config = dir.path().join("m365bk.toml");
        std::fs::write(
            &config,
            format!(
                r#"[tenant]
tenant_id = "{TENANT_ID}"
client_id = "{CLIENT_ID}"
authority_url = "{sim_base}"
graph_url = "{sim_base}/v1.0"

[repository]
url = "{}"

[catalog]
path = "{}"
"#,
                repo.display(),
                dir.path().join("catalog.sqlite").display()
            ),
        )
        .unwrap();
        Env { dir, config, repo }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, SECRET).await
    }

    /// Runs with client secret `secret` and the test passphrase ([`PASSPHRASE`]).
    pub async fn run_with(&self, args: &[&str], secret: &str) -> Run {
        self.run_env(args, &[("M365BK_CLIENT_SECRET", Some(secret))])
            .await
    }

    /// Runs with the defaults (client secret [`SECRET`], passphrase [`PASSPHRASE`], the cheap
    /// [`TEST_KDF_ENV`], no `$M365BK_NEW_PASSPHRASE`), then `vars` on top: `Some` sets a
    /// variable, `None` removes it.
    pub async fn run_env(&self, args: &[&str], vars: &[(&str, Option<&str>)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_m365bk"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("M365BK_CLIENT_SECRET", SECRET)
            .env("M365BK_PASSPHRASE", PASSPHRASE)
            .env("M365BK_LOG", "info")
            .env_remove("M365BK_NEW_PASSPHRASE")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (k, v) in TEST_KDF_ENV {
            cmd.env(k, v);
        }
        for (k, v) in vars {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let out = cmd.output().await.expect("run m365bk");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ m365bk {}\n-> exit {}\n{}",
            args.join(" "),
            run.code,
            tail(&run.stderr, 40)
        );
        run
    }

    /// `m365bk --json backup --service SERVICE --user USER`, which must succeed; returns the
    /// id of the snapshot it made.
    pub async fn backup_one(&self, service: &str, user: &str) -> String {
        let out = self
            .run(&["--json", "backup", "--service", service, "--user", user])
            .await
            .ok()
            .json();
        out["snapshots"][0]["id"].as_str().unwrap().to_string()
    }

    /// Bytes of every object in the repository.
    pub fn repo_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.map(|e| {
                        let e = e.unwrap();
                        let m = e.metadata().unwrap();
                        if m.is_dir() {
                            walk(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.repo)
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{') || l.starts_with('['))
            .unwrap_or_else(|| panic!("no JSON on stdout: {}", self.stdout));
        serde_json::from_str(line).unwrap()
    }
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "m365bk failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Multiset of (path relative to `prefix`, sha256) of a user's mail (folder path) and drive
/// (file path) in a simulator export, for items under `prefix` (`""` = everything not under a
/// `Restored-` folder).
/// The pack files of a local repository, sorted.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Flips one byte in the middle of `file` (made writable first: packs are stored read-only).
pub fn flip_middle_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x5a;
    let mut perms = std::fs::metadata(file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(file, perms).unwrap();
    std::fs::write(file, bytes).unwrap();
}

pub fn content_set(export: &Value, area: &str, prefix: &str) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for e in export[area].as_array().unwrap() {
        if e.get("folder").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let path = match area {
            "mail" => e["folder"].as_str().unwrap().to_string(),
            _ => e["path"].as_str().unwrap().to_string(),
        };
        let rel = if prefix.is_empty() {
            if path.starts_with("Restored-") || path.contains("/Restored-") {
                continue;
            }
            path
        } else {
            match path.strip_prefix(&format!("{prefix}/")) {
                Some(r) => r.to_string(),
                None => continue,
            }
        };
        let key = match area {
            "mail" => (rel, e["sha256"].as_str().unwrap().to_string()),
            _ => (rel, e["sha256"].as_str().unwrap().to_string()),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Decodes the `%XX` escapes of a path from the simulator's request log.
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
