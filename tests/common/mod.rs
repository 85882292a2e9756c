//! Shared by the integration tests: behaviour checks that every store must pass.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod behaviour;
