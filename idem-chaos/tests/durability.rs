//! What survives a Redis restart or failover: the records are idem's memory of what already
//! happened, so what Redis loses, a redelivery runs again. Inside the boundary (appendfsync
//! always; `WAIT` on failover) nothing runs twice; outside it the duplicates are measured and
//! asserted to be exactly what the docs say.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use idem_chaos::scenarios;
use idem_chaos::Spec;

fn spec(prefix: &str) -> Spec {
    Spec {
        key_prefix: prefix.to_owned(),
        ..Spec::small(20, 2, 7)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_crash_with_appendfsync_always() {
    let report = scenarios::restart(&spec("aof"), true).await.unwrap();
    println!("restart, appendfsync always: {report:?}");
    assert!(report.holds(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_without_persistence_forgets_every_record() {
    let report = scenarios::restart(&spec("volatile"), false).await.unwrap();
    println!("restart, no persistence: {report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(
        report.duplicates, report.keys,
        "outside the boundary: every key ran again after the restart, as documented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_without_wait_loses_unreplicated_records() {
    let (before, after) = scenarios::failover(&spec("no-wait"), false).await.unwrap();
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
    let (before, after) = scenarios::failover(&spec("wait"), true).await.unwrap();
    println!("failover with WAIT: before {before:?}; after {after:?}");
    assert_eq!(
        before.executions, 0,
        "no body ran on an unreplicated claim (fails closed)"
    );
    assert!(before.indeterminate > 0);
    assert!(after.holds(), "{after:#?}");
}
