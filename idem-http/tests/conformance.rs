//! The draft's requirements and the layer's promises, end to end: an axum app on a loopback port,
//! a hyper client, counted handler executions; each check on the memory store and on Redis.
//! `docs/http.md` maps each requirement to its check here.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use idem_core::{Disposition, Idempotency, MemoryStore};
use idem_http::IdempotencyLayer;
use support::{Running, PAYMENT_TIME};

const ORDER: &str = r#"{"amount_cents": 1250, "currency": "EUR"}"#;

/// A key no other check (or earlier run on a shared server) uses.
fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{nanos}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// The runtime under test, and whether the layer runs each request in a PostgreSQL transaction.
#[derive(Clone)]
struct Setup {
    idem: Idempotency,
    transactional: bool,
}

impl Setup {
    fn plain(idem: Idempotency) -> Self {
        Self {
            idem,
            transactional: false,
        }
    }

    fn layer(&self) -> IdempotencyLayer {
        let layer = IdempotencyLayer::new(self.idem.clone());
        if self.transactional {
            layer.in_transaction::<idem_postgres::PostgresStore>()
        } else {
            layer
        }
    }
}

async fn start(setup: &Setup, configure: fn(IdempotencyLayer) -> IdempotencyLayer) -> Running {
    Running::start(configure(setup.layer())).await
}

fn defaults(layer: IdempotencyLayer) -> IdempotencyLayer {
    layer
}

/// Same key twice: one execution; the second answer is the first, marked as a replay, with its
/// status and `Location` but without `Set-Cookie` or the request id.
async fn same_key_twice_runs_once_and_replays(idem: Setup) {
    let app = start(&idem, defaults).await;
    let key = unique("twice");
    let first = app.post("/payments", &key, ORDER).send().await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(!first.replayed());
    assert_eq!(first.header("set-cookie"), Some("session=s1"));
    assert_eq!(first.headers.get_all("link").iter().count(), 2);
    let second = app.post("/payments", &key, ORDER).send().await;
    assert_eq!(app.counters.started(), 1);
    assert_eq!(second.status, 201);
    assert!(second.replayed(), "{second:?}");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("location"), Some("/payments/pay_1"));
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(second.header("set-cookie"), None);
    assert_eq!(second.header("x-request-id"), None);
    let links: Vec<_> = second.headers.get_all("link").iter().collect();
    assert_eq!(
        links,
        [
            "</payments>; rel=\"collection\"",
            "</receipts>; rel=\"receipts\""
        ],
        "repeated headers replay apart, in order"
    );
}

/// The sf-string form and the bare form are the same key.
async fn quoted_and_bare_keys_are_the_same_key(idem: Setup) {
    let app = start(&idem, defaults).await;
    let key = unique("quoted");
    let first = app
        .post("/payments", &format!("\"{key}\""), ORDER)
        .send()
        .await;
    let second = app.post("/payments", &key, ORDER).send().await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (201, 201));
    assert!(second.replayed());
    assert_eq!(app.counters.started(), 1);
}

/// Bad keys are 400 problems and never reach the handler.
async fn bad_keys_are_400_and_never_run(idem: Setup) {
    let app = start(&idem, defaults).await;
    let too_long = "k".repeat(256);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("key-missing", vec![]),
        ("key-malformed", vec![b"".to_vec()]),
        ("key-malformed", vec![b"\"\"".to_vec()]),
        ("key-malformed", vec![b"\"unterminated".to_vec()]),
        ("key-malformed", vec![b"\"a\";p=1".to_vec()]),
        ("key-malformed", vec![b"two words".to_vec()]),
        ("key-malformed", vec![too_long.into_bytes()]),
        ("key-malformed", vec!["cl\u{e9}".as_bytes().to_vec()]),
        ("key-malformed", vec![b"caf\xe9".to_vec()]),
        ("key-repeated", vec![b"a".to_vec(), b"b".to_vec()]),
        ("key-repeated", vec![b"a".to_vec(), b"a".to_vec()]),
        ("key-repeated", vec![b"a,b".to_vec()]),
    ];
    for (code, keys) in cases {
        let mut request = app.request("POST", "/payments").json(ORDER);
        for key in &keys {
            request = request.header("idempotency-key", key);
        }
        let answer = request.send().await;
        assert_eq!(answer.status, 400, "{keys:?}: {answer:?}");
        assert_eq!(answer.problem(), code, "{keys:?}");
    }
    assert!(app
        .request("POST", "/payments")
        .key(&"k".repeat(255))
        .json(ORDER)
        .send()
        .await
        .status
        .is_success());
    assert_eq!(app.counters.started(), 1, "only the 255-character key ran");
}

/// With keys optional, a request without one passes through untouched (and runs every time);
/// methods the layer does not cover pass through even with a key.
async fn optional_keys_and_other_methods_pass_through(idem: Setup) {
    let app = start(&idem, IdempotencyLayer::key_optional).await;
    for _ in 0..2 {
        let answer = app.request("POST", "/payments").json(ORDER).send().await;
        assert_eq!(answer.status, 201);
        assert!(!answer.replayed());
    }
    assert_eq!(app.counters.started(), 2);
    let key = unique("put");
    for _ in 0..2 {
        let answer = app
            .request("PUT", "/payments")
            .key(&key)
            .json(ORDER)
            .send()
            .await;
        assert_eq!(answer.status, 201);
        assert!(!answer.replayed());
    }
    assert_eq!(app.counters.started(), 4, "PUT is not covered by default");
    let patched = app
        .request("PATCH", "/payments")
        .key(&key)
        .json(ORDER)
        .send()
        .await;
    let again = app
        .request("PATCH", "/payments")
        .key(&key)
        .json(ORDER)
        .send()
        .await;
    assert!(
        !patched.replayed() && again.replayed(),
        "PATCH is covered by default"
    );
}

/// The same key with another body is 422; key order and whitespace in JSON do not count; other
/// bodies count by their bytes (invalid JSON included, without panicking).
async fn another_payload_is_422_canonical_json_is_not(idem: Setup) {
    let app = start(&idem, defaults).await;
    let key = unique("fingerprint");
    assert_eq!(app.post("/payments", &key, ORDER).send().await.status, 201);
    let reordered = app
        .post(
            "/payments",
            &key,
            r#"{ "currency": "EUR",  "amount_cents": 1250 }"#,
        )
        .send()
        .await;
    assert!(reordered.replayed(), "{reordered:?}");
    let other = app
        .post(
            "/payments",
            &key,
            r#"{"amount_cents": 9999, "currency": "EUR"}"#,
        )
        .send()
        .await;
    assert_eq!(other.status, 422);
    assert_eq!(other.problem(), "key-reused");
    let query = app
        .request("POST", "/payments?express=1")
        .key(&key)
        .json(ORDER)
        .send()
        .await;
    assert_eq!(query.status, 422, "the query is part of the request");
    assert_eq!(app.counters.started(), 1);

    let invalid = unique("invalid-json");
    let broken = r#"{"amount_cents": 12"#;
    assert_eq!(
        app.post("/payments", &invalid, broken).send().await.status,
        201
    );
    assert!(app
        .post("/payments", &invalid, broken)
        .send()
        .await
        .replayed());
    let different = app
        .post("/payments", &invalid, r#"{"amount_cents": 13"#)
        .send()
        .await;
    assert_eq!(different.status, 422);
    assert_eq!(app.counters.started(), 2);
    // A body that repeats a member name is not the body with its last value (issue 20).
    let repeated = unique("repeated");
    let plain = app
        .post("/payments", &repeated, r#"{"to":"bob"}"#)
        .send()
        .await;
    assert_eq!(plain.status, 201);
    let twice = app
        .post("/payments", &repeated, r#"{"to":"alice","to":"bob"}"#)
        .send()
        .await;
    assert_eq!(twice.status, 422, "{twice:?}");
    assert_eq!(app.counters.started(), 3);
}

/// Keys are scoped by method, path and principal: the same key elsewhere is another request.
async fn keys_are_scoped_by_principal_method_and_route(idem: Setup) {
    fn by_user(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.scope(|request| {
            let user = request.headers.get("x-user")?;
            Some(user.to_str().ok()?.to_owned())
        })
    }
    let app = start(&idem, by_user).await;
    let key = unique("scoped");
    let alice = app
        .post("/payments", &key, ORDER)
        .header("x-user", "alice")
        .send()
        .await;
    let bob = app
        .post("/payments", &key, ORDER)
        .header("x-user", "bob")
        .send()
        .await;
    assert!(!alice.replayed() && !bob.replayed());
    assert_ne!(alice.body, bob.body);
    let alice_again = app
        .post("/payments", &key, ORDER)
        .header("x-user", "alice")
        .send()
        .await;
    assert_eq!(alice_again.body, alice.body);
    assert!(alice_again.replayed());
    let refund = app
        .post("/refunds", &key, ORDER)
        .header("x-user", "alice")
        .send()
        .await;
    assert!(!refund.replayed(), "another route is another request");
    assert_eq!(app.counters.started(), 3);
}

/// N clients, one key: one execution; the others get 409 with `Retry-After`, or the replay.
async fn concurrent_duplicates_get_409_and_one_executes(idem: Setup) {
    let app = std::sync::Arc::new(start(&idem, defaults).await);
    let key = unique("concurrent");
    let answers = futures_util::future::join_all((0..16).map(|_| {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move { app.post("/payments", &key, ORDER).send().await })
    }))
    .await;
    let (mut created, mut conflicts) = (0, 0);
    for answer in answers {
        let answer = answer.expect("client task");
        match answer.status.as_u16() {
            201 => created += 1,
            409 => {
                assert_eq!(answer.problem(), "in-flight");
                let retry_after: u64 = answer
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!(app.counters.started(), 1);
    assert!(
        created >= 1 && conflicts >= 1 && created + conflicts == 16,
        "{created} created, {conflicts} conflicts"
    );
}

/// With `wait_for_first`, concurrent duplicates wait and all get the first response.
async fn waiting_duplicates_all_get_the_first_response(idem: Setup) {
    fn wait(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.wait_for_first(Duration::from_secs(5))
    }
    let app = std::sync::Arc::new(start(&idem, wait).await);
    let key = unique("wait");
    let answers = futures_util::future::join_all((0..16).map(|_| {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move { app.post("/payments", &key, ORDER).send().await })
    }))
    .await;
    let answers: Vec<_> = answers
        .into_iter()
        .map(|a| a.expect("client task"))
        .collect();
    assert_eq!(app.counters.started(), 1);
    assert!(
        answers
            .iter()
            .all(|a| a.status == 201 && a.body == answers[0].body),
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| !a.replayed()).count(), 1);
}

/// A 5xx releases the key: the retry runs the handler again, and its 201 is then replayed.
async fn a_500_is_released_and_the_retry_runs(idem: Setup) {
    let app = start(&idem, defaults).await;
    let key = unique("flaky");
    let failed = app.post("/flaky", &key, ORDER).send().await;
    assert_eq!(failed.status, 500);
    assert!(!failed.replayed());
    let retried = app.post("/flaky", &key, ORDER).send().await;
    assert_eq!(retried.status, 201);
    assert!(!retried.replayed());
    let replayed = app.post("/flaky", &key, ORDER).send().await;
    assert!(replayed.replayed());
    assert_eq!(replayed.body, retried.body);
    assert_eq!(app.counters.started(), 2);
}

/// A deterministic 4xx is the request's result: recorded and replayed.
async fn a_deterministic_400_is_recorded(idem: Setup) {
    let app = start(&idem, defaults).await;
    let key = unique("refuse");
    let first = app.post("/refuse", &key, ORDER).send().await;
    let second = app.post("/refuse", &key, ORDER).send().await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (400, 400));
    assert!(second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!(app.counters.started(), 1);
}

/// A panicking handler: the client gets a 500 problem, the outcome is unknown so the key stays
/// claimed (409) until its lease lapses; then the retry runs the handler again.
async fn a_panic_is_500_and_the_key_waits_out_its_lease(idem: Setup) {
    fn short_lease(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.lease(Duration::from_secs(1))
    }
    let app = start(&idem, short_lease).await;
    let key = unique("panic");
    let panicked = app.post("/panics", &key, ORDER).send().await;
    assert_eq!(panicked.status, 500);
    assert_eq!(panicked.problem(), "handler-panicked");
    let held = app.post("/panics", &key, ORDER).send().await;
    assert_eq!(held.status, 409, "{held:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let retried = app.post("/panics", &key, ORDER).send().await;
    assert_eq!(retried.status, 201, "{retried:?}");
    assert_eq!(app.counters.started(), 2);
}

/// A client that disconnects mid-handler does not cancel it: the handler finishes and records,
/// and the client's retry gets the replay.
async fn a_disconnected_client_still_gets_its_result_on_retry(idem: Setup) {
    use tokio::io::AsyncWriteExt;
    let app = start(&idem, defaults).await;
    let key = unique("disconnect");
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /payments HTTP/1.1\r\nhost: x\r\nidempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ORDER}",
        ORDER.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(PAYMENT_TIME / 3).await;
    assert_eq!(app.counters.started(), 1, "the handler started");
    drop(stream);
    tokio::time::sleep(PAYMENT_TIME).await;
    assert_eq!(
        app.counters.finished(),
        1,
        "the handler finished after the client left"
    );
    let retry = app.post("/payments", &key, ORDER).send().await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(app.counters.started(), 1);
}

/// Request bodies over the limit are 413, by `Content-Length` or by what arrives; the handler
/// never runs without idempotency.
async fn oversized_requests_are_413(idem: Setup) {
    fn small(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.max_request_body(64)
    }
    let app = start(&idem, small).await;
    let big = Bytes::from(vec![b'x'; 65]);
    let with_length = app
        .request("POST", "/payments")
        .key(&unique("big"))
        .body(big.clone())
        .send()
        .await;
    assert_eq!(with_length.status, 413);
    assert_eq!(with_length.problem(), "body-too-large");
    let chunked = app
        .request("POST", "/payments")
        .key(&unique("big-chunked"))
        .chunked(vec![big.slice(..40), big.slice(40..)])
        .send()
        .await;
    assert_eq!(chunked.status, 413, "{chunked:?}");
    let fits = app
        .request("POST", "/payments")
        .key(&unique("fits"))
        .chunked(vec![big.slice(..30), big.slice(30..64)])
        .send()
        .await;
    assert_eq!(fits.status, 201);
    assert_eq!(app.counters.started(), 1);
}

/// A response that cannot be recorded (an event stream, a body over the limit) reaches the
/// client whole; by default the key then stays claimed as an unknown outcome, or with
/// `on_unrecordable(Release)` a retry runs again.
async fn unrecordable_responses_pass_and_are_not_replayed(idem: Setup) {
    fn small(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.max_response_body(64)
    }
    let app = start(&idem, small).await;
    let key = unique("large");
    let large = app.post("/large", &key, ORDER).send().await;
    assert_eq!((large.status.as_u16(), large.body.len()), (200, 100));
    let held = app.post("/large", &key, ORDER).send().await;
    assert_eq!(held.status, 409, "unknown outcome: the key stays claimed");
    let key = unique("events");
    let events = app.post("/events", &key, ORDER).send().await;
    assert_eq!(events.text(), "data: execution 2\n\n");
    assert_eq!(app.post("/events", &key, ORDER).send().await.status, 409);

    fn release(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.on_unrecordable(Disposition::Release)
    }
    let app = start(&idem, release).await;
    let key = unique("events-released");
    let first = app.post("/events", &key, ORDER).send().await;
    let second = app.post("/events", &key, ORDER).send().await;
    assert_eq!(
        (first.text().as_str(), second.text().as_str()),
        ("data: execution 1\n\n", "data: execution 2\n\n")
    );
    assert!(!second.replayed());
}

/// With a cap on requests in flight, one more gets 503 `over-capacity` with `Retry-After`.
async fn over_capacity_is_503(idem: Setup) {
    fn one(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.max_in_flight(1)
    }
    let app = std::sync::Arc::new(start(&idem, one).await);
    let slow = {
        let app = app.clone();
        tokio::spawn(async move { app.post("/payments", &unique("slow"), ORDER).send().await })
    };
    tokio::time::sleep(PAYMENT_TIME / 3).await;
    let refused = app.post("/payments", &unique("other"), ORDER).send().await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.problem(), "over-capacity");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(
        app.post("/payments", &unique("after"), ORDER)
            .send()
            .await
            .status,
        201
    );
    assert_eq!(app.counters.started(), 2);
}

/// Shutdown waits for the handlers in flight to finish and record, and refuses new keys.
async fn shutdown_lets_handlers_finish_and_record(idem: Setup) {
    let layer = idem.layer();
    let app = std::sync::Arc::new(Running::start(layer.clone()).await);
    let key = unique("shutdown");
    let first = {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move { app.post("/payments", &key, ORDER).send().await })
    };
    tokio::time::sleep(PAYMENT_TIME / 3).await;
    assert_eq!(layer.in_flight(), 1);
    layer.shutdown().await;
    assert_eq!(
        app.counters.finished(),
        1,
        "shutdown returned before the handler finished"
    );
    let refused = app.post("/payments", &unique("late"), ORDER).send().await;
    assert_eq!(refused.problem(), "shutting-down");
    assert_eq!(first.await.unwrap().status, 201);
    // The record was written: a new instance on the same store replays it.
    let next = Running::start(idem.layer()).await;
    assert!(next.post("/payments", &key, ORDER).send().await.replayed());
}

/// Problems use the configured `type` base.
async fn problem_types_use_the_configured_base(idem: Setup) {
    fn based(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.problem_base("https://api.example.com/problems/")
    }
    let app = start(&idem, based).await;
    let answer = app.request("POST", "/payments").json(ORDER).send().await;
    let problem: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        problem["type"],
        "https://api.example.com/problems/key-missing"
    );
}

macro_rules! conformance {
    ($fixture:path; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (idem, _server) = $fixture().await;
                super::$check(idem).await;
            }
        )*
    };
}

macro_rules! every_check {
    ($fixture:path) => {
        conformance!($fixture;
            same_key_twice_runs_once_and_replays,
            quoted_and_bare_keys_are_the_same_key,
            bad_keys_are_400_and_never_run,
            optional_keys_and_other_methods_pass_through,
            another_payload_is_422_canonical_json_is_not,
            keys_are_scoped_by_principal_method_and_route,
            concurrent_duplicates_get_409_and_one_executes,
            waiting_duplicates_all_get_the_first_response,
            a_500_is_released_and_the_retry_runs,
            a_deterministic_400_is_recorded,
            a_panic_is_500_and_the_key_waits_out_its_lease,
            a_disconnected_client_still_gets_its_result_on_retry,
            oversized_requests_are_413,
            unrecordable_responses_pass_and_are_not_replayed,
            over_capacity_is_503,
            shutdown_lets_handlers_finish_and_record,
            problem_types_use_the_configured_base,
        );
    };
}

mod memory {
    async fn fixture() -> (super::Setup, ()) {
        let idem = idem_core::Idempotency::new(idem_core::MemoryStore::new());
        (super::Setup::plain(idem), ())
    }
    every_check!(fixture);
}

mod redis {
    async fn fixture() -> (super::Setup, Option<idem_test_servers::RedisServer>) {
        let (url, server) = idem_test_servers::any_server();
        let store = idem_redis::RedisStore::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
        let prefix = format!("{}:", super::unique("http"));
        let idem = idem_core::Idempotency::new(store).with_key_prefix(prefix);
        (super::Setup::plain(idem), server)
    }
    every_check!(fixture);
}

/// Every check but the one on unrecordable responses (which transactional mode refuses to
/// send: `tests/transactional.rs`), with each request in a transaction of a private PostgreSQL.
mod postgres_transactional {
    async fn fixture() -> (super::Setup, Option<idem_test_servers::PostgresServer>) {
        let (url, server) = idem_test_servers::any_database();
        let store = idem_postgres::PostgresStore::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
        store.migrate().await.unwrap();
        let prefix = format!("{}:", super::unique("http"));
        let idem = idem_core::Idempotency::new(store).with_key_prefix(prefix);
        let setup = super::Setup {
            idem,
            transactional: true,
        };
        (setup, server)
    }
    conformance!(fixture;
        same_key_twice_runs_once_and_replays,
        quoted_and_bare_keys_are_the_same_key,
        bad_keys_are_400_and_never_run,
        optional_keys_and_other_methods_pass_through,
        another_payload_is_422_canonical_json_is_not,
        keys_are_scoped_by_principal_method_and_route,
        concurrent_duplicates_get_409_and_one_executes,
        waiting_duplicates_all_get_the_first_response,
        a_500_is_released_and_the_retry_runs,
        a_deterministic_400_is_recorded,
        a_panic_is_500_and_the_key_waits_out_its_lease,
        a_disconnected_client_still_gets_its_result_on_retry,
        oversized_requests_are_413,
        over_capacity_is_503,
        shutdown_lets_handlers_finish_and_record,
        problem_types_use_the_configured_base,
    );
}

/// A panicking handler under `UnknownHold::UntilResolved`: past its lease the key is still held,
/// and requests get 409 `outcome-unknown` (no `Retry-After`: nothing but an operator frees it)
/// without running the handler; once an operator releases it, the retry runs the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_held_until_resolved_is_409_outcome_unknown() {
    use idem_core::admin::{ActionOutcome, KeyState, ListQuery, Resolution, StoreAdmin};
    fn short_lease(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.lease(Duration::from_millis(500))
    }
    let store = std::sync::Arc::new(MemoryStore::new());
    let idem = Idempotency::from_arc(store.clone())
        .with_unknown_hold(idem_core::UnknownHold::UntilResolved);
    let app = start(&Setup::plain(idem), short_lease).await;
    let key = unique("held");
    let panicked = app.post("/panics", &key, ORDER).send().await;
    assert_eq!(panicked.problem(), "handler-panicked");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let held = app.post("/panics", &key, ORDER).send().await;
    assert_eq!(held.status, 409, "{held:?}");
    assert_eq!(held.problem(), "outcome-unknown");
    assert_eq!(held.header("retry-after"), None);
    assert_eq!(app.counters.started(), 1, "a held key runs no handler");

    let unknown = ListQuery::new().with_state(KeyState::Unknown);
    let page = store.list(&unknown).await.unwrap();
    assert_eq!(page.keys.len(), 1, "{page:?}");
    let summary = &page.keys[0];
    let released = store
        .resolve(&summary.key, summary.fence, Resolution::Release)
        .await
        .unwrap();
    assert_eq!(released, ActionOutcome::Applied);
    let retried = app.post("/panics", &key, ORDER).send().await;
    assert_eq!(retried.status, 201, "{retried:?}");
    assert_eq!(
        app.counters.started(),
        2,
        "released, the retry runs the handler"
    );
}

/// The store is down: 503 `store-unavailable` and the handler does not run; with `fail_open`
/// the handler runs without idempotency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_is_503_or_fails_open() {
    let mut server = idem_test_servers::RedisServer::start();
    let store = idem_redis::RedisStore::connect(&server.url())
        .await
        .unwrap();
    let idem = Setup::plain(Idempotency::new(store).with_store_attempts(1));
    let closed = start(&idem, defaults).await;
    let open = start(&idem, IdempotencyLayer::fail_open).await;
    server.kill();
    let refused = closed
        .post("/payments", &unique("down"), ORDER)
        .send()
        .await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.problem(), "store-unavailable");
    assert_eq!(closed.counters.started(), 0);
    let passed = open
        .post("/payments", &unique("down-open"), ORDER)
        .send()
        .await;
    assert_eq!(passed.status, 201, "{passed:?}");
    assert_eq!(open.counters.started(), 1);
}

/// A record this layer cannot read is a 500 `record-corrupt`, not a miss that runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_record_is_500_not_a_rerun() {
    let idem = Idempotency::new(MemoryStore::new());
    let app = start(&Setup::plain(idem.clone()), defaults).await;
    let key = unique("foreign");
    // The same store key, written by a function that records a number.
    let parts = http::Request::post("/payments")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let store_key = format!("- POST /payments {key}");
    let fingerprint = idem_http::default_fingerprint(
        &{
            let mut parts = parts;
            parts
                .headers
                .insert("content-type", "application/json".parse().unwrap());
            parts
        },
        ORDER.as_bytes(),
    );
    let call = idem_core::Call::new("http", store_key).with_fingerprint(fingerprint);
    idem.run(call, async { Ok::<_, idem_core::Error>(42u32) })
        .await
        .unwrap();
    let answer = app.post("/payments", &key, ORDER).send().await;
    assert_eq!(answer.status, 500, "{answer:?}");
    assert_eq!(answer.problem(), "record-corrupt");
    assert_eq!(app.counters.started(), 0);
}
