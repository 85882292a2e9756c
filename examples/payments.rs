//! A payment service under at-least-once delivery.
//!
//! A broker delivers each order one to four times, often concurrently, and redelivers whenever
//! the handler fails (here: a flaky gateway). `charge` is `#[idempotent]`, so however many
//! deliveries arrive, each order is charged exactly once and every delivery gets the same
//! receipt.
//!
//! Run it with `cargo run --example payments` (no setup: it uses the in-memory store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{idempotent, Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: String,
    cents: u64,
    charge_id: u32,
}

#[derive(Debug)]
enum PaymentError {
    GatewayUnavailable,
    Idempotency(idem::Error),
}

impl From<idem::Error> for PaymentError {
    fn from(err: idem::Error) -> Self {
        PaymentError::Idempotency(err)
    }
}

/// The downstream effect we must not repeat: it records every charge it makes.
#[derive(Default)]
struct Gateway {
    charges: Mutex<HashMap<String, u32>>,
    next_charge_id: AtomicU32,
    /// Orders whose first attempt fails (the gateway times out before charging).
    flaky: Mutex<Vec<String>>,
}

impl Gateway {
    async fn charge(&self, order: &Order) -> Result<Receipt, PaymentError> {
        tokio::time::sleep(Duration::from_millis(20)).await; // the network round trip
        {
            let mut flaky = lock(&self.flaky);
            if let Some(at) = flaky.iter().position(|id| *id == order.id) {
                flaky.remove(at);
                return Err(PaymentError::GatewayUnavailable);
            }
        }
        *lock(&self.charges).entry(order.id.clone()).or_default() += 1;
        Ok(Receipt {
            order: order.id.clone(),
            cents: order.cents,
            charge_id: self.next_charge_id.fetch_add(1, Ordering::SeqCst) + 1,
        })
    }
}

struct PaymentService {
    idem: Idempotency,
    gateway: Gateway,
    executions: AtomicU32,
}

impl PaymentService {
    #[idempotent(key = order.id, using = &self.idem, fingerprint = order)]
    async fn charge(&self, order: &Order) -> Result<Receipt, PaymentError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        self.gateway.charge(order).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small deterministic generator, so every run shows the same story.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::main]
async fn main() {
    let service = Arc::new(PaymentService {
        idem: Idempotency::new(MemoryStore::new()),
        gateway: Gateway::default(),
        executions: AtomicU32::new(0),
    });
    let mut random = Lcg(7);
    let orders: Vec<Order> = (1..=20)
        .map(|i| Order {
            id: format!("order-{i:02}"),
            cents: 500 + 125 * i,
        })
        .collect();
    for order in orders.iter().filter(|_| random.below(4) == 0) {
        lock(&service.gateway.flaky).push(order.id.clone());
    }

    let deliveries = Arc::new(AtomicU32::new(0));
    let redeliveries = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for order in &orders {
        let copies = 1 + random.below(4);
        for _ in 0..copies {
            let jitter = Duration::from_millis(random.below(40));
            let (service, order) = (service.clone(), order.clone());
            let (deliveries, redeliveries) = (deliveries.clone(), redeliveries.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                // The broker's at-least-once loop: redeliver until the handler succeeds.
                loop {
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    match service.charge(&order).await {
                        Ok(receipt) => return receipt,
                        Err(err) => {
                            if let PaymentError::Idempotency(err) = &err {
                                eprintln!("delivery of {} failed: {err}", order.id);
                            }
                            redeliveries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
    }
    let mut receipts: HashMap<String, Vec<Receipt>> = HashMap::new();
    for task in tasks {
        match task.await {
            Ok(receipt) => receipts
                .entry(receipt.order.clone())
                .or_default()
                .push(receipt),
            Err(err) => panic!("a delivery task failed: {err}"),
        }
    }

    let charges = lock(&service.gateway.charges).clone();
    let charged_once = orders
        .iter()
        .filter(|o| charges.get(&o.id) == Some(&1))
        .count();
    let same_receipt = receipts
        .values()
        .filter(|rs| rs.iter().all(|r| *r == rs[0]))
        .count();
    println!("orders:              {}", orders.len());
    println!(
        "deliveries:          {} ({} redeliveries after gateway errors)",
        deliveries.load(Ordering::SeqCst),
        redeliveries.load(Ordering::SeqCst)
    );
    println!(
        "handler executions:  {} (the rest were replays or waited for the first delivery)",
        service.executions.load(Ordering::SeqCst)
    );
    println!(
        "charges:             {} orders charged exactly once, {} charged twice or more",
        charged_once,
        orders.len() - charged_once
    );
    println!(
        "receipts:            {same_receipt} of {} orders gave every delivery the same receipt",
        orders.len()
    );
    assert_eq!(
        charged_once,
        orders.len(),
        "every order is charged exactly once"
    );
    assert_eq!(
        same_receipt,
        orders.len(),
        "every delivery gets the recorded receipt"
    );
    println!("every order was charged exactly once");
}
