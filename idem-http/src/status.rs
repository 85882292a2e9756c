//! What gets recorded: a response's status decides its record, and an event stream is never
//! buffered.

use http::StatusCode;
use idem_core::Disposition;

/// What a response's status means for its record by default: 5xx, 408 Request Timeout, 425 Too
/// Early and 429 Too Many Requests are transient, so the claim is released and a retry runs the
/// handler again; everything else is the request's result, recorded and replayed.
pub fn default_on_status(status: StatusCode) -> Disposition {
    match status.as_u16() {
        408 | 425 | 429 | 500..=599 => Disposition::Release,
        _ => Disposition::Record,
    }
}

pub(crate) fn is_event_stream(parts: &http::response::Parts) -> bool {
    parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
}
