//! The default request fingerprint, and the composite store key.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::request::Parts;
use idem_core::Fingerprint;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The fingerprint the layer uses unless given another: the method, the path, the query, and the
/// body — as canonical JSON when the request says it is JSON and parses as JSON (so key order
/// and whitespace do not matter), else as raw bytes.
///
/// A key sent again with a different fingerprint gets 422. Compose your own with this one, e.g.
/// to ignore a field that changes on every retry:
///
/// ```
/// # mod idem { pub mod http { pub use idem_http::*; } } // the `idem` crate's re-export
/// use idem::http::default_fingerprint;
///
/// let request = http::Request::post("/payments")
///     .header("content-type", "application/json")
///     .body(())
///     .unwrap();
/// let (parts, ()) = request.into_parts();
/// let a = default_fingerprint(&parts, br#"{"amount": 100, "currency": "EUR"}"#);
/// let b = default_fingerprint(&parts, br#"{ "currency": "EUR", "amount": 100 }"#);
/// assert_eq!(a, b);
/// assert_ne!(a, default_fingerprint(&parts, br#"{"amount": 200, "currency": "EUR"}"#));
/// ```
pub fn default_fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let parsed = is_json(parts)
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten()
        .and_then(|json| Some((json, number_literals(body)?)));
    let body = match parsed {
        // The parsed value is canonical in key order and whitespace, but it parses numbers into
        // 64 bits: the number literals as written keep `100000000000000000001` and
        // `100000000000000000000` apart.
        Some((json, literals)) => Value::Array(vec![
            "json".into(),
            json,
            literals.into_iter().map(Value::from).collect(),
        ]),
        // Not JSON, invalid JSON, or JSON whose objects repeat a member name (its parsed value
        // keeps only the last, so `{"to":"a","to":"b"}` would read as `{"to":"b"}`): the exact
        // bytes count.
        _ => Value::Array(vec![
            "bytes".into(),
            idem_core::encode::hex(&Sha256::digest(body)).into(),
        ]),
    };
    let uri = request_uri(parts);
    let request = Value::Array(vec![
        parts.method.as_str().into(),
        uri.path().into(),
        uri.query().unwrap_or("").into(),
        body,
    ]);
    Fingerprint::of_value(&request)
}

/// The request's URI as the client sent it: inside an axum router nested under a prefix, the
/// request the layer sees has the prefix stripped, and two tenants' `/tenants/{id}/payments`
/// would both read `/payments`.
pub(crate) fn request_uri(parts: &Parts) -> &http::Uri {
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    &parts.uri
}

/// The number literals of a (valid) JSON text as written, each with its path (object keys,
/// decoded, and array indices), sorted: the same whatever the key order or whitespace, and
/// different when two numbers trade places. `None` when an object repeats a member name.
fn number_literals(json: &[u8]) -> Option<Vec<String>> {
    /// Where the scanner is: in an object (its current key, whether a key comes next, and the
    /// keys seen) or in an array (the current index).
    enum Frame<'a> {
        Object {
            key: Cow<'a, str>,
            expect_key: bool,
            seen: SeenKeys<'a>,
        },
        Array {
            index: usize,
        },
    }
    let path = |frames: &[Frame<'_>]| {
        let mut path = String::new();
        for frame in frames {
            match frame {
                // A key as a JSON string: quoted and escaped, so paths cannot run together.
                Frame::Object { key, .. } => {
                    path.push_str(&serde_json::to_string(key).unwrap_or_default());
                }
                Frame::Array { index } => {
                    let _ = write!(path, "[{index}]");
                }
            }
        }
        path
    };
    let mut literals = Vec::new();
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let mut at = 0;
    while at < json.len() {
        let byte = json[at];
        match byte {
            b'{' => frames.push(Frame::Object {
                key: Cow::Borrowed(""),
                expect_key: true,
                seen: SeenKeys::default(),
            }),
            b'[' => frames.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                None => {}
            },
            b'"' => {
                let start = at;
                let mut escaped = false;
                at += 1;
                while at < json.len() && json[at] != b'"' {
                    escaped |= json[at] == b'\\';
                    at += if json[at] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object {
                    key,
                    expect_key,
                    seen,
                }) = frames.last_mut()
                {
                    if *expect_key {
                        *key = json_key(&json[start..(at + 1).min(json.len())], escaped);
                        *expect_key = false;
                        if !seen.insert(key.clone()) {
                            return None;
                        }
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at + 1 < json.len()
                    && matches!(json[at + 1], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    at += 1;
                }
                let mut literal = path(&frames);
                literal.push('=');
                literal.push_str(&String::from_utf8_lossy(&json[start..=at]));
                literals.push(literal);
            }
            _ => {}
        }
        at += 1;
    }
    literals.sort_unstable();
    Some(literals)
}

/// A member name, decoded from its quoted text: borrowed when it has no escape.
fn json_key(quoted: &[u8], escaped: bool) -> Cow<'_, str> {
    if !escaped && quoted.len() >= 2 {
        if let Ok(key) = std::str::from_utf8(&quoted[1..quoted.len() - 1]) {
            return Cow::Borrowed(key);
        }
    }
    Cow::Owned(serde_json::from_slice(quoted).unwrap_or_default())
}

/// The member names an object has shown so far: a short list while it is short (most objects),
/// a hash set beyond, so that a body with a huge object is not quadratic.
#[derive(Default)]
struct SeenKeys<'a> {
    few: Vec<Cow<'a, str>>,
    many: Option<std::collections::HashSet<Cow<'a, str>>>,
}

impl<'a> SeenKeys<'a> {
    /// Longest list searched one by one.
    const FEW: usize = 16;

    /// Adds `key`; `false` when it was there already.
    fn insert(&mut self, key: Cow<'a, str>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > Self::FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// `application/json`, or any `+json` type.
fn is_json(parts: &Parts) -> bool {
    let Some(content_type) = parts.headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(content_type) = content_type.to_str() else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, content_type: Option<&str>) -> Parts {
        let mut request = http::Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(()).unwrap().into_parts().0
    }

    /// Issue 20, defect 3: a body that repeats a member name is not the body with only its last
    /// value (the parsed value keeps only the last), so its key is another request's (422).
    #[test]
    fn repeated_member_names_are_another_request() {
        let json = Some("application/json");
        let plain = default_fingerprint(&parts("POST", "/t", json), br#"{"to":"bob"}"#);
        let repeated =
            default_fingerprint(&parts("POST", "/t", json), br#"{"to":"alice","to":"bob"}"#);
        assert_ne!(plain, repeated);
        let nested = br#"{"a":{"to":"bob"},"b":[{"x":1,"x":1}]}"#;
        let once = br#"{"a":{"to":"bob"},"b":[{"x":1}]}"#;
        assert_ne!(
            default_fingerprint(&parts("POST", "/t", json), nested),
            default_fingerprint(&parts("POST", "/t", json), once)
        );
        // The same key in two objects is no repetition.
        let siblings = br#"{"a":{"to":"bob"},"b":{"to":"bob"}}"#;
        let reordered = br#"{"b":{"to":"bob"}, "a":{"to":"bob"}}"#;
        assert_eq!(
            default_fingerprint(&parts("POST", "/t", json), siblings),
            default_fingerprint(&parts("POST", "/t", json), reordered)
        );
    }

    /// The same in an object too long for the short list of names seen (the hash set's path),
    /// and with an escaped name that repeats an unescaped one.
    #[test]
    fn repeated_member_names_are_found_in_long_objects_and_through_escapes() {
        let json = parts("POST", "/t", Some("application/json"));
        let members: Vec<String> = (0..40).map(|n| format!(r#""k{n}":{n}"#)).collect();
        let once = format!("{{{}}}", members.join(","));
        let twice = format!(r#"{{{},"k3":3}}"#, members.join(","));
        let (once, twice) = (
            default_fingerprint(&json, once.as_bytes()),
            default_fingerprint(&json, twice.as_bytes()),
        );
        assert_ne!(once, twice);
        assert_ne!(
            default_fingerprint(&json, br#"{"to":"a","\u0074o":"b"}"#),
            default_fingerprint(&json, br#"{"to":"b"}"#)
        );
        assert_eq!(number_literals(br#"{"a":1,"\u0061":2}"#), None);
        assert_eq!(
            number_literals(br#"{"\u0061":[1,{"b":2}]}"#),
            Some(vec![r#""a"[0]=1"#.to_owned(), r#""a"[1]"b"=2"#.to_owned()])
        );
    }

    #[test]
    fn method_path_query_and_body_all_count() {
        let json = Some("application/json");
        let base = default_fingerprint(&parts("POST", "/a?x=1", json), b"{}");
        for other in [
            default_fingerprint(&parts("PATCH", "/a?x=1", json), b"{}"),
            default_fingerprint(&parts("POST", "/b?x=1", json), b"{}"),
            default_fingerprint(&parts("POST", "/a?x=2", json), b"{}"),
            default_fingerprint(&parts("POST", "/a?x=1", json), b"[]"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn json_is_canonical_other_bodies_are_bytes() {
        let json = parts("POST", "/", Some("application/problem+json; charset=utf-8"));
        assert_eq!(
            default_fingerprint(&json, br#"{"a":1,"b":[1,2]}"#),
            default_fingerprint(&json, b"{ \"b\": [1, 2],\n \"a\": 1 }")
        );
        let text = parts("POST", "/", Some("text/plain"));
        assert_ne!(
            default_fingerprint(&text, br#"{"a":1,"b":2}"#),
            default_fingerprint(&text, br#"{"b":2,"a":1}"#)
        );
        // Invalid JSON falls back to its bytes, without panicking.
        let invalid = default_fingerprint(&json, b"{\"a\":");
        assert_eq!(invalid, default_fingerprint(&json, b"{\"a\":"));
        assert_ne!(invalid, default_fingerprint(&json, b"{\"a\": "));
    }

    #[test]
    fn json_numbers_count_as_written() {
        let json = parts("POST", "/", Some("application/json"));
        let print = |body: &str| default_fingerprint(&json, body.as_bytes());
        assert_ne!(
            print(r#"{"amount": 100000000000000000000001}"#),
            print(r#"{"amount": 100000000000000000000000}"#)
        );
        assert_ne!(
            print(r#"{"a": 0.10000000000000000001}"#),
            print(r#"{"a": 0.1}"#)
        );
        assert_eq!(
            print(r#"{"a": 1, "b": "x\"1", "c": [2.5, -3e7]}"#),
            print(r#"{"c":[2.5,-3e7],"b":"x\"1","a":1}"#)
        );
        assert_eq!(
            number_literals(br#"{"k":"1\"2","n":-1.5e3,"m":[7,{"x":8}],"t":true,"f":false}"#)
                .unwrap_or_default(),
            [r#""m"[0]=7"#, r#""m"[1]"x"=8"#, r#""n"=-1.5e3"#]
        );
        // Numbers that parse alike but trade places are another request.
        assert_ne!(
            print(r#"{"from": 100000000000000000000001, "to": 100000000000000000000002}"#),
            print(r#"{"from": 100000000000000000000002, "to": 100000000000000000000001}"#)
        );
        assert_ne!(
            print("[0.10000000000000000001, 0.10000000000000000002]"),
            print("[0.10000000000000000002, 0.10000000000000000001]")
        );
        // Escaped and plain keys are the same key.
        assert_eq!(
            print(r#"{"\u0041": 100000000000000000000001}"#),
            print(r#"{"A": 100000000000000000000001}"#)
        );
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// Fingerprints are stored with claims and records: one computed differently after an
    /// upgrade would refuse every retry of a request made before it (422). These are the values
    /// of idem 0.1.0; a change here is a breaking change of the stored format.
    #[test]
    fn fingerprints_stay_the_values_stored_before() {
        let request = |content_type: &str| {
            http::Request::post("/payments?tenant=7")
                .header("content-type", content_type)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let json = request("application/json");
        let cases: [(&Parts, &[u8]); 4] = [
            (
                &json,
                br#"{"amount": 1250, "currency": "EUR", "to": {"iban": "DE02\u00e9", "n": [1, 2.50, -3e2]}}"#,
            ),
            (&json, br#"{"b":{},"a":[],"c":null,"d":true}"#),
            (&json, br#"{"to":"a","to":"b"}"#),
            (&request("text/plain"), b"plain bytes"),
        ];
        let printed: Vec<String> = cases
            .iter()
            .map(|(parts, body)| idem_core::encode::hex(&default_fingerprint(parts, body).0))
            .collect();
        assert_eq!(printed, PINNED);
    }

    const PINNED: [&str; 4] = [
        "589f32748377915b282fb1a6d8a4c937b7bbd89979aabab5d3ebf7004450ce52",
        "9cad006b9df2458517b9ddaf6edfac49fa0b2fa6b27f58e7a58e505e7f76b488",
        "941a47412554f17acde5623fd57f22b1b4230e0b0ed0c7bf8fac8dcf00f89fc1",
        "c7918230b4bfc50aa44cc76a2b85042b3935a91c74d736b51738d0692342a47e",
    ];
}
