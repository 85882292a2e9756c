//! A payment service under at-least-once delivery, on the in-memory store.
//!
//! A broker delivers each order one to four times, often concurrently, and redelivers whenever
//! the handler fails: the gateway sometimes refuses before charging (a retry may charge), and
//! sometimes charges but its answer is lost (a timeout: the outcome is unknown). `charge` is
//! `#[idempotent]`, classifies a timeout as `OnError::OutcomeUnknown`, and sends the gateway
//! `downstream_key("gateway")`, the same for every attempt of an order, so however many
//! deliveries arrive, each order is charged exactly once and every delivery gets the same
//! receipt. The output counts how each delivery was served (`idem::served`).
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
