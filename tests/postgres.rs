//! On PostgreSQL: the `#[idempotent]` behaviour checks (same counts, same results as on the
//! memory store and Redis), and `#[idempotent(transaction = conn)]`, whose body's writes commit
//! with the record. Each test starts its own cluster (or uses `IDEM_TEST_DATABASE_URL`, with
//! tables of its own).

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use idem::postgres::sqlx::{self, PgConnection, PgPool};
use idem::postgres::PostgresStore;
use idem::{idempotent, served, Disposition, Idempotency, MemoryStore, Served};
use idem_test_servers::PostgresServer;
use serde::{Deserialize, Serialize};

fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{prefix}_{n:016x}")
}

/// A runtime over a PostgreSQL store of its own table, with the server behind it.
struct Served_ {
    idem: Idempotency,
    pool: PgPool,
    _server: Option<PostgresServer>,
}

impl AsRef<Idempotency> for Served_ {
    fn as_ref(&self) -> &Idempotency {
        &self.idem
    }
}

async fn postgres() -> Served_ {
    let (url, server) = idem_test_servers::any_database();
    let store = PostgresStore::connect(&url)
        .await
        .unwrap()
        .with_table(&unique("idem"))
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    Served_ {
        idem: Idempotency::new(store),
        pool,
        _server: server,
    }
}

mod behaviour {
    crate::behaviour_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async {
            super::postgres().await
        }
    );
}

#[derive(Debug)]
enum AppError {
    Idem(idem::Error),
    #[allow(dead_code, reason = "shown by failure messages")]
    Db(sqlx::Error),
    Declined,
}

impl From<idem::Error> for AppError {
    fn from(err: idem::Error) -> Self {
        Self::Idem(err)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(err)
    }
}

impl AppError {
    fn means(&self) -> Disposition {
        match self {
            Self::Declined => Disposition::OutcomeUnknown,
            _ => Disposition::Release,
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Refusal {
    Declined,
    Idem(String),
}

impl From<idem::Error> for Refusal {
    fn from(err: idem::Error) -> Self {
        Self::Idem(err.to_string())
    }
}

/// A payments service: its charges are rows in its own database.
struct Payments {
    idem: Idempotency,
    ledger: String,
    runs: AtomicU32,
}

impl Payments {
    async fn new(db: &Served_) -> Self {
        let ledger = unique("charges");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {ledger} (id bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL)"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
        Self {
            idem: db.idem.clone(),
            ledger,
            runs: AtomicU32::new(0),
        }
    }

    /// The charge row and idem's record commit together.
    #[idempotent(key = order, using = &self.idem, transaction = conn)]
    async fn charge(
        &self,
        conn: &mut PgConnection,
        order: i64,
        cents: i64,
    ) -> Result<i64, AppError> {
        let id = self.insert(conn, order, cents).await?;
        if cents < 0 {
            return Err(AppError::Declined);
        }
        Ok(id)
    }

    /// Declines are recorded (and the charge row rolled back).
    #[idempotent(key = order, using = &self.idem, transaction = conn, record_errors)]
    async fn charge_recording_declines(
        &self,
        conn: &mut PgConnection,
        order: i64,
        cents: i64,
    ) -> Result<i64, Refusal> {
        let id = self
            .insert(conn, order, cents)
            .await
            .map_err(|err| Refusal::Idem(err.to_string()))?;
        if cents < 0 {
            return Err(Refusal::Declined);
        }
        Ok(id)
    }

    /// A decline means the provider may have charged: the key is held for a lease.
    #[idempotent(key = order, using = &self.idem, transaction = conn, on_error = AppError::means, on_in_progress = reject)]
    async fn charge_classified(
        &self,
        conn: &mut PgConnection,
        order: i64,
        cents: i64,
    ) -> Result<i64, AppError> {
        let id = self.insert(conn, order, cents).await?;
        if cents < 0 {
            return Err(AppError::Declined);
        }
        Ok(id)
    }

    /// The effect: a charge row, counted as one run of a body.
    async fn insert(
        &self,
        conn: &mut PgConnection,
        order: i64,
        cents: i64,
    ) -> Result<i64, sqlx::Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (order_id, cents) VALUES ($1, $2) RETURNING id",
            self.ledger
        )))
        .bind(order)
        .bind(cents)
        .fetch_one(conn)
        .await
    }

    async fn rows(&self, pool: &PgPool, order: i64) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE order_id = $1",
            self.ledger
        )))
        .bind(order)
        .fetch_one(pool)
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charge_row_commits_with_its_record_and_replays() {
    let db = postgres().await;
    let payments = Arc::new(Payments::new(&db).await);
    // The function's future is Send: it runs on a spawned task, as an axum handler would.
    let first = {
        let (payments, pool) = (payments.clone(), db.pool.clone());
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            served(payments.charge(&mut conn, 7, 1250)).await
        })
        .await
        .unwrap()
    };
    assert_eq!(first.1, Some(Served::Executed));
    let id = first.0.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let (again, how) = served(payments.charge(&mut conn, 7, 1250)).await;
    assert_eq!((again.unwrap(), how), (id, Some(Served::Replayed)));
    assert_eq!(payments.runs.load(Ordering::SeqCst), 1);
    assert_eq!(payments.rows(&db.pool, 7).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_rolls_the_charge_back_and_a_retry_runs() {
    let db = postgres().await;
    let payments = Payments::new(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let declined = payments.charge(&mut conn, 7, -1).await;
    assert!(matches!(declined, Err(AppError::Declined)), "{declined:?}");
    assert_eq!(payments.rows(&db.pool, 7).await, 0);
    payments.charge(&mut conn, 7, 1250).await.unwrap();
    assert_eq!(payments.runs.load(Ordering::SeqCst), 2);
    assert_eq!(payments.rows(&db.pool, 7).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_decline_rolls_the_charge_back_and_replays() {
    let db = postgres().await;
    let payments = Payments::new(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();
    for _ in 0..2 {
        let declined = payments.charge_recording_declines(&mut conn, 7, -1).await;
        assert_eq!(declined, Err(Refusal::Declined));
    }
    assert_eq!(payments.runs.load(Ordering::SeqCst), 1);
    assert_eq!(payments.rows(&db.pool, 7).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_rolls_back_and_holds_the_key_for_a_lease() {
    let db = postgres().await;
    let payments = Payments::new(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let declined = payments.charge_classified(&mut conn, 7, -1).await;
    assert!(matches!(declined, Err(AppError::Declined)), "{declined:?}");
    assert_eq!(payments.rows(&db.pool, 7).await, 0);
    // The key is held (outside the rolled-back transaction) until the lease (30s) lapses.
    let retry = payments.charge_classified(&mut conn, 7, 1250).await;
    assert!(
        matches!(retry, Err(AppError::Idem(idem::Error::InProgress { .. }))),
        "{retry:?}"
    );
    assert_eq!(payments.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_s_transaction_decides_for_the_record_too() {
    let db = postgres().await;
    let payments = Payments::new(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    payments.charge(&mut tx, 7, 1250).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(payments.rows(&db.pool, 7).await, 0);
    // Neither the charge nor its record survived: the next delivery runs.
    let (ran, how) = served(payments.charge(&mut conn, 7, 1250)).await;
    assert!(ran.is_ok(), "{ran:?}");
    assert_eq!(how, Some(Served::Executed));
    assert_eq!(payments.rows(&db.pool, 7).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_without_postgres_is_refused_before_the_body() {
    let db = postgres().await;
    let mut payments = Payments::new(&db).await;
    payments.idem = Idempotency::new(MemoryStore::new());
    let mut conn = db.pool.acquire().await.unwrap();
    let refused = payments.charge(&mut conn, 7, 1250).await;
    assert!(
        matches!(
            refused,
            Err(AppError::Idem(idem::Error::InvalidOption { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(payments.runs.load(Ordering::SeqCst), 0);
}
