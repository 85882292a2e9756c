//! Calls run inside a database transaction: the claim, the body's writes and the record commit
//! together, or none of them does.
//!
//! The call is two steps around the body, so that the body is ordinary code (no closure whose
//! future would have to be `Send` for every lifetime): [`Idempotency::begin_transaction_with`] claims
//! the key in a transaction on the caller's connection (or finds the record to replay), the body
//! writes through [`TransactionClaim::connection`], and [`TransactionClaim::finish`] records its
//! result and commits, or rolls back. The store's side is [`TransactionalStore`] (here); the
//! call's, in `begin` (claiming) and `claim` (finishing).
//!
//! [`Idempotency::begin_transaction_with`]: crate::Idempotency::begin_transaction_with

use std::ops::DerefMut;
use std::time::Duration;

use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence, Store};
use crate::Error;

mod begin;
mod claim;
mod settle;

pub use claim::{DetachedClaim, TransactionBegun, TransactionClaim};

/// A store whose claims and records can take part in a transaction of its database, so that a
/// body's writes through the same connection commit with the record or not at all.
///
/// Every method but `begin` works on a connection inside a transaction that `begin` opened. A
/// failure before `commit` returns leaves nothing behind: the runtime rolls back.
#[async_trait::async_trait]
pub trait TransactionalStore: Store {
    /// The connection a body writes through (for PostgreSQL, sqlx's `PgConnection`).
    type Connection: ?Sized + Send;

    /// An open transaction, or a savepoint when the connection already was in one; dropping it
    /// rolls it back.
    type Transaction<'c>: DerefMut<Target = Self::Connection> + Send;

    /// Opens a transaction on `connection`, or a savepoint if it is in one already.
    async fn begin<'c>(
        &self,
        connection: &'c mut Self::Connection,
    ) -> Result<Self::Transaction<'c>, Error>;

    /// Whether `connection` is already inside a transaction, so that [`begin`](Self::begin)
    /// would open a savepoint in the caller's transaction. By default, `false`.
    fn in_transaction(&self, connection: &Self::Connection) -> bool {
        let _ = connection;
        false
    }

    /// Opens a transaction on a connection of the store's own (from its pool), for a caller that
    /// holds none: the HTTP layer's transactional mode begins each request's transaction so.
    async fn begin_pooled(&self) -> Result<Self::Transaction<'static>, Error>;

    /// Commits the transaction (releases the savepoint). An error whose outcome is unknown (the
    /// connection was lost during `COMMIT`) is [`Error::store_indeterminate`].
    async fn commit(&self, transaction: Self::Transaction<'_>) -> Result<(), Error>;

    /// Rolls the transaction (or savepoint) back.
    async fn rollback(&self, transaction: Self::Transaction<'_>) -> Result<(), Error>;

    /// Ends the transaction in which [`claim_in`](Self::claim_in), asked for `attempt`, found a
    /// record to replay. By default, rolls it back.
    ///
    /// `rollback_may_wait` is true when the connection is used again at once: it goes back to a
    /// pool (which sends what is queued on it), or it is in the caller's own transaction (a
    /// savepoint), which the caller goes on using; and the call did not wait for another
    /// transaction. A store may then leave the rollback queued on the connection instead of
    /// waiting a round trip for it. Otherwise the rollback must be done before this returns: a
    /// caller may keep its connection idle, and an open transaction on it would keep the claim's
    /// locks (a schema change on the table would wait behind it, and every call behind that).
    async fn end_replay(
        &self,
        transaction: Self::Transaction<'_>,
        attempt: AttemptId,
        rollback_may_wait: bool,
    ) {
        let _ = (attempt, rollback_may_wait);
        let _ = self.rollback(transaction).await;
    }

    /// Marks where the body's writes begin, under `name` (unique to the call, a plain
    /// identifier), so that they can be undone without the claim (`SAVEPOINT name`).
    async fn savepoint(&self, connection: &mut Self::Connection, name: &str) -> Result<(), Error>;

    /// Undoes the writes since [`savepoint`](Self::savepoint) `name` (`ROLLBACK TO SAVEPOINT name`).
    async fn rollback_to_savepoint(
        &self,
        connection: &mut Self::Connection,
        name: &str,
    ) -> Result<(), Error>;

    /// [`Store::claim`] inside the transaction: a granted claim is visible to others only once
    /// the transaction commits. Must not wait for other transactions: a key another open
    /// transaction claimed is reported [`ClaimOutcome::InProgress`] (with an empty fingerprint
    /// when it cannot be read).
    async fn claim_in(
        &self,
        connection: &mut Self::Connection,
        request: ClaimRequest<'_>,
    ) -> Result<ClaimOutcome, Error>;

    /// Extends the lease of the claim `fence` holds in this transaction to `lease` from now: the
    /// claim of an unknown outcome commits without a record and must hold the key for a whole
    /// lease from then, however long the body ran.
    async fn extend_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        fence: Fence,
        lease: Duration,
    ) -> Result<(), Error>;

    /// Holds the claim `fence` holds in this transaction (its outcome is unknown) for `hold`
    /// from now, as [`Store::hold`](crate::Store::hold) does: it commits held, without a
    /// record, and claims get [`ClaimOutcome::Held`] until the hold lapses or an operator
    /// resolves the key. The default extends the claim's lease to `hold` instead.
    async fn hold_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        fence: Fence,
        hold: Duration,
    ) -> Result<(), Error> {
        self.extend_in(connection, key, fence, hold).await
    }

    /// The claim `fence` on `key`, granted by [`claim_in`](Self::claim_in), ended. `abandoned`
    /// is `Some(lease)` when it was dropped unfinished: its transaction rolls back only when its
    /// connection is used again, which a caller that keeps the connection may never do. A store
    /// ends such a transaction once it has sat idle in it for `lease`, so that its key is free
    /// within a lease whatever the caller does with its connection. Must not block; by default
    /// does nothing.
    fn claim_ended(&self, key: &str, fence: Fence, abandoned: Option<Duration>) {
        let _ = (key, fence, abandoned);
    }

    /// Waits, up to `timeout`, for the open transaction that holds `key` to end: `claim_in`
    /// reported the key [`InProgress`](ClaimOutcome::InProgress) with fence 0 (its claim is not
    /// committed). A store should wait where the database's deadlock detection sees it, and
    /// report a cycle (two transactions claiming two keys in opposite orders) as
    /// [`Error::Deadlock`]; returning early is fine (the runtime claims again). By default,
    /// sleeps `timeout`.
    async fn wait_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let _ = (connection, key);
        tokio::time::sleep(timeout).await;
        Ok(())
    }

    /// [`Store::complete`] inside the transaction.
    async fn complete_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error>;
}
