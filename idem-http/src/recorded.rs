//! What is recorded of a response, and how it is replayed.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{response, Response, StatusCode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The header that marks a replayed response (as Stripe does; the draft defines none).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The response headers replayed by default: those that describe the recorded body or the
/// resource the request made. Everything else (`Set-Cookie`, `Date`, request ids, trace and
/// rate-limit headers, ...) belongs to the first response only.
pub static DEFAULT_REPLAYED_HEADERS: [HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_DISPOSITION,
    header::CONTENT_LOCATION,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::LINK,
];

/// Headers never replayed, even when allowed: they describe one connection or one message
/// (`Content-Length` is set again from the recorded body), or must not be sent twice.
pub(crate) static NEVER_REPLAYED: [HeaderName; 11] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::DATE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::SET_COOKIE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// A response as recorded: status, the replayable headers in order (a repeated header is
/// several entries), and the body.
///
/// It is recorded as one JSON string, so that recording and replaying cost little more than
/// copying the body:
///
/// ```text
/// 201\n
/// location:/payments/1\n          a header whose value is UTF-8
/// etag;Ij/ZIg==\n                  one whose value is not, in base64
/// \n
/// t{"id":1}                        the body: `t` and UTF-8 text, or `b` and base64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedResponse {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl RecordedResponse {
    /// Records `parts` and `body`, keeping the headers that `replayed` allows.
    pub(crate) fn capture(
        parts: &response::Parts,
        body: Bytes,
        replayed: impl Fn(&HeaderName) -> bool,
    ) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| replayed(name) && !NEVER_REPLAYED.contains(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Self {
            status: parts.status,
            headers,
            body,
        }
    }

    /// The response again, marked `Idempotent-Replayed: true`.
    pub(crate) fn replay<B: From<Bytes>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.reserve(self.headers.len() + 1);
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        response
    }

    fn encode(&self) -> String {
        let mut text = String::with_capacity(self.body.len() + 64 * (self.headers.len() + 1));
        text.push_str(self.status.as_str());
        text.push('\n');
        for (name, value) in &self.headers {
            text.push_str(name.as_str());
            match std::str::from_utf8(value.as_bytes()) {
                Ok(value) => {
                    text.push(':');
                    text.push_str(value);
                }
                Err(_) => {
                    text.push(';');
                    BASE64.encode_string(value.as_bytes(), &mut text);
                }
            }
            text.push('\n');
        }
        text.push('\n');
        match std::str::from_utf8(&self.body) {
            Ok(body) => {
                text.push('t');
                text.push_str(body);
            }
            Err(_) => {
                text.push('b');
                BASE64.encode_string(&self.body, &mut text);
            }
        }
        text
    }

    fn decode(text: &str) -> Result<Self, String> {
        let (status, mut rest) = text
            .split_once('\n')
            .ok_or("the record has no status line")?;
        let status = status
            .parse::<u16>()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| format!("`{status}` is not an HTTP status"))?;
        let mut headers = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or("the record's headers do not end")?;
            rest = after;
            if line.is_empty() {
                break;
            }
            let (name, value) = match line.find([':', ';']) {
                Some(at) if line.as_bytes()[at] == b':' => {
                    (&line[..at], line.as_bytes()[at + 1..].to_vec())
                }
                Some(at) => (
                    &line[..at],
                    BASE64
                        .decode(&line[at + 1..])
                        .map_err(|err| format!("a base64 header value does not decode: {err}"))?,
                ),
                None => return Err(format!("`{line}` is not a header line")),
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let value = HeaderValue::from_bytes(&value)
                .map_err(|_| format!("the value of `{name}` is not a header value"))?;
            headers.push((name, value));
        }
        let body = match rest.split_at_checked(1) {
            Some(("t", body)) => Bytes::copy_from_slice(body.as_bytes()),
            Some(("b", body)) => BASE64
                .decode(body)
                .map(Bytes::from)
                .map_err(|err| format!("a base64 body does not decode: {err}"))?,
            _ => return Err("the record's body has no `t` or `b` marker".to_owned()),
        };
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

impl Serialize for RecordedResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for RecordedResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::decode(&text).map_err(|reason| {
            serde::de::Error::custom(format!("the record is not a response: {reason}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(response: Response<()>) -> response::Parts {
        response.into_parts().0
    }

    #[test]
    fn replays_status_allowed_headers_in_order_and_the_exact_body() {
        let original = parts(
            Response::builder()
                .status(201)
                .header("location", "/payments/1")
                .header("set-cookie", "session=secret")
                .header("link", "</a>; rel=a")
                .header("date", "Fri, 27 Nov 2026 10:00:00 GMT")
                .header("link", "</b>; rel=b")
                .header("x-request-id", "r-1")
                .header("content-type", "application/json")
                .body(())
                .unwrap(),
        );
        let allowed = |name: &HeaderName| {
            DEFAULT_REPLAYED_HEADERS.contains(name) || name == "set-cookie" || name == "date"
        };
        let recorded =
            RecordedResponse::capture(&original, Bytes::from_static(b"{\"id\":1}"), allowed);
        let json = serde_json::to_vec(&recorded).unwrap();
        let back: RecordedResponse = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, recorded);
        let replay: Response<Bytes> = back.replay();
        assert_eq!(replay.status(), 201);
        let headers: Vec<_> = replay
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("location", "/payments/1"),
                ("link", "</a>; rel=a"),
                ("link", "</b>; rel=b"),
                ("content-type", "application/json"),
                ("idempotent-replayed", "true"),
            ]
        );
        assert_eq!(replay.body().as_ref(), b"{\"id\":1}");
    }

    #[test]
    fn binary_bodies_and_header_values_round_trip() {
        let original = parts(
            Response::builder()
                .header("etag", HeaderValue::from_bytes(b"\"\xff\"").unwrap())
                .body(())
                .unwrap(),
        );
        let body = [0u8, 159, 146, 150, 255];
        let recorded =
            RecordedResponse::capture(&original, Bytes::copy_from_slice(&body), |_| true);
        let back: RecordedResponse =
            serde_json::from_slice(&serde_json::to_vec(&recorded).unwrap()).unwrap();
        let replay: Response<Bytes> = back.replay();
        assert_eq!(replay.body().as_ref(), body);
        assert_eq!(replay.headers()["etag"].as_bytes(), b"\"\xff\"");
    }

    #[test]
    fn bodies_with_blank_lines_and_markers_round_trip() {
        let original = parts(Response::builder().status(204).body(()).unwrap());
        for body in ["", "t", "b", "\n\n", "201\n\nt", "x:y\n\nz"] {
            let recorded = RecordedResponse::capture(
                &original,
                Bytes::copy_from_slice(body.as_bytes()),
                |_| true,
            );
            let back: RecordedResponse =
                serde_json::from_slice(&serde_json::to_vec(&recorded).unwrap()).unwrap();
            assert_eq!(back, recorded, "{body:?}");
        }
    }

    #[test]
    fn a_record_that_is_not_a_response_is_an_error_not_a_panic() {
        for text in [
            "",
            "1000\n\nt",
            "abc\n\nt",
            "200\nbad name:x\n\nt",
            "200\nx:a\u{7f}b\n\nt",
            "200\nx;!!\n\nt",
            "200\nx-no-separator\n\nt",
            "200\nx:1\n",
            "200\n\n",
            "200\n\nq",
            "200\n\nb!!",
        ] {
            let json = serde_json::to_vec(text).unwrap();
            assert!(
                serde_json::from_slice::<RecordedResponse>(&json).is_err(),
                "{text:?}"
            );
        }
        assert!(serde_json::from_slice::<RecordedResponse>(b"42").is_err());
    }
}
