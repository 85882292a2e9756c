//! The PostgreSQL store of [idem](https://docs.rs/idem), whose record can commit in the
//! handler's own transaction: for effects that are writes to the same database, the effect and
//! its record commit together or not at all, so a retry after any crash, cancellation or lost
//! connection either replays or runs cleanly, never both.
//!
//! * [`PostgresStore`] is an `idem::store::Store` in autocommit for bodies whose effects
//!   are elsewhere: leases by the database's clock, fencing tokens from a sequence, a reaper.
//! * [`begin`] and [`TransactionClaim::finish`] (or `#[idempotent(transaction = conn)]` in the `idem`
//!   crate) run a body inside a transaction with idem's claim and record.
//!
//! Use it through the `idem` crate's `postgres` feature (`idem::postgres`), or directly.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod sql;
mod store;
mod transaction;

pub use sql::DEFAULT_TABLE;
pub use store::{PoolOptions, PostgresStore, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
pub use transaction::{
    begin, begin_recording_errors, begin_recording_errors_with, begin_with, TransactionBegun,
    TransactionClaim,
};

/// The `sqlx` this store is built on: your connections and pools must come from this version.
#[doc(no_inline)]
pub use sqlx;
