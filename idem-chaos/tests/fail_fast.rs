//! With the default `RedisStore::connect`, a caller gets the store's verdict within about a
//! second when Redis is down or silent (it took 19-28s with redis-rs's defaults), and the body
//! does not run.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use idem_chaos::{FaultProxy, ProxyFaults};
use idem_core::{Call, Error, Idempotency};
use idem_redis::RedisStore;
use idem_test_servers::RedisServer;

/// One call, its error, and how long the caller waited for it.
async fn failing_call(idem: &Idempotency, runs: &AtomicU32, key: &str) -> (Error, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        idem.run(Call::new("fail-fast", key), async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(1)
        }),
    )
    .await
    .expect("the call must end");
    (result.unwrap_err(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_calls_within_about_a_second() {
    let mut server = RedisServer::start();
    let idem = Idempotency::new(RedisStore::connect(&server.url()).await.unwrap());
    let runs = AtomicU32::new(0);
    idem.run(Call::new("fail-fast", "before"), async {
        Ok::<_, Error>(0)
    })
    .await
    .unwrap();
    server.kill();
    for round in 0..3 {
        let (err, waited) = failing_call(&idem, &runs, &format!("stopped-{round}")).await;
        println!("stopped server, call {round}: {waited:?}: {err}");
        assert!(matches!(err, Error::Store { .. }), "{err}");
        assert!(waited < Duration::from_millis(2000), "{waited:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_calls_within_about_a_second() {
    let server = RedisServer::start();
    let upstream: SocketAddr = server.url().trim_start_matches("redis://").parse().unwrap();
    let proxy = FaultProxy::start(upstream, 3).await.unwrap();
    let idem = Idempotency::new(RedisStore::connect(&proxy.url()).await.unwrap());
    let runs = AtomicU32::new(0);
    idem.run(Call::new("fail-fast", "before"), async {
        Ok::<_, Error>(0)
    })
    .await
    .unwrap();
    proxy.set(ProxyFaults {
        black_hole: true,
        ..ProxyFaults::default()
    });
    for round in 0..3 {
        let (err, waited) = failing_call(&idem, &runs, &format!("silent-{round}")).await;
        println!("silent server, call {round}: {waited:?}: {err}");
        assert!(err.is_indeterminate(), "{err}");
        assert!(waited < Duration::from_millis(2000), "{waited:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
