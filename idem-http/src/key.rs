//! The `Idempotency-Key` request header: finding it and parsing its value.

use std::fmt;

use http::header::{HeaderMap, HeaderName};
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::fingerprint::request_uri;

/// The header's name, `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, in characters (the draft's recommendation, and Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key, as sent by the client.
///
/// The draft makes the header an RFC 8941 sf-string (`Idempotency-Key: "8e03978e-…"`), and most
/// clients send the value bare (`Idempotency-Key: 8e03978e-…`): both are accepted. A key is 1 to
/// 255 characters, all visible ASCII (a quoted key may also hold spaces).
///
/// ```
/// # mod idem { pub mod http { pub use idem_http::*; } } // the `idem` crate's re-export
/// use idem::http::IdempotencyKey;
///
/// assert_eq!(IdempotencyKey::parse(b"\"a-1\"").unwrap().as_str(), "a-1");
/// assert_eq!(IdempotencyKey::parse(b"a-1").unwrap().as_str(), "a-1");
/// assert!(IdempotencyKey::parse(b"").is_err());
/// assert!(IdempotencyKey::parse("clé".as_bytes()).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a request's `Idempotency-Key` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The request has no `Idempotency-Key` header.
    Missing,
    /// The request has more than one `Idempotency-Key` header (or one listing several keys).
    Repeated,
    /// The value is not a key.
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str(
                "this request needs an `Idempotency-Key` header: a unique value per operation \
                 (a UUID, say), sent again unchanged on every retry of the same operation",
            ),
            Self::Repeated => f.write_str(
                "the request has more than one `Idempotency-Key` header; send exactly one",
            ),
            Self::Malformed { reason } => write!(
                f,
                "the `Idempotency-Key` header is malformed: {reason}; send 1 to {MAX_KEY_LEN} \
                 visible ASCII characters, bare or as a quoted string (`\"...\"`)"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

impl KeyError {
    /// The 400 the layer answers with.
    pub(crate) fn rejection(&self) -> crate::Rejection {
        match self {
            Self::Missing => crate::Rejection::KeyMissing,
            Self::Repeated => crate::Rejection::KeyRepeated,
            Self::Malformed { .. } => crate::Rejection::KeyMalformed,
        }
    }
}

impl IdempotencyKey {
    /// The key in a request's headers, or why there is none: missing, repeated or malformed.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, KeyError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).into_iter();
        let value = values.next().ok_or(KeyError::Missing)?;
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        Self::parse(value.as_bytes())
    }

    /// Parses one header value: an sf-string, or a bare key.
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        // RFC 8941 parsers drop surrounding spaces; `HeaderValue` already trims tabs.
        let value = value.trim_ascii();
        let key = match value.first() {
            Some(b'"') => parse_sf_string(value)?,
            Some(_) => parse_bare(value)?,
            None => return Err(malformed("it is empty")),
        };
        if key.is_empty() {
            return Err(malformed("it is empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(malformed("it is longer than 255 characters"));
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn malformed(reason: &'static str) -> KeyError {
    KeyError::Malformed { reason }
}

/// `"..."` with `\"` and `\\` escapes, and nothing after the closing quote (RFC 8941 §4.2.5;
/// parameters are refused rather than silently dropped).
fn parse_sf_string(value: &[u8]) -> Result<String, KeyError> {
    let mut key = String::with_capacity(value.len());
    let mut bytes = value[1..].iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(char::from(escaped)),
                _ => return Err(malformed("a quoted key may escape only `\"` and `\\`")),
            },
            b'"' => {
                return if bytes.as_slice().is_empty() {
                    Ok(key)
                } else {
                    Err(malformed("there is text after the closing quote"))
                };
            }
            b' '..=b'~' => key.push(char::from(byte)),
            _ => return Err(not_ascii()),
        }
    }
    Err(malformed("the quoted key has no closing quote"))
}

/// A bare key: visible ASCII, no quotes. A comma means a proxy joined several headers into one.
fn parse_bare(value: &[u8]) -> Result<String, KeyError> {
    for &byte in value {
        match byte {
            b',' => return Err(KeyError::Repeated),
            b'"' => return Err(malformed("a bare key may not contain `\"`")),
            b'!'..=b'~' => {}
            b' ' | b'\t' => return Err(malformed("a bare key may not contain spaces")),
            _ => return Err(not_ascii()),
        }
    }
    // Every byte is visible ASCII, so this is UTF-8.
    Ok(value.iter().map(|&byte| char::from(byte)).collect())
}

fn not_ascii() -> KeyError {
    malformed("it holds a character that is not visible ASCII")
}

/// The key a request is stored under, within the layer's namespace: `{scope} {METHOD} {path}
/// {key}`. The scope is a hash of the principal (`-` when there is none); the method and path
/// hold no spaces, so the parts cannot run into each other. The host is not in it: a retry may
/// reach another instance under another name (tenants told apart by host need a `scope`).
pub(crate) fn scoped_key(scope: Option<&str>, parts: &Parts, key: &str) -> String {
    let scope = match scope {
        Some(scope) => idem_core::encode::hex(&Sha256::digest(scope.as_bytes())[..16]),
        None => "-".to_owned(),
    };
    format!(
        "{scope} {} {} {key}",
        parts.method,
        request_uri(parts).path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(value: &str) -> Result<String, KeyError> {
        IdempotencyKey::parse(value.as_bytes()).map(|key| key.0)
    }

    /// Each refusal says what is wrong and what to send instead. The match makes a new variant
    /// fail to compile here until it has a case.
    #[test]
    fn every_refusal_says_what_to_send() {
        let cases = [
            KeyError::Missing,
            KeyError::Repeated,
            KeyError::Malformed {
                reason: "it is empty",
            },
        ];
        for err in cases {
            let says = match err {
                KeyError::Missing => "a unique value per operation",
                KeyError::Repeated => "send exactly one",
                KeyError::Malformed { .. } => "it is empty; send 1 to",
            };
            let message = err.to_string();
            assert!(message.contains(says), "{message:?} should say {says:?}");
            assert!(!message.contains("  "), "{message:?} has a run of spaces");
        }
    }

    #[test]
    fn both_forms_parse_to_the_same_key() {
        assert_eq!(parse("\"8e03978e-40d5\"").unwrap(), "8e03978e-40d5");
        assert_eq!(parse("8e03978e-40d5").unwrap(), "8e03978e-40d5");
        assert_eq!(parse("  \"padded\"  ").unwrap(), "padded");
        assert_eq!(
            parse(r#""say \"hi\" \\ bye""#).unwrap(),
            r#"say "hi" \ bye"#
        );
        assert_eq!(parse("\"with space\"").unwrap(), "with space");
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        for bad in [
            "",
            "\"\"",
            "\"open",
            "\"a\";param=1",
            "\"a\"b",
            r#""bad \n escape""#,
            "two words",
            "quo\"te",
            "clé",
            "\"clé\"",
            "tab\there",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(
                matches!(err, KeyError::Malformed { .. }),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(parse("a,b"), Err(KeyError::Repeated));
    }

    #[test]
    fn the_length_limit_is_255_characters_after_unquoting() {
        assert!(parse(&"k".repeat(255)).is_ok());
        assert!(parse(&format!("\"{}\"", "k".repeat(255))).is_ok());
        assert!(parse(&"k".repeat(256)).is_err());
        assert!(parse(&format!("\"{}\"", "k".repeat(256))).is_err());
        // Escapes count once: 255 characters, 510 bytes on the wire.
        assert_eq!(
            parse(&format!("\"{}\"", "\\\"".repeat(255))).unwrap().len(),
            255
        );
    }

    #[test]
    fn headers_must_hold_exactly_one_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Missing)
        );
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers).unwrap().as_str(),
            "a"
        );
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Repeated)
        );
    }

    #[test]
    fn any_bytes_parse_without_panicking() {
        for byte in 0..=255u8 {
            let value = [b'"', byte, b'"'];
            let _ = IdempotencyKey::parse(&value);
            let _ = IdempotencyKey::parse(&value[1..2]);
        }
    }

    fn parts(method: &str, uri: &str) -> Parts {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn scoped_keys_keep_scopes_methods_and_paths_apart() {
        let post = parts("POST", "/payments?x=1");
        let patch = parts("PATCH", "/payments");
        let keys = [
            scoped_key(None, &post, "k"),
            scoped_key(Some("alice"), &post, "k"),
            scoped_key(Some("bob"), &post, "k"),
            scoped_key(Some("alice"), &patch, "k"),
            scoped_key(Some("alice"), &parts("POST", "/refunds"), "k"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(!keys[1].contains("alice"), "{}", keys[1]);
        assert!(keys[0].ends_with(" POST /payments k"), "{}", keys[0]);
    }
}
