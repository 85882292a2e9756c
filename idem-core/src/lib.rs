//! The runtime of [idem](https://docs.rs/idem): exactly-once effects for async handlers.
//!
//! Most users depend on the `idem` crate, which re-exports everything here and adds the
//! `#[idempotent]` attribute. This crate holds the logic as plain Rust:
//!
//! * [`Idempotency`] and [`Call`]: claim → execute → record, and replay for duplicates;
//! * [`Store`]: the backend contract, a per-key state machine with fencing tokens and leases;
//! * [`MemoryStore`]: the embedded, in-process store;
//! * [`Record`]: the versioned record format;
//! * [`Error`]: what can go wrong, and whether the body ran;
//! * `testing` (feature `testing`): the contract suite every store must pass.

mod context;
mod drive;
mod error;
mod exact;
#[cfg(feature = "testing")]
mod faulty;
mod fingerprint;
mod global;
mod key;
mod memory;
mod observe;
mod outcome;
mod random;
mod record;
mod runtime;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod transaction;
mod unwind;

pub use context::{context, with_context, ClaimContext};
pub use error::{BoxError, Error};
pub use fingerprint::Fingerprint;
pub use global::{default_runtime, install};
#[doc(hidden)]
pub use inventory;
pub use key::{
    check_namespace, hex, marker_of, store_key, unhex, FunctionNamespace, Marker, MAX_PLAIN_KEY,
};
pub use memory::MemoryStore;
pub use observe::{CallOutcome, CallReport, Observer};
#[doc(hidden)]
pub use outcome::report as report_served;
pub use outcome::{served, OnError, Served};
pub use record::{Outcome, Record, MAX_FINGERPRINT, RECORD_VERSION};
pub use runtime::{
    Call, Claimed, Idempotency, OnInProgress, Started, DEFAULT_KEY_PREFIX, DEFAULT_LEASE,
    DEFAULT_RETENTION, MAX_DURATION, MIN_LEASE,
};
pub use store::{AttemptId, ClaimOutcome, ClaimRequest, Fence, Store};
pub use transaction::{DetachedClaim, TransactionBegun, TransactionClaim, TransactionalStore};
#[doc(hidden)]
pub use unwind::catch_unwind;
