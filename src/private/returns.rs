//! The four return traits (plain, `record_errors`, `on_error`, both), each with its own
//! diagnostic for a return type it cannot run.

use std::future::Future;

use idem_core::{Call, Disposition, Idempotency};

use super::{FromIdemError, Recordable};

/// `using = EXPR` takes any `&Idempotency`; the handle is cloned (one `Arc`) so that no borrow
/// of the arguments outlives the prelude.
pub fn runtime(runtime: &Idempotency) -> Idempotency {
    runtime.clone()
}

/// The return types an `#[idempotent]` function may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an #[idempotent] function",
    label = "expected `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idem::Error>`",
    note = "the `Ok` value is recorded and replayed to duplicates, so it must round-trip through serde; `idem::Error` must convert into the error type"
)]
pub trait IdempotentReturn: Sized {
    /// Drives the body through the runtime.
    fn run_idempotent<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = Self>;
}

impl<T: Recordable, E: FromIdemError> IdempotentReturn for Result<T, E> {
    fn run_idempotent<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = Self> {
        runtime.run(call, body)
    }
}

/// The return types of an `#[idempotent(record_errors)]` function.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an #[idempotent(record_errors)] function",
    label = "expected `Result<T, E>` with `T` and `E: Serialize + DeserializeOwned` and `E: From<idem::Error>`",
    note = "with `record_errors` the `Err` value is recorded and replayed too, so it must round-trip through serde"
)]
pub trait RecordedErrorsReturn: Sized {
    /// Drives the body through the runtime, recording errors too.
    fn run_idempotent<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = Self>;
}

impl<T, E> RecordedErrorsReturn for Result<T, E>
where
    T: Recordable,
    E: Recordable + FromIdemError,
{
    fn run_idempotent<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = Self> {
        runtime.run_recording_errors(call, body)
    }
}

/// The return types of an `#[idempotent(on_error = ...)]` function. A trait of its own, so that
/// functions without `on_error` see exactly the bounds (and errors) they always did.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an #[idempotent(on_error = ...)] function",
    label = "expected `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idem::Error>`",
    note = "`on_error` is a function `fn(&E) -> idem::Disposition` of the function's error type `E`"
)]
pub trait ClassifiedReturn: Sized {
    /// The `Err` type.
    type Error;

    /// Drives the body through the runtime, `on_error` classifying its errors.
    fn run_idempotent_with<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&Self::Error) -> Disposition,
    ) -> impl Future<Output = Self>;
}

impl<T: Recordable, E: FromIdemError> ClassifiedReturn for Result<T, E> {
    type Error = E;

    fn run_idempotent_with<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&E) -> Disposition,
    ) -> impl Future<Output = Self> {
        runtime.run_with(call, on_error, body)
    }
}

/// The return types of an `#[idempotent(record_errors, on_error = ...)]` function.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an #[idempotent(record_errors, on_error = ...)] function",
    label = "expected `Result<T, E>` with `T` and `E: Serialize + DeserializeOwned` and `E: From<idem::Error>`",
    note = "`on_error` is a function `fn(&E) -> idem::Disposition` of the function's error type `E`"
)]
pub trait ClassifiedRecordedReturn: Sized {
    /// The `Err` type.
    type Error;

    /// Drives the body through the runtime, `on_error` classifying its errors, which may be
    /// recorded.
    fn run_idempotent_with<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&Self::Error) -> Disposition,
    ) -> impl Future<Output = Self>;
}

impl<T, E> ClassifiedRecordedReturn for Result<T, E>
where
    T: Recordable,
    E: Recordable + FromIdemError,
{
    type Error = E;

    fn run_idempotent_with<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&E) -> Disposition,
    ) -> impl Future<Output = Self> {
        runtime.run_recording_errors_with(call, on_error, body)
    }
}
