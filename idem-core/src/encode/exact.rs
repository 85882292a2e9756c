//! Recording a value exactly: duplicates must be replayed what the first caller got (invariant
//! I2). JSON cannot tell some values apart: it writes NaN and the infinities as `null`, and
//! `Some(x)` exactly like `x`, so `Some(None)` comes back as `None`; and an untagged enum may
//! decode as another variant. Such a value is refused before it is recorded, when the decoded
//! copy differs in structure (not when two variants hold the same structure: `Id(String)` and
//! `Name(String)` of an untagged enum write the same JSON and cannot be told apart).
//!
//! The check compares the *structure* of the value with that of its decoded copy: which
//! `Option`s are `Some`, which structs, variants, fields and primitive types make it up, with the
//! elements of sequences and maps compared in any order, and without the contents of strings and
//! numbers. Comparing whole values instead would refuse values that are equal but serialize
//! differently once decoded (a `HashSet` iterates in another order, and a type may write one
//! into a string), and a refusal comes after the effect happened.
//!
//! The structures are compared as 64-bit hashes, built while serializing, without allocating:
//! the check runs on every first execution. Two different structures that hash alike would pass
//! it; the hash mixes every part, so that takes a chance of about one in 2^64.
//!
//! A limit that comes with comparing sequence elements in any order: elements that trade shapes
//! on decoding pass. It takes an untagged enum whose variants decode each other's JSON, in one
//! sequence, and a decoder that refuses what its encoder wrote (`[A(Small(200)), B(Some(5))]`
//! replayed as `[B(Some(200)), A(Small(5))]` when `Small` decodes only up to 100).

use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize};

/// The JSON of `value`, if it decodes back with the same structure.
pub(crate) fn encode_exactly<V: Serialize + DeserializeOwned>(
    value: &V,
) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let shown = || String::from_utf8_lossy(&json[..json.len().min(64)]).into_owned();
    let refuse = |why: String| {
        <serde_json::Error as ser::Error>::custom(format!(
            "a `{}` value cannot be recorded: {why}; duplicates would be replayed a different \
             value, so it was not recorded (use a type whose JSON decodes back to the same value: \
             finite floats, an enum instead of nested `Option`s, tagged enums)",
            std::any::type_name::<V>()
        ))
    };
    let decoded: V = serde_json::from_slice(&json).map_err(|err| {
        refuse(format!(
            "its JSON `{}` does not decode back ({err})",
            shown()
        ))
    })?;
    let trace = |v: &V| v.serialize(Shape).map_err(|Unwritable(why)| refuse(why));
    if trace(value)? != trace(&decoded)? {
        return Err(refuse(format!(
            "its JSON `{}` decodes as a different value",
            shown()
        )));
    }
    Ok(json)
}

/// Why a value's shape cannot be taken.
#[derive(Debug)]
struct Unwritable(String);

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unwritable {}

impl ser::Error for Unwritable {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(format!("it does not serialize ({msg})"))
    }
}

/// A serializer that hashes a value's structure.
struct Shape;

/// Mixes `part` into `hash` (the finalizer of SplitMix64 over their combination): every bit of
/// each part moves every bit of the result, so that sums of mixed parts stay apart too.
fn mix(hash: u64, part: u64) -> u64 {
    let mut z = hash.rotate_left(23) ^ part.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A name's hash (FNV-1a), as a part.
fn name(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The kinds of part, so that a struct and a map of the same names differ.
mod kind {
    pub(super) const NONE: u64 = 1;
    pub(super) const SOME: u64 = 2;
    pub(super) const UNIT: u64 = 3;
    pub(super) const UNIT_STRUCT: u64 = 4;
    pub(super) const UNIT_VARIANT: u64 = 5;
    pub(super) const NEWTYPE_STRUCT: u64 = 6;
    pub(super) const NEWTYPE_VARIANT: u64 = 7;
    pub(super) const SEQ: u64 = 8;
    pub(super) const TUPLE: u64 = 9;
    pub(super) const TUPLE_STRUCT: u64 = 10;
    pub(super) const TUPLE_VARIANT: u64 = 11;
    pub(super) const MAP: u64 = 12;
    pub(super) const STRUCT: u64 = 13;
    pub(super) const STRUCT_VARIANT: u64 = 14;
    pub(super) const FLOAT: u64 = 15;
    pub(super) const FIELD: u64 = 16;
    pub(super) const ENTRY: u64 = 17;
}

/// A compound value being hashed.
struct Parts {
    /// The hash so far: the kind and names, then each part in order (tuples and structs).
    ordered: u64,
    /// Sequences and maps: the sum of their parts' hashes, in any order (a set decodes in
    /// another order), and how many there are.
    unordered: Option<(u64, u64)>,
    /// A map entry's key, waiting for its value.
    key: Option<u64>,
}

impl Parts {
    fn ordered(start: u64) -> Self {
        Self {
            ordered: start,
            unordered: None,
            key: None,
        }
    }

    fn unordered(kind: u64) -> Self {
        Self {
            ordered: kind,
            unordered: Some((0, 0)),
            key: None,
        }
    }

    fn push(&mut self, part: u64) {
        match &mut self.unordered {
            Some((sum, count)) => {
                *sum = sum.wrapping_add(mix(kind::ENTRY, part));
                *count += 1;
            }
            None => self.ordered = mix(self.ordered, part),
        }
    }

    fn end(self) -> u64 {
        match self.unordered {
            Some((sum, count)) => mix(mix(self.ordered, count), sum),
            None => mix(self.ordered, 0),
        }
    }
}

fn float(value: f64) -> Result<u64, Unwritable> {
    if value.is_finite() {
        Ok(kind::FLOAT)
    } else {
        Err(Unwritable(format!(
            "it holds {value}, which JSON writes as `null`"
        )))
    }
}

macro_rules! primitive {
    ($($method:ident: $ty:ty => $name:literal),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<u64, Unwritable> {
            Ok(name($name))
        })*
    };
}

impl ser::Serializer for Shape {
    type Ok = u64;
    type Error = Unwritable;
    type SerializeSeq = Parts;
    type SerializeTuple = Parts;
    type SerializeTupleStruct = Parts;
    type SerializeTupleVariant = Parts;
    type SerializeMap = Parts;
    type SerializeStruct = Parts;
    type SerializeStructVariant = Parts;

    primitive!(
        serialize_bool: bool => "bool", serialize_i8: i8 => "i8", serialize_i16: i16 => "i16",
        serialize_i32: i32 => "i32", serialize_i64: i64 => "i64", serialize_i128: i128 => "i128",
        serialize_u8: u8 => "u8", serialize_u16: u16 => "u16", serialize_u32: u32 => "u32",
        serialize_u64: u64 => "u64", serialize_u128: u128 => "u128", serialize_char: char => "char",
        serialize_str: &str => "str", serialize_bytes: &[u8] => "bytes",
    );

    fn serialize_f32(self, value: f32) -> Result<u64, Unwritable> {
        float(f64::from(value))
    }

    fn serialize_f64(self, value: f64) -> Result<u64, Unwritable> {
        float(value)
    }

    fn serialize_none(self) -> Result<u64, Unwritable> {
        Ok(kind::NONE)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<u64, Unwritable> {
        Ok(mix(kind::SOME, value.serialize(Self)?))
    }

    fn serialize_unit(self) -> Result<u64, Unwritable> {
        Ok(kind::UNIT)
    }

    fn serialize_unit_struct(self, type_name: &'static str) -> Result<u64, Unwritable> {
        Ok(mix(kind::UNIT_STRUCT, name(type_name)))
    }

    fn serialize_unit_variant(
        self,
        type_name: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<u64, Unwritable> {
        Ok(mix(mix(kind::UNIT_VARIANT, name(type_name)), name(variant)))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        type_name: &'static str,
        value: &T,
    ) -> Result<u64, Unwritable> {
        let start = mix(kind::NEWTYPE_STRUCT, name(type_name));
        Ok(mix(start, value.serialize(Self)?))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        type_name: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<u64, Unwritable> {
        let start = mix(mix(kind::NEWTYPE_VARIANT, name(type_name)), name(variant));
        Ok(mix(start, value.serialize(Self)?))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Parts, Unwritable> {
        Ok(Parts::unordered(kind::SEQ))
    }

    fn serialize_tuple(self, _: usize) -> Result<Parts, Unwritable> {
        Ok(Parts::ordered(kind::TUPLE))
    }

    fn serialize_tuple_struct(
        self,
        type_name: &'static str,
        _: usize,
    ) -> Result<Parts, Unwritable> {
        Ok(Parts::ordered(mix(kind::TUPLE_STRUCT, name(type_name))))
    }

    fn serialize_tuple_variant(
        self,
        type_name: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Parts, Unwritable> {
        let start = mix(mix(kind::TUPLE_VARIANT, name(type_name)), name(variant));
        Ok(Parts::ordered(start))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Parts, Unwritable> {
        Ok(Parts::unordered(kind::MAP))
    }

    fn serialize_struct(self, type_name: &'static str, _: usize) -> Result<Parts, Unwritable> {
        Ok(Parts::ordered(mix(kind::STRUCT, name(type_name))))
    }

    fn serialize_struct_variant(
        self,
        type_name: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Parts, Unwritable> {
        let start = mix(mix(kind::STRUCT_VARIANT, name(type_name)), name(variant));
        Ok(Parts::ordered(start))
    }
}

macro_rules! compound {
    ($($trait:ident: $method:ident $(($key:ident))?;)*) => {
        $(impl ser::$trait for Parts {
            type Ok = u64;
            type Error = Unwritable;

            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $($key: &'static str,)?
                value: &T,
            ) -> Result<(), Unwritable> {
                #[allow(unused_mut, reason = "mutated only by the arms that have a key")]
                let mut part = value.serialize(Shape)?;
                $(part = mix(mix(kind::FIELD, name($key)), part);)?
                self.push(part);
                Ok(())
            }

            fn end(self) -> Result<u64, Unwritable> {
                Ok(Parts::end(self))
            }
        })*
    };
}

compound! {
    SerializeSeq: serialize_element;
    SerializeTuple: serialize_element;
    SerializeTupleStruct: serialize_field;
    SerializeTupleVariant: serialize_field;
    SerializeStruct: serialize_field(key);
    SerializeStructVariant: serialize_field(key);
}

impl ser::SerializeMap for Parts {
    type Ok = u64;
    type Error = Unwritable;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unwritable> {
        self.key = Some(key.serialize(Shape)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unwritable> {
        let key = self.key.take().unwrap_or(0);
        self.push(mix(mix(kind::FIELD, key), value.serialize(Shape)?));
        Ok(())
    }

    fn end(self) -> Result<u64, Unwritable> {
        Ok(Self::end(self))
    }
}

#[cfg(test)]
#[allow(
    clippy::option_option,
    reason = "`Some(None)` is a case JSON cannot tell apart"
)]
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
            Ok(Self(text.split(' ').map(str::to_owned).collect()))
        }
    }

    /// Untagged variants that JSON cannot tell apart.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Reply {
        Charged { charge_id: Option<String> },
        Declined { reason: Option<String> },
        Small(u8),
        Large(u64),
    }

    /// A JSON merge patch: `Some(None)` ("set to null") decodes back exactly.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct MergePatch {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "some"
        )]
        note: Option<Option<String>>,
    }

    fn some<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        serde::Deserialize::deserialize(deserializer).map(Some)
    }

    #[test]
    fn values_that_replay_as_themselves_are_recorded() {
        encode_exactly(&MergePatch { note: Some(None) }).unwrap();
        encode_exactly(&MergePatch { note: None }).unwrap();
        encode_exactly(&Reply::Charged {
            charge_id: Some("ch_1".into()),
        })
        .unwrap();
        encode_exactly(&Reply::Small(3)).unwrap();
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
            encode_exactly(&Reply::Declined { reason: None }).map(drop),
            encode_exactly(&Reply::Large(3)).map(drop),
        ] {
            let err = refused.unwrap_err().to_string();
            assert!(err.contains("decodes as a different value"), "{err}");
        }
    }
}
