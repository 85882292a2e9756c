//! A ledger under at-least-once delivery, with idem's record in the handler's own PostgreSQL
//! transaction.
//!
//! A broker delivers each of 300 transfers one to three times, concurrently, to a handler that
//! inserts a ledger row. One attempt in five fails after its insert (the broker redelivers), so
//! the handler runs more often than there are transfers; because the row and idem's record commit
//! together, a failed attempt leaves nothing, and every transfer ends with exactly one row.
//!
//! ```sh
//! cargo run --example ledger_postgres --features postgres
//! DATABASE_URL=postgres://app@db/app cargo run --example ledger_postgres --features postgres
//! ```
//!
//! It ends with one line, `deliveries=<n> executions=<n> ledger_rows=<n> keys=<n>`: every key
//! once means `ledger_rows` equals `keys`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::postgres::sqlx::{self, PgConnection, PgPool};
use idem::postgres::PostgresStore;
use idem::{idempotent, Idempotency};

const TRANSFERS: u32 = 300;

#[derive(Debug)]
enum LedgerError {
    /// The attempt failed after its write (the write was rolled back with it).
    Flaky,
    Database(sqlx::Error),
    Idempotency(idem::Error),
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flaky => write!(f, "the attempt failed after its write"),
            Self::Database(err) => write!(f, "database: {err}"),
            Self::Idempotency(err) => write!(f, "idempotency: {err}"),
        }
    }
}

impl From<idem::Error> for LedgerError {
    fn from(err: idem::Error) -> Self {
        Self::Idempotency(err)
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err)
    }
}

struct Ledger {
    idem: Idempotency,
    run: String,
    executions: AtomicU32,
}

impl Ledger {
    /// Books a transfer: the ledger row and idem's record commit together, or neither does.
    #[idempotent(key = transfer, using = &self.idem, transaction = conn)]
    async fn book(
        &self,
        conn: &mut PgConnection,
        transfer: u32,
        fail: bool,
    ) -> Result<i64, LedgerError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        let id = sqlx::query_scalar(
            "INSERT INTO idem_example_ledger (run, transfer, cents) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(&self.run)
        .bind(i64::from(transfer))
        .bind(100 * i64::from(transfer))
        .fetch_one(&mut *conn)
        .await?;
        if fail {
            return Err(LedgerError::Flaky);
        }
        Ok(id)
    }
}

/// A small deterministic generator, so every run tells the same story.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

async fn setup(url: &str) -> Result<(Idempotency, PgPool), Box<dyn std::error::Error>> {
    let store = PostgresStore::connect(url).await?;
    store.migrate().await?;
    let pool = store.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS idem_example_ledger \
         (id bigserial PRIMARY KEY, run text NOT NULL, transfer bigint NOT NULL, cents bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;
    Ok((Idempotency::new(store), pool))
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".to_owned());
    let (idem, pool) = match setup(&url).await {
        Ok(setup) => setup,
        Err(err) => {
            eprintln!("{err}\nstart PostgreSQL or set DATABASE_URL");
            std::process::exit(2);
        }
    };
    // A fresh key prefix per run, so a second run books again instead of replaying the first.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    let ledger = Arc::new(Ledger {
        idem: idem.with_key_prefix(format!("ledger-example-{run}:")),
        run: run.clone(),
        executions: AtomicU32::new(0),
    });
    let deliveries = Arc::new(AtomicU32::new(0));
    let mut random = Lcg(11);
    let mut tasks = Vec::new();
    for transfer in 1..=TRANSFERS {
        for _ in 0..1 + random.below(3) {
            let (ledger, pool, deliveries) = (ledger.clone(), pool.clone(), deliveries.clone());
            let seed = random.below(u64::MAX);
            tasks.push(tokio::spawn(async move {
                let mut random = Lcg(seed);
                // The broker's at-least-once loop: redeliver until the handler succeeds.
                loop {
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    let fail = random.below(5) == 0;
                    let booked = match pool.acquire().await {
                        Ok(mut conn) => ledger.book(&mut conn, transfer, fail).await,
                        Err(err) => Err(LedgerError::Database(err)),
                    };
                    match booked {
                        Ok(_) => return,
                        Err(LedgerError::Flaky) => {}
                        Err(err) => eprintln!("transfer {transfer}: {err}; redelivering"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
    }
    for task in tasks {
        if let Err(err) = task.await {
            eprintln!("a delivery task failed: {err}");
            std::process::exit(1);
        }
    }
    let (rows, keys): (i64, i64) = match sqlx::query_as(
        "SELECT count(*), count(DISTINCT transfer) FROM idem_example_ledger WHERE run = $1",
    )
    .bind(&run)
    .fetch_one(&pool)
    .await
    {
        Ok(counts) => counts,
        Err(err) => {
            eprintln!("cannot count the ledger: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "deliveries={} executions={} ledger_rows={rows} keys={keys}",
        deliveries.load(Ordering::SeqCst),
        ledger.executions.load(Ordering::SeqCst),
    );
    if rows != i64::from(TRANSFERS) || keys != i64::from(TRANSFERS) {
        std::process::exit(1);
    }
}
