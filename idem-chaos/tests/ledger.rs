//! The ledger proof, short form: children SIGKILLed every 150ms and PostgreSQL restarted twice
//! (`-m immediate`) while 300 keys are delivered 3 times each, then once more after healing.
//! With the record in the ledger row's transaction, every key has exactly one row; with the
//! record in Redis after the row committed, the kills cost duplicates, which are measured.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::path::Path;

use idem_chaos::ledger::{self, LedgerSpec, RecordIn};

fn child() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_idem-chaos-ledger"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_transaction_every_key_is_booked_exactly_once() {
    let report = ledger::run(child(), &LedgerSpec::new(300, RecordIn::Transaction))
        .await
        .unwrap();
    println!("transaction: {report:?}");
    assert!(report.kills > 5, "{report:?}");
    assert_eq!(report.restarts, 2, "{report:?}");
    assert!(report.exactly_once(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_record_in_redis_kills_cost_duplicates() {
    let report = ledger::run(child(), &LedgerSpec::new(300, RecordIn::Redis))
        .await
        .unwrap();
    println!("redis record: {report:?}");
    assert!(report.kills > 5, "{report:?}");
    // Nothing is lost; what the kills between the row and its record cost is counted, not
    // hidden (it is the table's other column in docs/guarantees.md).
    assert_eq!(report.missing_keys, 0, "{report:#?}");
    assert_eq!(report.ledger_rows, report.keys + report.duplicate_rows);
}
