//! Bad input at the edges: enormous and odd keys, oversized results, on the memory store and
//! on Redis (corrupt and wrong-typed values at idem's keys are covered by idem-redis's tests).
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use idem_core::{Call, Error, Idempotency, MemoryStore, Store};
use idem_redis::RedisStore;
use idem_test_servers::RedisServer;

async fn check_keys_and_sizes(store: Arc<dyn Store>) {
    let idem = Idempotency::from_arc(store);
    let runs = AtomicU32::new(0);
    let keys = [
        "x".repeat(1 << 20),          // a 1 MiB key
        "line\nbreak\r\n".to_owned(), // control characters
        "nul\0inside".to_owned(),     // NUL
        "{tag}}{{".to_owned(),        // hash-tag braces
        "ünïcødé ✓ 🦀".to_owned(),    // multi-byte
        "ü".repeat(100),              // multi-byte at the hashing boundary
        " ".to_owned(),               // a single space
    ];
    for key in &keys {
        for _ in 0..2 {
            let value = idem
                .run(Call::new("odd", key), async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>(key.len())
                })
                .await
                .unwrap();
            assert_eq!(value, key.len());
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        keys.len() as u32,
        "each odd key ran exactly once"
    );

    // An 8 MiB result is recorded and replayed whole.
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let first = idem
        .run(Call::new("big", "k"), async { Ok::<_, Error>(big.clone()) })
        .await
        .unwrap();
    let replay = idem
        .run(Call::new("big", "k"), async {
            Ok::<_, Error>(Vec::<u8>::new())
        })
        .await
        .unwrap();
    assert_eq!(first, big);
    assert_eq!(replay, big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_oversized_results_on_memory() {
    check_keys_and_sizes(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_oversized_results_on_redis() {
    let server = RedisServer::start();
    check_keys_and_sizes(Arc::new(RedisStore::connect(&server.url()).await.unwrap())).await;
}

#[tokio::test]
async fn an_empty_key_is_refused_before_anything_runs() {
    let idem = Idempotency::new(MemoryStore::new());
    let result = idem
        .run(Call::new("odd", ""), async { Ok::<_, Error>(()) })
        .await;
    assert!(
        matches!(result, Err(Error::InvalidKey { .. })),
        "{result:?}"
    );
}
