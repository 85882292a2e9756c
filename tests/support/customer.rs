//! The authenticated caller of the axum handler tests.

use axum::http::StatusCode;

/// The authenticated caller (here from a header; in a service, from a session or a token).
pub(crate) struct Customer(pub(crate) String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Customer {
    type Rejection = StatusCode;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, StatusCode> {
        let customer = parts
            .headers
            .get("x-customer")
            .and_then(|v| v.to_str().ok());
        Ok(Self(customer.unwrap_or("anonymous").to_owned()))
    }
}
