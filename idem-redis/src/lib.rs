//! The Redis store of [idem](https://docs.rs/idem): the shared authority that lets many service
//! instances agree, per key, that an effect runs once.
//!
//! Use it through the `idem` crate's `redis` feature (`idem::redis::RedisStore`), or directly.
//! See [`RedisStore`] for what it guarantees and costs.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod scripts;
mod server_clock;
mod state;
mod store;
mod waiters;

pub use store::{RedisStore, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};

/// The `redis` crate this store is built on, for connection settings
/// (`ConnectionManagerConfig`) and your own connections.
#[doc(no_inline)]
pub use redis;
