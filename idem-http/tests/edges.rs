//! Edges of the layer found by review, each driven through the router directly (a body that
//! stalls mid-upload, a store that loses leases), with counted handler executions.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use idem_core::{Idempotency, MemoryStore};
use idem_http::IdempotencyLayer;
use tower_service::Service;

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut router = router.clone();
    std::future::poll_fn(|cx| <Router as Service<Request<Body>>>::poll_ready(&mut router, cx))
        .await
        .unwrap();
    let response: Response<Body> = router.call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn post_req(path: &str, key: &str, json: &str) -> Request<Body> {
    Request::post(path)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(json.to_owned()))
        .unwrap()
}

/// Inside a nested router the layer sees the stripped path: keys use the original one, so two
/// tenants' requests do not share a key.
#[tokio::test]
async fn nested_routers_keep_prefixes_apart() {
    let runs = Arc::new(AtomicU32::new(0));
    let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()));
    let counter = runs.clone();
    let tenant_api = Router::new()
        .route(
            "/payments",
            post(move |Path(tenant): Path<String>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    format!("charged tenant {tenant}")
                }
            }),
        )
        .layer(layer);
    let app = Router::new().nest("/tenants/{tenant}", tenant_api);

    let body = r#"{"amount_cents":100}"#;
    let a = call(&app, post_req("/tenants/alice/payments", "k-1", body)).await;
    let b = call(&app, post_req("/tenants/bob/payments", "k-1", body)).await;
    println!("alice: {} {:?}", a.0, a.2);
    println!(
        "bob:   {} {:?} replayed={:?}",
        b.0,
        b.2,
        b.1.get("idempotent-replayed")
    );
    println!("handler runs: {}", runs.load(Ordering::SeqCst));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "bob's payment never ran");
}

/// JSON numbers beyond 64 bits count as written: different amounts are different requests.
#[tokio::test]
async fn big_json_numbers_are_different_requests() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let app = Router::new()
        .route(
            "/payments",
            post(move |body: Bytes| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    format!("handled {}", String::from_utf8_lossy(&body))
                }
            }),
        )
        .layer(IdempotencyLayer::new(Idempotency::new(MemoryStore::new())));
    let first = call(
        &app,
        post_req("/payments", "k", r#"{"amount":100000000000000000000001}"#),
    )
    .await;
    let second = call(
        &app,
        post_req("/payments", "k", r#"{"amount":100000000000000000000002}"#),
    )
    .await;
    println!("first:  {} {:?}", first.0, first.2);
    println!(
        "second: {} {:?} replayed={:?}",
        second.0,
        second.2,
        second.1.get("idempotent-replayed")
    );
    assert_eq!(
        second.0, 422,
        "a different amount under the same key must be 422"
    );
}

/// A request that passed the shutdown check while its body arrives is waited for by `shutdown`.
#[tokio::test]
async fn shutdown_waits_for_requests_reading_their_body() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()));
    let app = Router::new()
        .route(
            "/payments",
            post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        )
        .layer(layer.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream_shim(rx));
    let request = Request::post("/payments")
        .header("idempotency-key", "k")
        .body(Body::new(body))
        .unwrap();
    let app2 = app.clone();
    let pending = tokio::spawn(async move { call(&app2, request).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shutdown = {
        let (layer, runs) = (layer.clone(), runs.clone());
        tokio::spawn(async move {
            layer.shutdown().await;
            runs.load(Ordering::SeqCst)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown returned while a request was in flight"
    );
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"{}"))))
        .await
        .unwrap();
    drop(tx);
    let answer = pending.await.unwrap();
    assert_eq!(answer.0, 200, "{answer:?}");
    let runs_when_shutdown_returned = shutdown.await.unwrap();
    assert_eq!(
        runs_when_shutdown_returned, 1,
        "shutdown returned before the handler ran"
    );
}

fn tokio_stream_shim<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Clients that never finish their bodies hold no `max_in_flight` slot.
#[tokio::test]
async fn slow_bodies_hold_no_capacity() {
    let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new())).max_in_flight(2);
    let app = Router::new()
        .route("/payments", post(|| async { "ok" }))
        .layer(layer);
    let mut senders = Vec::new();
    for i in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
        senders.push(tx);
        let request = Request::post("/payments")
            .header("idempotency-key", format!("slow-{i}"))
            .body(Body::new(http_body_util::StreamBody::new(
                tokio_stream_shim(rx),
            )))
            .unwrap();
        let app = app.clone();
        tokio::spawn(async move { call(&app, request).await });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let honest = call(&app, post_req("/payments", "honest", "{}")).await;
    println!(
        "honest request: {} {:?}",
        honest.0,
        honest.1.get("idempotency-rejection")
    );
    assert_ne!(honest.0, 503);
}

/// A memory store whose renewals report the lease lost.
struct LosesLease(MemoryStore);

#[async_trait::async_trait]
impl idem_core::Store for LosesLease {
    async fn claim(
        &self,
        request: idem_core::ClaimRequest<'_>,
    ) -> Result<idem_core::ClaimOutcome, idem_core::Error> {
        self.0.claim(request).await
    }
    async fn complete(
        &self,
        key: &str,
        fence: idem_core::Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), idem_core::Error> {
        self.0.complete(key, fence, record, retention).await
    }
    async fn release(&self, key: &str, fence: idem_core::Fence) -> Result<(), idem_core::Error> {
        self.0.release(key, fence).await
    }
    async fn renew(
        &self,
        key: &str,
        _: idem_core::Fence,
        _: Duration,
    ) -> Result<(), idem_core::Error> {
        Err(idem_core::Error::lease_lost(key))
    }
}

/// When the lease is lost while a handler runs, the client still gets the handler's response,
/// recorded or not.
#[tokio::test]
async fn a_lost_lease_keeps_the_handlers_response() {
    let layer = IdempotencyLayer::new(Idempotency::new(LosesLease(MemoryStore::new())))
        .lease(Duration::from_millis(300));
    let app = Router::new()
        .route(
            "/events",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                (
                    [("content-type", "text/event-stream")],
                    "data: receipt r-1\n\n",
                )
            }),
        )
        .route(
            "/busy",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream busy, nothing charged",
                )
            }),
        )
        .layer(layer);
    let events = call(&app, post_req("/events", "e", "{}")).await;
    let busy = call(&app, post_req("/busy", "b", "{}")).await;
    println!(
        "events: {} {:?} {:?}",
        events.0,
        events.1.get("idempotency-rejection"),
        events.2
    );
    println!(
        "busy:   {} {:?} {:?}",
        busy.0,
        busy.1.get("idempotency-rejection"),
        busy.2
    );
    assert_eq!(events.0, 200);
    assert_eq!(busy.0, 503);
}

/// Issue 20 (defect 8): a claim whose reply came after its lease lapsed was answered 503
/// `store-unavailable`, though the store had answered. The handler did not run; the answer is
/// 409 `in-flight` with a `Retry-After`, and the retry runs the handler once.
#[tokio::test]
async fn a_claim_that_lapsed_before_the_handler_is_in_flight_not_a_store_failure() {
    use idem_core::testing::FaultyStore;
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    store.next_claim_reply_late_ms.store(400, Ordering::SeqCst);
    let layer =
        IdempotencyLayer::new(Idempotency::from_arc(store)).lease(Duration::from_millis(300));
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let app = Router::new()
        .route(
            "/charge",
            post(move || {
                let counter = counter.clone();
                async move { format!("charge {}", counter.fetch_add(1, Ordering::SeqCst) + 1) }
            }),
        )
        .layer(layer);
    let (status, headers, body) = call(&app, post_req("/charge", "k", "{}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body:?}");
    assert_eq!(headers.get("idempotency-rejection").unwrap(), "in-flight");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler ran");
    let (status, _, body) = call(&app, post_req("/charge", "k", "{}")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"charge 1"[..]));
}

/// A handler whose `n`th run sleeps `pauses[n - 1]` and answers `charge n`.
fn charging(
    runs: Arc<AtomicU32>,
    pauses: &'static [u64],
) -> (Router, Arc<idem_core::testing::FaultyStore>) {
    let store = Arc::new(idem_core::testing::FaultyStore::new(MemoryStore::new()));
    // Every renewal is refused (until the test says otherwise): claims lapse after their lease.
    store.leases_lost.store(true, Ordering::SeqCst);
    let layer = IdempotencyLayer::new(Idempotency::from_arc(store.clone()))
        .lease(Duration::from_millis(300));
    let router = Router::new()
        .route(
            "/charge",
            post(move || {
                let runs = runs.clone();
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    let pause = pauses.get(n as usize - 1).copied().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    format!("charge {n}")
                }
            }),
        )
        .layer(layer);
    (router, store)
}

/// Issue 20 (what peers do): a handler whose claim lapsed while it ran, the key taken over by
/// a retry that recorded its own response, sent its unrecorded response anyway: two clients of
/// one key saw two answers (`charge 1` and `charge 2`). It sends the recorded one; and while
/// the retry still runs, 409 rather than a response that will never be the key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_claim_lapsed_never_sends_an_unrecorded_response() {
    let runs = Arc::new(AtomicU32::new(0));
    let (app, _) = charging(runs.clone(), &[700, 0]);
    let first = tokio::spawn({
        let app = app.clone();
        async move { call(&app, post_req("/charge", "k", "{}")).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let retry = call(&app, post_req("/charge", "k", "{}")).await;
    assert_eq!((retry.0, &retry.2[..]), (StatusCode::OK, &b"charge 2"[..]));
    let first = first.await.unwrap();
    assert_eq!((first.0, &first.2[..]), (StatusCode::OK, &b"charge 2"[..]));
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let runs = Arc::new(AtomicU32::new(0));
    let (app, store) = charging(runs.clone(), &[700, 800]);
    let first = tokio::spawn({
        let app = app.clone();
        async move { call(&app, post_req("/charge", "k", "{}")).await }
    });
    // The first claim has lapsed; the retry's is renewed, and holds the key when the first
    // handler ends.
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.leases_lost.store(false, Ordering::SeqCst);
    let retry = tokio::spawn({
        let app = app.clone();
        async move { call(&app, post_req("/charge", "k", "{}")).await }
    });
    let first = first.await.unwrap();
    assert_eq!(first.0, StatusCode::CONFLICT, "{:?}", first.2);
    assert_eq!(first.1.get("idempotency-rejection").unwrap(), "in-flight");
    let retry = retry.await.unwrap();
    assert_eq!((retry.0, &retry.2[..]), (StatusCode::OK, &b"charge 2"[..]));
}

/// `max_hold`: a hung handler's key passes to the next request once the ceiling and a lease
/// are past, and the hung handler's late response gives way to the recorded one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_gives_its_key_up_after_max_hold() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
        .lease(Duration::from_millis(300))
        .max_hold(Duration::from_millis(500));
    let app = Router::new()
        .route(
            "/charge",
            post(move || {
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == 1 {
                        tokio::time::sleep(Duration::from_millis(2000)).await;
                    }
                    format!("charge {n}")
                }
            }),
        )
        .layer(layer);
    let hung = tokio::spawn({
        let app = app.clone();
        async move { call(&app, post_req("/charge", "k", "{}")).await }
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let next = call(&app, post_req("/charge", "k", "{}")).await;
    assert_eq!((next.0, &next.2[..]), (StatusCode::OK, &b"charge 2"[..]));
    let hung = hung.await.unwrap();
    assert_eq!((hung.0, &hung.2[..]), (StatusCode::OK, &b"charge 2"[..]));
}
