//! A payment service under at-least-once delivery, on the in-memory store.
//!
//! A broker delivers each order one to four times, often concurrently, and redelivers whenever
//! the handler fails (here: a flaky gateway). `charge` is `#[idempotent]`, so however many
//! deliveries arrive, each order is charged exactly once and every delivery gets the same
//! receipt.
//!
//! Run it with `cargo run --example payments` (no setup: the store is in memory).

#[path = "support/simulation.rs"]
mod simulation;

use idem::{Idempotency, MemoryStore};

#[tokio::main]
async fn main() {
    let idem = Idempotency::new(MemoryStore::new());
    if !simulation::simulate(vec![idem]).await {
        std::process::exit(1);
    }
}
