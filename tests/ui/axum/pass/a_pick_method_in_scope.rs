//! A user trait with a method named like the generated code's dispatch, in scope, blanket
//! implemented: handlers returning axum's `Json` still compile, and record.
#![deny(warnings)]
#![allow(dead_code)]

use axum::http::StatusCode;
use axum::Json;

#[derive(serde::Serialize, serde::Deserialize)]
struct Receipt {
    id: u64,
}

pub trait Pick {
    fn pick(&self) -> u8 {
        0
    }
}

impl<T: ?Sized> Pick for T {}

#[idem::idempotent(key = id)]
async fn create(id: u64) -> Result<(StatusCode, Json<Receipt>), idem::Error> {
    Ok((StatusCode::CREATED, Json(Receipt { id })))
}

#[idem::idempotent(key = id, on_error = |_| idem::Disposition::Release)]
async fn read(id: u64) -> Result<Json<Receipt>, idem::Error> {
    Ok(Json(Receipt { id }))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (status, Json(receipt)) = create(7).await.expect("first");
        assert_eq!((status, receipt.id), (StatusCode::CREATED, 7));
        let (status, Json(again)) = create(7).await.expect("replay");
        assert_eq!((status, again.id), (StatusCode::CREATED, 7));
        assert_eq!(read(8).await.expect("read").0.id, 8);
    });
}
