//! What is recorded of a response, and how it is replayed.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{response, Response, StatusCode};
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordedResponse {
    status: u16,
    headers: Vec<(String, Text)>,
    body: Text,
}

/// Bytes as JSON: UTF-8 text as is (most bodies are JSON or text), anything else in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Text {
    #[serde(rename = "text")]
    Utf8(String),
    #[serde(rename = "base64")]
    Base64(String),
}

impl Text {
    fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Text::Utf8(text.to_owned()),
            Err(_) => Text::Base64(BASE64.encode(bytes)),
        }
    }

    fn bytes(&self) -> Result<Bytes, String> {
        match self {
            Text::Utf8(text) => Ok(Bytes::copy_from_slice(text.as_bytes())),
            Text::Base64(text) => BASE64
                .decode(text)
                .map(Bytes::from)
                .map_err(|err| format!("a base64 field does not decode: {err}")),
        }
    }
}

impl RecordedResponse {
    /// Records `parts` and `body`, keeping the headers that `replayed` allows.
    pub(crate) fn capture(
        parts: &response::Parts,
        body: &[u8],
        replayed: impl Fn(&HeaderName) -> bool,
    ) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| replayed(name) && !NEVER_REPLAYED.contains(name))
            .map(|(name, value)| (name.as_str().to_owned(), Text::of(value.as_bytes())))
            .collect();
        RecordedResponse {
            status: parts.status.as_u16(),
            headers,
            body: Text::of(body),
        }
    }

    /// The response again, marked `Idempotent-Replayed: true`; an error says what in the record
    /// is not a response (a record this layer did not write).
    pub(crate) fn replay<B: From<Bytes>>(&self) -> Result<Response<B>, String> {
        let status = StatusCode::from_u16(self.status)
            .map_err(|_| format!("status {} is not an HTTP status", self.status))?;
        let mut response = Response::new(B::from(self.body.bytes()?));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let value = HeaderValue::from_maybe_shared(value.bytes()?)
                .map_err(|_| format!("the value of `{name}` is not a header value"))?;
            headers.append(name, value);
        }
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        Ok(response)
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
        let recorded = RecordedResponse::capture(&original, b"{\"id\":1}", allowed);
        let json = serde_json::to_vec(&recorded).unwrap();
        let back: RecordedResponse = serde_json::from_slice(&json).unwrap();
        let replay: Response<Bytes> = back.replay().unwrap();
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
        let recorded = RecordedResponse::capture(&original, &body, |_| true);
        let back: RecordedResponse =
            serde_json::from_slice(&serde_json::to_vec(&recorded).unwrap()).unwrap();
        let replay: Response<Bytes> = back.replay().unwrap();
        assert_eq!(replay.body().as_ref(), body);
        assert_eq!(replay.headers()["etag"].as_bytes(), b"\"\xff\"");
    }

    #[test]
    fn a_record_that_is_not_a_response_is_an_error_not_a_panic() {
        for json in [
            r#"{"status":1000,"headers":[],"body":{"text":""}}"#,
            r#"{"status":200,"headers":[["bad name",{"text":"x"}]],"body":{"text":""}}"#,
            r#"{"status":200,"headers":[["x",{"text":"a\nb"}]],"body":{"text":""}}"#,
            r#"{"status":200,"headers":[],"body":{"base64":"!!"}}"#,
        ] {
            let recorded: RecordedResponse = serde_json::from_str(json).unwrap();
            assert!(recorded.replay::<Bytes>().is_err(), "{json}");
        }
    }
}
