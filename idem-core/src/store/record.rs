//! The record format: what a completed key holds, versioned so that a future format is
//! recognised as such instead of being misread.
//!
//! ```text
//! "idem" | version: u8 (1) | outcome: u8 (0 = Ok, 1 = Err) | fingerprint length: u8 | fingerprint | value (JSON)
//! ```
//!
//! JSON keeps records readable with `redis-cli`. Any deviation decodes to [`Error::Corrupt`],
//! never to a miss and never to a panic.

use crate::Error;

const MAGIC: &[u8; 4] = b"idem";
/// The record version this build writes and reads.
pub const RECORD_VERSION: u8 = 1;
const HEADER: usize = MAGIC.len() + 3;
/// The longest fingerprint a record holds (a SHA-256 digest).
pub const MAX_FINGERPRINT: usize = 32;

/// Whether the recorded call returned `Ok` or a recorded `Err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `Ok(value)`.
    Ok,
    /// `Err(error)`, recorded with `record_errors`.
    Err,
}

/// A decoded record, borrowing from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Ok or Err.
    pub outcome: Outcome,
    /// The request fingerprint (empty when the call had none).
    pub fingerprint: &'a [u8],
    /// The JSON of the value.
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// Encodes a record. `fingerprint` is at most [`MAX_FINGERPRINT`] bytes (the runtime only
    /// makes SHA-256 digests), longer ones are cut, which only the runtime could cause.
    pub fn encode(outcome: Outcome, fingerprint: &[u8], value: &[u8]) -> Vec<u8> {
        let fingerprint = &fingerprint[..fingerprint.len().min(MAX_FINGERPRINT)];
        let mut bytes = Vec::with_capacity(HEADER + fingerprint.len() + value.len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(RECORD_VERSION);
        bytes.push(match outcome {
            Outcome::Ok => 0,
            Outcome::Err => 1,
        });
        // Cannot truncate: the length was capped at MAX_FINGERPRINT (32) above.
        bytes.push(fingerprint.len() as u8);
        bytes.extend_from_slice(fingerprint);
        bytes.extend_from_slice(value);
        bytes
    }

    /// Decodes a record read from `key`.
    pub fn decode(key: &str, bytes: &'a [u8]) -> Result<Self, Error> {
        let corrupt = |reason: String| Error::corrupt(key, reason);
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt(format!(
                "not an idem record ({} bytes without the `idem` header)",
                bytes.len()
            )));
        }
        let version = bytes[MAGIC.len()];
        if version != RECORD_VERSION {
            return Err(corrupt(format!(
                "record version {version}, but this build of idem reads version {RECORD_VERSION}; \
                 if a newer idem wrote it, upgrade this service"
            )));
        }
        let outcome = match bytes[MAGIC.len() + 1] {
            0 => Outcome::Ok,
            1 => Outcome::Err,
            other => return Err(corrupt(format!("unknown outcome tag {other}"))),
        };
        let fingerprint_len = usize::from(bytes[MAGIC.len() + 2]);
        if fingerprint_len > MAX_FINGERPRINT || bytes.len() < HEADER + fingerprint_len {
            return Err(corrupt(format!(
                "fingerprint length {fingerprint_len} does not fit a {}-byte record",
                bytes.len()
            )));
        }
        let (fingerprint, value) = bytes[HEADER..].split_at(fingerprint_len);
        Ok(Record {
            outcome,
            fingerprint,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let bytes = Record::encode(Outcome::Err, &[7; 32], b"{\"a\":1}");
        let record = Record::decode("k", &bytes).unwrap();
        assert_eq!(record.outcome, Outcome::Err);
        assert_eq!(record.fingerprint, &[7; 32]);
        assert_eq!(record.value, b"{\"a\":1}");
        let bytes = Record::encode(Outcome::Ok, &[], b"null");
        let record = Record::decode("k", &bytes).unwrap();
        assert_eq!(
            (record.outcome, record.fingerprint, record.value),
            (Outcome::Ok, &[][..], &b"null"[..])
        );
    }

    #[test]
    fn every_truncation_and_garbage_is_corrupt_not_a_panic() {
        let bytes = Record::encode(Outcome::Ok, &[1; 32], b"42");
        for len in 0..HEADER + 32 {
            assert!(
                matches!(
                    Record::decode("k", &bytes[..len]),
                    Err(Error::Corrupt { .. })
                ),
                "len {len}"
            );
        }
        for garbage in [&b"hello world"[..], b"", b"idem", &[0xff; 64]] {
            assert!(matches!(
                Record::decode("k", garbage),
                Err(Error::Corrupt { .. })
            ));
        }
        let mut bad_tag = bytes;
        bad_tag[5] = 9;
        assert!(matches!(
            Record::decode("k", &bad_tag),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn unknown_version_is_corrupt_and_says_so() {
        let mut bytes = Record::encode(Outcome::Ok, &[], b"1");
        bytes[4] = 2;
        let err = Record::decode("k", &bytes).unwrap_err();
        assert!(err.to_string().contains("record version 2"), "{err}");
    }
}
