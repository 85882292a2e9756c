//! Exactly-once *effects* for async Rust handlers.
//!
//! Exactly-once delivery is impossible: a reply can be lost, so callers retry, and retries
//! duplicate. Exactly-once effects are not: a store with the authority to reject duplicates
//! decides, per key, that the effect happens once, and every later delivery gets the recorded
//! result. `#[idempotent]` rewrites an `async fn` into **claim → execute → record**, and replays
//! the record to duplicates.
//!
//! ```
//! use idem::idempotent;
//! use serde::{Deserialize, Serialize};
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! static CHARGES: AtomicU32 = AtomicU32::new(0);
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Receipt { order: u64, cents: u64 }
//!
//! #[idempotent(key = order)]
//! async fn charge(order: u64, cents: u64) -> Result<Receipt, idem::Error> {
//!     CHARGES.fetch_add(1, Ordering::SeqCst); // the effect
//!     Ok(Receipt { order, cents })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idem::Error> {
//! let first = charge(7, 1250).await?;
//! let retry = charge(7, 1250).await?; // a duplicate delivery: replayed, not charged again
//! assert_eq!(first, retry);
//! assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```
//!
//! With no setup the function uses the process-wide default: an in-memory [`MemoryStore`]. A
//! service with several instances shares a store through an [`Idempotency`] handle, either
//! [`install`]ed as the default or named per function with `using = ...`: with the `redis`
//! feature, `idem::redis::RedisStore` on Redis (and with `redis-cluster`, on Redis Cluster).
//!
//! # Options
//!
//! | option | meaning | default |
//! | --- | --- | --- |
//! | `key = EXPR` | the idempotency key: any `Display` value, evaluated once before the body | required |
//! | `using = EXPR` | an `&Idempotency` (e.g. `&self.idem`) | the [`install`]ed default |
//! | `fingerprint = EXPR` | any `Serialize` value describing the request; the same key with another fingerprint is [`Error::KeyReused`] and the body does not run | none |
//! | `ttl = "24h"` | how long the record is kept (above zero, at most 100 years) (a duplicate within it is replayed) | the runtime's (24h) |
//! | `lease = "30s"` | how long a claim lasts; renewed every third of it while the body runs; from 250ms ([`MIN_LEASE`]) to 100 years, else [`Error::InvalidOption`] before the body runs | the runtime's (30s) |
//! | `namespace = "..."` | keys of different namespaces never collide; pin it to keep a function's records across a rename or a move (and across compiler versions, which name the default) | the function's path: crate, module, the `Self` type (and trait) of a method, and the name, so no two functions share records |
//! | `on_in_progress = wait \| reject` | a duplicate arriving while the first call runs waits for its result (up to one lease), or gets [`Error::InProgress`] at once | `wait` |
//! | `record_errors` | record and replay `Err` values too (needs `E: Serialize + DeserializeOwned`) | `Err` releases the claim |
//! | `on_error = EXPR` | a `fn(&E) -> `[`OnError`] deciding per error: `Release`, `Record` (with `record_errors`) or `OutcomeUnknown` | every `Err` is `Release` (`Record` with `record_errors`) |
//! | `crate = "path"` | where the `idem` crate is, if renamed | `::idem` |
//!
//! The function must be `async` (or a method of an `#[async_trait]` impl) and return
//! `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idem::Error>`. Generics,
//! `where` clauses, `self` receivers, borrowed arguments and methods in traits all work; the
//! returned future is `Send` whenever the body's is.
//!
//! # Semantics
//!
//! | what happens | result |
//! | --- | --- |
//! | first call | claims the key (atomic in the store), runs the body, records `Ok` for the retention period, returns it |
//! | duplicate after completion | replays the record; the body does not run |
//! | duplicate while the first runs | `wait`: gets the first call's result when it is recorded; `reject`: [`Error::InProgress`] |
//! | same key, different fingerprint | [`Error::KeyReused`]; the body does not run |
//! | body returns `Err` | as `on_error` says; by default the claim is released, so a retry runs the body again (or, with `record_errors`, the `Err` is recorded and replayed) |
//! | unknown outcome: the body panics, the caller drops the future, the process crashes, or `on_error` says [`OnError::OutcomeUnknown`] | nothing is recorded and the claim is **kept** until its lease lapses (a panic then resumes); then the next call takes over, sending the same [downstream keys](ClaimContext::downstream_key). See [`OnError`] for why |
//! | body runs longer than the lease | the runtime renews the lease while the body runs; if renewal fails, the result is not recorded under a stale claim and the caller gets [`Error::LeaseLost`] |
//! | store down before the body | fails closed: [`Error::Store`], the body does not run |
//! | store down after the body | the effect happened; the runtime retries the record write, then returns [`Error::NotRecorded`] |
//! | corrupt record | [`Error::Corrupt`], never a panic and never a miss |
//!
//! Every claim carries a [fencing token](Fence) that strictly increases per key across claims,
//! releases and takeovers; completing, releasing and renewing succeed only with the current
//! token. The running body can read it with [`context()`] and pass it downstream.
//!
//! # Where the guarantee ends
//!
//! idem makes the *decision* to run an effect happen once per key within the store's retention.
//! It cannot make an external effect atomic with its record: if the process dies after the
//! effect and before the record, the lease lapses and a retry runs the body again. Close that
//! gap by making the effect itself idempotent downstream (pass the key or the fencing token to
//! the payment provider or the database). Likewise a body that outlives its lease while its
//! renewals fail, a store that loses data (restart without persistence, failover before
//! replication) and keys older than the retention period are outside the guarantee.
//!
//! # Explanation
//!
//! The attribute keeps the signature and moves the body into a future that the runtime drives:
//!
//! ```text
//! #[idempotent(key = order.id, using = &self.idem)]
//! async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
//!     self.gateway.charge(order).await
//! }
//! ```
//!
//! becomes (a test checks that this is the macro's output; the snapshots in
//! `idem-macros/snapshots` show the other shapes)
//!
#![doc = "```text"]
#![doc = include_str!("expansion.rs.txt")]
#![doc = "```"]
//!
//! so the same logic is available without the macro: [`Idempotency::run`] with a [`Call`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod private;

pub use idem_core::{
    context, default_runtime, install, served, Call, ClaimContext, Error, Fence, Idempotency,
    MemoryStore, OnError, OnInProgress, Served, MAX_DURATION, MIN_LEASE,
};

/// For store authors and for reaching into a store: the contract a backend implements
/// ([`Store`](store::Store), a per-key state machine), what it is asked and answers, and the
/// record format the runtime keeps in it.
pub mod store {
    pub use idem_core::{
        AttemptId, BoxError, ClaimOutcome, ClaimRequest, Fingerprint, Outcome, Record, Store,
        MAX_FINGERPRINT, RECORD_VERSION,
    };
}
pub use idem_macros::idempotent;

/// The Redis store (feature `redis`; Redis Cluster with `redis-cluster`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    /// Connection settings for [`RedisStore::connect_with_config`], from redis-rs.
    pub use idem_redis::redis::aio::ConnectionManagerConfig;
    pub use idem_redis::{RedisStore, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};
}

#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
