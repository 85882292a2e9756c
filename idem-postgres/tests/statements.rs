//! The statement budget of the transactional mode, counted by the server itself
//! (`log_statement = all`, one application name per measured connection): a first execution adds
//! two statements to the caller's transaction (the claim and the record), a replay runs two
//! (`BEGIN`, the claim that finds the record) and leaves its `ROLLBACK` to the connection's next
//! use, holding nothing meanwhile.

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
async fn a_first_execution_adds_two_statements_and_a_replay_runs_two() {
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
    let pool = store.pool().clone();
    let idem = Idempotency::new(store);

    // The bare transaction: BEGIN, INSERT, COMMIT.
    let mut bare = connect(&server, "bare").await;
    let mut transaction = sqlx::Connection::begin(&mut bare).await.unwrap();
    insert(&mut transaction, 1).await.unwrap();
    transaction.commit().await.unwrap();

    let mut first = connect(&server, "first").await;
    let id = book(&idem, &mut first, 2).await.unwrap();
    let mut replay = connect(&server, "replay").await;
    assert_eq!(book(&idem, &mut replay, 2).await.unwrap(), id);

    // The replay's connection waits, idle in a transaction that holds no lock, for its next use.
    let (state, locks): (String, i64) = sqlx::query_as(
        "SELECT a.state, (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid \
           AND l.locktype IN ('advisory', 'transactionid')) \
         FROM pg_stat_activity a WHERE a.application_name = 'replay'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), locks), ("idle in transaction", 0));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut replay)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert!(!sqlx::Connection::is_in_transaction(&replay));

    // The log is written asynchronously by the server's logger: wait for the last line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while statements(&server, "replay").len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (bare, first, replay) = (
        statements(&server, "bare"),
        statements(&server, "first"),
        statements(&server, "replay"),
    );
    // `SET log_statement` itself is logged after it applies: not counted.
    assert_eq!(bare.len(), 3, "{bare:#?}");
    assert_eq!(first.len(), bare.len() + 2, "{first:#?}");
    // BEGIN and the claim; then, with the next use, the ROLLBACK before it.
    assert_eq!(replay.len(), 4, "{replay:#?}");
    assert!(replay[2].ends_with("ROLLBACK"), "{replay:#?}");
    assert!(replay[3].contains("SELECT 1"), "{replay:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_on_a_pooled_connection_ends_its_transaction_as_it_returns_to_the_pool() {
    let server = PostgresServer::start();
    let store = PostgresStore::connect(&server.url()).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE ledger (id bigserial PRIMARY KEY, key bigint NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let pool = store.pool().clone();
    let idem = Idempotency::new(store);
    let mut first = pool.acquire().await.unwrap();
    let id = book(&idem, &mut first, 7).await.unwrap();
    drop(first);
    let mut again = pool.acquire().await.unwrap();
    assert_eq!(book(&idem, &mut again, 7).await.unwrap(), id);
    drop(again);

    // The pool flushes the queued rollback when the connection comes back (on a task of its own).
    let idle_in_transaction = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while idle_in_transaction().await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(idle_in_transaction().await, 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the replay booked nothing");
}
