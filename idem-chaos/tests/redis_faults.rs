//! The workload against real Redis under faults: through the TCP fault proxy on a standalone
//! server (lost replies, replies slower than the client's timeout, resets with commands in
//! flight, a black hole), and with seeded store faults on a 3-master cluster. Every scenario is
//! inside the documented boundary, so every invariant must hold.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idem_chaos::servers::{RedisCluster, RedisServer};
use idem_chaos::{workload, FaultPlan, FaultProxy, FaultyStore, ProxyFaults, Report, Spec};
use idem_core::Idempotency;
use idem_redis::redis::aio::ConnectionManagerConfig;
use idem_redis::RedisStore;

struct Proxied {
    _server: RedisServer,
    proxy: FaultProxy,
    idem: Idempotency,
}

/// A server, a proxy in front of it, and a runtime whose client times out after 300ms. The
/// runtime tries each store operation once, so that store errors reach the calls (and the
/// oracle) instead of being absorbed by the runtime's own retries.
async fn proxied(seed: u64) -> Proxied {
    let server = RedisServer::start();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream, seed).await.unwrap();
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_number_of_retries(2);
    let store = RedisStore::connect_with_config(&proxy.url(), config)
        .await
        .unwrap();
    Proxied {
        _server: server,
        proxy,
        idem: Idempotency::new(store).with_store_attempts(1),
    }
}

fn check(scenario: &str, report: &Report) {
    println!("{scenario}: {report:?}");
    assert!(report.holds(), "{scenario} broke an invariant: {report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies() {
    let target = proxied(1).await;
    target.proxy.set(ProxyFaults {
        drop_replies: 0.05,
        ..ProxyFaults::default()
    });
    let (report, _) =
        workload::run(&target.idem, &Spec::small(30, 3, 1), || target.proxy.heal()).await;
    check("lost replies", &report);
    assert!(target.proxy.counts().0 > 0, "replies were dropped");
    assert!(
        report.indeterminate > 0,
        "lost replies surface as indeterminate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_slower_than_the_client_timeout() {
    let target = proxied(2).await;
    target.proxy.set(ProxyFaults {
        delay_replies: 0.05,
        delay: Duration::from_millis(500),
        ..ProxyFaults::default()
    });
    let (report, _) =
        workload::run(&target.idem, &Spec::small(30, 3, 2), || target.proxy.heal()).await;
    check("slow replies", &report);
    assert!(target.proxy.counts().1 > 0, "replies were delayed");
    assert!(
        report.indeterminate > 0,
        "timeouts surface as indeterminate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_with_commands_in_flight() {
    let target = Arc::new(proxied(3).await);
    let resetter = {
        let target = target.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                target.proxy.reset_all();
            }
        })
    };
    let (report, _) =
        workload::run(&target.idem, &Spec::small(30, 3, 3), || resetter.abort()).await;
    check("resets", &report);
    assert!(
        report.indeterminate + report.definite > 0,
        "resets caused failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_that_comes_and_goes() {
    let target = Arc::new(proxied(4).await);
    let toggler = {
        let target = target.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(600)).await;
                target.proxy.set(ProxyFaults {
                    black_hole: true,
                    ..ProxyFaults::default()
                });
                tokio::time::sleep(Duration::from_millis(400)).await;
                target.proxy.heal();
            }
        })
    };
    let (report, _) = workload::run(&target.idem, &Spec::small(30, 3, 4), || {
        toggler.abort();
        target.proxy.heal();
    })
    .await;
    check("black hole", &report);
    assert!(
        report.indeterminate > 0,
        "black-holed commands surface as indeterminate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_on_a_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let plan = FaultPlan {
        fail_before: 0.1,
        fail_after: 0.1,
        delay: 0.1,
        max_delay: Duration::from_millis(50),
        include_renew: false,
    };
    let store = Arc::new(FaultyStore::new(
        RedisStore::connect_cluster(&urls).await.unwrap(),
        plan,
        5,
    ));
    let idem = Idempotency::from_arc(store.clone()).with_store_attempts(1);
    let (report, _) = workload::run(&idem, &Spec::small(30, 3, 5), || store.heal()).await;
    check("cluster store faults", &report);
    assert!(report.indeterminate > 0 && report.definite > 0);
}
