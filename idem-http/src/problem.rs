//! The responses the layer makes itself: RFC 9457 problem details with a machine-readable code.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use idem_core::Error;
use serde::Serialize;

/// The header naming the [`Rejection`] code on every response the layer makes itself, so that a
/// client can tell "in flight" from "store down" without reading the body.
pub const IDEMPOTENCY_REJECTION: HeaderName = HeaderName::from_static("idempotency-rejection");

/// The problem `type` base used unless the layer is given another: the code is appended.
pub const DEFAULT_PROBLEM_BASE: &str = "urn:idem:problem:";

/// Why the layer answered a request itself instead of running (or replaying) the handler.
///
/// Each has an HTTP status, a short code (in the problem's `code` member, in its `type` after
/// the base, and in the `Idempotency-Rejection` header) and a title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// 400 `key-missing`: the layer requires a key and the request has none.
    KeyMissing,
    /// 400 `key-malformed`: the key is empty, too long, or not visible ASCII.
    KeyMalformed,
    /// 400 `key-repeated`: more than one `Idempotency-Key` header.
    KeyRepeated,
    /// 400 `body-unreadable`: the request body failed while it was read.
    BodyUnreadable,
    /// 409 `in-flight`: a request with this key is still being processed (or this request's
    /// claim lapsed before its handler could start, so another may be). Retry after
    /// `Retry-After` seconds to get its response.
    InFlight,
    /// 409 `outcome-unknown`: an earlier request with this key ended with an unknown outcome
    /// (its effect may have happened), and the key is held until an operator resolves it
    /// (`idem resolve`): the handler did not run. Retrying gets the resolved response once the
    /// key is resolved.
    OutcomeUnknown,
    /// 413 `body-too-large`: the request body is over the layer's limit, so it cannot be
    /// fingerprinted (the request is refused, never passed through without idempotency).
    BodyTooLarge,
    /// 422 `key-reused`: the key was used before for a different request.
    KeyReused,
    /// 500 `record-corrupt`: the stored record for this key cannot be read.
    RecordCorrupt,
    /// 500 `handler-panicked`: the handler panicked. Its outcome is unknown: the key stays
    /// claimed until its lease lapses (409 meanwhile), then a retry runs the handler again; with
    /// `Idempotency::with_unknown_hold`, it is held longer (409 `outcome-unknown` meanwhile).
    HandlerPanicked,
    /// 500 `not-recorded`: the handler ran, and its result could not be recorded (the store
    /// failed, or the claim lapsed meanwhile). Its effect happened; a retry may run it again.
    NotRecorded,
    /// 500 `misconfigured`: the layer's options are invalid (a message is in the detail).
    Misconfigured,
    /// 500 `response-unrecordable`: in transactional mode, the handler's response could not be
    /// recorded (an event stream, a body over the limit), so its database writes were rolled
    /// back and the response was not sent.
    ResponseUnrecordable,
    /// 500 `transaction-aborted`: in transactional mode, a statement of the handler failed and
    /// aborted the request's transaction (or a deferred constraint failed at commit) while the
    /// handler answered as if it had succeeded: everything was rolled back and the key is free.
    TransactionAborted,
    /// 503 `store-unavailable`: the idempotency store failed; the handler did not run.
    StoreUnavailable,
    /// 503 `over-capacity`: the layer's limit of requests in flight is reached.
    OverCapacity,
    /// 503 `shutting-down`: the service is shutting down and takes no new requests with keys.
    ShuttingDown,
}

impl Rejection {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::KeyMissing | Self::KeyMalformed | Self::KeyRepeated | Self::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Self::InFlight | Self::OutcomeUnknown => StatusCode::CONFLICT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RecordCorrupt
            | Self::HandlerPanicked
            | Self::NotRecorded
            | Self::Misconfigured
            | Self::ResponseUnrecordable
            | Self::TransactionAborted => StatusCode::INTERNAL_SERVER_ERROR,
            Self::StoreUnavailable | Self::OverCapacity | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The short, stable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::KeyMissing => "key-missing",
            Self::KeyMalformed => "key-malformed",
            Self::KeyRepeated => "key-repeated",
            Self::BodyUnreadable => "body-unreadable",
            Self::InFlight => "in-flight",
            Self::OutcomeUnknown => "outcome-unknown",
            Self::BodyTooLarge => "body-too-large",
            Self::KeyReused => "key-reused",
            Self::RecordCorrupt => "record-corrupt",
            Self::HandlerPanicked => "handler-panicked",
            Self::NotRecorded => "not-recorded",
            Self::Misconfigured => "misconfigured",
            Self::ResponseUnrecordable => "response-unrecordable",
            Self::TransactionAborted => "transaction-aborted",
            Self::StoreUnavailable => "store-unavailable",
            Self::OverCapacity => "over-capacity",
            Self::ShuttingDown => "shutting-down",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::KeyMissing => "Idempotency-Key header missing",
            Self::KeyMalformed => "Idempotency-Key header malformed",
            Self::KeyRepeated => "More than one Idempotency-Key header",
            Self::BodyUnreadable => "Request body unreadable",
            Self::InFlight => "A request with this key is in flight",
            Self::OutcomeUnknown => "An earlier request with this key has an unknown outcome",
            Self::BodyTooLarge => "Request body too large",
            Self::KeyReused => "Idempotency-Key reused for another request",
            Self::RecordCorrupt => "Stored response unreadable",
            Self::HandlerPanicked => "Handler failed; outcome unknown",
            Self::NotRecorded => "Result not recorded",
            Self::Misconfigured => "Idempotency layer misconfigured",
            Self::ResponseUnrecordable => "Response not recordable; writes rolled back",
            Self::TransactionAborted => "Transaction aborted by the handler's statements",
            Self::StoreUnavailable => "Idempotency store unavailable",
            Self::OverCapacity => "Too many requests in flight",
            Self::ShuttingDown => "Service shutting down",
        }
    }

    /// This rejection as a problem+json response, with `detail` and, when given, `Retry-After`
    /// (whole seconds, at least 1). `base` prefixes the code in the problem's `type`.
    pub fn to_response<B: From<Bytes>>(
        self,
        base: &str,
        detail: &str,
        retry_after: Option<Duration>,
    ) -> Response<B> {
        let problem = Problem {
            kind: format!("{base}{}", self.code()),
            title: self.title(),
            status: self.status().as_u16(),
            detail,
            code: self.code(),
        };
        // A struct of strings and a number always serializes.
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(IDEMPOTENCY_REJECTION, HeaderValue::from_static(self.code()));
        if let Some(wait) = retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// An error of idem's runtime as the response the layer would give: 409 `in-flight` with
/// `Retry-After`, 422 `key-reused`, 503 `store-unavailable`, 500 `record-corrupt`,
/// `not-recorded` or `transaction-aborted`. For handlers that use `#[idempotent]` themselves, in their error type's
/// `IntoResponse`:
///
/// ```
/// # mod idem { pub use idem_core::*; pub mod http { pub use idem_http::*; } } // the `idem` crate's re-exports
/// use idem::http::problem_response;
///
/// let response: http::Response<bytes::Bytes> =
///     problem_response(&idem::Error::invalid_key("empty"));
/// assert_eq!(response.status(), 500);
/// ```
pub fn problem_response<B: From<Bytes>>(err: &Error) -> Response<B> {
    let (rejection, detail, retry_after) = rejection_for(err, crate::DEFAULT_MAX_RETRY_AFTER);
    rejection.to_response(DEFAULT_PROBLEM_BASE, &detail, retry_after)
}

/// The rejection for an error of idem's runtime, with its detail and, for 409 and 503, a
/// `Retry-After`: the holder's lease remaining capped at `max_retry_after`, or 1 s.
pub(crate) fn rejection_for(
    err: &Error,
    max_retry_after: Duration,
) -> (Rejection, String, Option<Duration>) {
    let soon = Some(Duration::from_secs(1));
    match err {
        Error::InProgress {
            lease_remaining, ..
        } => (
            Rejection::InFlight,
            "a request with this key is being processed; retry after the Retry-After delay to \
             get its response"
                .to_owned(),
            Some(
                lease_remaining
                    .unwrap_or(max_retry_after)
                    .min(max_retry_after),
            ),
        ),
        Error::OutcomeUnknown { .. } => (
            Rejection::OutcomeUnknown,
            "an earlier request with this key ended with an unknown outcome, and the key is held \
             until it is resolved; the handler did not run: retry later to get the resolved \
             response"
                .to_owned(),
            None,
        ),
        Error::KeyReused { .. } => (
            Rejection::KeyReused,
            "this Idempotency-Key was used for a different request (another method, path, query \
             or body); use a new key for a new request"
                .to_owned(),
            None,
        ),
        // Fixed words where the error's own would show the store key (and so the key, the
        // path and the principal's hash) or the store's address.
        Error::Store { .. } => (
            Rejection::StoreUnavailable,
            "the idempotency store failed; the handler did not run, retry later".to_owned(),
            soon,
        ),
        Error::Deadlock { .. } => (
            Rejection::InFlight,
            "the request's transaction waited for a key held by a transaction that waits for it \
             in turn; the handler did not run: retry after the Retry-After delay"
                .to_owned(),
            soon,
        ),
        Error::ClaimLapsed { .. } => (
            Rejection::InFlight,
            "the claim on this key lapsed before the handler could start (the idempotency store \
             answered late); the handler did not run: retry after the Retry-After delay"
                .to_owned(),
            soon,
        ),
        Error::Corrupt { .. } => (
            Rejection::RecordCorrupt,
            "the stored response for this key cannot be read; the handler did not run".to_owned(),
            None,
        ),
        Error::TransactionAborted { .. } => (
            Rejection::TransactionAborted,
            "a statement of the handler failed and aborted its database transaction, though the \
             handler went on as if it had succeeded: nothing it wrote remains, and the key is \
             free; run statements that may fail inside a savepoint, or return an error"
                .to_owned(),
            None,
        ),
        Error::LeaseLost { .. } | Error::NotRecorded { .. } => (
            Rejection::NotRecorded,
            "the handler ran, but its result could not be recorded; a retry may run it again"
                .to_owned(),
            None,
        ),
        _ => (Rejection::Misconfigured, err.to_string(), None),
    }
}

/// RFC 9457 problem details, with the rejection's code as an extension member.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'static str,
}
