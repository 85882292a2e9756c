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
        let mut hasher = HashWriter(Sha256::new());
        write_canonical(&mut hasher, request);
        Self(hasher.0.finalize().into())
    }
}

/// Feeds what is written to the hasher.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Feeds `value` to the hasher with sorted map keys and unambiguous framing.
fn write_canonical(hasher: &mut HashWriter, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.0.update(b"{");
            for (key, value) in entries {
                write_scalar(hasher, key);
                hasher.0.update(b":");
                write_canonical(hasher, value);
                hasher.0.update(b",");
            }
            hasher.0.update(b"}");
        }
        Value::Array(items) => {
            hasher.0.update(b"[");
            for item in items {
                write_canonical(hasher, item);
                hasher.0.update(b",");
            }
            hasher.0.update(b"]");
        }
        scalar => write_scalar(hasher, scalar),
    }
}

/// A scalar (or a key) as its JSON text, unambiguous (strings quoted and escaped).
fn write_scalar<T: Serialize + ?Sized>(hasher: &mut HashWriter, scalar: &T) {
    // Writing a string, number, bool or null into a hasher cannot fail.
    let _ = serde_json::to_writer(hasher, scalar);
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
}
