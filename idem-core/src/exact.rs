//! Recording a value exactly: duplicates must be replayed what the first caller got (invariant
//! I2). JSON cannot tell some values apart: it writes NaN and the infinities as `null`, and
//! `Some(x)` exactly like `x`, so `Some(None)`, `Some(())` and `Some(f64::NAN)` all come back as
//! `None`. Such a value is refused before it is recorded.
//!
//! The check walks the value as serde sees it, looking for exactly those writings, rather than
//! comparing the value with its decoded copy: a comparison also refuses values that are equal
//! but serialize differently once decoded (a `HashSet` iterates in another order, and a type
//! may write one into a string), and a refusal comes after the effect happened.

use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize};

/// The JSON of `value`, if its type decodes it and nothing in it is written ambiguously.
pub(crate) fn encode_exactly<V: Serialize + DeserializeOwned>(
    value: &V,
) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let shown = || String::from_utf8_lossy(&json[..json.len().min(64)]).into_owned();
    let refuse = |why: String| {
        <serde_json::Error as ser::Error>::custom(format!(
            "a `{}` value cannot be recorded: {why}; duplicates would be replayed a different \
             value, so it was not recorded (use a type whose JSON decodes back to the same value: \
             finite floats, an enum instead of nested `Option`s)",
            std::any::type_name::<V>()
        ))
    };
    serde_json::from_slice::<V>(&json).map_err(|err| {
        refuse(format!(
            "its JSON `{}` does not decode back ({err})",
            shown()
        ))
    })?;
    value
        .serialize(Check)
        .map_err(|Ambiguous(why)| refuse(format!("its JSON `{}` {why}", shown())))?;
    Ok(json)
}

/// What a value was written as, as far as the check cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// `null`: a unit, a `None`, a unit struct (or a newtype around one).
    Null,
    Other,
}

/// Why a value cannot be written unambiguously.
#[derive(Debug)]
struct Ambiguous(String);

impl std::fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Ambiguous {}

impl ser::Error for Ambiguous {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Ambiguous(format!("does not serialize ({msg})"))
    }
}

/// A serializer that writes nothing and fails on what JSON cannot tell apart.
struct Check;

/// The compound parts: every element, key and field is checked in turn.
struct Parts;

fn float(value: f64) -> Result<Written, Ambiguous> {
    if value.is_finite() {
        Ok(Written::Other)
    } else {
        Err(Ambiguous(format!(
            "holds {value}, which JSON writes as `null`"
        )))
    }
}

macro_rules! plain {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<Written, Ambiguous> {
            Ok(Written::Other)
        })*
    };
}

impl ser::Serializer for Check {
    type Ok = Written;
    type Error = Ambiguous;
    type SerializeSeq = Parts;
    type SerializeTuple = Parts;
    type SerializeTupleStruct = Parts;
    type SerializeTupleVariant = Parts;
    type SerializeMap = Parts;
    type SerializeStruct = Parts;
    type SerializeStructVariant = Parts;

    plain!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8],
    );

    fn serialize_f32(self, value: f32) -> Result<Written, Ambiguous> {
        float(f64::from(value))
    }

    fn serialize_f64(self, value: f64) -> Result<Written, Ambiguous> {
        float(value)
    }

    fn serialize_none(self) -> Result<Written, Ambiguous> {
        Ok(Written::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Written, Ambiguous> {
        match value.serialize(Check)? {
            Written::Null => Err(Ambiguous(
                "holds a `Some` of a value written as `null` (`Some(None)`, `Some(())`), which \
                 decodes as `None`"
                    .to_owned(),
            )),
            Written::Other => Ok(Written::Other),
        }
    }

    fn serialize_unit(self) -> Result<Written, Ambiguous> {
        Ok(Written::Null)
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<Written, Ambiguous> {
        Ok(Written::Null)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<Written, Ambiguous> {
        Ok(Written::Other)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Written, Ambiguous> {
        value.serialize(Check)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<Written, Ambiguous> {
        value.serialize(Check).map(|_| Written::Other)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }

    fn serialize_tuple(self, _: usize) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Parts, Ambiguous> {
        Ok(Parts)
    }
}

/// One part of a compound value, checked.
fn part<T: Serialize + ?Sized>(value: &T) -> Result<(), Ambiguous> {
    value.serialize(Check).map(drop)
}

macro_rules! compound {
    ($($trait:ident: $method:ident $(($($name:ident: $ty:ty),*))?;)*) => {
        $(impl ser::$trait for Parts {
            type Ok = Written;
            type Error = Ambiguous;

            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $($($name: $ty,)*)?
                value: &T,
            ) -> Result<(), Ambiguous> {
                part(value)
            }

            fn end(self) -> Result<Written, Ambiguous> {
                Ok(Written::Other)
            }
        })*
    };
}

compound! {
    SerializeSeq: serialize_element;
    SerializeTuple: serialize_element;
    SerializeTupleStruct: serialize_field;
    SerializeTupleVariant: serialize_field;
    SerializeStruct: serialize_field(_key: &'static str);
    SerializeStructVariant: serialize_field(_key: &'static str);
}

impl ser::SerializeMap for Parts {
    type Ok = Written;
    type Error = Ambiguous;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Ambiguous> {
        part(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Ambiguous> {
        part(value)
    }

    fn end(self) -> Result<Written, Ambiguous> {
        Ok(Written::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Patch {
        id: u128,
        note: Option<Option<String>>,
    }

    /// A set written into one string, in its iteration order (as `serde_with` does for
    /// space-separated scopes): equal once decoded, though written differently.
    #[derive(Debug, PartialEq)]
    struct Scopes(HashSet<String>);

    impl Serialize for Scopes {
        fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let joined: Vec<&str> = self.0.iter().map(String::as_str).collect();
            serializer.serialize_str(&joined.join(" "))
        }
    }

    impl<'de> serde::Deserialize<'de> for Scopes {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            Ok(Scopes(text.split(' ').map(str::to_owned).collect()))
        }
    }

    #[test]
    fn values_that_replay_as_themselves_are_recorded() {
        let set: HashSet<String> = (0..64).map(|i| format!("perm-{i}")).collect();
        encode_exactly(&set).unwrap();
        let map: HashMap<u32, Vec<HashSet<u8>>> =
            (0..32).map(|i| (i, vec![(0..i as u8).collect()])).collect();
        encode_exactly(&map).unwrap();
        encode_exactly(&BTreeMap::from([(1u8, None::<u8>), (2, Some(3))])).unwrap();
        encode_exactly(&Scopes((0..16).map(|i| format!("scope{i}")).collect())).unwrap();
        encode_exactly(&u128::MAX).unwrap();
        encode_exactly(&i128::MIN).unwrap();
        encode_exactly(&(Some(Some(3u8)), None::<Option<u8>>, vec![1u8, 2, 3], ())).unwrap();
        encode_exactly(&Patch {
            id: u128::MAX,
            note: Some(Some("x".into())),
        })
        .unwrap();
    }

    #[test]
    fn values_that_replay_as_something_else_are_refused() {
        for refused in [
            encode_exactly(&f64::NAN).map(drop),
            encode_exactly(&f64::NEG_INFINITY).map(drop),
            encode_exactly(&vec![1.0, f64::INFINITY]).map(drop),
            encode_exactly(&Some(f64::NAN)).map(drop),
        ] {
            let err = refused.unwrap_err().to_string();
            assert!(err.contains("cannot be recorded"), "{err}");
        }
        for refused in [
            encode_exactly(&Some(None::<u8>)).map(drop),
            encode_exactly(&Some(())).map(drop),
            encode_exactly(&Patch {
                id: 7,
                note: Some(None),
            })
            .map(drop),
            encode_exactly(&Patch {
                id: u128::MAX,
                note: Some(None),
            })
            .map(drop),
        ] {
            let err = refused.unwrap_err().to_string();
            assert!(err.contains("decodes as `None`"), "{err}");
        }
    }
}
