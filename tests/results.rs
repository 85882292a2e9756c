//! Invariant I2: every `Ok` for a key carries the same value. A result whose JSON record would
//! decode to something else is refused to the first caller instead of recorded.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use idem::{Call, ClaimOutcome, ClaimRequest, Error, Idempotency, MemoryStore, OnInProgress};

fn runtime() -> Idempotency {
    Idempotency::new(MemoryStore::new())
}

async fn nothing_recorded(idem: &Idempotency, namespace: &str, key: &str) -> bool {
    let key = idem.store_key(namespace, key).unwrap();
    let request = ClaimRequest::new(&key, idem::AttemptId::random(), b"", idem::MIN_LEASE);
    !matches!(
        idem.store().claim(request).await,
        Ok(ClaimOutcome::Completed { .. })
    )
}

fn assert_not_recordable<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(err @ Error::NotRecorded { .. }) => {
            assert!(err.body_may_have_run());
            let text = format!("{err} / {}", std::error::Error::source(&err).unwrap());
            assert!(text.contains("cannot be recorded"), "{text}");
            println!("{text}");
        }
        other => panic!("expected NotRecorded, got {other:?}"),
    }
}

/// Regression: `Ok(f64::NAN)` went to the first caller, and every replay for a day got
/// `Corrupt` (JSON writes NaN as `null`, which is no `f64`).
#[tokio::test]
async fn a_nan_result_is_refused_not_recorded_as_null() {
    let idem = runtime();
    let result = idem
        .run(Call::new("nan", "k"), async { Ok::<f64, Error>(f64::NAN) })
        .await;
    assert_not_recordable(result);
    assert!(nothing_recorded(&idem, "nan", "k").await);
    let infinite = idem
        .run(Call::new("nan", "inf"), async {
            Ok::<f64, Error>(f64::INFINITY)
        })
        .await;
    assert_not_recordable(infinite);
}

/// Regression: `Ok(Some(None))` of an `Option<Option<_>>` was recorded as `null` and replayed
/// as `Ok(None)`.
#[tokio::test]
async fn a_result_that_replays_as_another_value_is_refused() {
    let idem = runtime();
    let result = idem
        .run(Call::new("nested", "some-none"), async {
            Ok::<Option<Option<u32>>, Error>(Some(None))
        })
        .await;
    assert_not_recordable(result);
    assert!(nothing_recorded(&idem, "nested", "some-none").await);
    // The values JSON keeps apart are recorded and replayed as they were.
    for (key, value) in [("none", None), ("some-some", Some(Some(3)))] {
        for _ in 0..2 {
            let replayed = idem
                .run(
                    Call::new("nested", key).on_in_progress(OnInProgress::Reject),
                    async { Ok::<Option<Option<u32>>, Error>(value) },
                )
                .await
                .unwrap();
            assert_eq!(replayed, value);
        }
    }
}

/// Floats are recorded exactly: a replay is the same `f64`, bit for bit.
#[tokio::test]
async fn floats_replay_bit_for_bit() {
    let idem = runtime();
    let values = [0.1 + 0.2, 1e-310, f64::MAX, -0.0, 5e-324, 123456.789e-7];
    for (i, value) in values.into_iter().enumerate() {
        let key = i.to_string();
        let first = idem
            .run(Call::new("float", &key), async { Ok::<f64, Error>(value) })
            .await
            .unwrap();
        let replay = idem
            .run(Call::new("float", &key), async {
                Ok::<f64, Error>(f64::NAN) // not run: the record is replayed
            })
            .await
            .unwrap();
        assert_eq!(first.to_bits(), value.to_bits());
        assert_eq!(replay.to_bits(), value.to_bits(), "{value:e}");
    }
    tokio::time::sleep(Duration::ZERO).await;
}
