//! Transactional mode: idem's claim and record in the caller's transaction.

use std::time::Duration;

use idem_core::{
    AttemptId, Call, ClaimOutcome, ClaimRequest, Disposition, Error, Fence, Idempotency,
    TransactionalStore,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::store::{store_error, Session};
use crate::PostgresStore;

#[async_trait::async_trait]
impl TransactionalStore for PostgresStore {
    type Connection = PgConnection;
    type Transaction<'c> = Transaction<'c, Postgres>;

    async fn begin<'c>(
        &self,
        connection: &'c mut PgConnection,
    ) -> Result<Transaction<'c, Postgres>, Error> {
        if connection.is_in_transaction() {
            // The caller's transaction (that sqlx knows of): a savepoint.
            return connection
                .begin()
                .await
                .map_err(|err| store_error("begin", &err, false));
        }
        // A transaction of idem's own, in the same round trip as a check that the connection
        // really was outside one: a raw `BEGIN` (which sqlx does not count) would have idem's
        // `COMMIT` commit the caller's earlier writes. Both statements of one message share its
        // `statement_timestamp()`, which is also the start of a transaction begun there.
        let begin = "BEGIN; SELECT 1 / (now() = statement_timestamp())::int";
        match connection.begin_with(begin).await {
            Ok(transaction) => Ok(transaction),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("22012") => {
                Err(Error::invalid_option(
                    "the connection is inside a transaction sqlx does not know of (begun with a \
                     raw `BEGIN`), which idem's `COMMIT` would commit, caller's writes and all; \
                     that transaction is now aborted: roll it back, and begin transactions with \
                     sqlx's `begin()`",
                ))
            }
            Err(err) => Err(store_error("begin", &err, false)),
        }
    }

    fn in_transaction(&self, connection: &PgConnection) -> bool {
        connection.is_in_transaction()
    }

    async fn begin_pooled(&self) -> Result<Transaction<'static, Postgres>, Error> {
        self.pool()
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

    async fn end_replay(
        &self,
        transaction: Self::Transaction<'_>,
        attempt: AttemptId,
        rollback_may_wait: bool,
    ) {
        // Removed whatever happens next, so that no attempt is remembered for ever.
        let locked = self
            .locked_replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&attempt.0);
        if rollback_may_wait && !locked {
            // sqlx queues the rollback, sent with the connection's next use, which comes at once.
            drop(transaction);
        } else {
            let _ = self.rollback(transaction).await;
        }
    }

    async fn savepoint(&self, connection: &mut PgConnection, name: &str) -> Result<(), Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SAVEPOINT {}",
            identifier(name)?
        )))
        .execute(connection)
        .await
        .map(drop)
        .map_err(|err| store_error("savepoint", &err, false))
    }

    async fn rollback_to_savepoint(
        &self,
        connection: &mut PgConnection,
        name: &str,
    ) -> Result<(), Error> {
        let name = identifier(name)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ROLLBACK TO SAVEPOINT {name}")))
            .execute(connection)
            .await
            .map(drop)
            .map_err(|err| store_error("rollback to savepoint", &err, false))
    }

    async fn claim_in(
        &self,
        connection: &mut PgConnection,
        request: ClaimRequest<'_>,
    ) -> Result<ClaimOutcome, Error> {
        self.claim_on(connection, request, true).await
    }

    async fn extend_in(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fence: Fence,
        lease: Duration,
    ) -> Result<(), Error> {
        self.extend_on(connection, key, fence, lease).await
    }

    async fn hold_in(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fence: Fence,
        hold: Duration,
    ) -> Result<(), Error> {
        self.hold_on(connection, key, fence, hold).await
    }

    async fn wait_in(
        &self,
        connection: &mut PgConnection,
        key: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.wait_on(connection, key, timeout).await
    }

    fn claim_ended(&self, key: &str, fence: Fence, abandoned: Option<Duration>) {
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(key.to_owned(), fence.0));
        let (Some(session), Some(lease)) = (session, abandoned) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.pool().clone();
        runtime.spawn(end_if_abandoned(pool, session, lease));
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

/// Ends `session`'s transaction if, a lease after its claim was abandoned, it is still open
/// and has been idle all that time: its caller kept the connection and never used it again (any
/// use would have run the rollback sqlx queued). A transaction used since, or a later one on
/// the same backend, is left alone.
async fn end_if_abandoned(pool: sqlx::PgPool, session: Session, lease: Duration) {
    tokio::time::sleep(lease).await;
    let ended = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 \
           AND state LIKE 'idle in transaction%' \
           AND (extract(epoch FROM xact_start) * 1000000)::bigint = $2 \
           AND state_change <= statement_timestamp() - $3::bigint * interval '1 millisecond'",
    )
    .bind(session.pid)
    .bind(session.started_us)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .execute(&pool)
    .await;
    if let Err(err) = ended {
        tracing::warn!(
            error = %err,
            pid = session.pid,
            "idem could not end a transaction whose claim was abandoned on a connection still \
             open and idle: its key stays held until that connection is used again or closed"
        );
    }
}

/// A savepoint name as SQL: only the plain identifiers the runtime makes.
fn identifier(name: &str) -> Result<&str, Error> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(name)
    } else {
        Err(Error::invalid_option(format!(
            "`{name}` is not a plain savepoint name"
        )))
    }
}

/// What [`begin`] found: the result to return at once, or a claim to run the body under.
pub type TransactionBegun<'c, T, E, F> = idem_core::TransactionBegun<'c, PostgresStore, T, E, F>;

/// A key claimed in a transaction on your connection (see [`begin`]).
pub type TransactionClaim<'c, T, E, F> = idem_core::TransactionClaim<'c, PostgresStore, T, E, F>;

/// Claims `call`'s key in a transaction on `connection`, for a body whose writes through that
/// connection must commit together with idem's record, or not at all.
///
/// * A pooled connection (not in a transaction): idem begins the transaction and commits it.
/// * `&mut *tx` of your open transaction: idem uses a savepoint; the record commits (and
///   duplicates see it) when you commit, and vanishes with the body's writes if you roll back.
///
/// Then either return the [`TransactionBegun::Done`] result (a replay, or why the call failed before the
/// body), or run the body on [`TransactionClaim::connection`] and hand its result to [`TransactionClaim::finish`]. An
/// `Err`, a panic, a dropped claim or a crash before the commit rolls everything back and frees
/// the key as soon as the rollback reaches the server (a dropped claim's with the connection's
/// next use; one left idle on a connection you keep is ended a lease later). A duplicate
/// arriving while another transaction holds the key waits for it to end (up to one lease) on
/// the key's advisory lock, where PostgreSQL's deadlock detection sees it (`Error::Deadlock`),
/// or with `OnInProgress::Reject` gets `Error::InProgress` at once; it never waits on row
/// locks. A replay reads the record without taking the key's lock, and rolls its transaction
/// back before returning (inside your transaction, the rollback to its savepoint goes with your
/// next statement). Use READ COMMITTED (PostgreSQL's default). The rules side by side with the other
/// modes: `docs/guarantees.md`. `#[idempotent(transaction
/// = conn)]` in the `idem` crate writes this for you.
///
/// `idem` must have been made with `Idempotency::new` over a [`PostgresStore`]; otherwise the
/// call fails with `Error::InvalidOption` before the body runs.
///
/// ```no_run
/// # mod idem { pub use idem_core::*; pub mod postgres { pub use idem_postgres::*; } }
/// use idem::postgres::sqlx::{self, PgConnection};
/// use idem::postgres::TransactionBegun;
/// use idem::{Call, Error, Idempotency};
///
/// async fn charge(idem: &Idempotency, conn: &mut PgConnection, order: i64) -> Result<i64, Error> {
///     let mut claim = match idem::postgres::begin(idem, Call::new("charge", order), conn).await {
///         TransactionBegun::Done(result) => return result, // a replay, or a refusal
///         TransactionBegun::Claimed(claim) => claim,
///     };
///     let inserted = sqlx::query_scalar("INSERT INTO charges (order_id) VALUES ($1) RETURNING id")
///         .bind(order)
///         .fetch_one(claim.connection())
///         .await
///         .map_err(|err| Error::store("insert", err));
///     claim.finish(inserted).await // the charge and its record commit together
/// }
/// ```
pub async fn begin<'c, T, E>(
    idem: &'c Idempotency,
    call: Call,
    connection: &'c mut PgConnection,
) -> TransactionBegun<'c, T, E, impl Fn(&E) -> Disposition>
where
    T: Serialize + DeserializeOwned,
    E: From<Error>,
{
    idem.begin_transaction::<PostgresStore, T, E>(call, connection)
        .await
}

/// Like [`begin`], with `on_error` deciding what each `Err` means: the body's writes are rolled
/// back either way, and [`Disposition::OutcomeUnknown`] then holds the key for one lease (for
/// effects the body may have started outside the database). `connection` must not be inside
/// a transaction of yours (`&mut *tx`): the hold would vanish if you rolled back, so that is
/// refused with `Error::InvalidOption` before the body runs.
pub async fn begin_with<'c, T, E, F>(
    idem: &'c Idempotency,
    call: Call,
    connection: &'c mut PgConnection,
    on_error: F,
) -> TransactionBegun<'c, T, E, F>
where
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Fn(&E) -> Disposition,
{
    idem.begin_transaction_with::<PostgresStore, T, E, F>(call, connection, on_error)
        .await
}

/// Like [`begin`], but an `Err` is recorded and replayed: the body's writes are rolled back (to
/// a savepoint made before the body) and the error's record commits instead.
pub async fn begin_recording_errors<'c, T, E>(
    idem: &'c Idempotency,
    call: Call,
    connection: &'c mut PgConnection,
) -> TransactionBegun<'c, T, E, impl Fn(&E) -> Disposition>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + From<Error>,
{
    idem.begin_transaction_recording_errors::<PostgresStore, T, E>(call, connection)
        .await
}

/// Like [`begin_recording_errors`], with `on_error` deciding which errors are recorded. As
/// for [`begin_with`], `connection` must not be inside a transaction of yours.
pub async fn begin_recording_errors_with<'c, T, E, F>(
    idem: &'c Idempotency,
    call: Call,
    connection: &'c mut PgConnection,
    on_error: F,
) -> TransactionBegun<'c, T, E, F>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + From<Error>,
    F: Fn(&E) -> Disposition,
{
    idem.begin_transaction_recording_errors_with::<PostgresStore, T, E, F>(
        call, connection, on_error,
    )
    .await
}
