//! Store keys: `{prefix}{namespace}:{key}`, or for long keys
//! `{prefix}{namespace}#{readable head}~{sha256 of the key}`.
//!
//! The two forms use different separators after the namespace (which may contain neither), so a
//! short key can never equal the hashed form of a long one, and keys of different namespaces
//! never collide.

use sha2::{Digest, Sha256};

use crate::Error;

/// User keys longer than this (in bytes) are stored hashed behind a readable head.
pub const MAX_PLAIN_KEY: usize = 128;
const HEAD: usize = 48;
const FORBIDDEN_IN_NAMESPACE: &[char] = &[':', '#', '{', '}'];

/// Builds the store key for `user_key` in `namespace`.
pub fn store_key(prefix: &str, namespace: &str, user_key: &str) -> Result<String, Error> {
    check_namespace(namespace)?;
    if user_key.is_empty() {
        return Err(Error::invalid_key(format!(
            "the key for `{namespace}` is empty; derive it from the request's idempotency key or id"
        )));
    }
    if user_key.len() <= MAX_PLAIN_KEY {
        return Ok(format!("{prefix}{namespace}:{user_key}"));
    }
    let mut head_end = HEAD;
    while !user_key.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let digest = Sha256::digest(user_key.as_bytes());
    Ok(format!(
        "{prefix}{namespace}#{}~{}",
        &user_key[..head_end],
        hex(&digest)
    ))
}

/// Checks a namespace: not empty, no `:`, `#`, `{`, `}` or whitespace.
pub fn check_namespace(namespace: &str) -> Result<(), Error> {
    if namespace.is_empty()
        || namespace
            .chars()
            .any(|c| c.is_whitespace() || FORBIDDEN_IN_NAMESPACE.contains(&c))
    {
        return Err(Error::invalid_key(format!(
            "namespace `{namespace}` must be non-empty and contain no whitespace, `:`, `#`, `{{` or `}}`"
        )));
    }
    Ok(())
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
    use super::*;

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
        assert_eq!(store_key("", "f", "a:b c/ü").unwrap(), "f:a:b c/ü");
    }

    #[test]
    fn empty_key_and_bad_namespace_are_invalid() {
        assert!(matches!(
            store_key("p:", "f", ""),
            Err(Error::InvalidKey { .. })
        ));
        for ns in ["", "a:b", "a b", "a#", "{x}"] {
            assert!(
                matches!(store_key("p:", ns, "k"), Err(Error::InvalidKey { .. })),
                "{ns}"
            );
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
