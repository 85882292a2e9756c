//! The `idem` command, run as a process against private Redis and PostgreSQL servers, on keys
//! that real calls made.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem_core::{AttemptId, Call, ClaimRequest, Error, Idempotency, Store};
use serde_json::{json, Value};

/// What one run of the command printed, and how it exited.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}\n{}", self.stdout, self.stderr))
    }
}

fn command(store: &str, args: &[&str]) -> Ran {
    let output = Command::new(env!("CARGO_BIN_EXE_idem"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap();
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs the charge of `order` (counting executions); its value is the order's number.
async fn charge(runtime: &Idempotency, order: u32, runs: &AtomicUsize) -> u32 {
    runtime
        .run(Call::new("charge", format!("order-{order}")), async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(order)
        })
        .await
        .unwrap()
}

/// The whole tour on one store: keys made by calls, listed, shown, counted, evicted.
async fn tour(url: &str, store: Arc<dyn Store>) {
    let runtime = Idempotency::from_arc(store.clone());
    let runs = AtomicUsize::new(0);
    for order in 1..=3 {
        assert_eq!(charge(&runtime, order, &runs).await, order);
    }
    runtime
        .run(Call::new("refund", "order-1"), async { Ok::<_, Error>(0) })
        .await
        .unwrap();
    // A call in flight: a claim whose holder is still running.
    let stuck = runtime.store_key("charge", "stuck").unwrap();
    let claim = ClaimRequest::new(&stuck, AttemptId::random(), b"", Duration::from_secs(600));
    store.claim(claim).await.unwrap();

    let listed = command(url, &["--json", "list", "--namespace", "charge"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let listed = listed.json();
    let mut keys: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["key"].as_str().unwrap())
        .collect();
    // Redis lists in its hash table's order, PostgreSQL in the keys'.
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "idem:charge:order-1",
            "idem:charge:order-2",
            "idem:charge:order-3",
            "idem:charge:stuck"
        ]
    );
    assert_eq!(listed["next"], Value::Null);

    let inflight = command(url, &["--json", "list", "--state", "inflight"]).json();
    assert_eq!(inflight["keys"].as_array().unwrap().len(), 1, "{inflight}");
    assert_eq!(inflight["keys"][0]["key"], "idem:charge:stuck");
    assert_eq!(inflight["keys"][0]["state"], "inflight");

    // A page at a time, by hand: the human output says how to go on.
    let first = command(url, &["list", "--namespace", "charge", "--limit", "3"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.starts_with("KEY "), "{}", first.stdout);
    let cursor = first
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("more: list again with --after "))
        .unwrap_or_else(|| panic!("no cursor in:\n{}", first.stdout))
        .to_owned();
    let rest = command(
        url,
        &[
            "--json",
            "list",
            "--namespace",
            "charge",
            "--limit",
            "3",
            "--after",
            &cursor,
        ],
    )
    .json();
    let first_keys = first
        .stdout
        .lines()
        .filter(|line| line.starts_with("idem:"))
        .count();
    assert_eq!(first_keys + rest["keys"].as_array().unwrap().len(), 4);

    let all = command(url, &["--json", "list", "--limit", "1", "--all"]).json();
    assert_eq!(all["keys"].as_array().unwrap().len(), 5, "{all}");

    let shown = command(url, &["--json", "show", "charge", "order-2", "--value"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown = shown.json();
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["outcome"], "ok");
    assert_eq!(shown["value"], json!(2));
    assert!(
        shown["expires_in_ms"].as_u64().unwrap() > 3_600_000,
        "{shown}"
    );
    let fence = shown["fence"].as_u64().unwrap();
    // The full store key, as a listing prints it, names the same key.
    let by_store_key = command(url, &["--json", "show", "idem:charge:order-2"]).json();
    assert_eq!(by_store_key["fence"], fence);
    let human = command(url, &["show", "charge", "order-2"]);
    assert!(
        human.stdout.contains("state        completed"),
        "{}",
        human.stdout
    );

    let stats = command(url, &["--json", "stats"]).json();
    assert_eq!(
        stats,
        json!({ "inflight": 1, "unknown": 0, "completed": 4 })
    );

    // A fence the key no longer holds changes nothing (exit 4); the fence read evicts it.
    let stale = (fence - 1).to_string();
    let refused = command(
        url,
        &[
            "evict",
            "charge",
            "order-2",
            "--fence",
            &stale,
            "--state",
            "completed",
        ],
    );
    assert_eq!(refused.code, 4, "{}{}", refused.stdout, refused.stderr);
    assert_eq!(charge(&runtime, 2, &runs).await, 2);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "a refused eviction replays");
    let evicted = command(url, &["evict", "charge", "order-2"]);
    assert_eq!(evicted.code, 0, "{}", evicted.stderr);
    assert!(
        evicted.stdout.starts_with("evicted idem:charge:order-2"),
        "{}",
        evicted.stdout
    );
    assert_eq!(
        command(url, &["show", "charge", "order-2"]).code,
        3,
        "evicted keys are absent"
    );
    assert_eq!(command(url, &["evict", "charge", "order-2"]).code, 3);
    assert_eq!(charge(&runtime, 2, &runs).await, 2);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "the next delivery runs the body once"
    );
    assert_eq!(charge(&runtime, 2, &runs).await, 2);
    assert_eq!(runs.load(Ordering::SeqCst), 4, "and is replayed after");

    let ping = command(url, &["ping"]);
    assert_eq!(ping.code, 0, "{}", ping.stderr);
    assert!(
        ping.stdout.starts_with("ok: the store answered in"),
        "{}",
        ping.stdout
    );
}

/// A Redis store on a server of its own (or `IDEM_TEST_REDIS_URL`'s), with its URL.
async fn redis() -> (
    String,
    Arc<dyn Store>,
    Option<idem_test_servers::RedisServer>,
) {
    let (url, server) = idem_test_servers::any_server();
    let store = idem_redis::RedisStore::connect(&url).await.unwrap();
    (url, Arc::new(store), server)
}

/// A PostgreSQL store on a cluster of its own (or `IDEM_TEST_DATABASE_URL`'s), with its URL.
async fn postgres() -> (
    String,
    Arc<dyn Store>,
    Option<idem_test_servers::PostgresServer>,
) {
    let (url, server) = idem_test_servers::any_database();
    let store = idem_postgres::PostgresStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (url, Arc::new(store), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_on_redis() {
    let (url, store, _server) = redis().await;
    tour(&url, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_on_postgres() {
    let (url, store, _server) = postgres().await;
    tour(&url, store).await;
}

#[test]
fn bad_input_exits_with_a_message_not_a_panic() {
    let unknown = command("mysql://x@y/z", &["stats"]);
    assert_eq!(unknown.code, 2, "a wrong option: {}", unknown.stderr);
    assert!(
        unknown.stderr.contains("must be a redis://"),
        "{}",
        unknown.stderr
    );
    assert!(
        !unknown.stderr.contains("x@y"),
        "no part of the URL is echoed"
    );
    let port = idem_test_servers::free_port();
    let down = command(&format!("redis://127.0.0.1:{port}"), &["ping"]);
    assert_eq!(down.code, 1);
    assert!(down.stderr.contains("cannot connect"), "{}", down.stderr);
    let usage = command("redis://127.0.0.1:1", &["list", "--state", "lost"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(
        usage.stderr.contains("unknown key state `lost`"),
        "{}",
        usage.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_on_a_redis_cluster() {
    let cluster = idem_test_servers::RedisCluster::start();
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = idem_redis::RedisStore::connect_cluster(&nodes)
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let runtime = Idempotency::from_arc(store);
    let runs = AtomicUsize::new(0);
    for order in 1..=20 {
        charge(&runtime, order, &runs).await;
    }
    // Every primary's keys, whichever node the command connects through.
    let listed = command(
        &urls[1],
        &["--cluster", "--json", "list", "--all", "--limit", "7"],
    );
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json()["keys"].as_array().unwrap().len(), 20);
    let stats = command(&urls[2], &["--cluster", "--json", "stats"]).json();
    assert_eq!(
        stats,
        json!({ "inflight": 0, "unknown": 0, "completed": 20 })
    );
    let evicted = command(&urls[0], &["--cluster", "evict", "charge", "order-7"]);
    assert_eq!(evicted.code, 0, "{}", evicted.stderr);
    charge(&runtime, 7, &runs).await;
    assert_eq!(runs.load(Ordering::SeqCst), 21);
}

/// A withdrawal's error: the bank timed out (the money may have moved), or idem refused.
#[derive(Debug)]
enum WithdrawError {
    BankTimedOut,
    Idem(Error),
}

impl From<Error> for WithdrawError {
    fn from(err: Error) -> Self {
        Self::Idem(err)
    }
}

/// Withdraws for `id`, counting the bodies that run; `time_out` makes the bank time out.
async fn withdraw(
    runtime: &Idempotency,
    id: &str,
    runs: &AtomicUsize,
    time_out: bool,
) -> Result<u64, WithdrawError> {
    let on_error = |err: &WithdrawError| match err {
        WithdrawError::BankTimedOut => idem_core::Disposition::OutcomeUnknown,
        WithdrawError::Idem(_) => idem_core::Disposition::Release,
    };
    runtime
        .run_with(Call::new("withdraw", id), on_error, async {
            runs.fetch_add(1, Ordering::SeqCst);
            if time_out {
                Err(WithdrawError::BankTimedOut)
            } else {
                Ok(100)
            }
        })
        .await
}

/// An unknown outcome is held past its lease until an operator resolves it with the command:
/// released, the next delivery runs the body exactly once; recorded, every delivery replays
/// the operator's result and the body never runs again.
async fn unknown_outcome_held_until_resolved(url: &str, store: Arc<dyn Store>) {
    let lease = Duration::from_millis(400);
    let runtime = Idempotency::from_arc(store)
        .with_lease(lease)
        .with_unknown_hold(idem_core::UnknownHold::UntilResolved);
    let runs = AtomicUsize::new(0);
    for id in ["w-1", "w-2"] {
        let first = withdraw(&runtime, id, &runs, true).await;
        assert!(
            matches!(first, Err(WithdrawError::BankTimedOut)),
            "{first:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Well past the lease: still held, and no delivery runs the body.
    tokio::time::sleep(lease * 3).await;
    for id in ["w-1", "w-2"] {
        let retry = withdraw(&runtime, id, &runs, false).await;
        assert!(
            matches!(
                retry,
                Err(WithdrawError::Idem(Error::OutcomeUnknown { .. }))
            ),
            "{retry:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "a held key runs no body");

    let unknown = command(url, &["--json", "list", "--state", "unknown"]).json();
    let mut keys: Vec<&str> = unknown["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["idem:withdraw:w-1", "idem:withdraw:w-2"]);
    let shown = command(url, &["show", "withdraw", "w-1"]);
    assert!(
        shown.stdout.contains("state        unknown"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("held for     until resolved"),
        "{}",
        shown.stdout
    );
    let stats = command(url, &["--json", "stats"]).json();
    assert_eq!(stats["unknown"], 2, "{stats}");

    // w-1: the bank says the money did not move. Release it; the next delivery runs once.
    let released = command(url, &["resolve", "withdraw", "w-1", "--release"]);
    assert_eq!(released.code, 0, "{}{}", released.stdout, released.stderr);
    assert!(
        released.stdout.starts_with("released idem:withdraw:w-1"),
        "{}",
        released.stdout
    );
    let again = command(url, &["resolve", "withdraw", "w-1", "--release"]);
    assert_eq!(again.code, 3, "a released key is absent: {}", again.stdout);
    assert_eq!(withdraw(&runtime, "w-1", &runs, false).await.unwrap(), 100);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the next delivery runs the body"
    );
    assert_eq!(withdraw(&runtime, "w-1", &runs, false).await.unwrap(), 100);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "exactly once");

    // w-2: the bank says 70 moved. Record that; it is every delivery's answer.
    let not_json = command(url, &["resolve", "withdraw", "w-2", "--record", "{seventy"]);
    assert_eq!(not_json.code, 2, "{}", not_json.stderr);
    assert!(
        not_json.stderr.contains("--record is not JSON"),
        "{}",
        not_json.stderr
    );
    let recorded = command(
        url,
        &["--json", "resolve", "withdraw", "w-2", "--record", "70"],
    );
    assert_eq!(recorded.code, 0, "{}", recorded.stderr);
    assert_eq!(recorded.json()["resolution"], "recorded");
    for _ in 0..2 {
        assert_eq!(withdraw(&runtime, "w-2", &runs, false).await.unwrap(), 70);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "a recorded key never runs its body again"
    );
    // Only a held key can be resolved: a completed one is refused, unchanged.
    let refused = command(url, &["resolve", "withdraw", "w-2", "--release"]);
    assert_eq!(refused.code, 4, "{}", refused.stdout);
    assert_eq!(withdraw(&runtime, "w-2", &runs, false).await.unwrap(), 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_on_redis_is_held_until_the_command_resolves_it() {
    let (url, store, _server) = redis().await;
    unknown_outcome_held_until_resolved(&url, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_on_postgres_is_held_until_the_command_resolves_it() {
    let (url, store, _server) = postgres().await;
    unknown_outcome_held_until_resolved(&url, store).await;
}

/// A store that accepts connections and never answers: `ping` fails within its timeout,
/// connection included, with exit code 1.
#[test]
fn ping_gives_up_on_a_silent_store_within_its_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepted and held open, never answered.
    let held = std::thread::spawn(move || {
        let accepted: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(accepted);
    });
    let started = std::time::Instant::now();
    let silent = command(
        &format!("redis://127.0.0.1:{port}"),
        &["ping", "--timeout", "700ms"],
    );
    let took = started.elapsed();
    assert_eq!(silent.code, 1, "{}", silent.stderr);
    assert!(
        silent.stderr.contains("did not answer within") || silent.stderr.contains("timed out"),
        "{}",
        silent.stderr
    );
    assert!(took < Duration::from_secs(4), "gave up after {took:?}");
    let zero = command(
        &format!("redis://127.0.0.1:{port}"),
        &["ping", "--timeout", "0s"],
    );
    assert_eq!(zero.code, 2, "a zero timeout is refused: {}", zero.stderr);
    drop(held);
}
