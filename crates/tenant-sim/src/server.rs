//! The running simulator: shared state, the router, and start/stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::faults::FaultState;
use crate::permissions::PermissionTable;
use crate::request_log::RequestLog;
use crate::tenant::Tenant;
use crate::token::TokenKeys;
use crate::{admin, batch, corpus, faults, graph, request_log, token, transfer};

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The corpus directory (`DIR/users/<upn>/…`), read-only.
    pub corpus_dir: PathBuf,
    /// The tenant: id, token lifetime, registered apps.
    pub tenant: TenantConfig,
    /// Loopback address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl SimOptions {
    /// Options listening on `127.0.0.1:0`.
    pub fn new(corpus_dir: impl Into<PathBuf>, tenant: TenantConfig) -> Self {
        SimOptions {
            corpus_dir: corpus_dir.into(),
            tenant,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// A simulator serving in the background. Dropping it stops the server; [`RunningSim::stop`]
/// also waits for it to finish.
#[derive(Debug)]
pub struct RunningSim {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The tenant id the token endpoint answers under.
    pub tenant_id: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningSim {
    /// The token endpoint URL: `{base_url}/{tenant_id}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.base_url, self.tenant_id)
    }

    /// The Graph base URL: `{base_url}/v1.0`.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.base_url)
    }

    /// Stops accepting requests and waits for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// State shared by all handlers.
#[derive(Debug)]
pub(crate) struct Sim {
    pub base_url: String,
    /// When the simulator started: the request log's `at_ms` counts from here.
    pub started: std::time::Instant,
    pub tenant_id: String,
    /// Lifetime of issued access tokens (`expires_in`), changeable at run time through
    /// `PUT /_sim/admin/token-lifetime`.
    pub token_lifetime_secs: std::sync::atomic::AtomicU64,
    /// Seconds the simulator's clock is ahead of the clients' when it checks client
    /// assertions' `nbf`/`exp` and access tokens' `exp` (`PUT /_sim/admin/clock-offset`): a
    /// client host whose clock is wrong.
    pub clock_offset_secs: std::sync::atomic::AtomicI64,
    pub keys: TokenKeys,
    pub perms: PermissionTable,
    state: Mutex<Tenant>,
    log: Mutex<RequestLog>,
    faults: Mutex<FaultState>,
    assertion_ids: Mutex<token::ReplayCache>,
}

impl Sim {
    /// The tenant, locked. Handlers never hold it across an `.await`.
    pub(crate) fn state(&self) -> MutexGuard<'_, Tenant> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log(&self) -> MutexGuard<'_, RequestLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fault rules, their counters and the throttling model's memory. Never held across an
    /// `.await`.
    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `jti`s of accepted client assertions. Never held across an `.await`.
    pub(crate) fn assertion_ids(&self) -> MutexGuard<'_, token::ReplayCache> {
        self.assertion_ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn graph_base(&self) -> String {
        format!("{}/v1.0", self.base_url)
    }
}

/// Seeds the tenant from the corpus, binds, and serves in a background task.
///
/// # Errors
/// [`Error::NotLoopback`] for a non-loopback listen address, the corpus errors of seeding
/// ([`Error::Corpus`], [`Error::CorpusRead`]), [`Error::Bind`] when the port is taken.
pub async fn serve(opts: SimOptions) -> Result<RunningSim> {
    if !opts.listen.ip().is_loopback() {
        return Err(Error::NotLoopback { addr: opts.listen });
    }
    let perms = PermissionTable::load().map_err(|message| Error::Task { message })?;
    let corpus_dir = opts.corpus_dir.clone();
    let config = opts.tenant.clone();
    let tenant = tokio::task::spawn_blocking(move || corpus::load(&corpus_dir, &config))
        .await
        .map_err(|e| Error::Task {
            message: e.to_string(),
        })??;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: opts.listen,
        source,
    })?;
    let base_url = format!("http://{addr}");
    let sim = Arc::new(Sim {
        base_url: base_url.clone(),
        started: std::time::Instant::now(),
        tenant_id: opts.tenant.tenant_id.to_ascii_lowercase(),
        token_lifetime_secs: std::sync::atomic::AtomicU64::new(opts.tenant.token_lifetime_secs),
        clock_offset_secs: std::sync::atomic::AtomicI64::new(0),
        keys: TokenKeys::generate(),
        perms,
        state: Mutex::new(tenant),
        log: Mutex::new(RequestLog::default()),
        faults: Mutex::new(FaultState::new(opts.tenant.faults.clone())),
        assertion_ids: Mutex::new(token::ReplayCache::default()),
    });
    let router = router(sim.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "simulator server stopped with an error");
        }
    });
    tracing::info!(%base_url, "tenant simulator listening");
    Ok(RunningSim {
        base_url,
        addr,
        tenant_id: sim.tenant_id.clone(),
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// The simulator's routes and middleware (request log, faults) over `sim`; `$batch` runs its
/// inner requests through a fresh one.
pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token::token_endpoint))
        .route("/v1.0/$batch", post(batch::handle))
        .route("/v1.0", any(graph::handle))
        .route("/v1.0/", any(graph::handle))
        .route("/v1.0/{*rest}", any(graph::handle))
        .route("/_download/{token}", get(transfer::download))
        .route(
            "/_upload/{id}",
            put(transfer::upload_fragment)
                .delete(transfer::cancel_upload)
                .get(transfer::upload_status),
        )
        .route(
            "/_attach/{id}",
            put(crate::attachments::put_range)
                .delete(crate::attachments::cancel)
                .get(crate::attachments::status),
        )
        .route(
            "/_sim/requests",
            get(admin::get_requests).delete(admin::clear_requests),
        )
        .route("/_sim/admin/apps/{client_id}/roles", put(admin::put_roles))
        .route(
            "/_sim/admin/apps/{client_id}/consent",
            put(admin::put_consent),
        )
        .route(
            "/_sim/admin/apps/{client_id}/certificates",
            post(admin::post_certificate).delete(admin::delete_certificates),
        )
        .route("/_sim/admin/token-lifetime", put(admin::put_token_lifetime))
        .route("/_sim/admin/clock-offset", put(admin::put_clock_offset))
        .route(
            "/_sim/admin/users/{upn}/messages",
            post(admin::post_message),
        )
        .route(
            "/_sim/admin/users/{upn}/messages/{id}",
            axum::routing::delete(admin::delete_message),
        )
        .route(
            "/_sim/admin/users/{upn}/messages/{id}/move",
            post(admin::move_message),
        )
        .route(
            "/_sim/admin/users/{upn}/drive/{*path}",
            put(admin::put_drive_file).delete(admin::delete_drive_item),
        )
        .route("/_sim/admin/users/{upn}/export", get(admin::export))
        .route(
            "/_sim/admin/faults",
            get(admin::get_faults)
                .put(admin::put_faults)
                .delete(admin::delete_faults),
        )
        .fallback(graph::not_found)
        .layer(DefaultBodyLimit::disable())
        // Inside the request log, so faulted answers are logged as sent.
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            faults::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            request_log::middleware,
        ))
        .with_state(sim)
}
