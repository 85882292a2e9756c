//! Transactional mode against a real PostgreSQL: one test per row of the README's table. Each
//! body inserts a ledger row through the transaction's connection, so the ledger is the ground
//! truth of how often the effect happened.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    served, with_context, Call, Error, Idempotency, MemoryStore, OnInProgress, Served,
    TransactionBegun,
};
use idem_postgres::PostgresStore;
use idem_test_servers::PostgresServer;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection, PgPool};

/// A database with idem's table and a ledger, both of this test's own.
struct Db {
    idem: Idempotency,
    pool: PgPool,
    ledger: String,
    table: String,
    _server: Option<PostgresServer>,
}

fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{prefix}_{n:016x}")
}

async fn db() -> Db {
    let (url, server) = idem_test_servers::any_database();
    let table = unique("idem_tx");
    let ledger = unique("ledger");
    let store = PostgresStore::connect(&url)
        .await
        .unwrap()
        .with_table(&table)
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {ledger} (id bigserial PRIMARY KEY, key text NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    Db {
        idem: Idempotency::new(store).with_lease(Duration::from_secs(60)),
        pool,
        ledger,
        table,
        _server: server,
    }
}

impl Db {
    /// Ledger rows for `key`: how often the effect committed.
    async fn rows(&self, key: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE key = $1",
            self.ledger
        )))
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn connection(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
        self.pool.acquire().await.unwrap()
    }

    /// A connection through a proxy that loses the reply to `COMMIT`, after the server
    /// `committed` it or before it reached the server.
    async fn cut_connection(&self, committed: bool) -> PgConnection {
        use sqlx::ConnectOptions;
        let options = self.pool.connect_options();
        let port = idem_test_servers::commit_cutting_proxy(
            options.get_host(),
            options.get_port(),
            committed,
        )
        .await;
        options.as_ref().clone().port(port).connect().await.unwrap()
    }
}

#[derive(Debug)]
enum AppError {
    Idem(Error),
    #[allow(dead_code, reason = "shown by failure messages")]
    Db(sqlx::Error),
    Declined,
}

impl From<Error> for AppError {
    fn from(err: Error) -> Self {
        Self::Idem(err)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(err)
    }
}

/// The effect: one ledger row for `key`, returning its id.
async fn insert(connection: &mut PgConnection, ledger: &str, key: &str) -> Result<i64, AppError> {
    let id = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {ledger} (key) VALUES ($1) RETURNING id"
    )))
    .bind(key)
    .fetch_one(connection)
    .await?;
    Ok(id)
}

fn call(key: &str) -> Call {
    Call::new("charge", key)
}

/// A call in a transaction, the way `#[idempotent(transaction = ...)]` expands: claim (or
/// replay), the body on the claim's connection, then finish.
macro_rules! run_in_transaction {
    ($begin:path, $idem:expr, $call:expr, $connection:expr, async move |$c:ident| $body:expr $(,)?) => {
        async {
            match $begin($idem, $call, $connection).await {
                TransactionBegun::Done(result) => result,
                TransactionBegun::Claimed(mut claim) => {
                    let context = claim.context();
                    let $c = claim.connection();
                    let result = with_context(context, async { $body }).await;
                    claim.finish(result).await
                }
            }
        }
    };
    // With an error classifier.
    ($begin:path, $idem:expr, $call:expr, $connection:expr, $on_error:expr, async move |$c:ident| $body:expr $(,)?) => {
        async {
            match $begin($idem, $call, $connection, $on_error).await {
                TransactionBegun::Done(result) => result,
                TransactionBegun::Claimed(mut claim) => {
                    let context = claim.context();
                    let $c = claim.connection();
                    let result = with_context(context, async { $body }).await;
                    claim.finish(result).await
                }
            }
        }
    };
    ($($rest:tt)*) => {
        run_in_transaction!(idem_postgres::begin, $($rest)*)
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effect_and_its_record_commit_together() {
    let db = db().await;
    let mut connection = db.connection().await;
    let ledger = db.ledger.clone();
    let (first, how) = served(run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| {
            let fence = idem_core::context().unwrap().fence;
            assert!(fence.0 > 0);
            insert(connection, &ledger, "k").await
        },
    ))
    .await;
    let first = first.unwrap();
    assert_eq!(how, Some(Served::Executed));
    assert_eq!(db.rows("k").await, 1);

    let (again, how) = served(run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    ))
    .await;
    assert_eq!((again.unwrap(), how), (first, Some(Served::Replayed)));
    assert_eq!(db.rows("k").await, 1);
}

/// After a rollback the key is free long before its lease lapses: a duplicate that rejects work
/// in progress runs. (A rollback that a dropped claim queued reaches the server when its
/// connection goes back to the pool, a moment later; the lease is 60s, so a key free within 5s
/// was freed by the rollback.)
async fn runs_at_once(db: &Db, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ledger = db.ledger.clone();
        let mut connection = db.connection().await;
        let (result, how) = served(run_in_transaction!(
            &db.idem,
            call(key).on_in_progress(OnInProgress::Reject),
            &mut connection,
            async move |connection| insert(connection, &ledger, key).await,
        ))
        .await;
        match result {
            Ok(_) => {
                assert_eq!(how, Some(Served::Executed));
                break;
            }
            Err(AppError::Idem(Error::InProgress { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("the key was not freed: {err:?}"),
        }
    }
    assert_eq!(db.rows(key).await, 1);
}

/// The key is held by another call: a duplicate that rejects work in progress gets
/// `InProgress`, and its body does not run.
async fn is_held(idem: &Idempotency, connection: &mut PgConnection, ledger: &str, key: &str) {
    let ledger = ledger.to_owned();
    let key = key.to_owned();
    let (result, how) = served(run_in_transaction!(
        idem,
        call(&key).on_in_progress(OnInProgress::Reject),
        connection,
        async move |connection| insert(connection, &ledger, &key).await,
    ))
    .await;
    assert!(
        matches!(result, Err(AppError::Idem(Error::InProgress { .. }))),
        "{result:?}"
    );
    assert_eq!(how, Some(Served::NotRun));
}

/// A call whose body books `key`, waits `pause`, and fails with an error its classifier calls
/// an unknown outcome.
async fn unknown_outcome(
    idem: &Idempotency,
    connection: &mut PgConnection,
    ledger: &str,
    key: &str,
    pause: Duration,
) -> Result<i64, AppError> {
    use idem_core::Disposition;
    let classify = |_: &AppError| Disposition::OutcomeUnknown;
    match idem_postgres::begin_with(idem, call(key), connection, classify).await {
        TransactionBegun::Done(result) => result,
        TransactionBegun::Claimed(mut claim) => {
            tokio::time::sleep(pause).await;
            let inserted = insert(claim.connection(), ledger, key).await;
            claim.finish(inserted.and(Err(AppError::Declined))).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_rolls_back_the_effect_and_frees_the_key() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let result: Result<i64, AppError> = run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| {
            insert(connection, &ledger, "k").await?;
            Err(AppError::Declined)
        },
    )
    .await;
    assert!(matches!(result, Err(AppError::Declined)), "{result:?}");
    assert_eq!(db.rows("k").await, 0);
    runs_at_once(&db, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_back_the_effect_and_frees_the_key() {
    let db = db().await;
    let (idem, pool, ledger) = (db.idem.clone(), db.pool.clone(), db.ledger.clone());
    let panicked = tokio::spawn(async move {
        let mut connection = pool.acquire().await.unwrap();
        let _: Result<i64, AppError> =
            run_in_transaction!(&idem, call("k"), &mut connection, async move |connection| {
                insert(connection, &ledger, "k").await?;
                panic!("the body panics after its write");
            },)
            .await;
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(db.rows("k").await, 0);
    runs_at_once(&db, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_rolls_back_and_frees_the_key_long_before_its_lease() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let written = Arc::new(tokio::sync::Notify::new());
    let cancelled = {
        let (idem, pool, written) = (db.idem.clone(), db.pool.clone(), written.clone());
        tokio::spawn(async move {
            let mut connection = pool.acquire().await.unwrap();
            let _: Result<i64, AppError> =
                run_in_transaction!(&idem, call("k"), &mut connection, async move |connection| {
                    let id = insert(connection, &ledger, "k").await?;
                    written.notify_one();
                    std::future::pending::<()>().await;
                    Ok(id)
                },)
                .await;
        })
    };
    written.notified().await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert_eq!(db.rows("k").await, 0);
    runs_at_once(&db, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_mid_body_rolls_back_and_frees_the_key() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let result: Result<i64, AppError> = run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| {
            insert(connection, &ledger, "k").await?;
            // The server ends this very connection, as a crash of either side would.
            sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                .execute(&mut *connection)
                .await?;
            insert(connection, &ledger, "k").await
        },
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    drop(connection);
    assert_eq!(db.rows("k").await, 0);
    runs_at_once(&db, "k").await;
}

/// Holds the key in one transaction until told to finish, so a duplicate can meet it.
struct Holder {
    task: tokio::task::JoinHandle<Result<i64, AppError>>,
    finish: Arc<tokio::sync::Notify>,
}

async fn hold(db: &Db, key: &'static str, fail: bool) -> Holder {
    hold_as(db, key, fail, None).await
}

/// [`hold`], the holder's request described by `fingerprint`.
async fn hold_as(
    db: &Db,
    key: &'static str,
    fail: bool,
    fingerprint: Option<&'static str>,
) -> Holder {
    let (idem, pool, ledger) = (db.idem.clone(), db.pool.clone(), db.ledger.clone());
    let started = Arc::new(tokio::sync::Notify::new());
    let finish = Arc::new(tokio::sync::Notify::new());
    let task = {
        let (started, finish) = (started.clone(), finish.clone());
        tokio::spawn(async move {
            let mut connection = pool.acquire().await.unwrap();
            let call = match fingerprint {
                Some(fingerprint) => call(key).fingerprint(fingerprint),
                None => call(key),
            };
            run_in_transaction!(&idem, call, &mut connection, async move |connection| {
                let id = insert(connection, &ledger, key).await?;
                started.notify_one();
                finish.notified().await;
                if fail {
                    return Err(AppError::Declined);
                }
                Ok(id)
            })
            .await
        })
    };
    started.notified().await;
    Holder { task, finish }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_duplicate_replays_the_first_commit() {
    let db = db().await;
    let holder = hold(&db, "k", false).await;
    let runs = Arc::new(AtomicU32::new(0));
    let duplicate = {
        let (idem, pool, ledger, runs) = (
            db.idem.clone(),
            db.pool.clone(),
            db.ledger.clone(),
            runs.clone(),
        );
        tokio::spawn(async move {
            let mut connection = pool.acquire().await.unwrap();
            served(run_in_transaction!(
                &idem,
                call("k"),
                &mut connection,
                async move |connection| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    insert(connection, &ledger, "k").await
                },
            ))
            .await
        })
    };
    // The duplicate is waiting (it cannot finish while the first holds the key).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!duplicate.is_finished());
    holder.finish.notify_one();
    let first = holder.task.await.unwrap().unwrap();
    let (replayed, how) = duplicate.await.unwrap();
    assert_eq!((replayed.unwrap(), how), (first, Some(Served::Waited)));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(db.rows("k").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_duplicate_runs_when_the_first_rolls_back() {
    let db = db().await;
    let holder = hold(&db, "k", true).await;
    let duplicate = {
        let (idem, pool, ledger) = (db.idem.clone(), db.pool.clone(), db.ledger.clone());
        tokio::spawn(async move {
            let mut connection = pool.acquire().await.unwrap();
            served(run_in_transaction!(
                &idem,
                call("k"),
                &mut connection,
                async move |connection| insert(connection, &ledger, "k").await,
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!duplicate.is_finished());
    holder.finish.notify_one();
    assert!(matches!(
        holder.task.await.unwrap(),
        Err(AppError::Declined)
    ));
    let (ran, how) = duplicate.await.unwrap();
    assert!(ran.is_ok(), "{ran:?}");
    assert_eq!(how, Some(Served::Executed));
    assert_eq!(db.rows("k").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_duplicate_gets_in_progress_without_waiting() {
    let db = db().await;
    let holder = hold(&db, "k", false).await;
    let mut connection = db.connection().await;
    // The first call cannot finish before we tell it to: an answer now did not wait for it.
    is_held(&db.idem, &mut connection, &db.ledger, "k").await;
    assert!(!holder.task.is_finished());
    holder.finish.notify_one();
    holder.task.await.unwrap().unwrap();
    assert_eq!(db.rows("k").await, 1);
}

/// A duplicate of `key` described by `fingerprint`, rejecting work in progress: its error.
async fn duplicate(db: &Db, key: &str, fingerprint: Option<&str>) -> Error {
    let mut connection = db.connection().await;
    let ledger = db.ledger.clone();
    let owned = key.to_owned();
    let call = match fingerprint {
        Some(fingerprint) => call(key).fingerprint(fingerprint),
        None => call(key),
    };
    let result = run_in_transaction!(
        &db.idem,
        call.on_in_progress(OnInProgress::Reject),
        &mut connection,
        async move |connection| insert(connection, &ledger, &owned).await,
    )
    .await;
    match result {
        Err(AppError::Idem(err)) => err,
        other => panic!("the body of a duplicate ran: {other:?}"),
    }
}

/// While the holder's claim is uncommitted (unreadable), its request is unknown: every duplicate
/// is told the key is in progress, whatever its fingerprint (none is told it is another request:
/// a retry told so, a 422 behind the HTTP layer, might be sent again under a new key and repeat
/// the effect). Once the holder commits, another request is `KeyReused` and the same replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_an_uncommitted_claim_are_in_progress_until_it_commits() {
    let db = db().await;
    let holder = hold_as(&db, "k", false, Some("order 1: 10 EUR")).await;
    let in_progress = |err: &Error| matches!(err, Error::InProgress { .. });
    for fingerprint in [Some("order 1: 99 EUR"), Some("order 1: 10 EUR"), None] {
        let err = duplicate(&db, "k", fingerprint).await;
        assert!(in_progress(&err), "{fingerprint:?}: {err:?}");
    }
    holder.finish.notify_one();
    holder.task.await.unwrap().unwrap();
    let err = duplicate(&db, "k", Some("order 1: 99 EUR")).await;
    assert!(matches!(err, Error::KeyReused { .. }), "{err:?}");
    assert_eq!(db.rows("k").await, 1);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Refusal {
    Declined,
    Idem(String),
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        Self::Idem(err.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_error_rolls_back_the_writes_and_replays() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let runs = AtomicU32::new(0);
    let mut connection = db.connection().await;
    for _ in 0..2 {
        let result: Result<i64, Refusal> = run_in_transaction!(
            idem_postgres::begin_recording_errors,
            &db.idem,
            call("k"),
            &mut connection,
            async move |connection| {
                runs.fetch_add(1, Ordering::SeqCst);
                insert(connection, &ledger, "k")
                    .await
                    .map_err(|err| Refusal::Idem(format!("{err:?}")))?;
                Err(Refusal::Declined)
            },
        )
        .await;
        assert_eq!(result, Err(Refusal::Declined));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second was replayed");
    assert_eq!(db.rows("k").await, 0, "the body's write was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_request_under_the_key_is_refused_and_writes_nothing() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    run_in_transaction!(
        &db.idem,
        call("k").fingerprint("order 1: 10 EUR"),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    )
    .await
    .unwrap();
    let result = run_in_transaction!(
        &db.idem,
        call("k").fingerprint("order 1: 99 EUR"),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    )
    .await;
    assert!(
        matches!(result, Err(AppError::Idem(Error::KeyReused { .. }))),
        "{result:?}"
    );
    assert_eq!(db.rows("k").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outer_rollback_takes_the_record_with_the_effect() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let mut outer = connection.begin().await.unwrap();
    let (result, how) = served(run_in_transaction!(
        &db.idem,
        call("k"),
        &mut outer,
        async move |connection| insert(connection, &ledger, "k").await,
    ))
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(how, Some(Served::Executed));
    outer.rollback().await.unwrap();
    assert_eq!(db.rows("k").await, 0);
    // No record either: the next delivery runs.
    runs_at_once(&db, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outer_commit_makes_the_record_durable_with_the_caller_s_writes() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let mut outer = connection.begin().await.unwrap();
    let first = run_in_transaction!(&db.idem, call("k"), &mut outer, async move |connection| {
        insert(connection, &ledger, "k").await
    },)
    .await
    .unwrap();
    insert(&mut outer, &ledger, "caller").await.unwrap();
    outer.commit().await.unwrap();
    assert_eq!((db.rows("k").await, db.rows("caller").await), (1, 1));
    let (again, how) = served(run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    ))
    .await;
    assert_eq!((again.unwrap(), how), (first, Some(Served::Replayed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_over_another_store_is_refused_before_the_body() {
    let db = db().await;
    let memory = Idempotency::new(MemoryStore::new());
    let mut connection = db.connection().await;
    let ledger = db.ledger.clone();
    let (result, how) = served(run_in_transaction!(
        &memory,
        call("k"),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    ))
    .await;
    match result {
        Err(AppError::Idem(Error::InvalidOption { reason, .. })) => {
            assert!(reason.contains("PostgresStore"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(how, Some(Served::NotRun));
    assert_eq!(db.rows("k").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_are_not_idem_s_are_corrupt_and_left_alone() {
    let db = db().await;
    let key = db.idem.store_key("charge", "k").unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (key, state, fence, fingerprint, lease_until, expires_at) \
         VALUES ($1, 7, 3, '', now(), now() + interval '1 hour')",
        db.table
    )))
    .bind(key.as_bytes())
    .execute(&db.pool)
    .await
    .unwrap();
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let result = run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    )
    .await;
    assert!(
        matches!(result, Err(AppError::Idem(Error::Corrupt { .. }))),
        "{result:?}"
    );
    // Outside a transaction too, and the row is untouched.
    let result = db.idem.run(call("k"), async { Ok::<i64, Error>(1) }).await;
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
    let state: i16 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT state FROM {} WHERE key = $1",
        db.table
    )))
    .bind(key.as_bytes())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, 7);
    assert_eq!(db.rows("k").await, 0);
}

/// A key claimed outside a transaction (`Idempotency::run`) while transactional duplicates wait:
/// the waiting looks must not lock the holder's row, or its renewals and its record block until
/// its lease lapses and a duplicate takes over and books again (a reviewer saw 2 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_transactional_duplicates_do_not_block_an_autocommit_holder() {
    let mut db = db().await;
    db.idem = db.idem.clone().with_lease(Duration::from_secs(2));
    let holder = {
        let (idem, pool, ledger) = (db.idem.clone(), db.pool.clone(), db.ledger.clone());
        tokio::spawn(async move {
            idem.run(call("k"), async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut connection = pool.acquire().await.unwrap();
                insert(&mut connection, &ledger, "k")
                    .await
                    .map_err(|err| Error::store("insert", format!("{err:?}")))
            })
            .await
        })
    };
    let mut duplicates = Vec::new();
    for at in [100, 150] {
        let (idem, pool, ledger) = (db.idem.clone(), db.pool.clone(), db.ledger.clone());
        duplicates.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at)).await;
            let mut connection = pool.acquire().await.unwrap();
            served(run_in_transaction!(
                &idem,
                call("k"),
                &mut connection,
                async move |connection| insert(connection, &ledger, "k").await,
            ))
            .await
        }));
    }
    let booked = holder.await.unwrap().unwrap();
    for duplicate in duplicates {
        let (replayed, how) = duplicate.await.unwrap();
        assert_eq!((replayed.unwrap(), how), (booked, Some(Served::Waited)));
    }
    assert_eq!(db.rows("k").await, 1);
}

/// A claim outside a transaction whose holder died (its lease lapsed, nothing recorded) is taken
/// over by a call in a transaction, under a greater fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_is_taken_over_in_a_transaction() {
    use idem_core::{AttemptId, ClaimOutcome, ClaimRequest, Store};
    let db = db().await;
    let key = db.idem.store_key("charge", "k").unwrap();
    let store = db.idem.store_as::<PostgresStore>().unwrap();
    let request = ClaimRequest::new(&key, AttemptId::random(), b"", idem_core::MIN_LEASE);
    let ClaimOutcome::Acquired { fence: crashed, .. } = store.claim(request).await.unwrap() else {
        panic!("the first claim is granted");
    };
    tokio::time::sleep(idem_core::MIN_LEASE + Duration::from_millis(100)).await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let (result, how) = served(run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| {
            assert!(idem_core::context().unwrap().fence > crashed);
            insert(connection, &ledger, "k").await
        },
    ))
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(how, Some(Served::Executed));
    assert_eq!(db.rows("k").await, 1);
}

/// Expired rows of another state or fence than idem's are not idem's: corrupt, never taken
/// over (a reviewer saw a state-7 row overwritten once it had expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_that_are_not_idem_s_are_left_alone() {
    let db = db().await;
    for (key, state, fence) in [("seven", 7, 3), ("negative", -5, -3)] {
        let store_key = db.idem.store_key("charge", key).unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (key, state, fence, fingerprint, lease_until, expires_at) \
             VALUES ($1, $2, $3, '', now() - interval '1 hour', now() - interval '1 hour')",
            db.table
        )))
        .bind(store_key.as_bytes())
        .bind(state as i16)
        .bind(fence as i64)
        .execute(&db.pool)
        .await
        .unwrap();
        let ledger = db.ledger.clone();
        let mut connection = db.connection().await;
        let result = run_in_transaction!(
            &db.idem,
            call(key),
            &mut connection,
            async move |connection| insert(connection, &ledger, key).await,
        )
        .await;
        assert!(
            matches!(result, Err(AppError::Idem(Error::Corrupt { .. }))),
            "{key}: {result:?}"
        );
        let outside = db.idem.run(call(key), async { Ok::<i64, Error>(1) }).await;
        assert!(
            matches!(outside, Err(Error::Corrupt { .. })),
            "{key}: {outside:?}"
        );
        let reaped = db
            .idem
            .store_as::<PostgresStore>()
            .unwrap()
            .reap(100)
            .await
            .unwrap();
        assert_eq!(reaped, 0, "{key}");
        let kept: i16 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT state FROM {} WHERE key = $1",
            db.table
        )))
        .bind(store_key.as_bytes())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(kept, state as i16, "{key}");
        assert_eq!(db.rows(key).await, 0);
    }
}

/// `Disposition::OutcomeUnknown` holds the key for a lease from inside the call's own transaction:
/// it needs no other connection (a reviewer saw the hold silently lost when the pool had none
/// free, and a waiting duplicate run at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_holds_the_key_without_another_connection() {
    let db = db().await;
    // One connection in all: the call's own.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(db.pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool.clone())
        .with_table(&db.table)
        .unwrap();
    let idem = Idempotency::new(store).with_lease(Duration::from_secs(60));
    let mut connection = pool.acquire().await.unwrap();
    let unknown = unknown_outcome(&idem, &mut connection, &db.ledger, "k", Duration::ZERO).await;
    assert!(matches!(unknown, Err(AppError::Declined)), "{unknown:?}");
    assert_eq!(db.rows("k").await, 0, "the body's write was undone");
    is_held(&idem, &mut connection, &db.ledger, "k").await;
}

/// A body's own savepoint of any name cannot stand in for idem's: with `record_errors`, the
/// body's writes are undone to idem's savepoint (a reviewer saw a write committed beside the
/// recorded error when the body made a savepoint named `idem_body`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_s_own_savepoint_does_not_keep_its_writes() {
    let db = db().await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let result: Result<i64, Refusal> = run_in_transaction!(
        idem_postgres::begin_recording_errors,
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| {
            insert(connection, &ledger, "k")
                .await
                .map_err(|err| Refusal::Idem(format!("{err:?}")))?;
            sqlx::raw_sql("SAVEPOINT idem_body")
                .execute(&mut *connection)
                .await
                .map_err(|err| Refusal::Idem(err.to_string()))?;
            Err(Refusal::Declined)
        },
    )
    .await;
    assert_eq!(result, Err(Refusal::Declined));
    assert_eq!(db.rows("k").await, 0);
}

/// A connection lost during `COMMIT`: the caller gets an indeterminate error, and its retry
/// replays if the commit happened and runs if it did not, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_indeterminate_and_the_retry_settles_it() {
    let db = db().await;
    for (key, committed) in [("committed", true), ("not-committed", false)] {
        let mut cut = db.cut_connection(committed).await;
        let ledger = db.ledger.clone();
        let (lost, how) = served(run_in_transaction!(
            &db.idem,
            call(key),
            &mut cut,
            async move |connection| insert(connection, &ledger, key).await,
        ))
        .await;
        match lost {
            // Regression (issue 20): it was `Error::Store` saying the body did not run, with
            // `body_may_have_run() == false`: a caller that compensates would refund a
            // committed charge.
            Err(AppError::Idem(err @ Error::CommitUnknown { .. })) => {
                assert!(err.is_indeterminate(), "{key}: {err:?}");
                assert!(err.body_may_have_run(), "{key}: {err}");
                assert!(!err.to_string().contains("did not run"), "{key}: {err}");
            }
            other => panic!("{key}: {other:?}"),
        }
        assert_eq!(how, Some(Served::Executed));
        assert_eq!(db.rows(key).await, i64::from(committed), "{key}");

        let ledger = db.ledger.clone();
        let mut connection = db.connection().await;
        let (retry, how) = served(run_in_transaction!(
            &db.idem,
            call(key),
            &mut connection,
            async move |connection| insert(connection, &ledger, key).await,
        ))
        .await;
        assert!(retry.is_ok(), "{key}: {retry:?}");
        let expected = if committed {
            Served::Replayed
        } else {
            Served::Executed
        };
        assert_eq!(how, Some(expected), "{key}");
        assert_eq!(
            db.rows(key).await,
            1,
            "{key}: booked once, whatever the commit did"
        );
    }
}

/// An unknown outcome after a body longer than the lease still holds the key for a whole lease
/// from the end of the call (a reviewer saw the claim commit already lapsed, and a retry run at
/// once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_after_a_long_body_holds_a_whole_lease() {
    let mut db = db().await;
    db.idem = db.idem.clone().with_lease(Duration::from_millis(500));
    let mut connection = db.connection().await;
    // A body longer than the lease.
    let pause = Duration::from_millis(700);
    let unknown = unknown_outcome(&db.idem, &mut connection, &db.ledger, "k", pause).await;
    assert!(matches!(unknown, Err(AppError::Declined)), "{unknown:?}");
    is_held(&db.idem, &mut connection, &db.ledger, "k").await;
    assert_eq!(db.rows("k").await, 0);
}

/// Every observed outcome of this test's calls.
#[derive(Default)]
struct Outcomes(std::sync::Mutex<Vec<idem_core::CallOutcome>>);

impl idem_core::Observer for Outcomes {
    fn call_finished(&self, report: &idem_core::CallReport<'_>) {
        self.0.lock().unwrap().push(report.outcome);
    }
}

/// Transactional calls are observed like the others: executed, replayed, released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_calls_report_their_outcomes() {
    use idem_core::CallOutcome;
    let mut db = db().await;
    let outcomes = Arc::new(Outcomes::default());
    db.idem = db.idem.clone().with_observer(outcomes.clone());
    let mut connection = db.connection().await;
    for _ in 0..2 {
        let ledger = db.ledger.clone();
        run_in_transaction!(
            &db.idem,
            call("observed"),
            &mut connection,
            async move |connection| insert(connection, &ledger, "observed").await,
        )
        .await
        .unwrap();
    }
    let ledger = db.ledger.clone();
    let declined: Result<i64, AppError> = run_in_transaction!(
        &db.idem,
        call("declined"),
        &mut connection,
        async move |connection| {
            insert(connection, &ledger, "declined").await?;
            Err(AppError::Declined)
        },
    )
    .await;
    assert!(declined.is_err());
    // A claim dropped unfinished rolls back and frees its key: released, not an unknown
    // outcome (issue 20, defect 8).
    let mut dropped_on = db.connection().await;
    match idem_postgres::begin::<i64, AppError>(&db.idem, call("dropped"), &mut dropped_on).await {
        TransactionBegun::Claimed(claim) => drop(claim),
        TransactionBegun::Done(done) => panic!("not claimed: {done:?}"),
    }
    // Back in the pool, the connection rolls the dropped transaction back.
    drop(dropped_on);
    runs_at_once(&db, "dropped").await;
    assert_eq!(
        outcomes.0.lock().unwrap()[..4],
        [
            CallOutcome::Executed,
            CallOutcome::Replayed,
            CallOutcome::Released,
            CallOutcome::Released
        ]
    );
}

/// Issue 20 (a suspicion, confirmed): the key's advisory lock was keyed on the table's name as
/// written, so a store naming `public.t` and one naming `t` took two locks for one table, and
/// a duplicate through the other waited on the holder's uncommitted row instead of being told
/// at once. The lock is now keyed on the table itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_under_two_names_shares_its_locks() {
    let db = db().await;
    let holder = hold(&db, "k", false).await;
    let qualified = PostgresStore::from_pool(db.pool.clone())
        .with_table(&format!("public.{}", db.table))
        .unwrap();
    let other = Idempotency::new(qualified).with_lease(Duration::from_secs(60));
    let mut connection = db.connection().await;
    let ledger = db.ledger.clone();
    let asked = run_in_transaction!(
        &other,
        call("k").on_in_progress(OnInProgress::Reject),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), asked).await;
    let Ok(answer) = answer else {
        holder.finish.notify_one();
        panic!("the duplicate waited on the holder's row instead of being told it is held");
    };
    assert!(
        matches!(answer, Err(AppError::Idem(Error::InProgress { .. }))),
        "{answer:?}"
    );
    holder.finish.notify_one();
    holder.task.await.unwrap().unwrap();
    assert_eq!(db.rows("k").await, 1);
}

/// The other half of the same suspicion: one unqualified table name in two tenants' schemas (a
/// search path per tenant) took one lock, so one tenant's open claim held the other's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_in_two_schemas_takes_two_locks() {
    use sqlx::postgres::PgPoolOptions;
    let db = db().await;
    let table = unique("tenant_idem");
    let mut tenants = Vec::new();
    for schema in ["tenant_a", "tenant_b"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE {schema}.{ledger} (id bigserial PRIMARY KEY, key text NOT NULL)",
            ledger = db.ledger
        )))
        .execute(&db.pool)
        .await
        .unwrap();
        let options = (*db.pool.connect_options())
            .clone()
            .options([("search_path", schema)]);
        let pool = PgPoolOptions::new().connect_with(options).await.unwrap();
        let store = PostgresStore::from_pool(pool.clone())
            .with_table(&table)
            .unwrap();
        store.migrate().await.unwrap();
        tenants.push((
            Idempotency::new(store).with_lease(Duration::from_secs(60)),
            pool,
        ));
    }
    let (a_idem, a_pool) = tenants[0].clone();
    let (b_idem, b_pool) = tenants[1].clone();
    let ledger = db.ledger.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let finish = Arc::new(tokio::sync::Notify::new());
    let holder = {
        let (started, finish, ledger) = (started.clone(), finish.clone(), ledger.clone());
        tokio::spawn(async move {
            let mut connection = a_pool.acquire().await.unwrap();
            run_in_transaction!(
                &a_idem,
                call("k"),
                &mut connection,
                async move |connection| {
                    let id = insert(connection, &ledger, "k").await?;
                    started.notify_one();
                    finish.notified().await;
                    Ok::<i64, AppError>(id)
                }
            )
            .await
        })
    };
    started.notified().await;
    let mut connection = b_pool.acquire().await.unwrap();
    let tenant_b = run_in_transaction!(
        &b_idem,
        call("k").on_in_progress(OnInProgress::Reject),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    )
    .await;
    finish.notify_one();
    holder.await.unwrap().unwrap();
    assert!(
        tenant_b.is_ok(),
        "tenant b's key was held by tenant a: {tenant_b:?}"
    );
}

/// Issue 20 (a suspicion, confirmed): a nested call with the same key in the transaction that
/// holds it waited a whole lease on itself. It is refused at once, and the outer call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_with_the_held_key_is_refused_at_once() {
    let db = db().await;
    let mut connection = db.connection().await;
    let (idem, ledger) = (db.idem.clone(), db.ledger.clone());
    let outer = run_in_transaction!(
        &db.idem,
        call("k"),
        &mut connection,
        async move |connection| {
            let nested = run_in_transaction!(&idem, call("k"), &mut *connection, async move |c| {
                insert(c, &ledger, "nested").await
            });
            let nested = tokio::time::timeout(Duration::from_secs(5), nested).await;
            let Ok(nested) = nested else {
                panic!("the nested call waited on its own transaction's claim");
            };
            let refused = match &nested {
                Err(AppError::Idem(err @ Error::InvalidOption { .. })) => err.to_string(),
                other => panic!("{other:?}"),
            };
            assert!(refused.contains("nested call"), "{refused}");
            Ok::<i64, AppError>(7)
        }
    )
    .await;
    assert_eq!(outer.unwrap(), 7);
    assert_eq!(db.rows("nested").await, 0);
}

/// Issue 20 (a test the suite lacked): an error its classifier releases, in `begin_with` and in
/// `begin_recording_errors_with`, rolls back and frees the key at once, well inside the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_error_frees_the_key_at_once_under_every_classifier() {
    use idem_core::Disposition;
    let db = db().await;
    let release = |_: &Refusal| Disposition::Release;
    let mut connection = db.connection().await;
    let ledger = db.ledger.clone();
    let released = run_in_transaction!(
        idem_postgres::begin_recording_errors_with,
        &db.idem,
        call("recording"),
        &mut connection,
        release,
        async move |connection| {
            insert(connection, &ledger, "recording").await.unwrap();
            Err::<i64, _>(Refusal::Declined)
        },
    )
    .await;
    assert_eq!(released, Err(Refusal::Declined));
    assert_eq!(db.rows("recording").await, 0, "the write was rolled back");
    runs_at_once(&db, "recording").await;

    let ledger = db.ledger.clone();
    let released = run_in_transaction!(
        idem_postgres::begin_with,
        &db.idem,
        call("classified"),
        &mut connection,
        |_: &AppError| Disposition::Release,
        async move |connection| {
            insert(connection, &ledger, "classified").await?;
            Err::<i64, _>(AppError::Declined)
        },
    )
    .await;
    assert!(matches!(released, Err(AppError::Declined)), "{released:?}");
    assert_eq!(db.rows("classified").await, 0, "the write was rolled back");
    runs_at_once(&db, "classified").await;
}

/// Issue 20 (a test the suite lacked): while a committed claim is pending (an unknown outcome
/// holds the key), another request under its key is `KeyReused` at once, and the same request
/// `InProgress`: the transactional twin of the autocommit check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_request_meets_a_committed_pending_claim_with_key_reused() {
    use idem_core::Disposition;
    let db = db().await;
    let mut connection = db.connection().await;
    let classify = |_: &AppError| Disposition::OutcomeUnknown;
    let claim = call("k").fingerprint("order 1: 10 EUR");
    let unknown: Result<i64, _> =
        match idem_postgres::begin_with(&db.idem, claim, &mut connection, classify).await {
            TransactionBegun::Done(result) => result,
            TransactionBegun::Claimed(claim) => claim.finish(Err(AppError::Declined)).await,
        };
    assert!(matches!(unknown, Err(AppError::Declined)), "{unknown:?}");
    let err = duplicate(&db, "k", Some("order 1: 99 EUR")).await;
    assert!(matches!(err, Error::KeyReused { .. }), "{err:?}");
    let err = duplicate(&db, "k", Some("order 1: 10 EUR")).await;
    assert!(matches!(err, Error::InProgress { .. }), "{err:?}");
    assert_eq!(db.rows("k").await, 0);
}

/// Issue 20 (defect 8): a result that cannot be recorded (a NaN) in a transaction said "nothing
/// was claimed and the body did not run", though the body ran and its writes were rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecordable_result_says_the_body_ran_and_its_writes_rolled_back() {
    let db = db().await;
    let mut connection = db.connection().await;
    let ledger = db.ledger.clone();
    let (result, how) = served(run_in_transaction!(
        &db.idem,
        call("nan"),
        &mut connection,
        async move |connection| {
            insert(connection, &ledger, "nan").await?;
            Ok::<f64, AppError>(f64::NAN)
        },
    ))
    .await;
    let err = match result {
        Err(AppError::Idem(err @ Error::RolledBack { .. })) => err,
        other => panic!("{other:?}"),
    };
    assert!(err.body_may_have_run(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("ran in a database transaction") && message.contains("the key is free"),
        "{message}"
    );
    assert!(!message.contains("did not run"), "{message}");
    assert_eq!(how, Some(Served::Executed));
    assert_eq!(db.rows("nan").await, 0, "the write was rolled back");
    runs_at_once(&db, "nan").await;
}

/// Issue 20 (defect 8): a duplicate waiting in a REPEATABLE READ transaction, whose holder
/// commits after its snapshot, got "the store failed, retry" (retrying in that transaction can
/// never succeed). It is told that the isolation level hides the other call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_a_repeatable_read_transaction_is_told_about_its_isolation() {
    let db = db().await;
    let holder = hold(&db, "k", false).await;
    let mut outer = db.pool.begin().await.unwrap();
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .execute(&mut *outer)
        .await
        .unwrap();
    let ledger = db.ledger.clone();
    let duplicate = tokio::spawn({
        let idem = db.idem.clone();
        async move {
            let result = run_in_transaction!(&idem, call("k"), &mut *outer, async move |c| {
                insert(c, &ledger, "k").await
            })
            .await;
            drop(outer);
            result
        }
    });
    // The duplicate waits on the holder's uncommitted claim; then the holder commits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.finish.notify_one();
    holder.task.await.unwrap().unwrap();
    let err = match duplicate.await.unwrap() {
        Err(AppError::Idem(err @ Error::InvalidOption { .. })) => err,
        other => panic!("{other:?}"),
    };
    assert!(err.to_string().contains("REPEATABLE READ"), "{err}");
    assert_eq!(db.rows("k").await, 1);
}

/// Issue 20 (defect 4): a claim dropped mid-body on a connection its caller keeps (a worker's
/// long-lived connection, the call wrapped in a timeout) held its key until that connection ran
/// another statement: a redelivery long after the lease still got `InProgress`. A transaction
/// holding a claim that sits idle for a lease is ended by the server, and the key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_on_a_kept_connection_frees_its_key_within_a_lease() {
    use sqlx::ConnectOptions;
    let db = db().await;
    let lease = Duration::from_secs(1);
    let idem = db.idem.clone().with_lease(lease);
    let mut kept = db.pool.connect_options().connect().await.unwrap();
    let ledger = db.ledger.clone();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(200),
        run_in_transaction!(&idem, call("k"), &mut kept, async move |connection| {
            insert(connection, &ledger, "k").await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<i64, AppError>(1)
        }),
    )
    .await;
    assert!(timed_out.is_err(), "the call was not cancelled");
    // The worker keeps its connection, and does not use it.
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let ledger = db.ledger.clone();
    let mut connection = db.connection().await;
    let redelivered = run_in_transaction!(
        &idem,
        call("k").on_in_progress(OnInProgress::Reject),
        &mut connection,
        async move |connection| insert(connection, &ledger, "k").await,
    )
    .await;
    assert!(redelivered.is_ok(), "{redelivered:?}");
    assert_eq!(db.rows("k").await, 1);
    // The kept connection's transaction was ended by the server: its next use says so.
    let after = sqlx::query("SELECT 1").execute(&mut kept).await;
    assert!(after.is_err(), "the abandoned transaction is still open");
}

/// Issue 20 (defect 5): two transactions, each holding one key and claiming the other's, both
/// waited a whole lease (30 s by default) and then both failed `InProgress`: PostgreSQL's
/// deadlock detector could not see idem's polling. Now one of them is told of the deadlock
/// within about a second, and the other proceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_claiming_two_keys_in_opposite_orders_do_not_stall() {
    let db = db().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let side = |first: &'static str, second: &'static str| {
        let (idem, pool, ledger, barrier) = (
            db.idem.clone(),
            db.pool.clone(),
            db.ledger.clone(),
            barrier.clone(),
        );
        tokio::spawn(async move {
            let mut connection = pool.acquire().await.unwrap();
            let inner = idem.clone();
            run_in_transaction!(&idem, call(first), &mut connection, async move |outer| {
                insert(outer, &ledger, first).await?;
                barrier.wait().await;
                run_in_transaction!(&inner, call(second), &mut *outer, async move |c| {
                    insert(c, &ledger, second).await
                })
                .await
            })
            .await
        })
    };
    let started = tokio::time::Instant::now();
    let (a, b) = (side("a", "b"), side("b", "a"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let elapsed = started.elapsed();
    let deadlocked = |result: &Result<i64, AppError>| {
        matches!(result, Err(AppError::Idem(Error::Deadlock { .. })))
    };
    assert!(
        (deadlocked(&a) && b.is_ok()) || (deadlocked(&b) && a.is_ok()),
        "one side is told of the deadlock, the other proceeds: {a:?} {b:?}"
    );
    // Far inside the 60 s lease: the database found the deadlock, nobody waited a lease out.
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    let message = [a, b]
        .into_iter()
        .find_map(|r| match r {
            Err(AppError::Idem(err)) => Some(err.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(message.contains("deadlock"), "{message}");
    // The side that proceeded booked both keys; the other booked nothing.
    assert_eq!((db.rows("a").await, db.rows("b").await), (1, 1));
}

/// Issue 20 (defect 2): `begin_with` inside the caller's own transaction, a body whose provider
/// call timed out (classified `OutcomeUnknown`), then the caller rolled back as `?` does: the
/// hold vanished with the rollback and the retry called the provider again (`calls=2`). An
/// unknown outcome cannot hold its key inside the caller's transaction, so classifying calls
/// are refused there before the body runs; recording every error still works there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classified_errors_are_refused_inside_the_caller_s_own_transaction() {
    use idem_core::Disposition;
    let db = db().await;
    let provider_calls = AtomicU32::new(0);
    let classify = |_: &AppError| Disposition::OutcomeUnknown;
    for _ in 0..2 {
        let mut outer = db.pool.begin().await.unwrap();
        let result = run_in_transaction!(
            idem_postgres::begin_with,
            &db.idem,
            call("k"),
            &mut *outer,
            classify,
            async move |_connection| {
                provider_calls.fetch_add(1, Ordering::SeqCst);
                Err::<i64, _>(AppError::Declined) // the provider timed out
            },
        )
        .await;
        let err = match result {
            Err(AppError::Idem(err @ Error::InvalidOption { .. })) => err,
            other => panic!("{other:?}"),
        };
        assert!(err.to_string().contains("your own transaction"), "{err}");
        outer.rollback().await.unwrap();
    }
    assert_eq!(provider_calls.load(Ordering::SeqCst), 0);

    // Recording every error is no hold: it runs in the caller's transaction.
    let mut outer = db.pool.begin().await.unwrap();
    let recorded = run_in_transaction!(
        idem_postgres::begin_recording_errors,
        &db.idem,
        call("r"),
        &mut *outer,
        async move |_connection| Err::<i64, _>(Refusal::Declined),
    )
    .await;
    assert_eq!(recorded, Err(Refusal::Declined));
    outer.commit().await.unwrap();
    // On a connection of its own, the same classified call holds its key.
    let mut connection = db.connection().await;
    let unknown = unknown_outcome(&db.idem, &mut connection, &db.ledger, "k", Duration::ZERO).await;
    assert!(matches!(unknown, Err(AppError::Declined)), "{unknown:?}");
    is_held(&db.idem, &mut connection, &db.ledger, "k").await;
}

/// Issue 20 (a suspicion, confirmed): a caller that began its transaction with a raw `BEGIN`
/// (which sqlx does not count) had its earlier writes committed by idem's `COMMIT`, and then
/// ran on outside any transaction. Such a connection is refused before the body runs, and the
/// caller's writes are left to its own rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_with_a_raw_begin_is_refused_not_committed() {
    let db = db().await;
    let mut connection = db.connection().await;
    sqlx::raw_sql("BEGIN")
        .execute(&mut *connection)
        .await
        .unwrap();
    insert(&mut connection, &db.ledger, "earlier")
        .await
        .unwrap();
    let ledger = db.ledger.clone();
    let result = run_in_transaction!(&db.idem, call("k"), &mut *connection, async move |c| {
        insert(c, &ledger, "k").await
    })
    .await;
    let err = match result {
        Err(AppError::Idem(err @ Error::InvalidOption { .. })) => err,
        other => panic!("{other:?}"),
    };
    assert!(err.to_string().contains("raw `BEGIN`"), "{err}");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *connection)
        .await
        .unwrap();
    assert_eq!(
        db.rows("earlier").await,
        0,
        "idem committed the caller's write"
    );
    assert_eq!(db.rows("k").await, 0);
    // The connection is usable again, and a call on it runs.
    runs_at_once(&db, "k").await;
}

/// Issue 20 (a suspicion, refuted): SERIALIZABLE callers, each claiming its own key among
/// other keys' records, interleaved, both commit: idem's claim reads its key's row only when
/// its insert found one, so unrelated keys take no predicate locks on each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_callers_with_unrelated_keys() {
    let db = db().await;
    // Other keys' records beside them, on the same index pages.
    let mut connection = db.connection().await;
    for i in 0..200 {
        let key = format!("other-{i}");
        let ledger = db.ledger.clone();
        run_in_transaction!(&db.idem, call(&key), &mut connection, async move |c| {
            insert(c, &ledger, "other").await
        })
        .await
        .unwrap();
    }
    let mut one = db.pool.begin().await.unwrap();
    let mut two = db.pool.begin().await.unwrap();
    for tx in [&mut one, &mut two] {
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .execute(&mut **tx)
            .await
            .unwrap();
    }
    for (tx, key) in [(&mut one, "a"), (&mut two, "b")] {
        let ledger = db.ledger.clone();
        let claimed = run_in_transaction!(&db.idem, call(key), &mut **tx, async move |c| {
            insert(c, &ledger, key).await
        })
        .await;
        assert!(claimed.is_ok(), "{key}: {claimed:?}");
    }
    let first = one.commit().await;
    let second = two.commit().await;
    let failures: Vec<_> = [&first, &second]
        .into_iter()
        .filter_map(|r| match r {
            Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            Err(other) => panic!("{other:?}"),
            Ok(()) => None,
        })
        .collect();
    println!("serializable, unrelated keys: commits {first:?} / {second:?}");
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "false serialization failures"
    );
}

/// Issue 20 (a suspicion, confirmed): a call outside a transaction whose key an open
/// transaction claimed waited on that row for as long as the transaction stayed open (forever,
/// for one that never ends), whatever its own patience. It now waits on the row a second at a
/// time and then as any duplicate does: a rejecting one gets `InProgress` within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autocommit_call_meeting_an_open_transaction_s_claim_does_not_wait_forever() {
    let db = db().await;
    let holder = hold(&db, "k", false).await;
    let runs = AtomicU32::new(0);
    let duplicate = db
        .idem
        .run(call("k").on_in_progress(OnInProgress::Reject), async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<i64, Error>(0)
        });
    let answered = tokio::time::timeout(Duration::from_secs(10), duplicate).await;
    let Ok(answer) = answered else {
        panic!("the autocommit call still waits on the open transaction's row after 10 s");
    };
    assert!(
        matches!(answer, Err(Error::InProgress { .. })),
        "{answer:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    holder.finish.notify_one();
    holder.task.await.unwrap().unwrap();
}

/// Regression (issue 20 review): a claim dropped inside the caller's own transaction (`&mut
/// *tx`, the call in a timeout) armed the end of an abandoned transaction, and the caller's own
/// live transaction, idle a lease while it awaited something else, was terminated and its
/// writes lost. The caller's transaction is the caller's to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_in_the_caller_s_transaction_leaves_that_transaction_alone() {
    let db = db().await;
    let lease = Duration::from_secs(1);
    let idem = db.idem.clone().with_lease(lease);
    let mut tx = db.pool.begin().await.unwrap();
    insert(&mut tx, &db.ledger, "own").await.unwrap();
    let ledger = db.ledger.clone();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(200),
        run_in_transaction!(&idem, call("k"), &mut *tx, async move |c| {
            insert(c, &ledger, "k").await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<i64, AppError>(1)
        }),
    )
    .await;
    assert!(timed_out.is_err());
    // The caller awaits something else for more than a lease, then goes on and commits.
    tokio::time::sleep(lease + Duration::from_millis(700)).await;
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((db.rows("own").await, db.rows("k").await), (1, 0));
}

/// Regression (issue 20 review): on a database whose default isolation is REPEATABLE READ, two
/// claims of one fresh key at once outside any transaction: the loser's serialization failure
/// was reported as the caller's isolation level (`InvalidOption`), unretried, though a retry
/// settles it. Only a claim inside a transaction is told about its isolation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autocommit_claims_under_a_repeatable_read_default_are_retried() {
    let db = db().await;
    let options = db
        .pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("default_transaction_isolation", "repeatable read")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    let idem = Idempotency::new(
        PostgresStore::from_pool(pool)
            .with_table(&db.table)
            .unwrap(),
    );
    let runs = Arc::new(AtomicU32::new(0));
    for i in 0..50 {
        let key = format!("fresh-{i}");
        let calls = (0..2).map(|_| {
            let (idem, key, runs) = (idem.clone(), key.clone(), runs.clone());
            tokio::spawn(async move {
                idem.run(call(&key), async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, Error>(1)
                })
                .await
            })
        });
        for call in calls.collect::<Vec<_>>() {
            match call.await.unwrap() {
                Ok(1) | Err(Error::InProgress { .. }) => {}
                other => panic!("{key}: {other:?}"),
            }
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 50, "each key ran once");
}

/// Regression (issue 20 review): the COMMIT of an unknown outcome's hold (no record, the
/// body's writes undone) whose reply was lost was `CommitUnknown`, "its writes and its record
/// committed together; retry the call": there is no record, and a retry may run the body at
/// once. It is `NotRecorded` (the body ran, nothing recorded, the key held or free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_an_unknown_outcome_s_hold_is_not_recorded() {
    let db = db().await;
    for (key, committed) in [("held", true), ("free", false)] {
        let mut cut = db.cut_connection(committed).await;
        let lost = unknown_outcome(&db.idem, &mut cut, &db.ledger, key, Duration::ZERO).await;
        let err = match lost {
            Err(AppError::Idem(err @ Error::NotRecorded { .. })) => err,
            other => panic!("{key}: {other:?}"),
        };
        assert!(
            err.body_may_have_run() && err.is_indeterminate(),
            "{key}: {err}"
        );
        assert!(!err.to_string().contains("committed together"), "{err}");
        assert_eq!(db.rows(key).await, 0, "{key}: the body's write was undone");
        let mut connection = db.connection().await;
        if committed {
            is_held(&db.idem, &mut connection, &db.ledger, key).await;
        } else {
            runs_at_once(&db, key).await;
        }
    }
}

/// `UnknownHold::UntilResolved` holds the key from inside the call's own transaction too: past
/// its lease, calls get `OutcomeUnknown` without running the body, and an operator sees the key
/// as unknown and can resolve it (a reviewer saw the key run again after one lease, shown as in
/// flight, when transactional calls ignored the hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_is_held_until_resolved_in_a_transaction_too() {
    use idem_core::admin::{ActionOutcome, KeyState, Resolution, StoreAdmin};
    let db = db().await;
    let lease = Duration::from_millis(400);
    let idem = db
        .idem
        .clone()
        .with_lease(lease)
        .with_unknown_hold(idem_core::UnknownHold::UntilResolved);
    let mut connection = db.connection().await;
    let unknown = unknown_outcome(&idem, &mut connection, &db.ledger, "k", Duration::ZERO).await;
    assert!(matches!(unknown, Err(AppError::Declined)), "{unknown:?}");
    tokio::time::sleep(lease * 3).await;
    let again = unknown_outcome(&idem, &mut connection, &db.ledger, "k", Duration::ZERO).await;
    assert!(
        matches!(again, Err(AppError::Idem(Error::OutcomeUnknown { .. }))),
        "{again:?}"
    );
    assert_eq!(db.rows("k").await, 0, "no body's write remains");
    let store = idem.store_as::<PostgresStore>().unwrap();
    let key = idem.store_key("charge", "k").unwrap();
    let info = store.inspect(&key).await.unwrap().unwrap();
    assert_eq!(info.summary.state, KeyState::Unknown);
    let released = store
        .resolve(&key, info.summary.fence, Resolution::Release)
        .await
        .unwrap();
    assert_eq!(released, ActionOutcome::Applied);
    let ledger = db.ledger.clone();
    let ran: Result<i64, AppError> =
        run_in_transaction!(&idem, call("k"), &mut connection, async move |connection| {
            insert(connection, &ledger, "k").await
        },)
        .await;
    assert!(ran.is_ok(), "{ran:?}");
    assert_eq!(db.rows("k").await, 1, "released, the next call ran once");
}
