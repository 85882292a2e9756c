//! A record read back for a duplicate: the same request, then its value or recorded error.

use serde::de::DeserializeOwned;

use crate::observe::CallOutcome;
use crate::policy::ErrorPolicy;
use crate::store::{Outcome, Record};
use crate::Error;

/// Whether a stored fingerprint and a call's describe the same request. A missing one (a call
/// without `fingerprint`, or a record made before the function had one) matches any: adding a
/// fingerprint to a function must not turn duplicates of older requests into `KeyReused`,
/// which tells clients to use a new key and so runs the effect again.
pub(crate) fn same_request(stored: &[u8], call: &[u8]) -> bool {
    stored.is_empty() || call.is_empty() || stored == call
}

/// A replay's result (an `Ok`, or a recorded `Err`) and how the call ended: a record that is another request's
/// (`KeyReused`) or unreadable (`Corrupt`) replays nothing, and the call failed before the body.
pub(crate) fn replayed<T, E>(
    key: &str,
    fingerprint: &[u8],
    record: &[u8],
    waited: bool,
    errors: &impl ErrorPolicy<E>,
) -> (Result<T, E>, CallOutcome)
where
    T: DeserializeOwned,
    E: From<Error>,
{
    match decode_replay(key, fingerprint, record, errors) {
        Ok(replayed) if waited => (replayed, CallOutcome::Waited),
        Ok(replayed) => (replayed, CallOutcome::Replayed),
        Err(err) => {
            let how = CallOutcome::before_body(&err);
            (Err(err.into()), how)
        }
    }
}

pub(crate) fn decode_replay<T, E>(
    key: &str,
    fingerprint: &[u8],
    bytes: &[u8],
    errors: &impl ErrorPolicy<E>,
) -> Result<Result<T, E>, Error>
where
    T: DeserializeOwned,
{
    let record = Record::decode(key, bytes)?;
    if !same_request(record.fingerprint, fingerprint) {
        return Err(Error::KeyReused {
            key: key.to_owned(),
        });
    }
    let undecodable = |source: serde_json::Error| {
        Error::corrupt(
            key,
            format!("its value does not decode as this function's result type ({source})"),
        )
    };
    match record.outcome {
        Outcome::Ok => Ok(Ok(
            serde_json::from_slice(record.value).map_err(undecodable)?
        )),
        Outcome::Err => match errors.decode(record.value) {
            Some(decoded) => Ok(Err(decoded.map_err(undecodable)?)),
            None => Err(Error::corrupt(
                key,
                "it records an `Err`, but this function does not record errors (was `record_errors` removed?)",
            )),
        },
    }
}
