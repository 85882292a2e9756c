//! A payment service under at-least-once delivery.
//!
//! A broker delivers each order one to four times, often concurrently, and redelivers whenever
//! the handler fails. The gateway sometimes refuses before charging (a retry may charge), and
//! sometimes charges but its answer is lost (a timeout: the outcome is unknown). `charge` below
//! is `#[idempotent]`, classifies a timeout as `Disposition::OutcomeUnknown`, and sends the gateway
//! `downstream_key("gateway")`, the same for every attempt of an order, so however many
//! deliveries arrive, each order is charged exactly once and every delivery gets the same
//! receipt. The output counts how each delivery was served (`idem::served`).
//!
//! ```sh
//! cargo run --example payments                      # one instance, the in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example payments --features redis
//!                                                   # four instances sharing one Redis
//! ```
//!
//! The broker and the gateway, the world around the service, are in `support/broker.rs`.

#![allow(
    clippy::exit,
    reason = "an example ends with an exit code a script can read"
)]

#[path = "support/broker.rs"]
mod broker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use idem::{idempotent, Disposition, Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

/// What `charge` returns, recorded and replayed to every later delivery of the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: String,
    cents: u64,
    charge_id: u32,
}

#[derive(Debug)]
enum PaymentError {
    /// The gateway refused before charging: a retry may run again.
    GatewayUnavailable,
    /// No answer from the gateway: it may have charged.
    GatewayTimeout,
    /// idem's own failures (store unreachable, key reused with another order, ...).
    Idempotency(idem::Error),
}

impl From<idem::Error> for PaymentError {
    fn from(err: idem::Error) -> Self {
        Self::Idempotency(err)
    }
}

impl PaymentError {
    /// What each error means for a retry (`on_error`).
    fn means(&self) -> Disposition {
        match self {
            // The charge may have gone through: keep the claim for a lease, then let a retry
            // ask the gateway again with the same downstream key.
            Self::GatewayTimeout => Disposition::OutcomeUnknown,
            _ => Disposition::Release,
        }
    }
}

/// One instance of the payment service.
struct PaymentService {
    idem: Idempotency,
    gateway: Arc<broker::Gateway>,
    /// How often the body ran, across deliveries (the example's ground truth).
    executions: Arc<AtomicU32>,
}

impl PaymentService {
    /// Charges an order once, however often it is delivered. A gateway timeout is an unknown
    /// outcome: the claim is kept for the lease, then a redelivery runs the body again and
    /// sends the gateway the same downstream key, so the gateway does not charge twice.
    #[idempotent(key = order.id, using = &self.idem, fingerprint = order, lease = "1s", on_error = PaymentError::means)]
    async fn charge(&self, order: &Order) -> Result<Receipt, PaymentError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        let context = idem::context().ok_or(PaymentError::GatewayUnavailable)?;
        self.gateway
            .charge(order, &context.downstream_key("gateway"))
            .await
    }
}

#[tokio::main]
#[allow(
    clippy::exit,
    reason = "an example ends with an exit code a script can read"
)]
async fn main() {
    // `RUST_LOG=idem=debug` shows each call's outcome (idem traces every call; nothing is
    // printed unless a subscriber is installed).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let instances = match std::env::var("REDIS_URL") {
        Ok(url) => redis_instances(&url).await,
        Err(_) => vec![Idempotency::new(MemoryStore::new())],
    };
    if !broker::simulate(instances).await {
        std::process::exit(1);
    }
}

/// Four service instances, each with its own connection to the Redis at `url`, as separate
/// processes would have.
#[cfg(feature = "redis")]
async fn redis_instances(url: &str) -> Vec<Idempotency> {
    // A fresh prefix per run, so a second run charges again instead of replaying the first.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut instances = Vec::new();
    for _ in 0..4 {
        match idem::redis::RedisStore::connect(url).await {
            Ok(store) => instances.push(
                Idempotency::new(store)
                    .with_key_prefix(format!("idem-example:{run}:"))
                    .with_retention(std::time::Duration::from_secs(600)),
            ),
            Err(err) => {
                eprintln!("{err}\nstart Redis at {url} or change REDIS_URL");
                std::process::exit(2);
            }
        }
    }
    println!("Redis:               {url}");
    instances
}

#[cfg(not(feature = "redis"))]
async fn redis_instances(_url: &str) -> Vec<Idempotency> {
    eprintln!("REDIS_URL is set: run with `--features redis` to use Redis");
    std::process::exit(2);
}
