//! `#[idempotent]` on axum handlers: the status recorded with the `Json` body, and the
//! handler's call run to completion.

use std::future::Future;
use std::marker::PhantomData;

use axum::http::StatusCode;
use axum::Json;
use idem_core::{
    Call, ClaimContext, Disposition, Error, Idempotency, TransactionBegun, TransactionClaim,
    TransactionalStore,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    AsJson, ClassifiedJsonReturn, FromIdemError, JsonReturn, Recordable, TransactionConnection,
    TxBegun,
};

impl<T, E> super::AxumResponse for Result<Json<T>, E> {}
impl<T, E> super::AxumResponse for Result<(StatusCode, Json<T>), E> {}

/// A status as recorded: its number, checked when read back (a bad one is a corrupt record).
pub struct RecordedStatus(StatusCode);

impl Serialize for RecordedStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_u16().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordedStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        StatusCode::from_u16(code)
            .map(RecordedStatus)
            .map_err(|_| serde::de::Error::custom(format!("{code} is not an HTTP status")))
    }
}

/// A handler's output as a value the runtime records, and back.
pub trait HandlerResponse: Sized {
    /// What is recorded.
    type Record: Recordable;
    /// Recorded, or (as the layer does for 5xx, 408, 425 and 429) released for a retry.
    fn disposition(&self) -> Disposition;
    /// The response as its record.
    fn record(self) -> Self::Record;
    /// The record as the response.
    fn replay(record: Self::Record) -> Self;
}

impl<T: Recordable> HandlerResponse for Json<T> {
    type Record = T;
    fn disposition(&self) -> Disposition {
        Disposition::Record
    }
    fn record(self) -> T {
        self.0
    }
    fn replay(record: T) -> Self {
        Self(record)
    }
}

impl<T: Recordable> HandlerResponse for (StatusCode, Json<T>) {
    type Record = (RecordedStatus, T);
    fn disposition(&self) -> Disposition {
        idem_http::default_on_status(self.0)
    }
    fn record(self) -> Self::Record {
        (RecordedStatus(self.0), self.1 .0)
    }
    fn replay((status, value): Self::Record) -> Self {
        (status.0, Json(value))
    }
}

/// Why a handler's output is not a record: its own error, or a response not to record.
pub enum NotRecorded<E, R> {
    /// The handler's `Err`.
    Failed(E),
    /// A response to pass on unrecorded, and what that means for the claim.
    Response(R, Disposition),
    /// The handler panicked: an unknown outcome (its panic goes on once the claim is
    /// settled).
    Panicked,
}

impl<E: From<Error>, R> From<Error> for NotRecorded<E, R> {
    fn from(err: Error) -> Self {
        Self::Failed(E::from(err))
    }
}

/// Runs a handler, recording its response unless its status says to release it.
async fn run_handler<R, E, Fut>(
    runtime: Idempotency,
    call: Call,
    body: Fut,
    on_error: impl Fn(&E) -> Disposition,
) -> Result<R, E>
where
    R: HandlerResponse,
    E: FromIdemError,
    Fut: Future<Output = Result<R, E>>,
{
    let body = async move { as_record(body.await) };
    from_record(runtime.run_with(call, classify_with(on_error), body).await)
}

/// A handler's response as `finish` takes it: its record, or why there is none.
fn as_record<R: HandlerResponse, E>(result: Result<R, E>) -> Result<R::Record, NotRecorded<E, R>> {
    match result {
        Ok(response) => match response.disposition() {
            Disposition::Record => Ok(response.record()),
            disposition => Err(NotRecorded::Response(response, disposition)),
        },
        Err(err) => Err(NotRecorded::Failed(err)),
    }
}

/// The handler's response back from what `finish` or a replay returned.
fn from_record<R: HandlerResponse, E: FromIdemError>(
    ended: Result<R::Record, NotRecorded<E, R>>,
) -> Result<R, E> {
    match ended {
        Ok(record) => Ok(R::replay(record)),
        Err(NotRecorded::Response(response, _)) => Ok(response),
        Err(NotRecorded::Failed(err)) => Err(err),
        // Only a panicking body ends so, and its panic goes on instead of this result.
        Err(NotRecorded::Panicked) => Err(E::from(Error::invalid_option(
            "a handler's panic was settled as an unknown outcome",
        ))),
    }
}
/// What `transaction = conn` on a handler returning `Json` found.
pub type JsonBegun<'c, S, R, E, F> = TxBegun<
    JsonTransactionClaim<
        TransactionClaim<'c, S, <R as HandlerResponse>::Record, NotRecorded<E, R>, F>,
        R,
    >,
    Result<R, E>,
>;

/// How a handler's failure is classified: its `Err` by `on_error`, a response by its status.
fn classify_with<E, R>(
    on_error: impl Fn(&E) -> Disposition,
) -> impl Fn(&NotRecorded<E, R>) -> Disposition {
    move |failure| match failure {
        NotRecorded::Failed(err) => on_error(err),
        NotRecorded::Response(_, disposition) => *disposition,
        NotRecorded::Panicked => Disposition::OutcomeUnknown,
    }
}

/// A handler's claim in a transaction (`transaction = conn` on a handler returning `Json`).
pub struct JsonTransactionClaim<C, R>(C, PhantomData<fn() -> R>);

impl<'c, S, R, E, F>
    JsonTransactionClaim<TransactionClaim<'c, S, R::Record, NotRecorded<E, R>, F>, R>
where
    S: TransactionalStore,
    R: HandlerResponse,
    E: FromIdemError,
    F: Fn(&NotRecorded<E, R>) -> Disposition,
{
    /// The transaction's connection.
    pub fn connection(&mut self) -> &mut S::Connection {
        self.0.connection()
    }

    /// The claim's key and fence.
    pub fn context(&self) -> ClaimContext {
        self.0.context()
    }

    /// Records the response and commits, or (a 5xx, 408, 425, 429, or an `Err` as
    /// classified) rolls back. A body that panicked (`Err` of the payload) is an unknown
    /// outcome: its writes are undone, the claim commits and holds the key for a lease,
    /// and the panic goes on.
    pub async fn finish(
        self,
        result: Result<Result<R, E>, Box<dyn std::any::Any + Send>>,
    ) -> Result<R, E> {
        match result {
            Ok(result) => from_record(self.0.finish(as_record(result)).await),
            Err(panic) => {
                let _ = self.0.finish(Err(NotRecorded::Panicked)).await;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<R: HandlerResponse, E: FromIdemError> super::AsJson<Result<R, E>> {
    /// `transaction = conn, on_error = ...` on a handler returning `Json`.
    pub async fn begin_in_transaction_with<'c, C>(
        self,
        runtime: &'c Idempotency,
        call: Call,
        connection: &'c mut C,
        on_error: impl Fn(&E) -> Disposition,
    ) -> JsonBegun<'c, C::Store, R, E, impl Fn(&NotRecorded<E, R>) -> Disposition>
    where
        C: TransactionConnection + ?Sized,
    {
        let begun = runtime
            .begin_transaction_with::<C::Store, R::Record, NotRecorded<E, R>, _>(
                call,
                connection,
                classify_with(on_error),
            )
            .await;
        match begun {
            TransactionBegun::Done(result) => TxBegun::Done(from_record(result)),
            TransactionBegun::Claimed(claim) => {
                TxBegun::Claimed(JsonTransactionClaim(claim, PhantomData))
            }
        }
    }

    /// `transaction = conn` on a handler returning `Json`: an `Err` rolls back and frees
    /// the key, as does a 5xx, 408, 425 or 429 response.
    pub async fn begin_in_transaction<'c, C>(
        self,
        runtime: &'c Idempotency,
        call: Call,
        connection: &'c mut C,
    ) -> JsonBegun<'c, C::Store, R, E, impl Fn(&NotRecorded<E, R>) -> Disposition>
    where
        C: TransactionConnection + ?Sized,
    {
        self.begin_in_transaction_with(runtime, call, connection, |_: &E| Disposition::Release)
            .await
    }
}

impl<R: HandlerResponse, E: FromIdemError> JsonReturn for Result<R, E> {
    async fn run_idempotent<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
    ) -> Self {
        run_handler(runtime, call, body, |_| Disposition::Release).await
    }
}

impl<R: HandlerResponse, E: FromIdemError> ClassifiedJsonReturn for Result<R, E> {
    type Error = E;

    async fn run_idempotent_with<Fut: Future<Output = Self>>(
        runtime: Idempotency,
        call: Call,
        body: Fut,
        on_error: impl Fn(&E) -> Disposition,
    ) -> Self {
        run_handler(runtime, call, body, on_error).await
    }
}

impl<R> AsJson<R> {
    /// The body of a transactional handler, with its panic caught (for the claim to settle it).
    pub async fn catch_panic<F: Future>(
        self,
        body: F,
    ) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
        idem_core::__macro_support::catch_unwind(body).await
    }
}

impl<T, E> AsJson<Result<T, E>> {
    /// Runs a transactional handler's call to its end on a task of its own, as the HTTP layer
    /// runs handlers: a client that goes away does not cancel it halfway through its effect, so
    /// it commits (or settles) and the client's retry replays. It runs in the caller's tracing
    /// span; its outcome is passed on to an enclosing `idem::served` (and so to
    /// `MarkReplayedLayer`); its panic goes on in the caller. Task-locals of the caller are not
    /// seen by the body.
    pub async fn to_completion<F>(self, call: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: FromIdemError + Send + 'static,
    {
        use tracing::Instrument;
        match tokio::spawn(idem_core::served(call).in_current_span()).await {
            Ok((result, served)) => {
                if let Some(served) = served {
                    idem_core::__macro_support::report_served(served);
                }
                result
            }
            Err(join) => match join.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(E::from(Error::store(
                    "run",
                    "the runtime shut down before the handler's call finished; retry with the \
                     same key to learn its outcome",
                ))),
            },
        }
    }
}
