//! The HTTP layer's proof in transactional mode: does `IdempotencyLayer::in_transaction` charge
//! each key exactly once while its server is SIGKILLed and its database crashes?
//!
//! A child process (`idem-chaos-http serve`) serves `POST /charges` behind the layer in
//! transactional mode: the handler inserts a row for the request's key through the request's
//! `Tx`, pauses 0-20ms (a payment provider's call, say: so that kills land between the insert and
//! the commit), and answers 201 with the row's id. A client sends every key three times at once,
//! retrying what gets no answer, a 409 or a 503, while the harness SIGKILLs the server every 1-2s
//! (and starts it again on the same port) and restarts PostgreSQL with `pg_ctl -m immediate`.
//! After healing, every key is sent until it gets a 2xx. Then the table is the ground truth: one
//! row per key, and every 2xx of a key names that row.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idem_postgres::sqlx;
use idem_postgres::PostgresStore;
use idem_test_servers::PostgresServer;
use tokio::process::{Child, Command};

/// One run of the proof.
#[derive(Debug, Clone)]
pub struct HttpCrashSpec {
    /// Keys charged.
    pub keys: usize,
    /// Concurrent deliveries of each key before healing.
    pub deliveries: usize,
    /// Keys whose deliveries are in flight at once.
    pub concurrency: usize,
    /// How long the faults last: the keys' first deliveries are spread over it.
    pub chaos: Duration,
    /// The server is SIGKILLed after a pause drawn from this range (milliseconds).
    pub kill_every_ms: (u64, u64),
    /// PostgreSQL restarts (`-m immediate`), spread over the chaos.
    pub restarts: usize,
    /// Seeds the kills.
    pub seed: u64,
    /// The layer in transactional mode (the charge commits with its record), or over the same
    /// store in autocommit with the charge committed on its own first: what a service gets
    /// from the layer without the transaction.
    pub in_transaction: bool,
}

impl HttpCrashSpec {
    /// `keys` keys, 3 concurrent deliveries each, a kill every 1-2s for `chaos`, 2 database
    /// restarts.
    pub fn new(keys: usize, chaos: Duration) -> Self {
        Self {
            keys,
            deliveries: 3,
            concurrency: 16,
            chaos,
            kill_every_ms: (1000, 2000),
            restarts: 2,
            seed: 1,
            in_transaction: true,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCrashReport {
    /// Keys charged.
    pub keys: usize,
    /// Requests sent, retries included.
    pub requests: usize,
    /// Requests that got no answer (refused, reset, or cut off by a kill).
    pub no_answer: usize,
    /// Answers by status.
    pub statuses: Vec<(u16, usize)>,
    /// Server kills.
    pub kills: usize,
    /// PostgreSQL restarts.
    pub restarts: usize,
    /// Rows in the charges table.
    pub rows: usize,
    /// Rows beyond the first for a key: charges made twice.
    pub duplicate_rows: usize,
    /// Keys without a row.
    pub missing_keys: usize,
    /// Keys whose 2xx answers named different ids, or an id other than the key's row.
    pub differing_answers: usize,
    /// How long the run took.
    pub elapsed: Duration,
}

impl HttpCrashReport {
    /// Every key charged exactly once, and every 2xx of a key naming its one charge.
    pub fn exactly_once(&self) -> bool {
        self.duplicate_rows == 0
            && self.missing_keys == 0
            && self.differing_answers == 0
            && self.rows == self.keys
    }
}

/// The charges table the child writes and the harness reads.
pub const CHARGES: &str = "idem_chaos_charges";

/// What each key's requests saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    no_answer: usize,
    statuses: HashMap<u16, usize>,
    /// Per key: the ids its 2xx answers named.
    ids: HashMap<usize, Vec<i64>>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the proof with `server` (the `idem-chaos-http` binary) against a private PostgreSQL.
pub async fn run(server: &Path, spec: &HttpCrashSpec) -> Result<HttpCrashReport, String> {
    let started = Instant::now();
    let database = Arc::new(Mutex::new(PostgresServer::start()));
    let url = lock(&database).url();
    let store = PostgresStore::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let pool = store.pool().clone();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {CHARGES} (id bigserial PRIMARY KEY, key text NOT NULL)"
    )))
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let port = idem_test_servers::free_port();
    let mode = if spec.in_transaction {
        "transaction"
    } else {
        "autocommit"
    };
    let args = [
        "serve".to_owned(),
        url.clone(),
        port.to_string(),
        mode.to_owned(),
    ];
    let mut child = spawn(server, &args)?;
    wait_until_listening(port).await?;

    let seen: Shared<Seen> = Arc::default();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{port}/charges");

    // The faults: kills of the server, restarts of the database, until the chaos ends.
    let chaos_ends = Instant::now() + spec.chaos;
    let faults = {
        let (server, args, spec, database) = (
            server.to_owned(),
            args.clone(),
            spec.clone(),
            database.clone(),
        );
        tokio::spawn(async move {
            let mut random = fastrand::Rng::with_seed(spec.seed);
            let restart_every = spec.chaos / (spec.restarts as u32 + 1);
            let mut next_restart = Instant::now() + restart_every;
            let (mut kills, mut restarts) = (0, 0);
            while Instant::now() < chaos_ends {
                let pause = random.u64(spec.kill_every_ms.0..=spec.kill_every_ms.1);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let _ = child.start_kill();
                let _ = child.wait().await;
                kills += 1;
                if restarts < spec.restarts && Instant::now() >= next_restart {
                    let database = database.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || lock(&database).start_again()).await;
                    restarts += 1;
                    next_restart += restart_every;
                }
                match spawn(&server, &args) {
                    Ok(next) => child = next,
                    Err(err) => return Err(err),
                }
            }
            Ok((child, kills, restarts))
        })
    };

    // The first deliveries: every key `deliveries` times at once, spread over the chaos.
    let spacing = spec.chaos / spec.keys.max(1) as u32;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(spec.concurrency.max(1)));
    let mut deliveries = Vec::new();
    for key in 0..spec.keys {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep_until((started + spacing * key as u32).into()).await;
        let mut copies = tokio::task::JoinSet::new();
        for _ in 0..spec.deliveries {
            let (client, base, seen) = (client.clone(), base.clone(), seen.clone());
            // Retried while the chaos lasts, then left to the healing pass.
            copies.spawn(async move { deliver(&client, &base, key, &seen, chaos_ends).await });
        }
        deliveries.push(tokio::spawn(async move {
            while copies.join_next().await.is_some() {}
            drop(permit);
        }));
    }
    for delivery in deliveries {
        let _ = delivery.await;
    }
    let (child, kills, restarts) = faults.await.map_err(|e| e.to_string())??;

    // Healed: every key until it gets a 2xx.
    let heal_by = Instant::now() + Duration::from_secs(60);
    for key in 0..spec.keys {
        if !deliver(&client, &base, key, &seen, heal_by).await {
            return Err(format!("key {key} got no 2xx within a minute of healing"));
        }
    }
    drop(child);

    let counted: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT key, count(*), min(id) FROM {CHARGES} GROUP BY key"
    )))
    .fetch_all(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let rows_of: HashMap<String, (i64, i64)> = counted
        .into_iter()
        .map(|(key, count, id)| (key, (count, id)))
        .collect();
    let seen = lock(&seen);
    let mut statuses: Vec<(u16, usize)> = seen.statuses.iter().map(|(s, n)| (*s, *n)).collect();
    statuses.sort_unstable();
    let mut report = HttpCrashReport {
        keys: spec.keys,
        requests: seen.requests,
        no_answer: seen.no_answer,
        statuses,
        kills,
        restarts,
        elapsed: started.elapsed(),
        ..HttpCrashReport::default()
    };
    for key in 0..spec.keys {
        let Some(&(count, id)) = rows_of.get(&key_name(key)) else {
            report.missing_keys += 1;
            continue;
        };
        report.rows += count as usize;
        report.duplicate_rows += count as usize - 1;
        let answers = seen.ids.get(&key).map(Vec::as_slice).unwrap_or_default();
        if answers.iter().any(|answered| *answered != id) {
            report.differing_answers += 1;
        }
    }
    report.rows += rows_of
        .keys()
        .filter(|key| !(0..spec.keys).any(|k| key_name(k) == **key))
        .count();
    Ok(report)
}

fn key_name(key: usize) -> String {
    format!("charge-{key}")
}

/// Sends `key` until it gets a 2xx or `until` passes; true when it got one.
async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    key: usize,
    seen: &Mutex<Seen>,
    until: Instant,
) -> bool {
    let body = Bytes::from(format!("{{\"key\":{key}}}"));
    loop {
        let request = http::Request::post(base)
            .header("idempotency-key", key_name(key))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()));
        let Ok(request) = request else { return false };
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = client.request(request).await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        })
        .await
        .ok()
        .flatten();
        {
            let mut seen = lock(seen);
            seen.requests += 1;
            match &answer {
                None => seen.no_answer += 1,
                Some((status, body)) => {
                    *seen.statuses.entry(*status).or_default() += 1;
                    if (200..300).contains(status) {
                        let id = serde_json::from_slice::<serde_json::Value>(body)
                            .ok()
                            .and_then(|json| json["id"].as_i64())
                            .unwrap_or(-1);
                        seen.ids.entry(key).or_default().push(id);
                        return true;
                    }
                }
            }
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(server: &Path, args: &[String]) -> Result<Child, String> {
    Command::new(server)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("start {}: {err}", server.display()))
}

async fn wait_until_listening(port: u16) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("the server never listened on port {port}"))
}

/// The child: serves `POST /charges` on `port` behind the layer over `database`, in
/// transactional mode or (with `in_transaction` false) in autocommit with the charge committed
/// on its own before the response is recorded. Runs until killed.
pub async fn serve(database: &str, port: u16, in_transaction: bool) -> Result<(), String> {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use idem_http::{IdempotencyKey, IdempotencyLayer, Tx};
    use idem_postgres::sqlx::{PgConnection, PgPool};

    async fn insert(key: &IdempotencyKey, connection: &mut PgConnection) -> Response {
        let inserted: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {CHARGES} (key) VALUES ($1) RETURNING id"
        )))
        .bind(key.as_str())
        .fetch_one(connection)
        .await;
        // Between the insert and the record (a provider's call): where a kill hurts most.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=20))).await;
        match inserted {
            Ok(id) => (StatusCode::CREATED, format!("{{\"id\":{id}}}")).into_response(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }

    async fn transactional(key: IdempotencyKey, mut tx: Tx<PostgresStore>) -> Response {
        insert(&key, &mut tx).await
    }

    async fn autocommit(State(pool): State<PgPool>, key: IdempotencyKey) -> Response {
        match pool.acquire().await {
            Ok(mut connection) => insert(&key, &mut connection).await,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }

    let store = PostgresStore::connect(database)
        .await
        .map_err(|e| e.to_string())?;
    let pool = store.pool().clone();
    let idem = idem_core::Idempotency::new(store).with_lease(Duration::from_secs(2));
    let app = if in_transaction {
        let layer = IdempotencyLayer::new(idem).in_transaction::<PostgresStore>();
        axum::Router::new()
            .route("/charges", axum::routing::post(transactional))
            .layer(layer)
            .with_state(pool)
    } else {
        axum::Router::new()
            .route("/charges", axum::routing::post(autocommit))
            .layer(IdempotencyLayer::new(idem))
            .with_state(pool)
    };
    // The port of a process killed a moment ago may take a moment to be free.
    let mut bound = tokio::net::TcpListener::bind(("127.0.0.1", port)).await;
    for _ in 0..100 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = tokio::net::TcpListener::bind(("127.0.0.1", port)).await;
    }
    let listener = bound.map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
