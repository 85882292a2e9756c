//! Invariant I2: every `Ok` for a key carries the same value. A result whose JSON record would
//! decode to something else is refused to the first caller instead of recorded.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::time::Duration;

use idem::store::{ClaimOutcome, ClaimRequest};
use idem::{Call, Error, Idempotency, MemoryStore, OnInProgress};

fn runtime() -> Idempotency {
    Idempotency::new(MemoryStore::new())
}

async fn nothing_recorded(idem: &Idempotency, namespace: &str, key: &str) -> bool {
    let key = idem.store_key(namespace, key).unwrap();
    let request = ClaimRequest::new(&key, idem::store::AttemptId::random(), b"", idem::MIN_LEASE);
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

/// Regression (review): a call that found another request's record (`KeyReused`) or an
/// unreadable one (`Corrupt`) was reported as `Served::Replayed`, though nothing was replayed.
#[tokio::test]
async fn a_refused_replay_is_served_as_not_run() {
    let idem = runtime();
    let call = |request: u32| Call::new("refused", "k").fingerprint(&request);
    idem.run(call(1), async { Ok::<u32, Error>(1) })
        .await
        .unwrap();
    let (other, how) = idem::served(idem.run(call(2), async { Ok::<u32, Error>(2) })).await;
    assert!(matches!(other, Err(Error::KeyReused { .. })), "{other:?}");
    assert_eq!(how, Some(idem::Served::NotRun));
    let (wrong_type, how) =
        idem::served(idem.run(call(1), async { Ok::<String, Error>("x".into()) })).await;
    assert!(
        matches!(wrong_type, Err(Error::Corrupt { .. })),
        "{wrong_type:?}"
    );
    assert_eq!(how, Some(idem::Served::NotRun));
    let (same, how) = idem::served(idem.run(call(1), async { Ok::<u32, Error>(9) })).await;
    assert_eq!((same.unwrap(), how), (1, Some(idem::Served::Replayed)));
}

/// A store whose record write finds its key taken by something that is not an idem claim.
struct CorruptOnComplete(MemoryStore);

#[async_trait::async_trait]
impl idem::store::Store for CorruptOnComplete {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        self.0.claim(request).await
    }
    async fn complete(
        &self,
        key: &str,
        _: idem::Fence,
        _: &[u8],
        _: Duration,
    ) -> Result<(), Error> {
        Err(Error::corrupt(
            key,
            "the value at the key is not an idem state",
        ))
    }
    async fn release(&self, key: &str, fence: idem::Fence) -> Result<(), Error> {
        self.0.release(key, fence).await
    }
    async fn renew(&self, key: &str, fence: idem::Fence, lease: Duration) -> Result<(), Error> {
        self.0.renew(key, fence, lease).await
    }
}

/// Regression (review): `NotRecorded` caused by a corrupt key printed, through its cause, that
/// "the body did not run".
#[tokio::test]
async fn not_recorded_over_a_corrupt_key_never_says_the_body_did_not_run() {
    let idem = Idempotency::new(CorruptOnComplete(MemoryStore::new()));
    let err = idem
        .run(Call::new("corrupt", "k"), async { Ok::<u32, Error>(1) })
        .await
        .unwrap_err();
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(next) = cause {
        text = format!("{text}: {next}");
        cause = next.source();
    }
    assert!(matches!(err, Error::NotRecorded { .. }), "{text}");
    assert!(text.contains("not an idem state"), "{text}");
    assert!(!text.contains("did not run"), "{text}");
}
