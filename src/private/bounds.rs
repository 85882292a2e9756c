//! The bounds generated code states, each with one diagnostic that names what is missing.

use serde::de::DeserializeOwned;
use serde::Serialize;

use idem_core::Error;

/// A value `#[idempotent]` can record and replay: one bound, so that a type lacking either half
/// gets one error that names both.
#[cfg_attr(
    not(feature = "axum"),
    diagnostic::on_unimplemented(
        message = "`{Self}` cannot be recorded by #[idempotent]: it must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
        label = "`{Self}` must implement `Serialize` and `DeserializeOwned`",
        note = "the value is recorded and replayed to duplicates; for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]`; for axum's `Json<T>` or `(StatusCode, Json<T>)`, enable idem's `axum` feature; for another response, return the data it is built from and build the response outside the function"
    )
)]
#[cfg_attr(
    feature = "axum",
    diagnostic::on_unimplemented(
        message = "`{Self}` cannot be recorded by #[idempotent]: it must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
        label = "`{Self}` must implement `Serialize` and `DeserializeOwned`",
        note = "the value is recorded and replayed to duplicates; for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]`; axum's `Json<T>` and `(StatusCode, Json<T>)` are recorded when the return type names them as `Result<Json<T>, E>` or `Result<(StatusCode, Json<T>), E>` (not through an alias or a renamed import, and without `record_errors`); for another response, return the data it is built from and build the response outside the function, or use `idem::http::IdempotencyLayer`"
    )
)]
pub trait Recordable: Serialize + DeserializeOwned {}

// `do_not_recommend`: report the missing `Recordable`, not each missing serde trait.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> Recordable for T {}

/// An error type `#[idempotent]` can return its own failures through.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of an #[idempotent] function: it must implement `From<idem::Error>`",
    label = "`{Self}` must implement `From<idem::Error>`",
    note = "the function returns idem's own failures (an unreachable store, a key reused with other arguments, ...) through its error type; add `impl From<idem::Error> for {Self}`, or a variant with `#[from] idem::Error` if it derives `thiserror::Error`"
)]
pub trait FromIdemError: From<Error> {}

#[diagnostic::do_not_recommend]
impl<E: From<Error>> FromIdemError for E {}
