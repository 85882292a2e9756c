//! What operators see and do: read one key, list keys by state and namespace, count them, evict
//! one, and check that the store answers.
//!
//! [`StoreAdmin`] is a trait of its own beside [`Store`](crate::Store): the runtime never needs
//! it, a store of your own may leave it out, and a tool can hold an operator's handle without
//! being able to claim. Every store idem ships implements it, and the contract suite
//! (`idem::testing`, feature `testing`) checks it.
//!
//! Everything an operator changes is fenced: [`StoreAdmin::evict`] names the state and fence it
//! read, and a key claimed, recorded or held since is left alone.
//!
//! ```
//! # use idem_core as idem; // what users of the `idem` crate write
//! use idem::admin::{KeyState, ListQuery, StoreAdmin};
//!
//! # async fn example(store: &dyn StoreAdmin) -> Result<(), idem::Error> {
//! // Which calls of `charge` are in flight right now?
//! let query = ListQuery::new()
//!     .in_namespace(idem::DEFAULT_KEY_PREFIX, "charge")?
//!     .with_state(KeyState::InFlight)
//!     .with_limit(50);
//! let page = store.list(&query).await?;
//! for key in &page.keys {
//!     println!("{} fence {} expires in {:?}", key.key, key.fence, key.expires_in);
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Fence, Record};
use crate::Error;

mod query;

pub use query::{Cursor, ListQuery, MAX_LIST_LIMIT};

/// The state of a key, as an operator sees it. A lapsed claim and an expired record are
/// claimable: stores report them as absent, whether or not they still hold their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Claimed by a call whose lease is live: its body may be running.
    InFlight,
    /// Recorded: deliveries replay the record until its retention lapses.
    Completed,
    /// Held after its call ended with an unknown outcome ([`Store::hold`](crate::Store::hold)):
    /// deliveries fail with [`Error::OutcomeUnknown`] until the hold lapses or an operator
    /// resolves the key ([`StoreAdmin::resolve`]).
    Unknown,
}

impl KeyState {
    /// Every state, in the order tools print them.
    pub const ALL: [Self; 3] = [Self::InFlight, Self::Unknown, Self::Completed];

    /// The state's name in tools and JSON: `inflight`, `unknown`, `completed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "inflight",
            Self::Completed => "completed",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyState {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                Error::invalid_option(format!(
                    "unknown key state `{}`; use one of: inflight, unknown, completed",
                    text.escape_debug()
                ))
            })
    }
}

/// One key of a listing: what can be read without its record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySummary {
    /// The store key (prefix, namespace and key; see [`crate::key`]).
    pub key: String,
    /// In flight or completed.
    pub state: KeyState,
    /// The fence of the claim that holds or recorded the key.
    pub fence: Fence,
    /// How long until the store may drop the key: the lease left for a key in flight, the
    /// retention left for a record, the hold left for an unknown outcome (about
    /// [`MAX_DURATION`](crate::MAX_DURATION) for one held until resolved).
    pub expires_in: Duration,
}

impl KeySummary {
    /// A summary, for store implementations.
    pub fn new(key: String, state: KeyState, fence: Fence, expires_in: Duration) -> Self {
        Self {
            key,
            state,
            fence,
            expires_in,
        }
    }
}

/// One key, read in full by [`StoreAdmin::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key, its state, fence and time left.
    pub summary: KeySummary,
    /// The request fingerprint kept with it (empty when the call had none).
    pub fingerprint: Vec<u8>,
    /// The record's bytes (idem's versioned envelope, [`Record`]) when the key is completed.
    pub record: Option<Vec<u8>>,
}

impl KeyInfo {
    /// A key in flight, for store implementations.
    pub fn in_flight(
        key: String,
        fence: Fence,
        lease_remaining: Duration,
        fingerprint: Vec<u8>,
    ) -> Self {
        Self {
            summary: KeySummary::new(key, KeyState::InFlight, fence, lease_remaining),
            fingerprint,
            record: None,
        }
    }

    /// A key held with an unknown outcome, for store implementations.
    pub fn unknown(
        key: String,
        fence: Fence,
        hold_remaining: Duration,
        fingerprint: Vec<u8>,
    ) -> Self {
        Self {
            summary: KeySummary::new(key, KeyState::Unknown, fence, hold_remaining),
            fingerprint,
            record: None,
        }
    }

    /// A completed key, for store implementations. The fingerprint is read from the record
    /// (empty when the record does not decode: an operator must still see, and can evict, a
    /// corrupt record; [`decoded_record`](Self::decoded_record) says what is wrong with it).
    pub fn completed(
        key: String,
        fence: Fence,
        retention_remaining: Duration,
        record: Vec<u8>,
    ) -> Self {
        let fingerprint = Record::decode(&key, &record)
            .map(|decoded| decoded.fingerprint.to_vec())
            .unwrap_or_default();
        Self {
            summary: KeySummary::new(key, KeyState::Completed, fence, retention_remaining),
            fingerprint,
            record: Some(record),
        }
    }

    /// The decoded record of a completed key ([`Error::Corrupt`] when it does not decode).
    pub fn decoded_record(&self) -> Option<Result<Record<'_>, Error>> {
        self.record
            .as_deref()
            .map(|bytes| Record::decode(&self.summary.key, bytes))
    }
}

/// A page of a listing, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPage {
    /// The keys of this page, in the store's order.
    pub keys: Vec<KeySummary>,
    /// Pass it to [`ListQuery::after`] for the next page; `None` when the listing is complete.
    pub next: Option<Cursor>,
}

impl KeyPage {
    /// A page, for store implementations.
    pub fn new(keys: Vec<KeySummary>, next: Option<Cursor>) -> Self {
        Self { keys, next }
    }
}

/// How many keys a store holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateCounts {
    /// Keys in flight.
    pub in_flight: u64,
    /// Keys held with an unknown outcome.
    pub unknown: u64,
    /// Completed keys.
    pub completed: u64,
}

impl StateCounts {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// The count of one state.
    pub fn of(&self, state: KeyState) -> u64 {
        match state {
            KeyState::InFlight => self.in_flight,
            KeyState::Unknown => self.unknown,
            KeyState::Completed => self.completed,
        }
    }

    /// Counts `n` more keys in `state`.
    pub fn add(&mut self, state: KeyState, n: u64) {
        let count = match state {
            KeyState::InFlight => &mut self.in_flight,
            KeyState::Unknown => &mut self.unknown,
            KeyState::Completed => &mut self.completed,
        };
        *count = count.saturating_add(n);
    }
}

/// What an operator's action on a key ([`StoreAdmin::evict`], [`StoreAdmin::resolve`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionOutcome {
    /// The key held the fence given (and, to resolve it, was held with an unknown outcome):
    /// the action applied.
    Applied,
    /// The key no longer holds the fence given (it was recorded, released, taken over or
    /// dropped since it was read), is not in the state the action needs, or a transaction holds
    /// it: nothing changed. Read it again.
    Changed,
}

/// How an operator resolves a key held with an unknown outcome, once they know whether its
/// effect happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// The effect did not happen: the key is released, and the next delivery runs the body.
    Release,
    /// The effect happened: this record (idem's envelope, [`Record::encode`]) is the call's
    /// result, kept for `retention` and replayed to every delivery.
    Record {
        /// The record's bytes.
        record: Vec<u8>,
        /// How long it is kept.
        retention: Duration,
    },
}

impl Resolution {
    /// Refuses a resolution no store should apply: a record kept for no time (the key would
    /// be free at once, and the next delivery would run the body the operator said had run) or
    /// for longer than [`MAX_DURATION`](crate::MAX_DURATION). Stores call it first.
    pub fn check(&self) -> Result<(), Error> {
        match self {
            Self::Record { retention, .. }
                if retention.is_zero() || *retention > crate::MAX_DURATION =>
            {
                Err(Error::invalid_option(format!(
                    "a resolution's record is kept for {retention:?}, but it must be kept for \
                     more than zero and at most {} days",
                    crate::MAX_DURATION.as_secs() / 86_400
                )))
            }
            _ => Ok(()),
        }
    }
}

/// What an operator did, for [`report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Evicted a key.
    Evicted,
    /// Released a key held with an unknown outcome.
    Released,
    /// Recorded a result for a key held with an unknown outcome.
    Recorded,
}

impl Action {
    /// The action's name in events and metric labels: `evicted`, `released`, `recorded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Released => "released",
            Self::Recorded => "recorded",
        }
    }
}

/// Reports an operator's action that applied, for store implementations: a WARN `tracing`
/// event with the key's hash and fence, and the `idem.admin` counter by action (feature
/// `metrics`).
pub fn report(action: Action, key: &str, fence: Fence) {
    crate::observe::operated(action.as_str(), key, fence);
}

/// The operator's side of a store: read, list, count and evict keys, and check that the store
/// answers. Store keys are the full keys of [`crate::key`]; build one with
/// [`key::store_key`](crate::key::store_key).
///
/// Reads are snapshots: a key may change the moment after. An uncommitted claim (in a
/// database transaction) is not seen until it commits.
#[async_trait]
pub trait StoreAdmin: Send + Sync + 'static {
    /// Reads one key with its record; `None` when it is absent (or claimable: a lapsed claim or
    /// an expired record).
    async fn inspect(&self, key: &str) -> Result<Option<KeyInfo>, Error>;

    /// One page of the keys that `query` selects. A page may hold fewer keys than the limit
    /// (even none) and still have a next page; the listing is complete when `next` is `None`.
    /// Keys claimed or dropped during a listing may be missed or seen twice; every key present
    /// throughout is seen.
    async fn list(&self, query: &ListQuery) -> Result<KeyPage, Error>;

    /// Counts the keys of each state. Reads every key of the store: for tools, not request
    /// paths.
    async fn count(&self) -> Result<StateCounts, Error>;

    /// Drops `key` if it is still in `state` under `fence` (what an operator read: a record or
    /// a hold keeps its claim's fence, so the state tells them apart), so that the next
    /// delivery runs the body. A key in flight is evicted too, but its body may still be
    /// running: the next delivery may then run alongside it, and its holder may still record
    /// its result (under a fresh claim, if the key is free when it ends). Evict a key in flight
    /// only when its holder is known to be gone.
    async fn evict(&self, key: &str, fence: Fence, state: KeyState)
        -> Result<ActionOutcome, Error>;

    /// Resolves `key`, held with an unknown outcome by the call of `fence`: releases it, or
    /// records the result an operator supplies. A key that is not held under `fence` is left
    /// alone ([`ActionOutcome::Changed`]).
    async fn resolve(
        &self,
        key: &str,
        fence: Fence,
        resolution: Resolution,
    ) -> Result<ActionOutcome, Error>;

    /// Checks that the store answers within `timeout`: a readiness probe. Returns how long the
    /// answer took.
    async fn ping(&self, timeout: Duration) -> Result<Duration, Error>;
}

/// A shared store is an operator's store too.
#[async_trait]
impl<S: StoreAdmin + ?Sized> StoreAdmin for std::sync::Arc<S> {
    async fn inspect(&self, key: &str) -> Result<Option<KeyInfo>, Error> {
        (**self).inspect(key).await
    }

    async fn list(&self, query: &ListQuery) -> Result<KeyPage, Error> {
        (**self).list(query).await
    }

    async fn count(&self) -> Result<StateCounts, Error> {
        (**self).count().await
    }

    async fn evict(
        &self,
        key: &str,
        fence: Fence,
        state: KeyState,
    ) -> Result<ActionOutcome, Error> {
        (**self).evict(key, fence, state).await
    }

    async fn resolve(
        &self,
        key: &str,
        fence: Fence,
        resolution: Resolution,
    ) -> Result<ActionOutcome, Error> {
        (**self).resolve(key, fence, resolution).await
    }

    async fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        (**self).ping(timeout).await
    }
}

/// Runs a probe under `timeout`, for store implementations: how long it took, or an error that
/// says the store did not answer in time.
pub async fn timed_ping<F>(timeout: Duration, probe: F) -> Result<Duration, Error>
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(Error::store(
            "ping",
            format!("the store did not answer within {timeout:?}"),
        )),
    }
}
