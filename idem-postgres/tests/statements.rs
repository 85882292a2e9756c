//! The statement budget of the transactional mode, counted by the server itself
//! (`log_statement = all`, one application name per measured connection): a first execution adds
//! two statements to the caller's transaction (the claim and the record); a replay runs three on
//! a connection the caller holds (`BEGIN`, the claim that finds the record, `ROLLBACK`), and
//! leaves the `ROLLBACK` to the connection's next use only where that use comes at once (a
//! connection of the store's pool, or the caller's own transaction).

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use idem_core::{Call, Error, Idempotency, TransactionBegun};
use idem_postgres::sqlx::postgres::PgConnectOptions;
use idem_postgres::sqlx::{self, ConnectOptions, PgConnection};
use idem_postgres::PostgresStore;
use idem_test_servers::PostgresServer;

/// Statements the server logged for `application`.
fn statements(server: &PostgresServer, application: &str) -> Vec<String> {
    let tag = format!("[{application}]");
    server
        .log()
        .lines()
        .filter(|line| line.starts_with(&tag))
        .filter(|line| line.contains("statement: ") || line.contains("execute "))
        .map(str::to_owned)
        .collect()
}

async fn connect(server: &PostgresServer, application: &str) -> PgConnection {
    let options: PgConnectOptions = server.url().parse().unwrap();
    let mut connection = options
        .application_name(application)
        .connect()
        .await
        .unwrap();
    // Superuser settings for this session only: log every statement, tagged.
    sqlx::raw_sql("SET log_statement = 'all'")
        .execute(&mut connection)
        .await
        .unwrap();
    connection
}

async fn insert(connection: &mut PgConnection, key: i64) -> Result<i64, Error> {
    sqlx::query_scalar("INSERT INTO ledger (key) VALUES ($1) RETURNING id")
        .bind(key)
        .fetch_one(connection)
        .await
        .map_err(|err| Error::store("insert", err))
}

async fn book(idem: &Idempotency, connection: &mut PgConnection, key: i64) -> Result<i64, Error> {
    let mut claim = match idem_postgres::begin(idem, Call::new("book", key), connection).await {
        TransactionBegun::Done(result) => return result,
        TransactionBegun::Claimed(claim) => claim,
    };
    let booked = insert(claim.connection(), key).await;
    claim.finish(booked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_execution_adds_two_statements_and_a_replay_runs_three() {
    // The server's log is what is counted: this test needs a server of its own.
    let server = PostgresServer::start();
    let store = PostgresStore::connect(&server.url()).await.unwrap();
    store.migrate().await.unwrap();
    for statement in [
        "ALTER SYSTEM SET log_line_prefix = '[%a] '",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(statement)
            .execute(store.pool())
            .await
            .unwrap();
    }
    sqlx::raw_sql("CREATE TABLE ledger (id bigserial PRIMARY KEY, key bigint NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let idem = Idempotency::new(store.clone());

    // The bare transaction: BEGIN, INSERT, COMMIT.
    let mut bare = connect(&server, "bare").await;
    let mut transaction = sqlx::Connection::begin(&mut bare).await.unwrap();
    insert(&mut transaction, 1).await.unwrap();
    transaction.commit().await.unwrap();

    let mut first = connect(&server, "first").await;
    let id = book(&idem, &mut first, 2).await.unwrap();
    let mut replay = connect(&server, "replay").await;
    assert_eq!(book(&idem, &mut replay, 2).await.unwrap(), id);

    // A reviewer saw a replay on a kept connection leave its transaction open, holding the claim
    // statement's locks on the table: `migrate()` (and every call behind it) waited until the
    // connection was used again. The replay's connection is idle, outside a transaction, and a
    // schema statement on the table goes through while the connection is kept unused.
    let (state, locks): (String, i64) = sqlx::query_as(
        "SELECT a.state, (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid \
           AND l.locktype IN ('relation', 'advisory', 'transactionid')) \
         FROM pg_stat_activity a WHERE a.application_name = 'replay'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((state.as_str(), locks), ("idle", 0));
    tokio::time::timeout(std::time::Duration::from_secs(5), store.migrate())
        .await
        .expect("migrate() waited on the replay's connection")
        .unwrap();

    // The log is written asynchronously by the server's logger: wait for the last line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while statements(&server, "replay").len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (bare, first, replay_statements) = (
        statements(&server, "bare"),
        statements(&server, "first"),
        statements(&server, "replay"),
    );
    // `SET log_statement` itself is logged after it applies: not counted.
    assert_eq!(bare.len(), 3, "{bare:#?}");
    assert_eq!(first.len(), bare.len() + 2, "{first:#?}");
    assert_eq!(replay_statements.len(), 3, "{replay_statements:#?}");
    assert!(
        replay_statements[2].ends_with("ROLLBACK"),
        "{replay_statements:#?}"
    );

    drop(replay);
}

/// The statement that tells whether any connection is still inside a transaction.
async fn idle_in_transaction(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits up to 5 s for no connection to be left inside a transaction.
async fn no_transaction_left_open(pool: &sqlx::PgPool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while idle_in_transaction(pool).await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(idle_in_transaction(pool).await, 0);
}

async fn server_with_ledger() -> (PostgresServer, PostgresStore) {
    let server = PostgresServer::start();
    let store = PostgresStore::connect(&server.url()).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE ledger (id bigserial PRIMARY KEY, key bigint NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    (server, store)
}

async fn rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// On a connection of the store's pool (the HTTP layer's transactional mode), a replay leaves its
/// rollback to the pool, which sends it as the connection comes back: nothing stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_on_the_store_s_pool_ends_its_transaction_as_the_connection_returns() {
    let (_server, store) = server_with_ledger().await;
    let pool = store.pool().clone();
    let idem = Idempotency::new(store);
    let release = |_: &Error| idem_core::Disposition::Release;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let begun = idem
            .begin_pooled_transaction::<PostgresStore, i64, Error, _>(Call::new("book", 7), release)
            .await;
        let id = match begun {
            TransactionBegun::Done(result) => result.unwrap(),
            TransactionBegun::Claimed(mut claim) => {
                let id = insert(claim.connection(), 7).await;
                claim.finish(id).await.unwrap()
            }
        };
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1]);
    no_transaction_left_open(&pool).await;
    assert_eq!(rows(&pool).await, 1, "the replay booked nothing");
}

/// In the caller's own transaction, a replay's rollback to its savepoint goes with the caller's
/// next statement, and the caller's writes around it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_in_the_caller_s_transaction_leaves_it_usable() {
    let (_server, store) = server_with_ledger().await;
    let pool = store.pool().clone();
    let idem = Idempotency::new(store);
    let mut connection = pool.acquire().await.unwrap();
    let id = book(&idem, &mut connection, 9).await.unwrap();
    let mut transaction = sqlx::Connection::begin(&mut *connection).await.unwrap();
    insert(&mut transaction, 10).await.unwrap();
    assert_eq!(book(&idem, &mut transaction, 9).await.unwrap(), id);
    insert(&mut transaction, 11).await.unwrap();
    transaction.commit().await.unwrap();
    drop(connection);
    assert_eq!(rows(&pool).await, 3, "the key's row and the caller's two");
    no_transaction_left_open(&pool).await;
}
