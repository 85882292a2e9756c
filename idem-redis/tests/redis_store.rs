//! What is particular to the Redis store, against real servers: the round-trip budget, values of
//! the wrong shape, a server that is down or slow, replica acknowledgements, several instances
//! sharing one server, key prefixes.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    AttemptId, Call, ClaimOutcome, ClaimRequest, Error, Idempotency, OnInProgress, Store,
};
use idem_redis::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use idem_redis::redis::{self, Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use idem_redis::RedisStore;
use idem_test_servers::{RedisCluster, RedisServer};

/// Counts round trips: every request a store sends through it.
#[derive(Clone)]
struct Counting {
    inner: ConnectionManager,
    trips: Arc<AtomicU64>,
}

impl ConnectionLike for Counting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.trips.fetch_add(1, Ordering::SeqCst);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.trips.fetch_add(1, Ordering::SeqCst);
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// `calls` of one command in `INFO commandstats`.
/// An error and its causes, as a log line would show them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn reset_stats(server: &RedisServer, trips: &AtomicU64) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.connection())
        .unwrap();
    trips.store(0, Ordering::SeqCst);
}

async fn counting_store(server: &RedisServer) -> (RedisStore<Counting>, Arc<AtomicU64>) {
    let client = redis::Client::open(server.url()).unwrap();
    let inner = ConnectionManager::new(client.clone()).await.unwrap();
    let trips = Arc::new(AtomicU64::new(0));
    let store = RedisStore::from_connection(Counting {
        inner,
        trips: trips.clone(),
    })
    .with_pubsub(client);
    (store, trips)
}

async fn body(runs: &AtomicU32, work: Duration) -> Result<u32, Error> {
    tokio::time::sleep(work).await;
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_budget() {
    let server = RedisServer::start();
    let (store, trips) = counting_store(&server).await;
    let idem = Idempotency::new(store).with_lease(Duration::from_millis(900));
    let runs = AtomicU32::new(0);
    // Warm-up on another key: loads the claim, renew and complete scripts (each first use is
    // EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    idem.run(
        Call::new("budget", "warm-up"),
        body(&runs, Duration::from_millis(400)),
    )
    .await
    .unwrap();

    reset_stats(&server, &trips);
    idem.run(Call::new("budget", "first"), body(&runs, Duration::ZERO))
        .await
        .unwrap();
    let first = (
        trips.load(Ordering::SeqCst),
        calls(&server, "evalsha"),
        calls(&server, "set"),
    );
    println!(
        "first execution: {} round trips, {} EVALSHA, {} SET",
        first.0, first.1, first.2
    );
    assert_eq!(
        first,
        (2, 1, 2),
        "a first execution is a plain claim (SET NX GET + TIME) and the record script (whose \
         SET commandstats counts too)"
    );
    assert_eq!(calls(&server, "time"), 1);
    assert_eq!(calls(&server, "script"), 0, "no script reload once loaded");

    reset_stats(&server, &trips);
    idem.run(Call::new("budget", "first"), body(&runs, Duration::ZERO))
        .await
        .unwrap();
    let replay = (
        trips.load(Ordering::SeqCst),
        calls(&server, "evalsha"),
        calls(&server, "set"),
    );
    println!(
        "replay: {} round trips, {} EVALSHA, {} SET",
        replay.0, replay.1, replay.2
    );
    assert_eq!(
        replay,
        (1, 0, 1),
        "a replay is one plain claim that returns the record, no script"
    );

    let key = idem.store_key("budget", "held").unwrap();
    let holder = idem
        .store()
        .claim(ClaimRequest::new(
            &key,
            AttemptId::random(),
            b"",
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert!(matches!(holder, ClaimOutcome::Acquired { .. }));
    // The first in-progress answer also loads the claim script: count the second.
    for _ in 0..2 {
        reset_stats(&server, &trips);
        let answer = idem
            .run(
                Call::new("budget", "held").on_in_progress(OnInProgress::Reject),
                body(&runs, Duration::ZERO),
            )
            .await;
        assert!(
            matches!(answer, Err(Error::InProgress { .. })),
            "{answer:?}"
        );
    }
    let in_progress = trips.load(Ordering::SeqCst);
    println!("in-progress answer: {in_progress} round trips");
    assert_eq!(
        in_progress, 2,
        "the plain claim finds the claim, the script reports its lease"
    );

    // Renewals only for bodies longer than a third of the lease (300ms here).
    reset_stats(&server, &trips);
    idem.run(
        Call::new("budget", "short-body"),
        body(&runs, Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert_eq!(
        trips.load(Ordering::SeqCst),
        2,
        "a body shorter than lease/3 is not renewed"
    );
    reset_stats(&server, &trips);
    idem.run(
        Call::new("budget", "long-body"),
        body(&runs, Duration::from_millis(1000)),
    )
    .await
    .unwrap();
    let long = trips.load(Ordering::SeqCst);
    println!("1000ms body with a 900ms lease: {long} round trips");
    assert!(
        (4..=6).contains(&long),
        "claim, record and a renewal about every 300ms: {long}"
    );
}

/// Writes `value` at the state key of `key` in namespace `ns`.
fn state_key(idem: &Idempotency, ns: &str, key: &str) -> String {
    format!("{{{}}}", idem.store_key(ns, key).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_types_are_corrupt_and_left_untouched() {
    let server = RedisServer::start();
    let idem = Idempotency::new(RedisStore::connect(&server.url()).await.unwrap());
    let mut conn = server.connection();
    let runs = AtomicU32::new(0);

    let garbage = state_key(&idem, "g", "string");
    let _: () = redis::cmd("SET")
        .arg(&garbage)
        .arg("hello")
        .query(&mut conn)
        .unwrap();
    let list = state_key(&idem, "g", "list");
    let _: () = redis::cmd("LPUSH")
        .arg(&list)
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let bad_record = state_key(&idem, "g", "record");
    let _: () = redis::cmd("SET")
        .arg(&bad_record)
        .arg("R:5:not a record")
        .query(&mut conn)
        .unwrap();
    let bad_fence = state_key(&idem, "g", "fence");
    let _: () = redis::cmd("SET")
        .arg(format!("{bad_fence}:fence"))
        .arg("abc")
        .query(&mut conn)
        .unwrap();
    let hash_fence = state_key(&idem, "g", "hash-fence");
    let _: () = redis::cmd("HSET")
        .arg(format!("{hash_fence}:fence"))
        .arg("f")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    // Only the claim script reads the fence key: a released claim sends the claim there.
    for released in [&bad_fence, &hash_fence] {
        let _: () = redis::cmd("SET")
            .arg(released)
            .arg("F:1")
            .arg("PX")
            .arg(60_000)
            .query(&mut conn)
            .unwrap();
    }

    for key in ["string", "list", "record", "fence", "hash-fence"] {
        let result = idem
            .run(Call::new("g", key), body(&runs, Duration::ZERO))
            .await;
        match result {
            Err(Error::Corrupt { reason, .. }) => println!("{key}: corrupt: {reason}"),
            other => panic!("{key}: expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the body never runs over a corrupt key"
    );
    // Nothing was written over them.
    let value: String = redis::cmd("GET").arg(&garbage).query(&mut conn).unwrap();
    assert_eq!(value, "hello");
    for released in [&bad_fence, &hash_fence] {
        let value: String = redis::cmd("GET").arg(released).query(&mut conn).unwrap();
        assert_eq!(value, "F:1", "no claim was written next to a corrupt fence");
    }
    // The fenced writes refuse garbage too, without panicking.
    let store = idem.store();
    let key = idem.store_key("g", "string").unwrap();
    for result in [
        store
            .complete(&key, idem_core::Fence(1), b"x", Duration::from_secs(1))
            .await,
        store.release(&key, idem_core::Fence(1)).await,
        store
            .renew(&key, idem_core::Fence(1), Duration::from_secs(1))
            .await,
    ] {
        assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
    }
}

/// Connection errors end up in logs: they name the server, never the password in its URL,
/// whether the URL parses or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_do_not_show_the_password() {
    let port = idem_test_servers::free_port();
    let refused = format!("redis://idem:hunter2@127.0.0.1:{port}");
    let err = RedisStore::connect(&refused).await.unwrap_err();
    let shown = format!("{} {err:?}", chain(&err));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    for url in [
        refused.clone(),
        // A `/` in the password (as in base64 keys) and a query the parser refuses.
        format!("redis://idem:hunt/er2@127.0.0.1:{port}"),
        "redis+unix:///tmp/idem.sock?pass=hunter2&db=x".to_owned(),
    ] {
        let err = RedisStore::connect(&url).await.unwrap_err();
        let shown = format!("{} {err:?}", chain(&err));
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunt/er2"),
            "{shown}"
        );
        let err = RedisStore::connect_cluster(&[&url]).await.unwrap_err();
        let shown = format!("{} {err:?}", chain(&err));
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunt/er2"),
            "{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_fails_closed_with_a_clear_error() {
    // Nothing listens on a fresh free port.
    let url = format!("redis://127.0.0.1:{}", idem_test_servers::free_port());
    let err = RedisStore::connect(&url).await.unwrap_err();
    assert!(chain(&err).contains("cannot connect to Redis at"), "{err}");

    let mut server = RedisServer::start();
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    let store = RedisStore::connect_with_config(&server.url(), config)
        .await
        .unwrap();
    let idem = Idempotency::new(store);
    let runs = AtomicU32::new(0);
    idem.run(Call::new("down", "before"), body(&runs, Duration::ZERO))
        .await
        .unwrap();
    server.kill();
    let err = idem
        .run(Call::new("down", "after"), body(&runs, Duration::ZERO))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(
        matches!(
            err,
            Error::Store {
                operation: "claim",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.body_may_have_run());
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the body did not run without a claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_after_sending_is_indeterminate_and_the_retry_finds_its_own_claim() {
    let server = RedisServer::start_with(&["--save", "", "--enable-debug-command", "yes"]);
    let config =
        ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_millis(500)));
    let store = RedisStore::connect_with_config(&server.url(), config)
        .await
        .unwrap();
    // Warm the scripts so the timed-out command is the claim itself.
    let warm = ClaimRequest::new("warm", AttemptId::random(), b"", Duration::from_secs(5));
    store.claim(warm).await.unwrap();

    let url = server.url();
    let sleeper = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1.5")
            .query(&mut conn)
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(200)); // the server is now asleep
    let attempt = AttemptId::random();
    let request = ClaimRequest::new("slow", attempt, b"", Duration::from_secs(30));
    let err = store.claim(request).await.unwrap_err();
    println!("{err}");
    assert!(
        err.is_indeterminate(),
        "a timeout after sending is indeterminate: {err}"
    );
    sleeper.join().unwrap();

    // The claim did apply once the server woke: the same attempt finds it, others see it held.
    let mut retried = None;
    for _ in 0..20 {
        match store.claim(request).await {
            Ok(outcome) => {
                retried = Some(outcome);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        matches!(retried, Some(ClaimOutcome::Acquired { .. })),
        "the retried claim is re-entrant: {retried:?}"
    );
    let other = store
        .claim(ClaimRequest::new(
            "slow",
            AttemptId::random(),
            b"",
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert!(
        matches!(other, ClaimOutcome::InProgress { .. }),
        "{other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgements_fail_closed_without_replicas() {
    let primary = RedisServer::start_with(&["--save", "", "--repl-diskless-sync-delay", "0"]);
    // Generous timeouts: on a loaded machine a replica can take a while to acknowledge. The
    // WAIT timeout stays below the client's response timeout.
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let store = RedisStore::connect_with_config(&primary.url(), config)
        .await
        .unwrap()
        .with_replica_acks(1, Duration::from_secs(2));
    let idem = Idempotency::new(store).with_store_attempts(1);
    let runs = AtomicU32::new(0);
    let err = idem
        .run(Call::new("acks", "no-replica"), body(&runs, Duration::ZERO))
        .await
        .unwrap_err();
    println!("{}", chain(&err));
    assert!(chain(&err).contains("0 of 1 replicas"), "{err}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "no body runs on an unreplicated claim"
    );

    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--save", "", "--replicaof", "127.0.0.1", &port]);
    replica.wait_for_primary_link();
    let value = idem
        .run(Call::new("acks", "replicated"), body(&runs, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(value, 1);
    // The record is on the replica already when the call returns.
    let key = state_key(&idem, "acks", "replicated");
    let on_replica: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query(&mut replica.connection())
        .unwrap();
    assert!(on_replica.is_some_and(|v| v.starts_with(b"R:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_sharing_one_server_run_the_body_once() {
    let (url, _server) = idem_test_servers::any_server();
    let runs = Arc::new(AtomicU32::new(0));
    let key = format!("shared-{}", AttemptId::random().0);
    let mut tasks = Vec::new();
    for instance in 0..8 {
        // Each "instance" has its own connections, as separate processes would.
        let idem = Idempotency::new(RedisStore::connect(&url).await.unwrap());
        for _ in 0..8 {
            let (idem, runs, key) = (idem.clone(), runs.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                idem.run(Call::new("shared", &key), async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, Error>((instance, runs.fetch_add(1, Ordering::SeqCst) + 1))
                })
                .await
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_record_not_by_their_timeout() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let request = ClaimRequest::new("woken", AttemptId::random(), b"", Duration::from_secs(30));
    let Ok(ClaimOutcome::Acquired { fence, .. }) = store.claim(request).await else {
        panic!("the first claim is granted");
    };
    let start = tokio::time::Instant::now();
    let waiter = store.wait("woken", fence, Duration::from_secs(20));
    let completer = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        store
            .complete("woken", fence, b"done", Duration::from_secs(60))
            .await
    };
    let (waited, completed) = tokio::join!(waiter, completer);
    waited.unwrap();
    completed.unwrap();
    let elapsed = start.elapsed();
    println!("waiter woke after {elapsed:?}");
    // Not before the change (a poll would return after 50ms), not at the 20s timeout.
    assert!(
        elapsed >= Duration::from_millis(900),
        "woke before the record: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "woke only at its timeout: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_poll_when_no_pubsub_is_configured() {
    let server = RedisServer::start();
    let connection = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let idem = Idempotency::new(RedisStore::from_connection(connection));
    let runs = Arc::new(AtomicU32::new(0));
    let first = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            idem.run(
                Call::new("poll", "k"),
                body(&runs, Duration::from_millis(300)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waited = idem
        .run(Call::new("poll", "k"), body(&runs, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(waited, first.await.unwrap().unwrap());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_are_applied_and_checked() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let err = store.with_key_prefix("bad{tag}").unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_key_prefix("app1:")
        .unwrap();
    let idem = Idempotency::new(store);
    let runs = AtomicU32::new(0);
    idem.run(Call::new("prefixed", "k"), body(&runs, Duration::ZERO))
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(keys, ["app1:{idem:prefixed:k}"]);
    // A released claim sends the next claim through the script, which writes the fence key.
    let failed: Result<u32, Error> = idem
        .run(Call::new("prefixed", "released"), async {
            Err(Error::invalid_key("a failing body"))
        })
        .await;
    assert!(failed.is_err());
    idem.run(
        Call::new("prefixed", "released"),
        body(&runs, Duration::ZERO),
    )
    .await
    .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.connection())
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "app1:{idem:prefixed:k}",
            "app1:{idem:prefixed:released}",
            "app1:{idem:prefixed:released}:fence"
        ]
    );
}

/// Server time in µs.
fn server_micros(server: &RedisServer) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut server.connection()).unwrap();
    seconds * 1_000_000 + micros
}

/// What a fast claim leaves behind when its reply is lost: a pending claim of `attempt` under an
/// unconfirmed fence.
fn plant_pending_claim(server: &RedisServer, key: &str, fence: u64, attempt: AttemptId) {
    let _: () = redis::cmd("SET")
        .arg(format!("{{{key}}}"))
        .arg(format!("P:{fence}:{:032x}:", attempt.0))
        .arg("PX")
        .arg(30_000)
        .query(&mut server.connection())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposed_fence_far_from_the_server_clock_is_replaced() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let attempt = AttemptId::random();
    // From a client whose clock is an hour ahead.
    let ahead = server_micros(&server) + 3_600_000_000;
    plant_pending_claim(&server, "k", ahead, attempt);
    let outcome = store
        .claim(ClaimRequest::new("k", attempt, b"", lease))
        .await
        .unwrap();
    let ClaimOutcome::Acquired { fence, .. } = outcome else {
        panic!("the same attempt must get its claim back, got {outcome:?}");
    };
    let now = server_micros(&server);
    println!("proposed {ahead}, replaced by {fence}, server time {now}");
    assert!(
        fence.0 < ahead && fence.0.abs_diff(now) < 5_000_000,
        "the fence must come from the server's clock: {fence}"
    );
    // Completing needs the replacement fence.
    store
        .complete("k", fence, b"record", Duration::from_secs(60))
        .await
        .unwrap();
    let stale = store
        .complete(
            "k",
            idem_core::Fence(ahead),
            b"other",
            Duration::from_secs(60),
        )
        .await;
    assert!(matches!(stale, Err(Error::LeaseLost { .. })), "{stale:?}");
    let value: Vec<u8> = redis::cmd("GET")
        .arg("{k}")
        .query(&mut server.connection())
        .unwrap();
    assert!(value.ends_with(b":record"), "{value:?}");

    // A proposal close to the server clock is kept: the same claim back.
    let attempt = AttemptId::random();
    let close = server_micros(&server);
    plant_pending_claim(&server, "near", close, attempt);
    let again = store
        .claim(ClaimRequest::new("near", attempt, b"", lease))
        .await
        .unwrap();
    assert!(
        matches!(again, ClaimOutcome::Acquired { fence, .. } if fence.0 == close),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_leaves_its_fence_until_the_lease_would_end() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let lease = Duration::from_secs(20);
    let ClaimOutcome::Acquired { fence, .. } = store
        .claim(ClaimRequest::new("k", AttemptId::random(), b"", lease))
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    store.release("k", fence).await.unwrap();
    let mut conn = server.connection();
    let value: String = redis::cmd("GET").arg("{k}").query(&mut conn).unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg("{k}").query(&mut conn).unwrap();
    assert_eq!(value, format!("F:{fence}"));
    assert!(ttl > 15_000 && ttl <= 20_000, "{ttl}");
    // Releasing again is fine; completing a released claim is not.
    store.release("k", fence).await.unwrap();
    let late = store
        .complete("k", fence, b"late", Duration::from_secs(60))
        .await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    let ClaimOutcome::Acquired { fence: next, .. } = store
        .claim(ClaimRequest::new("k", AttemptId::random(), b"", lease))
        .await
        .unwrap()
    else {
        panic!("a released key is acquired");
    };
    assert!(next > fence, "{fence} then {next}");
}

/// Rewrites the fast claim so that the server refuses it as Redis 6 does (`SET` with both `NX`
/// and `GET` is a syntax error before 7.0), and counts how often that happened.
#[derive(Clone)]
struct BeforeRedis7 {
    inner: ConnectionManager,
    refused: Arc<AtomicU64>,
}

impl ConnectionLike for BeforeRedis7 {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let fast_claim = pipeline.cmd_iter().next().is_some_and(|cmd| {
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            args.first().is_some_and(|a| a == b"SET") && args.iter().any(|a| a == b"NX")
        });
        if !fast_claim {
            return self.inner.req_packed_commands(pipeline, offset, count);
        }
        self.refused.fetch_add(1, Ordering::SeqCst);
        let mut refused = redis::pipe();
        refused
            .cmd("SET")
            .arg("{never-written}")
            .arg("x")
            .arg("NOT-AN-OPTION")
            .cmd("TIME");
        let mut inner = self.inner.clone();
        Box::pin(async move { inner.req_packed_commands(&refused, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_without_set_nx_get_fall_back_to_the_claim_script() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let store = RedisStore::from_connection(BeforeRedis7 {
        inner: ConnectionManager::new(client).await.unwrap(),
        refused: refused.clone(),
    });
    let idem = Idempotency::new(store);
    let runs = AtomicU32::new(0);
    for _ in 0..3 {
        let value = idem
            .run(Call::new("old", "k"), body(&runs, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(value, 1, "every call gets the first call's result");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "after the first refusal, claims go straight to the script"
    );
    let written: i64 = redis::cmd("EXISTS")
        .arg("{never-written}")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_read_the_server_clock_about_once_a_second_and_fences_follow_it() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let mut fences = Vec::new();
    for i in 0..50 {
        let ClaimOutcome::Acquired { fence, .. } = store
            .claim(ClaimRequest::new(
                &format!("k{i}"),
                AttemptId::random(),
                b"",
                lease,
            ))
            .await
            .unwrap()
        else {
            panic!("a fresh key is acquired");
        };
        let now = server_micros(&server);
        assert!(
            now.abs_diff(fence.0) < 1_000_000,
            "fence {fence} is not the server's time {now}"
        );
        fences.push(fence);
    }
    assert!(fences.windows(2).all(|pair| pair[0] < pair[1]));
    // The test read TIME once per claim too.
    let time_reads = calls(&server, "time") - 50;
    println!("50 claims read TIME {time_reads} times");
    assert!(
        (1..=3).contains(&time_reads),
        "the clock reading is reused between claims: {time_reads}"
    );
    assert_eq!(calls(&server, "evalsha"), 0, "no claim needed the script");
}

/// A store's view of time gone wrong: every fast claim's proposed fence, and every `TIME` reply,
/// is moved `shift_micros` back (a client whose wall clock is behind the server's: it proposes
/// fences from its clock and measures their error against `TIME`), and every request is held
/// `delay` before it is sent (a slow round trip). The store returns the fence it proposed, not
/// the shifted one it wrote: tests read the written fence from the server.
#[derive(Clone)]
struct SkewedClient {
    inner: ConnectionManager,
    shift_micros: u64,
    delay: Duration,
    /// Every script call fails with a definite error reply instead (as `BUSY`, `READONLY` or
    /// `OOM` would).
    fail_scripts: bool,
}

impl SkewedClient {
    /// A command that the server refuses, in place of a script call.
    fn refused_script(&self, cmd: &Cmd) -> Option<Cmd> {
        let first = cmd.args_iter().next()?;
        let is_script =
            matches!(first, redis::Arg::Simple(name) if name == b"EVALSHA" || name == b"EVAL");
        (self.fail_scripts && is_script).then(|| {
            let mut refused = redis::cmd("SET");
            refused.arg("{never-written}").arg("x").arg("NOT-AN-OPTION");
            refused
        })
    }

    /// The pending value of a fast claim with its fence moved back.
    fn shifted(&self, cmd: &Cmd) -> Option<Cmd> {
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        if args.first()? != b"SET" || !args.iter().any(|a| a == b"NX") {
            return None;
        }
        let value = String::from_utf8(args.get(2)?.clone()).ok()?;
        let (fence, rest) = value.strip_prefix("P:")?.split_once(':')?;
        let fence: u64 = fence.parse().ok()?;
        let mut shifted = redis::cmd("SET");
        shifted
            .arg(&args[1])
            .arg(format!("P:{}:{rest}", fence - self.shift_micros));
        for arg in &args[3..] {
            shifted.arg(arg);
        }
        Some(shifted)
    }
}

impl ConnectionLike for SkewedClient {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let cmd = self
            .shifted(cmd)
            .or_else(|| self.refused_script(cmd))
            .unwrap_or_else(|| cmd.clone());
        let (mut inner, delay) = (self.inner.clone(), self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.req_packed_command(&cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut rebuilt = redis::pipe();
        for cmd in pipeline.cmd_iter() {
            rebuilt.add_command(self.shifted(cmd).unwrap_or_else(|| cmd.clone()));
        }
        let (mut inner, delay, shift) = (self.inner.clone(), self.delay, self.shift_micros);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let mut replies = inner.req_packed_commands(&rebuilt, offset, count).await?;
            for reply in &mut replies {
                if let Ok((seconds, micros)) = <(u64, u64)>::from_redis_value(reply.clone()) {
                    let shifted = seconds * 1_000_000 + micros - shift;
                    *reply = Value::Array(vec![
                        Value::BulkString((shifted / 1_000_000).to_string().into_bytes()),
                        Value::BulkString((shifted % 1_000_000).to_string().into_bytes()),
                    ]);
                }
            }
            Ok(replies)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

async fn skewed_store(
    server: &RedisServer,
    shift: Duration,
    delay: Duration,
) -> RedisStore<SkewedClient> {
    let client = redis::Client::open(server.url()).unwrap();
    RedisStore::from_connection(SkewedClient {
        inner: ConnectionManager::new(client).await.unwrap(),
        shift_micros: u64::try_from(shift.as_micros()).unwrap(),
        delay,
        fail_scripts: false,
    })
}

/// Suspicion confirmed: a fast claim whose `SET` applied, followed by a claim script that failed
/// with a definite error (`BUSY`, `READONLY`, `OOM`), was reported as definite although this
/// attempt's claim was held. It is indeterminate now; the runtime's retry finds the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_after_a_written_fast_claim_is_indeterminate() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    // Slow enough that the fast claim's fence goes to the script, which fails.
    let store = RedisStore::from_connection(SkewedClient {
        inner: ConnectionManager::new(client).await.unwrap(),
        shift_micros: 0,
        delay: Duration::from_millis(150),
        fail_scripts: true,
    });
    let outcome = store.claim(fresh_claim("k")).await;
    match &outcome {
        Err(err @ Error::Store { .. }) => assert!(err.is_indeterminate(), "{}", chain(err)),
        other => panic!("expected a store error, got {other:?}"),
    }
    let held: String = redis::cmd("GET")
        .arg("{k}")
        .query(&mut server.connection())
        .unwrap();
    assert!(held.starts_with("P:"), "a claim is held: {held}");
    // Where nothing was written, the script's error stays definite.
    let _: () = redis::cmd("SET")
        .arg("{released}")
        .arg("F:12")
        .query(&mut server.connection())
        .unwrap();
    let outcome = store.claim(fresh_claim("released")).await;
    match &outcome {
        Err(err @ Error::Store { .. }) => assert!(!err.is_indeterminate(), "{}", chain(err)),
        other => panic!("expected a store error, got {other:?}"),
    }
}

/// A claim of `key` by a new attempt, with a 5s lease.
fn fresh_claim(key: &str) -> ClaimRequest<'_> {
    ClaimRequest::new(key, AttemptId::random(), b"", Duration::from_secs(5))
}

/// The fence of the pending claim at `key`, as the server holds it.
fn written_fence(server: &RedisServer, key: &str) -> u64 {
    let value: String = redis::cmd("GET")
        .arg(format!("{{{key}}}"))
        .query(&mut server.connection())
        .unwrap();
    let fence = value.strip_prefix("P:").unwrap().split(':').next().unwrap();
    fence.parse().unwrap()
}

async fn acquire(store: &dyn Store, key: &str, lease: Duration) -> idem_core::Fence {
    match store
        .claim(ClaimRequest::new(key, AttemptId::random(), b"", lease))
        .await
        .unwrap()
    {
        ClaimOutcome::Acquired { fence, .. } => fence,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// Regression: the accepted clock error was a quarter of the *new* claim's lease, but keeping
/// fences increasing needs it bounded by the *previous* claim's. A 2s claim, then 2.1s later a
/// 60s takeover from a store whose clock is 5s behind, got a lower fence (error 5s < 15s). The
/// same after a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_across_stores_with_different_clocks_and_leases() {
    let server = RedisServer::start();
    let accurate = RedisStore::connect(&server.url()).await.unwrap();
    let behind = skewed_store(&server, Duration::from_secs(5), Duration::ZERO).await;
    let short = Duration::from_secs(2);
    let long = Duration::from_secs(60);

    let first = acquire(&accurate, "lapsed", short).await;
    let released = acquire(&accurate, "released", short).await;
    accurate.release("released", released).await.unwrap();
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    acquire(&behind, "lapsed", long).await;
    acquire(&behind, "released", long).await;
    let (after_lapse, after_release) = (
        written_fence(&server, "lapsed"),
        written_fence(&server, "released"),
    );
    println!("lapsed: {first} then {after_lapse}; released: {released} then {after_release}");
    assert!(after_lapse > first.0, "{after_lapse} after {first}");
    assert!(
        after_release > released.0,
        "{after_release} after {released}"
    );
}

/// A fast claim whose round trip is too slow to bound its fence's error is given a fence by
/// the server instead: the fence is never further from the server's clock than the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fast_claim_does_not_keep_its_proposed_fence() {
    let server = RedisServer::start();
    // Each request held 150ms: within a quarter of a 1s lease, beyond the store's 100ms bound.
    let slow = skewed_store(&server, Duration::ZERO, Duration::from_millis(150)).await;
    for i in 0..3 {
        let key = format!("slow{i}");
        let before = server_micros(&server);
        let fence = acquire(&slow, &key, Duration::from_secs(1)).await;
        let after = server_micros(&server);
        println!("fence {fence}, server time {before}..{after}");
        // Written no earlier than the 150ms hold: a fence proposed when the claim was sent is
        // ~150ms stale by then.
        assert!(
            fence.0 >= before + 140_000 && fence.0 <= after,
            "the fence {fence} must be the server's time when written, in {}..{after}",
            before + 140_000
        );
        assert_eq!(written_fence(&server, &key), fence.0);
    }
}

/// Regression: the scripts read fences with `tonumber`, which takes `1e30`, `-5` and `0x1f`:
/// a fence key holding `1e30` made a claim rewrite both keys and report an indeterminate error.
/// Both sides now accept only digits up to the same bound, and refuse the rest as corrupt
/// before any write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_the_rust_side_calls_corrupt_are_corrupt_to_the_scripts_too() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut conn = server.connection();
    let set = |conn: &mut redis::Connection, key: &str, value: &str| {
        let _: () = redis::cmd("SET").arg(key).arg(value).query(conn).unwrap();
    };
    let get = |conn: &mut redis::Connection, key: &str| -> Option<String> {
        redis::cmd("GET").arg(key).query(conn).unwrap()
    };
    for (i, bad) in [
        "1e30",
        "-5",
        "0x1f",
        "99999999999999999999",
        " 7",
        "7.0",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        // A released claim sends the next claim to the script, which reads the fence key.
        let key = format!("bad-fence-{i}");
        let (state, fence_key) = (format!("{{{key}}}"), format!("{{{key}}}:fence"));
        set(&mut conn, &state, "F:12");
        set(&mut conn, &fence_key, bad);
        let outcome = store.claim(fresh_claim(&key)).await;
        assert!(
            matches!(outcome, Err(Error::Corrupt { .. })),
            "fence key {bad:?}: {outcome:?}"
        );
        assert_eq!(get(&mut conn, &state).as_deref(), Some("F:12"), "{bad:?}");
        assert_eq!(get(&mut conn, &fence_key).as_deref(), Some(bad), "{bad:?}");

        // The same digits in a state value.
        let key = format!("bad-state-{i}");
        let state = format!("{{{key}}}");
        let value = format!("R:{bad}:idem-record");
        set(&mut conn, &state, &value);
        let outcome = store.claim(fresh_claim(&key)).await;
        assert!(
            matches!(outcome, Err(Error::Corrupt { .. })),
            "state {value:?}: {outcome:?}"
        );
        let completed = store
            .complete(&key, idem_core::Fence(7), b"r", Duration::from_secs(5))
            .await;
        assert!(
            matches!(completed, Err(Error::Corrupt { .. })),
            "complete over {value:?}: {completed:?}"
        );
        assert_eq!(get(&mut conn, &state), Some(value));
    }
}

/// The slot ranges a cluster node serves, from its own `CLUSTER NODES` line.
fn own_slots(node: &RedisServer) -> Vec<(u16, u16)> {
    let nodes = node.cli(&["cluster", "nodes"]);
    let line = nodes.lines().find(|l| l.contains("myself")).unwrap();
    line.split_whitespace()
        .skip(8)
        .filter_map(|range| {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            Some((low.parse().ok()?, high.parse().ok()?))
        })
        .collect()
}

/// A key of namespace `ns` whose state key lives on `node` (or, with `on = false`, elsewhere).
fn key_on(idem: &Idempotency, node: &RedisServer, ns: &str, on: bool) -> String {
    let slots = own_slots(node);
    (0..)
        .map(|i| format!("k{i}"))
        .find(|key| {
            let state = state_key(idem, ns, key);
            let slot: u16 = node
                .cli(&["cluster", "keyslot", &state])
                .trim()
                .parse()
                .unwrap();
            slots
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&slot))
                == on
        })
        .unwrap()
}

/// Suspicion confirmed: `WAIT` was routed to every primary and the least count taken, so on a
/// cluster where one shard had no replica, every claim failed, on every shard. `WAIT` now goes to
/// the primary that holds the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgements_on_a_cluster_ask_the_keys_own_shard() {
    let cluster = RedisCluster::start();
    // A replica for the first master only.
    let master = &cluster.nodes[0];
    let replica = RedisCluster::node();
    replica.cli(&["cluster", "meet", "127.0.0.1", &master.port.to_string()]);
    let master_id = master.cli(&["cluster", "myid"]).trim().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let known = replica.cli(&["cluster", "nodes"]).contains(&master_id);
        if known
            && replica
                .cli(&["cluster", "replicate", &master_id])
                .contains("OK")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not join"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    replica.wait_for_primary_link();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&urls)
        .await
        .unwrap()
        .with_replica_acks(1, Duration::from_millis(300));
    let idem = Idempotency::new(store).with_store_attempts(1);
    let runs = AtomicU32::new(0);

    let replicated = key_on(&idem, master, "acks", true);
    let value = idem
        .run(Call::new("acks", &replicated), body(&runs, Duration::ZERO))
        .await;
    assert_eq!(value.unwrap(), 1, "the key's shard has its replica");

    let unreplicated = key_on(&idem, master, "acks", false);
    let err = idem
        .run(
            Call::new("acks", &unreplicated),
            body(&runs, Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(chain(&err).contains("0 of 1 replicas"), "{}", chain(&err));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Suspicion confirmed: renewals were not covered by `WAIT`, so a failover to a replica that
/// missed a renewal expired a live claim early. Every renewal is acknowledged like the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_wait_for_replica_acknowledgements_too() {
    let server = RedisServer::start();
    let (store, trips) = counting_store(&server).await;
    // Zero replicas: every WAIT succeeds at once, and commandstats count them.
    let idem = Idempotency::new(store.with_replica_acks(0, Duration::from_millis(100)))
        .with_lease(Duration::from_millis(900));
    let runs = AtomicU32::new(0);
    // Loads the scripts, so that the counted calls are the call's own.
    idem.run(
        Call::new("renewed", "warm"),
        body(&runs, Duration::from_millis(400)),
    )
    .await
    .unwrap();
    reset_stats(&server, &trips);
    idem.run(
        Call::new("renewed", "k"),
        body(&runs, Duration::from_millis(1300)),
    )
    .await
    .unwrap();
    // Every script call but the record is a renewal (a fast claim runs none).
    let (renewals, waits) = (calls(&server, "evalsha") - 1, calls(&server, "wait"));
    println!("{renewals} renewals, {waits} WAITs");
    assert!(
        renewals >= 4,
        "the body outlived several thirds of the lease"
    );
    assert_eq!(
        waits,
        1 + renewals + 1,
        "the claim, each renewal and the record"
    );
}

/// Suspicion confirmed (every idem key has a TTL, so `volatile-*` policies evict them): a server
/// that may evict is refused at connect, with what to do, over RESP2 and RESP3 and when
/// `CONFIG` is blocked (as managed services do); `noeviction`, no memory limit, or a server that
/// will not tell are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_may_evict_idems_keys_are_refused_at_connect() {
    let blocked = RedisServer::start_with(&[
        "--save",
        "",
        "--maxmemory",
        "100mb",
        "--maxmemory-policy",
        "volatile-lru",
        "--rename-command",
        "CONFIG",
        "",
    ]);
    for url in [blocked.url(), format!("{}?protocol=resp3", blocked.url())] {
        let err = RedisStore::connect(&url).await.unwrap_err();
        assert!(
            chain(&err).contains("volatile-lru"),
            "{url}: {}",
            chain(&err)
        );
    }
    for policy in ["volatile-lru", "allkeys-lru", "volatile-ttl"] {
        let server = RedisServer::start_with(&[
            "--save",
            "",
            "--maxmemory",
            "100mb",
            "--maxmemory-policy",
            policy,
        ]);
        let err = RedisStore::connect(&server.url()).await.unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains(policy) && text.contains("noeviction"),
            "{policy}: {text}"
        );
    }
    for args in [
        &[
            "--save",
            "",
            "--maxmemory",
            "100mb",
            "--maxmemory-policy",
            "noeviction",
        ][..],
        &["--save", "", "--maxmemory-policy", "allkeys-lru"][..],
        // Would be refused, but the server will not tell.
        &[
            "--save",
            "",
            "--maxmemory",
            "100mb",
            "--maxmemory-policy",
            "volatile-lru",
            "--rename-command",
            "INFO",
            "",
        ][..],
    ] {
        let server = RedisServer::start_with(args);
        RedisStore::connect(&server.url())
            .await
            .unwrap_or_else(|err| panic!("{args:?}: {}", chain(&err)));
    }
}

/// Regression (review): the eviction check asked one random node of a cluster, so a cluster with
/// one evicting node was accepted most of the time. Every primary is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_one_evicting_node_is_refused() {
    let cluster = RedisCluster::start();
    cluster.nodes[2].cli(&["config", "set", "maxmemory", "100mb"]);
    cluster.nodes[2].cli(&["config", "set", "maxmemory-policy", "volatile-lru"]);
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    for _ in 0..4 {
        let err = RedisStore::connect_cluster(&nodes).await.unwrap_err();
        assert!(chain(&err).contains("volatile-lru"), "{}", chain(&err));
    }
}

/// Connections the server accepted so far.
fn connections(server: &RedisServer) -> u64 {
    let info = server.cli(&["info", "stats"]);
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Regression (review): a waiter whose budget was shorter than a subscribe round trip timed out
/// subscribing and retired the shared subscriber, waking every other waiter and making the
/// next ones poll and reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_waits_leave_the_shared_subscriber_alone() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let long_key = acquire(&store, "long", lease).await;
    let short_key = acquire(&store, "short", lease).await;
    // The subscriber is connected.
    store
        .wait("short", short_key, Duration::from_millis(50))
        .await
        .unwrap();
    let before = connections(&server);
    let started = std::time::Instant::now();
    let long = store.wait("long", long_key, Duration::from_secs(5));
    let short = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for budget in [0, 1, 5, 19, 25] {
            store
                .wait("short", short_key, Duration::from_millis(budget))
                .await
                .unwrap();
        }
    };
    let (long, ()) = tokio::join!(long, short);
    long.unwrap();
    let waited = started.elapsed();
    println!("the long waiter returned after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "woken early by a retired subscriber: {waited:?}"
    );
    // redis-cli's own connection for this count is the only new one.
    assert_eq!(connections(&server), before + 1, "no new connection");
}

/// Regression (third review): a connect task dropped with its runtime (a store shared between
/// runtimes outlives them) left the subscriber "connecting" for good, so waiters polled forever
/// and never tried to subscribe again.
#[test]
fn a_connect_cancelled_with_its_runtime_does_not_stop_reconnecting() {
    // A subscriber address that accepts connections and never answers: every connect hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in silent.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
    }
    let server = RedisServer::start();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    // The store's own connections live on a runtime that stays; the subscriber's connect is
    // started from another one, which then goes away mid-connect.
    let lasting = runtime();
    let (store, fence) = lasting.block_on(async {
        let store = RedisStore::connect(&server.url())
            .await
            .unwrap()
            .with_pubsub(redis::Client::open(silent_url.as_str()).unwrap());
        let fence = acquire(&store, "k", Duration::from_secs(30)).await;
        (store, fence)
    });
    let passing = runtime();
    passing
        .block_on(store.wait("k", fence, Duration::from_millis(50)))
        .unwrap();
    drop(passing);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    std::thread::sleep(Duration::from_millis(1200));
    lasting.block_on(async {
        store
            .wait("k", fence, Duration::from_millis(50))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the subscriber is connected again after the back-off"
    );
}

/// Regression (review of the leaner record script): a pending value with this claim's fence but
/// a malformed rest was overwritten with the record instead of being refused as corrupt, and a
/// fence key without an expiry was left without one (`PEXPIRE ... GT` takes none as infinite;
/// the script also needed Redis 7.0, where the store supports older servers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_script_refuses_malformed_claims_and_bounds_fence_keys() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut conn = server.connection();
    let lease = Duration::from_secs(5);
    let claim = |key: &'static str| {
        let store = &store;
        async move {
            match store
                .claim(ClaimRequest::new(key, AttemptId::random(), b"", lease))
                .await
                .unwrap()
            {
                ClaimOutcome::Acquired { fence, .. } => fence,
                other => panic!("{key}: expected a claim, got {other:?}"),
            }
        }
    };

    let fence = claim("idem:t:malformed").await;
    let state = "{idem:t:malformed}";
    let malformed = format!("P:{}:not-hex!", fence.0);
    let _: () = redis::cmd("SET")
        .arg(state)
        .arg(&malformed)
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
    let written = store
        .complete(
            "idem:t:malformed",
            fence,
            b"record",
            Duration::from_secs(60),
        )
        .await;
    assert!(matches!(written, Err(Error::Corrupt { .. })), "{written:?}");
    let value: String = redis::cmd("GET").arg(state).query(&mut conn).unwrap();
    assert_eq!(value, malformed, "a corrupt value is left untouched");

    // A fence key without an expiry (not one idem writes, but one it may meet).
    let fence_key = "{idem:t:fenced}:fence";
    let _: () = redis::cmd("SET")
        .arg(fence_key)
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let fence = claim("idem:t:fenced").await;
    store
        .complete("idem:t:fenced", fence, b"record", Duration::from_secs(60))
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(fence_key).query(&mut conn).unwrap();
    assert!(
        ttl > 0,
        "the fence key keeps no expiry after a record (PTTL {ttl})"
    );
}
