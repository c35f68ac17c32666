//! The commands: each resolves settings, then runs, then maps its outcome to an exit code.

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use m365bk_gate::{
    authorize, AuthorizedJob, GateContext, ItemType, JobSpec, Operation, PermissionMatrix, Service,
    UserSelection,
};
use m365bk_graph::{Endpoints, GraphClient, HttpClient, HttpOptions, SdkDirectory, TokenProvider};
use m365bk_store::{
    Catalog, CheckOptions, Encryption, InitOptions, Item, JobRun, KdfParams, Repository, Snapshot,
};
use m365bk_store::{ForgetOptions, LockKind, LockOptions, PruneOptions};
use serde_json::json;

use crate::cli::{
    BackupArgs, Command, InitArgs, KdfArgs, KeyCommand, NewPassphraseArgs, Opts,
    PermissionsCommand, RepairCommand, RestoreArgs,
};
use crate::cli::{ForgetArgs, PruneArgs};
use crate::config::{self, ConfigError, Settings};
use crate::exit::ExitCode;

/// How long to wait for, and how long to hold, repository locks (from `--lock-wait` and
/// `--lock-ttl`); set once per process by [`run`].
static LOCK_OPTIONS: std::sync::OnceLock<LockOptions> = std::sync::OnceLock::new();

fn lock_options() -> LockOptions {
    LOCK_OPTIONS.get().copied().unwrap_or_default()
}

/// Runs one command; never panics on bad input: every failure becomes a logged error and an
/// exit code. Repository locks the command dropped are deleted before it returns.
pub async fn run(opts: Opts) -> ExitCode {
    let code = run_command(&opts).await;
    m365bk_store::finish_lock_releases().await;
    code
}

async fn run_command(opts: &Opts) -> ExitCode {
    let _ = LOCK_OPTIONS.set(LockOptions {
        wait: std::time::Duration::from_secs(opts.lock_wait),
        ttl: std::time::Duration::from_secs(opts.lock_ttl),
    });
    if let Command::Permissions {
        command: PermissionsCommand::List,
    } = &opts.command
    {
        print_matrix(opts.json);
        return ExitCode::Success;
    }
    let settings = match Settings::load(&opts.config) {
        Ok(s) => s,
        Err(e) => {
            report_error(&e.to_string(), false);
            return ExitCode::Config;
        }
    };
    let result = match &opts.command {
        Command::Init(args) => init(&settings, args).await,
        Command::Backup(args) => backup(&settings, args, opts.json).await,
        Command::Snapshots { service } => snapshots(&settings, service.as_deref(), opts.json).await,
        Command::Ls { snapshot } => ls(&settings, snapshot, opts.json).await,
        Command::Restore(args) => restore(&settings, args, opts.json).await,
        Command::Permissions {
            command:
                PermissionsCommand::Check {
                    service,
                    operation,
                    items,
                    conditions,
                },
        } => permissions_check(&settings, service, operation, items, conditions, opts.json).await,
        Command::Permissions {
            command: PermissionsCommand::List,
        } => unreachable!("handled above"),
        Command::Check {
            read_data,
            read_data_subset,
        } => {
            let check_opts = match read_data_subset {
                Some(percent) => CheckOptions::read_data_subset(*percent),
                None if *read_data => CheckOptions::read_data(),
                None => CheckOptions::structure(),
            };
            check(&settings, check_opts, opts.json).await
        }
        Command::Repair {
            command: RepairCommand::Catalog,
        } => repair_catalog(&settings).await,
        Command::Repair {
            command: RepairCommand::Index { dry_run },
        } => repair_index(&settings, *dry_run, opts.json).await,
        Command::Key { command } => key(&settings, command, opts.json).await,
        Command::Forget(args) => forget(&settings, args, opts.json).await,
        Command::Prune(args) => prune(&settings, args, opts.json).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            let code = classify(&err);
            let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
            let msg = dedup_chain(&chain);
            // The gate has already logged a refusal as its one ERROR event for the job.
            let logged = err.chain().any(|c| {
                matches!(
                    c.downcast_ref::<m365bk_gate::Error>(),
                    Some(m365bk_gate::Error::Refused(_))
                )
            });
            report_error(&msg, logged);
            code
        }
    }
}

/// Tells the operator once: as an ERROR event (stderr, or the journal under systemd), or —
/// when ERROR events are filtered out (`M365BK_LOG=off`) — as a plain `m365bk: …` line.
/// `already_logged`: the gate has logged this refusal as its one ERROR event for the job.
fn report_error(msg: &str, already_logged: bool) {
    if !tracing::enabled!(tracing::Level::ERROR) {
        eprintln!("m365bk: {msg}");
    } else if !already_logged {
        tracing::error!("{msg}");
    }
}

/// Joins an error chain, dropping causes already quoted by their parent.
fn dedup_chain(chain: &[String]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in chain {
        if !out.iter().any(|o| o.contains(c.as_str())) {
            out.push(c);
        }
    }
    out.join(": ")
}

/// Arguments that parse but ask for something that cannot be done as asked: exit 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Maps an error to its exit code by type (never by message).
fn classify(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return ExitCode::Usage;
        }
        if let Some(e) = cause.downcast_ref::<m365bk_store::Error>() {
            match e {
                m365bk_store::Error::RepositoryNotFound { .. } => {
                    return ExitCode::RepositoryMissing
                }
                m365bk_store::Error::RepositoryLocked { .. } => return ExitCode::Locked,
                m365bk_store::Error::UnsupportedLocation { .. }
                | m365bk_store::Error::BackendConfig { .. }
                | m365bk_store::Error::ContainerNotFound { .. } => return ExitCode::Config,
                m365bk_store::Error::AccessDenied { .. } => return ExitCode::NoPermission,
                m365bk_store::Error::Backend { .. } if e.is_transient() => {
                    return ExitCode::TempFail
                }
                m365bk_store::Error::WrongPassphrase { .. }
                | m365bk_store::Error::PassphraseRequired { .. } => {
                    return ExitCode::WrongPassphrase
                }
                // These come from the command line (key derivation: its flags or
                // M365BK_KDF_*; ids: `forget --snapshot`, `restore`, `ls`).
                m365bk_store::Error::InvalidPolicy { .. }
                | m365bk_store::Error::InvalidKdfParams { .. }
                | m365bk_store::Error::InvalidId { .. } => return ExitCode::Usage,
                _ => {}
            }
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return ExitCode::Config;
        }
        if let Some(e) = cause.downcast_ref::<m365bk_gate::Error>() {
            return match e {
                m365bk_gate::Error::Refused(_) => ExitCode::NoPermission,
                m365bk_gate::Error::Token { source, .. } => graph_exit(source),
                _ => ExitCode::Config,
            };
        }
        if let Some(e) = cause.downcast_ref::<m365bk_graph::Error>() {
            return graph_exit(e);
        }
    }
    ExitCode::Failure
}

fn graph_exit(e: &m365bk_graph::Error) -> ExitCode {
    match e {
        m365bk_graph::Error::Token { .. } => ExitCode::NoPermission,
        m365bk_graph::Error::Unreachable { .. } | m365bk_graph::Error::Throttled { .. } => {
            ExitCode::TempFail
        }
        _ if e.is_access_denied() => ExitCode::NoPermission,
        _ => ExitCode::Failure,
    }
}

async fn open_repo(settings: &Settings) -> anyhow::Result<Repository> {
    let passphrase = settings.passphrase()?;
    let repo =
        Repository::open_with_backend(&settings.repository, &settings.backend, passphrase).await?;
    // The local index cache (derived from the repository, rebuilt when missing or stale) lives
    // next to the catalog: `<catalog dir>/index-cache/<repository id>.index`.
    repo.set_index_cache_dir(settings.catalog.parent().map(|d| d.join("index-cache")));
    Ok(repo)
}

fn kdf_params(args: &KdfArgs) -> KdfParams {
    let d = KdfParams::RECOMMENDED;
    KdfParams {
        memory_kib: args.kdf_memory_kib.unwrap_or(d.memory_kib),
        iterations: args.kdf_iterations.unwrap_or(d.iterations),
        parallelism: args.kdf_parallelism.unwrap_or(d.parallelism),
    }
}

fn open_catalog(settings: &Settings) -> anyhow::Result<Catalog> {
    Catalog::open(&settings.catalog).with_context(|| {
        format!(
            "opening the catalog {} (set catalog.path in the config to a writable location)",
            settings.catalog.display()
        )
    })
}

async fn init(settings: &Settings, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let encryption = if args.no_encryption {
        tracing::warn!(
            "creating an UNENCRYPTED repository (--no-encryption): anyone who can read {} can read the backups",
            settings.repository
        );
        Encryption::None
    } else {
        Encryption::Passphrase(settings.passphrase()?.ok_or(ConfigError::NoPassphrase)?)
    };
    let opts = InitOptions {
        encryption,
        kdf: kdf_params(&args.kdf),
        cipher: args.cipher,
    };
    let repo = Repository::init_with_backend(&settings.repository, &settings.backend, opts).await?;
    let catalog = open_catalog(settings)?;
    catalog.sync(&repo).await?;
    match repo.current_key() {
        Some(key) => println!(
            "created encrypted repository {} at {} ({}, key slot {}); keep the passphrase safe: without it the backups cannot be read",
            repo.id(),
            repo.location(),
            args.cipher,
            key.short()
        ),
        None => println!(
            "created UNENCRYPTED repository {} at {}",
            repo.id(),
            repo.location()
        ),
    }
    Ok(ExitCode::Success)
}

async fn key(
    settings: &Settings,
    command: &KeyCommand,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let new_passphrase =
        |args: &NewPassphraseArgs| config::new_passphrase(args.new_passphrase_file.as_deref());
    match command {
        KeyCommand::List => {
            let keys = repo.list_keys().await?;
            if json_out {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                println!("{:<9} {:<20}  {:<24}  KDF", "ID", "CREATED (UTC)", "HOST");
                for k in &keys {
                    println!(
                        "{}{:<8} {:<20}  {:<24}  {}{}",
                        if k.current { "*" } else { " " },
                        k.id.short(),
                        k.created.format("%Y-%m-%d %H:%M:%S"),
                        k.hostname,
                        k.kdf,
                        if k.kdf.is_below_recommended() {
                            "  (below the recommended cost: tests only)"
                        } else {
                            ""
                        }
                    );
                }
                println!("(* = the key slot the current passphrase opens)");
            }
        }
        KeyCommand::Add { new, kdf } => {
            let passphrase = new_passphrase(new)?;
            let id = repo.add_key(passphrase, kdf_params(kdf)).await?;
            if json_out {
                println!("{}", json!({ "added": id.to_string() }));
            } else {
                println!(
                    "added key slot {}: the new passphrase opens repository {} too",
                    id.short(),
                    repo.location()
                );
            }
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(id).await?;
            if json_out {
                println!("{}", json!({ "removed": removed.to_string() }));
            } else {
                println!(
                    "removed key slot {}: its passphrase no longer opens the repository",
                    removed.short()
                );
            }
        }
        KeyCommand::Passwd { new, kdf } => {
            let passphrase = new_passphrase(new)?;
            let old = repo.current_key();
            let id = repo.change_passphrase(passphrase, kdf_params(kdf)).await?;
            if json_out {
                println!(
                    "{}",
                    json!({ "added": id.to_string(), "removed": old.map(|o| o.to_string()) })
                );
            } else {
                println!(
                    "passphrase changed: key slot {} replaces {}; put the new passphrase in repository.passphrase_file (or $M365BK_PASSPHRASE, or the repository-passphrase credential) now",
                    id.short(),
                    old.map(|o| o.short()).unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::Success)
}

/// Everything needed to talk to Microsoft for one job.
fn gate_context(settings: &Settings) -> anyhow::Result<GateContext> {
    let credential = settings.client_credential()?;
    let http = HttpClient::new(HttpOptions {
        throttle: settings.throttle.clone(),
        ..HttpOptions::default()
    })?;
    let endpoints = Endpoints {
        authority: settings.authority.clone(),
        graph_base: settings.graph_base.clone(),
    };
    let tokens = Arc::new(TokenProvider::new(http.clone(), endpoints, credential));
    // graph-rs-sdk's typed requests for single directory reads; our own client for the rest
    // (DESIGN §6).
    let directory = Arc::new(SdkDirectory::new(
        &http,
        tokens.clone(),
        settings.graph_base.clone(),
    ));
    let graph = GraphClient::new(http, tokens.clone(), settings.graph_base.clone());
    Ok(GateContext {
        tenant_id: settings.tenant_id.clone(),
        client_id: settings.client_id.clone(),
        tokens,
        graph,
        directory,
        sharepoint_host: settings.sharepoint_host.clone(),
    })
}

fn parse_items(items: &[String]) -> anyhow::Result<Option<std::collections::BTreeSet<ItemType>>> {
    if items.is_empty() {
        return Ok(None);
    }
    let set = items
        .iter()
        .map(|s| s.parse::<ItemType>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(set))
}

fn parse_service(s: &str) -> anyhow::Result<Service> {
    s.parse::<Service>().map_err(anyhow::Error::msg)
}

/// Runs the gate and records a refusal in the catalog.
async fn gate(
    settings: &Settings,
    catalog: &Catalog,
    spec: JobSpec,
) -> anyhow::Result<AuthorizedJob> {
    let ctx = gate_context(settings)?;
    let started = chrono::Utc::now();
    let service = spec.service;
    let operation = spec.operation;
    let id = spec.id.to_string();
    match authorize(&ctx, spec).await {
        Ok(job) => Ok(job),
        Err(err) => {
            let (outcome, detail) = match &err {
                m365bk_gate::Error::Refused(report) => ("refused", serde_json::to_value(report)?),
                other => ("failed", json!({ "error": other.to_string() })),
            };
            let run = JobRun {
                job_id: id,
                service: service.to_string(),
                operation: operation.to_string(),
                started_at: started,
                finished_at: chrono::Utc::now(),
                outcome: outcome.into(),
                detail,
            };
            if let Err(e) = catalog.record_job_run(&run) {
                tracing::warn!(error = %e, "could not record the job run in the catalog");
            }
            Err(err.into())
        }
    }
}

fn latest_parent(snapshots: &[Snapshot], service: &str, resource_id: &str) -> Option<Snapshot> {
    snapshots
        .iter()
        .filter(|s| s.service == service && s.resource_id == resource_id)
        .max_by_key(|s| s.time)
        .cloned()
}

async fn backup(
    settings: &Settings,
    args: &BackupArgs,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let service = parse_service(&args.service)?;
    if !matches!(service, Service::Exchange | Service::OneDrive) {
        anyhow::bail!("backup of {service} is not implemented yet: this release backs up exchange and onedrive");
    }
    let repo = open_repo(settings).await?;
    let catalog = open_catalog(settings)?;
    let users = if args.users.all_users {
        UserSelection::All
    } else {
        UserSelection::Users(args.users.users.clone())
    };
    let mut spec = JobSpec::new(service, Operation::Backup, users);
    if let Some(items) = parse_items(&args.items)? {
        if service != Service::Exchange {
            return Err(UsageError(format!(
                "--items selects Exchange item types; {service} backups take no --items"
            ))
            .into());
        }
        spec.selection.item_types = items;
    }
    let started = chrono::Utc::now();
    let job = gate(settings, &catalog, spec).await?;
    let users = job
        .resolve_users()
        .await
        .context("resolving the job's users")?;
    // The shared backup lock before anything is read: a prune that ran before it cannot
    // have deleted what this session deduplicates against.
    let writer = repo.begin_backup_with(&lock_options()).await?;
    writer.set_index_checkpoint(settings.index_checkpoint);
    // A damaged snapshot cannot be a parent: its resource's newest readable snapshot (or
    // none) is used instead, and the job goes on rather than failing on it.
    let scan = repo.scan_snapshots().await?;
    for u in &scan.unreadable {
        tracing::warn!(snapshot = %u.id, error = %u.error, "snapshot unreadable: not used as a parent; run `m365bk check --read-data`");
    }
    let existing = scan.snapshots;
    let mut snapshots = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut skipped = 0usize;
    // Several resources at once: Microsoft's limits are per mailbox (Outlook) or per app
    // (SharePoint), and the Graph client's admission control keeps each of them, so one
    // mailbox's budget or 429 does not hold up the others. Catalog writes stay in this loop.
    let (job_ref, writer_ref, repo_ref, existing_ref) = (&job, &writer, &repo, &existing);
    let catalog_ref = &catalog;
    let mut running = futures::stream::iter(users.iter())
        .map(|user| async move {
            let result = backup_resource(
                settings,
                catalog_ref,
                service,
                job_ref,
                writer_ref,
                repo_ref,
                existing_ref,
                user,
                &args.tags,
            )
            .await;
            (user, result)
        })
        .buffer_unordered(settings.parallel_resources.max(1));
    while let Some((user, result)) = running.next().await {
        match result {
            Ok((snapshot, items)) => {
                skipped += snapshot.skipped.len();
                if let Err(e) = catalog.record_snapshot(repo.id(), &snapshot, &items) {
                    tracing::warn!(error = %e, "snapshot saved, but the catalog could not be updated: run `m365bk repair catalog`");
                }
                tracing::info!(
                    snapshot = %snapshot.id,
                    user = %user.user_principal_name,
                    items = snapshot.item_count,
                    bytes = snapshot.total_size,
                    "snapshot saved"
                );
                snapshots.push(snapshot);
            }
            Err(err) => {
                let msg = dedup_chain(&err.chain().map(|e| e.to_string()).collect::<Vec<_>>());
                tracing::error!(user = %user.user_principal_name, error = %msg, "resource not backed up; going on with the others");
                failures.push((user.user_principal_name.clone(), msg));
            }
        }
    }
    drop(running);
    let stats = writer.finish().await?;
    let outcome = if !failures.is_empty() || skipped > 0 {
        "partial"
    } else {
        "ok"
    };
    let summary = json!({
        "job_id": job.spec().id.to_string(),
        "service": service.as_str(),
        "outcome": outcome,
        "snapshots": snapshots.iter().map(|s| json!({
            "id": s.id.to_string(), "resource": s.resource_name, "items": s.item_count,
            "bytes": s.total_size, "skipped": s.skipped.len(),
        })).collect::<Vec<_>>(),
        "failed_resources": failures.iter().map(|(u, e)| json!({"resource": u, "error": e})).collect::<Vec<_>>(),
        "bytes_in": stats.bytes_in,
        "bytes_new": stats.bytes_new,
        "bytes_stored": stats.bytes_stored,
        "blobs_new": stats.blobs_new,
        "packs_written": stats.packs_written,
    });
    let run = JobRun {
        job_id: job.spec().id.to_string(),
        service: service.to_string(),
        operation: "backup".into(),
        started_at: started,
        finished_at: chrono::Utc::now(),
        outcome: outcome.into(),
        detail: summary.clone(),
    };
    if let Err(e) = catalog.record_job_run(&run) {
        tracing::warn!(error = %e, "could not record the job run in the catalog");
    }
    if json_out {
        println!("{summary}");
    } else {
        println!(
            "backup of {} finished: {} snapshot(s), {} resource(s) failed, {} item(s) skipped; read {} bytes, {} new, {} stored after dedup and compression",
            service,
            snapshots.len(),
            failures.len(),
            skipped,
            stats.bytes_in,
            stats.bytes_new,
            stats.bytes_stored
        );
        for s in &snapshots {
            println!(
                "  {}  {}  {} items  {} bytes",
                short(&s.id.to_string()),
                s.resource_name,
                s.item_count,
                s.total_size
            );
        }
    }
    Ok(if outcome == "ok" {
        ExitCode::Success
    } else {
        ExitCode::Incomplete
    })
}

/// Backs up one resource (mailbox or drive) of a job and commits its snapshot; returns the
/// snapshot and its items for the catalog. `tags` go on the snapshot.
#[allow(clippy::too_many_arguments)] // the job's context, passed by reference from one loop
async fn backup_resource(
    settings: &Settings,
    catalog: &m365bk_store::Catalog,
    service: Service,
    job: &AuthorizedJob,
    writer: &m365bk_store::BackupWriter,
    repo: &Repository,
    existing: &[Snapshot],
    user: &m365bk_gate::DirectoryUser,
    tags: &[String],
) -> anyhow::Result<(Snapshot, Vec<Item>)> {
    let parent = latest_parent(existing, service.as_str(), &user.id);
    let parent_items = match &parent {
        // A parent whose item list cannot be read (damaged or unindexed data) must not stop
        // the job: back this resource up in full and say why.
        Some(p) => match repo.load_items(p).await {
            Ok(items) => Some(items),
            Err(e) => {
                tracing::warn!(
                    user = %user.user_principal_name,
                    parent = %p.id,
                    error = %e,
                    "the previous snapshot cannot be read: backing this resource up in full"
                );
                None
            }
        },
        None => None,
    };
    let parent = if parent_items.is_some() { parent } else { None };
    // Delta pages are saved in the catalog as they arrive, and each item's stored content
    // as it is stored; both are dropped once the snapshot is committed: a killed backup
    // resumes each enumeration from its last page, and does not download again what the
    // repository indexed before the kill.
    let scope = format!("{}/{}", service.as_str(), user.id);
    let stored = m365bk_store::ItemJournal::new(catalog.clone(), scope.clone());
    let journal: Arc<dyn m365bk_graph::DeltaJournal> = Arc::new(CatalogJournal {
        catalog: catalog.clone(),
        scope: scope.clone(),
        stored: stored.clone(),
    });
    let mut draft = match service {
        Service::Exchange => {
            let parent = parent
                .zip(parent_items)
                .map(|(snapshot, items)| m365bk_exchange::ParentSnapshot { snapshot, items });
            let opts = m365bk_exchange::BackupOptions {
                page_size: settings.page_size,
                concurrency: settings.concurrency,
                journal: Some(journal),
                stored: Some(stored),
            };
            m365bk_exchange::backup_mailbox(job, writer, user, parent.as_ref(), &opts).await?
        }
        Service::OneDrive => {
            let parent = parent
                .zip(parent_items)
                .map(|(snapshot, items)| m365bk_onedrive::ParentSnapshot { snapshot, items });
            let opts = m365bk_onedrive::BackupOptions {
                page_size: settings.drive_page_size,
                concurrency: settings.concurrency,
                journal: Some(journal),
                stored: Some(stored),
            };
            m365bk_onedrive::backup_drive(job, writer, user, parent.as_ref(), &opts).await?
        }
        _ => anyhow::bail!("backup of {service} is not implemented yet"),
    };
    draft.tags.extend(tags.iter().cloned());
    let snapshot = writer.commit_snapshot(draft).await?;
    if let Err(e) = catalog.discard_delta_pages(&scope, None) {
        tracing::warn!(error = %e, "snapshot saved, but its delta progress could not be dropped from the catalog");
    }
    if let Err(e) = catalog.discard_stored_items(&scope, None) {
        tracing::warn!(error = %e, "snapshot saved, but its stored-item journal could not be dropped from the catalog");
    }
    let items = repo.load_items(&snapshot).await?;
    Ok((snapshot, items))
}

/// Delta pages of one resource's backup, saved in the catalog's `delta_pages` table.
#[derive(Debug)]
struct CatalogJournal {
    catalog: m365bk_store::Catalog,
    /// `service/resource id`.
    scope: String,
    /// The same resource's stored items: a collection whose walk starts afresh drops them too.
    stored: m365bk_store::ItemJournal,
}

impl m365bk_graph::DeltaJournal for CatalogJournal {
    fn load(
        &self,
        collection: &str,
    ) -> m365bk_graph::Result<Vec<(String, m365bk_graph::DeltaPage)>> {
        let rows = self
            .catalog
            .delta_pages(&self.scope, collection)
            .map_err(journal_err)?;
        let mut pages = Vec::with_capacity(rows.len());
        for r in rows {
            let items = match serde_json::from_str(&r.items) {
                Ok(items) => items,
                Err(e) => {
                    return Err(m365bk_graph::Error::Journal {
                        detail: format!("saved page of {collection} is not JSON: {e}"),
                    })
                }
            };
            let page = m365bk_graph::DeltaPage {
                items,
                next_link: r.next_link,
                delta_link: r.delta_link,
            };
            pages.push((r.start, page));
        }
        Ok(pages)
    }

    fn append(
        &self,
        collection: &str,
        start: &str,
        seq: u64,
        page: &m365bk_graph::DeltaPage,
    ) -> m365bk_graph::Result<()> {
        let row = m365bk_store::DeltaPageRow {
            start: start.to_owned(),
            items: serde_json::to_string(&page.items).unwrap_or_else(|_| "[]".into()),
            next_link: page.next_link.clone(),
            delta_link: page.delta_link.clone(),
        };
        self.catalog
            .save_delta_page(&self.scope, collection, seq, &row)
            .map_err(journal_err)
    }

    fn discard(&self, collection: &str) -> m365bk_graph::Result<()> {
        self.catalog
            .discard_delta_pages(&self.scope, Some(collection))
            .map_err(journal_err)?;
        self.stored.discard(Some(collection)).map_err(journal_err)
    }
}

fn journal_err(e: m365bk_store::Error) -> m365bk_graph::Error {
    m365bk_graph::Error::Journal {
        detail: e.to_string(),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

async fn snapshots(
    settings: &Settings,
    service: Option<&str>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(s) = service {
        parse_service(s)?;
    }
    let repo = open_repo(settings).await?;
    let catalog = open_catalog(settings)?;
    let synced = catalog.sync(&repo).await?;
    let rows: Vec<_> = catalog
        .snapshots(repo.id())?
        .into_iter()
        .filter(|r| service.is_none_or(|s| r.service == s))
        .collect();
    if json_out {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!(
            "{:<12}  {:<20}  {:<9}  {:<40}  {:>7}  {:>12}",
            "ID", "TIME (UTC)", "SERVICE", "RESOURCE", "ITEMS", "BYTES"
        );
        for r in &rows {
            println!(
                "{:<12}  {:<20}  {:<9}  {:<40}  {:>7}  {:>12}",
                short(&r.id.to_string()),
                r.time.format("%Y-%m-%d %H:%M:%S"),
                r.service,
                r.resource_name,
                r.item_count,
                r.total_size
            );
        }
        for u in &synced.unreadable {
            let listed = rows.iter().any(|r| r.id == u.id);
            print_unreadable(
                std::slice::from_ref(u),
                if listed {
                    "listed above from the catalog's earlier record"
                } else {
                    "not listed"
                },
            );
        }
    }
    Ok(if synced.unreadable.is_empty() {
        ExitCode::Success
    } else {
        ExitCode::Incomplete
    })
}

/// Names each snapshot that could not be read, with the way out.
fn print_unreadable(unreadable: &[m365bk_store::UnreadableSnapshot], what_happened: &str) {
    for u in unreadable {
        println!(
            "unreadable snapshot {} ({what_happened}): {}\n  run `m365bk check --read-data` to see what it affects; if it cannot be repaired, remove it with `m365bk forget --snapshot {}`",
            u.id, u.error, u.id
        );
    }
}

async fn ls(settings: &Settings, id: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let snapshot = repo.find_snapshot(id).await?;
    let items = repo.load_items(&snapshot).await.with_context(|| {
        format!(
            "cannot read the item list of snapshot {}",
            short(&snapshot.id.to_string())
        )
    })?;
    if json_out {
        println!("{}", serde_json::to_string(&items)?);
    } else {
        println!(
            "snapshot {} of {} ({}) taken {}",
            snapshot.id, snapshot.resource_name, snapshot.service, snapshot.time
        );
        for i in &items {
            println!("{:<14} {:>10}  {}", i.kind, i.size, i.path);
        }
        for s in &snapshot.skipped {
            println!("skipped        {}: {}", s.path, s.reason);
        }
    }
    Ok(ExitCode::Success)
}

async fn restore(
    settings: &Settings,
    args: &RestoreArgs,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let catalog = open_catalog(settings)?;
    // Shared: no prune deletes or moves the snapshot's data while it is read.
    let _lock = repo.lock(LockKind::Restore, &lock_options()).await?;
    let snapshot = repo.find_snapshot(&args.snapshot).await?;
    let service = parse_service(&snapshot.service)?;
    let target = args
        .to_user
        .clone()
        .unwrap_or_else(|| snapshot.resource_name.clone());
    let folder_name = args
        .folder_name
        .clone()
        .unwrap_or_else(|| format!("Restored-{}", chrono::Utc::now().format("%Y-%m-%dT%H%M%SZ")));
    let items: Vec<Item> = repo.load_items(&snapshot).await?;
    if !args.paths.is_empty() {
        for p in &args.paths {
            if !items.iter().any(|i| i.is_under(p)) {
                anyhow::bail!(
                    "no item of snapshot {} is under --path {p:?}: run `m365bk ls {}` to see its paths",
                    snapshot.id.short(),
                    snapshot.id.short()
                );
            }
        }
    }
    let mut spec = JobSpec::new(
        service,
        Operation::Recovery,
        UserSelection::Users(vec![target.clone()]),
    );
    if service == Service::Exchange {
        // Only the item types present in the snapshot need write permissions.
        let kinds: std::collections::BTreeSet<&str> =
            items.iter().map(|i| i.kind.as_str()).collect();
        let mut types = std::collections::BTreeSet::new();
        for (k, t) in [
            (m365bk_exchange::kind::MESSAGE, ItemType::Mail),
            (m365bk_exchange::kind::CONTACT, ItemType::Contacts),
            (m365bk_exchange::kind::EVENT, ItemType::Calendar),
        ] {
            if kinds.contains(k) {
                types.insert(t);
            }
        }
        spec.selection.item_types = types;
    }
    let started = chrono::Utc::now();
    let job = gate(settings, &catalog, spec).await?;
    let (report, text, failures) = match service {
        Service::Exchange => {
            let opts = m365bk_exchange::RestoreOptions {
                target_user: target.clone(),
                folder_name: folder_name.clone(),
                path_prefixes: args.paths.clone(),
                concurrency: settings.concurrency,
            };
            let r = m365bk_exchange::restore_mailbox(&job, &repo, &items, &opts).await?;
            let text = format!(
                "{} message(s) ({} bytes of MIME), {} mail folder(s), {} contact(s), {} event(s)",
                r.messages, r.bytes, r.folders, r.contacts, r.events
            );
            (serde_json::to_value(&r)?, text, r.failed)
        }
        Service::OneDrive => {
            let opts = m365bk_onedrive::RestoreOptions {
                target_user: target.clone(),
                folder_name: folder_name.clone(),
                path_prefixes: args.paths.clone(),
                concurrency: settings.concurrency,
            };
            let r = m365bk_onedrive::restore_drive(&job, &repo, &items, &opts).await?;
            let text = format!(
                "{} file(s) ({} bytes; {} through upload sessions), {} folder(s)",
                r.files, r.bytes, r.upload_sessions, r.folders
            );
            (serde_json::to_value(&r)?, text, r.failed)
        }
        other => anyhow::bail!("restore of {other} is not implemented yet"),
    };
    let failed = failures.len();
    let outcome = if failed == 0 { "ok" } else { "partial" };
    let summary = json!({ "job_id": job.spec().id.to_string(), "snapshot": snapshot.id.to_string(), "service": service.as_str(), "outcome": outcome, "report": report });
    let run = JobRun {
        job_id: job.spec().id.to_string(),
        service: service.to_string(),
        operation: "recovery".into(),
        started_at: started,
        finished_at: chrono::Utc::now(),
        outcome: outcome.into(),
        detail: summary.clone(),
    };
    if let Err(e) = catalog.record_job_run(&run) {
        tracing::warn!(error = %e, "could not record the job run in the catalog");
    }
    if json_out {
        println!("{summary}");
    } else {
        println!(
            "restored snapshot {} ({}) to {} in folder {}: {text}",
            short(&snapshot.id.to_string()),
            service,
            target,
            folder_name,
        );
        for (path, reason) in &failures {
            println!("  not restored: {path}: {reason}");
        }
        if failed > 0 {
            println!(
                "{failed} item(s) not restored (exit 3); `m365bk check --read-data` names damaged data, and another snapshot may hold these items"
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Incomplete
    })
}

async fn permissions_check(
    settings: &Settings,
    service: &str,
    operation: &str,
    items: &[String],
    conditions: &[String],
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let service = parse_service(service)?;
    let operation: Operation = operation.parse().map_err(anyhow::Error::msg)?;
    let mut spec = JobSpec::new(service, operation, UserSelection::All);
    if let Some(items) = parse_items(items)? {
        spec.selection.item_types = items;
    }
    let known = PermissionMatrix::builtin().conditions();
    for c in conditions {
        if !known.contains(&c.as_str()) {
            anyhow::bail!(
                "unknown condition {c:?}: expected one of {}",
                known.join(", ")
            );
        }
        spec.conditions.insert(c.clone());
    }
    let ctx = gate_context(settings)?;
    match authorize(&ctx, spec).await {
        Ok(job) => {
            if json_out {
                println!("{}", serde_json::to_string(job.report())?);
            } else {
                println!("{service} {operation}: every required permission is granted");
                for g in &job.report().granted {
                    let via = if g.met_by == g.requirement.permission {
                        String::new()
                    } else {
                        format!(" (met by {})", g.met_by)
                    };
                    println!(
                        "  ok       {:<28} {}{}",
                        g.requirement.permission, g.requirement.api, via
                    );
                }
            }
            Ok(ExitCode::Success)
        }
        Err(m365bk_gate::Error::Refused(report)) => {
            if json_out {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{service} {operation}: {} permission(s) missing",
                    report.missing.len()
                );
                for g in &report.granted {
                    println!(
                        "  ok       {:<28} {}",
                        g.requirement.permission, g.requirement.api
                    );
                }
                for m in &report.missing {
                    println!(
                        "  MISSING  {:<28} {} ({}, app role id {})",
                        m.permission,
                        m.api,
                        m.kind,
                        m.app_role_id.as_deref().unwrap_or("unknown")
                    );
                }
                println!("{}", report.remedy());
            }
            Ok(ExitCode::NoPermission)
        }
        Err(e) => Err(e.into()),
    }
}

fn print_matrix(json_out: bool) {
    let m = PermissionMatrix::builtin();
    if json_out {
        println!("{}", serde_json::to_string(m.rows()).unwrap_or_default());
        return;
    }
    println!(
        "{:<52} {:<28} {:<14} {:<28} CONDITION",
        "PERMISSION", "API", "SERVICE", "OPERATIONS"
    );
    for r in m.rows() {
        let ops: Vec<&str> = r.operations.iter().map(|o| o.as_str()).collect();
        println!(
            "{:<52} {:<28} {:<14} {:<28} {}",
            r.permission,
            r.api,
            r.service,
            ops.join(" "),
            r.conditions.join("|")
        );
    }
}

async fn check(
    settings: &Settings,
    check_opts: CheckOptions,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let read_data = check_opts.read_data;
    let repo = open_repo(settings).await?;
    // Shared: a prune running meanwhile would show up as missing packs.
    let _lock = repo.lock(LockKind::Check, &lock_options()).await?;
    let report = repo.check(check_opts).await?;
    if json_out {
        println!(
            "{}",
            json!({
                "packs_checked": report.packs_checked,
                "packs_indexed": report.packs_indexed,
                "unindexed_packs": report.unindexed_packs.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "blobs_checked": report.blobs_checked,
                "snapshots_checked": report.snapshots_checked,
                "snapshots_unreadable": report.snapshots_unreadable,
                "errors": report.errors.iter().map(|p| json!({
                    "object": p.object, "problem": p.problem,
                    "affected_snapshots": p.affected_snapshots.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "affected_items": p.affected_items.iter().map(|i| json!({
                        "snapshot": i.snapshot.to_string(), "path": i.path,
                    })).collect::<Vec<_>>(),
                    "more_affected_items": p.more_affected_items,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        if let Some(percent) = check_opts.read_data_subset {
            println!(
                "checked {} snapshot(s), {} of {} pack(s) ({percent}% drawn at random), {} blob(s) (data read and re-hashed)",
                report.snapshots_checked, report.packs_checked, report.packs_indexed, report.blobs_checked
            );
        } else if read_data {
            println!(
                "checked {} snapshot(s), {} pack(s), {} blob(s) (data read and re-hashed)",
                report.snapshots_checked, report.packs_checked, report.blobs_checked
            );
        } else {
            println!(
                "checked {} snapshot(s) and the {} blob(s) they refer to against the index (packs not read: add --read-data to read and re-hash them)",
                report.snapshots_checked, report.blobs_checked
            );
        }
        if report.snapshots_unreadable > 0 {
            println!(
                "{} snapshot(s) could not be checked in full: their object or item list cannot be read (listed below); one that cannot be repaired is removed with `m365bk forget --snapshot ID` (its data goes at the next prune)",
                report.snapshots_unreadable
            );
        }
        if !report.unindexed_packs.is_empty() {
            println!(
                "note: {} pack(s) in data/ are listed in no index file: left by an interrupted backup, or damaged ones `m365bk repair index` took out of the index (prune deletes them); if an error below says a snapshot's blobs are in no index file, an index file may be lost: run `m365bk repair index`",
                report.unindexed_packs.len()
            );
        }
        for p in &report.errors {
            let affected: Vec<String> = p
                .affected_snapshots
                .iter()
                .map(|s| short(&s.to_string()).to_string())
                .collect();
            println!(
                "error: {}: {} (affects snapshots: {})",
                p.object,
                p.problem,
                affected.join(", ")
            );
            const SHOWN: usize = 20;
            for item in p.affected_items.iter().take(SHOWN) {
                println!(
                    "  affected item: snapshot {} {}",
                    short(&item.snapshot.to_string()),
                    item.path
                );
            }
            let more =
                (p.affected_items.len().saturating_sub(SHOWN)) as u64 + p.more_affected_items;
            if more > 0 {
                println!(
                    "  … and {more} more affected item(s) (--json lists up to {})",
                    m365bk_store::MAX_AFFECTED_ITEMS
                );
            }
        }
    }
    if report.errors.is_empty() {
        Ok(ExitCode::Success)
    } else {
        tracing::error!(
            problems = report.errors.len(),
            "the repository has {} problem(s): each one above names what it affects and what to do",
            report.errors.len()
        );
        Ok(ExitCode::Failure)
    }
}

async fn repair_index(
    settings: &Settings,
    dry_run: bool,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let report = repo.repair_index(dry_run, &lock_options()).await?;
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::Success);
    }
    println!(
        "read {} pack(s): {} blob(s) verified, {} damaged or lost",
        report.packs_read, report.blobs_kept, report.blobs_dropped
    );
    for d in &report.damaged {
        println!(
            "  {}: {} ({} blob(s) lost, {} verified{})",
            d.object,
            d.problem,
            d.blobs_dropped,
            d.blobs_salvaged,
            if d.blobs_salvaged == 0 {
                ""
            } else if dry_run {
                ", to be copied into a new pack"
            } else {
                " and kept in a new pack"
            }
        );
    }
    if !report.index_changed {
        println!(
            "the index lists exactly the blobs that verify: nothing to write{}",
            if report.damaged.is_empty() {
                ""
            } else {
                " (the damaged packs above are in no index file any more; the next `m365bk prune` deletes them)"
            }
        );
        return Ok(ExitCode::Success);
    }
    let mut changes = Vec::new();
    if report.blobs_dropped > 0 {
        changes.push(format!(
            "{} damaged or lost blob(s) left out",
            report.blobs_dropped
        ));
    }
    if !report.damaged.is_empty() {
        changes.push(if dry_run {
            format!(
                "{} damaged or missing pack(s) no longer listed (what in them verified copied into new packs; the next `m365bk prune` deletes the damaged ones)",
                report.damaged.len()
            )
        } else {
            format!(
                "{} damaged or missing pack(s) no longer listed ({} new pack(s) hold what in them verified; the next `m365bk prune` deletes the damaged ones)",
                report.damaged.len(),
                report.packs_written
            )
        });
    }
    if report.packs_reindexed > 0 {
        changes.push(format!(
            "{} pack(s) that no index file listed indexed again",
            report.packs_reindexed
        ));
    }
    if report.index_files_unreadable > 0 {
        changes.push(format!(
            "{} unreadable index file(s) replaced",
            report.index_files_unreadable
        ));
    }
    if dry_run {
        println!(
            "dry run: the new index would have {}; nothing was written",
            changes.join(", ")
        );
        return Ok(ExitCode::Success);
    }
    println!(
        "index rebuilt ({} file(s) written, {} deleted): {}",
        report.index_files_written,
        report.index_files_deleted,
        changes.join(", ")
    );
    if report.blobs_dropped > 0 {
        println!(
            "the next backup stores the lost content again if Microsoft 365 still has it (and, when the content is byte for byte the same, as files usually are, that heals older snapshots too); `m365bk check` names the snapshots that still refer to lost data: restore what it lists from another snapshot, or remove a snapshot with `m365bk forget --snapshot ID` (prune refuses to run while a snapshot refers to lost data)"
        );
    }
    Ok(ExitCode::Success)
}

async fn repair_catalog(settings: &Settings) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let catalog = open_catalog(settings)?;
    let stats = catalog.rebuild(&repo).await?;
    println!(
        "catalog {} rebuilt from the repository: {} snapshot(s) recorded, {} dropped",
        settings.catalog.display(),
        stats.added,
        stats.removed
    );
    print_unreadable(&stats.unreadable, "not recorded");
    Ok(if stats.unreadable.is_empty() {
        ExitCode::Success
    } else {
        ExitCode::Incomplete
    })
}

async fn forget(
    settings: &Settings,
    args: &ForgetArgs,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    if !args.snapshots.is_empty() {
        return forget_by_id(settings, args, json_out).await;
    }
    if let Some(s) = &args.service {
        parse_service(s)?;
    }
    let opts = ForgetOptions {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        keep_tags: args.keep_tags.clone(),
        tags: args.tags.clone(),
    };
    // Checked before the repository is opened, so a missing rule is exit 2 whatever the
    // repository and passphrase.
    opts.validate()?;
    let repo = open_repo(settings).await?;
    let report = match &args.service {
        None => repo.forget(&opts, args.dry_run, &lock_options()).await?,
        Some(service) => {
            repo.forget_where(&opts, args.dry_run, &lock_options(), |s| {
                &s.service == service
            })
            .await?
        }
    };
    if !args.dry_run {
        let catalog = open_catalog(settings)?;
        if let Err(e) = catalog.sync(&repo).await {
            tracing::warn!(error = %e, "snapshots forgotten, but the catalog could not be updated: run `m365bk repair catalog`");
        }
    }
    let pruned = if args.prune {
        // A dry run forgot nothing: prune's dry run counts the planned snapshots as gone, so
        // it predicts what the real `forget --prune` frees.
        let opts = PruneOptions {
            max_unused_percent: args.max_unused,
            dry_run: args.dry_run,
            assume_forgotten: if args.dry_run {
                report.plan.to_remove()
            } else {
                Vec::new()
            },
        };
        Some(
            prune_after_forget(&repo, &opts, || {
                if json_out {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print_forget_plan(&report, args.dry_run);
                    println!("prune did not run:");
                }
                Ok(())
            })
            .await?,
        )
    } else {
        None
    };
    if json_out {
        match &pruned {
            None => println!("{}", serde_json::to_string(&report)?),
            Some(p) => println!(
                "{}",
                serde_json::to_string(&serde_json::json!({ "forget": report, "prune": p }))?
            ),
        }
        return Ok(ExitCode::Success);
    }
    print_forget_plan(&report, args.dry_run);
    let total = report.plan.to_remove().len();
    match (&pruned, args.dry_run) {
        (_, true) => {
            println!("dry run: {total} snapshot(s) would be forgotten; nothing was deleted")
        }
        (None, false) => println!(
            "{} snapshot(s) forgotten; run `m365bk prune` to free their data",
            report.removed
        ),
        (Some(_), false) => println!("{} snapshot(s) forgotten", report.removed),
    }
    if let Some(p) = &pruned {
        print_prune(p);
    }
    Ok(ExitCode::Success)
}

/// The forget plan per resource, and the snapshots no rule could weigh.
fn print_forget_plan(report: &m365bk_store::ForgetReport, dry_run: bool) {
    for g in &report.plan.groups {
        let selection = if g.selection.is_empty() {
            String::new()
        } else {
            format!(" [--items {}]", g.selection.join(","))
        };
        println!(
            "{} {} ({}){selection}: keep {}, {} {}",
            g.service,
            g.resource_name,
            g.resource_id,
            g.keep.len(),
            if dry_run { "would remove" } else { "remove" },
            g.remove.len()
        );
        for k in &g.keep {
            println!(
                "  keep    {}  {}  {}",
                k.id.short(),
                k.time.format("%Y-%m-%d %H:%M:%S"),
                k.reasons.join(",")
            );
        }
        for r in &g.remove {
            println!(
                "  remove  {}  {}",
                r.id.short(),
                r.time.format("%Y-%m-%d %H:%M:%S")
            );
        }
    }
    print_unreadable(&report.unreadable, "kept: no rule can weigh it");
}

/// `m365bk forget --snapshot ID…`: removes exactly these snapshots, readable or not.
async fn forget_by_id(
    settings: &Settings,
    args: &ForgetArgs,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let mut ids = Vec::new();
    for given in &args.snapshots {
        ids.push(repo.resolve_snapshot_id(given).await?);
    }
    ids.sort();
    ids.dedup();
    let removed = repo
        .forget_snapshots(&ids, args.dry_run, &lock_options())
        .await?;
    let forget =
        serde_json::json!({ "snapshots": ids, "removed": removed, "dry_run": args.dry_run });
    if !args.dry_run {
        let catalog = open_catalog(settings)?;
        if let Err(e) = catalog.sync(&repo).await {
            tracing::warn!(error = %e, "snapshots forgotten, but the catalog could not be updated: run `m365bk repair catalog`");
        }
    }
    let pruned = if args.prune {
        let opts = PruneOptions {
            max_unused_percent: args.max_unused,
            dry_run: args.dry_run,
            assume_forgotten: if args.dry_run {
                ids.clone()
            } else {
                Vec::new()
            },
        };
        Some(
            prune_after_forget(&repo, &opts, || {
                if json_out {
                    println!("{forget}");
                } else {
                    print_ids(&ids, args.dry_run);
                    println!("{removed} snapshot(s) forgotten; prune did not run:");
                }
                Ok(())
            })
            .await?,
        )
    } else {
        None
    };
    if json_out {
        match &pruned {
            None => println!("{forget}"),
            Some(p) => println!("{}", serde_json::json!({ "forget": forget, "prune": p })),
        }
        return Ok(ExitCode::Success);
    }
    print_ids(&ids, args.dry_run);
    if args.dry_run {
        println!(
            "dry run: {} snapshot(s) would be forgotten; nothing was deleted",
            ids.len()
        );
    } else if pruned.is_none() {
        println!("{removed} snapshot(s) forgotten; run `m365bk prune` to free their data");
    } else {
        println!("{removed} snapshot(s) forgotten");
    }
    if let Some(p) = &pruned {
        print_prune(p);
    }
    Ok(ExitCode::Success)
}

/// `forget --prune`'s prune. If prune refuses, `print_forget` reports what forget did first
/// (snapshots may have been deleted, and the operator must learn which), then the refusal is
/// returned.
async fn prune_after_forget(
    repo: &Repository,
    opts: &PruneOptions,
    print_forget: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<m365bk_store::PruneReport> {
    match repo.prune(opts, &lock_options()).await {
        Ok(p) => Ok(p),
        Err(e) => {
            print_forget()?;
            Err(e.into())
        }
    }
}

/// The snapshots `forget --snapshot` removes (or would).
fn print_ids(ids: &[m365bk_store::SnapshotId], dry_run: bool) {
    for id in ids {
        let verb = if dry_run { "would remove" } else { "remove" };
        println!("  {verb}  {id}");
    }
}

async fn prune(settings: &Settings, args: &PruneArgs, json_out: bool) -> anyhow::Result<ExitCode> {
    let repo = open_repo(settings).await?;
    let opts = PruneOptions {
        max_unused_percent: args.max_unused,
        dry_run: args.dry_run,
        ..PruneOptions::default()
    };
    let report = repo.prune(&opts, &lock_options()).await?;
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::Success);
    }
    print_prune(&report);
    Ok(ExitCode::Success)
}

/// A prune report for people: what was (or would be) deleted, repacked and freed.
fn print_prune(report: &m365bk_store::PruneReport) {
    let verb = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    if report.dry_run {
        // Nothing was written, so there are no new packs or index files to count.
        println!(
            "{} snapshot(s) use {} blob(s); {} blob(s) unused. Packs: {} kept, {} would be deleted, {} repacked, {} unindexed would be deleted (sizes estimated: new pack and index headers are not counted)",
            report.snapshots,
            report.blobs_used,
            report.blobs_unused,
            report.packs_kept,
            report.packs_deleted,
            report.packs_repacked,
            report.unindexed_packs_deleted,
        );
    } else {
        println!(
            "{} snapshot(s) use {} blob(s); {} blob(s) unused. Packs: {} kept, {} deleted, {} repacked into {}, {} unindexed deleted; index files: {} written, {} deleted",
            report.snapshots,
            report.blobs_used,
            report.blobs_unused,
            report.packs_kept,
            report.packs_deleted,
            report.packs_repacked,
            report.packs_written,
            report.unindexed_packs_deleted,
            report.index_files_written,
            report.index_files_deleted
        );
    }
    println!(
        "{verb} {} bytes: {} → {} bytes of packs and index files{}",
        report.bytes_freed,
        report.bytes_before,
        report.bytes_after,
        if report.dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    );
}
