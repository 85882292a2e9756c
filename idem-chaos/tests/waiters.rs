//! A waiting duplicate stays within its one-lease limit when the pub/sub connection that wakes
//! it is half-open (traffic silently dropped, as after a NAT or load balancer idle drop): it
//! falls back to reading the key, and gets the first call's result soon after it is recorded.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_chaos::{FaultProxy, ProxyFaults};
use idem_core::{Call, Error, Idempotency};
use idem_redis::redis;
use idem_redis::RedisStore;
use idem_test_servers::RedisServer;

const LEASE: Duration = Duration::from_secs(1);

/// A runtime whose store talks to `server` directly, and subscribes through `proxy`.
async fn runtime(server: &RedisServer, proxy: &FaultProxy) -> Idempotency {
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_pubsub(redis::Client::open(proxy.url()).unwrap());
    Idempotency::new(store).with_lease(LEASE)
}

/// A first call that works for 300ms, and a duplicate arriving 50ms later that waits for it.
/// Returns how long after the first call's result the duplicate got its own.
async fn duplicate_waits(idem: &Idempotency, key: &str) -> Duration {
    let runs = Arc::new(AtomicU32::new(0));
    let call = |runs: Arc<AtomicU32>, idem: Idempotency, key: String| async move {
        idem.run(Call::new("waiters", key), async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await
    };
    let first = tokio::spawn(call(runs.clone(), idem.clone(), key.to_owned()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let duplicate = tokio::spawn(call(runs.clone(), idem.clone(), key.to_owned()));
    let first = first.await.unwrap().unwrap();
    let recorded = Instant::now();
    let duplicate = tokio::time::timeout(Duration::from_secs(10), duplicate)
        .await
        .expect("the duplicate must not wait past its lease")
        .unwrap()
        .unwrap();
    let late = recorded.elapsed();
    assert_eq!((first, duplicate), (1, 1), "one execution, one result");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    late
}

fn address(server: &RedisServer) -> SocketAddr {
    server.url().trim_start_matches("redis://").parse().unwrap()
}

/// Regression: with the subscriber half-open, a waiter was still waiting after 10s with a 1s
/// lease while the first call had returned `Ok` (the subscribe had no timeout, and the connect
/// ran under a lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_subscriber_does_not_hold_a_waiter_past_its_lease() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(address(&server), 1).await.unwrap();
    let idem = runtime(&server, &proxy).await;

    // A healthy subscriber wakes the duplicate at once.
    let late = duplicate_waits(&idem, "healthy").await;
    println!("healthy subscriber: woken {late:?} after the record");
    assert!(late < Duration::from_millis(500), "{late:?}");

    // The subscriber's connection goes silent: a new subscription gets no answer.
    proxy.set(ProxyFaults {
        black_hole: true,
        ..ProxyFaults::default()
    });
    for round in 0..2 {
        let late = duplicate_waits(&idem, &format!("half-open-{round}")).await;
        println!("half-open subscriber, round {round}: {late:?} after the record");
        assert!(late < LEASE, "{late:?}");
    }
}

/// The same when the subscriber's connection cannot even be set up: connecting is bounded, and
/// no lock is held while it is tried, so other waiters are not queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_cannot_connect_does_not_hold_waiters() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(address(&server), 2).await.unwrap();
    proxy.set(ProxyFaults {
        black_hole: true,
        ..ProxyFaults::default()
    });
    let idem = runtime(&server, &proxy).await;
    let waits = (0..3).map(|i| {
        let idem = idem.clone();
        tokio::spawn(async move { duplicate_waits(&idem, &format!("no-subscriber-{i}")).await })
    });
    for wait in waits {
        let late = wait.await.unwrap();
        println!("no subscriber: {late:?} after the record");
        assert!(late < LEASE, "{late:?}");
    }
}

/// Regression (second review): waits shorter than the subscribe timeout never retired a silent
/// subscriber, so with leases under about 750ms every duplicate waited out its whole budget. The
/// subscription's answer is now judged by a task with the library's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_waits_retire_a_silent_subscriber_too() {
    use idem_core::{AttemptId, ClaimOutcome, ClaimRequest, Store};
    let server = RedisServer::start();
    let proxy = FaultProxy::start(address(&server), 4).await.unwrap();
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_pubsub(redis::Client::open(proxy.url()).unwrap());
    let lease = Duration::from_secs(30);
    let request = ClaimRequest::new("released", AttemptId::random(), b"", lease);
    let Ok(ClaimOutcome::Acquired { fence, .. }) = store.claim(request).await else {
        panic!("a fresh key is acquired");
    };
    store.release("released", fence).await.unwrap();
    // A healthy subscriber first.
    let healthy = ClaimRequest::new("held", AttemptId::random(), b"", lease);
    let Ok(ClaimOutcome::Acquired { fence: held, .. }) = store.claim(healthy).await else {
        panic!("a fresh key is acquired");
    };
    store
        .wait("held", held, Duration::from_millis(200))
        .await
        .unwrap();
    proxy.set(ProxyFaults {
        black_hole: true,
        ..ProxyFaults::default()
    });
    let mut took = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        store
            .wait("released", fence, Duration::from_millis(400))
            .await
            .unwrap();
        took.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!("waits of 400ms on a released key, subscriber silent: {took:?}");
    assert!(
        took[3..].iter().all(|t| *t < Duration::from_millis(250)),
        "the silent subscriber was never retired: {took:?}"
    );
}
