//! The contenders: idem and the baselines, each behind the same `call(workload, key)`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cached::macros::concurrent_cached;
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
        BenchError(err.to_string())
    }
}

impl From<redis::RedisError> for BenchError {
    fn from(err: redis::RedisError) -> Self {
        BenchError(err.to_string())
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
            Workload::First => "first execution",
            Workload::Replay => "replay",
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
    /// (c) the body called directly.
    Bare,
    /// (c) a `Mutex<HashMap>` claim + record.
    MutexMap(Mutex<HashMap<u64, Option<Receipt>>>),
}

impl Side {
    /// idem on Redis.
    pub(crate) async fn idem_redis(url: &str) -> Result<Side, BenchError> {
        let store = RedisStore::connect(url).await?;
        Ok(Side::Idem(IdemService::new(Idempotency::new(store))))
    }

    /// idem on its in-memory store.
    pub(crate) fn idem_memory() -> Side {
        Side::Idem(IdemService::new(Idempotency::new(MemoryStore::new())))
    }

    /// The hand-written redis-rs baseline, on its own connection of the same kind as idem's.
    pub(crate) async fn naive(url: &str) -> Result<Side, BenchError> {
        let client = redis::Client::open(url)?;
        Ok(Side::Naive(ConnectionManager::new(client).await?))
    }

    /// The `cached` baseline: its macro connects on the first call.
    pub(crate) fn cached(url: &str) -> Side {
        let _ = REDIS_URL.set(url.to_owned());
        Side::Cached
    }

    /// The reference in-memory claim + record.
    pub(crate) fn mutex_map() -> Side {
        Side::MutexMap(Mutex::new(HashMap::new()))
    }

    /// The side's name in tables and the chart.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Side::Idem(_) => "idem",
            Side::Naive(_) => "redis-rs by hand",
            Side::Cached => "cached",
            Side::Bare => "bare call",
            Side::MutexMap(_) => "Mutex<HashMap>",
        }
    }

    /// One call, checked: the receipt must be the key's.
    pub(crate) async fn call(&self, workload: Workload, key: u64) -> Result<(), String> {
        let receipt = match self {
            Side::Idem(service) => service.charge(key).await,
            Side::Naive(connection) => match workload {
                Workload::First => naive_first(connection.clone(), key).await,
                Workload::Replay => naive_replay(connection.clone(), key).await,
            },
            Side::Cached => cached_charge(key).await,
            Side::Bare => Ok(body(key).await),
            Side::MutexMap(map) => mutex_map_charge(map, key).await,
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
        IdemService {
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
