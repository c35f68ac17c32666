//! Encryption at rest, end to end: the repository is encrypted by default; a wrong or missing
//! passphrase exits 12 with a message naming the repository and where the passphrase comes
//! from, and damages nothing; `key add|list|remove|passwd` manage the passphrases.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::harness::{content_set, corpus, matrix_permissions, Env, Sim, PASSPHRASE};

const WRONG: &str = "not the passphrase";
const SECOND: &str = "second passphrase, held by the other administrator";
const THIRD: &str = "third passphrase, after key passwd";

fn roles() -> Vec<String> {
    matrix_permissions("onedrive", &["discovery", "backup", "recovery"])
}

/// Every file of the repository with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_exits_12_and_damages_nothing_then_key_add_remove_passwd() {
    let corpus = corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &roles()).await;
    let env = Env::new(&sim.base);

    let init = env.run(&["init"]).await.ok();
    assert!(
        init.stdout.contains("created encrypted repository"),
        "{}",
        init.stdout
    );
    let config = std::fs::read(env.repo.join("config")).unwrap();
    assert_eq!(
        &config[..6],
        b"MBKC\x03\x02",
        "config is sealed with XAES-256-GCM"
    );
    assert_eq!(std::fs::read_dir(env.repo.join("keys")).unwrap().count(), 1);

    let first = env
        .run(&["--json", "backup", "--service", "onedrive", "--all-users"])
        .await
        .ok()
        .json();
    let snap = first["snapshots"][0]["id"].as_str().unwrap().to_string();
    let user = first["snapshots"][0]["resource"]
        .as_str()
        .unwrap()
        .to_string();
    let source = sim.export(&user).await;
    let want = content_set(&source, "drive", "");
    assert!(!want.is_empty());
    let before = files(&env.repo);

    // A wrong passphrase: exit 12, named clearly, before any request to Microsoft.
    sim.clear_requests().await;
    let repo_name = env.repo.display().to_string();
    for args in [
        vec!["snapshots"],
        vec!["backup", "--service", "onedrive", "--all-users"],
        vec!["restore", &snap, "--folder-name", "Restored-Wrong"],
        vec!["check", "--read-data"],
        vec!["key", "list"],
    ] {
        let run = env
            .run_env(&args, &[("M365BK_PASSPHRASE", Some(WRONG))])
            .await;
        assert_eq!(run.code, 12, "{args:?}: exit 12\n{}", run.stderr);
        assert!(
            run.stderr
                .contains("the passphrase does not open any key slot of repository")
                && run.stderr.contains(&repo_name)
                && run.stderr.contains("repository.passphrase_file")
                && run.stderr.contains("$M365BK_PASSPHRASE"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // No passphrase at all: exit 12, says where to put it.
    let run = env
        .run_env(&["snapshots"], &[("M365BK_PASSPHRASE", None)])
        .await;
    assert_eq!(run.code, 12, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is encrypted and no passphrase was given")
            && run.stderr.contains("repository-passphrase"),
        "{}",
        run.stderr
    );
    assert!(
        sim.requests().await.is_empty(),
        "no request to the tenant with a wrong passphrase"
    );
    assert!(
        files(&env.repo) == before,
        "nothing in the repository changed"
    );

    // The right passphrase: everything restores.
    env.run(&["restore", &snap, "--folder-name", "Restored-After-Wrong"])
        .await
        .ok();
    let after = sim.export(&user).await;
    assert_eq!(content_set(&after, "drive", "Restored-After-Wrong"), want);

    // key add: the new passphrase from a private file (never the command line).
    let second_file = tmp.path().join("second-passphrase");
    private_file(&second_file, &format!("{SECOND}\n"));
    let added = env
        .run(&[
            "--json",
            "key",
            "add",
            "--new-passphrase-file",
            second_file.to_str().unwrap(),
        ])
        .await
        .ok()
        .json();
    let second_id = added["added"].as_str().unwrap().to_string();
    std::fs::set_permissions(&second_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = env
        .run(&[
            "key",
            "add",
            "--new-passphrase-file",
            second_file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    let run = env.run(&["key", "add"]).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("--new-passphrase-file")
            && run.stderr.contains("M365BK_NEW_PASSPHRASE"),
        "{}",
        run.stderr
    );

    let list = env.run(&["--json", "key", "list"]).await.ok().json();
    let keys = list.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    let first_id = keys.iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first_id, second_id);
    let text = env.run(&["key", "list"]).await.ok();
    assert!(
        text.stdout.contains(&format!("*{}", &first_id[..8])) && text.stdout.contains("tests only"),
        "{}",
        text.stdout
    );
    let with_second = [("M365BK_PASSPHRASE", Some(SECOND))];
    env.run_env(&["snapshots"], &with_second).await.ok();

    // key remove: not the key in use; with the other passphrase, yes.
    let run = env.run(&["key", "remove", &first_id[..8]]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("another key slot's passphrase"),
        "{}",
        run.stderr
    );
    env.run_env(&["key", "remove", &first_id[..8]], &with_second)
        .await
        .ok();
    let run = env.run(&["snapshots"]).await;
    assert_eq!(run.code, 12, "the removed passphrase no longer opens it");

    // key passwd: the new passphrase from $M365BK_NEW_PASSPHRASE replaces the current one.
    let changed = env
        .run_env(
            &["--json", "key", "passwd"],
            &[
                ("M365BK_PASSPHRASE", Some(SECOND)),
                ("M365BK_NEW_PASSPHRASE", Some(THIRD)),
            ],
        )
        .await
        .ok()
        .json();
    assert_eq!(changed["removed"].as_str().unwrap(), second_id);
    let third_id = changed["added"].as_str().unwrap().to_string();
    let run = env.run_env(&["snapshots"], &with_second).await;
    assert_eq!(run.code, 12, "the old passphrase no longer opens it");
    let with_third = [("M365BK_PASSPHRASE", Some(THIRD))];
    let list = env
        .run_env(&["--json", "key", "list"], &with_third)
        .await
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"].as_str().unwrap(), third_id);
    let run = env
        .run_env(&["key", "remove", &third_id], &with_third)
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("only one"), "{}", run.stderr);

    // Still the same data, intact, under the third passphrase.
    env.run_env(&["check", "--read-data"], &with_third)
        .await
        .ok();
    env.run_env(
        &["restore", &snap, "--folder-name", "Restored-Third"],
        &with_third,
    )
    .await
    .ok();
    let after = sim.export(&user).await;
    assert_eq!(content_set(&after, "drive", "Restored-Third"), want);
    assert_ne!(PASSPHRASE, THIRD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_only_with_no_encryption_and_init_needs_a_passphrase() {
    // No simulator needed: nothing here talks to Microsoft.
    let env = Env::new("http://127.0.0.1:9");
    let run = env.run_env(&["init"], &[("M365BK_PASSPHRASE", None)]).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("no repository passphrase")
            && run.stderr.contains("repository.passphrase_file")
            && run.stderr.contains("--no-encryption"),
        "{}",
        run.stderr
    );
    assert!(!env.repo.join("config").exists(), "nothing created");

    let run = env
        .run_env(&["init", "--no-encryption"], &[("M365BK_PASSPHRASE", None)])
        .await
        .ok();
    assert!(run.stdout.contains("UNENCRYPTED"), "{}", run.stdout);
    assert!(run.stderr.contains("UNENCRYPTED"), "warned: {}", run.stderr);
    let config = std::fs::read(env.repo.join("config")).unwrap();
    assert_eq!(&config[..6], b"MBKC\x02\x00", "plaintext stays version 2");
    env.run_env(&["snapshots"], &[("M365BK_PASSPHRASE", None)])
        .await
        .ok();
    let run = env.run(&["key", "list"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("is not encrypted"), "{}", run.stderr);

    // A passphrase file in the config is used, and must be private.
    let env = Env::new("http://127.0.0.1:9");
    let pass_file = env.dir.path().join("repository-passphrase");
    private_file(&pass_file, "from the file\n");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "[repository]\n",
        &format!(
            "[repository]\npassphrase_file = {:?}\n",
            pass_file.display().to_string()
        ),
    );
    std::fs::write(&env.config, text).unwrap();
    env.run_env(&["init"], &[("M365BK_PASSPHRASE", None)])
        .await
        .ok();
    // The file wins over the environment, and says so.
    let run = env
        .run_env(&["snapshots"], &[("M365BK_PASSPHRASE", Some(WRONG))])
        .await
        .ok();
    assert!(
        run.stderr.contains("M365BK_PASSPHRASE is set but ignored"),
        "{}",
        run.stderr
    );
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = env.run(&["snapshots"]).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("passphrase file") && run.stderr.contains("chmod 600"),
        "{}",
        run.stderr
    );
}

/// `init --cipher`: XAES-256-GCM by default, XChaCha20-Poly1305 when asked for, an unknown name
/// or a cipher without encryption refused as a usage error before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_cipher_is_chosen_by_name() {
    let env = Env::new("http://127.0.0.1:9");
    let run = env.run(&["init", "--cipher", "aes-128-cbc"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown cipher \"aes-128-cbc\"")
            && run.stderr.contains("xaes-256-gcm or xchacha20-poly1305"),
        "{}",
        run.stderr
    );
    let run = env
        .run(&["init", "--no-encryption", "--cipher", "xaes-256-gcm"])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!env.repo.join("config").exists(), "nothing created");
    // Impossible key derivation settings are a usage error too.
    let run = env
        .run_env(&["init"], &[("M365BK_KDF_MEMORY_KIB", Some("1"))])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!env.repo.join("config").exists(), "nothing created");

    let run = env
        .run(&["init", "--cipher", "xchacha20-poly1305"])
        .await
        .ok();
    assert!(run.stdout.contains("xchacha20-poly1305"), "{}", run.stdout);
    let config = std::fs::read(env.repo.join("config")).unwrap();
    assert_eq!(
        &config[..6],
        b"MBKC\x02\x01",
        "XChaCha20-Poly1305 stays version 2"
    );
    env.run(&["snapshots"]).await.ok();
    env.run(&["check", "--read-data"]).await.ok();
}
