//! The real `m365bk` binary with `repository.url = "s3://…"` against a real S3 server (moto,
//! `$M365BK_TEST_MOTO_SERVER`) on 127.0.0.1: init, backup from the tenant simulator, restore,
//! check; and the S3 configuration mistakes an operator makes, each with its exit code.

use super::harness::{content_set, corpus, corpus_users, matrix_permissions, Env, Sim};

#[path = "../../crates/store/tests/support/servers.rs"]
mod servers;

use servers::Server;

const BUCKET: &str = "m365bk-e2e";
/// moto accepts any key pair; the binary gets them the documented way, from the environment.
const AWS_ENV: [(&str, Option<&str>); 2] = [
    ("AWS_ACCESS_KEY_ID", Some("m365bk-test")),
    ("AWS_SECRET_ACCESS_KEY", Some("m365bk-test-secret")),
];

fn roles() -> Vec<String> {
    let mut roles = Vec::new();
    for p in matrix_permissions("onedrive", &["discovery", "backup", "recovery"]) {
        if !roles.contains(&p) {
            roles.push(p);
        }
    }
    roles
}

/// `base` (a config written by [`Env::new`]) pointed at `url` on `endpoint`.
fn s3_config(base: &str, url: &str, endpoint: &str) -> String {
    let line = base
        .lines()
        .find(|l| l.starts_with("url = "))
        .unwrap()
        .to_string();
    base.replace(
        &line,
        &format!(
            "url = \"{url}\"\nmax_retries = 2\nretry_timeout_secs = 10\n\n[repository.options]\nendpoint = \"{endpoint}\"\nallow_http = true\nregion = \"us-east-1\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_backup_restore_check_on_s3() {
    let moto = Server::moto();
    moto.create_bucket(BUCKET).await;
    let corpus = corpus(true);
    let users = corpus_users(&corpus);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &roles()).await;
    let env = Env::new(&sim.base);
    let url = format!("s3://{BUCKET}/tenants/contoso");
    let local = std::fs::read_to_string(&env.config).unwrap();
    let good = s3_config(&local, &url, &moto.endpoint);
    std::fs::write(&env.config, &good).unwrap();

    let run = env.run_env(&["init"], &AWS_ENV).await.ok();
    assert!(run.stdout.contains(&url), "{}", run.stdout);
    assert!(!env.repo.exists(), "nothing is written locally");

    let backup = env
        .run_env(
            &["--json", "backup", "--service", "onedrive", "--all-users"],
            &AWS_ENV,
        )
        .await
        .ok()
        .json();
    let snaps = backup["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), users.len(), "{backup}");
    let (source, target) = (&users[0], &users[1]);
    let snap = snaps
        .iter()
        .find(|s| s["resource"] == source.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let listed = env
        .run_env(&["--json", "snapshots"], &AWS_ENV)
        .await
        .ok()
        .json();
    assert!(listed.to_string().contains(&snap), "{listed}");

    env.run_env(
        &[
            "restore",
            &snap,
            "--to-user",
            target,
            "--folder-name",
            "Restored-S3",
        ],
        &AWS_ENV,
    )
    .await
    .ok();
    let want = content_set(&sim.export(source).await, "drive", "");
    assert!(!want.is_empty(), "{source} has files");
    let got = content_set(&sim.export(target).await, "drive", "Restored-S3");
    assert_eq!(
        got, want,
        "restored from S3 byte for byte (sha256 per file)"
    );

    let run = env.run_env(&["check", "--read-data"], &AWS_ENV).await.ok();
    assert!(!run.stdout.is_empty() || !run.stderr.is_empty());

    // Operator mistakes: each named, with its exit code, and the repository untouched.

    // A bucket that does not exist: configuration error 78, saying how to create it.
    std::fs::write(
        &env.config,
        s3_config(&local, "s3://no-such-bucket/x", &moto.endpoint),
    )
    .unwrap();
    let run = env.run_env(&["snapshots"], &AWS_ENV).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("\"no-such-bucket\"") && run.stderr.contains("aws s3 mb"),
        "{}",
        run.stderr
    );

    // A secret in the config file: refused before any request, naming the variable to use.
    let with_secret = good.replace(
        "[repository.options]\n",
        "[repository.options]\nsecret_access_key = \"oops\"\n",
    );
    std::fs::write(&env.config, with_secret).unwrap();
    let run = env.run_env(&["snapshots"], &AWS_ENV).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("AWS_SECRET_ACCESS_KEY")
            && run.stderr.contains("not read from the config file"),
        "{}",
        run.stderr
    );

    // An option object_store does not know: named, with examples.
    let with_typo = good.replace(
        "[repository.options]\n",
        "[repository.options]\nregoin = \"x\"\n",
    );
    std::fs::write(&env.config, with_typo).unwrap();
    let run = env.run_env(&["snapshots"], &AWS_ENV).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("repository.options.regoin") && run.stderr.contains("region"),
        "{}",
        run.stderr
    );

    // Nothing listening at the endpoint: temporary failure 75 after the configured retries.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    std::fs::write(&env.config, good.replace(&moto.endpoint, &dead)).unwrap();
    let run = env.run_env(&["snapshots"], &AWS_ENV).await;
    assert_eq!(run.code, 75, "{}", run.stderr);

    // Credentials the server rejects (moto with IAM on knows no key): no permission, 77.
    let strict = Server::moto_with_auth(2);
    strict.create_bucket(BUCKET).await;
    std::fs::write(&env.config, s3_config(&local, &url, &strict.endpoint)).unwrap();
    let run = env.run_env(&["init"], &AWS_ENV).await;
    assert_eq!(run.code, 77, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused") && run.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        run.stderr
    );
    drop(strict);

    // Back to the right settings: everything is still there.
    std::fs::write(&env.config, &good).unwrap();
    let listed = env
        .run_env(&["--json", "snapshots"], &AWS_ENV)
        .await
        .ok()
        .json();
    assert!(listed.to_string().contains(&snap), "{listed}");
}
