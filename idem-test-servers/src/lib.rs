//! Real servers for idem's tests (not published): each test starts its own, on a free port in a
//! temporary directory, because tests stop, restart, kill and cluster them and must not meet
//! each other's data. Dropping a server kills it and removes its directory.
//!
//! A missing server binary fails the test with a message that says how to install it; there
//! are no silent skips.

pub mod redis;

pub use crate::redis::{any_server, free_port, RedisCluster, RedisServer, TlsRedisServer};
