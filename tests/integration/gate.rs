//! Done-when 4: the gate refuses a job missing any one backup permission before any Graph
//! data request, with an ERROR naming it; exactly the matrix's permissions get no 403.

use serde_json::Value;

use super::harness::{app_role_id, corpus, matrix_permissions, Env, Sim};

fn data_requests(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .filter(|p| !p.contains("/oauth2/v2.0/token"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_backup_permission_refuses_the_job_before_any_data_request() {
    let corpus = corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &[]).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();

    for service in ["exchange", "onedrive"] {
        let required = matrix_permissions(service, &["discovery", "backup"]);
        assert!(!required.is_empty());
        for missing in &required {
            let roles: Vec<String> = required.iter().filter(|p| *p != missing).cloned().collect();
            sim.set_roles(&roles).await;
            sim.clear_requests().await;
            let run = env
                .run(&["backup", "--service", service, "--all-users"])
                .await;
            assert_eq!(
                run.code, 77,
                "{service} without {missing}: exit 77 (no permission)\n{}",
                run.stderr
            );
            let log = sim.requests().await;
            assert!(!log.is_empty(), "the token request was made");
            assert_eq!(
                data_requests(&log),
                Vec::<String>::new(),
                "{service} without {missing}: no Graph data request"
            );
            let errors: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.contains("ERROR") && l.contains("job refused"))
                .collect();
            assert_eq!(
                errors.len(),
                1,
                "one ERROR event for the refused job: {}",
                run.stderr
            );
            let line = errors[0];
            assert!(line.contains(missing.as_str()), "names {missing}: {line}");
            assert!(
                line.contains(&app_role_id(missing)),
                "gives {missing}'s app role id: {line}"
            );
            assert!(
                line.contains("Microsoft Graph") && line.contains("application permission"),
                "names API and type: {line}"
            );
            assert!(
                line.contains("admin consent"),
                "says how to grant it: {line}"
            );
            assert!(
                line.contains(super::harness::CLIENT_ID)
                    && line.contains(super::harness::TENANT_ID),
                "names client and tenant: {line}"
            );
            for other in roles.iter() {
                assert!(
                    !line.contains(&format!("{other} (")),
                    "does not call granted {other} missing: {line}"
                );
            }
        }
        // Exactly the matrix's permissions: the backup runs and Microsoft (the simulator's
        // per-endpoint table) refuses nothing.
        sim.set_roles(&required).await;
        sim.clear_requests().await;
        env.run(&["backup", "--service", service, "--all-users"])
            .await
            .ok();
        let log = sim.requests().await;
        let denied: Vec<&Value> = log.iter().filter(|r| r["status"] == 403).collect();
        assert!(
            denied.is_empty(),
            "{service} with exactly {required:?}: no 403, got {denied:#?}"
        );
        assert!(
            data_requests(&log).len() > 2,
            "{service}: the backup read data"
        );
    }

    // Recovery with exactly the matrix's recovery permissions: no 403.
    let list = env.run(&["--json", "snapshots"]).await.ok().json();
    for snap in list.as_array().unwrap() {
        let service = snap["service"].as_str().unwrap();
        let recovery = matrix_permissions(service, &["recovery"]);
        sim.set_roles(&recovery).await;
        sim.clear_requests().await;
        let id = snap["id"].as_str().unwrap();
        env.run(&["restore", id, "--folder-name", "Gate-Restore"])
            .await
            .ok();
        let log = sim.requests().await;
        let denied: Vec<&Value> = log.iter().filter(|r| r["status"] == 403).collect();
        assert!(
            denied.is_empty(),
            "{service} restore with exactly {recovery:?}: no 403, got {denied:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_permission_satisfies_lower_and_no_consent_is_named() {
    let corpus = corpus(true);
    let tmp = tempfile::tempdir().unwrap();
    let sim = Sim::start(tmp.path(), &corpus, &[]).await;
    let env = Env::new(&sim.base);
    env.run(&["init"]).await.ok();

    // Mail.ReadWrite covers Mail.Read (documented); the log says which permission met it.
    let mut roles: Vec<String> = matrix_permissions("exchange", &["discovery", "backup"])
        .into_iter()
        .filter(|p| p != "Mail.Read")
        .collect();
    roles.push("Mail.ReadWrite".into());
    sim.set_roles(&roles).await;
    let run = env
        .run(&[
            "permissions",
            "check",
            "--service",
            "exchange",
            "--operation",
            "backup",
        ])
        .await
        .ok();
    assert!(
        run.stdout.contains("Mail.Read") && run.stdout.contains("met by Mail.ReadWrite"),
        "{}",
        run.stdout
    );
    let run = env
        .run(&[
            "backup",
            "--service",
            "exchange",
            "--all-users",
            "--items",
            "mail",
        ])
        .await
        .ok();
    assert!(
        run.stderr
            .contains("Mail.Read (met by Mail.ReadWrite, which includes it)"),
        "{}",
        run.stderr
    );

    // Files.Read.All is not covered by an undocumented neighbour (Sites.Read.All).
    sim.set_roles(&["User.Read.All".to_string(), "Sites.Read.All".to_string()])
        .await;
    let run = env
        .run(&[
            "permissions",
            "check",
            "--service",
            "onedrive",
            "--operation",
            "backup",
        ])
        .await;
    assert_eq!(run.code, 77);
    assert!(
        run.stdout.contains("MISSING") && run.stdout.contains("Files.Read.All"),
        "{}",
        run.stdout
    );

    // No admin consent: the token has no roles claim at all.
    sim.set_roles(&matrix_permissions("onedrive", &["discovery", "backup"]))
        .await;
    sim.set_consent(false).await;
    sim.clear_requests().await;
    let run = env
        .run(&["backup", "--service", "onedrive", "--all-users"])
        .await;
    assert_eq!(run.code, 77);
    assert!(
        run.stderr.contains("admin consent not granted"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "Admin consent not granted: the access token for Microsoft Graph has no roles claim"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(data_requests(&sim.requests().await), Vec::<String>::new());
}
