//! For axum handlers that use `#[idempotent]` themselves: an error type that answers as the
//! layer does, and a layer that marks their replays.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use idem_core::{Error, Served};
use tower_service::Service;

use crate::problem::problem_response;
use crate::recorded::IDEMPOTENT_REPLAYED;

/// An error an axum handler can return as it is: idem's errors become the responses the layer
/// gives (409 `in-flight` with `Retry-After`, 422 `key-reused`, 503 `store-unavailable`, ...,
/// as problem+json), and the handler's own failures a problem with the status it chooses.
///
/// With it, a handler under `#[idempotent]` needs no error type of its own:
///
/// ```
/// use axum::{http::StatusCode, Json};
/// # mod idem { pub mod http { pub use idem_http::*; } } // the `idem` crate's re-export
/// use idem::http::{IdempotencyKey, Problem};
///
/// async fn refund(key: IdempotencyKey, Json(cents): Json<u64>) -> Result<Json<u64>, Problem> {
///     if cents == 0 {
///         return Err(Problem::status(StatusCode::BAD_REQUEST, "nothing to refund"));
///     }
///     Ok(Json(cents))
/// }
/// ```
///
/// Under `#[idempotent]`, every `Err` releases the key, so a retry runs the handler again (give
/// `on_error` to decide otherwise).
#[derive(Debug)]
pub struct Problem {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Idem(Error),
    Status(StatusCode, String),
}

impl Problem {
    /// A problem of the handler's own: `status` with `detail` for the client. `status` should be
    /// a 4xx or 5xx: an `Err` under `#[idempotent]` rolls back or releases what the handler
    /// did, so a success status would tell the client of an effect that is gone; any other
    /// status is answered as 500.
    pub fn status(status: StatusCode, detail: impl Into<String>) -> Self {
        let status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self {
            kind: Kind::Status(status, detail.into()),
        }
    }

    /// idem's error, when this problem is one.
    pub fn idem_error(&self) -> Option<&Error> {
        match &self.kind {
            Kind::Idem(err) => Some(err),
            Kind::Status(..) => None,
        }
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        Self {
            kind: Kind::Idem(err),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Idem(err) => err.fmt(f),
            Kind::Status(status, detail) => write!(f, "{status}: {detail}"),
        }
    }
}

impl std::error::Error for Problem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Idem(err) => Some(err),
            Kind::Status(..) => None,
        }
    }
}

/// RFC 9457 problem details of a handler's own failure: `about:blank` and the status's reason.
#[derive(serde::Serialize)]
struct OwnProblem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: &'a str,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        match &self.kind {
            Kind::Idem(err) => problem_response(err),
            Kind::Status(status, detail) => {
                let problem = OwnProblem {
                    kind: "about:blank",
                    title: status.canonical_reason().unwrap_or("Error"),
                    status: status.as_u16(),
                    detail,
                };
                // A struct of strings and a number always serializes.
                let body = serde_json::to_vec(&problem).unwrap_or_default();
                let mut response = (*status, body).into_response();
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                response
            }
        }
    }
}

/// A layer for routes whose handlers use `#[idempotent]` themselves (not behind an
/// [`IdempotencyLayer`](crate::IdempotencyLayer)): a response whose handler's idempotent call
/// was replayed, or waited for the first call's result, gets `Idempotent-Replayed: true`, as
/// the layer's replays do.
///
/// ```
/// use axum::{routing::post, Router};
/// # mod idem { pub mod http { pub use idem_http::*; } } // the `idem` crate's re-export
/// use idem::http::MarkReplayedLayer;
///
/// # async fn create_payment() {}
/// let app: Router = Router::new()
///     .route("/payments", post(create_payment))
///     .layer(MarkReplayedLayer::new());
/// ```
///
/// It tells by `idem::served`, so it sees the idempotent call that
/// finished last inside the handler's future: use it on handlers that make one idempotent call
/// (a handler that makes another after it is marked by the other's outcome), and not on one
/// that spawns the call on another task (not marked). An outer `served` around the layer sees
/// nothing: this layer's scope is the innermost.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct MarkReplayedLayer;

impl MarkReplayedLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> tower_layer::Layer<S> for MarkReplayedLayer {
    type Service = MarkReplayed<S>;

    fn layer(&self, inner: S) -> MarkReplayed<S> {
        MarkReplayed { inner }
    }
}

/// The service of [`MarkReplayedLayer`].
#[derive(Debug, Clone)]
pub struct MarkReplayed<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for MarkReplayed<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let (response, served) = idem_core::served(response).await;
            let mut response = response?;
            if matches!(served, Some(Served::Replayed | Served::Waited)) {
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_shows_its_status_or_idem_s_error() {
        let own = Problem::status(StatusCode::PAYMENT_REQUIRED, "card declined");
        assert_eq!(own.to_string(), "402 Payment Required: card declined");
        assert!(std::error::Error::source(&own).is_none());
        let idem = Problem::from(Error::lease_lost("k"));
        assert_eq!(idem.to_string(), Error::lease_lost("k").to_string());
        assert!(std::error::Error::source(&idem).is_some());
    }

    #[test]
    fn a_problem_is_never_a_success() {
        for (given, answered) in [
            (StatusCode::PAYMENT_REQUIRED, 402),
            (StatusCode::BAD_GATEWAY, 502),
            (StatusCode::CREATED, 500),
            (StatusCode::OK, 500),
            (StatusCode::FOUND, 500),
        ] {
            let response = Problem::status(given, "declined").into_response();
            assert_eq!(response.status().as_u16(), answered, "{given}");
        }
    }

    #[test]
    fn idem_errors_answer_as_the_layer_does() {
        let response = Problem::from(Error::transaction_aborted("commit", "23505")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response
                .headers()
                .get("idempotency-rejection")
                .map(|v| v.as_bytes()),
            Some(&b"transaction-aborted"[..])
        );
    }
}
