//! Benchmarks of idem side by side with hand-written redis-rs, the `cached` crate and in-memory
//! references, in interleaved rounds so that only ratios measured in one run are compared.
//!
//! ```text
//! cargo run --release -p idem-bench -- [--rounds 3] [--block-ms 1000] [--tasks 1,16,64,256]
//!                                      [--suite redis,memory,postgres,http,http-redis,http-postgres]
//!                                      [--chart docs/benchmarks.svg]
//!                                      [--write-tables docs/benchmarks.md]
//! ```
//!
//! It starts its own `redis-server` on a free port unless `REDIS_URL` names one.

mod chart;
mod measure;
mod page;
mod report;
mod sides;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use idem::redis::RedisStore;
use idem::{Idempotency, MemoryStore};
use idem_test_servers::{PostgresServer, RedisServer};

use crate::measure::Keys;
use crate::report::{Cell, Results};
use crate::sides::{Side, Workload, EXECUTIONS};

/// Keys completed before the replay blocks (and live during the first-execution blocks).
const LIVE_KEYS: u64 = 10_000;

/// Which store the sides run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    Redis,
    Memory,
    Postgres,
    /// An axum route with and without the `Idempotency-Key` layer, on the memory store.
    HttpMemory,
    /// The same on Redis.
    HttpRedis,
    /// A route that inserts a row in a transaction of its own, against the same route behind
    /// the layer in transactional mode (the insert through the request's `Tx`).
    HttpPostgres,
}

impl Suite {
    /// How `--suite` names it (and the page's markers).
    fn flag(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
            Self::Postgres => "postgres",
            Self::HttpMemory => "http",
            Self::HttpRedis => "http-redis",
            Self::HttpPostgres => "http-postgres",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Redis => "Redis",
            Self::Memory => "memory",
            Self::Postgres => "PostgreSQL",
            Self::HttpMemory => "HTTP, memory",
            Self::HttpRedis => "HTTP, Redis",
            Self::HttpPostgres => "HTTP, PostgreSQL",
        }
    }
}

struct Options {
    rounds: usize,
    block: Duration,
    tasks: Vec<u64>,
    suites: Vec<Suite>,
    chart: Option<std::path::PathBuf>,
    /// The page whose tables this run rewrites, between each suite's markers.
    tables: Option<std::path::PathBuf>,
    /// The options as given, for the line that says how the tables were made.
    given: String,
    /// Only the sides whose name contains this (for profiling one side).
    only: Option<String>,
    /// Only this workload.
    workloads: Vec<Workload>,
}

const USAGE: &str = "usage: idem-bench [--rounds N (3)] [--block-ms MS (1000)] \
[--tasks 1,16,64,256] [--suite redis,memory,postgres,http,http-redis,http-postgres] [--chart FILE.svg] \
[--only SIDE] [--workload first|replay] [--write-tables PAGE.md]\n\
Starts its own redis-server on a free port unless REDIS_URL is set.";

fn parse_options(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let args: Vec<String> = args.collect();
    let given = args.join(" ");
    let mut options = Options {
        rounds: 3,
        block: Duration::from_millis(1000),
        tasks: vec![1, 16, 64, 256],
        suites: vec![Suite::Redis, Suite::Memory],
        chart: None,
        tables: None,
        given,
        only: None,
        workloads: vec![Workload::First, Workload::Replay],
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => options.rounds = number(&flag, &value()?)?.max(1) as usize,
            "--block-ms" => options.block = Duration::from_millis(number(&flag, &value()?)?.max(1)),
            "--tasks" => {
                options.tasks = value()?
                    .split(',')
                    .map(|tasks| number("--tasks", tasks).map(|tasks| tasks.max(1)))
                    .collect::<Result<_, _>>()?
            }
            "--suite" => {
                options.suites = value()?
                    .split(',')
                    .map(|suite| match suite {
                        "redis" => Ok(Suite::Redis),
                        "memory" => Ok(Suite::Memory),
                        "postgres" => Ok(Suite::Postgres),
                        "http" => Ok(Suite::HttpMemory),
                        "http-redis" => Ok(Suite::HttpRedis),
                        "http-postgres" => Ok(Suite::HttpPostgres),
                        other => Err(format!(
                        "unknown suite `{other}`: use redis, memory, postgres, http, http-redis or http-postgres"
                    )),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--chart" => options.chart = Some(value()?.into()),
            "--write-tables" => options.tables = Some(value()?.into()),
            "--only" => options.only = Some(value()?),
            "--workload" => {
                options.workloads = match value()?.as_str() {
                    "first" => vec![Workload::First],
                    "replay" => vec![Workload::Replay],
                    other => {
                        return Err(format!("unknown workload `{other}`: use first or replay"))
                    }
                }
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(options)
}

fn number(flag: &str, text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{flag}: `{text}` is not a whole number"))
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(clean) if clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every suite; `Ok(false)` when a call failed or a replay ran a body.
async fn run(options: &Options) -> Result<bool, String> {
    // Our own server unless REDIS_URL names one; it lives until the end of the run.
    let mut server = None;
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_)
            if options.suites.contains(&Suite::Redis)
                || options.suites.contains(&Suite::HttpRedis) =>
        {
            let started = RedisServer::start();
            let url = started.url();
            server = Some(started);
            url
        }
        Err(_) => String::new(),
    };
    // The same for PostgreSQL: DATABASE_URL, or a private cluster.
    let mut postgres_server = None;
    let postgres_url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_)
            if options.suites.contains(&Suite::Postgres)
                || options.suites.contains(&Suite::HttpPostgres) =>
        {
            let started = PostgresServer::start();
            let url = started.url();
            postgres_server = Some(started);
            url
        }
        Err(_) => String::new(),
    };
    println!(
        "{}",
        report::machine_line(options.rounds, options.block, &url, server.is_some())
    );
    let mut results = Results::default();
    for &suite in &options.suites {
        let sides = match suite {
            Suite::Redis => vec![
                Side::idem_redis(&url).await.map_err(|err| err.0)?,
                Side::naive(&url).await.map_err(|err| err.0)?,
                Side::cached(&url),
                Side::idempotent(&url).await.map_err(|err| err.0)?,
            ],
            Suite::Memory => vec![Side::idem_memory(), Side::Bare, Side::mutex_map()],
            Suite::HttpMemory => vec![
                Side::http(Some(Idempotency::new(MemoryStore::new())))
                    .await
                    .map_err(|err| err.0)?,
                Side::http(None).await.map_err(|err| err.0)?,
            ],
            Suite::HttpRedis => {
                let store = RedisStore::connect(&url)
                    .await
                    .map_err(|err| err.to_string())?;
                vec![
                    Side::http(Some(Idempotency::new(store)))
                        .await
                        .map_err(|err| err.0)?,
                    Side::http(None).await.map_err(|err| err.0)?,
                ]
            }
            Suite::Postgres => {
                let connections = options.tasks.iter().copied().max().unwrap_or(1) as u32 + 4;
                Side::postgres(&postgres_url, connections)
                    .await
                    .map_err(|err| err.0)?
            }
            Suite::HttpPostgres => {
                let connections = options.tasks.iter().copied().max().unwrap_or(1) as u32 + 4;
                Side::http_postgres(&postgres_url, connections)
                    .await
                    .map_err(|err| err.0)?
            }
        };
        let sides: Vec<Arc<Side>> = sides
            .into_iter()
            .filter(|side| {
                options
                    .only
                    .as_ref()
                    .is_none_or(|only| side.name().contains(only.as_str()))
            })
            .map(Arc::new)
            .collect();
        for side in &sides {
            populate(side, suite).await?;
        }
        // Server time per call, for the suites whose sides all talk to this Redis.
        let mut stats = match suite {
            Suite::Redis => Some(
                redis::Client::open(url.as_str())
                    .map_err(|err| err.to_string())?
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|err| format!("a connection for INFO: {err}"))?,
            ),
            _ => None,
        };
        for &workload in &options.workloads {
            for &tasks in &options.tasks {
                for round in 0..options.rounds {
                    for (index, side) in sides.iter().enumerate() {
                        let cell = Cell {
                            suite: suite.name(),
                            workload,
                            tasks,
                            side: side.name(),
                        };
                        let keys = match workload {
                            Workload::First => Keys::Fresh {
                                base: (results.blocks() + 1) << 41,
                            },
                            Workload::Replay => Keys::Existing { count: LIVE_KEYS },
                        };
                        let executions = EXECUTIONS.load(Ordering::Relaxed);
                        let side = Arc::clone(side);
                        let server_before = match stats.as_mut() {
                            Some(stats) => Some(measure::server_usec(stats).await?),
                            None => None,
                        };
                        let mut sample = measure::block(tasks, options.block, keys, move |key| {
                            let side = Arc::clone(&side);
                            async move { side.call(workload, key).await }
                        })
                        .await;
                        if let (Some(stats), Some(before)) = (stats.as_mut(), server_before) {
                            let after = measure::server_usec(stats).await?;
                            // (The INFO that opened the block is in it: microseconds over
                            // thousands of calls.)
                            let spent = after.saturating_sub(before) as f64;
                            sample.server_us = (sample.ops > 0).then(|| spent / sample.ops as f64);
                        }
                        let ran = EXECUTIONS.load(Ordering::Relaxed) - executions;
                        let runs_every_call =
                            ["bare call", "bare transaction", "bare route"].contains(&cell.side);
                        if workload == Workload::Replay && !runs_every_call && ran > 0 {
                            sample.errors += ran;
                            sample
                                .first_error
                                .get_or_insert(format!("{ran} replays ran the body"));
                        }
                        if let Some(error) = &sample.first_error {
                            eprintln!(
                                "{cell} round {round}: {} errors, first: {error}",
                                sample.errors
                            );
                        }
                        eprintln!(
                            "{cell} round {round} ({index}): {:.0} ops/s",
                            sample.ops_per_sec()
                        );
                        results.add(cell, sample);
                    }
                }
            }
        }
    }
    print!("{}", results.table());
    print!("{}", results.summary());
    if let Some(path) = &options.chart {
        chart::draw(&results, path)
            .map_err(|err| format!("cannot draw {}: {err}", path.display()))?;
        println!("chart: {}", path.display());
    }
    if let Some(path) = &options.tables {
        let made = format!(
            "Made on {} by `cargo run --release -p idem-bench -- {}`: {}.",
            page::today(),
            options.given,
            report::machine_line(options.rounds, options.block, &url, server.is_some())
        );
        let blocks: Vec<(&str, String)> = options
            .suites
            .iter()
            .map(|suite| {
                let table = results.table_of(|cell| cell.suite == suite.name());
                (suite.flag(), format!("{made}\n{table}"))
            })
            .collect();
        page::write(path, &blocks)?;
        println!("tables: {}", path.display());
    }
    drop(server);
    drop(postgres_server);
    Ok(results.clean())
}

/// Completes keys `0..LIVE_KEYS` on `side` (the replays' keys, and the live keys the first
/// executions run among).
async fn populate(side: &Arc<Side>, suite: Suite) -> Result<(), String> {
    let tasks = 64;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let side = Arc::clone(side);
        handles.push(tokio::spawn(async move {
            let mut key = task;
            while key < LIVE_KEYS {
                side.call(Workload::First, key).await?;
                key += tasks;
            }
            Ok::<(), String>(())
        }));
    }
    for handle in handles {
        handle
            .await
            .map_err(|err| format!("a task panicked: {err}"))?
            .map_err(|err| format!("populating {} on {}: {err}", side.name(), suite.name()))?;
    }
    Ok(())
}
