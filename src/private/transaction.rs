//! `transaction = conn`: the connection types it takes, and the calls that claim in their
//! transaction.

use std::future::Future;

use idem_core::{Call, Disposition, Idempotency, TransactionBegun};

use super::{AsValue, FromIdemError, Recordable};

/// The connection types `#[idempotent(transaction = conn)]` takes, and the store each belongs to.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot carry an #[idempotent] transaction",
    label = "`transaction = ...` names this argument",
    note = "the argument must be `&mut PgConnection` (pass `&mut *tx` to join a transaction of your own), or own a pooled connection (`mut conn: idem::postgres::Connection` on an axum handler, sqlx's `PoolConnection<Postgres>`), with the `postgres` feature"
)]
pub trait TransactionConnection {
    /// The store whose claims and records take part in this connection's transactions.
    type Store: idem_core::TransactionalStore<Connection = Self>;
}

#[cfg(feature = "postgres")]
impl TransactionConnection for idem_postgres::sqlx::PgConnection {
    type Store = idem_postgres::PostgresStore;
}

/// The owned arguments `transaction = conn` takes: types that hold a pooled connection of their
/// own. An owned `sqlx::Transaction` is not one: the function would drop it uncommitted, and
/// idem's record (a savepoint in it) with it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot carry an #[idempotent] transaction",
    label = "`transaction = ...` names this argument",
    note = "take `&mut PgConnection` (pass `&mut *tx` to join a transaction of your own: the record then commits when you commit it), or own a pooled connection: `idem::postgres::Connection` on an axum handler, or sqlx's `PoolConnection<Postgres>`"
)]
pub trait OwnedConnection {
    /// The connection it holds.
    type Connection: TransactionConnection + ?Sized;
    /// The connection, for the call's transaction.
    fn connection(&mut self) -> &mut Self::Connection;
}

#[cfg(feature = "postgres")]
impl OwnedConnection for idem_postgres::sqlx::pool::PoolConnection<idem_postgres::sqlx::Postgres> {
    type Connection = idem_postgres::sqlx::PgConnection;
    fn connection(&mut self) -> &mut Self::Connection {
        self
    }
}

/// `transaction = conn` on an owned connection argument.
pub fn owned_connection<A: OwnedConnection>(argument: &mut A) -> &mut A::Connection {
    argument.connection()
}

/// `transaction = conn`: claims in a transaction on the function's connection argument.
pub async fn begin_in_transaction_with<'c, C, T, E>(
    runtime: &'c Idempotency,
    call: Call,
    connection: &'c mut C,
    on_error: impl Fn(&E) -> Disposition,
) -> TransactionBegun<'c, C::Store, T, E, impl Fn(&E) -> Disposition>
where
    C: TransactionConnection + ?Sized,
    T: Recordable,
    E: FromIdemError,
{
    runtime
        .begin_transaction_with::<C::Store, T, E, _>(call, connection, on_error)
        .await
}

/// `transaction = conn` without `on_error`: every `Err` rolls back and frees the key.
pub async fn begin_in_transaction<'c, C, T, E>(
    runtime: &'c Idempotency,
    call: Call,
    connection: &'c mut C,
) -> TransactionBegun<'c, C::Store, T, E, impl Fn(&E) -> Disposition>
where
    C: TransactionConnection + ?Sized,
    T: Recordable,
    E: FromIdemError,
{
    runtime
        .begin_transaction::<C::Store, T, E>(call, connection)
        .await
}

/// `transaction = conn, record_errors`.
pub async fn begin_in_transaction_recording_errors_with<'c, C, T, E>(
    runtime: &'c Idempotency,
    call: Call,
    connection: &'c mut C,
    on_error: impl Fn(&E) -> Disposition,
) -> TransactionBegun<'c, C::Store, T, E, impl Fn(&E) -> Disposition>
where
    C: TransactionConnection + ?Sized,
    T: Recordable,
    E: Recordable + FromIdemError,
{
    runtime
        .begin_transaction_recording_errors_with::<C::Store, T, E, _>(call, connection, on_error)
        .await
}

/// `transaction = conn, record_errors` without `on_error`: every `Err` recorded.
pub async fn begin_in_transaction_recording_errors<'c, C, T, E>(
    runtime: &'c Idempotency,
    call: Call,
    connection: &'c mut C,
) -> TransactionBegun<'c, C::Store, T, E, impl Fn(&E) -> Disposition>
where
    C: TransactionConnection + ?Sized,
    T: Recordable,
    E: Recordable + FromIdemError,
{
    runtime
        .begin_transaction_recording_errors::<C::Store, T, E>(call, connection)
        .await
}

/// What `transaction = conn` found on a function whose return type reads as a handler's: the
/// result to return at once, or the claim to run the body under (its `connection()`,
/// `context()` and `finish(result)` are those of [`TransactionClaim`](crate::steps::TransactionClaim)).
pub enum TxBegun<C, R> {
    /// A replay, or why the call failed before the body.
    Done(R),
    /// The key is claimed in a transaction.
    Claimed(C),
}

/// What `transaction = conn` found on a function whose return type only reads as a handler's.
pub type ValueBegun<'c, S, T, E, F> =
    TxBegun<ValueTransactionClaim<idem_core::TransactionClaim<'c, S, T, E, F>>, Result<T, E>>;

/// The claim of a function whose return type only reads as a handler's, as the expansion for
/// handlers drives it (`finish` takes the body's result or its panic).
pub struct ValueTransactionClaim<C>(C);

impl<'c, S, T, E, F> ValueTransactionClaim<idem_core::TransactionClaim<'c, S, T, E, F>>
where
    S: idem_core::TransactionalStore,
    T: Recordable,
    E: FromIdemError,
    F: Fn(&E) -> Disposition,
{
    /// The transaction's connection.
    pub fn connection(&mut self) -> &mut S::Connection {
        self.0.connection()
    }

    /// The claim's key and fence.
    pub fn context(&self) -> idem_core::ClaimContext {
        self.0.context()
    }

    /// Records and commits, or rolls back; a panic rolls back (the key is free) and goes on.
    pub async fn finish(
        self,
        result: Result<Result<T, E>, Box<dyn std::any::Any + Send>>,
    ) -> Result<T, E> {
        match result {
            Ok(result) => self.0.finish(result).await,
            Err(panic) => {
                drop(self);
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<R> AsValue<R> {
    /// `transaction = conn` on a function that only reads as a handler: the call runs in place.
    pub async fn to_completion<F: Future<Output = R>>(self, call: F) -> R {
        call.await
    }

    /// The body's result; a panic unwinds through the caller as it would without the macro
    /// (dropping the claim: everything rolls back and the key is free).
    pub async fn catch_panic<F: Future>(
        self,
        body: F,
    ) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
        Ok(body.await)
    }
}

impl<T, E> AsValue<Result<T, E>> {
    /// `transaction = conn, on_error = ...` for a value that only reads as a handler's (another
    /// crate's `Json`).
    pub async fn begin_in_transaction_with<'c, C>(
        self,
        runtime: &'c Idempotency,
        call: Call,
        connection: &'c mut C,
        on_error: impl Fn(&E) -> Disposition,
    ) -> ValueBegun<'c, C::Store, T, E, impl Fn(&E) -> Disposition>
    where
        C: TransactionConnection + ?Sized,
        T: Recordable,
        E: FromIdemError,
    {
        match begin_in_transaction_with(runtime, call, connection, on_error).await {
            TransactionBegun::Done(result) => TxBegun::Done(result),
            TransactionBegun::Claimed(claim) => TxBegun::Claimed(ValueTransactionClaim(claim)),
        }
    }

    /// `transaction = conn` for a value that only reads as a handler's.
    pub async fn begin_in_transaction<'c, C>(
        self,
        runtime: &'c Idempotency,
        call: Call,
        connection: &'c mut C,
    ) -> ValueBegun<'c, C::Store, T, E, impl Fn(&E) -> Disposition>
    where
        C: TransactionConnection + ?Sized,
        T: Recordable,
        E: FromIdemError,
    {
        match begin_in_transaction(runtime, call, connection).await {
            TransactionBegun::Done(result) => TxBegun::Done(result),
            TransactionBegun::Claimed(claim) => TxBegun::Claimed(ValueTransactionClaim(claim)),
        }
    }
}
