//! Done-when 5: bad input gets a clear error naming the problem and the fix, a non-zero exit,
//! and leaves earlier snapshots restorable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::harness::{
    content_set, corpus, corpus_users, flip_middle_byte, matrix_permissions, packs, Env, Sim,
};

fn roles() -> Vec<String> {
    let mut r = matrix_permissions("onedrive", &["discovery", "backup", "recovery"]);
    r.extend(matrix_permissions(
        "exchange",
        &["discovery", "backup", "recovery"],
    ));
    r.sort();
    r.dedup();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_unreachable_authority_wrong_secret_corrupt_pack() {
    let corpus = corpus(true);
    let users = corpus_users(&corpus);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &roles()).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();
    let first = env
        .run(&["--json", "backup", "--service", "onedrive", "--all-users"])
        .await
        .ok()
        .json();
    let first_id = first["snapshots"][0]["id"].as_str().unwrap().to_string();
    let first_user = first["snapshots"][0]["resource"]
        .as_str()
        .unwrap()
        .to_string();
    let packs_before = packs(&env.repo);

    // Regressions found by trying it as a new user.
    // A --path that matches nothing is an error naming the fix, not a silent success.
    let run = env
        .run(&["restore", &first_id, "--path", "No/Such/Folder"])
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("is under --path \"No/Such/Folder\"")
            && run.stderr.contains("m365bk ls"),
        "{}",
        run.stderr
    );
    // --items belongs to Exchange; a OneDrive backup must not silently ignore it.
    let run = env
        .run(&[
            "backup",
            "--service",
            "onedrive",
            "--all-users",
            "--items",
            "mail",
        ])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("take no --items"), "{}", run.stderr);
    // A misspelt item type is a usage error, named with the valid ones.
    let run = env
        .run(&[
            "backup",
            "--service",
            "exchange",
            "--all-users",
            "--items",
            "mail,bogus",
        ])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown item type \"bogus\"") && run.stderr.contains("contacts"),
        "{}",
        run.stderr
    );
    // An unknown service filter is named, not an empty table.
    let run = env.run(&["snapshots", "--service", "bogus"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown service \"bogus\""),
        "{}",
        run.stderr
    );

    // A malformed config: named setting, the fix, exit 78, nothing touched.
    let good = std::fs::read_to_string(&env.config).unwrap();
    // A location scheme this build cannot use is a configuration error.
    let repo_line = good
        .lines()
        .find(|l| l.starts_with("url = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &env.config,
        good.replace(&repo_line, "url = \"ftp://bucket/m365bk\""),
    )
    .unwrap();
    let run = env.run(&["snapshots"]).await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown scheme ftp://"),
        "{}",
        run.stderr
    );
    std::fs::write(
        &env.config,
        good.replace("[repository]", "[repository]\ncompression = \"max\""),
    )
    .unwrap();
    let run = env
        .run(&["backup", "--service", "onedrive", "--all-users"])
        .await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown field `compression`")
            && run.stderr.contains("m365bk.example.toml"),
        "{}",
        run.stderr
    );
    std::fs::write(
        &env.config,
        good.replace("tenant_id = \"", "tenant_id = \"x"),
    )
    .unwrap();
    let run = env.run(&["snapshots"]).await;
    assert_eq!(run.code, 78);
    assert!(
        run.stderr.contains("tenant.tenant_id") && run.stderr.contains("Directory (tenant) ID"),
        "{}",
        run.stderr
    );
    std::fs::write(&env.config, "this is [not toml").unwrap();
    let run = env.run(&["snapshots"]).await;
    assert_eq!(run.code, 78);
    assert!(run.stderr.contains("is invalid"), "{}", run.stderr);

    // An unreachable token endpoint: names the URL, says what to check, exit 75.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    std::fs::write(
        &env.config,
        good.replace(
            &format!("authority_url = \"{}\"", sim.base),
            &format!("authority_url = \"{dead}\""),
        ),
    )
    .unwrap();
    let run = env
        .run(&["backup", "--service", "onedrive", "--all-users"])
        .await;
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(
        run.stderr.contains(&dead),
        "names the unreachable URL: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("authority_url"),
        "says which setting to check: {}",
        run.stderr
    );
    std::fs::write(&env.config, &good).unwrap();

    // A wrong client secret: Entra's AADSTS7000215, explained; exit 77.
    let run = env
        .run_with(
            &["backup", "--service", "onedrive", "--all-users"],
            "not-the-secret",
        )
        .await;
    assert_eq!(run.code, 77, "{}", run.stderr);
    assert!(run.stderr.contains("7000215"), "{}", run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("secret value"),
        "says to use the secret VALUE: {}",
        run.stderr
    );
    assert_eq!(packs(&env.repo), packs_before, "failed runs wrote nothing");

    // A corrupt pack: back up a change, flip a byte in the pack that change wrote.
    let extra = std::fs::read(
        corpus
            .join("users")
            .join(&users[1])
            .join("drive")
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                walk_first_file(&corpus.join("users").join(&users[1]).join("drive"))
            }),
    )
    .unwrap();
    let mut changed = extra.clone();
    changed
        .extend_from_slice(b"\r\n-- appended by the corrupt-pack test so the content is new\r\n");
    sim.admin(
        reqwest::Method::PUT,
        &format!("users/{first_user}/drive/Corrupt/new-file.bin"),
        changed,
    )
    .await;
    let second_id = env.backup_one("onedrive", &first_user).await;
    let new_packs: Vec<PathBuf> = packs(&env.repo)
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .collect();
    assert!(!new_packs.is_empty(), "the second backup wrote a pack");
    let victim = &new_packs[0];
    flip_middle_byte(victim);
    let pack_name = victim.file_name().unwrap().to_string_lossy().to_string();

    let run = env.run(&["check", "--read-data"]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stdout.contains(&pack_name[..12]) || run.stdout.contains(&pack_name),
        "check names the pack: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&second_id[..12]),
        "check names the affected snapshot: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "affected item: snapshot {} Corrupt/new-file.bin",
            &second_id[..12]
        )),
        "check names the affected item: {}",
        run.stdout
    );
    let run = env
        .run(&[
            "restore",
            &second_id,
            "--path",
            "Corrupt",
            "--folder-name",
            "Restored-Corrupt",
        ])
        .await;
    assert_eq!(run.code, 3, "restoring damaged data is incomplete");
    assert!(
        run.stdout.contains("not restored: Corrupt/new-file.bin: ")
            && run.stdout.contains("1 item(s) not restored (exit 3)")
            && !run.stdout.contains("{\""),
        "one line per item, no raw JSON: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains(&pack_name[..12]) && run.stderr.contains("check --read-data"),
        "names the pack and the fix: {}",
        run.stderr
    );

    // The earlier snapshot still restores, byte for byte.
    let source = sim.export(&first_user).await;
    env.run(&["restore", &first_id, "--folder-name", "Restored-Earlier"])
        .await
        .ok();
    let after = sim.export(&first_user).await;
    let mut want = content_set(&source, "drive", "");
    want.retain(|(p, _), _| !p.starts_with("Corrupt/"));
    assert_eq!(content_set(&after, "drive", "Restored-Earlier"), want);

    // `repair index` drops the damaged blob from the index; the next backup downloads the
    // file again (its parent's content is no longer all in the repository), and both the new
    // snapshot and the damaged one (same content, same blob ids) restore it.
    let run = env.run(&["repair", "index"]).await.ok();
    assert!(
        run.stdout.contains(&pack_name) && run.stdout.contains("index rebuilt"),
        "{}",
        run.stdout
    );
    let third_id = env.backup_one("onedrive", &first_user).await;
    let want_corrupt: BTreeMap<_, _> = content_set(&source, "drive", "")
        .into_iter()
        .filter(|((p, _), _)| p.starts_with("Corrupt/"))
        .collect();
    assert!(!want_corrupt.is_empty());
    for (id, folder) in [
        (&third_id, "Restored-Third"),
        (&second_id, "Restored-Healed"),
    ] {
        env.run(&["restore", id, "--path", "Corrupt", "--folder-name", folder])
            .await
            .ok();
        let got = content_set(&sim.export(&first_user).await, "drive", folder);
        assert_eq!(got, want_corrupt, "snapshot {id} restores the file again");
    }

    // With the index files gone, `ls` names the snapshot whose item list it cannot read, the
    // unindexed blob, and the causes including a repair that dropped it.
    let index = env.repo.join("index");
    let aside = env.repo.join("index-aside");
    std::fs::rename(&index, &aside).unwrap();
    std::fs::create_dir(&index).unwrap();
    let run = env.run(&["ls", &third_id]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "cannot read the item list of snapshot {}: blob ",
            &third_id[..12]
        )) && run.stderr.contains("is in no index file")
            && run
                .stderr
                .contains("`m365bk repair index` dropped it as damaged"),
        "{}",
        run.stderr
    );
    std::fs::remove_dir(&index).unwrap();
    std::fs::rename(&aside, &index).unwrap();
    env.run(&["ls", &third_id]).await.ok();
}

fn walk_first_file(dir: &Path) -> PathBuf {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in &entries {
        if p.is_file() {
            return p.clone();
        }
    }
    for p in &entries {
        if p.is_dir() {
            return walk_first_file(p);
        }
    }
    panic!("no file under {}", dir.display())
}
