//! JSON batching: several Graph reads in one `POST {base}/$batch` round trip.
//!
//! Implements <https://learn.microsoft.com/graph/json-batching> for GET requests, with the
//! per-request throttling of <https://learn.microsoft.com/graph/throttling>: Microsoft
//! evaluates each request of a batch against the throttling limits on its own, so a batch
//! answered 200 can hold inner 429s (with their own `Retry-After` in the inner `headers`), and
//! a request whose `dependsOn` target failed is answered 424 Failed Dependency.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{api_error, refetch_broken_json, GraphClient, Req};
use crate::error::{Error, Result};
use crate::http::display_url;
use crate::limiter::{RateLimit, Workload};
use crate::retry::{is_retryable_status, parse_retry_after};

/// Most requests Microsoft Graph accepts in one JSON batch (more are refused with 400).
pub const MAX_BATCH_REQUESTS: usize = 20;

/// What Graph says now about an item version stored earlier ([`GraphClient::confirm_versions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredVersion {
    /// Still there, with the same version field (`changeKey`, `cTag`).
    Unchanged,
    /// 404: deleted (or, for a message, moved to another folder) since.
    Gone,
    /// Changed, or the read failed: fetch it again.
    Unknown,
}

/// One GET of a JSON batch.
///
/// `url` is relative to the Graph version root, as Microsoft requires inside a batch
/// (`/users/{id}/mailboxSettings`, query included, already percent-encoded; see
/// [`crate::encode_segment`]). `id` names the request within the batch; `depends_on` lists ids
/// of earlier requests that must succeed first (Graph answers 424 otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    /// The request's id within the batch (unique, non-empty).
    pub id: String,
    /// Path and query below the version root, e.g. `/users/{id}/contactFolders?$top=100`.
    pub url: String,
    /// Ids of earlier requests of the same call this one waits for.
    pub depends_on: Vec<String>,
}

impl BatchRequest {
    /// A GET of `url` (relative to the version root) named `id`.
    pub fn get(id: impl Into<String>, url: impl Into<String>) -> Self {
        BatchRequest {
            id: id.into(),
            url: url.into(),
            depends_on: Vec::new(),
        }
    }

    /// Runs this request only after `id` (an earlier request) succeeded.
    pub fn depends_on(mut self, id: impl Into<String>) -> Self {
        self.depends_on.push(id.into());
        self
    }
}

/// The answer to one [`BatchRequest`].
///
/// `body` is the inner response's body as Graph sends it: a JSON value for JSON answers, a
/// base64 string for other content types, `null` when there was none.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResponse {
    /// The request's id.
    pub id: String,
    /// The inner HTTP status (200, 404, 424, ...; 429/503/504/509 only after the retry budget
    /// ran out).
    pub status: u16,
    /// The inner response headers, names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// The inner body.
    pub body: Value,
    /// Batches this request was sent in (1 unless Microsoft throttled it).
    pub attempts: u32,
    /// Time slept before re-sending it after throttling answers.
    pub waited: Duration,
    /// The request's full URL without query, for errors.
    url: String,
}

impl BatchResponse {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The request's full URL without query (as in error messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Parses a 2xx body as `T`.
    ///
    /// # Errors
    /// [`Error::Throttled`] when the request was still throttled (429/503/504/509) after the
    /// retry budget; [`Error::Api`] for any other error status (404, 403, 424, ...), with
    /// Graph's code and message from the inner body; [`Error::Decode`] when the body is not a
    /// `T` (including a base64 string where JSON was expected).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        if is_retryable_status(self.status) {
            return Err(Error::Throttled {
                url: self.url.clone(),
                attempts: self.attempts,
                waited: self.waited,
            });
        }
        if !self.is_success() {
            let body = serde_json::to_vec(&self.body).unwrap_or_default();
            return Err(api_error(
                "GET",
                &self.url,
                self.status,
                &header_map(&self.headers),
                &body,
            ));
        }
        serde_json::from_value(self.body.clone()).map_err(|e| Error::Decode {
            url: self.url.clone(),
            detail: e.to_string(),
        })
    }
}

fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    map
}

/// A validated request, with what the client needs to send and meter it.
struct Prepared {
    req: BatchRequest,
    /// Full URL without query.
    shown: String,
    workload: Option<Workload>,
}

#[derive(Deserialize)]
struct Envelope {
    responses: Vec<WireItem>,
}

#[derive(Deserialize)]
struct WireItem {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    #[serde(default)]
    body: Value,
}

/// One inner answer, checked.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// Union-find root of `i`.
fn find(root: &mut [usize], mut i: usize) -> usize {
    while root[i] != i {
        root[i] = root[root[i]];
        i = root[i];
    }
    i
}

/// Splits `requests` (validated) into batches of at most [`MAX_BATCH_REQUESTS`], keeping
/// every `dependsOn` chain in one batch; indices in request order.
fn plan_chunks(requests: &[BatchRequest]) -> Result<Vec<Vec<usize>>> {
    let invalid = |detail: String| Error::Invalid { detail };
    let mut index: HashMap<&str, usize> = HashMap::new();
    // Union-find over dependsOn edges: a component must travel in one batch.
    let mut root: Vec<usize> = (0..requests.len()).collect();
    for (i, r) in requests.iter().enumerate() {
        if r.id.is_empty() {
            return Err(invalid(format!(
                "batch request {i} ({}) has an empty id",
                r.url
            )));
        }
        if index.insert(r.id.as_str(), i).is_some() {
            return Err(invalid(format!(
                "batch request id {:?} is used twice; ids must be unique",
                r.id
            )));
        }
        if r.url.starts_with("https://") || r.url.starts_with("http://") {
            return Err(invalid(format!(
                "batch request {:?}: url {:?} must be relative to the Graph version root \
                 (e.g. /users/{{id}}/mailboxSettings); follow nextLinks with list()",
                r.id, r.url
            )));
        }
        for dep in &r.depends_on {
            let Some(&j) = index.get(dep.as_str()).filter(|&&j| j != i) else {
                return Err(invalid(format!(
                    "batch request {:?} depends on {dep:?}, which is not an earlier request of \
                     the same call",
                    r.id
                )));
            };
            let (a, b) = (find(&mut root, i), find(&mut root, j));
            root[a] = b;
        }
    }
    let mut components: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut of_root: HashMap<usize, usize> = HashMap::new();
    for i in 0..requests.len() {
        let r = find(&mut root, i);
        let c = *of_root.entry(r).or_insert_with(|| {
            components.push((i, Vec::new()));
            components.len() - 1
        });
        components[c].1.push(i);
    }
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for (_, members) in components {
        if members.len() > MAX_BATCH_REQUESTS {
            let ids: Vec<&str> = members.iter().map(|&i| requests[i].id.as_str()).collect();
            return Err(invalid(format!(
                "{} requests are linked by dependsOn ({}), more than the {MAX_BATCH_REQUESTS} \
                 one batch can hold; split the chain",
                members.len(),
                ids.join(", ")
            )));
        }
        if current.len() + members.len() > MAX_BATCH_REQUESTS {
            chunks.push(std::mem::take(&mut current));
        }
        current.extend(members);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    for c in &mut chunks {
        c.sort_unstable();
    }
    Ok(chunks)
}

impl GraphClient {
    /// Sends GET `requests` as JSON batches (`POST {base}/$batch`) and returns one answer per
    /// request, in request order.
    ///
    /// Requests go in batches of at most [`MAX_BATCH_REQUESTS`] (20); requests linked by
    /// `depends_on` travel in the same batch. Each batch goes through the client's request
    /// core (token, 401 refresh, retries of a whole-batch 429/503/504/509) and is admitted
    /// under the throttling workloads of all its inner requests, each as if sent alone
    /// (Outlook mailbox windows and slots, SharePoint resource units). Inner answers 429, 503,
    /// 504 and 509 are sent again, alone with their 424 dependants, after the largest inner
    /// `Retry-After` (seconds, fractional seconds or an HTTP-date) or a jittered backoff,
    /// within the [`crate::RetryPolicy`] bounds; an inner 429 fences its workload. Other
    /// statuses are the caller's: an inner 404 is an answer, not an error of the call (see
    /// [`BatchResponse::json`]).
    ///
    /// The client's configured headers (e.g. `Prefer: IdType="ImmutableId"`) go with every
    /// inner request, since Graph does not pass the batch's own headers on.
    ///
    /// See <https://learn.microsoft.com/graph/json-batching> and
    /// <https://learn.microsoft.com/graph/throttling>.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty or duplicate id, an absolute `url`, a `depends_on`
    /// naming no earlier request, or a dependsOn chain of more than 20 requests (nothing is
    /// sent); [`Error::Protocol`] for a batch answer that lacks an id, answers an unknown or
    /// repeated id, leaves a request unanswered, or has no status; [`Error::Decode`] for an
    /// answer that is not a batch envelope; and the errors of [`GraphClient::post_json`] for
    /// the batch request itself.
    pub async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<BatchResponse>> {
        let chunks = plan_chunks(&requests)?;
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let url = self.resolve(&req.url)?;
            let workload = self.workload(&Req::new(Method::GET, url.clone()));
            prepared.push(Some(Prepared {
                shown: display_url(&url),
                req,
                workload,
            }));
        }
        let mut answers: Vec<Option<BatchResponse>> = vec![None; prepared.len()];
        for chunk in chunks {
            let items: Vec<Prepared> = chunk
                .iter()
                .map(|&i| prepared[i].take().expect("each request is in one chunk"))
                .collect();
            for (i, answer) in chunk.into_iter().zip(self.run_batch(items).await?) {
                answers[i] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every request was answered"))
            .collect())
    }

    /// Compares stored item versions with the current ones: `GET`s each `(url, expected)`
    /// in JSON batches (`url` relative to the version root, with a `$select` of `id` and
    /// `field`, e.g. `/users/{id}/messages/{id}?$select=id,changeKey`) and answers, in
    /// `checks` order, [`StoredVersion::Unchanged`] when the item's `field` equals `expected`,
    /// [`StoredVersion::Gone`] for a 404, [`StoredVersion::Unknown`] otherwise (changed, or
    /// an error answer).
    ///
    /// See <https://learn.microsoft.com/graph/json-batching>.
    ///
    /// # Errors
    /// As [`GraphClient::batch`] (the whole call failed; callers fetch the items again).
    pub async fn confirm_versions(
        &self,
        checks: &[(String, String)],
        field: &str,
    ) -> Result<Vec<StoredVersion>> {
        let requests = checks
            .iter()
            .enumerate()
            .map(|(n, (url, _))| BatchRequest::get(n.to_string(), url.clone()))
            .collect();
        let answers = self.batch(requests).await?;
        Ok(checks
            .iter()
            .zip(answers)
            .map(|((_, expected), answer)| match answer.status {
                404 => StoredVersion::Gone,
                _ => match answer.json::<Value>() {
                    Ok(v) if v.get(field).and_then(Value::as_str) == Some(expected.as_str()) => {
                        StoredVersion::Unchanged
                    }
                    _ => StoredVersion::Unknown,
                },
            })
            .collect())
    }

    /// The items of a collection whose first page came back in a batch: that page's `value`,
    /// then every page after it, followed through `@odata.nextLink` with
    /// [`GraphClient::list`].
    ///
    /// See <https://learn.microsoft.com/graph/paging>.
    ///
    /// # Errors
    /// As [`BatchResponse::json`] for the first page (an error status, a body that is not a
    /// collection page); as [`GraphClient::list`] for the pages after it.
    pub async fn list_from_batch<T: DeserializeOwned>(
        &self,
        first: &BatchResponse,
    ) -> Result<Vec<T>> {
        #[derive(Deserialize)]
        struct FirstPage<T> {
            #[serde(default = "Vec::new")]
            value: Vec<T>,
            #[serde(rename = "@odata.nextLink")]
            next_link: Option<String>,
        }
        let page: FirstPage<T> = first.json()?;
        let mut items = page.value;
        if let Some(next) = page.next_link {
            items.extend(self.list::<T>(&next, None).await?);
        }
        Ok(items)
    }

    /// Sends one batch (≤ 20 requests, dependsOn closed) until no inner answer is worth
    /// retrying; answers in `items` order.
    async fn run_batch(&self, items: Vec<Prepared>) -> Result<Vec<BatchResponse>> {
        let policy = &self.shared.http.options().retry;
        let limiter = self.shared.http.limiter();
        let max_attempts = policy.max_attempts.max(1);
        let mut done: Vec<Option<BatchResponse>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut waited = Duration::ZERO;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut answers = self.send_batch(&items, &pending).await?;
            let mut retry: HashSet<usize> = HashSet::new();
            let mut retry_after: Option<Duration> = None;
            for &i in &pending {
                let a = &answers[&i];
                let headers = header_map(&a.headers);
                if let Some(w) = &items[i].workload {
                    limiter.observe(w, &headers);
                }
                if !is_retryable_status(a.status) {
                    continue;
                }
                retry.insert(i);
                let after = a
                    .headers
                    .get("retry-after")
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // As for a direct request: the greater of Retry-After and RateLimit-Reset.
                let reset = (a.status == 429)
                    .then(|| RateLimit::parse(&headers))
                    .flatten()
                    .map(|r| Duration::from_secs(r.reset_secs));
                let after = match (after, reset) {
                    (Some(a), Some(r)) => Some(a.max(r)),
                    (a, r) => a.or(r),
                };
                if let Some(after) = after {
                    retry_after = Some(retry_after.map_or(after, |d| d.max(after)));
                }
            }
            // A 424 whose dependency is sent again goes again with it.
            let mut grew = true;
            while grew {
                grew = false;
                for &i in &pending {
                    if answers[&i].status == 424
                        && !retry.contains(&i)
                        && items[i].req.depends_on.iter().any(|d| {
                            pending
                                .iter()
                                .any(|&j| retry.contains(&j) && items[j].req.id == *d)
                        })
                    {
                        retry.insert(i);
                        grew = true;
                    }
                }
            }
            let delay = retry_after.unwrap_or_else(|| policy.backoff(attempt));
            let give_up = retry.is_empty()
                || attempt >= max_attempts
                || waited + delay > policy.max_total_wait;
            if !retry.is_empty() {
                for &i in &retry {
                    if answers[&i].status == 429 {
                        if let Some(w) = &items[i].workload {
                            limiter.fence(w, delay);
                        }
                    }
                }
                let ids: Vec<&str> = pending
                    .iter()
                    .filter(|i| retry.contains(i))
                    .map(|&i| items[i].req.id.as_str())
                    .collect();
                tracing::warn!(
                    requests = ids.join(","),
                    attempt,
                    retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                    giving_up = give_up,
                    "Microsoft throttled or deferred requests inside a JSON batch"
                );
            }
            for &i in &pending {
                if give_up || !retry.contains(&i) {
                    let a = answers
                        .remove(&i)
                        .expect("every pending request was answered");
                    done[i] = Some(BatchResponse {
                        id: items[i].req.id.clone(),
                        status: a.status,
                        headers: a.headers,
                        body: a.body,
                        attempts: attempt,
                        waited,
                        url: items[i].shown.clone(),
                    });
                }
            }
            if give_up {
                break;
            }
            tokio::time::sleep(delay).await;
            waited += delay;
            pending.retain(|i| retry.contains(i));
        }
        Ok(done
            .into_iter()
            .map(|d| d.expect("every request was answered"))
            .collect())
    }

    /// One `POST /$batch` of `items[pending]`; the answers by item index.
    async fn send_batch(
        &self,
        items: &[Prepared],
        pending: &[usize],
    ) -> Result<HashMap<usize, Answer>> {
        let sent: HashMap<&str, usize> = pending
            .iter()
            .map(|&i| (items[i].req.id.as_str(), i))
            .collect();
        let mut inner_headers = serde_json::Map::new();
        for name in self.headers.keys() {
            let values: Vec<&str> = self
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            inner_headers.insert(name.as_str().to_owned(), json!(values.join(", ")));
        }
        let requests: Vec<Value> = pending
            .iter()
            .map(|&i| {
                let r = &items[i].req;
                let mut v = json!({ "id": r.id, "method": "GET", "url": r.url });
                // A dependency answered in an earlier round has already succeeded.
                let deps: Vec<&String> = r
                    .depends_on
                    .iter()
                    .filter(|d| sent.contains_key(d.as_str()))
                    .collect();
                if !deps.is_empty() {
                    v["dependsOn"] = json!(deps);
                }
                if !inner_headers.is_empty() {
                    v["headers"] = Value::Object(inner_headers.clone());
                }
                v
            })
            .collect();
        let body =
            serde_json::to_vec(&json!({ "requests": requests })).map_err(|e| Error::Invalid {
                detail: format!("batch request body: {e}"),
            })?;
        let mut req = Req::new(Method::POST, self.resolve("/$batch")?);
        // Only GETs inside: sending the batch again after a lost answer is safe.
        req.idempotent = true;
        req.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req.headers
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        req.body = Some(Bytes::from(body));
        req.timeout = Some(self.request_timeout());
        let workloads: Vec<Workload> = pending
            .iter()
            .filter_map(|&i| items[i].workload.clone())
            .collect();
        let req = &req;
        let workloads = &workloads;
        let envelope: Envelope =
            refetch_broken_json(&self.shared.http.options().retry, &req.shown, || async {
                let resp = self.send_buffered_for(req, workloads).await?;
                Ok(Self::success(req, resp)?.body)
            })
            .await?;
        let protocol = |detail: String| Error::Protocol {
            url: req.shown.clone(),
            detail,
        };
        let mut answers: HashMap<usize, Answer> = HashMap::new();
        for (n, item) in envelope.responses.into_iter().enumerate() {
            let id = match item.id {
                Some(Value::String(s)) => s,
                Some(Value::Number(x)) => x.to_string(),
                _ => {
                    return Err(protocol(format!(
                        "responses[{n}] of the batch answer has no id"
                    )))
                }
            };
            let Some(&i) = sent.get(id.as_str()) else {
                return Err(protocol(format!(
                    "the batch answer has a response for id {id:?}, which was not sent"
                )));
            };
            let Some(status) = item.status else {
                return Err(protocol(format!(
                    "the batch answer's response for id {id:?} has no status"
                )));
            };
            let headers = item
                .headers
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k.to_ascii_lowercase(), v)
                })
                .collect();
            let answer = Answer {
                status,
                headers,
                body: item.body,
            };
            if answers.insert(i, answer).is_some() {
                return Err(protocol(format!(
                    "the batch answer has two responses for id {id:?}"
                )));
            }
        }
        if let Some(&i) = pending.iter().find(|i| !answers.contains_key(i)) {
            return Err(protocol(format!(
                "the batch answer has no response for id {:?}",
                items[i].req.id
            )));
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(id: &str) -> BatchRequest {
        BatchRequest::get(id, format!("/users/u/mailFolders/{id}"))
    }

    #[test]
    fn chunks_split_at_twenty_and_keep_chains_together() {
        let mut reqs: Vec<BatchRequest> = (0..19).map(|i| get(&format!("a{i}"))).collect();
        reqs.push(get("c0"));
        reqs.push(get("c1").depends_on("c0"));
        reqs.push(get("z"));
        let chunks = plan_chunks(&reqs).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            chunks[0].len(),
            19,
            "the chain c0 <- c1 does not fit after 19 others"
        );
        assert_eq!(chunks[1], vec![19, 20, 21]);
        let all: Vec<BatchRequest> = (0..45).map(|i| get(&format!("r{i}"))).collect();
        let sizes: Vec<usize> = plan_chunks(&all).unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![20, 20, 5]);
    }

    #[test]
    fn bad_request_sets_are_refused_with_the_reason() {
        let err = |reqs: Vec<BatchRequest>| plan_chunks(&reqs).unwrap_err().to_string();
        assert!(err(vec![get("a"), get("a")]).contains("used twice"));
        assert!(err(vec![get("a").depends_on("b"), get("b")]).contains("not an earlier request"));
        assert!(err(vec![get("a").depends_on("a")]).contains("not an earlier request"));
        assert!(err(vec![BatchRequest::get("", "/users")]).contains("empty id"));
        assert!(err(vec![BatchRequest::get(
            "a",
            "https://graph.microsoft.com/v1.0/users"
        )])
        .contains("must be relative"));
        let mut chain = vec![get("c0")];
        for i in 1..21 {
            chain.push(get(&format!("c{i}")).depends_on(format!("c{}", i - 1)));
        }
        assert!(err(chain).contains("21 requests are linked by dependsOn"));
    }

    #[test]
    fn json_maps_inner_errors() {
        let resp = |status: u16, body: Value| BatchResponse {
            id: "1".into(),
            status,
            headers: BTreeMap::new(),
            body,
            attempts: 3,
            waited: Duration::from_secs(2),
            url: "http://x/v1.0/users/u/mailboxSettings".into(),
        };
        let nf = resp(
            404,
            json!({"error": {"code": "ErrorItemNotFound", "message": "gone"}}),
        )
        .json::<Value>()
        .unwrap_err();
        assert_eq!(nf.status(), Some(404));
        assert_eq!(nf.graph_code(), Some("ErrorItemNotFound"));
        assert!(nf.to_string().contains("/users/u/mailboxSettings"), "{nf}");
        let throttled = resp(429, Value::Null).json::<Value>().unwrap_err();
        assert!(
            matches!(throttled, Error::Throttled { attempts: 3, .. }),
            "{throttled:?}"
        );
        let wrong = resp(200, json!("aGVsbG8=")).json::<HashMap<String, Value>>();
        assert!(matches!(wrong, Err(Error::Decode { .. })));
    }
}
