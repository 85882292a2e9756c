//! Request fingerprints: a SHA-256 over a canonical JSON form of any `Serialize` value.
//!
//! Canonical means map keys are sorted here, whatever order the value serializes them in (and
//! whether or not serde_json's `preserve_order` feature is on somewhere in the build), so
//! `{"a":1,"b":2}` and `{"b":2,"a":1}` hash alike.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;

/// A request fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `request`.
    pub fn of<T: Serialize + ?Sized>(request: &T) -> Result<Self, Error> {
        let value = serde_json::to_value(request).map_err(|source| Error::Encode {
            what: "the request fingerprint",
            source,
        })?;
        Ok(Self::of_value(&value))
    }

    /// The fingerprint of a JSON value (what [`of`](Self::of) computes, without converting a
    /// value that already is JSON).
    pub fn of_value(request: &Value) -> Self {
        // The canonical text is written out whole and hashed once: a hasher fed one token at a
        // time spends more on its buffering than on hashing.
        let mut canonical = Vec::with_capacity(256);
        write_canonical(&mut canonical, request);
        Self(Sha256::digest(&canonical).into())
    }
}

/// Writes `value` with sorted map keys and unambiguous framing.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (key, value) in entries {
                write_scalar(out, key);
                out.push(b':');
                write_canonical(out, value);
                out.push(b',');
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                write_canonical(out, item);
                out.push(b',');
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

/// A scalar (or a key) as its JSON text, unambiguous (strings quoted and escaped).
fn write_scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, scalar: &T) {
    // Writing a string, number, bool or null into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, scalar);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn map_order_does_not_matter() {
        let mut a = HashMap::new();
        let mut b = Vec::new();
        for i in 0..50 {
            a.insert(format!("k{i}"), i);
            b.push((format!("k{}", 49 - i), 49 - i));
        }
        let b: serde_json::Map<String, Value> =
            b.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
        let c: BTreeMap<_, _> = a.clone().into_iter().collect();
        assert_eq!(Fingerprint::of(&a).unwrap(), Fingerprint::of(&b).unwrap());
        assert_eq!(Fingerprint::of(&a).unwrap(), Fingerprint::of(&c).unwrap());
    }

    /// The tests are built with serde_json's `preserve_order` (see Cargo.toml): without it,
    /// objects arrive sorted whatever the fingerprint does, and the test above proves nothing.
    #[test]
    fn objects_keep_their_insertion_order_in_this_build() {
        let mut map = serde_json::Map::new();
        map.insert("b".into(), Value::from(1));
        map.insert("a".into(), Value::from(2));
        let keys: Vec<&String> = map.keys().collect();
        assert_eq!(keys, ["b", "a"]);
        #[derive(Serialize)]
        struct Backwards {
            z: u8,
            a: u8,
        }
        let value = serde_json::to_value(Backwards { z: 1, a: 2 }).unwrap();
        assert_eq!(value.to_string(), r#"{"z":1,"a":2}"#);
        assert_eq!(
            Fingerprint::of(&Backwards { z: 1, a: 2 }).unwrap(),
            Fingerprint::of(&serde_json::json!({"a": 2, "z": 1})).unwrap()
        );
    }

    #[test]
    fn different_requests_differ() {
        let fps = [
            Fingerprint::of(&("a", 1)).unwrap(),
            Fingerprint::of(&("a", 2)).unwrap(),
            Fingerprint::of(&["a1"]).unwrap(),
            Fingerprint::of(&"a,1").unwrap(),
            Fingerprint::of(&1.5).unwrap(),
        ];
        for i in 0..fps.len() {
            for j in 0..i {
                assert_ne!(fps[i], fps[j]);
            }
        }
    }

    /// Fingerprints are stored with records: a change to their bytes would make every retry
    /// across an upgrade a `KeyReused`.
    #[test]
    fn fingerprints_are_stable_across_versions() {
        let request = serde_json::json!({
            "b": [1, -2.5, "x\"y", null, true, {"z": {}, "a": []}],
            "a": "caf\u{e9}",
            "c": 18446744073709551615u64,
        });
        assert_eq!(
            crate::encode::hex(&Fingerprint::of(&request).unwrap().0),
            "f53e89fbecfc7b327c9e8eb534a6672d30614c724afad653f6f4d4a198bec1a9"
        );
    }

    #[test]
    fn unserializable_is_an_encode_error() {
        let mut map = HashMap::new();
        map.insert((1, 2), 3); // tuple keys cannot be JSON object keys
        assert!(matches!(Fingerprint::of(&map), Err(Error::Encode { .. })));
    }

    /// Fingerprints are stored with claims and records: one computed differently after an
    /// upgrade would refuse every retry of a call made before it. The values of idem 0.1.0.
    #[test]
    fn fingerprints_stay_the_values_stored_before() {
        let value = serde_json::json!({
            "amount": 1250,
            "to": {"iban": "DE02\u{e9}", "n": [1, 2.5, -300.0, null, true]},
            "memo": "a \"quoted\" line\n",
        });
        assert_eq!(crate::encode::hex(&Fingerprint::of_value(&value).0), PINNED);
    }

    const PINNED: &str = "5d6adea10b27f1069e829efdeb122f3273798611df7c5c12d00b872980039cc5";
}
