//! The runtime of [idem](https://docs.rs/idem): exactly-once effects for async handlers.
//!
//! Most users depend on the `idem` crate, which re-exports everything here and adds the
//! `#[idempotent]` attribute. This crate holds the logic as plain Rust.
//!
//! # Crate map
//!
//! A call flows down this list: its options, the runtime that claims its key, runs its body and
//! settles its result, the store that decides, and what is observed of it.
//!
//! * `call`: [`Call`], one call's namespace, key and options; [`OnInProgress`]; the defaults.
//! * `runtime`: [`Idempotency`], the handle and its `run*` calls (claim → execute → record,
//!   replay for duplicates); [`Idempotency::start`] and [`Claimed`], the same in two steps.
//! * `transaction`: [`Idempotency::begin_transaction_with`] and [`TransactionClaim`], a call whose
//!   record commits in the caller's database transaction; [`TransactionalStore`], the store's
//!   side of it.
//! * `policy`: [`Disposition`], what a body's `Err` means.
//! * `context`: [`ClaimContext`], what a running body can read of its claim ([`context`],
//!   [`with_context`]).
//! * `observe`: [`served`] and [`Served`] (how a result came to be), [`Observer`],
//!   [`CallOutcome`] and [`CallReport`]; the `tracing` span and metrics (feature `metrics`).
//! * `default`: the process-wide runtime of functions that name none ([`install`],
//!   [`default_runtime`]).
//! * `store`: [`Store`], the backend contract (a per-key state machine with fencing tokens and
//!   leases); [`MemoryStore`], the embedded store; [`Record`], the versioned record format.
//! * [`admin`]: [`admin::StoreAdmin`], what operators see and do: inspect, list, count and evict
//!   keys, and a readiness probe.
//! * [`key`]: the store-key grammar ([`key::store_key`]).
//! * [`encode`]: request [`Fingerprint`]s, exact JSON for records, hex.
//! * `time`: [`MIN_LEASE`], [`MAX_DURATION`].
//! * [`Error`]: what can go wrong, and whether the body ran.
//! * [`testing`] (feature `testing`): the contract suite every store must pass, and a store that
//!   fails on demand.
//!
//! Modules depend downwards only: `error`, `time`, `encode` and `key` are leaves; `store` uses
//! them; `observe`, `context`, `call` and `policy` use the store; `runtime` uses all of those;
//! `transaction` and `default` sit on the runtime.

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __macro_support;
pub mod admin;
mod call;
mod context;
mod default;
pub mod encode;
mod error;
pub mod key;
mod observe;
mod policy;
mod runtime;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod time;
mod transaction;
mod unwind;

pub use call::{
    Call, OnInProgress, UnknownHold, DEFAULT_KEY_PREFIX, DEFAULT_LEASE, DEFAULT_RETENTION,
};
pub use context::{context, with_context, ClaimContext};
pub use default::{default_runtime, install, require_installed, REQUIRE_INSTALLED_ENV};
pub use encode::Fingerprint;
pub use error::{BoxError, Error};
pub use observe::{served, CallOutcome, CallReport, Observer, Served};
pub use policy::Disposition;
pub use runtime::{Claimed, Idempotency, Started};
pub use store::{
    AttemptId, ClaimOutcome, ClaimRequest, Fence, MemoryStore, Outcome, Record, Store,
    MAX_FINGERPRINT, RECORD_VERSION,
};
pub use time::{MAX_DURATION, MIN_LEASE};
pub use transaction::{DetachedClaim, TransactionBegun, TransactionClaim, TransactionalStore};
