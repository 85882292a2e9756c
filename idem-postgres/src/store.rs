//! `PostgresStore`: the `Store` in autocommit, the schema, the reaper.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::{ClaimOutcome, ClaimRequest, Error, Fence, Store, MAX_DURATION};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, PgConnection, Row};

use crate::sql::Statements;

/// How long [`PostgresStore::connect`] waits for a pooled connection (a free one, or a new one
/// connected) before a store operation fails (closed: the body does not run), so that a request
/// path gets the verdict on a database that is down within about a second.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The default size of [`PostgresStore::connect`]'s pool.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// The pool [`PostgresStore::connect_with`] opens: its size and how long an operation waits
/// for a connection. For anything else, build a sqlx pool yourself and use
/// [`PostgresStore::from_pool`].
///
/// ```
/// use std::time::Duration;
/// # mod idem { pub mod postgres { pub use idem_postgres::*; } } // the `idem` crate's re-export
/// use idem::postgres::PoolOptions;
///
/// let options = PoolOptions::default()
///     .max_connections(32)
///     .acquire_timeout(Duration::from_millis(500));
/// assert_eq!(options.get_max_connections(), 32);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolOptions {
    max_connections: u32,
    acquire_timeout: Duration,
}

impl Default for PoolOptions {
    /// [`DEFAULT_MAX_CONNECTIONS`] connections, [`DEFAULT_ACQUIRE_TIMEOUT`].
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }
}

impl PoolOptions {
    /// At most `connections` open at once (at least 1). Each request in the HTTP layer's
    /// transactional mode holds one from its claim to its commit, so this bounds the requests
    /// in flight too.
    #[must_use]
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// How long an operation waits for a connection (a free one, or a new one connected)
    /// before it fails with [`Error::Store`]: when the server is down, how long a request
    /// waits for its 503.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The pool's size.
    pub fn get_max_connections(&self) -> u32 {
        self.max_connections
    }

    /// How long an operation waits for a connection.
    pub fn get_acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }
}

/// A snapshot can miss a row committed just after it: a claim that neither claimed nor found
/// the key asks again, this many times.
const CLAIM_LOOKS: u32 = 3;

/// idem's store in PostgreSQL: one row per key in a table of its own, leases and expiries by the
/// database's clock, fencing tokens from a sequence.
///
/// It serves in two ways:
/// * as a [`Store`] (through `idem::Idempotency::new`), each operation
///   one autocommit statement, for bodies whose effects are elsewhere;
/// * in **transactional mode** ([`begin`](crate::begin)), where the
///   claim and the record are written in the caller's transaction, so that the body's writes
///   through the same connection and the record commit together or not at all.
///
/// ```no_run
/// # mod idem { pub use idem_core::*; pub mod postgres { pub use idem_postgres::*; } }
/// # async fn example() -> Result<(), idem::Error> {
/// use idem::postgres::PostgresStore;
/// use idem::Idempotency;
///
/// let store = PostgresStore::connect("postgres://app@db.internal/app").await?;
/// store.migrate().await?; // or run `PostgresStore::schema_sql()` in your own migrations
/// let idem = Idempotency::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<Statements>,
    /// The transaction of each claim granted in one and not yet ended, by key and fence.
    pub(crate) sessions: Arc<std::sync::Mutex<HashMap<(String, u64), Session>>>,
    /// The attempts whose claim in a transaction found a record to replay after an earlier look
    /// took the key's lock (a record committed between a look's snapshot and its lock): their
    /// transaction holds that lock, so it is rolled back at once rather than left to the
    /// connection's next use.
    pub(crate) locked_replays: Arc<std::sync::Mutex<HashSet<u128>>>,
}

/// A transaction on some connection: its backend and its start (µs since the epoch), which
/// together tell it from any later transaction on the same backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    pub(crate) started_us: i64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects a pool to `url` (`postgres://user:password@host:port/database`) with the
    /// default [`PoolOptions`]: [`DEFAULT_MAX_CONNECTIONS`] connections, and operations that
    /// wait at most [`DEFAULT_ACQUIRE_TIMEOUT`] for one. Does not create the table: see
    /// [`migrate`](Self::migrate).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PoolOptions::default()).await
    }

    /// Connects a pool to `url` sized and bounded by `options`.
    pub async fn connect_with(url: &str, options: PoolOptions) -> Result<Self, Error> {
        // Errors name the server, never the URL: it may hold a password, and they end up in logs.
        let pool_options = options;
        let options: PgConnectOptions = url.parse().map_err(|_| {
            Error::store(
                "connect",
                "the PostgreSQL URL does not parse; write it as \
                 postgres://[user[:password]@]host[:port]/database",
            )
        })?;
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(pool_options.max_connections)
            .acquire_timeout(pool_options.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|err| {
                Error::store(
                    "connect",
                    format!(
                        "cannot connect to PostgreSQL at {server}: {err}; is the server running \
                         and the URL right?"
                    ),
                )
            })?;
        Ok(Self::from_pool(pool))
    }

    /// A store over a pool you configured, with the default table (`idem_records`).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(Statements::default_table()),
            sessions: Arc::default(),
            locked_replays: Arc::default(),
        }
    }

    /// Keeps the records in `table` (`name` or `schema.name`: lowercase letters, digits and `_`,
    /// not starting with a digit) instead of `idem_records`. Anything else is
    /// [`Error::InvalidOption`].
    pub fn with_table(mut self, table: &str) -> Result<Self, Error> {
        self.sql = Arc::new(Statements::for_table(table)?);
        // Fences are the table's: another table's claims are tracked apart.
        self.sessions = Arc::default();
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The SQL that creates this store's sequence, table and index (`IF NOT EXISTS`), for
    /// migrations you run yourself. With the default table it is the crate's `schema.sql`.
    pub fn schema_sql(&self) -> &str {
        &self.sql.schema
    }

    /// Creates the sequence, table and index if they do not exist.
    pub async fn migrate(&self) -> Result<(), Error> {
        let schema = sqlx::AssertSqlSafe(self.sql.schema.clone());
        self.pool
            .execute(schema)
            .await
            .map(drop)
            .map_err(|err| store_error("migrate", &err, false))
    }

    /// Deletes up to `batch` expired rows (completed records past their retention, claims past
    /// their lease; a claim made in a transaction, such as an unknown outcome's hold, is given
    /// its record's expiry and stays until one retention past its lease, though it can be taken
    /// over once its lease lapses) and returns how many it deleted. Safe to run on many instances at once:
    /// rows another reaper or a claim holds are skipped.
    pub async fn reap(&self, batch: u32) -> Result<u64, Error> {
        let deleted = sqlx::query(self.sql.reap.clone())
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await
            .map_err(|err| store_error("reap", &err, false))?;
        Ok(deleted.rows_affected())
    }

    /// Reaps in the background: every `every`, batches of 1,000 until none is full. Stops when
    /// the handle is aborted or dropped with its runtime; errors are retried at the next tick.
    pub fn spawn_reaper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        const BATCH: u32 = 1_000;
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                while let Ok(deleted) = store.reap(BATCH).await {
                    if deleted < u64::from(BATCH) {
                        break;
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// The claim statement, on any connection, asked again while a snapshot misses the row.
    pub(crate) async fn claim_on(
        &self,
        connection: &mut PgConnection,
        request: ClaimRequest<'_>,
        in_transaction: bool,
    ) -> Result<ClaimOutcome, Error> {
        let lease_ms = millis(request.lease);
        let mut session = None;
        let outcome = self
            .claim_looking(connection, request, in_transaction, lease_ms, &mut session)
            .await?;
        if let (ClaimOutcome::Acquired { fence, .. }, Some(session)) = (&outcome, session) {
            self.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((request.key.to_owned(), fence.0), session);
        }
        Ok(outcome)
    }

    /// [`claim_on`](Self::claim_on)'s looks; in a transaction, `session` is set to it.
    async fn claim_looking(
        &self,
        connection: &mut PgConnection,
        request: ClaimRequest<'_>,
        in_transaction: bool,
        lease_ms: i64,
        session: &mut Option<Session>,
    ) -> Result<ClaimOutcome, Error> {
        // Whether a look took the key's advisory lock, which this transaction then holds.
        let mut took_lock = false;
        for _ in 0..CLAIM_LOOKS {
            let row = if in_transaction {
                sqlx::query(self.sql.claim_in_transaction.clone())
                    .bind(request.key.as_bytes())
                    .bind(&request.attempt.0.to_be_bytes()[..])
                    .bind(request.fingerprint)
                    .bind(lease_ms)
                    .bind(advisory_lock(request.key))
                    .bind(millis(request.retention.min(MAX_DURATION)))
                    .fetch_optional(&mut *connection)
                    .await
            } else {
                sqlx::query(self.sql.claim.clone())
                    .bind(request.key.as_bytes())
                    .bind(&request.attempt.0.to_be_bytes()[..])
                    .bind(request.fingerprint)
                    .bind(lease_ms)
                    .bind(ROW_LOCK_WAIT_MS)
                    .fetch_optional(&mut *connection)
                    .await
            };
            let row = match row {
                // Another open transaction's uncommitted claim of the key: in progress, its
                // request unknown (its row cannot be read).
                Err(sqlx::Error::Database(db))
                    if !in_transaction && db.code().as_deref() == Some("55P03") =>
                {
                    return Ok(ClaimOutcome::InProgress {
                        fence: Fence(0),
                        fingerprint: Vec::new(),
                        lease_remaining: request.lease,
                    });
                }
                row => row,
            }
            .map_err(|err| claim_error(&err, in_transaction))?;
            if let (true, Some(row)) = (in_transaction, row.as_ref()) {
                *session = Some(Session {
                    pid: column(request.key, row, 8)?,
                    started_us: column(request.key, row, 9)?,
                });
                took_lock |= column::<Option<bool>>(request.key, row, 0)? == Some(true);
            }
            match claim_outcome(request, row.as_ref(), in_transaction)? {
                Look::Found(outcome) => {
                    if took_lock && matches!(outcome, ClaimOutcome::Completed { .. }) {
                        self.locked_replays
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(request.attempt.0);
                    }
                    return Ok(outcome);
                }
                Look::Again => {}
                Look::TakeOver(fence) => {
                    if let Some(fence) = self.take_over(connection, request, fence).await? {
                        return Ok(ClaimOutcome::acquired(fence));
                    }
                    // The row changed since it was read (recorded, renewed, taken, reaped):
                    // look again. A takeover that matched nothing holds no lock.
                }
            }
        }
        Err(Error::store(
            "claim",
            format!(
                "the claim of `{}` neither took the key nor found it {CLAIM_LOOKS} times in a row",
                request.key
            ),
        ))
    }

    /// Waits up to `timeout`, inside a transaction, for the open transaction that holds
    /// `key`'s lock to end: blocked on the lock, so that PostgreSQL's deadlock detector sees
    /// the wait. The caller's `lock_timeout` is put back after.
    pub(crate) async fn wait_on(
        &self,
        connection: &mut PgConnection,
        key: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let limit = format!("{}ms", millis(timeout).clamp(1, i64::from(i32::MAX)));
        let failed = |err: sqlx::Error| match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01") => {
                Error::deadlock(key)
            }
            // Waited as long as the call may: the holder is still at it.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                Error::in_progress(key, None)
            }
            _ => store_error("claim", &err, false),
        };
        let saved: String = sqlx::query_scalar(
            "WITH saved AS MATERIALIZED (SELECT current_setting('lock_timeout') AS value) \
             SELECT saved.value FROM saved, set_config('lock_timeout', $1, true)",
        )
        .bind(&limit)
        .fetch_one(&mut *connection)
        .await
        .map_err(failed)?;
        sqlx::query(self.sql.wait_in_transaction.clone())
            .bind(advisory_lock(key))
            .execute(&mut *connection)
            .await
            .map_err(failed)?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(saved)
            .execute(&mut *connection)
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Extends, inside the transaction that holds it, the lease of the claim `fence`.
    pub(crate) async fn extend_on(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fence: Fence,
        lease: Duration,
    ) -> Result<(), Error> {
        let extended = sqlx::query(self.sql.extend_in_transaction.clone())
            .bind(key.as_bytes())
            .bind(fence_value(key, fence)?)
            .bind(millis(lease))
            .execute(connection)
            .await
            .map_err(|err| store_error("renew", &err, false))?;
        match extended.rows_affected() {
            1 => Ok(()),
            _ => Err(Error::lease_lost(key)),
        }
    }

    /// Holds, inside the transaction that holds it, the claim `fence` (an unknown outcome).
    pub(crate) async fn hold_on(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fence: Fence,
        hold: Duration,
    ) -> Result<(), Error> {
        let held = sqlx::query(self.sql.hold_in_transaction.clone())
            .bind(key.as_bytes())
            .bind(fence_value(key, fence)?)
            .bind(millis(hold.min(MAX_DURATION)))
            .execute(connection)
            .await
            .map_err(|err| store_error("hold", &err, false))?;
        match held.rows_affected() {
            1 => Ok(()),
            _ => Err(Error::lease_lost(key)),
        }
    }

    /// Takes over, inside a transaction, the lapsed claim or expired record a claim read (under
    /// `fence`): the new fence, or `None` if the row changed meanwhile.
    async fn take_over(
        &self,
        connection: &mut PgConnection,
        request: ClaimRequest<'_>,
        fence: Fence,
    ) -> Result<Option<Fence>, Error> {
        let taken: Option<i64> = sqlx::query_scalar(self.sql.take_over.clone())
            .bind(request.key.as_bytes())
            .bind(&request.attempt.0.to_be_bytes()[..])
            .bind(request.fingerprint)
            .bind(millis(request.lease))
            .bind(fence_value(request.key, fence)?)
            .bind(millis(request.retention.min(MAX_DURATION)))
            .fetch_optional(&mut *connection)
            .await
            .map_err(|err| claim_error(&err, true))?;
        match taken.map(u64::try_from) {
            Some(Ok(fence)) if fence > 0 => Ok(Some(Fence(fence))),
            Some(_) => Err(Error::corrupt(
                request.key,
                "the fence sequence gave a non-positive value",
            )),
            None => Ok(None),
        }
    }

    /// The complete statement on any connection.
    pub(crate) async fn complete_on(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
        in_transaction: bool,
    ) -> Result<(), Error> {
        if in_transaction {
            let updated = sqlx::query(self.sql.complete_in_transaction.clone())
                .bind(key.as_bytes())
                .bind(fence_value(key, fence)?)
                .bind(record)
                .bind(millis(retention))
                .execute(&mut *connection)
                .await
                .map_err(|err| store_error("complete", &err, false))?;
            return match updated.rows_affected() {
                1 => Ok(()),
                _ => Err(Error::lease_lost(key)),
            };
        }
        let row = sqlx::query(self.sql.complete.clone())
            .bind(key.as_bytes())
            .bind(fence_value(key, fence)?)
            .bind(record)
            .bind(millis(retention))
            .fetch_one(&mut *connection)
            .await
            .map_err(|err| store_error("complete", &err, true))?;
        let completed: bool = column(key, &row, 0)?;
        let state: Option<i16> = column(key, &row, 1)?;
        match (completed, state) {
            // Completed now, or by an earlier try of this complete whose reply was lost.
            (true, _) | (false, Some(1)) => Ok(()),
            _ => Err(Error::lease_lost(key)),
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        let mut connection = self.connection("claim").await?;
        self.claim_on(&mut connection, request, false).await
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        let mut connection = self.connection("complete").await?;
        self.complete_on(&mut connection, key, fence, record, retention, false)
            .await
    }

    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        let row = sqlx::query(self.sql.release.clone())
            .bind(key.as_bytes())
            .bind(fence_value(key, fence)?)
            .fetch_one(&self.pool)
            .await
            .map_err(|err| store_error("release", &err, true))?;
        let released: bool = column(key, &row, 0)?;
        let current: Option<i64> = column(key, &row, 1)?;
        match (released, current) {
            // Released now, or the key is absent with no newer claim (a retried release).
            (true, _) | (false, None) => Ok(()),
            _ => Err(Error::lease_lost(key)),
        }
    }

    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        let renewed = sqlx::query(self.sql.renew.clone())
            .bind(key.as_bytes())
            .bind(fence_value(key, fence)?)
            .bind(millis(lease))
            .execute(&self.pool)
            .await
            .map_err(|err| store_error("renew", &err, true))?;
        if renewed.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::lease_lost(key))
        }
    }

    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        let row = sqlx::query(self.sql.hold.clone())
            .bind(key.as_bytes())
            .bind(fence_value(key, fence)?)
            .bind(millis(hold.min(MAX_DURATION)))
            .fetch_one(&self.pool)
            .await
            .map_err(|err| store_error("hold", &err, true))?;
        let held: bool = column(key, &row, 0)?;
        let state: Option<i16> = column(key, &row, 1)?;
        if held || state == Some(2) {
            Ok(())
        } else {
            Err(Error::lease_lost(key))
        }
    }

    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        // Polls the row: a claim is short-lived and duplicates are rare, so a listener
        // connection per store would cost more than it saves.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let row = sqlx::query(self.sql.state.clone())
                .bind(key.as_bytes())
                .fetch_optional(&self.pool)
                .await
                .map_err(|err| store_error("wait", &err, false))?;
            let still_held = match &row {
                Some(row) => {
                    let current: i64 = column(key, row, 0)?;
                    let state: i16 = column(key, row, 1)?;
                    let live: bool = column(key, row, 2)?;
                    current == fence_value(key, fence)? && state == 0 && live
                }
                None => false,
            };
            let now = tokio::time::Instant::now();
            if !still_held || now >= deadline {
                return Ok(());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl PostgresStore {
    async fn connection(
        &self,
        operation: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
        self.pool
            .acquire()
            .await
            .map_err(|err| store_error(operation, &err, false))
    }
}

/// What a claim statement's row says.
enum Look {
    Found(ClaimOutcome),
    /// In a transaction: a lapsed claim or an expired record under this fence, to take over.
    TakeOver(Fence),
    /// The statement neither claimed nor saw the key (its snapshot missed a row): look again.
    Again,
}

/// Reads a claim statement's row.
fn claim_outcome(
    request: ClaimRequest<'_>,
    row: Option<&PgRow>,
    in_transaction: bool,
) -> Result<Look, Error> {
    let key = request.key;
    let Some(row) = row else {
        return Ok(Look::Again);
    };
    // In a transaction the first column says whether this transaction holds the key's lock
    // (NULL when it found a live record and took no lock).
    let (held, first) = if in_transaction {
        (column::<Option<bool>>(key, row, 0)?.unwrap_or(false), 1)
    } else {
        (true, 0)
    };
    let state: Option<i16> = column(key, row, first)?;
    let Some(state) = state else {
        // No row: nobody else's committed row, and (in a transaction) the lock is another's.
        return Ok(if held {
            Look::Again
        } else {
            Look::Found(in_progress_elsewhere(request))
        });
    };
    let fence: i64 = column(key, row, first + 1)?;
    let fence = match u64::try_from(fence) {
        Ok(fence) if fence > 0 => Fence(fence),
        _ => {
            return Err(Error::corrupt(
                key,
                format!("its fence {fence} is not positive"),
            ))
        }
    };
    let live: bool = column(key, row, first + 6)?;
    match state {
        -1 => Ok(Look::Found(ClaimOutcome::acquired(fence))),
        0 => {
            let attempt: Option<Vec<u8>> = column(key, row, first + 2)?;
            if attempt.as_deref() == Some(&request.attempt.0.to_be_bytes()[..]) && live {
                // This attempt's own claim: its earlier reply was lost.
                return Ok(Look::Found(ClaimOutcome::acquired(fence)));
            }
            let fingerprint: Vec<u8> = column(key, row, first + 3)?;
            let remaining: i64 = column(key, row, first + 5)?;
            if in_transaction && held && remaining <= 0 {
                return Ok(Look::TakeOver(fence));
            }
            Ok(Look::Found(ClaimOutcome::InProgress {
                fence,
                fingerprint,
                lease_remaining: Duration::from_millis(u64::try_from(remaining).unwrap_or(0)),
            }))
        }
        1 if live => {
            let record: Option<Vec<u8>> = column(key, row, first + 4)?;
            match record {
                Some(record) => Ok(Look::Found(ClaimOutcome::completed(record, fence))),
                None => Err(Error::corrupt(key, "it is completed but holds no record")),
            }
        }
        // An unknown outcome, held: nobody runs the body.
        2 => {
            let remaining: i64 = column(key, row, first + 5)?;
            if remaining > 0 {
                Ok(Look::Found(ClaimOutcome::held(fence)))
            } else if in_transaction && held {
                Ok(Look::TakeOver(fence))
            } else if in_transaction {
                Ok(Look::Found(in_progress_elsewhere(request)))
            } else {
                // Lapsed, yet the claim did not take it: it changed meanwhile.
                Ok(Look::Again)
            }
        }
        // An expired record: this transaction takes it over, or another holds the key.
        1 if in_transaction && held => Ok(Look::TakeOver(fence)),
        1 if !held => Ok(Look::Found(in_progress_elsewhere(request))),
        1 => Ok(Look::Again),
        other => Err(Error::corrupt(
            key,
            format!(
                "its state is {other}, none of 0 (claimed), 1 (completed) and 2 (held with an \
                 unknown outcome)"
            ),
        )),
    }
}

/// Another open transaction holds the key: nothing of its claim can be read yet, its request
/// included (an empty fingerprint: the runtime waits, or refuses, as for its own request).
fn in_progress_elsewhere(request: ClaimRequest<'_>) -> ClaimOutcome {
    ClaimOutcome::InProgress {
        fence: Fence(0),
        fingerprint: Vec::new(),
        lease_remaining: request.lease,
    }
}

/// How long a claim outside a transaction waits on the row lock of a claim that an open
/// transaction holds before it reports the key in progress (the runtime then waits, or
/// refuses, as for any claim in progress). Redis answers such a claim at once; a second keeps
/// the rare wait short without a busy loop.
const ROW_LOCK_WAIT_MS: &str = "1000";

/// The advisory lock of `key`; the claim statement mixes in the table's identity.
fn advisory_lock(key: &str) -> i64 {
    lock_hash(&[b"idem advisory lock", key.as_bytes()])
}

/// The first 8 bytes of a SHA-256 of `parts`, each followed by a NUL.
fn lock_hash(parts: &[&[u8]]) -> i64 {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part);
        digest.update(b"\0");
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.finalize()[..8]);
    i64::from_be_bytes(first)
}

/// A column of idem's row; a value of another type means the row is not idem's.
pub(crate) fn column<'r, T>(key: &str, row: &'r PgRow, index: usize) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|err| {
        Error::corrupt(
            key,
            format!("column {index} of its row does not read as idem's: {err}"),
        )
    })
}

/// A fence as PostgreSQL's `bigint`.
pub(crate) fn fence_value(key: &str, fence: Fence) -> Result<i64, Error> {
    i64::try_from(fence.0).map_err(|_| Error::lease_lost(key))
}

/// Whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A claim's error. In a transaction, a serialization failure means the caller's REPEATABLE
/// READ or SERIALIZABLE snapshot hides another call that committed after it began, which
/// looking again in this transaction can never see: only a new transaction can. Outside one
/// (a database whose default isolation is higher), it is a race a retry settles.
fn claim_error(err: &sqlx::Error, in_transaction: bool) -> Error {
    match err {
        sqlx::Error::Database(db) if in_transaction && db.code().as_deref() == Some("40001") => {
            Error::invalid_option(
                "this transaction's isolation level (REPEATABLE READ or SERIALIZABLE) hides \
                 another call on the key that committed after the transaction began, so it can \
                 neither claim the key nor read its record: roll back and retry in a new \
                 transaction (which replays the result), or run idem's calls under READ \
                 COMMITTED",
            )
        }
        _ => store_error("claim", err, !in_transaction),
    }
}

/// A store error from sqlx. `sent_write`: the statement writes outside a transaction, so a
/// connection lost after sending it leaves its outcome unknown.
pub(crate) fn store_error(operation: &'static str, err: &sqlx::Error, sent_write: bool) -> Error {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Error::store(
            operation,
            format!(
                "{err}: idem's table does not exist; create it with `PostgresStore::migrate()` \
                 or the statements of `PostgresStore::schema_sql()`"
            ),
        ),
        // A statement of the body failed and aborted the transaction (25P02), or a deferred
        // constraint of its writes failed at COMMIT (class 23): the body's doing, not the
        // store's, and a retry of the same body will fail alike.
        sqlx::Error::Database(db)
            if db.code().as_deref() == Some("25P02")
                || (operation == "commit"
                    && db
                        .code()
                        .as_deref()
                        .is_some_and(|code| code.starts_with("23"))) =>
        {
            Error::transaction_aborted(operation, err.to_string())
        }
        // The statement failed on the server and was rolled back: certainly not applied.
        sqlx::Error::Database(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::Tls(_) => Error::store(operation, err.to_string()),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => Error::store(
            operation,
            format!("{err}: idem's table does not have the expected columns"),
        ),
        _ if sent_write => Error::store_indeterminate(operation, err.to_string()),
        _ => Error::store(operation, err.to_string()),
    }
}
