// An axum handler's usual return type, with look-alikes of axum's `StatusCode` and `Json`: the
// macro reads it as a handler's and records axum's own types (feature `axum`); for any other it
// gives one error that says what to return or use instead.
mod axum {
    pub struct StatusCode(pub u16);
    pub struct Json<T>(pub T);
}

use axum::{Json, StatusCode};

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(Debug)]
struct ApiError;

impl From<idem::Error> for ApiError {
    fn from(_: idem::Error) -> Self {
        ApiError
    }
}

#[idem::idempotent(key = id)]
async fn create_order(id: u64) -> Result<(StatusCode, Json<Order>), ApiError> {
    Ok((StatusCode(201), Json(Order { id })))
}

fn main() {}
