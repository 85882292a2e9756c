//! A payments app behind the layer, served by axum on a loopback port, and a real HTTP client.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use idem_http::IdempotencyLayer;

/// What the handlers count.
#[derive(Default)]
pub struct Counters {
    /// Handler executions that started.
    pub started: AtomicU32,
    /// Handler executions that finished.
    pub finished: AtomicU32,
}

impl Counters {
    pub fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }
    pub fn finished(&self) -> u32 {
        self.finished.load(Ordering::SeqCst)
    }
}

/// How long `/payments` takes.
pub const PAYMENT_TIME: Duration = Duration::from_millis(300);

async fn pay(State(counters): State<Arc<Counters>>, body: Bytes) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(PAYMENT_TIME).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    let receipt = format!(
        "{{\"id\":\"pay_{n}\",\"request\":{}}}",
        String::from_utf8_lossy(&body)
    );
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        AppendHeaders([
            ("location", format!("/payments/pay_{n}")),
            ("set-cookie", format!("session=s{n}")),
            ("x-request-id", format!("req-{n}")),
            ("link", "</payments>; rel=\"collection\"".to_owned()),
            ("link", "</receipts>; rel=\"receipts\"".to_owned()),
        ]),
        receipt,
    )
        .into_response()
}

/// 500 on odd executions, 201 on even ones.
async fn flaky(State(counters): State<Arc<Counters>>) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    if n % 2 == 1 {
        (StatusCode::INTERNAL_SERVER_ERROR, "gateway down").into_response()
    } else {
        (StatusCode::CREATED, format!("charged on attempt {n}")).into_response()
    }
}

/// A deterministic refusal: 400, recorded.
async fn refuse(State(counters): State<Arc<Counters>>) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::BAD_REQUEST,
        format!("unsupported currency (execution {n})"),
    )
        .into_response()
}

/// Panics on its first execution.
async fn panics(State(counters): State<Arc<Counters>>) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        panic!("the handler fails halfway (on purpose, in a test)");
    }
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("execution {n}")).into_response()
}

/// A server-sent event stream.
async fn events(State(counters): State<Arc<Counters>>) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (
        [("content-type", "text/event-stream")],
        format!("data: execution {n}\n\n"),
    )
        .into_response()
}

/// A 100-byte response.
async fn large(State(counters): State<Arc<Counters>>) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    counters.finished.fetch_add(1, Ordering::SeqCst);
    "x".repeat(100).into_response()
}

async fn count(State(counters): State<Arc<Counters>>) -> String {
    counters.started().to_string()
}

/// The app: routes behind `layer`, and the counters.
pub fn app(layer: IdempotencyLayer) -> (Router, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let router = Router::new()
        .route("/payments", post(pay).get(count).patch(pay).put(pay))
        .route("/refunds", post(pay))
        .route("/flaky", post(flaky))
        .route("/refuse", post(refuse))
        .route("/panics", post(panics))
        .route("/events", post(events))
        .route("/large", post(large))
        .route("/count", get(count))
        .layer(layer)
        .with_state(counters.clone());
    (router, counters)
}

/// Serves `router` on a free loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A running app and a client for it.
pub struct Running {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    client: Client<HttpConnector, BoxBody<Bytes, Infallible>>,
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("text header"))
    }
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
    /// The problem's code, checked against the rest of the problem document.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let problem: serde_json::Value =
            serde_json::from_slice(&self.body).expect("problem+json body");
        let code = problem["code"].as_str().expect("code").to_owned();
        assert_eq!(problem["status"], self.status.as_u16(), "{problem}");
        assert!(problem["title"].as_str().is_some(), "{problem}");
        assert!(problem["detail"].as_str().is_some(), "{problem}");
        assert!(
            problem["type"].as_str().expect("type").ends_with(&code),
            "{problem}"
        );
        assert_eq!(self.header("idempotency-rejection"), Some(code.as_str()));
        code
    }
}

/// A request being built.
pub struct Send<'a> {
    running: &'a Running,
    request: http::request::Builder,
    body: BoxBody<Bytes, Infallible>,
}

impl Running {
    pub async fn start(layer: IdempotencyLayer) -> Self {
        let (router, counters) = app(layer);
        Self::serve(router, counters).await
    }

    /// Serves an app of the caller's, whose handlers count in `counters`.
    pub async fn serve(router: Router, counters: Arc<Counters>) -> Self {
        let addr = serve(router).await;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            counters,
            client,
        }
    }

    pub fn request(&self, method: &str, path: &str) -> Send<'_> {
        Send {
            running: self,
            request: http::Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr)),
            body: Full::new(Bytes::new()).boxed(),
        }
    }

    /// `POST path` with `key` and a JSON body.
    pub fn post(&self, path: &str, key: &str, json: &str) -> Send<'_> {
        self.request("POST", path).key(key).json(json)
    }
}

impl Send<'_> {
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let value = http::HeaderValue::from_bytes(value.as_ref()).expect("header value");
        self.request = self.request.header(name, value);
        self
    }
    pub fn key(self, key: &str) -> Self {
        self.header("idempotency-key", key)
    }
    pub fn json(self, json: &str) -> Self {
        self.header("content-type", "application/json")
            .body(Bytes::copy_from_slice(json.as_bytes()))
    }
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Full::new(body).boxed();
        self
    }
    /// A chunked body: no `Content-Length`.
    pub fn chunked(mut self, chunks: Vec<Bytes>) -> Self {
        let frames = chunks.into_iter().map(|chunk| Ok(Frame::data(chunk)));
        self.body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        self
    }
    pub async fn send(self) -> Answer {
        let request = self.request.body(self.body).expect("request");
        let response = self
            .running
            .client
            .request(request)
            .await
            .expect("the server answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}
