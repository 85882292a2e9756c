//! The contenders: idem and the baselines, each behind the same `call(workload, key)`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use cached::macros::concurrent_cached;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idem::http::IdempotencyLayer;
use idem::postgres::sqlx::postgres::PgPoolOptions;
use idem::postgres::sqlx::{self, PgConnection, PgPool};
use idem::postgres::PostgresStore;
use idem::redis::RedisStore;
use idem::{idempotent, Idempotency, MemoryStore};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// How long every side keeps its results: longer than any run.
pub(crate) const RETENTION: Duration = Duration::from_secs(3600);
const LEASE_MS: u64 = 30_000;

/// Executions of the trivial body, over all sides.
pub(crate) static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// The `cached` baseline's connection string (its macro builds the cache on first use).
pub(crate) static REDIS_URL: OnceLock<String> = OnceLock::new();

/// A prefix unique to this run, so that a shared server (`REDIS_URL`) holding an earlier run's
/// keys cannot turn first executions into replays.
pub(crate) fn run_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        format!("idem-bench-{millis}:")
    })
}

/// What every side's function returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    /// The key it was made for: checked on every call.
    pub(crate) key: u64,
    amount_cents: u64,
}

/// The trivial body: the work is the overhead around it.
async fn body(key: u64) -> Receipt {
    EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    body_receipt(key)
}

/// The body's result, computed without counting an execution.
fn body_receipt(key: u64) -> Receipt {
    Receipt {
        key,
        amount_cents: key % 10_000 + 1,
    }
}

/// Every side's error: a message.
#[derive(Debug)]
pub(crate) struct BenchError(pub String);

impl From<idem::Error> for BenchError {
    fn from(err: idem::Error) -> Self {
        Self(err.to_string())
    }
}

impl From<redis::RedisError> for BenchError {
    fn from(err: redis::RedisError) -> Self {
        Self(err.to_string())
    }
}

/// First execution or replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Workload {
    /// A new key each call.
    First,
    /// A completed key each call.
    Replay,
}

impl Workload {
    /// Its name in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::First => "first execution",
            Self::Replay => "replay",
        }
    }
}

/// One contender.
pub(crate) enum Side {
    /// idem through `#[idempotent]`, on Redis or in memory.
    Idem(IdemService),
    /// (a) hand-written redis-rs: `SET NX PX` then `SET PX`; replay = `GET`.
    Naive(ConnectionManager),
    /// (b) the `cached` crate's Redis-backed `#[concurrent_cached]`.
    Cached,
    /// (d) the `idempotent` crate on its Valkey/Redis store: a Lua script to claim (which returns
    /// a completed entry to a replay) and one to complete, with a client-made fencing token.
    Idempotent(Box<idempotent::store::valkey::ValkeyStore>),
    /// (c) the body called directly.
    Bare,
    /// (c) a `Mutex<HashMap>` claim + record.
    MutexMap(Mutex<HashMap<u64, Option<Receipt>>>),
    /// idem in the ledger row's transaction (`transaction = conn`).
    IdemTransaction(PgIdemService),
    /// The same transaction by hand, without idem: `BEGIN; INSERT; COMMIT`.
    BareTransaction(PgPool),
    /// What people write instead: a dedupe table in the same transaction, `INSERT ... ON
    /// CONFLICT DO NOTHING`, then the row (or, on a conflict, the stored result).
    DedupeTable(PgPool),
    /// An axum route on a loopback port, behind idem's `Idempotency-Key` layer or not, called
    /// by a hyper client.
    Http(HttpSide),
}

impl Side {
    /// idem on Redis.
    pub(crate) async fn idem_redis(url: &str) -> Result<Self, BenchError> {
        let store = RedisStore::connect(url).await?;
        Ok(Self::Idem(IdemService::new(Idempotency::new(store))))
    }

    /// idem on its in-memory store.
    pub(crate) fn idem_memory() -> Self {
        Self::Idem(IdemService::new(Idempotency::new(MemoryStore::new())))
    }

    /// The `idempotent` crate's Valkey store, on its own connection (a `ConnectionManager`, as
    /// idem's).
    pub(crate) async fn idempotent(url: &str) -> Result<Self, BenchError> {
        let client = redis::Client::open(url)?;
        let prefix = format!("{}idempotent", run_prefix());
        let store = idempotent::store::valkey::ValkeyStore::with_prefix(client, Some(&prefix))
            .await
            .map_err(|err| BenchError(format!("the idempotent crate's store: {err}")))?;
        Ok(Self::Idempotent(Box::new(store)))
    }

    /// The hand-written redis-rs baseline, on its own connection of the same kind as idem's.
    pub(crate) async fn naive(url: &str) -> Result<Self, BenchError> {
        let client = redis::Client::open(url)?;
        Ok(Self::Naive(ConnectionManager::new(client).await?))
    }

    /// The `cached` baseline: its macro connects on the first call.
    pub(crate) fn cached(url: &str) -> Self {
        let _ = REDIS_URL.set(url.to_owned());
        Self::Cached
    }

    /// The reference in-memory claim + record.
    pub(crate) fn mutex_map() -> Self {
        Self::MutexMap(Mutex::new(HashMap::new()))
    }

    /// idem and its baselines on PostgreSQL, on one pool of `connections`.
    pub(crate) async fn postgres(url: &str, connections: u32) -> Result<Vec<Self>, BenchError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect(url)
            .await
            .map_err(|err| BenchError(err.to_string()))?;
        let store = PostgresStore::from_pool(pool.clone());
        store.migrate().await?;
        let tables = "CREATE TABLE IF NOT EXISTS bench_ledger \
                (id bigserial PRIMARY KEY, key text NOT NULL, cents bigint NOT NULL); \
             CREATE TABLE IF NOT EXISTS bench_dedupe (key text PRIMARY KEY, receipt bytea NOT NULL)";
        sqlx::raw_sql(tables)
            .execute(&pool)
            .await
            .map_err(|err| BenchError(err.to_string()))?;
        let idem = Idempotency::new(store)
            .with_retention(RETENTION)
            .with_key_prefix(format!("{}idem:", run_prefix()));
        Ok(vec![
            Self::IdemTransaction(PgIdemService {
                idem,
                pool: pool.clone(),
            }),
            Self::BareTransaction(pool.clone()),
            Self::DedupeTable(pool),
        ])
    }

    /// The same axum route on a loopback port, behind idem's layer (`Some`) or bare.
    pub(crate) async fn http(idem: Option<Idempotency>) -> Result<Self, BenchError> {
        let route = axum::Router::new().route("/charge", axum::routing::post(charge_route));
        let layered = idem.is_some();
        let app = match idem {
            Some(idem) => route.layer(IdempotencyLayer::new(
                idem.with_retention(RETENTION)
                    .with_key_prefix(format!("{}http:", run_prefix())),
            )),
            None => route,
        };
        Ok(Self::Http(HttpSide::serve(app, layered).await?))
    }

    /// The HTTP route that books a ledger row: behind the layer in transactional mode (the row
    /// through the request's `Tx`), and bare (the row in a transaction of its own).
    pub(crate) async fn http_postgres(
        url: &str,
        connections: u32,
    ) -> Result<Vec<Self>, BenchError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect(url)
            .await
            .map_err(|err| BenchError(err.to_string()))?;
        let store = PostgresStore::from_pool(pool.clone());
        store.migrate().await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS bench_ledger \
                (id bigserial PRIMARY KEY, key text NOT NULL, cents bigint NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(|err| BenchError(err.to_string()))?;
        let idem = Idempotency::new(store)
            .with_retention(RETENTION)
            .with_key_prefix(format!("{}http-pg:", run_prefix()));
        let layered = axum::Router::new()
            .route("/charge", axum::routing::post(book_in_request_transaction))
            .layer(IdempotencyLayer::new(idem).in_transaction::<PostgresStore>());
        let bare = axum::Router::new()
            .route("/charge", axum::routing::post(book_in_own_transaction))
            .with_state(pool);
        Ok(vec![
            Self::Http(HttpSide::serve(layered, true).await?),
            Self::Http(HttpSide::serve(bare, false).await?),
        ])
    }

    /// The side's name in tables and the chart.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Http(side) if side.layered => "idem",
            Self::Http(_) => "bare route",
            Self::IdemTransaction(_) | Self::Idem(_) => "idem",
            Self::BareTransaction(_) => "bare transaction",
            Self::DedupeTable(_) => "dedupe table",
            Self::Naive(_) => "redis-rs by hand",
            Self::Cached => "cached",
            Self::Idempotent(_) => "idempotent 0.3",
            Self::Bare => "bare call",
            Self::MutexMap(_) => "Mutex<HashMap>",
        }
    }

    /// One call, checked: the receipt must be the key's.
    pub(crate) async fn call(&self, workload: Workload, key: u64) -> Result<(), String> {
        let receipt = match self {
            Self::Idem(service) => service.charge(key).await,
            Self::Naive(connection) => match workload {
                Workload::First => naive_first(connection.clone(), key).await,
                Workload::Replay => naive_replay(connection.clone(), key).await,
            },
            Self::Cached => cached_charge(key).await,
            Self::Idempotent(store) => idempotent_charge(store, key).await,
            Self::Bare => Ok(body(key).await),
            Self::MutexMap(map) => mutex_map_charge(map, key).await,
            Self::IdemTransaction(service) => service.book(key).await,
            Self::BareTransaction(pool) => bare_transaction(pool, key).await,
            Self::DedupeTable(pool) => dedupe_table(pool, key).await,
            Self::Http(side) => side.charge(key).await,
        }
        .map_err(|BenchError(message)| message)?;
        if receipt.key == key {
            Ok(())
        } else {
            Err(format!(
                "key {key} answered with the receipt of {}",
                receipt.key
            ))
        }
    }
}

/// idem as a user writes it: a method with the attribute.
pub(crate) struct IdemService {
    idem: Idempotency,
}

impl IdemService {
    fn new(idem: Idempotency) -> Self {
        Self {
            idem: idem
                .with_retention(RETENTION)
                .with_key_prefix(format!("{}idem:", run_prefix())),
        }
    }

    #[idempotent(key = key, using = &self.idem, namespace = "bench")]
    async fn charge(&self, key: u64) -> Result<Receipt, BenchError> {
        Ok(body(key).await)
    }
}

/// idem as a user writes it in transactional mode.
pub(crate) struct PgIdemService {
    idem: Idempotency,
    pool: PgPool,
}

impl PgIdemService {
    async fn book(&self, key: u64) -> Result<Receipt, BenchError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|err| BenchError(err.to_string()))?;
        self.book_on(&mut conn, key).await
    }

    #[idempotent(key = key, using = &self.idem, namespace = "bench-pg", transaction = conn)]
    async fn book_on(&self, conn: &mut PgConnection, key: u64) -> Result<Receipt, BenchError> {
        let receipt = body(key).await;
        insert_row(conn, key, &receipt).await?;
        Ok(receipt)
    }
}

/// The effect every Postgres side has: one ledger row.
async fn insert_row(
    conn: &mut PgConnection,
    key: u64,
    receipt: &Receipt,
) -> Result<(), BenchError> {
    sqlx::query("INSERT INTO bench_ledger (key, cents) VALUES ($1, $2)")
        .bind(format!("{}{key}", run_prefix()))
        .bind(receipt.amount_cents as i64)
        .execute(conn)
        .await
        .map(drop)
        .map_err(|err| BenchError(err.to_string()))
}

/// `BEGIN; INSERT; COMMIT`: the effect alone, no deduplication (a replay books again).
async fn bare_transaction(pool: &PgPool, key: u64) -> Result<Receipt, BenchError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|err| BenchError(err.to_string()))?;
    let receipt = body(key).await;
    insert_row(&mut tx, key, &receipt).await?;
    tx.commit()
        .await
        .map_err(|err| BenchError(err.to_string()))?;
    Ok(receipt)
}

/// The hand-written dedupe table: no lease, no fence, no fingerprint; a concurrent duplicate
/// waits on the row lock of the first's uncommitted insert.
async fn dedupe_table(pool: &PgPool, key: u64) -> Result<Receipt, BenchError> {
    let failed = |err: sqlx::Error| BenchError(err.to_string());
    let mut tx = pool.begin().await.map_err(failed)?;
    let dedupe_key = format!("{}dedupe:{key}", run_prefix());
    let receipt = body_receipt(key);
    let encoded = serde_json::to_vec(&receipt).map_err(|err| BenchError(err.to_string()))?;
    let claimed: Option<String> = sqlx::query_scalar(
        "INSERT INTO bench_dedupe (key, receipt) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING key",
    )
    .bind(&dedupe_key)
    .bind(&encoded)
    .fetch_optional(&mut *tx)
    .await
    .map_err(failed)?;
    let receipt = if claimed.is_some() {
        let receipt = body(key).await;
        insert_row(&mut tx, key, &receipt).await?;
        receipt
    } else {
        let stored: Vec<u8> = sqlx::query_scalar("SELECT receipt FROM bench_dedupe WHERE key = $1")
            .bind(&dedupe_key)
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
        serde_json::from_slice(&stored).map_err(|err| BenchError(err.to_string()))?
    };
    tx.commit().await.map_err(failed)?;
    Ok(receipt)
}

fn naive_key(key: u64) -> String {
    format!("{}naive:{key}", run_prefix())
}

/// The naive unsafe thing: claim with `SET NX PX`, run, overwrite with `SET PX`. No fence, no
/// fingerprint, no check that the claim is still ours when the result is written.
async fn naive_first(mut connection: ConnectionManager, key: u64) -> Result<Receipt, BenchError> {
    let redis_key = naive_key(key);
    let claimed: Option<String> = redis::cmd("SET")
        .arg(&redis_key)
        .arg("pending")
        .arg("NX")
        .arg("PX")
        .arg(LEASE_MS)
        .query_async(&mut connection)
        .await?;
    if claimed.is_none() {
        return Err(BenchError(format!("{redis_key} was already claimed")));
    }
    let receipt = body(key).await;
    let encoded = serde_json::to_vec(&receipt).map_err(|err| BenchError(err.to_string()))?;
    redis::cmd("SET")
        .arg(&redis_key)
        .arg(encoded)
        .arg("PX")
        .arg(RETENTION.as_millis() as u64)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(receipt)
}

/// The naive replay: one `GET`.
async fn naive_replay(mut connection: ConnectionManager, key: u64) -> Result<Receipt, BenchError> {
    let redis_key = naive_key(key);
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&redis_key)
        .query_async(&mut connection)
        .await?;
    let stored = stored.ok_or_else(|| BenchError(format!("{redis_key} has no result")))?;
    serde_json::from_slice(&stored).map_err(|err| BenchError(err.to_string()))
}

/// The `cached` crate's own way. It has no claim: concurrent first calls all run the body.
#[concurrent_cached(
    map_error = r##"|err| BenchError(format!("{err:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Receipt>",
    create = r##" {
        cached::AsyncRedisCache::builder(format!("{}cached", run_prefix()))
            .ttl(RETENTION)
            .connection_string(REDIS_URL.get().map(String::as_str).unwrap_or("redis://127.0.0.1:6379"))
            .connection_manager(true)
            .build()
            .await
            .expect("the cached baseline cannot connect to Redis")
    } "##
)]
async fn cached_charge(key: u64) -> Result<Receipt, BenchError> {
    Ok(body(key).await)
}

/// The `idempotent` crate as its README shows it: claim an entry with a fingerprint of the
/// request, run, complete it with the response (the receipt's JSON as the body); a duplicate
/// gets the completed entry from the claim script and decodes its body.
async fn idempotent_charge(
    store: &idempotent::store::valkey::ValkeyStore,
    key: u64,
) -> Result<Receipt, BenchError> {
    use idempotent::entry::ExistingEntry;
    use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
    use idempotent::store::{IdempotencyStore, InsertResult};
    use idempotent::{CachedResponse, IdempotencyEntry};
    let failed = |err: &dyn std::fmt::Display| BenchError(format!("idempotent: {err}"));
    let idempotency_key =
        idempotent::IdempotencyKey::new(key.to_string()).map_err(|err| failed(&err))?;
    let fingerprint = DefaultFingerprintStrategy.compute("charge", &key.to_le_bytes());
    let entry = IdempotencyEntry::new(fingerprint, RETENTION);
    match store
        .try_insert(&idempotency_key, entry.clone())
        .await
        .map_err(|err| failed(&err))?
    {
        InsertResult::Claimed { fencing_token } => {
            let receipt = body(key).await;
            let encoded = serde_json::to_vec(&receipt).map_err(|err| failed(&err))?;
            let response = CachedResponse {
                status_code: 200,
                metadata: Default::default(),
                body: encoded.into(),
            };
            store
                .complete(&idempotency_key, entry.complete(response), fencing_token)
                .await
                .map_err(|err| failed(&err))?;
            Ok(receipt)
        }
        InsertResult::Exists(ExistingEntry::Completed(completed)) => {
            if !completed.fingerprint_matches(fingerprint) {
                return Err(BenchError(format!("idempotent: key {key} reused")));
            }
            serde_json::from_slice(&completed.response().body).map_err(|err| failed(&err))
        }
        InsertResult::Exists(ExistingEntry::Processing(_)) => {
            Err(BenchError(format!("idempotent: key {key} is in progress")))
        }
    }
}

/// A reference claim + record under one lock: what a hand-written in-process version costs.
async fn mutex_map_charge(
    map: &Mutex<HashMap<u64, Option<Receipt>>>,
    key: u64,
) -> Result<Receipt, BenchError> {
    {
        let mut entries = map
            .lock()
            .map_err(|_| BenchError("the map's lock is poisoned".into()))?;
        match entries.get(&key) {
            Some(Some(receipt)) => return Ok(receipt.clone()),
            Some(None) => return Err(BenchError(format!("{key} is in progress"))),
            None => {
                entries.insert(key, None);
            }
        }
    }
    let receipt = body(key).await;
    map.lock()
        .map_err(|_| BenchError("the map's lock is poisoned".into()))?
        .insert(key, Some(receipt.clone()));
    Ok(receipt)
}

/// An HTTP side: the client and the route's address.
pub(crate) struct HttpSide {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    layered: bool,
}

impl HttpSide {
    /// Serves `app` on a loopback port, with a client for it.
    async fn serve(app: axum::Router, layered: bool) -> Result<Self, BenchError> {
        let failed = |err: std::io::Error| BenchError(err.to_string());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(failed)?;
        let url = format!("http://{}/charge", listener.local_addr().map_err(failed)?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            client,
            url,
            layered,
        })
    }

    /// `POST /charge` with the key as `Idempotency-Key` and in the JSON body.
    async fn charge(&self, key: u64) -> Result<Receipt, BenchError> {
        let failed = |err: &dyn std::fmt::Display| BenchError(err.to_string());
        let request = axum::http::Request::post(&self.url)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!("{{\"key\":{key}}}"))))
            .map_err(|err| failed(&err))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| failed(&err))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| failed(&err))?
            .to_bytes();
        if !status.is_success() {
            return Err(BenchError(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|err| failed(&err))
    }
}

/// What the route is sent.
#[derive(Deserialize)]
struct ChargeRequest {
    key: u64,
}

/// The route: the trivial body, its receipt as JSON.
async fn charge_route(axum::Json(request): axum::Json<ChargeRequest>) -> axum::Json<Receipt> {
    axum::Json(body(request.key).await)
}

/// The route behind the transactional layer: the ledger row through the request's `Tx`.
async fn book_in_request_transaction(
    mut tx: idem::postgres::Tx,
    axum::Json(request): axum::Json<ChargeRequest>,
) -> Result<axum::Json<Receipt>, axum::http::StatusCode> {
    let receipt = body(request.key).await;
    insert_row(&mut tx, request.key, &receipt)
        .await
        .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(axum::Json(receipt))
}

/// The bare route: the ledger row in a transaction of its own (`BEGIN; INSERT; COMMIT`).
async fn book_in_own_transaction(
    axum::extract::State(pool): axum::extract::State<PgPool>,
    axum::Json(request): axum::Json<ChargeRequest>,
) -> Result<axum::Json<Receipt>, axum::http::StatusCode> {
    bare_transaction(&pool, request.key)
        .await
        .map(axum::Json)
        .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)
}
