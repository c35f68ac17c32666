//! `POST /v1.0/$batch`: JSON batching (<https://learn.microsoft.com/graph/json-batching>).
//!
//! Each inner request runs through the simulator's own router, with the batch's
//! `Authorization` header, so the request log, fault rules, latency, the throttling model and
//! permission checks treat it exactly like a request sent alone (an inner request the
//! throttling model refuses is answered 429 with its own `Retry-After` inside a 200 batch, as
//! <https://learn.microsoft.com/graph/throttling> describes). Like Graph, the simulator runs up
//! to four inner requests at once; a request runs only after every request it `dependsOn`
//! succeeded, and is answered 424 Failed Dependency without running otherwise. A batch of
//! more than 20 requests, with a repeated id, a `dependsOn` naming no request of the batch, a
//! dependency cycle, or an absolute `url` is refused whole with 400.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Extension;
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::server::Sim;
use crate::wire::{json_response, AppId, Ctx, GraphError};

/// Most requests Graph accepts in one batch.
pub(crate) const MAX_BATCH_REQUESTS: usize = 20;

/// Inner requests of one batch Graph runs at once.
const PARALLELISM: usize = 4;

/// Marks a request the `$batch` endpoint sent through the router: its `id` in the batch.
#[derive(Debug, Clone)]
pub(crate) struct InBatch(pub String);

/// One inner request, validated.
#[derive(Clone)]
struct Inner {
    id: String,
    method: Method,
    /// `/v1.0/…` path and query.
    uri: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
    depends_on: Vec<String>,
}

/// The `POST /v1.0/$batch` handler.
pub(crate) async fn handle(
    State(sim): State<Arc<Sim>>,
    Extension(ctx): Extension<Ctx>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let claims = match crate::graph::verify_graph_token(&sim, &parts.headers) {
        Ok(c) => c,
        Err(why) => return crate::graph::unauthorized(&ctx, why),
    };
    let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
    let mut resp = match axum::body::to_bytes(body, usize::MAX).await {
        Err(_) => {
            GraphError::bad_request("The request body could not be read.").into_response(&ctx)
        }
        Ok(body) => match parse(&body) {
            Err(e) => e.into_response(&ctx),
            Ok(inner) => run(&sim, inner, authorization).await,
        },
    };
    resp.extensions_mut().insert(AppId(claims.appid));
    resp
}

fn bad(message: impl Into<String>) -> GraphError {
    GraphError::bad_request(message)
}

/// Parses and checks the batch body.
fn parse(body: &[u8]) -> Result<Vec<Inner>, GraphError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("Invalid batch payload format: {e}")))?;
    let Some(requests) = v.get("requests").and_then(Value::as_array) else {
        return Err(bad(
            "Invalid batch payload format: a 'requests' array is required.",
        ));
    };
    if requests.len() > MAX_BATCH_REQUESTS {
        return Err(bad(format!(
            "Invalid batch payload format: {} requests; a batch holds at most {MAX_BATCH_REQUESTS}.",
            requests.len()
        )));
    }
    let mut out: Vec<Inner> = Vec::with_capacity(requests.len());
    let mut ids = HashSet::new();
    for (n, r) in requests.iter().enumerate() {
        let id = match r.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(x)) => x.to_string(),
            _ => return Err(bad(format!("requests[{n}]: an 'id' is required."))),
        };
        if !ids.insert(id.clone()) {
            return Err(bad(format!(
                "Batch request id '{id}' is used more than once."
            )));
        }
        let method = r
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .ok_or_else(|| bad(format!("Batch request '{id}': a 'method' is required.")))?;
        let url = r
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("Batch request '{id}': a 'url' is required.")))?;
        if url.contains("://") {
            return Err(bad(format!(
                "Batch request '{id}': the url must be relative to the version root, not '{url}'."
            )));
        }
        let sep = if url.starts_with('/') { "" } else { "/" };
        let uri = format!("/v1.0{sep}{url}");
        let mut headers = Vec::new();
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    (Ok(k), Ok(v)) => headers.push((k, v)),
                    _ => return Err(bad(format!("Batch request '{id}': invalid header '{k}'."))),
                }
            }
        }
        let body = match r.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Bytes::from(s.clone())),
            Some(other) => {
                if !headers.iter().any(|(k, _)| k == header::CONTENT_TYPE) {
                    headers.push((
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ));
                }
                Some(Bytes::from(serde_json::to_vec(other).unwrap_or_default()))
            }
        };
        let depends_on = match r.get("dependsOn") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|d| match d {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(_) => {
                return Err(bad(format!(
                    "Batch request '{id}': dependsOn must be an array of ids."
                )))
            }
        };
        out.push(Inner {
            id,
            method,
            uri,
            headers,
            body,
            depends_on,
        });
    }
    for r in &out {
        if let Some(d) = r.depends_on.iter().find(|d| !ids.contains(d.as_str())) {
            return Err(bad(format!(
                "Batch request '{}' depends on '{d}', which is not in the batch.",
                r.id
            )));
        }
    }
    // Every request must be reachable in dependency order.
    let mut placed: HashSet<&str> = HashSet::new();
    while placed.len() < out.len() {
        let before = placed.len();
        for r in &out {
            if !placed.contains(r.id.as_str())
                && r.depends_on.iter().all(|d| placed.contains(d.as_str()))
            {
                placed.insert(r.id.as_str());
            }
        }
        if placed.len() == before {
            return Err(bad("Batch requests' dependsOn form a cycle."));
        }
    }
    Ok(out)
}

/// An inner answer as it goes into the batch response.
struct Answer {
    status: u16,
    headers: Map<String, Value>,
    body: Option<Value>,
}

/// Runs the requests in dependency order, four at a time, and builds the batch answer.
async fn run(sim: &Arc<Sim>, inner: Vec<Inner>, authorization: Option<HeaderValue>) -> Response {
    let mut answers: HashMap<String, Answer> = HashMap::new();
    let mut left: Vec<&Inner> = inner.iter().collect();
    while !left.is_empty() {
        let (ready, waiting): (Vec<&Inner>, Vec<&Inner>) = left
            .into_iter()
            .partition(|r| r.depends_on.iter().all(|d| answers.contains_key(d)));
        left = waiting;
        let mut runnable = Vec::new();
        for r in ready {
            let failed = r.depends_on.iter().find(|d| {
                answers
                    .get(d.as_str())
                    .is_some_and(|a| !(200..300).contains(&a.status))
            });
            match failed {
                Some(d) => {
                    answers.insert(r.id.clone(), failed_dependency(d));
                }
                None => runnable.push(r.clone()),
            }
        }
        let done: Vec<(String, Answer)> = futures::stream::iter(runnable)
            .map(|r: Inner| {
                let (sim, authorization) = (sim.clone(), authorization.clone());
                async move { (r.id.clone(), execute(sim, &r, authorization).await) }
            })
            .buffer_unordered(PARALLELISM)
            .collect()
            .await;
        answers.extend(done);
    }
    let responses: Vec<Value> = inner
        .iter()
        .map(|r| {
            let a = answers.remove(&r.id).expect("every request is answered");
            let mut v = json!({ "id": r.id, "status": a.status, "headers": a.headers });
            if let Some(body) = a.body {
                v["body"] = body;
            }
            v
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "responses": responses }))
}

fn failed_dependency(dependency: &str) -> Answer {
    let mut headers = Map::new();
    headers.insert("Content-Type".into(), json!("application/json"));
    Answer {
        status: 424,
        headers,
        body: Some(json!({
            "error": {
                "code": "FailedDependency",
                "message": format!("The dependent request '{dependency}' failed."),
            }
        })),
    }
}

/// Sends one inner request through a fresh router (request log, faults, Graph handlers).
async fn execute(sim: Arc<Sim>, r: &Inner, authorization: Option<HeaderValue>) -> Answer {
    let mut builder = Request::builder().method(r.method.clone()).uri(&r.uri);
    if let Some(a) = authorization {
        builder = builder.header(header::AUTHORIZATION, a);
    }
    for (k, v) in &r.headers {
        builder = builder.header(k, v);
    }
    let req = match builder.body(Body::from(r.body.clone().unwrap_or_default())) {
        Ok(mut req) => {
            req.extensions_mut().insert(InBatch(r.id.clone()));
            req
        }
        Err(e) => {
            return Answer {
                status: 400,
                headers: Map::new(),
                body: Some(
                    json!({"error": {"code": "BadRequest", "message": format!("Invalid request: {e}")}}),
                ),
            }
        }
    };
    let resp = match call(crate::server::router(sim), req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let mut headers = Map::new();
    for (k, v) in resp.headers() {
        if matches!(
            k.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "date"
        ) {
            continue;
        }
        if let Ok(v) = v.to_str() {
            headers.insert(canonical(k.as_str()), json!(v));
        }
    }
    let json_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    // An answer that broke off (a `reset` fault) or JSON cut short (a `truncate` fault) is no
    // answer Graph's front end could pass on: like Graph, it reports a gateway timeout for the
    // request, which the client may send again.
    let broken = || Answer {
        status: 504,
        headers: Map::from_iter([("Content-Type".to_string(), json!("application/json"))]),
        body: Some(json!({"error": {
            "code": "GatewayTimeout",
            "message": "The service's answer to this request broke off."
        }})),
    };
    let Ok(bytes) = axum::body::to_bytes(resp.into_body(), usize::MAX).await else {
        return broken();
    };
    let body = if bytes.is_empty() {
        None
    } else if json_type {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Some(v),
            Err(_) => return broken(),
        }
    } else {
        Some(json!(
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        ))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// `retry-after` → `Retry-After`, as Graph spells inner header names.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Calls a tower service once it is ready (axum's `ServiceExt` has tower's `Service` as its
/// supertrait, so no direct tower dependency is needed).
async fn call<S>(mut svc: S, req: Request) -> Result<S::Response, S::Error>
where
    S: axum::ServiceExt<Request>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(body: Value) -> Result<Vec<String>, String> {
        parse(&serde_json::to_vec(&body).unwrap())
            .map(|v| v.into_iter().map(|r| r.id).collect())
            .map_err(|e| e.message)
    }

    #[test]
    fn refuses_bad_batches() {
        let get = |id: &str| json!({"id": id, "method": "GET", "url": "/users"});
        let many: Vec<Value> = (0..21).map(|i| get(&i.to_string())).collect();
        assert!(ids(json!({ "requests": many }))
            .unwrap_err()
            .contains("at most 20"));
        assert!(ids(json!({"requests": [get("1"), get("1")]}))
            .unwrap_err()
            .contains("more than once"));
        let mut dep = get("2");
        dep["dependsOn"] = json!(["9"]);
        assert!(ids(json!({"requests": [get("1"), dep]}))
            .unwrap_err()
            .contains("not in the batch"));
        let mut a = get("a");
        a["dependsOn"] = json!(["b"]);
        let mut b = get("b");
        b["dependsOn"] = json!(["a"]);
        assert!(ids(json!({"requests": [a, b]}))
            .unwrap_err()
            .contains("cycle"));
        assert!(ids(json!({"requests": [{"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"}]}))
            .unwrap_err()
            .contains("relative"));
        assert_eq!(
            ids(json!({"requests": [get("1"), get("2")]})).unwrap(),
            vec!["1", "2"]
        );
        assert_eq!(canonical("retry-after"), "Retry-After");
    }
}
