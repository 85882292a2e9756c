//! Races at the edges of a claim, on real Redis: several callers taking over one expired claim,
//! a body that outlives its lease, a task aborted between claim and record, and a process
//! killed with SIGKILL mid-body while another takes over. The last three cross the documented
//! boundary (an effect that started may run again); the tests measure that and check the parts
//! that must still hold: fencing, the refusal of stale writes, and takeover within the lease.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_chaos::{FaultPlan, FaultyStore};
use idem_core::{AttemptId, Call, ClaimOutcome, ClaimRequest, Error, Idempotency};
use idem_redis::RedisStore;
use idem_test_servers::RedisServer;

async fn redis(server: &RedisServer) -> Idempotency {
    Idempotency::new(RedisStore::connect(&server.url()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_callers_take_over_an_expired_claim_once() {
    let server = RedisServer::start();
    let idem = redis(&server).await;
    // A holder that crashed right after claiming: its claim lapses after 300ms.
    let key = idem.store_key("takeover", "k").unwrap();
    let crashed = idem
        .store()
        .claim(ClaimRequest::new(
            &key,
            AttemptId::random(),
            b"",
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    let ClaimOutcome::Acquired { fence: crashed, .. } = crashed else {
        panic!("the first claim is granted");
    };
    tokio::time::sleep(Duration::from_millis(350)).await;
    let runs = Arc::new(AtomicU32::new(0));
    let mut callers = Vec::new();
    for _ in 0..16 {
        let (idem, runs) = (idem.clone(), runs.clone());
        callers.push(tokio::spawn(async move {
            idem.run(Call::new("takeover", "k"), async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Error>(idem_core::context().unwrap().fence.0)
            })
            .await
        }));
    }
    let mut fences = Vec::new();
    for caller in callers {
        fences.push(caller.await.unwrap().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one caller takes over");
    assert!(
        fences.iter().all(|f| *f == fences[0]),
        "all replay its result"
    );
    assert!(fences[0] > crashed.0, "the takeover's fence is greater");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_outlives_its_lease_is_measured_and_its_stale_write_refused() {
    let server = RedisServer::start();
    let store = Arc::new(FaultyStore::new(
        RedisStore::connect(&server.url()).await.unwrap(),
        FaultPlan::NONE,
        0,
    ));
    let idem = Idempotency::from_arc(store.clone()).with_lease(Duration::from_millis(300));
    store.fail_renewals();
    let runs = Arc::new(AtomicU32::new(0));
    let first = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            idem.run(Call::new("overrun", "k"), async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, Error>("first".to_owned())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = idem
        .run(Call::new("overrun", "k"), async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("second".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(second, "second", "the lapsed claim was taken over");
    // I3: its write under the stale fence is refused; its caller gets the key's recorded
    // result (it got `LeaseLost` before issue 20), so both callers see one result.
    let first = first.await.unwrap();
    assert_eq!(first.unwrap(), "second", "I3");
    let replay = idem
        .run(Call::new("overrun", "k"), async {
            Ok::<_, Error>("third".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        replay, "second",
        "the stale holder's result was not recorded"
    );
    let duplicates = runs.load(Ordering::SeqCst) - 1;
    println!("body outliving its lease with renewals failing: {duplicates} duplicate execution");
    assert_eq!(
        duplicates, 1,
        "outside the boundary: both bodies ran, as documented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_aborted_between_claim_and_record_is_taken_over_after_its_lease() {
    let server = RedisServer::start();
    let idem = redis(&server).await;
    let runs = Arc::new(AtomicU32::new(0));
    let lease = Duration::from_millis(500);
    let aborted = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            idem.run(Call::new("abort", "k").lease(lease), async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, Error>(1)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    aborted.abort();
    let started = Instant::now();
    let value = idem
        .run(Call::new("abort", "k").lease(lease), async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(2)
        })
        .await
        .unwrap();
    assert_eq!(value, 2);
    let waited = started.elapsed();
    println!(
        "aborted task: taken over after {waited:?}, executions {}",
        runs.load(Ordering::SeqCst)
    );
    assert!(
        waited >= Duration::from_millis(300),
        "the claim was kept, not released: {waited:?}"
    );
    assert!(
        waited < lease + Duration::from_secs(2),
        "I5: claimable again within the lease: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_body_is_taken_over_by_another_after_its_lease() {
    let server = RedisServer::start();
    let lease_ms = 1000;
    let mut child = Command::new(env!("CARGO_BIN_EXE_idem-chaos-child"))
        .args([&server.url(), "k", &lease_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child_fence: u64 = line
        .trim()
        .strip_prefix("started ")
        .unwrap_or_else(|| panic!("unexpected child output {line:?}"))
        .parse()
        .unwrap();
    child.kill().unwrap(); // SIGKILL: no cleanup, the claim stays behind
    child.wait().unwrap();
    let killed_at = Instant::now();

    let idem = redis(&server).await;
    let fence = idem
        .run(Call::new("crash", "k"), async {
            Ok::<_, Error>(idem_core::context().unwrap().fence.0)
        })
        .await
        .unwrap();
    let waited = killed_at.elapsed();
    println!("killed process: taken over after {waited:?}; fences {child_fence} then {fence}");
    assert!(fence > child_fence, "the takeover's fence is greater");
    assert!(
        waited < Duration::from_millis(lease_ms) + Duration::from_secs(2),
        "I5: {waited:?}"
    );
    // A later delivery replays the takeover's result.
    let replay = idem
        .run(Call::new("crash", "k"), async { Ok::<_, Error>(0) })
        .await
        .unwrap();
    assert_eq!(replay, fence);
}
