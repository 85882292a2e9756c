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

use sha2::{Digest, Sha256};

use crate::encode::hex;
use crate::Error;

mod namespace;

pub use namespace::{marker_of, FunctionNamespace, Marker};

/// User keys longer than this (in bytes) are stored hashed behind a readable head.
pub const MAX_PLAIN_KEY: usize = 128;

const HEAD: usize = 48;

pub(crate) const FORBIDDEN_IN_NAMESPACE: &[char] = &[':', '#', '{', '}'];

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
    let mut out = String::with_capacity(prefix.len() + namespace.len() + user_key.len() + 72);
    push_head(&mut out, prefix, namespace);
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

/// What every store key of `namespace` under `prefix` starts with: `{prefix}{namespace}`, to
/// be followed by `:` or `#`.
pub(crate) fn key_head(prefix: &str, namespace: &str) -> Result<String, Error> {
    check_namespace(namespace)?;
    let mut out = String::with_capacity(prefix.len() + namespace.len() + 1);
    push_head(&mut out, prefix, namespace);
    Ok(out)
}

/// Appends the prefix (with a `:` added to one that does not end with it) and the namespace.
fn push_head(out: &mut String, prefix: &str, namespace: &str) {
    out.push_str(prefix);
    if !prefix.is_empty() && !prefix.ends_with(':') {
        out.push(':');
    }
    out.push_str(namespace);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
