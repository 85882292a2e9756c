// An axum handler's usual return type: a response, not a value. `StatusCode` and `Json` stand in
// for axum's (neither implements `Deserialize`), so the case needs no web framework.
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
