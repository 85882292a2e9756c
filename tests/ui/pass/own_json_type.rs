//! A return type that reads like an axum handler's but holds another crate's `Json` (sqlx has
//! one): recorded as a plain serde value, with or without idem's `axum` feature.
#![deny(warnings)]

mod sqlx_like {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Json<T>(pub T);
}

use sqlx_like::Json;

#[idem::idempotent(key = id)]
async fn load(id: u64) -> Result<Json<u64>, idem::Error> {
    Ok(Json(id * 2))
}

#[idem::idempotent(key = id, on_error = |_| idem::Disposition::Release)]
async fn load_classified(id: u64) -> Result<Json<Vec<u8>>, idem::Error> {
    Ok(Json(vec![1, 2]))
}

/// In a transaction too: run in place, not on a task of its own (the connection is borrowed).
#[idem::idempotent(key = id, transaction = conn)]
async fn load_in_transaction(
    conn: &mut idem::postgres::sqlx::PgConnection,
    id: i64,
) -> Result<Json<i64>, idem::Error> {
    let _ = &conn;
    Ok(Json(id))
}

fn main() {
    // Compiled, not run: it needs a database.
    let _ = load_in_transaction;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        assert_eq!(load(21).await.expect("first"), Json(42));
        assert_eq!(load(21).await.expect("replay"), Json(42));
        assert_eq!(load_classified(1).await.expect("first"), Json(vec![1, 2]));
    });
}
