//! The ledger proof: does the transaction buy exactly-once effects under SIGKILL and database
//! crashes?
//!
//! Child processes (the `idem-chaos-ledger child` command) take deliveries on stdin and book
//! each as a ledger row in PostgreSQL, one call per delivery, replying `ok KEY ID` (the booked
//! row's id, or the recorded one on a replay) or `err KEY MESSAGE`. A broker delivers every key
//! several times, at least once: it redelivers whatever got no `ok`, while it SIGKILLs children at
//! random moments (a child sleeps a little between its insert and its record, so some die in
//! between) and restarts PostgreSQL with `pg_ctl ... -m immediate`. After healing, every key is
//! delivered once more. Then the ledger is the ground truth: rows per key must be exactly 1.
//!
//! Two ways to keep the record: [`RecordIn::Transaction`] (idem's record commits with the row)
//! and [`RecordIn::Redis`] (the row commits on its own, the record goes to Redis afterwards:
//! what a service does without the transactional mode). The second's duplicates are what the
//! transaction buys.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem_core::{Call, Error, Idempotency, TransactionBegun};
use idem_postgres::sqlx::{self, PgPool};
use idem_postgres::PostgresStore;
use idem_redis::RedisStore;
use idem_test_servers::{PostgresServer, RedisServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Where a call's record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordIn {
    /// In PostgreSQL, in the transaction of the ledger row (`transaction = conn`).
    Transaction,
    /// In Redis, written after the ledger row committed on its own.
    Redis,
}

impl RecordIn {
    fn name(self) -> &'static str {
        match self {
            Self::Transaction => "transaction",
            Self::Redis => "redis",
        }
    }
}

/// One run of the proof.
#[derive(Debug, Clone)]
pub struct LedgerSpec {
    /// Keys booked.
    pub keys: usize,
    /// Deliveries of each key before healing (one more follows it).
    pub deliveries: usize,
    /// Children handling deliveries at once.
    pub children: usize,
    /// A child is SIGKILLed every this long.
    pub kill_every: Duration,
    /// PostgreSQL restarts (`-m immediate`), spread over the run.
    pub restarts: usize,
    /// Where the record is kept.
    pub record_in: RecordIn,
    /// The lease of each call (Redis mode: how long a killed child's claim blocks its key).
    pub lease: Duration,
    /// Seeds the delivery order and the kills.
    pub seed: u64,
}

impl LedgerSpec {
    /// `keys` keys delivered 3 times by 4 children, a kill every 150ms, 2 restarts.
    pub fn new(keys: usize, record_in: RecordIn) -> Self {
        Self {
            keys,
            deliveries: 3,
            children: 4,
            kill_every: Duration::from_millis(150),
            restarts: 2,
            record_in,
            lease: Duration::from_millis(500),
            seed: 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerReport {
    /// Keys booked.
    pub keys: usize,
    /// Deliveries sent to children, redeliveries included.
    pub deliveries: usize,
    /// Children killed.
    pub kills: usize,
    /// PostgreSQL restarts.
    pub restarts: usize,
    /// Ledger rows in all.
    pub ledger_rows: usize,
    /// Rows beyond the first for a key: effects that happened twice.
    pub duplicate_rows: usize,
    /// Keys without a ledger row.
    pub missing_keys: usize,
    /// Keys whose record is missing after the run (the transactional mode only).
    pub keys_without_record: usize,
    /// Keys whose `ok` replies named different rows, or a row other than its ledger row.
    pub differing_replies: usize,
    /// How long the run took.
    pub elapsed: Duration,
}

impl LedgerReport {
    /// Every key booked exactly once, recorded, and replayed the same.
    pub fn exactly_once(&self) -> bool {
        self.duplicate_rows == 0
            && self.missing_keys == 0
            && self.keys_without_record == 0
            && self.differing_replies == 0
            && self.ledger_rows == self.keys
    }
}

const LEDGER: &str = "idem_chaos_ledger";
/// What a child's reader reports when its output ends.
const EXITED: &str = "exited";
const NAMESPACE: &str = "ledger";

/// A running child and the delivery it works on.
struct Worker {
    process: Child,
    stdin: ChildStdin,
    generation: u64,
    in_flight: Option<usize>,
}

/// Runs the proof with `child` (the `idem-chaos-ledger` binary) on servers started here.
pub async fn run(child: &Path, spec: &LedgerSpec) -> Result<LedgerReport, String> {
    let started = Instant::now();
    let server = Arc::new(Mutex::new(PostgresServer::start()));
    let database = lock(&server).url();
    let redis = match spec.record_in {
        // Redis itself keeps everything it acknowledged: what it forgets is not the question.
        RecordIn::Redis => Some(RedisServer::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])),
        RecordIn::Transaction => None,
    };
    let redis_url = redis.as_ref().map(RedisServer::url).unwrap_or_default();
    let store = PostgresStore::connect(&database)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let pool = store.pool().clone();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {LEDGER} (id bigserial PRIMARY KEY, key bigint NOT NULL)"
    )))
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;

    let args = vec![
        "child".to_owned(),
        spec.record_in.name().to_owned(),
        database.clone(),
        redis_url,
        spec.lease.as_millis().to_string(),
    ];
    let mut random = fastrand::Rng::with_seed(spec.seed);
    let mut queue: VecDeque<usize> = (0..spec.keys)
        .flat_map(|key| std::iter::repeat_n(key, spec.deliveries))
        .collect();
    random.shuffle(queue.make_contiguous());
    let total = queue.len();
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<(usize, u64, String)>();
    let mut generation = 0;
    let mut workers = Vec::new();
    for index in 0..spec.children {
        generation += 1;
        workers.push(spawn(child, &args, index, generation, &replies_tx)?);
    }
    let mut report = LedgerReport {
        keys: spec.keys,
        ..LedgerReport::default()
    };
    let mut ids: HashMap<usize, Vec<i64>> = HashMap::new();
    let mut acked = 0;
    let mut kills = tokio::time::interval(spec.kill_every);
    kills.tick().await;
    let mut restarting: Option<tokio::task::JoinHandle<()>> = None;
    let mut healing = false;
    loop {
        // Hand out deliveries to idle children.
        for worker in workers.iter_mut().filter(|w| w.in_flight.is_none()) {
            let Some(key) = queue.pop_front() else { break };
            worker.in_flight = Some(key);
            report.deliveries += 1;
            if worker
                .stdin
                .write_all(format!("{key}\n").as_bytes())
                .await
                .is_err()
            {
                // The child is gone; its delivery is re-queued when it is replaced.
            }
        }
        if queue.is_empty() && workers.iter().all(|w| w.in_flight.is_none()) {
            if healing {
                break;
            }
            // Healed: every key once more, without faults.
            if let Some(restart) = restarting.take() {
                restart.await.map_err(|e| e.to_string())?;
            }
            healing = true;
            queue.extend(0..spec.keys);
            continue;
        }
        tokio::select! {
            reply = replies.recv() => {
                let Some((index, from, line)) = reply else { return Err("replies closed".into()) };
                let worker = &mut workers[index];
                if from != worker.generation {
                    continue; // a killed child's last words
                }
                if line == EXITED {
                    if let Some(key) = worker.in_flight.take() {
                        queue.push_back(key);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    generation += 1;
                    workers[index] = spawn(child, &args, index, generation, &replies_tx)?;
                    continue;
                }
                let Some(key) = worker.in_flight.take() else { continue };
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next().and_then(|k| k.parse::<usize>().ok()), parts.next()) {
                    (Some("ok"), Some(k), Some(id)) if k == key => {
                        let id = id.parse::<i64>().map_err(|e| format!("{line}: {e}"))?;
                        ids.entry(key).or_default().push(id);
                        acked += 1;
                    }
                    // Failed (the database restarting, a key in progress): deliver again later.
                    _ => queue.push_back(key),
                }
            }
            _ = kills.tick(), if !healing => {
                let index = random.usize(..workers.len());
                let worker = &mut workers[index];
                let _ = worker.process.start_kill();
                let _ = worker.process.wait().await;
                report.kills += 1;
                if let Some(key) = worker.in_flight.take() {
                    queue.push_back(key);
                }
                generation += 1;
                workers[index] = spawn(child, &args, index, generation, &replies_tx)?;
            }
        }
        // Restarts spread over the faulty part of the run.
        let due = report.restarts < spec.restarts
            && acked * (spec.restarts + 1) >= total * (report.restarts + 1)
            && restarting.as_ref().is_none_or(|r| r.is_finished());
        if due && !healing {
            report.restarts += 1;
            let server = server.clone();
            restarting = Some(tokio::task::spawn_blocking(move || {
                lock(&server).start_again()
            }));
        }
    }
    for worker in &mut workers {
        let _ = worker.process.start_kill();
        let _ = worker.process.wait().await;
    }
    measure(&pool, &store, spec, &ids, &mut report).await?;
    report.elapsed = started.elapsed();
    drop(redis);
    Ok(report)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn spawn(
    child: &Path,
    args: &[String],
    index: usize,
    generation: u64,
    replies: &mpsc::UnboundedSender<(usize, u64, String)>,
) -> Result<Worker, String> {
    let mut process = Command::new(child)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", child.display()))?;
    let stdin = process.stdin.take().ok_or("no stdin")?;
    let stdout = process.stdout.take().ok_or("no stdout")?;
    let replies = replies.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if replies.send((index, generation, line)).is_err() {
                return;
            }
        }
        // The child is gone (killed, or it gave up): its worker is replaced.
        let _ = replies.send((index, generation, EXITED.to_owned()));
    });
    Ok(Worker {
        process,
        stdin,
        generation,
        in_flight: None,
    })
}

/// Reads the ledger and idem's records back.
async fn measure(
    pool: &PgPool,
    store: &PostgresStore,
    spec: &LedgerSpec,
    ids: &HashMap<usize, Vec<i64>>,
    report: &mut LedgerReport,
) -> Result<(), String> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT key, count(*), min(id) FROM {LEDGER} GROUP BY key"
    )))
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let rows: HashMap<usize, (i64, i64)> = rows
        .into_iter()
        .map(|(key, count, id)| (key as usize, (count, id)))
        .collect();
    let naming = Idempotency::new(store.clone());
    for key in 0..spec.keys {
        let (count, row) = rows.get(&key).copied().unwrap_or((0, 0));
        report.ledger_rows += count as usize;
        report.duplicate_rows += (count as usize).saturating_sub(1);
        if count == 0 {
            report.missing_keys += 1;
        }
        let replies = ids.get(&key).map(Vec::as_slice).unwrap_or_default();
        let same = replies.windows(2).all(|pair| pair[0] == pair[1]);
        if replies.is_empty() || !same || (count == 1 && replies[0] != row) {
            report.differing_replies += 1;
        }
        if spec.record_in == RecordIn::Transaction {
            let store_key = naming
                .store_key(NAMESPACE, &key.to_string())
                .map_err(|e| e.to_string())?;
            let recorded: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM idem_records WHERE key = $1 AND state = 1",
            )
            .bind(store_key.as_bytes())
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
            if recorded != 1 {
                report.keys_without_record += 1;
            }
        }
    }
    Ok(())
}

/// The child: books every key read from stdin, replying on stdout. Arguments: `MODE DATABASE_URL
/// REDIS_URL LEASE_MS` (the Redis URL is empty in the transactional mode).
pub async fn child(args: &[String]) -> Result<(), String> {
    let [mode, database, redis, lease] = args else {
        return Err("usage: idem-chaos-ledger child MODE DATABASE_URL REDIS_URL LEASE_MS".into());
    };
    let lease = Duration::from_millis(lease.parse().map_err(|_| "bad LEASE_MS")?);
    // The database may be restarting: keep trying for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let postgres = loop {
        match PostgresStore::connect(database).await {
            Ok(store) => break store,
            Err(err) if Instant::now() > deadline => return Err(err.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let pool = postgres.pool().clone();
    let idem = match mode.as_str() {
        "transaction" => Idempotency::new(postgres),
        "redis" => Idempotency::new(
            RedisStore::connect(redis)
                .await
                .map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unknown mode {other}")),
    }
    .with_lease(lease);
    let mut random = fastrand::Rng::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(key) = line.trim().parse::<i64>() else {
            continue;
        };
        // Between the insert and the record: where a kill costs a duplicate without the
        // transaction.
        let pause = Duration::from_micros(random.u64(0..3_000));
        let booked = match mode.as_str() {
            "transaction" => book_in_transaction(&idem, &pool, key, pause).await,
            _ => book_then_record(&idem, &pool, key, pause).await,
        };
        let reply = match booked {
            Ok(id) => format!("ok {key} {id}\n"),
            Err(err) => format!("err {key} {}\n", err.to_string().replace('\n', " ")),
        };
        if stdout.write_all(reply.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn insert(connection: &mut sqlx::PgConnection, key: i64) -> Result<i64, Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {LEDGER} (key) VALUES ($1) RETURNING id"
    )))
    .bind(key)
    .fetch_one(connection)
    .await
    .map_err(|err| Error::store("insert", err))
}

/// The row and the record in one transaction.
async fn book_in_transaction(
    idem: &Idempotency,
    pool: &PgPool,
    key: i64,
    pause: Duration,
) -> Result<i64, Error> {
    let mut connection = pool
        .acquire()
        .await
        .map_err(|err| Error::store("acquire", err))?;
    let call = Call::new(NAMESPACE, key);
    let mut claim = match idem_postgres::begin(idem, call, &mut connection).await {
        TransactionBegun::Done(result) => return result,
        TransactionBegun::Claimed(claim) => claim,
    };
    let booked = insert(claim.connection(), key).await;
    tokio::time::sleep(pause).await;
    claim.finish(booked).await
}

/// The row committed on its own, then the record in Redis.
async fn book_then_record(
    idem: &Idempotency,
    pool: &PgPool,
    key: i64,
    pause: Duration,
) -> Result<i64, Error> {
    idem.run(Call::new(NAMESPACE, key), async {
        let mut connection = pool
            .acquire()
            .await
            .map_err(|err| Error::store("acquire", err))?;
        let id = insert(&mut connection, key).await?;
        tokio::time::sleep(pause).await;
        Ok(id)
    })
    .await
}
