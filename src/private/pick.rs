//! The pick between axum's `Json` responses and any other result, by method resolution.

use std::future::Future;
use std::marker::PhantomData;

use idem_core::{Call, Disposition, Idempotency};

use super::{ClassifiedReturn, IdempotentReturn};

/// The return types of an `#[idempotent]` axum handler: `Json<T>`, or a status and `Json<T>`.
/// The macro picks this trait when the return type reads so; it has the plain trait's method.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an #[idempotent] handler",
    label = "expected `Result<Json<T>, E>` or `Result<(StatusCode, Json<T>), E>` of axum 0.8, with idem's `axum` feature",
    note = "with idem's `axum` feature, #[idempotent] records axum's `Json<T>` (and the `StatusCode`) as the data and the status, with `T: Serialize + DeserializeOwned` and `E: From<idem::Error>`; otherwise return the data and build the response outside the function, or put `idem::http::IdempotencyLayer` on the route, which records whole responses"
)]
pub trait JsonReturn: Sized {
    /// Drives the body through the runtime.
    fn run_idempotent<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = Self>;
}

/// [`JsonReturn`] with `on_error = ...`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an #[idempotent(on_error = ...)] handler",
    label = "expected `Result<Json<T>, E>` or `Result<(StatusCode, Json<T>), E>` of axum 0.8, with idem's `axum` feature",
    note = "with idem's `axum` feature, #[idempotent] records axum's `Json<T>` (and the `StatusCode`) as the data and the status; `on_error` is a function `fn(&E) -> idem::Disposition`"
)]
pub trait ClassifiedJsonReturn: Sized {
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

/// How a function whose return type reads as a handler's (`Result<…Json…, E>`) is run: axum's
/// `Json` responses by [`JsonReturn`], any other type (another crate's `Json`, such as sqlx's) as
/// a plain value. Picked by method resolution (`(&returns_of(&body)).__idem_pick()`): the
/// `Returns<R>` impl applies where `R` has the shape of an axum response (whatever its `T` and
/// `E`, so that a missing bound on them is reported as such), the `&Returns<R>` one everywhere.
pub struct Returns<R>(PhantomData<R>);

impl<R> Returns<R> {
    /// The pick for a function returning `R`, named by its return type (`transaction = conn`,
    /// whose body runs after the claim, so cannot name it).
    #[allow(clippy::new_without_default, reason = "named by generated code only")]
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

/// The [`Returns`] of a body's output.
pub fn returns_of<F: Future>(_: &F) -> Returns<F::Output> {
    Returns(PhantomData)
}

/// Runs a handler's `Json` response.
pub struct AsJson<R>(PhantomData<fn() -> R>);

impl<R> Clone for AsJson<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for AsJson<R> {}
/// Runs any other result.
pub struct AsValue<R>(PhantomData<fn() -> R>);

impl<R> Clone for AsValue<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for AsValue<R> {}

/// The pick for axum's `Json` responses.
pub trait PickJson<R> {
    /// The runner (a name no user trait in scope will have).
    fn __idem_pick(&self) -> AsJson<R>;
}

/// `Result<Json<T>, E>` and `Result<(StatusCode, Json<T>), E>` of axum, for any `T` and `E`.
pub trait AxumResponse {}

impl<R: AxumResponse> PickJson<R> for Returns<R> {
    fn __idem_pick(&self) -> AsJson<R> {
        AsJson(PhantomData)
    }
}

/// The pick for everything else.
pub trait PickValue<R> {
    /// The runner.
    fn __idem_pick(&self) -> AsValue<R>;
}

impl<R> PickValue<R> for &Returns<R> {
    fn __idem_pick(&self) -> AsValue<R> {
        AsValue(PhantomData)
    }
}

impl<R> AsJson<R> {
    /// [`JsonReturn::run_idempotent`].
    pub fn run_idempotent<Fut: Future<Output = R>>(
        self,
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = R>
    where
        R: JsonReturn,
    {
        R::run_idempotent(runtime, call, body)
    }

    /// [`ClassifiedJsonReturn::run_idempotent_with`].
    pub fn run_idempotent_with<Fut: Future<Output = R>>(
        self,
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&R::Error) -> Disposition,
    ) -> impl Future<Output = R>
    where
        R: ClassifiedJsonReturn,
    {
        R::run_idempotent_with(runtime, call, body, on_error)
    }
}

impl<R> AsValue<R> {
    /// [`IdempotentReturn::run_idempotent`].
    pub fn run_idempotent<Fut: Future<Output = R>>(
        self,
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = R>
    where
        R: IdempotentReturn,
    {
        R::run_idempotent(runtime, call, body)
    }

    /// [`ClassifiedReturn::run_idempotent_with`].
    pub fn run_idempotent_with<Fut: Future<Output = R>>(
        self,
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&R::Error) -> Disposition,
    ) -> impl Future<Output = R>
    where
        R: ClassifiedReturn,
    {
        R::run_idempotent_with(runtime, call, body, on_error)
    }
}
