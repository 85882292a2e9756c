// An axum handler whose error type cannot carry idem's own errors: one error, on that bound.
use axum::Json;

#[derive(serde::Serialize, serde::Deserialize)]
struct Receipt {
    id: u64,
}

struct ApiError;

#[idem::idempotent(key = id)]
async fn create(id: u64) -> Result<Json<Receipt>, ApiError> {
    Ok(Json(Receipt { id }))
}

fn main() {}
