//! Shared by the integration tests: behaviour checks that every store must pass.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "shared by several test crates, each using a part; helpers fail loudly by design"
)]

pub mod behaviour;
