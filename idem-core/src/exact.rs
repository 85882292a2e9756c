//! Recording a value exactly: its JSON must decode back to the same value, or duplicates would
//! be replayed something other than what the first caller got (invariant I2). JSON writes NaN
//! and the infinities as `null` (which no `f64` decodes from), and `Some(None)` like `None`;
//! custom or untagged serde impls can decode to another value too.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::ser::Error as _;
use serde::Serialize;
use serde_value::Value;

/// The JSON of `value`, if it decodes back to an equal value: compared by their serde shapes
/// (which keep `Some` apart from `None`), with sequences compared as multisets, since a set
/// iterates in another order once decoded. Types the shape cannot hold (`u128`, `i128`) are
/// compared by their JSON instead, and numbers beyond 64 bits, which neither holds, go
/// unchecked.
pub(crate) fn encode_exactly<V: Serialize + DeserializeOwned>(
    value: &V,
) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let shown = || String::from_utf8_lossy(&json[..json.len().min(64)]).into_owned();
    let refuse = |why: String| {
        serde_json::Error::custom(format!(
            "a `{}` value cannot be recorded: {why}; duplicates would be replayed a different \
             value, so it was not recorded (use a type whose JSON decodes back to the same value: \
             finite floats, an enum instead of nested `Option`s)",
            std::any::type_name::<V>()
        ))
    };
    let decoded: V = serde_json::from_slice(&json).map_err(|err| {
        refuse(format!(
            "its JSON `{}` does not decode back ({err})",
            shown()
        ))
    })?;
    let same = match (
        serde_value::to_value(value),
        serde_value::to_value(&decoded),
    ) {
        (Ok(before), Ok(after)) => canonical(before) == canonical(after),
        _ => match (serde_json::to_value(value), serde_json::to_value(&decoded)) {
            (Ok(before), Ok(after)) => canonical_json(before) == canonical_json(after),
            // Numbers beyond 64 bits fit neither form: such a value is recorded as it decoded,
            // unchecked, rather than refused after its effect happened.
            _ => true,
        },
    };
    if !same {
        return Err(refuse(format!(
            "its JSON `{}` decodes as a different value",
            shown()
        )));
    }
    Ok(json)
}

/// A shape with every sequence sorted.
fn canonical(value: Value) -> Value {
    match value {
        Value::Seq(items) => {
            let mut items: Vec<Value> = items.into_iter().map(canonical).collect();
            items.sort();
            Value::Seq(items)
        }
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(key, value)| (canonical(key), canonical(value)))
                .collect::<BTreeMap<_, _>>(),
        ),
        Value::Option(Some(inner)) => Value::Option(Some(Box::new(canonical(*inner)))),
        Value::Newtype(inner) => Value::Newtype(Box::new(canonical(*inner))),
        other => other,
    }
}

/// JSON with every array sorted (by its elements' text) and every object's keys in order.
fn canonical_json(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Array(items) => {
            let mut items: Vec<serde_json::Value> = items.into_iter().map(canonical_json).collect();
            items.sort_by_cached_key(serde_json::Value::to_string);
            serde_json::Value::Array(items)
        }
        serde_json::Value::Object(entries) => {
            let sorted: BTreeMap<String, serde_json::Value> = entries
                .into_iter()
                .map(|(key, value)| (key, canonical_json(value)))
                .collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Ambiguous {
        Small(u8),
        Large(u64),
    }

    #[test]
    fn values_that_replay_as_themselves_are_recorded() {
        let set: HashSet<String> = (0..64).map(|i| format!("perm-{i}")).collect();
        encode_exactly(&set).unwrap();
        let map: HashMap<u32, Vec<HashSet<u8>>> =
            (0..32).map(|i| (i, vec![(0..i as u8).collect()])).collect();
        encode_exactly(&map).unwrap();
        encode_exactly(&u128::MAX).unwrap();
        encode_exactly(&i128::MIN).unwrap();
        encode_exactly(&(Some(Some(3u8)), None::<Option<u8>>, vec![1u8, 2, 3])).unwrap();
        encode_exactly(&Ambiguous::Small(3)).unwrap();
    }

    #[test]
    fn values_that_replay_as_something_else_are_refused() {
        for refused in [
            encode_exactly(&f64::NAN),
            encode_exactly(&f64::NEG_INFINITY),
            encode_exactly(&vec![1.0, f64::INFINITY]),
        ] {
            let err = refused.unwrap_err().to_string();
            assert!(err.contains("does not decode back"), "{err}");
        }
        for refused in [
            encode_exactly(&Some(None::<u8>)).map(drop),
            encode_exactly(&Some(())).map(drop),
            encode_exactly(&Ambiguous::Large(3)).map(drop),
        ] {
            let err = refused.unwrap_err().to_string();
            assert!(err.contains("decodes as a different value"), "{err}");
        }
        // Vectors keep their order: a reordering is not taken for a set's.
        encode_exactly(&vec![3u8, 1, 2]).unwrap();
    }
}
