//! Transactional mode: idem's claim and record in the caller's transaction.

use std::time::Duration;

use idem_core::{
    Call, ClaimOutcome, ClaimRequest, Error, Fence, Idempotency, OnError, TransactionalStore,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::store::store_error;
use crate::PostgresStore;

impl TransactionalStore for PostgresStore {
    type Connection = PgConnection;
    type Transaction<'c> = Transaction<'c, Postgres>;

    async fn begin<'c>(
        &'c self,
        connection: &'c mut PgConnection,
    ) -> Result<Transaction<'c, Postgres>, Error> {
        connection
            .begin()
            .await
            .map_err(|err| store_error("begin", &err, false))
    }

    async fn commit(&self, transaction: Self::Transaction<'_>) -> Result<(), Error> {
        // A connection lost during COMMIT leaves its outcome unknown: the retry finds out.
        transaction
            .commit()
            .await
            .map_err(|err| store_error("commit", &err, true))
    }

    async fn rollback(&self, transaction: Self::Transaction<'_>) -> Result<(), Error> {
        transaction
            .rollback()
            .await
            .map_err(|err| store_error("rollback", &err, false))
    }

    async fn claim_in(
        &self,
        connection: &mut PgConnection,
        request: ClaimRequest<'_>,
    ) -> Result<ClaimOutcome, Error> {
        self.claim_on(connection, request, true).await
    }

    async fn complete_in(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        self.complete_on(connection, key, fence, record, retention, true)
            .await
    }
}

/// Runs `body` with the claim and the record in a transaction on `connection`: the body's
/// writes through the connection it is given commit together with the record, or not at all.
///
/// * A pooled connection (not in a transaction): idem begins the transaction and commits it.
/// * `&mut *tx` of your open transaction: idem uses a savepoint; the record commits (and
///   duplicates see it) when you commit, and vanishes with the body's writes if you roll back.
///
/// A duplicate replays the record. An `Err`, a panic, a cancelled call or a crash before the
/// commit rolls everything back and frees the key at once. A duplicate arriving while another
/// transaction holds the key waits for it to end (up to one lease), or with
/// `OnInProgress::Reject` gets `Error::InProgress` at once; it never waits on row locks. The
/// connection must use READ COMMITTED (PostgreSQL's default).
///
/// `idem` must have been made with `Idempotency::new` over a [`PostgresStore`]; otherwise the
/// call fails with `Error::InvalidOption` before the body runs.
///
/// ```no_run
/// # async fn example(idem: idem_core::Idempotency, pool: sqlx::PgPool) -> Result<(), idem_core::Error> {
/// use idem_core::Call;
///
/// let mut connection = pool.acquire().await.map_err(|e| idem_core::Error::store("acquire", e))?;
/// let charge_id: i64 = idem_postgres::run_in_transaction(
///     &idem,
///     Call::new("charge", "order-17"),
///     &mut connection,
///     async |connection| {
///         let (id,): (i64,) =
///             sqlx::query_as("INSERT INTO charges (order_id, cents) VALUES (17, 1250) RETURNING id")
///                 .fetch_one(&mut *connection)
///                 .await
///                 .map_err(|e| idem_core::Error::store("insert", e))?;
///         Ok::<_, idem_core::Error>(id)
///     },
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn run_in_transaction<T, E>(
    idem: &Idempotency,
    call: Call,
    connection: &mut PgConnection,
    body: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: From<Error>,
{
    idem.run_in_transaction::<PostgresStore, _, _, _>(call, connection, body)
        .await
}

/// Like [`run_in_transaction`], but an `Err` is recorded and replayed: the body's writes are
/// rolled back (to a savepoint) and the error's record commits instead.
pub async fn run_in_transaction_recording_errors<T, E>(
    idem: &Idempotency,
    call: Call,
    connection: &mut PgConnection,
    body: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + From<Error>,
{
    idem.run_in_transaction_recording_errors::<PostgresStore, _, _, _>(call, connection, body)
        .await
}

/// Like [`run_in_transaction`], with `on_error` deciding what each `Err` means (the body's
/// writes are rolled back either way; `OutcomeUnknown` then holds the key for one lease).
pub async fn run_in_transaction_with<T, E>(
    idem: &Idempotency,
    call: Call,
    connection: &mut PgConnection,
    on_error: impl Fn(&E) -> OnError,
    body: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: From<Error>,
{
    idem.run_in_transaction_with::<PostgresStore, _, _, _>(call, connection, on_error, body)
        .await
}
