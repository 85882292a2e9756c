// The most common slip on an axum handler: the response's type derives `Serialize` only. One
// error, naming that type and what it lacks.
use axum::http::StatusCode;
use axum::Json;

#[derive(serde::Serialize)]
struct Receipt {
    id: u64,
}

struct ApiError;

impl From<idem::Error> for ApiError {
    fn from(_: idem::Error) -> Self {
        ApiError
    }
}

#[idem::idempotent(key = id)]
async fn create(id: u64) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    Ok((StatusCode::CREATED, Json(Receipt { id })))
}

fn main() {}
