//! Store keys, and the namespaces in them.
//!
//! A store key is `{prefix}{namespace}:{key}`, or for keys longer than [`MAX_PLAIN_KEY`] bytes
//! `{prefix}{namespace}#{readable head}~{sha256 of the key}`, where
//!
//! * the prefix is empty or ends with `:` (one is added to a prefix that does not);
//! * the namespace contains no `:` or `#` (nor `{`, `}`, control characters or whitespace other
//!   than a space);
//! * in the key and its head, `%`, `:` and `#` are written `%25`, `%3A` and `%23`, so the key
//!   part holds no `:` or `#` of its own.
//!
//! Read from the right, the last `:` or `#` ends the namespace (and says which form follows),
//! and the `:` before it, if any, ends the prefix. So every store key names exactly one
//! (prefix, namespace, key): no two different calls meet at one key, whatever strings they use.

use std::any::{type_name, TypeId};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::Error;

/// User keys longer than this (in bytes) are stored hashed behind a readable head.
pub const MAX_PLAIN_KEY: usize = 128;
const HEAD: usize = 48;
const FORBIDDEN_IN_NAMESPACE: &[char] = &[':', '#', '{', '}'];

/// Builds the store key for `user_key` in `namespace`, under `prefix`.
pub fn store_key(prefix: &str, namespace: &str, user_key: &str) -> Result<String, Error> {
    scoped_store_key(prefix, namespace, None, user_key)
}

/// [`store_key`] for a key scoped to a caller, `scope` being the caller's hash (plain hex): the
/// scope stands after the namespace's separator as `%S{scope}:`, which no escaped key can spell
/// (a `%` of a key is always escaped to `%25`), so no unscoped key meets a scoped one.
pub(crate) fn scoped_store_key(
    prefix: &str,
    namespace: &str,
    scope: Option<&str>,
    user_key: &str,
) -> Result<String, Error> {
    check_namespace(namespace)?;
    if user_key.is_empty() {
        return Err(Error::invalid_key(format!(
            "the key for `{namespace}` is empty; derive it from the request's idempotency key or id"
        )));
    }
    let separator = if prefix.is_empty() || prefix.ends_with(':') {
        ""
    } else {
        ":"
    };
    let mut out = String::with_capacity(prefix.len() + namespace.len() + user_key.len() + 72);
    out.push_str(prefix);
    out.push_str(separator);
    out.push_str(namespace);
    let push_scope = |out: &mut String| {
        if let Some(scope) = scope {
            out.push_str("%S");
            out.push_str(scope);
            out.push(':');
        }
    };
    if user_key.len() <= MAX_PLAIN_KEY {
        out.push(':');
        push_scope(&mut out);
        push_escaped(&mut out, user_key);
        return Ok(out);
    }
    let mut head_end = HEAD;
    while !user_key.is_char_boundary(head_end) {
        head_end -= 1;
    }
    out.push('#');
    push_scope(&mut out);
    push_escaped(&mut out, &user_key[..head_end]);
    out.push('~');
    out.push_str(&hex(&Sha256::digest(user_key.as_bytes())));
    Ok(out)
}

/// Appends `text` with `%`, `:` and `#` escaped (the separators of a store key).
fn push_escaped(out: &mut String, text: &str) {
    // The separators are ASCII, so they are found by byte, and the text between them (any
    // UTF-8) is copied a run at a time.
    let mut run = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'%' => "%25",
            b':' => "%3A",
            b'#' => "%23",
            _ => continue,
        };
        out.push_str(&text[run..at]);
        out.push_str(escaped);
        run = at + 1;
    }
    out.push_str(&text[run..]);
}

/// Checks a namespace: not empty; no `:`, `#`, `{`, `}`, control characters, or whitespace other
/// than a plain space.
pub fn check_namespace(namespace: &str) -> Result<(), Error> {
    let bad = |c: char| {
        FORBIDDEN_IN_NAMESPACE.contains(&c) || c.is_control() || (c.is_whitespace() && c != ' ')
    };
    if namespace.is_empty() || namespace.chars().any(bad) {
        return Err(Error::invalid_key(format!(
            "namespace `{}` must be non-empty and contain no `:`, `#`, `{{`, `}}`, control \
             characters or whitespace other than spaces",
            namespace.escape_debug()
        )));
    }
    Ok(())
}

/// The default namespace of a function, from the path the compiler gives a marker item declared
/// in its body (`std::any::type_name` of a nested `fn`), for example
/// `my_app::billing::<my_app::billing::Refunds as my_app::Handler>::handle::{{closure}}::marker`:
/// the marker's own name and every `{{...}}` segment are dropped and `::` becomes `.`, giving
/// `my_app.billing.<my_app.billing.Refunds as my_app.Handler>.handle`. It names the crate, the
/// module, the `Self` type (and trait) of a method, and the function, so no two functions of a
/// program share it.
pub(crate) fn function_namespace(marker_path: &str) -> String {
    let mut segments = named_segments(marker_path);
    segments.pop(); // the marker itself
    usable(&segments.join("."))
}

/// A type's or item's path as namespace text: `::` as `.`, without `{{closure}}`-like segments.
fn path_text(path: &str) -> String {
    usable(&named_segments(path).join("."))
}

/// The segments of a path but the compiler's `{{closure}}`, `{{constant}}`, ... ones.
fn named_segments(path: &str) -> Vec<Cow<'_, str>> {
    split_path(path)
        .into_iter()
        .filter(|segment| !segment.starts_with("{{"))
        .collect()
}

/// `text` with whatever the namespace grammar refuses (`{{closure}}` inside a generic type's
/// arguments, say) replaced, so a default namespace is always usable.
fn usable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if FORBIDDEN_IN_NAMESPACE.contains(&c) || c.is_control() => '_',
            c if c.is_whitespace() => ' ',
            c => c,
        })
        .collect()
}

/// Splits a path at the `::` that are not inside `<...>`: the segments of `a::<b::C as d::E>::f`
/// are `a`, `<b::C as d::E>` and `f`, and a qualified segment is then rewritten recursively.
fn split_path(path: &str) -> Vec<Cow<'_, str>> {
    let mut segments = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                segments.push(Cow::Borrowed(&path[start..i]));
                start = i + 2;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    segments.push(Cow::Borrowed(&path[start..]));
    segments
        .into_iter()
        .map(|segment| {
            if segment.contains("::") {
                Cow::Owned(segment.replace("::", "."))
            } else {
                segment
            }
        })
        .collect()
}

/// The default namespace of one `#[idempotent]` function, computed on its first call and kept:
/// generated code declares one per function as a `static`, and a marker `fn` in the function's
/// body whose path names it.
///
/// Two things the path alone cannot tell apart are handled here:
/// * a method's `Self` type, when the path does not name it (a provided trait method, shared by
///   every implementor, or a method of a generic impl): it is appended, `…handle[app.Charges]`;
/// * two functions whose paths print alike (same-named functions in two blocks of one function,
///   in `const _: () = { … }` blocks, or in a closure): every namespace is registered with its
///   marker, and a second function claiming a namespace already taken gets
///   [`Error::InvalidOption`] on every call instead of sharing the first one's records.
#[doc(hidden)]
#[derive(Debug)]
pub struct FunctionNamespace {
    /// The path of the marker, and for a method the first `Self` type and its namespace.
    resolved: OnceLock<Resolved>,
}

#[derive(Debug)]
struct Resolved {
    marker: TypeId,
    base: String,
    /// The namespace of the first `Self` type seen (of the function itself when it has no
    /// `Self`), or why it cannot be used.
    first: Registered,
    first_self: Option<TypeId>,
}

/// Who owns a registered namespace: a function's marker, and for a method its `Self` type.
type Owner = (TypeId, Option<TypeId>);

impl FunctionNamespace {
    /// An empty cell, for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        FunctionNamespace {
            resolved: OnceLock::new(),
        }
    }

    /// The namespace of the function (without `Self`) whose body declares `marker`.
    pub fn get<F: 'static>(&'static self, _marker: F) -> Result<&'static str, Error> {
        // Only the marker's names are generic: the rest is compiled once, not per function.
        self.resolve(type_name::<F>(), TypeId::of::<F>())
    }

    fn resolve(&'static self, marker_name: &str, marker: TypeId) -> Result<&'static str, Error> {
        let resolved = self.resolved.get_or_init(|| {
            let base = function_namespace(marker_name);
            let first = unambiguous(&base).and_then(|()| register(&base, (marker, None)));
            Resolved {
                marker,
                base,
                first,
                first_self: None,
            }
        });
        resolved.first.clone().map_err(Error::invalid_option)
    }

    /// The namespace of the method or associated function with `Self` type `S` whose body
    /// declares `marker`.
    pub fn get_for<S: ?Sized, F: 'static>(
        &'static self,
        _marker: F,
    ) -> Result<&'static str, Error> {
        self.resolve_for(
            type_name::<F>(),
            TypeId::of::<F>(),
            typeid::of::<S>(),
            type_name::<S>(),
        )
    }

    fn resolve_for(
        &'static self,
        marker_name: &str,
        marker: TypeId,
        self_type: TypeId,
        self_name: &str,
    ) -> Result<&'static str, Error> {
        let resolved = self.resolved.get_or_init(|| {
            let base = function_namespace(marker_name);
            let namespace = with_self(&base, self_name);
            let first =
                unambiguous(&base).and_then(|()| register(&namespace, (marker, Some(self_type))));
            Resolved {
                marker,
                base,
                first,
                first_self: Some(self_type),
            }
        });
        if resolved.first_self == Some(self_type) {
            return resolved.first.clone().map_err(Error::invalid_option);
        }
        // Another `Self` (a provided trait method, or a generic impl): one namespace each.
        static BY_SELF: OnceLock<Mutex<HashMap<Owner, Registered>>> = OnceLock::new();
        let mut by_self = BY_SELF
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let owner = (resolved.marker, Some(self_type));
        by_self
            .entry(owner)
            .or_insert_with(|| {
                unambiguous(&resolved.base)
                    .and_then(|()| register(&with_self(&resolved.base, self_name), owner))
            })
            .clone()
            .map_err(Error::invalid_option)
    }
}

/// A function's marker, registered at link time by the code `#[idempotent]` generates: with all
/// of them, the runtime knows which default namespaces print alike before any is used.
#[doc(hidden)]
#[derive(Debug)]
pub struct Marker {
    /// The marker type's identity and path.
    pub of: fn() -> (TypeId, &'static str),
    /// Where the function is written (`file!()`, `line!()`, `column!()`): one function compiled
    /// into a program twice (a module of both a binary and its library) is still one function.
    pub at: (&'static str, u32, u32),
}

inventory::collect!(Marker);

/// The identity and path of a marker type, for [`Marker`].
#[doc(hidden)]
pub fn marker_of<T: 'static>() -> (TypeId, &'static str) {
    (TypeId::of::<T>(), type_name::<T>())
}

/// The default namespaces that more than one function of the program prints.
fn printed_alike() -> &'static HashMap<String, usize> {
    static ALIKE: OnceLock<HashMap<String, usize>> = OnceLock::new();
    ALIKE.get_or_init(|| {
        alike(
            inventory::iter::<Marker>
                .into_iter()
                .map(|marker| ((marker.of)().1, marker.at)),
        )
    })
}

/// The namespaces printed by functions written in more than one place, with how many places.
fn alike<'a>(
    markers: impl Iterator<Item = (&'a str, (&'static str, u32, u32))>,
) -> HashMap<String, usize> {
    let mut places: HashMap<String, HashSet<(&'static str, u32, u32)>> = HashMap::new();
    for (path, at) in markers {
        places
            .entry(function_namespace(path))
            .or_default()
            .insert(at);
    }
    places
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(namespace, at)| (namespace, at.len()))
        .collect()
}

/// Refuses a default namespace that several functions of the program print.
fn unambiguous(base: &str) -> Result<(), String> {
    match printed_alike().get(base) {
        Some(count) => Err(format!(
            "the default namespace `{base}` is the path of {count} functions of this program \
             (functions of the same name in two blocks, `const _` items or closures of one \
             scope print the same path), so none of them may use it; give each \
             `namespace = \"...\"` so their records stay apart"
        )),
        None => Ok(()),
    }
}

/// A namespace as registered: kept for the program's lifetime, or why it cannot be used.
type Registered = Result<&'static str, String>;

/// `base`, or `base[Self]` when `base` does not name the `Self` type as one of its segments.
fn with_self(base: &str, self_name: &str) -> String {
    let self_path = path_text(self_name);
    let names_self = base.match_indices(self_path.as_str()).any(|(at, _)| {
        let before = base[..at].chars().next_back();
        let after = base[at + self_path.len()..].chars().next();
        matches!(before, None | Some('.' | '<' | ' '))
            && matches!(after, None | Some('.' | '>' | ' '))
    });
    if names_self {
        base.to_owned()
    } else {
        format!("{base}[{self_path}]")
    }
}

/// Records that `namespace` is the default namespace of `owner` (a function, and for a method
/// its `Self` type); a namespace is never shared by two owners. Returns it for the program's
/// lifetime.
fn register(namespace: &str, owner: Owner) -> Registered {
    static TAKEN: OnceLock<Mutex<HashMap<String, (Owner, &'static str)>>> = OnceLock::new();
    let mut taken = TAKEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match taken.get(namespace) {
        Some((taken_by, leaked)) if *taken_by == owner => Ok(leaked),
        Some(_) => Err(format!(
            "the default namespace `{namespace}` belongs to another function of this program \
             too (functions, or `Self` types, of the same name in two blocks, `const _` items or \
             closures of one scope print the same path); give this function \
             `namespace = \"...\"` so their records stay apart"
        )),
        None => {
            // One string per function (and `Self` type) of the program, kept for its lifetime.
            let leaked: &'static str = Box::leak(namespace.to_owned().into_boxed_str());
            taken.insert(namespace.to_owned(), (owner, leaked));
            Ok(leaked)
        }
    }
}

/// Lowercase hex of `bytes` (used in keys, and by stores that keep fingerprints as text).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The bytes of lowercase or uppercase hex; `None` for anything else.
pub fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            // Two hex digits are at most 255, so the cast is exact.
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn no_unscoped_key_spells_a_scoped_one() {
        let scope = "2bd806c97f0e00af1a1fc3328fa763a9";
        for key in ["order-1", &"x".repeat(MAX_PLAIN_KEY + 5)] {
            let scoped = scoped_store_key("idem:", "charge", Some(scope), key).unwrap();
            for forged in [
                format!("{scope} {key}"),
                format!("%S{scope}:{key}"),
                format!("%S{scope}%3A{key}"),
                format!("S{scope}:{key}"),
            ] {
                let unscoped = store_key("idem:", "charge", &forged).unwrap();
                assert_ne!(scoped, unscoped, "{forged}");
            }
            let other = scoped_store_key("idem:", "charge", Some("00"), key).unwrap();
            assert_ne!(scoped, other);
        }
        assert!(scoped_store_key("idem:", "charge", Some(scope), "").is_err());
    }

    use super::*;

    /// What a store key says, read back: (prefix with its `:`, namespace, plain key or
    /// (head, digest) of a hashed one).
    #[derive(Debug, PartialEq, Eq)]
    enum Parsed {
        Plain(String, String, String),
        Hashed(String, String, String, String),
    }

    fn unescape(text: &str) -> String {
        text.replace("%3A", ":")
            .replace("%23", "#")
            .replace("%25", "%")
    }

    /// The inverse of `store_key`: if every store key parses back to the parts that made it,
    /// no two different parts can make the same key.
    fn parse(store_key: &str) -> Parsed {
        let boundary = store_key.rfind([':', '#']).expect("a separator");
        let (front, rest) = store_key.split_at(boundary);
        let (prefix, namespace) = match front.rfind(':') {
            Some(colon) => (&front[..=colon], &front[colon + 1..]),
            None => ("", front),
        };
        let (prefix, namespace) = (prefix.to_owned(), namespace.to_owned());
        match rest.split_at(1) {
            (":", key) => Parsed::Plain(prefix, namespace, unescape(key)),
            (_, hashed) => {
                let (head, digest) = hashed.rsplit_once('~').expect("a digest");
                Parsed::Hashed(prefix, namespace, unescape(head), digest.to_owned())
            }
        }
    }

    fn normalized_prefix(prefix: &str) -> String {
        if prefix.is_empty() || prefix.ends_with(':') {
            prefix.to_owned()
        } else {
            format!("{prefix}:")
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(hex(&bytes).as_bytes()).unwrap(), bytes);
        assert_eq!(unhex(b"abc"), None);
        assert_eq!(unhex(b"zz"), None);
    }

    #[test]
    fn short_keys_are_readable() {
        assert_eq!(
            store_key("idem:", "charge", "order-1").unwrap(),
            "idem:charge:order-1"
        );
        assert_eq!(store_key("", "f", "a b/ü").unwrap(), "f:a b/ü");
        assert_eq!(store_key("idem", "f", "k").unwrap(), "idem:f:k");
        assert_eq!(store_key("", "f", "a:b#c%").unwrap(), "f:a%3Ab%23c%25");
    }

    #[test]
    fn empty_key_and_bad_namespace_are_invalid() {
        assert!(matches!(
            store_key("p:", "f", ""),
            Err(Error::InvalidKey { .. })
        ));
        for ns in ["", "a:b", "a\tb", "a\nb", "a#", "{x}", "a\u{0}"] {
            assert!(
                matches!(store_key("p:", ns, "k"), Err(Error::InvalidKey { .. })),
                "{ns:?}"
            );
        }
        store_key("p:", "<a.B as c.D>.f", "k").unwrap();
    }

    /// Regression: prefix `idem:billing:` + namespace `refund` + key `42` and prefix `idem:` +
    /// namespace `billing` + key `refund:42` were both `idem:billing:refund:42`.
    #[test]
    fn prefix_namespace_and_key_cannot_be_confused() {
        assert_ne!(
            store_key("idem:billing:", "refund", "42").unwrap(),
            store_key("idem:", "billing", "refund:42").unwrap()
        );
        assert_ne!(
            store_key("", "x", "ns:k").unwrap(),
            store_key("x:", "ns", "k").unwrap()
        );
        assert_ne!(
            store_key("a", "b", "k").unwrap(),
            store_key("", "ab", "k").unwrap()
        );
    }

    /// Every key parses back to its own parts, over random strings rich in separators: so the
    /// encoding is one-to-one.
    #[test]
    fn every_store_key_names_one_prefix_namespace_and_key() {
        let alphabet: Vec<char> = ":#%~{}a b3-_.<>é\u{1F600}%3A".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: usize| {
            // xorshift64*: reproducible, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % bound
        };
        let text = |max: usize, next: &mut dyn FnMut(usize) -> usize| -> String {
            let len = next(max + 1);
            (0..len).map(|_| alphabet[next(alphabet.len())]).collect()
        };
        let mut seen = std::collections::HashMap::new();
        for _ in 0..50_000 {
            let prefix = text(6, &mut next);
            let namespace = text(6, &mut next);
            let long = next(10) == 0;
            let key = text(if long { 200 } else { 8 }, &mut next);
            let Ok(built) = store_key(&prefix, &namespace, &key) else {
                assert!(key.is_empty() || check_namespace(&namespace).is_err());
                continue;
            };
            let parsed = parse(&built);
            let prefix = normalized_prefix(&prefix);
            match &parsed {
                Parsed::Plain(p, n, k) => {
                    assert_eq!((p, n, k), (&prefix, &namespace, &key), "{built}");
                }
                Parsed::Hashed(p, n, _, digest) => {
                    assert!(key.len() > MAX_PLAIN_KEY, "{built}");
                    assert_eq!((p, n), (&prefix, &namespace), "{built}");
                    assert_eq!(digest, &hex(&Sha256::digest(key.as_bytes())));
                }
            }
            if let Some(earlier) = seen.insert(built.clone(), (prefix, namespace, key.clone())) {
                assert_eq!(earlier.2, key, "{built} made twice");
            }
        }
    }

    #[test]
    fn long_keys_are_hashed_behind_a_readable_head_without_collisions() {
        let long = "ü".repeat(200);
        let key = store_key("p:", "f", &long).unwrap();
        assert!(key.len() < 200, "{key}");
        assert!(key.starts_with("p:f#üü"));
        let other = store_key("p:", "f", &format!("{long}x")).unwrap();
        assert_ne!(key, other);
        // A short key shaped like a hashed one stays in the plain form.
        let suffix = key.trim_start_matches("p:f#");
        assert_ne!(store_key("p:", "f", suffix).unwrap(), key);
    }

    #[test]
    fn function_namespaces_name_module_type_trait_and_function() {
        assert_eq!(
            function_namespace("app::billing::handle::{{closure}}::__idem_namespace"),
            "app.billing.handle"
        );
        assert_eq!(
            function_namespace(
                "app::billing::<app::billing::Refunds as app::Handler>::handle::{{closure}}::{{closure}}::m"
            ),
            "app.billing.<app.billing.Refunds as app.Handler>.handle"
        );
        assert_eq!(
            function_namespace("app::Generic<_>::run::m"),
            "app.Generic<_>.run"
        );
        for path in ["", "m", "a::{weird}::f::m", "a::\u{0}::m"] {
            let namespace = function_namespace(path);
            if !namespace.is_empty() {
                check_namespace(&namespace).unwrap();
            }
        }
    }

    fn marker() {}

    #[test]
    fn the_namespace_of_a_real_function() {
        static NAMESPACE: FunctionNamespace = FunctionNamespace::new();
        assert_eq!(
            NAMESPACE.get(marker).unwrap(),
            "idem_core.key.tests",
            "the marker's own name is dropped"
        );
    }

    #[test]
    fn a_methods_self_type_is_added_when_its_path_does_not_name_it() {
        assert_eq!(
            with_self("app.<app.A as app.H>.handle", "app::A"),
            "app.<app.A as app.H>.handle"
        );
        assert_eq!(with_self("app.A.run", "app::A"), "app.A.run");
        assert_eq!(
            with_self("app.H.handle", "app::Charges"),
            "app.H.handle[app.Charges]"
        );
        assert_eq!(
            with_self("app.W<_>.run", "app::W<u8>"),
            "app.W<_>.run[app.W<u8>]"
        );
        // A prefix of a segment is not the segment.
        assert_eq!(with_self("app.AB.handle", "app::A"), "app.AB.handle[app.A]");
        // Types local to an async fn or a closure print compiler segments: left out, or made
        // usable inside generic arguments.
        let local = with_self("app.run.Local.m", "app::run::{{closure}}::Local");
        assert_eq!(local, "app.run.Local.m");
        let closure = with_self("app.Retry<_>.run", "app::Retry<app::main::{{closure}}>");
        check_namespace(&closure).unwrap();
    }

    /// Regression (third review): a function compiled into the program twice (a module of
    /// both a binary and its library) counted as two functions printing one path, and was
    /// refused on every call.
    #[test]
    fn one_place_compiled_twice_is_one_function_two_places_are_not() {
        let here = ("src/handlers.rs", 3, 1);
        let there = ("src/other.rs", 9, 5);
        let twice = [
            ("app::handlers::handle::M", here),
            ("app::handlers::handle::M", here),
        ];
        assert!(alike(twice.into_iter()).is_empty());
        let two = [
            ("app::f::{{closure}}::step::M", here),
            ("app::f::{{closure}}::step::M", there),
        ];
        assert_eq!(alike(two.into_iter()).get("app.f.step"), Some(&2));
    }

    #[test]
    fn two_functions_never_share_a_registered_namespace() {
        struct First;
        struct Second;
        let name = "idem_core.key.tests.registered";
        let first = (TypeId::of::<First>(), None);
        assert_eq!(register(name, first).unwrap(), name);
        assert_eq!(register(name, first).unwrap(), name);
        let err = register(name, (TypeId::of::<Second>(), None)).unwrap_err();
        assert!(err.contains("namespace = "), "{err}");
    }
}
