//! The statement budget of the transactional mode, counted by the server itself
//! (`log_statement = all`, one application name per measured connection): a first execution adds
//! two statements to the caller's transaction (the claim and the record), a replay runs three
//! (`BEGIN`, the claim that finds the record, `ROLLBACK`).

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

    // The log is written asynchronously by the server's logger: wait for the last line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while statements(&server, "replay").len() < 3 && std::time::Instant::now() < deadline {
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
    assert_eq!(replay.len(), 3, "{replay:#?}");
}
