//! The operator's contract: [`StoreAdmin`] on a store, checked through the store's own claims.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{acquired, assert_lease_lost, claim, claim_with, must, Fixture, LONG};
use crate::admin::{ActionOutcome, KeyState, ListQuery, Resolution, StoreAdmin};
use crate::key::store_key;
use crate::store::{AttemptId, ClaimOutcome, Fence, Outcome, Record, Store};

/// A fixture whose store has an operator's side, as the admin checks need both.
pub trait AdminFixture: Fixture {
    /// The store under test, as an operator sees it.
    fn admin(&self) -> &dyn StoreAdmin;
}

impl<S: Store + StoreAdmin> AdminFixture for S {
    fn admin(&self) -> &dyn StoreAdmin {
        self
    }
}

/// An absent key reads as `None`; a claimed key as in flight, with its fence, fingerprint and
/// lease; a recorded key as completed, with its record and the record's fingerprint; a
/// released key as absent again.
pub async fn inspect_reads_every_state(fixture: &dyn AdminFixture, key: &str) {
    let (store, admin) = (fixture.store(), fixture.admin());
    assert_eq!(
        must(admin.inspect(key).await, "inspect an absent key"),
        None
    );

    let fence = acquired(claim_with(store, key, AttemptId::random(), &[7; 32], LONG).await);
    let info = must(admin.inspect(key).await, "inspect a key in flight")
        .unwrap_or_else(|| panic!("{key}: a claimed key must be seen"));
    assert_eq!(info.summary.key, key);
    assert_eq!(info.summary.state, KeyState::InFlight);
    assert_eq!(info.summary.fence, fence);
    assert_eq!(info.fingerprint, [7; 32], "the claim's fingerprint");
    assert!(
        info.summary.expires_in <= LONG && info.summary.expires_in > LONG / 2,
        "the lease left: {:?}",
        info.summary.expires_in
    );
    assert_eq!(info.record, None);

    let record = Record::encode(Outcome::Ok, &[7; 32], br#"{"charged":42}"#);
    must(
        store.complete(key, fence, &record, LONG * 10).await,
        "complete",
    );
    let info = must(admin.inspect(key).await, "inspect a completed key")
        .unwrap_or_else(|| panic!("{key}: a recorded key must be seen"));
    assert_eq!(info.summary.state, KeyState::Completed);
    assert_eq!(info.summary.fence, fence);
    assert_eq!(info.record.as_deref(), Some(&record[..]));
    assert_eq!(info.fingerprint, [7; 32], "the record's fingerprint");
    assert!(
        info.summary.expires_in <= LONG * 10 && info.summary.expires_in > LONG * 5,
        "the retention left: {:?}",
        info.summary.expires_in
    );
    match info.decoded_record() {
        Some(Ok(decoded)) => assert_eq!(decoded.value, br#"{"charged":42}"#),
        other => panic!("the record must decode, got {other:?}"),
    }

    let released = format!("{key}:released");
    let fence = acquired(claim(store, &released, AttemptId::random(), LONG).await);
    must(store.release(&released, fence).await, "release");
    assert_eq!(
        must(admin.inspect(&released).await, "inspect a released key"),
        None,
        "a released key is absent"
    );
}

/// A record that is not idem's envelope is still shown (and can be evicted): an operator must
/// see what is wrong, not an error in place of the key.
pub async fn inspect_shows_a_foreign_record(fixture: &dyn AdminFixture, key: &str) {
    let (store, admin) = (fixture.store(), fixture.admin());
    let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
    must(
        store.complete(key, fence, b"not an envelope", LONG).await,
        "complete",
    );
    let info = must(admin.inspect(key).await, "inspect a foreign record")
        .unwrap_or_else(|| panic!("{key}: a recorded key must be seen"));
    assert_eq!(info.record.as_deref(), Some(&b"not an envelope"[..]));
    assert!(info.fingerprint.is_empty());
    assert!(
        matches!(
            info.decoded_record(),
            Some(Err(crate::Error::Corrupt { .. }))
        ),
        "the record is reported corrupt when decoded"
    );
    assert_eq!(
        must(admin.evict(key, fence, KeyState::Completed).await, "evict"),
        ActionOutcome::Applied
    );
}

/// Every key of a namespace is listed once across pages, whatever the page size; a state
/// selects its keys only; keys of another namespace that shares the text are not listed.
pub async fn list_pages_through_a_namespace(fixture: &dyn AdminFixture, key: &str) {
    let (store, admin) = (fixture.store(), fixture.admin());
    // The check's key is the prefix: its namespaces are its own.
    let prefix = format!("{key}:");
    let mut completed = BTreeSet::new();
    let mut in_flight = BTreeSet::new();
    for i in 0..7 {
        // Plain keys, a long key (stored hashed) and one with separators in it.
        let user_key = match i {
            5 => "k".repeat(300),
            6 => "a:b#c%".to_owned(),
            _ => format!("order-{i}"),
        };
        let k = must(store_key(&prefix, "ns", &user_key), "store key");
        let fence = acquired(claim(store, &k, AttemptId::random(), LONG).await);
        if i % 3 == 0 {
            in_flight.insert(k);
        } else {
            let record = Record::encode(Outcome::Ok, &[], b"1");
            must(store.complete(&k, fence, &record, LONG).await, "complete");
            completed.insert(k);
        }
    }
    for other in ["nsx", "n"] {
        let k = must(store_key(&prefix, other, "order-1"), "store key");
        acquired(claim(store, &k, AttemptId::random(), LONG).await);
    }
    let namespace = must(ListQuery::new().in_namespace(&prefix, "ns"), "query");
    let all: BTreeSet<String> = completed.union(&in_flight).cloned().collect();
    for limit in [1, 2, 100] {
        let query = namespace.clone().with_limit(limit);
        assert_eq!(list_all(admin, &query).await, all, "limit {limit}");
    }
    let query = namespace
        .clone()
        .with_state(KeyState::InFlight)
        .with_limit(2);
    assert_eq!(list_all(admin, &query).await, in_flight, "in flight");
    let query = namespace.with_state(KeyState::Completed);
    assert_eq!(list_all(admin, &query).await, completed, "completed");

    let counts = must(admin.count().await, "count");
    assert!(
        counts.of(KeyState::InFlight) >= in_flight.len() as u64 + 2
            && counts.of(KeyState::Completed) >= completed.len() as u64,
        "the counts include this check's keys: {counts:?}"
    );
}

/// Every key a query selects, over all its pages; each summary's state is the one asked for.
async fn list_all(admin: &dyn StoreAdmin, query: &ListQuery) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut query = query.clone();
    for _ in 0..1000 {
        let page = must(admin.list(&query).await, "list");
        assert!(
            page.keys.len() <= query.limit(),
            "a page of {} keys for a limit of {}",
            page.keys.len(),
            query.limit()
        );
        for summary in page.keys {
            if let Some(state) = query.state() {
                assert_eq!(summary.state, state, "{}", summary.key);
            }
            keys.insert(summary.key);
        }
        match page.next {
            Some(next) => query = query.after(next),
            None => return keys,
        }
    }
    panic!("the listing did not end within 1000 pages");
}

/// Eviction is fenced by the state and fence read: with a fence the key no longer holds, or
/// once the key read in flight was recorded or held since (a record and a hold keep the claim's
/// fence), nothing changes; with what it holds, a record is dropped and the next claim runs; a
/// claim in flight is dropped, its holder can no longer record under it, and the next claim's
/// fence is greater.
pub async fn evict_is_fenced(fixture: &dyn AdminFixture, key: &str) {
    let (store, admin) = (fixture.store(), fixture.admin());
    assert_eq!(
        must(
            admin.evict(key, Fence(1), KeyState::Completed).await,
            "evict an absent key"
        ),
        ActionOutcome::Changed
    );
    let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
    // Read in flight, then recorded: an eviction meant for the claim leaves the record.
    let read = must(admin.inspect(key).await, "inspect")
        .unwrap_or_else(|| panic!("{key}: a claimed key must be seen"));
    let record = Record::encode(Outcome::Ok, &[], b"1");
    must(store.complete(key, fence, &record, LONG).await, "complete");
    assert_eq!(
        must(
            admin
                .evict(key, read.summary.fence, read.summary.state)
                .await,
            "evict what was read in flight, now recorded"
        ),
        ActionOutcome::Changed
    );
    let stale = Fence(fence.0.saturating_sub(1));
    assert_eq!(
        must(
            admin.evict(key, stale, KeyState::Completed).await,
            "evict with a stale fence"
        ),
        ActionOutcome::Changed
    );
    assert!(
        matches!(
            claim(store, key, AttemptId::random(), LONG).await,
            ClaimOutcome::Completed { .. }
        ),
        "a refused eviction leaves the record"
    );
    assert_eq!(
        must(
            admin.evict(key, fence, KeyState::Completed).await,
            "evict a record"
        ),
        ActionOutcome::Applied
    );
    assert_eq!(must(admin.inspect(key).await, "inspect"), None);

    let holder = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(holder > fence, "the next claim runs, with a greater fence");
    assert_eq!(
        must(
            admin.evict(key, holder, KeyState::InFlight).await,
            "evict a claim in flight"
        ),
        ActionOutcome::Applied
    );
    assert_lease_lost(
        store.complete(key, holder, &record, LONG).await,
        "the evicted holder records",
    );
    let next = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(next > holder, "fences increase across an eviction");

    // Read in flight, then held: an eviction meant for the claim leaves the hold.
    must(store.hold(key, next, LONG).await, "hold");
    assert_eq!(
        must(
            admin.evict(key, next, KeyState::InFlight).await,
            "evict what was read in flight, now held"
        ),
        ActionOutcome::Changed
    );
    assert!(
        matches!(
            claim(store, key, AttemptId::random(), LONG).await,
            ClaimOutcome::Held { .. }
        ),
        "a refused eviction leaves the hold"
    );
    assert_eq!(
        must(
            admin.evict(key, next, KeyState::Unknown).await,
            "evict a held key"
        ),
        ActionOutcome::Applied
    );
    let after = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(after > next, "the next claim runs, with a greater fence");
}

/// A key held with an unknown outcome is seen as such (listed, counted, inspected with its
/// fingerprint); it is resolved only under its fence and only while held: released, the next
/// claim runs under a greater fence; recorded, every claim replays the operator's record.
pub async fn resolve_acts_on_held_keys_only(fixture: &dyn AdminFixture, key: &str) {
    let (store, admin) = (fixture.store(), fixture.admin());
    let prefix = format!("{key}:");
    let held = must(store_key(&prefix, "ns", "held"), "store key");
    let released = must(store_key(&prefix, "ns", "released"), "store key");
    let in_flight = must(store_key(&prefix, "ns", "in-flight"), "store key");
    let mut fences = Vec::new();
    for k in [&held, &released] {
        let fence = acquired(claim_with(store, k, AttemptId::random(), &[9; 32], LONG).await);
        must(store.hold(k, fence, LONG * 10).await, "hold");
        fences.push(fence);
    }
    let busy = acquired(claim(store, &in_flight, AttemptId::random(), LONG).await);

    let info = must(admin.inspect(&held).await, "inspect a held key")
        .unwrap_or_else(|| panic!("{held}: a held key must be seen"));
    assert_eq!(info.summary.state, KeyState::Unknown);
    assert_eq!(info.summary.fence, fences[0]);
    assert_eq!(info.fingerprint, [9; 32]);
    assert!(
        info.summary.expires_in > LONG * 5 && info.summary.expires_in <= LONG * 10,
        "the hold left: {:?}",
        info.summary.expires_in
    );
    let query = must(ListQuery::new().in_namespace(&prefix, "ns"), "query");
    let unknown = list_all(admin, &query.clone().with_state(KeyState::Unknown)).await;
    assert_eq!(unknown, BTreeSet::from([held.clone(), released.clone()]));
    let in_flight_listed = list_all(admin, &query.with_state(KeyState::InFlight)).await;
    assert_eq!(in_flight_listed, BTreeSet::from([in_flight.clone()]));
    let counts = must(admin.count().await, "count");
    assert!(counts.of(KeyState::Unknown) >= 2, "{counts:?}");

    let record = Record::encode(Outcome::Ok, &[9; 32], br#"{"resolved":true}"#);
    let resolution = Resolution::Record {
        record: record.clone(),
        retention: LONG,
    };
    let forgotten = Resolution::Record {
        record: record.clone(),
        retention: Duration::ZERO,
    };
    assert!(
        matches!(
            admin.resolve(&held, fences[0], forgotten).await,
            Err(crate::Error::InvalidOption { .. })
        ),
        "a record kept for no time would free the key at once: refused"
    );
    let stale = Fence(fences[0].0 + 1000);
    assert_eq!(
        must(
            admin.resolve(&held, stale, resolution.clone()).await,
            "resolve, stale fence"
        ),
        ActionOutcome::Changed
    );
    assert_eq!(
        must(
            admin.resolve(&in_flight, busy, resolution.clone()).await,
            "resolve a key in flight"
        ),
        ActionOutcome::Changed,
        "a key in flight is not resolved: its holder may still record"
    );
    must(
        store.complete(&in_flight, busy, &record, LONG).await,
        "the holder records",
    );
    assert_eq!(
        must(
            admin.resolve(&held, fences[0], resolution.clone()).await,
            "resolve with a record"
        ),
        ActionOutcome::Applied
    );
    for _ in 0..2 {
        match claim(store, &held, AttemptId::random(), LONG).await {
            ClaimOutcome::Completed {
                record: replayed,
                fence: recorded_by,
                ..
            } => {
                assert_eq!(replayed, record);
                assert_eq!(
                    recorded_by, fences[0],
                    "a resolved record keeps the held fence"
                );
            }
            other => panic!("a key resolved with a record answered {other:?}"),
        }
    }
    assert_eq!(
        must(
            admin.resolve(&held, fences[0], resolution).await,
            "resolve twice"
        ),
        ActionOutcome::Changed,
        "a resolved key is no longer held"
    );

    assert_eq!(
        must(
            admin
                .resolve(&released, fences[1], Resolution::Release)
                .await,
            "release"
        ),
        ActionOutcome::Applied
    );
    assert_eq!(must(admin.inspect(&released).await, "inspect"), None);
    let next = acquired(claim(store, &released, AttemptId::random(), LONG).await);
    assert!(
        next > fences[1],
        "the next claim runs, with a greater fence"
    );
}

/// The readiness probe answers within its timeout.
pub async fn ping_answers(fixture: &dyn AdminFixture, _key: &str) {
    let took = must(fixture.admin().ping(Duration::from_secs(5)).await, "ping");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Generates one `#[tokio::test]` per check of the operator's contract, as
/// [`store_contract_tests!`](crate::store_contract_tests) does for the store's; `$fixture` is a
/// future of an [`AdminFixture`].
#[macro_export]
macro_rules! store_admin_contract_tests {
    ($fixture:expr) => {
        $crate::store_admin_contract_tests!(@each $fixture;
            inspect_reads_every_state,
            inspect_shows_a_foreign_record,
            list_pages_through_a_namespace,
            evict_is_fenced,
            resolve_acts_on_held_keys_only,
            ping_answers,
        );
    };
    (@each $fixture:expr; $($check:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let fixture = $fixture.await;
                $crate::testing::$check(
                    &fixture,
                    &$crate::testing::unique_key(stringify!($check)),
                )
                .await;
            }
        )*
    };
}
