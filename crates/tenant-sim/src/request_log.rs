//! The request log (`GET /_sim/requests`) and the middleware that stamps every response with
//! Graph's `request-id`/`client-request-id` headers and records the exchange.

use std::sync::Arc;

use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use crate::faults::FaultLabel;
use crate::server::Sim;
use crate::token;
use crate::wire::{AppId, Ctx};

/// One logged request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogEntry {
    pub seq: u64,
    /// When the request arrived, in milliseconds since the simulator started.
    pub at_ms: u64,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub status: u16,
    /// `appid` of the caller's token (or of the token issued, for the token endpoint).
    pub app_id: Option<String>,
    /// Whether the request carried an `Authorization` header (pre-authenticated download and
    /// upload URLs must be called without one).
    pub authorization_header: bool,
    pub bytes_out: u64,
    /// The injected fault (`status`, `reset`, `truncate`, `token_expired`,
    /// `sync_state_lost`, `download_url_expired`, `latency`, `throttle_*`), if any.
    pub fault: Option<String>,
    /// Index of the fault rule that fired (none for throttling and expired credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_rule: Option<usize>,
    /// The `id` of this request inside the JSON batch that carried it (absent for requests
    /// sent on their own, the `POST /v1.0/$batch` included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_request_id: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    next_seq: u64,
    pub entries: Vec<LogEntry>,
}

impl RequestLog {
    fn push(&mut self, mut e: LogEntry) {
        self.next_seq += 1;
        e.seq = self.next_seq;
        self.entries.push(e);
    }
}

pub(crate) async fn middleware(
    State(sim): State<Arc<Sim>>,
    mut req: Request,
    next: Next,
) -> Response {
    let at_ms = sim.started.elapsed().as_millis() as u64;
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let authorization_header = req.headers().contains_key(header::AUTHORIZATION);
    let batch_request_id = req
        .extensions()
        .get::<crate::batch::InBatch>()
        .map(|b| b.0.clone());
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let ctx = Ctx {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id,
        date: chrono::Utc::now(),
    };
    // Handlers that authenticate the caller set `AppId`; for the others (downloads, uploads)
    // the token is read here, and only if one was sent.
    let bearer = token::bearer(req.headers()).map(str::to_string);
    req.extensions_mut().insert(ctx.clone());

    let mut resp = next.run(req).await;

    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.client_request_id) {
        headers.insert("client-request-id", v);
    }
    if path.starts_with("/_sim/") {
        return resp;
    }
    let bytes_out = resp
        .body()
        .size_hint()
        .exact()
        .or_else(|| {
            resp.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let app_id = resp
        .extensions()
        .get::<AppId>()
        .map(|a| a.0.clone())
        .or_else(|| {
            bearer
                .and_then(|t| sim.keys.verify(&t, None).ok())
                .map(|c| c.appid)
        });
    let label = resp.extensions().get::<FaultLabel>().cloned();
    sim.log().push(LogEntry {
        seq: 0,
        at_ms,
        method,
        path,
        status: resp.status().as_u16(),
        app_id,
        authorization_header,
        bytes_out,
        fault: label.as_ref().map(|l| l.fault.clone()),
        fault_rule: label.and_then(|l| l.rule),
        batch_request_id,
    });
    resp
}
