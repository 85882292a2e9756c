//! axum 0.8 integration: [`IdempotencyKey`] as an extractor.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::key::{IdempotencyKey, KeyError};
use crate::problem::DEFAULT_PROBLEM_BASE;

/// The request's `Idempotency-Key`; a request without one, or with a malformed one, is refused
/// with a 400 problem. Take `Option<IdempotencyKey>` to accept requests without a key (a
/// malformed key is still refused).
///
/// ```
/// # mod idem { pub mod http { pub use idem_http::*; } } // the `idem` crate's re-export
/// use axum::{routing::post, Json, Router};
/// use idem::http::IdempotencyKey;
///
/// async fn create(key: IdempotencyKey, Json(order): Json<serde_json::Value>) -> String {
///     format!("order {order} under key {key}")
/// }
/// let app: Router = Router::new().route("/orders", post(create));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = KeyError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, KeyError> {
        Self::from_headers(&parts.headers)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = KeyError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, KeyError> {
        match Self::from_headers(&parts.headers) {
            Ok(key) => Ok(Some(key)),
            Err(KeyError::Missing) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// A 400 problem, as the layer answers.
impl IntoResponse for KeyError {
    fn into_response(self) -> Response {
        self.rejection()
            .to_response(DEFAULT_PROBLEM_BASE, &self.to_string(), None)
    }
}
