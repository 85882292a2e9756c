//! The HTTP layer's crash proof, short form: 300 keys, each sent 3 times at once over real HTTP
//! to a server behind `IdempotencyLayer::in_transaction`, SIGKILLed every 1-2s for 15s while
//! PostgreSQL restarts twice (`-m immediate`); then every key until a 2xx. Exactly one charge
//! row per key, and every 2xx of a key names that row.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::path::Path;
use std::time::Duration;

use idem_chaos::http_crash::{self, HttpCrashSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kills_and_database_crashes_every_key_is_charged_once() {
    let server = Path::new(env!("CARGO_BIN_EXE_idem-chaos-http"));
    let report = http_crash::run(server, &HttpCrashSpec::new(300, Duration::from_secs(15)))
        .await
        .unwrap();
    println!("{report:#?}");
    assert!(report.kills >= 7, "{report:?}");
    assert_eq!(report.restarts, 2, "{report:?}");
    assert!(
        report.no_answer > 0,
        "the kills cut requests off: {report:?}"
    );
    assert!(report.exactly_once(), "{report:#?}");
}

/// The same workload with the layer over the same store in autocommit, the charge committed on
/// its own before its record: nothing is lost, and what kills between the two cost is counted
/// (the other row of the table in docs/guarantees.md), not hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_autocommit_kills_between_charge_and_record_are_counted() {
    let server = Path::new(env!("CARGO_BIN_EXE_idem-chaos-http"));
    let spec = HttpCrashSpec {
        in_transaction: false,
        ..HttpCrashSpec::new(300, Duration::from_secs(15))
    };
    let report = http_crash::run(server, &spec).await.unwrap();
    println!("{report:#?}");
    assert!(report.kills >= 7, "{report:?}");
    assert_eq!(report.missing_keys, 0, "{report:#?}");
    assert_eq!(
        report.rows,
        report.keys + report.duplicate_rows,
        "{report:#?}"
    );
}
