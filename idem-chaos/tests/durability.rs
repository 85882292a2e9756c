//! What survives a Redis restart or failover: the records are idem's memory of what already
//! happened, so what Redis loses, a redelivery runs again. Inside the boundary (appendfsync
//! always; `WAIT` on failover) nothing runs twice; outside it the duplicates are measured and
//! asserted to be exactly what the docs say.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use idem_chaos::servers::RedisServer;
use idem_chaos::{workload, FaultProxy, History, ProxyFaults, Report, Spec};
use idem_core::Idempotency;
use idem_redis::redis::aio::ConnectionManagerConfig;
use idem_redis::RedisStore;

fn spec(prefix: &str) -> Spec {
    Spec {
        key_prefix: prefix.to_owned(),
        ..Spec::small(20, 2, 7)
    }
}

async fn runtime(url: &str) -> Idempotency {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1);
    Idempotency::new(RedisStore::connect_with_config(url, config).await.unwrap())
}

/// Delivers every key of `spec` once more through `idem` (up to `spec.attempts` tries each),
/// into `history`, and reports.
async fn redeliver(idem: &Idempotency, spec: &Spec, history: &std::sync::Arc<History>) -> Report {
    let keys: Vec<String> = (0..spec.keys)
        .map(|i| format!("{}-k{i}", spec.key_prefix))
        .collect();
    for key in &keys {
        for _ in 0..spec.attempts {
            if history.call(idem, key, spec.lease, Duration::ZERO).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    history.report(&keys)
}

async fn restart_scenario(args: &[&str], prefix: &str) -> Report {
    let mut server = RedisServer::start_with(args);
    let idem = runtime(&server.url()).await;
    let spec = spec(prefix);
    let (before, history) = workload::run(&idem, &spec, || {}).await;
    assert!(before.holds(), "{before:#?}");
    server.restart(); // SIGKILL, then start again on the same directory
    let idem = runtime(&server.url()).await;
    redeliver(
        &idem,
        &Spec {
            attempts: 20,
            ..spec
        },
        &history,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_crash_with_appendfsync_always() {
    let report = restart_scenario(
        &[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ],
        "aof",
    )
    .await;
    println!("restart, appendfsync always: {report:?}");
    assert!(report.holds(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_without_persistence_forgets_every_record() {
    let report = restart_scenario(&["--save", "", "--appendonly", "no"], "volatile").await;
    println!("restart, no persistence: {report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(
        report.duplicates, report.keys,
        "outside the boundary: every key ran again after the restart, as documented"
    );
}

/// A primary and a replica that replicates through the fault proxy; the proxy then black-holes
/// the replication stream (replication lag), the primary dies, and the replica is promoted.
async fn failover_scenario(replica_acks: bool, prefix: &str) -> (Report, Report) {
    let primary = RedisServer::start_with(&["--save", "", "--repl-diskless-sync-delay", "0"]);
    let upstream = format!("127.0.0.1:{}", primary.port).parse().unwrap();
    let link = FaultProxy::start(upstream, 0).await.unwrap();
    let link_port = link.url().rsplit(':').next().unwrap().to_owned();
    let replica = RedisServer::start_with(&["--save", "", "--replicaof", "127.0.0.1", &link_port]);
    while !primary
        .cli(&["info", "replication"])
        .contains("state=online")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    link.set(ProxyFaults {
        black_hole: true,
        ..ProxyFaults::default()
    });
    let idem = if replica_acks {
        let store = RedisStore::connect(&primary.url())
            .await
            .unwrap()
            .with_replica_acks(1, Duration::from_millis(200));
        Idempotency::new(store).with_store_attempts(1)
    } else {
        runtime(&primary.url()).await
    };
    let spec = Spec {
        attempts: 1,
        ..spec(prefix)
    };
    let history = std::sync::Arc::new(History::default());
    let before = redeliver(&idem, &spec, &history).await;
    drop(primary); // the primary dies
    drop(link); // with the replication stream it never forwarded
    replica.cli(&["replicaof", "no", "one"]);
    let promoted = runtime(&replica.url()).await;
    let after = redeliver(
        &promoted,
        &Spec {
            attempts: 20,
            ..spec
        },
        &history,
    )
    .await;
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_without_wait_loses_unreplicated_records() {
    let (before, after) = failover_scenario(false, "no-wait").await;
    println!("failover without WAIT: before {before:?}; after {after:?}");
    assert_eq!(
        before.executions, before.keys,
        "every key ran on the primary"
    );
    assert_eq!(
        after.duplicates, after.keys,
        "outside the boundary: the promoted replica never saw the records, every key ran again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_wait_runs_nothing_twice() {
    let (before, after) = failover_scenario(true, "wait").await;
    println!("failover with WAIT: before {before:?}; after {after:?}");
    assert_eq!(
        before.executions, 0,
        "no body ran on an unreplicated claim (fails closed)"
    );
    assert!(before.indeterminate > 0);
    assert!(after.holds(), "{after:#?}");
}
