//! m365bk-graph against a small axum server on 127.0.0.1 playing Microsoft (token endpoint,
//! Graph, pre-authenticated download and upload hosts), over real HTTP.

mod support {
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::HeaderMap;
    use axum::response::Response;
    use bytes::Bytes;
    use m365bk_graph::{
        ClientSecretCredential, Endpoints, GraphClient, HttpClient, HttpOptions, RetryPolicy,
        TokenProvider,
    };
    use url::Url;

    /// One request as the server saw it.
    #[derive(Clone, Debug)]
    pub struct Seen {
        pub method: String,
        pub path: String,
        pub query: Option<String>,
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    impl Seen {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
        pub fn is_token(&self) -> bool {
            self.path.ends_with("/oauth2/v2.0/token")
        }
        pub fn form(&self) -> Vec<(String, String)> {
            url::form_urlencoded::parse(&self.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        }
    }

    pub struct Server {
        pub base: String,
        log: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        pub fn log(&self) -> Vec<Seen> {
            self.log.lock().unwrap().clone()
        }
        /// Requests other than token requests.
        pub fn graph_log(&self) -> Vec<Seen> {
            self.log().into_iter().filter(|s| !s.is_token()).collect()
        }
        pub fn token_log(&self) -> Vec<Seen> {
            self.log().into_iter().filter(Seen::is_token).collect()
        }
    }

    /// Serves `handler` for every request on 127.0.0.1:0, recording each request first.
    pub async fn serve<F, Fut>(handler: F) -> Server
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler = Arc::new(handler);
        let recorded = log.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let handler = handler.clone();
            let recorded = recorded.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20)
                    .await
                    .unwrap_or_default();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers,
                    body,
                };
                recorded.lock().unwrap().push(seen.clone());
                handler(seen).await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            base: format!("http://{addr}"),
            log,
        }
    }

    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
        let mut builder = Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(body.into()).unwrap()
    }

    pub fn json(status: u16, value: serde_json::Value) -> Response {
        respond(
            status,
            &[("content-type", "application/json")],
            value.to_string(),
        )
    }

    pub fn graph_error(status: u16, code: &str, request_id: &str) -> Response {
        respond(
            status,
            &[
                ("content-type", "application/json"),
                ("request-id", request_id),
            ],
            serde_json::json!({"error": {"code": code, "message": format!("{code} happened"),
                "innerError": {"request-id": request_id}}})
            .to_string(),
        )
    }

    /// A token endpoint answer; tokens are `tok-1`, `tok-2`, ... in issue order.
    pub fn token_ok(counter: &AtomicU64, expires_in: u64) -> Response {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        json(
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": expires_in,
                "ext_expires_in": expires_in, "access_token": format!("tok-{n}")}),
        )
    }

    pub fn fast_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            max_total_wait: Duration::from_secs(5),
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        }
    }

    pub fn credential() -> ClientSecretCredential {
        ClientSecretCredential {
            tenant_id: "tenant-1".into(),
            client_id: "client-1".into(),
            secret: "s3cret-value".into(),
        }
    }

    pub fn http(policy: RetryPolicy) -> HttpClient {
        HttpClient::new(HttpOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            download_resumes: 3,
            retry: policy,
            ..HttpOptions::default()
        })
        .unwrap()
    }

    pub fn endpoints(base: &str) -> Endpoints {
        Endpoints {
            authority: Url::parse(base).unwrap(),
            graph_base: Url::parse(&format!("{base}/v1.0")).unwrap(),
        }
    }

    pub fn clients(server: &Server, policy: RetryPolicy) -> (GraphClient, Arc<TokenProvider>) {
        let http = http(policy);
        let endpoints = endpoints(&server.base);
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            endpoints.clone(),
            credential(),
        ));
        (
            GraphClient::new(http, tokens.clone(), endpoints.graph_base),
            tokens,
        )
    }

    /// Captures tracing output of the current thread (tests run on a current-thread runtime).
    #[derive(Clone, Default)]
    pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl LogBuf {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        pub fn install(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }
    }
}

mod token {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use m365bk_graph::{Audience, Error, TokenProvider};

    use crate::support::*;

    #[tokio::test]
    async fn form_fields_and_cache_per_audience() {
        let issued = Arc::new(AtomicU64::new(0));
        let i = issued.clone();
        let server = serve(move |_| {
            let r = token_ok(&i, 3600);
            async move { r }
        })
        .await;
        let (_, tokens) = clients(&server, fast_policy());

        let first = tokens.token(&Audience::Graph).await.unwrap();
        assert_eq!(first.secret(), "tok-1");
        let left = first
            .expires_at()
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        let again = tokens.token(&Audience::Graph).await.unwrap();
        assert_eq!(again.secret(), "tok-1");
        assert_eq!(tokens.request_count(), 1);
        assert_eq!(server.log().len(), 1);

        let exo = tokens.token(&Audience::ExchangeOnline).await.unwrap();
        assert_eq!(exo.secret(), "tok-2");
        assert_eq!(tokens.request_count(), 2);

        let log = server.token_log();
        assert_eq!(log[0].method, "POST");
        assert_eq!(log[0].path, "/tenant-1/oauth2/v2.0/token");
        assert_eq!(
            log[0].header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let mut form = log[0].form();
        form.sort();
        assert_eq!(
            form,
            vec![
                ("client_id".into(), "client-1".into()),
                ("client_secret".into(), "s3cret-value".into()),
                ("grant_type".into(), "client_credentials".into()),
                (
                    "scope".into(),
                    "https://graph.microsoft.com/.default".into()
                ),
            ]
        );
        let scope = log[1]
            .form()
            .into_iter()
            .find(|(k, _)| k == "scope")
            .unwrap();
        assert_eq!(scope.1, "https://outlook.office365.com/.default");
        assert!(log[0]
            .header("user-agent")
            .unwrap()
            .starts_with("ISV|m365bk|m365bk/"));
    }

    #[tokio::test]
    async fn refreshed_when_less_than_its_margin_left() {
        // A short-lived token (1 s) is replaced when a quarter of its lifetime is left
        // (REFRESH_MARGIN, 5 minutes, applies to tokens of 20 minutes or more).
        let issued = Arc::new(AtomicU64::new(0));
        let i = issued.clone();
        let server = serve(move |_| {
            let r = token_ok(&i, 1);
            async move { r }
        })
        .await;
        let (_, tokens) = clients(&server, fast_policy());
        assert_eq!(
            tokens.token(&Audience::Graph).await.unwrap().secret(),
            "tok-1"
        );
        assert_eq!(
            tokens.token(&Audience::Graph).await.unwrap().secret(),
            "tok-1",
            "reused while more than a quarter of its lifetime is left"
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            tokens.token(&Audience::Graph).await.unwrap().secret(),
            "tok-2",
            "replaced once less than a quarter is left"
        );
        assert_eq!(tokens.request_count(), 2);
    }

    #[tokio::test]
    async fn a_299_second_token_is_reused_until_a_quarter_is_left() {
        let issued = Arc::new(AtomicU64::new(0));
        let i = issued.clone();
        let server = serve(move |_| {
            let r = token_ok(&i, 299);
            async move { r }
        })
        .await;
        let (_, tokens) = clients(&server, fast_policy());
        for _ in 0..3 {
            assert_eq!(
                tokens.token(&Audience::Graph).await.unwrap().secret(),
                "tok-1"
            );
        }
        assert_eq!(tokens.request_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request() {
        let issued = Arc::new(AtomicU64::new(0));
        let i = issued.clone();
        let server = serve(move |_| {
            let i = i.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                token_ok(&i, 3600)
            }
        })
        .await;
        let (_, tokens) = clients(&server, fast_policy());
        let calls = (0..8).map(|_| {
            let tokens: Arc<TokenProvider> = tokens.clone();
            async move { tokens.token(&Audience::Graph).await.unwrap() }
        });
        let all = futures::future::join_all(calls).await;
        assert!(all.iter().all(|t| t.secret() == "tok-1"));
        assert_eq!(issued.load(Ordering::SeqCst), 1);
        assert_eq!(server.log().len(), 1);
    }

    #[tokio::test]
    async fn wrong_secret_is_a_token_error_naming_the_fix() {
        let server = serve(|_| async {
            json(
                401,
                serde_json::json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.\r\nTrace ID: 11\r\nCorrelation ID: 22",
                    "error_codes": [7000215],
                    "trace_id": "11", "correlation_id": "22"
                }),
            )
        })
        .await;
        let (_, tokens) = clients(&server, fast_policy());
        let err = tokens.token(&Audience::Graph).await.unwrap_err();
        match &err {
            Error::Token {
                status,
                error,
                aadsts,
                ..
            } => {
                assert_eq!(*status, 401);
                assert_eq!(error, "invalid_client");
                assert_eq!(*aadsts, Some(7000215));
            }
            other => panic!("expected Error::Token, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("holds the secret VALUE") && text.contains("tenant.client_secret_file"),
            "{text}"
        );
        assert!(!err.is_transient());
        // A refusal is not retried.
        assert_eq!(server.log().len(), 1);
    }

    #[tokio::test]
    async fn unknown_tenant_and_unknown_app() {
        let server = serve(|seen| async move {
            let (code, text) = if seen.path.starts_with("/nosuchtenant/") {
                (90002, "AADSTS90002: Tenant 'nosuchtenant' not found.")
            } else {
                (700016, "AADSTS700016: Application with identifier 'client-1' was not found in the directory 'tenant-1'.")
            };
            let error = if code == 90002 {
                "invalid_request"
            } else {
                "unauthorized_client"
            };
            json(
                400,
                serde_json::json!({"error": error, "error_description": text, "error_codes": [code]}),
            )
        })
        .await;
        let (_, tokens) = clients(&server, fast_policy());
        let err = tokens.token(&Audience::Graph).await.unwrap_err();
        assert_eq!(err.aadsts(), Some(700016));
        assert!(
            err.to_string().contains("check client_id / tenant_id"),
            "{err}"
        );

        let mut credential = credential();
        credential.tenant_id = "nosuchtenant".into();
        let other = TokenProvider::new(http(fast_policy()), endpoints(&server.base), credential);
        let err = other.token(&Audience::Graph).await.unwrap_err();
        assert_eq!(err.aadsts(), Some(90002));
        assert!(err.to_string().contains("check tenant_id"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_authority_names_the_url() {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let tokens = TokenProvider::new(http(fast_policy()), endpoints(&base), credential());
        let err = tokens.token(&Audience::Graph).await.unwrap_err();
        match &err {
            Error::Unreachable { url, .. } => {
                assert_eq!(url, &format!("{base}/tenant-1/oauth2/v2.0/token"))
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("authority_url"), "{text}");
        assert!(err.is_transient());
        // Connection failures are retried up to the attempt bound.
        assert_eq!(tokens.request_count(), 4);
    }

    #[tokio::test]
    async fn unparsable_token_error_names_url_and_status() {
        let server = serve(|_| async { respond(502, &[], "<html>Bad gateway</html>") }).await;
        let (_, tokens) = clients(&server, fast_policy());
        let err = tokens.token(&Audience::Graph).await.unwrap_err();
        assert_eq!(err.status(), Some(502));
        let text = err.to_string();
        assert!(text.contains("/tenant-1/oauth2/v2.0/token"), "{text}");
        assert!(text.contains("502"), "{text}");
        assert!(text.contains("Bad gateway"), "{text}");
    }
}

mod retry {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use m365bk_graph::{Error, RetryPolicy};
    use serde_json::Value;

    use crate::support::*;

    /// Graph answers `first` once (per status in the list), then 200.
    async fn flaky(first: Vec<(u16, Vec<(String, String)>)>) -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        let graph_calls = Arc::new(AtomicU64::new(0));
        let first = Arc::new(first);
        serve(move |seen| {
            let issued = issued.clone();
            let graph_calls = graph_calls.clone();
            let first = first.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                let n = graph_calls.fetch_add(1, Ordering::SeqCst) as usize;
                match first.get(n) {
                    Some((status, headers)) => {
                        let h: Vec<(&str, &str)> =
                            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        let mut h = h;
                        h.push(("request-id", "rid-throttled"));
                        respond(
                            *status,
                            &h,
                            serde_json::json!({"error": {"code": "TooManyRequests", "message": "slow down"}})
                                .to_string(),
                        )
                    }
                    None => json(200, serde_json::json!({"id": "u1"})),
                }
            }
        })
        .await
    }

    async fn timed_get(server: &Server) -> (Result<Value, Error>, Duration) {
        let (graph, tokens) = clients(server, fast_policy());
        tokens.token(&m365bk_graph::Audience::Graph).await.unwrap();
        let start = Instant::now();
        let r = graph.get_json::<Value>("/users/u1").await;
        (r, start.elapsed())
    }

    fn ra(v: &str) -> Vec<(String, String)> {
        vec![("retry-after".to_owned(), v.to_owned())]
    }

    #[tokio::test]
    async fn retry_after_integer_seconds() {
        let server = flaky(vec![(429, ra("1"))]).await;
        let (r, elapsed) = timed_get(&server).await;
        assert_eq!(r.unwrap()["id"], "u1");
        assert_eq!(server.graph_log().len(), 2);
        assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[tokio::test]
    async fn retry_after_fractional_seconds() {
        let server = flaky(vec![(429, ra("0.2")), (503, ra("0.2"))]).await;
        let (r, elapsed) = timed_get(&server).await;
        r.unwrap();
        assert_eq!(server.graph_log().len(), 3);
        // Neither ignored (backoff here is ~10 ms) nor rounded up to whole seconds.
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    }

    #[tokio::test]
    async fn retry_after_http_date() {
        let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
        let server = flaky(vec![(429, ra(&when))]).await;
        let (r, elapsed) = timed_get(&server).await;
        r.unwrap();
        assert_eq!(server.graph_log().len(), 2);
        // HTTP-dates have whole-second resolution: 2 s ahead means at least 1 s of waiting.
        assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    }

    #[tokio::test]
    async fn statuses_503_504_509_are_retried_with_backoff() {
        let server = flaky(vec![(503, vec![]), (504, vec![]), (509, vec![])]).await;
        let (r, elapsed) = timed_get(&server).await;
        assert_eq!(r.unwrap()["id"], "u1");
        assert_eq!(server.graph_log().len(), 4);
        // Backoff without Retry-After: at least base/2 × (1 + 2 + 4).
        assert!(elapsed >= Duration::from_millis(35), "{elapsed:?}");
        // Each attempt carries its own client-request-id.
        let ids: std::collections::HashSet<String> = server
            .graph_log()
            .iter()
            .map(|s| s.header("client-request-id").unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 4);
        for id in ids {
            assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        }
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let server = flaky((0..10).map(|_| (429, ra("0"))).collect()).await;
        let (r, _) = timed_get(&server).await;
        match r.unwrap_err() {
            Error::Throttled { url, attempts, .. } => {
                assert_eq!(attempts, 4);
                assert!(url.ends_with("/v1.0/users/u1"), "{url}");
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        assert_eq!(server.graph_log().len(), 4);
    }

    #[tokio::test]
    async fn total_wait_is_bounded() {
        // Retry-After beyond the 5 s budget: give up at once instead of sleeping.
        let server = flaky(vec![(429, ra("30"))]).await;
        let (r, elapsed) = timed_get(&server).await;
        let err = r.unwrap_err();
        assert!(
            matches!(err, Error::Throttled { attempts: 1, .. }),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }

    #[tokio::test]
    async fn throttled_token_requests_are_retried_too() {
        let issued = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let server = serve(move |_| {
            let issued = issued.clone();
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    respond(429, &[("retry-after", "0.1")], "")
                } else {
                    token_ok(&issued, 3600)
                }
            }
        })
        .await;
        let (_, tokens) = clients(&server, RetryPolicy::default());
        let t = tokens.token(&m365bk_graph::Audience::Graph).await.unwrap();
        assert_eq!(t.secret(), "tok-1");
        assert_eq!(tokens.request_count(), 2);
    }

    #[tokio::test]
    async fn invalid_token_is_refreshed_once() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                if seen.header("authorization") == Some("Bearer tok-1") {
                    graph_error(401, "InvalidAuthenticationToken", "rid-401")
                } else {
                    json(200, serde_json::json!({"id": "u1"}))
                }
            }
        })
        .await;
        let (graph, tokens) = clients(&server, fast_policy());
        let v: Value = graph.get_json("/users/u1").await.unwrap();
        assert_eq!(v["id"], "u1");
        assert_eq!(tokens.request_count(), 2);
        let auth: Vec<_> = server
            .graph_log()
            .iter()
            .map(|s| s.header("authorization").unwrap().to_owned())
            .collect();
        assert_eq!(auth, vec!["Bearer tok-1", "Bearer tok-2"]);
    }

    #[tokio::test]
    async fn persistent_401_is_an_error_after_one_refresh() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                graph_error(401, "InvalidAuthenticationToken", "rid-401")
            }
        })
        .await;
        let (graph, tokens) = clients(&server, fast_policy());
        let err = graph.get_json::<Value>("/users/u1").await.unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.graph_code(), Some("InvalidAuthenticationToken"));
        assert_eq!(tokens.request_count(), 2);
        assert_eq!(server.graph_log().len(), 2);
    }

    #[tokio::test]
    async fn api_error_carries_code_and_request_id_and_is_logged() {
        let logs = LogBuf::default();
        let _guard = logs.install();
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                graph_error(403, "ErrorAccessDenied", "rid-403")
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph
            .get_json::<Value>("/users/u1/mailFolders?$top=5")
            .await
            .unwrap_err();
        assert!(err.is_access_denied());
        assert!(!err.is_transient());
        assert_eq!(err.graph_code(), Some("ErrorAccessDenied"));
        assert_eq!(err.request_id(), Some("rid-403"));
        match &err {
            Error::Api { method, url, .. } => {
                assert_eq!(method, "GET");
                assert_eq!(url, &format!("{}/v1.0/users/u1/mailFolders", server.base));
            }
            other => panic!("{other:?}"),
        }
        // Not retried.
        assert_eq!(server.graph_log().len(), 1);
        let text = logs.text();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("rid-403"), "{text}");
        assert!(text.contains("ErrorAccessDenied"), "{text}");
        assert!(text.contains("status=403"), "{text}");
    }

    #[tokio::test]
    async fn truncated_json_is_a_decode_error_naming_the_url() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                respond(
                    200,
                    &[("content-type", "application/json")],
                    r#"{"id":"u1","displayName":"Ad"#,
                )
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph.get_json::<Value>("/users/u1").await.unwrap_err();
        match &err {
            Error::Decode { url, .. } => {
                assert_eq!(url, &format!("{}/v1.0/users/u1", server.base))
            }
            other => panic!("expected Decode, got {other:?}"),
        }
        assert!(err.to_string().contains("/v1.0/users/u1"));
    }

    #[tokio::test]
    async fn body_cut_mid_json_is_retried_then_a_decode_error() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                // Headers and the start of the body go out, then the connection drops.
                let body = futures::stream::unfold(0u8, |step| async move {
                    match step {
                        0 => Some((
                            Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                                br#"{"value":[{"id":"#,
                            )),
                            1,
                        )),
                        1 => {
                            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                            Some((Err(std::io::Error::other("cut")), 2))
                        }
                        _ => None,
                    }
                });
                respond(
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("content-length", "100"),
                    ],
                    axum::body::Body::from_stream(body),
                )
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph
            .get_json::<Value>("/users/u1/messages")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Decode { url, .. } if url.ends_with("/v1.0/users/u1/messages")),
            "{err:?}"
        );
        assert_eq!(server.graph_log().len(), 4);
    }

    #[tokio::test]
    async fn truncated_json_is_fetched_again_and_wrong_shape_is_not() {
        let issued = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let calls = c.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                if seen.path.ends_with("/shape") {
                    return respond(200, &[("content-type", "application/json")], "[1, 2]");
                }
                // A complete HTTP message whose JSON is cut, then the whole answer.
                let body = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    r#"{"id":"u1","displayName":"Ad"#
                } else {
                    r#"{"id":"u1","displayName":"Adele"}"#
                };
                respond(200, &[("content-type", "application/json")], body)
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let v: Value = graph.get_json("/users/u1").await.unwrap();
        assert_eq!(v["displayName"], "Adele");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "fetched once more");
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct User {
            id: String,
        }
        let err = graph.get_json::<User>("/users/shape").await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert_eq!(
            server
                .graph_log()
                .iter()
                .filter(|s| s.path.ends_with("/shape"))
                .count(),
            1,
            "well-formed JSON of another shape is not fetched again"
        );
    }
}

mod paging {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use m365bk_graph::{is_removed, DeltaStart, Error};
    use serde_json::{json, Value};

    use crate::support::*;

    async fn three_pages() -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        let base: Arc<std::sync::Mutex<String>> = Arc::default();
        let b = base.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let base = b.lock().unwrap().clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                let page = seen
                    .query
                    .as_deref()
                    .and_then(|q| q.strip_prefix("$skiptoken="))
                    .unwrap_or("1")
                    .to_owned();
                let next = |n: u32| format!("{base}/v1.0/users/u1/messages?$skiptoken={n}");
                match page.as_str() {
                    "1" => json(
                        200,
                        json!({"value": [{"id": "m1"}, {"id": "m2"}], "@odata.nextLink": next(2)}),
                    ),
                    "2" => json(
                        200,
                        json!({"value": [{"id": "m3"}, {"id": "m4"}], "@odata.nextLink": next(3)}),
                    ),
                    _ => json(200, json!({"value": [{"id": "m5"}]})),
                }
            }
        })
        .await;
        *base.lock().unwrap() = server.base.clone();
        server
    }

    #[tokio::test]
    async fn list_follows_next_links_and_resends_prefer() {
        let server = three_pages().await;
        let (graph, _) = clients(&server, fast_policy());
        let graph = graph
            .with_header("Prefer", "IdType=\"ImmutableId\"")
            .unwrap();
        let items: Vec<Value> = graph.list("/users/u1/messages", Some(2)).await.unwrap();
        let ids: Vec<_> = items.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["m1", "m2", "m3", "m4", "m5"]);
        let log = server.graph_log();
        assert_eq!(log.len(), 3);
        for seen in &log {
            assert_eq!(
                seen.header("prefer"),
                Some("IdType=\"ImmutableId\", odata.maxpagesize=2"),
                "{seen:?}"
            );
            assert_eq!(seen.header("authorization"), Some("Bearer tok-1"));
            assert!(seen.header("client-request-id").is_some());
        }
        assert_eq!(log[2].query.as_deref(), Some("$skiptoken=3"));
    }

    #[tokio::test]
    async fn foreign_next_link_is_refused() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                json(200, json!({"value": [{"id": "a"}], "@odata.nextLink": "https://evil.example/v1.0/users?$skiptoken=2"}))
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph.list::<Value>("/users", None).await.unwrap_err();
        assert!(
            matches!(&err, Error::ForeignUrl { url, .. } if url.starts_with("https://evil.example/")),
            "{err:?}"
        );
        assert_eq!(server.graph_log().len(), 1);
    }

    async fn delta_server() -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        let base: Arc<std::sync::Mutex<String>> = Arc::default();
        let b = base.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let base = b.lock().unwrap().clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                let q = seen.query.clone().unwrap_or_default();
                let link = |k: &str| format!("{base}/v1.0/users/u1/mailFolders/inbox/messages/delta?{k}");
                if q.contains("$deltatoken=expired") {
                    return crate::support::graph_error(410, "SyncStateNotFound", "rid-410");
                }
                if q.contains("$skiptoken=p2") {
                    json(200, json!({"value": [{"id": "m3", "@removed": {"reason": "deleted"}}],
                        "@odata.deltaLink": link("$deltatoken=d1")}))
                } else if q.contains("$deltatoken=d1") {
                    json(200, json!({"value": [{"id": "m4"}], "@odata.deltaLink": link("$deltatoken=d2")}))
                } else if seen.path.ends_with("/delta()") {
                    json(200, json!({"value": [], "@odata.deltaLink": format!("{base}/v1.0/drives/d1/root/delta(token='t1')")}))
                } else {
                    json(200, json!({"value": [{"id": "m1"}, {"id": "m2"}],
                        "@odata.nextLink": link("$skiptoken=p2")}))
                }
            }
        })
        .await;
        *base.lock().unwrap() = server.base.clone();
        server
    }

    #[tokio::test]
    async fn delta_walker_returns_pages_then_the_delta_link() {
        let server = delta_server().await;
        let (graph, _) = clients(&server, fast_policy());
        let mut walker = graph.delta(
            DeltaStart::Initial("/users/u1/mailFolders/inbox/messages/delta".into()),
            Some(2),
        );
        let p1 = walker.next_page().await.unwrap().unwrap();
        assert_eq!(p1.items.len(), 2);
        assert!(p1.next_link.as_deref().unwrap().ends_with("$skiptoken=p2"));
        assert_eq!(p1.delta_link, None);
        let p2 = walker.next_page().await.unwrap().unwrap();
        assert_eq!(p2.items.len(), 1);
        assert!(is_removed(&p2.items[0]));
        let delta_link = p2.delta_link.clone().unwrap();
        assert!(delta_link.ends_with("$deltatoken=d1"));
        assert!(walker.next_page().await.unwrap().is_none());
        assert!(walker.next_page().await.unwrap().is_none());

        let mut resumed = graph.delta(DeltaStart::Resume(delta_link), Some(2));
        let p3 = resumed.next_page().await.unwrap().unwrap();
        assert_eq!(p3.items[0]["id"], "m4");
        assert!(p3.delta_link.unwrap().ends_with("$deltatoken=d2"));
        assert!(resumed.next_page().await.unwrap().is_none());

        let log = server.graph_log();
        assert_eq!(log.len(), 3);
        for seen in &log {
            assert_eq!(seen.header("prefer"), Some("odata.maxpagesize=2"));
            assert!(seen.header("authorization").is_some());
        }
    }

    #[tokio::test]
    async fn delta_paths_are_sent_as_given_and_expiry_is_classified() {
        let server = delta_server().await;
        let (graph, _) = clients(&server, fast_policy());
        let mut walker = graph.delta(DeltaStart::Initial("/drives/d1/root/delta()".into()), None);
        let page = walker.next_page().await.unwrap().unwrap();
        assert!(page.delta_link.unwrap().contains("delta(token='t1')"));
        assert_eq!(server.graph_log()[0].path, "/v1.0/drives/d1/root/delta()");
        assert_eq!(server.graph_log()[0].header("prefer"), None);

        let expired = format!(
            "{}/v1.0/users/u1/mailFolders/inbox/messages/delta?$deltatoken=expired",
            server.base
        );
        let mut walker = graph.delta(DeltaStart::Resume(expired.clone()), None);
        let err = walker.next_page().await.unwrap_err();
        assert!(err.is_resync_required(), "{err:?}");
        assert_eq!(err.graph_code(), Some("SyncStateNotFound"));
        // The walker keeps its place after an error.
        assert_eq!(walker.position(), Some(expired.as_str()));
        // Without a Location, a restart begins at the path given.
        walker.restart("/users/u1/mailFolders/inbox/messages/delta");
        assert_eq!(
            walker.position(),
            Some("/users/u1/mailFolders/inbox/messages/delta")
        );
    }

    #[tokio::test]
    async fn delta_page_cut_short_is_fetched_again_and_410_location_restarts_the_walk() {
        let issued = Arc::new(AtomicU64::new(0));
        let cut_once = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let base: Arc<std::sync::Mutex<String>> = Arc::default();
        let b = base.clone();
        let server =
            serve(move |seen| {
                let issued = issued.clone();
                let cut_once = cut_once.clone();
                let base = b.lock().unwrap().clone();
                async move {
                    if seen.is_token() {
                        return token_ok(&issued, 3600);
                    }
                    let q = seen.query.clone().unwrap_or_default();
                    if q.contains("token=old") {
                        return respond(
                        410,
                        &[
                            ("content-type", "application/json"),
                            ("location", &format!("{base}/v1.0/drives/d1/root/delta?restart=1")),
                        ],
                        json!({"error": {"code": "resyncRequired", "message": "Resync required."}})
                            .to_string(),
                    );
                    }
                    let page = json!({"value": [{"id": "f1", "name": "a.txt"}],
                    "@odata.deltaLink": format!("{base}/v1.0/drives/d1/root/delta?token=new")})
                    .to_string();
                    if cut_once.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        return respond(
                            200,
                            &[("content-type", "application/json")],
                            page[..page.len() / 2].to_string(),
                        );
                    }
                    respond(200, &[("content-type", "application/json")], page)
                }
            })
            .await;
        *base.lock().unwrap() = server.base.clone();
        let (graph, _) = clients(&server, fast_policy());
        let old = format!("{}/v1.0/drives/d1/root/delta?token=old", server.base);
        let mut walker = graph.delta(DeltaStart::Resume(old), None);
        let err = walker.next_page().await.unwrap_err();
        assert!(err.is_resync_required());
        walker.restart("/drives/d1/root/delta");
        assert_eq!(
            walker.position(),
            Some(format!("{}/v1.0/drives/d1/root/delta?restart=1", server.base).as_str()),
            "the 410's Location is where the walk starts again"
        );
        let page = walker.next_page().await.unwrap().unwrap();
        assert_eq!(page.items[0]["id"], "f1");
        assert!(page.delta_link.unwrap().ends_with("token=new"));
        let log = server.graph_log();
        let queries: Vec<_> = log
            .iter()
            .map(|s| s.query.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            queries,
            ["token=old", "restart=1", "restart=1"],
            "the cut page was fetched again"
        );
    }
}

mod content {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use m365bk_graph::Error;
    use serde_json::{json, Value};

    use crate::support::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn collect(
        stream: futures::stream::BoxStream<'static, m365bk_graph::Result<Bytes>>,
    ) -> m365bk_graph::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn redirected_download_has_no_authorization_and_resumes_with_range() {
        const LEN: usize = 300_000;
        const CUT: usize = 100_000;
        let content = Arc::new(pattern(LEN));
        let issued = Arc::new(AtomicU64::new(0));
        let blob_calls = Arc::new(AtomicU64::new(0));
        let base: Arc<Mutex<String>> = Arc::default();
        let b = base.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let content = content.clone();
            let blob_calls = blob_calls.clone();
            let base = b.lock().unwrap().clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                if seen.path == "/v1.0/drives/d1/items/i1/content" {
                    let n = blob_calls.load(Ordering::SeqCst);
                    return respond(
                        302,
                        &[("location", format!("{base}/blob/i1?sig=abc{n}").as_str())],
                        "",
                    );
                }
                assert_eq!(seen.path, "/blob/i1");
                let n = blob_calls.fetch_add(1, Ordering::SeqCst);
                let etag = ("etag", "\"v1\"");
                match seen.header("range") {
                    None if n == 0 => {
                        // Send the first CUT bytes, then drop the connection.
                        let first = Bytes::copy_from_slice(&content[..CUT]);
                        let body = futures::stream::unfold(0u8, move |step| {
                            let first = first.clone();
                            async move {
                                match step {
                                    0 => Some((Ok::<Bytes, std::io::Error>(first), 1)),
                                    1 => {
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        Some((Err(std::io::Error::other("cut")), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        respond(
                            200,
                            &[("content-length", LEN.to_string().as_str()), etag],
                            axum::body::Body::from_stream(body),
                        )
                    }
                    Some(range) => {
                        let start: usize = range
                            .strip_prefix("bytes=")
                            .and_then(|r| r.strip_suffix('-'))
                            .unwrap()
                            .parse()
                            .unwrap();
                        respond(
                            206,
                            &[
                                (
                                    "content-range",
                                    format!("bytes {start}-{}/{LEN}", LEN - 1).as_str(),
                                ),
                                etag,
                            ],
                            content[start..].to_vec(),
                        )
                    }
                    None => respond(500, &[], "unexpected"),
                }
            }
        })
        .await;
        *base.lock().unwrap() = server.base.clone();
        let (graph, _) = clients(&server, fast_policy());

        let download = graph.download("/drives/d1/items/i1/content").await.unwrap();
        assert_eq!(download.content_length, Some(LEN as u64));
        let bytes = collect(download.into_stream()).await.unwrap();
        assert_eq!(bytes.len(), LEN);
        assert!(bytes == pattern(LEN));

        let log = server.graph_log();
        let graph_hops: Vec<_> = log
            .iter()
            .filter(|s| s.path.starts_with("/v1.0/"))
            .collect();
        let blob_hops: Vec<_> = log
            .iter()
            .filter(|s| s.path.starts_with("/blob/"))
            .collect();
        assert_eq!(graph_hops.len(), 2, "one Graph hop per (re)open");
        assert!(graph_hops
            .iter()
            .all(|s| s.header("authorization") == Some("Bearer tok-1")));
        assert_eq!(blob_hops.len(), 2);
        assert!(blob_hops
            .iter()
            .all(|s| s.header("authorization").is_none()));
        assert_eq!(blob_hops[0].header("range"), None);
        let range = blob_hops[1].header("range").unwrap();
        let resumed_at: usize = range[6..range.len() - 1].parse().unwrap();
        assert!(resumed_at > 0 && resumed_at <= CUT, "{range}");
        // A fresh pre-authenticated URL was used for the resume.
        assert_eq!(blob_hops[1].query.as_deref(), Some("sig=abc1"));
    }

    #[tokio::test]
    async fn expired_download_url_is_replaced_by_a_new_one() {
        let issued = Arc::new(AtomicU64::new(0));
        let graph_calls = Arc::new(AtomicU64::new(0));
        let base: Arc<Mutex<String>> = Arc::default();
        let b = base.clone();
        let g = graph_calls.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let graph_calls = g.clone();
            let base = b.lock().unwrap().clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                if seen.path.starts_with("/v1.0/") {
                    let n = graph_calls.fetch_add(1, Ordering::SeqCst);
                    let item = seen.path.split('/').nth(5).unwrap().to_owned();
                    return respond(
                        302,
                        &[("location", format!("{base}/blob/{item}?sig={n}").as_str())],
                        "",
                    );
                }
                // The first URL of every item has expired; item i3's URLs never work.
                let sig = seen.query.clone().unwrap_or_default();
                if sig == "sig=0" || seen.path == "/blob/i3" {
                    return respond(401, &[], "expired");
                }
                respond(200, &[], "hello")
            }
        })
        .await;
        *base.lock().unwrap() = server.base.clone();
        let (graph, _) = clients(&server, fast_policy());
        let download = graph.download("/drives/d1/items/i1/content").await.unwrap();
        assert_eq!(collect(download.into_stream()).await.unwrap(), b"hello");
        assert_eq!(
            graph_calls.load(Ordering::SeqCst),
            2,
            "asked once more for a URL"
        );
        let blobs: Vec<_> = server
            .graph_log()
            .into_iter()
            .filter(|s| s.path.starts_with("/blob/"))
            .map(|s| s.query.unwrap_or_default())
            .collect();
        assert_eq!(blobs, ["sig=0", "sig=1"]);

        // An item whose URLs keep being refused ends with the download host's error.
        let err = graph
            .download("/drives/d1/items/i3/content")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(401), "{err:?}");
        assert_eq!(
            graph_calls.load(Ordering::SeqCst),
            5,
            "two new URLs, then give up"
        );
    }

    #[tokio::test]
    async fn value_download_is_the_body_directly() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                respond(
                    200,
                    &[("content-type", "message/rfc822")],
                    "Subject: hi\r\n\r\nbody",
                )
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let d = graph
            .download("/users/u1/messages/m1/$value")
            .await
            .unwrap();
        assert_eq!(d.content_length, Some(19));
        assert_eq!(
            collect(d.into_stream()).await.unwrap(),
            b"Subject: hi\r\n\r\nbody"
        );
        let log = server.graph_log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].path, "/v1.0/users/u1/messages/m1/$value");
        assert_eq!(log[0].header("authorization"), Some("Bearer tok-1"));
    }

    #[derive(Default)]
    struct UploadState {
        received: Vec<u8>,
        /// (Content-Range, body length, had Authorization, answered status)
        puts: Vec<(String, usize, bool, u16)>,
        status_queries: u32,
        failed_once: bool,
    }

    async fn upload_server(state: Arc<Mutex<UploadState>>) -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        let base: Arc<Mutex<String>> = Arc::default();
        let b = base.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let state = state.clone();
            let base = b.lock().unwrap().clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                let mut st = state.lock().unwrap();
                match (seen.method.as_str(), seen.path.as_str()) {
                    ("POST", "/v1.0/drives/d1/items/root:/big.bin:/createUploadSession") => {
                        assert_eq!(seen.header("authorization"), Some("Bearer tok-1"));
                        let body: Value = serde_json::from_slice(&seen.body).unwrap();
                        assert_eq!(body["item"]["@microsoft.graph.conflictBehavior"], "replace");
                        json(200, json!({"uploadUrl": format!("{base}/up/sess1?tempauth=x"),
                            "expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": ["0-"]}))
                    }
                    ("GET", "/up/sess1") => {
                        st.status_queries += 1;
                        json(200, json!({"expirationDateTime": "2030-01-01T00:00:00Z",
                            "nextExpectedRanges": [format!("{}-", st.received.len())]}))
                    }
                    ("PUT", "/up/sess1") => {
                        let range = seen.header("content-range").unwrap().to_owned();
                        let auth = seen.header("authorization").is_some();
                        let (span, total) = range.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
                        let (start, end) = span.split_once('-').unwrap();
                        let (start, end, total): (usize, usize, usize) =
                            (start.parse().unwrap(), end.parse().unwrap(), total.parse().unwrap());
                        assert_eq!(end - start + 1, seen.body.len());
                        // Inject one 503 on the second fragment, before storing it.
                        if start > 0 && !st.failed_once {
                            st.failed_once = true;
                            st.puts.push((range, seen.body.len(), auth, 503));
                            return respond(503, &[("retry-after", "0.05")], "");
                        }
                        assert_eq!(start, st.received.len(), "fragments arrive in order");
                        st.received.extend_from_slice(&seen.body);
                        if st.received.len() == total {
                            st.puts.push((range, seen.body.len(), auth, 201));
                            json(201, json!({"id": "item-1", "name": "big.bin", "size": total}))
                        } else {
                            st.puts.push((range, seen.body.len(), auth, 202));
                            json(202, json!({"expirationDateTime": "2030-01-01T00:00:00Z",
                                "nextExpectedRanges": [format!("{}-", st.received.len())]}))
                        }
                    }
                    _ => respond(404, &[], "no route"),
                }
            }
        })
        .await;
        *base.lock().unwrap() = server.base.clone();
        server
    }

    /// The source, in odd-sized chunks that straddle fragment boundaries.
    fn source(data: &[u8]) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(100_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks)
    }

    #[tokio::test]
    async fn upload_session_fragments_and_resume_after_503() {
        const UNIT: usize = 320 * 1024;
        let total = 2 * UNIT + UNIT / 2;
        let data = pattern(total);
        let state = Arc::new(Mutex::new(UploadState::default()));
        let server = upload_server(state.clone()).await;
        let (graph, _) = clients(&server, fast_policy());
        let graph = graph.with_fragment_size(UNIT as u64).unwrap();

        let item = graph
            .upload_session(
                "/drives/d1/items/root:/big.bin:/createUploadSession",
                &json!({"item": {"@microsoft.graph.conflictBehavior": "replace"}}),
                total as u64,
                source(&data),
            )
            .await
            .unwrap();
        assert_eq!(item["id"], "item-1");
        assert_eq!(item["size"], total);

        let st = state.lock().unwrap();
        assert!(st.received == data);
        let sizes: Vec<_> = st.puts.iter().map(|p| (p.1, p.3)).collect();
        assert_eq!(
            sizes,
            vec![(UNIT, 202), (UNIT, 503), (UNIT, 202), (UNIT / 2, 201)]
        );
        let ranges: Vec<_> = st.puts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            ranges,
            vec![
                format!("bytes 0-{}/{total}", UNIT - 1),
                format!("bytes {UNIT}-{}/{total}", 2 * UNIT - 1),
                format!("bytes {UNIT}-{}/{total}", 2 * UNIT - 1),
                format!("bytes {}-{}/{total}", 2 * UNIT, total - 1),
            ]
        );
        for (_, len, auth, _) in st.puts.iter().take(3) {
            assert_eq!(len % UNIT, 0);
            assert!(!auth);
        }
        assert!(!st.puts[3].2, "no Authorization on the upload URL");
        assert_eq!(st.status_queries, 1, "resumed from nextExpectedRanges");
        let status_query = server
            .graph_log()
            .into_iter()
            .find(|s| s.method == "GET")
            .unwrap();
        assert!(status_query.header("authorization").is_none());
    }

    /// An upload server (state `failed_once` set, so no fault is injected) and a client sending
    /// fragments of `unit` bytes. Keep the server alive for the test.
    async fn one_fragment_upload(
        unit: usize,
    ) -> (Arc<Mutex<UploadState>>, Server, m365bk_graph::GraphClient) {
        let state = Arc::new(Mutex::new(UploadState {
            failed_once: true,
            ..Default::default()
        }));
        let server = upload_server(state.clone()).await;
        let (graph, _) = clients(&server, fast_policy());
        let graph = graph.with_fragment_size(unit as u64).unwrap();
        (state, server, graph)
    }

    #[tokio::test]
    async fn upload_source_shorter_than_declared_is_refused_before_the_last_fragment() {
        const UNIT: usize = 320 * 1024;
        let data = pattern(UNIT + 10);
        let (state, _server, graph) = one_fragment_upload(UNIT).await;
        let err = graph
            .upload_session(
                "/drives/d1/items/root:/big.bin:/createUploadSession",
                &json!({"item": {"@microsoft.graph.conflictBehavior": "replace"}}),
                (UNIT + 20) as u64,
                source(&data),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Source { .. }), "{err:?}");
        assert_eq!(state.lock().unwrap().puts.len(), 1);
    }

    /// A source that fails (a damaged pack while restoring) is named with its own error, so a
    /// restore's per-item failure says why.
    #[tokio::test]
    async fn failing_upload_source_is_named_with_its_cause() {
        const UNIT: usize = 320 * 1024;
        let data = pattern(UNIT);
        let (_state, _server, graph) = one_fragment_upload(UNIT).await;
        let failing = futures::stream::iter(vec![
            Ok(Bytes::copy_from_slice(&data)),
            Err(std::io::Error::other("pack data/ab/abcd is corrupt")),
        ]);
        let err = graph
            .upload_session(
                "/drives/d1/items/root:/big.bin:/createUploadSession",
                &json!({"item": {"@microsoft.graph.conflictBehavior": "replace"}}),
                (2 * UNIT) as u64,
                failing,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Source { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("reading failed after") && text.contains("pack data/ab/abcd is corrupt"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn fragment_size_rules() {
        let server = serve(|_| async { respond(500, &[], "") }).await;
        let (graph, _) = clients(&server, fast_policy());
        assert!(graph.clone().with_fragment_size(320 * 1024 + 1).is_err());
        assert!(graph.clone().with_fragment_size(0).is_err());
        assert!(graph.clone().with_fragment_size(192 * 320 * 1024).is_err());
        assert!(graph.clone().with_fragment_size(191 * 320 * 1024).is_ok());
        assert_eq!(m365bk_graph::DEFAULT_UPLOAD_FRAGMENT, 10 * 1024 * 1024);
    }

    #[tokio::test]
    async fn post_mime_post_json_and_put_bytes() {
        use base64::Engine as _;
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                json(
                    201,
                    json!({"id": "new", "echo": String::from_utf8_lossy(&seen.body)}),
                )
            }
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let mime = b"From: a@b\r\nSubject: x\r\n\r\nhello";
        let v = graph
            .post_mime("/users/u1/mailFolders/inbox/messages", mime)
            .await
            .unwrap();
        assert_eq!(v["id"], "new");
        let v2: Value = graph
            .post_json("/users/u1/mailFolders", &json!({"displayName": "Restored"}))
            .await
            .unwrap();
        assert_eq!(v2["echo"], r#"{"displayName":"Restored"}"#);
        graph
            .put_bytes(
                "/drives/d1/items/root:/a.txt:/content",
                Bytes::from_static(b"abc"),
                "text/plain",
            )
            .await
            .unwrap();
        let log = server.graph_log();
        assert_eq!(log[0].header("content-type"), Some("text/plain"));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&log[0].body)
                .unwrap(),
            mime
        );
        assert_eq!(log[1].header("content-type"), Some("application/json"));
        assert_eq!(log[2].method, "PUT");
        assert_eq!(&log[2].body[..], b"abc");
    }

    /// An Outlook attachment session: 200 + `nextExpectedRanges` per range, 201 + `Location`
    /// at the end; `fault` decides the answer to the Nth PUT (1-based) before it is stored.
    #[derive(Default)]
    struct AttachState {
        received: Vec<u8>,
        /// (Content-Range, body length, had Authorization, Content-Type, answered status)
        puts: Vec<(String, usize, bool, Option<String>, u16)>,
        status_queries: u32,
        /// PUT number → status to answer instead of storing (503, or 416 after storing).
        faults: Vec<(usize, u16)>,
        session_body: Option<Value>,
    }

    async fn attach_server(state: Arc<Mutex<AttachState>>) -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        let base: Arc<Mutex<String>> = Arc::default();
        let b = base.clone();
        let server = serve(move |seen| {
            let issued = issued.clone();
            let state = state.clone();
            let base = b.lock().unwrap().clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                let mut st = state.lock().unwrap();
                match (seen.method.as_str(), seen.path.as_str()) {
                    ("POST", "/v1.0/users/u1/messages/m1/attachments/createUploadSession") => {
                        assert_eq!(seen.header("authorization"), Some("Bearer tok-1"));
                        st.session_body = Some(serde_json::from_slice(&seen.body).unwrap());
                        json(201, json!({"uploadUrl": format!("{base}/att/s1?authtoken=x"),
                            "expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": ["0-"]}))
                    }
                    ("GET", "/att/s1") => {
                        st.status_queries += 1;
                        json(200, json!({"expirationDateTime": "2030-01-01T00:00:00Z",
                            "nextExpectedRanges": [st.received.len().to_string()]}))
                    }
                    ("PUT", "/att/s1") => {
                        let range = seen.header("content-range").unwrap().to_owned();
                        let auth = seen.header("authorization").is_some();
                        let ctype = seen.header("content-type").map(str::to_owned);
                        let (span, total) = range.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
                        let (start, _) = span.split_once('-').unwrap();
                        let (start, total): (usize, usize) = (start.parse().unwrap(), total.parse().unwrap());
                        let n = st.puts.len() + 1;
                        let fault = st.faults.iter().find(|f| f.0 == n).map(|f| f.1);
                        if fault == Some(503) {
                            st.puts.push((range, seen.body.len(), auth, ctype, 503));
                            return respond(503, &[("retry-after", "0.05")], "");
                        }
                        if start != st.received.len() {
                            st.puts.push((range, seen.body.len(), auth, ctype, 416));
                            return json(416, json!({"error": {"code": "InvalidContentRange", "message": "out of order"}}));
                        }
                        st.received.extend_from_slice(&seen.body);
                        if fault == Some(416) {
                            // Stored, but the answer is lost: the client resends and is told 416.
                            st.puts.push((range, seen.body.len(), auth, ctype, 599));
                            return respond(502, &[], "");
                        }
                        if st.received.len() == total {
                            st.puts.push((range, seen.body.len(), auth, ctype, 201));
                            respond(201, &[("location", "https://outlook.example/Messages('m1')/Attachments('att-1')")], "")
                        } else {
                            st.puts.push((range, seen.body.len(), auth, ctype, 200));
                            json(200, json!({"expirationDateTime": "2030-01-01T00:00:00Z",
                                "nextExpectedRanges": [st.received.len().to_string()]}))
                        }
                    }
                    _ => respond(404, &[], "no route"),
                }
            }
        })
        .await;
        *base.lock().unwrap() = server.base.clone();
        server
    }

    #[tokio::test]
    async fn attachment_session_sends_4_mib_ranges_in_order_and_resumes_after_503() {
        const MIB: usize = 1024 * 1024;
        let total = 9 * MIB + 12_345;
        let data = pattern(total);
        let state = Arc::new(Mutex::new(AttachState {
            faults: vec![(2, 503)],
            ..Default::default()
        }));
        let server = attach_server(state.clone()).await;
        let (graph, _) = clients(&server, fast_policy());
        let item = json!({"attachmentType": "file", "name": "big.pdf", "size": total,
            "contentType": "application/pdf"});
        let location = graph
            .attachment_upload_session("/users/u1/messages/m1", &item, total as u64, source(&data))
            .await
            .unwrap();
        assert_eq!(
            location.as_deref(),
            Some("https://outlook.example/Messages('m1')/Attachments('att-1')")
        );
        let st = state.lock().unwrap();
        assert_eq!(
            st.session_body.as_ref().unwrap(),
            &json!({"AttachmentItem": item})
        );
        assert!(st.received == data, "the attachment arrives byte for byte");
        let got: Vec<_> = st.puts.iter().map(|p| (p.0.clone(), p.4)).collect();
        let r = |a: usize, b: usize, s: u16| (format!("bytes {a}-{}/{total}", b - 1), s);
        assert_eq!(
            got,
            vec![
                r(0, 4 * MIB, 200),
                r(4 * MIB, 8 * MIB, 503),
                r(4 * MIB, 8 * MIB, 200),
                r(8 * MIB, total, 201),
            ]
        );
        for p in &st.puts {
            assert!(p.1 <= 4 * MIB, "ranges of at most 4 MiB");
            assert!(
                !p.2,
                "no Authorization header on the pre-authenticated uploadUrl"
            );
            assert_eq!(p.3.as_deref(), Some("application/octet-stream"));
        }
        assert_eq!(st.status_queries, 1, "resumed from nextExpectedRanges");
    }

    #[tokio::test]
    async fn attachment_session_range_stored_but_answer_lost_resumes_after_it() {
        const MIB: usize = 1024 * 1024;
        let total = 5 * MIB;
        let data = pattern(total);
        // PUT 1 is stored but its answer is lost (502): the status query says 4 MiB are in,
        // so the client goes on with the next range instead of resending the first.
        let state = Arc::new(Mutex::new(AttachState {
            faults: vec![(1, 416)],
            ..Default::default()
        }));
        let server = attach_server(state.clone()).await;
        let (graph, _) = clients(&server, fast_policy());
        let item = json!({"attachmentType": "file", "name": "x.bin", "size": total});
        graph
            .attachment_upload_session("/users/u1/messages/m1", &item, total as u64, source(&data))
            .await
            .unwrap();
        let st = state.lock().unwrap();
        assert!(st.received == data);
        let statuses: Vec<u16> = st.puts.iter().map(|p| p.4).collect();
        assert_eq!(statuses, vec![599, 201]);
        assert_eq!(st.status_queries, 1);
    }

    #[tokio::test]
    async fn attachment_session_out_of_order_416_asks_the_session_and_continues() {
        const MIB: usize = 1024 * 1024;
        let total = 4 * MIB + 10;
        let data = pattern(total);
        let state = Arc::new(Mutex::new(AttachState::default()));
        let server = attach_server(state.clone()).await;
        // The server already holds the first 1 MiB (an earlier attempt): the first PUT is
        // refused with 416 and the client resumes at 1 MiB from the status query.
        state.lock().unwrap().received = data[..MIB].to_vec();
        let (graph, _) = clients(&server, fast_policy());
        let item = json!({"attachmentType": "file", "name": "y.bin", "size": total});
        graph
            .attachment_upload_session("/users/u1/messages/m1", &item, total as u64, source(&data))
            .await
            .unwrap();
        let st = state.lock().unwrap();
        assert!(st.received == data);
        let got: Vec<_> = st.puts.iter().map(|p| (p.0.clone(), p.4)).collect();
        assert_eq!(
            got,
            vec![
                (format!("bytes 0-{}/{total}", 4 * MIB - 1), 416),
                (format!("bytes {MIB}-{}/{total}", 4 * MIB - 1), 200),
                (format!("bytes {}-{}/{total}", 4 * MIB, total - 1), 201),
            ]
        );
        assert_eq!(st.status_queries, 1);
    }
}

mod directory {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use m365bk_graph::{Directory, RestDirectory, SdkDirectory};
    use serde_json::json;
    use url::Url;

    use crate::support::*;

    async fn directory_server() -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        let throttled = Arc::new(AtomicU64::new(0));
        serve(move |seen| {
            let issued = issued.clone();
            let throttled = throttled.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                match seen.path.as_str() {
                    "/v1.0/users/adele@contoso.com" => json(
                        200,
                        json!({"id": "u-adele", "userPrincipalName": "adele@contoso.com"}),
                    ),
                    "/v1.0/users/adele@contoso.com/drive" => {
                        json(200, json!({"id": "drive-adele", "driveType": "business"}))
                    }
                    "/v1.0/users/o'neil%20x@contoso.com" => json(200, json!({"id": "u-oneil"})),
                    "/v1.0/users/busy" => {
                        if throttled.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                            respond(429, &[("retry-after", "0")], "")
                        } else {
                            json(200, json!({"id": "u-busy"}))
                        }
                    }
                    "/v1.0/users/stale" => {
                        if seen.header("authorization") == Some("Bearer tok-1") {
                            graph_error(401, "InvalidAuthenticationToken", "rid-stale")
                        } else {
                            json(200, json!({"id": "u-stale"}))
                        }
                    }
                    _ => graph_error(404, "Request_ResourceNotFound", "rid-404"),
                }
            }
        })
        .await
    }

    /// The same checks against both implementations (the trait's conformance suite).
    async fn conformance(make: impl Fn(&Server) -> Box<dyn Directory>) {
        let server = directory_server().await;
        let dir = make(&server);

        let user = dir.user("adele@contoso.com").await.unwrap();
        assert_eq!(user["id"], "u-adele");
        let drive = dir.user_drive("adele@contoso.com").await.unwrap();
        assert_eq!(drive["id"], "drive-adele");
        let oneil = dir.user("o'neil x@contoso.com").await.unwrap();
        assert_eq!(oneil["id"], "u-oneil");

        let err = dir.user("nobody@contoso.com").await.unwrap_err();
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.graph_code(), Some("Request_ResourceNotFound"));
        assert_eq!(err.request_id(), Some("rid-404"));
        assert!(
            err.to_string().contains("/v1.0/users/nobody@contoso.com"),
            "{err}"
        );

        // Our retry layer applies.
        assert_eq!(dir.user("busy").await.unwrap()["id"], "u-busy");

        let log = server.graph_log();
        for seen in &log {
            assert_eq!(seen.method, "GET");
            assert!(seen
                .header("authorization")
                .unwrap()
                .starts_with("Bearer tok-"));
            assert!(seen.header("client-request-id").is_some(), "{seen:?}");
            assert!(
                seen.header("user-agent")
                    .unwrap()
                    .starts_with("ISV|m365bk|m365bk/"),
                "{seen:?}"
            );
        }
        assert_eq!(log.len(), 6);
    }

    fn parts(
        server: &Server,
    ) -> (
        m365bk_graph::HttpClient,
        Arc<m365bk_graph::TokenProvider>,
        Url,
    ) {
        let http = http(fast_policy());
        let endpoints = endpoints(&server.base);
        let tokens = Arc::new(m365bk_graph::TokenProvider::new(
            http.clone(),
            endpoints.clone(),
            credential(),
        ));
        (http, tokens, endpoints.graph_base)
    }

    #[tokio::test]
    async fn rest_directory_conformance() {
        conformance(|server| {
            let (http, tokens, base) = parts(server);
            Box::new(RestDirectory::new(m365bk_graph::GraphClient::new(
                http, tokens, base,
            )))
        })
        .await;
    }

    #[tokio::test]
    async fn sdk_directory_conformance() {
        conformance(|server| {
            let (http, tokens, base) = parts(server);
            Box::new(SdkDirectory::new(&http, tokens, base))
        })
        .await;
    }

    #[tokio::test]
    async fn sdk_directory_refreshes_a_rejected_token_once() {
        let server = directory_server().await;
        let (http, tokens, base) = parts(&server);
        let dir = SdkDirectory::new(&http, tokens.clone(), base);
        assert_eq!(dir.user("stale").await.unwrap()["id"], "u-stale");
        assert_eq!(tokens.request_count(), 2);
        assert_eq!(dir.request_count(), 2);
    }
}

mod transport {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;

    use m365bk_graph::{
        Audience, Directory, Error, GraphClient, HttpClient, HttpOptions, SdkDirectory,
        TokenProvider,
    };
    use serde_json::{json, Value};

    use crate::support::*;

    #[tokio::test]
    async fn timeouts_are_retried_for_get_but_not_for_post() {
        let issued = Arc::new(AtomicU64::new(0));
        let server = serve(move |seen| {
            let issued = issued.clone();
            async move {
                if seen.is_token() {
                    return token_ok(&issued, 3600);
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
                json(200, json!({"id": "late"}))
            }
        })
        .await;
        let http = HttpClient::new(HttpOptions {
            request_timeout: Duration::from_millis(150),
            retry: fast_policy(),
            ..HttpOptions::default()
        })
        .unwrap();
        let endpoints = endpoints(&server.base);
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            endpoints.clone(),
            credential(),
        ));
        let graph = GraphClient::new(http, tokens, endpoints.graph_base);

        let err = graph
            .post_json::<Value>("/users/u1/mailFolders", &json!({"displayName": "x"}))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert_eq!(
            server.graph_log().len(),
            1,
            "a POST that may have landed is not resent"
        );

        let err = graph.get_json::<Value>("/users/u1").await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert_eq!(server.graph_log().len(), 1 + 4);
    }

    /// Both TLS stacks (ours: reqwest 0.13 + rustls/aws-lc-rs; graph-rs-sdk's: reqwest 0.12 +
    /// rustls/ring) are linked into one binary: a TLS handshake with either must fail cleanly,
    /// not panic on crypto-provider selection.
    #[tokio::test]
    async fn tls_handshake_failure_is_unreachable_not_a_panic() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                if let Ok((mut socket, _)) = listener.accept().await {
                    use tokio::io::AsyncWriteExt;
                    let _ = socket.write_all(b"HTTP/1.1 400 Not TLS\r\n\r\n").await;
                }
            }
        });
        let base = format!("https://{addr}");
        let http = http(fast_policy());
        let endpoints = endpoints(&base);
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            endpoints.clone(),
            credential(),
        ));
        let err = tokens.token(&Audience::Graph).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unreachable { url, .. } if url.starts_with("https://127.0.0.1:")),
            "{err:?}"
        );

        // The SDK path needs a token first; give it one that is cached for an hour.
        let issued = Arc::new(AtomicU64::new(0));
        let token_server = serve(move |_| {
            let r = token_ok(&issued, 3600);
            async move { r }
        })
        .await;
        let sdk_tokens = Arc::new(TokenProvider::new(
            http.clone(),
            m365bk_graph::Endpoints {
                authority: url::Url::parse(&token_server.base).unwrap(),
                graph_base: url::Url::parse(&format!("{base}/v1.0")).unwrap(),
            },
            credential(),
        ));
        let dir = SdkDirectory::new(
            &http,
            sdk_tokens,
            url::Url::parse(&format!("{base}/v1.0")).unwrap(),
        );
        let err = dir.user("adele@contoso.com").await.unwrap_err();
        assert!(matches!(&err, Error::Sdk { .. }), "{err:?}");
        // A connect-phase failure: classified transient, so it was retried like ours.
        assert!(err.is_transient());
        assert!(
            err.to_string().contains("/v1.0/users/adele@contoso.com"),
            "{err}"
        );
    }
}

/// `$batch` answers a real simulator does not give: broken envelopes and inner throttling that
/// never ends (the simulator-backed batch tests are in the root package's
/// tests/integration/batch.rs).
mod batch {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use m365bk_graph::{BatchRequest, Error};
    use serde_json::{json, Value};

    use crate::support::*;

    /// A server answering every `$batch` with `answer(requests of the batch)`.
    async fn batch_server(answer: fn(&[Value]) -> axum::response::Response) -> Server {
        let issued = Arc::new(AtomicU64::new(0));
        serve(move |seen: Seen| {
            let r = if seen.is_token() {
                token_ok(&issued, 3600)
            } else {
                let body: Value = serde_json::from_slice(&seen.body).unwrap();
                answer(body["requests"].as_array().unwrap())
            };
            async move { r }
        })
        .await
    }

    fn two() -> Vec<BatchRequest> {
        vec![
            BatchRequest::get("1", "/users/u1/mailboxSettings"),
            BatchRequest::get("2", "/users/u1/mailFolders?$top=100"),
        ]
    }

    #[tokio::test]
    async fn an_answer_without_an_id_is_a_protocol_error_naming_it() {
        let server =
            batch_server(|_| json(200, json!({"responses": [{"status": 200, "body": {}}]}))).await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph.batch(two()).await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("responses[0]"), "{err}");
        assert!(err.to_string().contains("has no id"), "{err}");
        assert!(err.to_string().contains("/v1.0/$batch"), "{err}");
    }

    #[tokio::test]
    async fn a_request_left_unanswered_or_answered_twice_is_named() {
        let server = batch_server(|_| {
            json(
                200,
                json!({"responses": [{"id": "1", "status": 200, "body": {}}]}),
            )
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph.batch(two()).await.unwrap_err().to_string();
        assert!(err.contains("no response for id \"2\""), "{err}");

        let server = batch_server(|_| {
            json(
                200,
                json!({"responses": [
                    {"id": "1", "status": 200}, {"id": "1", "status": 200}, {"id": "2", "status": 200}
                ]}),
            )
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph.batch(two()).await.unwrap_err().to_string();
        assert!(err.contains("two responses for id \"1\""), "{err}");
    }

    #[tokio::test]
    async fn an_answer_that_is_no_envelope_is_a_decode_error() {
        let server = batch_server(|_| json(200, json!([{"id": "1"}]))).await;
        let (graph, _) = clients(&server, fast_policy());
        let err = graph.batch(two()).await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("/v1.0/$batch"), "{err}");
    }

    #[tokio::test]
    async fn inner_throttling_without_end_stops_at_the_attempt_limit() {
        // Request 1 always 503 without Retry-After (jittered backoff); request 2 succeeds.
        let server = batch_server(|reqs| {
            let responses: Vec<Value> = reqs
                .iter()
                .map(|r| {
                    if r["id"] == "1" {
                        json!({"id": "1", "status": 503, "headers": {"Content-Type": "application/json"},
                            "body": {"error": {"code": "serviceNotAvailable", "message": "later"}}})
                    } else {
                        json!({"id": r["id"], "status": 200, "body": {"value": []}})
                    }
                })
                .collect();
            json(200, json!({ "responses": responses }))
        })
        .await;
        let (graph, _) = clients(&server, fast_policy());
        let answers = graph.batch(two()).await.unwrap();
        assert_eq!(answers[0].status, 503);
        assert_eq!(answers[0].attempts, 4, "fast_policy allows 4 attempts");
        assert_eq!(answers[1].attempts, 1);
        assert!(matches!(
            answers[0].json::<Value>().unwrap_err(),
            Error::Throttled { attempts: 4, .. }
        ));
        let posts: Vec<Seen> = server.graph_log();
        assert_eq!(posts.len(), 4);
        // Only the throttled request went again.
        for p in &posts[1..] {
            let body: Value = serde_json::from_slice(&p.body).unwrap();
            assert_eq!(body["requests"].as_array().unwrap().len(), 1, "{body}");
        }
        assert_eq!(posts[0].path, "/v1.0/$batch");
    }
}
