//! The `metrics` feature: calls counted by namespace and outcome, their durations, the calls
//! running, and store retries, on whatever recorder the service installs (here metrics-util's
//! debugging recorder); the key is never a label.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::time::Duration;

use idem_core::{Call, Error, Idempotency, MemoryStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

#[test]
fn calls_are_counted_by_namespace_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let idem = Idempotency::new(MemoryStore::new());
            for _ in 0..3 {
                idem.run(Call::new("metered", "customer-42"), async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, Error>(1)
                })
                .await
                .unwrap();
            }
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str, outcome: Option<&str>| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let key_labels: Vec<_> = key.key().labels().collect();
                key.kind() == kind
                    && key.key().name() == name
                    && key_labels
                        .iter()
                        .any(|l| l.key() == "idem.namespace" && l.value() == "metered")
                    && outcome.is_none_or(|outcome| {
                        key_labels
                            .iter()
                            .any(|l| l.key() == "idem.outcome" && l.value() == outcome)
                    })
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("no {name} {outcome:?} in {snapshot:?}"))
    };
    assert!(matches!(
        find(MetricKind::Counter, "idem.calls", Some("executed")),
        DebugValue::Counter(1)
    ));
    assert!(matches!(
        find(MetricKind::Counter, "idem.calls", Some("replayed")),
        DebugValue::Counter(2)
    ));
    match find(
        MetricKind::Histogram,
        "idem.call.duration",
        Some("executed"),
    ) {
        DebugValue::Histogram(seconds) => {
            assert_eq!(seconds.len(), 1);
            assert!(seconds[0].into_inner() >= 0.005, "{seconds:?}");
        }
        other => panic!("a histogram, got {other:?}"),
    }
    match find(MetricKind::Gauge, "idem.calls.running", None) {
        DebugValue::Gauge(running) => assert_eq!(running.into_inner(), 0.0),
        other => panic!("a gauge, got {other:?}"),
    }
    let everything = format!("{snapshot:?}");
    assert!(!everything.contains("customer-42"), "{everything}");
}
