//! Managed Redis: TLS with a certificate authority made at test time, and a user limited to the
//! ACL rule the README documents (read from the README itself, so the documented rule is the
//! tested one). Each test drives every store transition through the runtime and checks that the
//! server denied nothing, not even a command whose denial the store would tolerate.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::{served, Call, Disposition, Error, Idempotency, OnInProgress, Served, MIN_LEASE};
use idem_redis::redis::{self, TlsCertificates};
use idem_redis::RedisStore;
use idem_test_servers::{RedisCluster, RedisServer, TlsRedisServer};

const PASSWORD: &str = "idem-test-password";

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable")
}

/// The README's `ACL SETUSER idem ...` line, as `redis-cli` arguments, with `PASSWORD` filled in.
fn documented_acl_rule() -> Vec<String> {
    let readme = readme();
    let line = readme
        .lines()
        .find(|line| line.starts_with("ACL SETUSER idem "))
        .expect("README.md documents the ACL rule on a line starting with `ACL SETUSER idem `");
    line.split_whitespace()
        .map(|word| word.replace("PASSWORD", PASSWORD))
        .collect()
}

/// What the README says a cluster needs beyond the rule ("on a cluster add `...`").
fn documented_cluster_additions() -> Vec<String> {
    let readme = readme().replace('\n', " ");
    let (_, after) = readme
        .split_once("on a cluster add `")
        .expect("README.md says what a cluster adds to the ACL rule: \"on a cluster add `...`\"");
    let (additions, _) = after.split_once('`').expect("a closing backquote");
    additions.split_whitespace().map(str::to_owned).collect()
}

fn limit_to_rule(server: &RedisServer, extra: &[String]) {
    let mut args = documented_acl_rule();
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(server.cli(&args).trim(), "OK");
    server.cli(&["ACL", "LOG", "RESET"]);
}

/// Every denial the server logged (`ACL LOG`), empty when the user had all it needed.
fn denials(server: &RedisServer) -> String {
    server.cli(&["ACL", "LOG"])
}

/// How many connections subscribe to `channel` on `server` (`PUBSUB NUMSUB`).
fn subscribers(server: &RedisServer, channel: &str) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query::<Vec<(String, i64)>>(&mut server.connection())
        .unwrap()
        .remove(0);
    count
}

fn call(key: &str) -> Call {
    Call::new("access", key)
}

/// Every store transition through the runtime: first execution, replay, a duplicate woken by
/// pub/sub, renewals, a release, an unknown outcome taken over after its lease. `pubsub` is the
/// server the waiters subscribe on.
async fn exercise(idem: &Idempotency, pubsub: &RedisServer) {
    let runs = Arc::new(AtomicU32::new(0));
    let body = |value: u64| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<u64, Error>(value)
        }
    };

    // First execution, then a replay.
    assert_eq!(idem.run(call("first"), body(1)).await.unwrap(), 1);
    let (replayed, how) = served(idem.run(call("first"), body(2))).await;
    assert_eq!((replayed.unwrap(), how), (1, Some(Served::Replayed)));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A duplicate that waits: the first call finishes only once the duplicate has subscribed
    // to the key's channel, so the duplicate is woken by the record's PUBLISH.
    let channel = format!(
        "{{{}}}:changed",
        idem.store_key("access", "waited").unwrap()
    );
    let started = Arc::new(tokio::sync::Notify::new());
    let first = {
        let (idem, started, channel) = (idem.clone(), started.clone(), channel.clone());
        let pubsub_url = pubsub.url();
        tokio::spawn(async move {
            idem.run(call("waited"), async move {
                started.notify_one();
                let pubsub = redis::Client::open(pubsub_url).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let mut connection = pubsub.get_multiplexed_async_connection().await.unwrap();
                    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg(&channel)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    if reply[0].1 > 0 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "the duplicate never subscribed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<u64, Error>(3)
            })
            .await
        })
    };
    started.notified().await;
    let (waited, how) = served(idem.run(call("waited"), body(4))).await;
    assert_eq!((waited.unwrap(), how), (3, Some(Served::Waited)));
    assert_eq!(first.await.unwrap().unwrap(), 3);
    assert_eq!(subscribers(pubsub, &channel), 0, "unsubscribed after");

    // A body longer than its lease: renewed, then recorded.
    let long = idem.run(call("long").lease(MIN_LEASE), async {
        tokio::time::sleep(MIN_LEASE * 3).await;
        Ok::<u64, Error>(5)
    });
    assert_eq!(long.await.unwrap(), 5);
    assert_eq!(idem.run(call("long"), body(6)).await.unwrap(), 5);

    // An error releases the claim: the retry runs.
    let failed: Result<u64, Error> = idem
        .run(call("released"), async {
            Err(Error::invalid_key("refused"))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(idem.run(call("released"), body(7)).await.unwrap(), 7);

    // An unknown outcome keeps the claim for its lease, then a retry takes over.
    let before = runs.load(Ordering::SeqCst);
    let unknown = call("unknown").lease(MIN_LEASE);
    let outcome: Result<u64, Error> = idem
        .run_with(unknown, |_| Disposition::OutcomeUnknown, async {
            Err(Error::invalid_key("timed out"))
        })
        .await;
    assert!(outcome.is_err());
    let rejected = idem
        .run(
            call("unknown").on_in_progress(OnInProgress::Reject),
            body(8),
        )
        .await;
    assert!(
        matches!(rejected, Err(Error::InProgress { .. })),
        "{rejected:?}"
    );
    tokio::time::sleep(MIN_LEASE + Duration::from_millis(100)).await;
    assert_eq!(idem.run(call("unknown"), body(9)).await.unwrap(), 9);
    assert_eq!(runs.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_the_documented_acl_rule_is_enough() {
    let server = RedisServer::start();
    limit_to_rule(&server, &[]);
    let url = format!("redis://idem:{PASSWORD}@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&url)
        .await
        .unwrap()
        // Exercises WAIT as well.
        .with_replica_acks(0, Duration::from_millis(100));
    exercise(&Idempotency::new(store), &server).await;
    assert_eq!(
        denials(&server).trim(),
        "",
        "the store needed more than the rule"
    );

    // And the rule grants no more than idem's keys and channels.
    let mut limited = redis::Client::open(url).unwrap().get_connection().unwrap();
    for command in [
        redis::cmd("GET").arg("someone-elses-key").clone(),
        redis::cmd("SET").arg("someone-elses-key").arg("x").clone(),
        redis::cmd("PUBLISH")
            .arg("someone-elses-channel")
            .arg("x")
            .clone(),
        redis::cmd("FLUSHALL"),
        redis::cmd("KEYS").arg("*").clone(),
    ] {
        let result: redis::RedisResult<redis::Value> = command.query(&mut limited);
        let err = result.expect_err("the rule should refuse this");
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_user_limited_to_the_documented_acl_rule_is_enough() {
    let cluster = RedisCluster::start();
    let additions = documented_cluster_additions();
    assert!(
        additions.contains(&"+cluster|slots".to_owned()),
        "{additions:?}"
    );
    for node in &cluster.nodes {
        limit_to_rule(node, &additions);
    }
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| format!("redis://idem:{PASSWORD}@127.0.0.1:{}", node.port))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&urls).await.unwrap();
    // The waiters subscribe on the first node given.
    exercise(&Idempotency::new(store), &cluster.nodes[0]).await;
    for node in &cluster.nodes {
        assert_eq!(
            denials(node).trim(),
            "",
            "the store needed more than the rule"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_and_verifies_the_server() {
    let tls = TlsRedisServer::start();
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(tls.ca_pem.clone().into_bytes()),
    };
    let client = redis::Client::build_with_tls(tls.url(), certificates).unwrap();
    let store = RedisStore::connect_with_client(client, RedisStore::fail_fast_config())
        .await
        .unwrap();
    exercise(&Idempotency::new(store), &tls.server).await;

    // The platform's certificates do not include the test's authority: the server is refused.
    let err = RedisStore::connect(&tls.url()).await.unwrap_err();
    let shown = format!("{err:?}");
    assert!(shown.contains("cannot connect to Redis"), "{shown}");
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
}
