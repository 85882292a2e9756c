//! What becomes of a result ([`Disposition`]), and the error policies of the `run*` and
//! transaction flavours: how each classifies, encodes and decodes errors, so the core is written
//! once.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::encode::encode_exactly;

/// What becomes of a result and its key: recorded, released, or held as an unknown outcome.
///
/// For a body's `Err`, the function given to
/// [`Idempotency::run_with`](crate::Idempotency::run_with) (or the macro's `on_error = ...`)
/// decides it per error. The HTTP layer decides it per response status as well (a `5xx` is
/// released by default), since a response is recorded whether or not it reports an error.
/// (Called `OnError` before 0.1.)
///
/// # Unknown outcomes
///
/// One rule covers every call whose outcome is unknown: a body that panics, a call that is
/// cancelled (its future dropped, a timeout), a process that crashes mid-body, and an `Err` the
/// function classifies as [`OutcomeUnknown`](Disposition::OutcomeUnknown). Nothing is recorded and
/// the claim is **kept** until its lease lapses (renewals stop when the body stops); then the
/// next delivery takes over and runs the body again.
///
/// Why: the effect may have started, and may still be landing (a request to a payment provider
/// that timed out on our side). Releasing at once would let a retry run concurrently with it;
/// recording would replay a success or failure that may be false. Keeping the claim gives the
/// effect one lease to land, and the body that takes over should make the effect idempotent
/// downstream with [`downstream_key`](crate::ClaimContext::downstream_key), which is the same for
/// every attempt of the call, so the downstream system recognises the repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Nothing happened that a retry must not repeat (validation failed, the effect was
    /// refused): the claim is released and the next call runs the body again. The default.
    Release,
    /// The error is the call's result: recorded and replayed to duplicates like an `Ok`
    /// (needs `E: Serialize + DeserializeOwned`, the `record_errors` flavour; elsewhere it is
    /// taken as [`OutcomeUnknown`](Disposition::OutcomeUnknown)).
    Record,
    /// The effect may have started: the outcome is unknown. Nothing is recorded and the claim
    /// is kept until its lease lapses, as after a panic or a crash (see above).
    OutcomeUnknown,
}

/// How a body's `Err` is treated: the policy of one `run` flavour, so the core is written once.
pub(crate) trait ErrorPolicy<E> {
    /// What this error means.
    fn classify(&self, err: &E) -> Disposition;
    /// The error's JSON for a record; `None` when errors of this type cannot be recorded.
    fn encode(&self, err: &E) -> Option<Result<Vec<u8>, serde_json::Error>>;
    /// A recorded error back; `None` when errors of this type are not recorded.
    fn decode(&self, json: &[u8]) -> Option<Result<E, serde_json::Error>>;
}

/// Errors that cannot be recorded, classified by `F` (`Record` is kept as `OutcomeUnknown`).
pub(crate) struct UnrecordedErrors<F>(pub(crate) F);

impl<E, F: Fn(&E) -> Disposition> ErrorPolicy<E> for UnrecordedErrors<F> {
    fn classify(&self, err: &E) -> Disposition {
        match (self.0)(err) {
            // The safe side of what was asked: nothing is replayed, nothing re-runs at once.
            Disposition::Record => Disposition::OutcomeUnknown,
            other => other,
        }
    }
    fn encode(&self, _: &E) -> Option<Result<Vec<u8>, serde_json::Error>> {
        None
    }
    fn decode(&self, _: &[u8]) -> Option<Result<E, serde_json::Error>> {
        None
    }
}

/// The policy of `run`: every error releases the key. A function, not a closure, so that it is
/// the same type for every body.
pub(crate) fn release<E>(_: &E) -> Disposition {
    Disposition::Release
}

/// The policy of `run_recording_errors`: every error is recorded.
pub(crate) fn record<E>(_: &E) -> Disposition {
    Disposition::Record
}

/// Errors that round-trip through serde, classified by `F`.
pub(crate) struct RecordedErrors<F>(pub(crate) F);

impl<E, F> ErrorPolicy<E> for RecordedErrors<F>
where
    E: Serialize + DeserializeOwned,
    F: Fn(&E) -> Disposition,
{
    fn classify(&self, err: &E) -> Disposition {
        (self.0)(err)
    }
    fn encode(&self, err: &E) -> Option<Result<Vec<u8>, serde_json::Error>> {
        Some(encode_exactly(err))
    }
    fn decode(&self, json: &[u8]) -> Option<Result<E, serde_json::Error>> {
        Some(serde_json::from_slice(json))
    }
}

/// How a transactional call treats its body's `Err`: classified by `F`, and recorded with the
/// codec when there is one. A savepoint before the body lets its writes be undone alone, for an
/// error's record or to keep the claim of an unknown outcome; `classifies` is false when every
/// error is released (no savepoint needed).
pub(crate) struct Policy<E, F> {
    pub(crate) on_error: F,
    pub(crate) codec: Option<Codec<E>>,
    pub(crate) classifies: bool,
}

impl<E, F> Policy<E, F> {
    /// Errors classified by `on_error`, none recorded.
    pub(crate) fn classifying(on_error: F) -> Self {
        Self {
            on_error,
            codec: None,
            classifies: true,
        }
    }

    /// Whether the body runs after a savepoint: when an error may be recorded or keep the claim.
    pub(crate) fn needs_savepoint(&self) -> bool {
        self.codec.is_some() || self.classifies
    }
}

/// The serde functions of a recorded error type.
pub(crate) struct Codec<E> {
    encode: fn(&E) -> Result<Vec<u8>, serde_json::Error>,
    decode: fn(&[u8]) -> Result<E, serde_json::Error>,
}

impl<E: Serialize + DeserializeOwned> Codec<E> {
    /// Errors recorded as JSON, refused if they would not replay as written.
    pub(crate) fn json() -> Self {
        Self {
            encode: encode_exactly::<E>,
            decode: |json| serde_json::from_slice(json),
        }
    }
}

impl<E, F: Fn(&E) -> Disposition> ErrorPolicy<E> for Policy<E, F> {
    fn classify(&self, err: &E) -> Disposition {
        match ((self.on_error)(err), &self.codec) {
            // The safe side of what was asked: nothing is replayed, nothing re-runs at once.
            (Disposition::Record, None) => Disposition::OutcomeUnknown,
            (how, _) => how,
        }
    }
    fn encode(&self, err: &E) -> Option<Result<Vec<u8>, serde_json::Error>> {
        self.codec.as_ref().map(|codec| (codec.encode)(err))
    }
    fn decode(&self, json: &[u8]) -> Option<Result<E, serde_json::Error>> {
        self.codec.as_ref().map(|codec| (codec.decode)(json))
    }
}
