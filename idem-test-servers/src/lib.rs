//! Real servers for idem's tests (not published): each test starts its own, on a free port in a
//! temporary directory, because tests stop, restart, kill and cluster them and must not meet
//! each other's data. Dropping a server kills it and removes its directory.
//!
//! A missing server binary fails the test with a message that says how to install it; there
//! are no silent skips.

// Test support: a failure to set a server up fails the test that asked for it, loudly.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

mod commit_proxy;
pub mod postgres;
pub mod redis;

pub use crate::commit_proxy::commit_cutting_proxy;
pub use crate::postgres::{any_database, PostgresServer};
pub use crate::redis::{any_server, free_port, RedisCluster, RedisServer, TlsRedisServer};
