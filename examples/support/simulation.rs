//! The payment simulation shared by the examples: a broker that delivers every order one to
//! four times, often concurrently and to different service instances, and redelivers whenever
//! the handler fails (a flaky gateway). Each instance's `charge` is `#[idempotent]`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{idempotent, Idempotency};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) id: String,
    pub(crate) cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) order: String,
    pub(crate) cents: u64,
    pub(crate) charge_id: u32,
}

#[derive(Debug)]
pub(crate) enum PaymentError {
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
pub(crate) struct Gateway {
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

/// One instance of the payment service.
pub(crate) struct PaymentService {
    idem: Idempotency,
    gateway: Arc<Gateway>,
    executions: Arc<AtomicU32>,
}

impl PaymentService {
    #[idempotent(key = order.id, using = &self.idem, fingerprint = order)]
    pub(crate) async fn charge(&self, order: &Order) -> Result<Receipt, PaymentError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        self.gateway.charge(order).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small deterministic generator, so every run tells the same story.
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

/// Delivers 20 orders at least once each across `instances` (one runtime per service instance)
/// and prints what happened. Returns true when every order was charged exactly once and every
/// delivery got the same receipt.
pub(crate) async fn simulate(instances: Vec<Idempotency>) -> bool {
    let gateway = Arc::new(Gateway::default());
    let executions = Arc::new(AtomicU32::new(0));
    let services: Vec<Arc<PaymentService>> = instances
        .into_iter()
        .map(|idem| {
            Arc::new(PaymentService {
                idem,
                gateway: gateway.clone(),
                executions: executions.clone(),
            })
        })
        .collect();
    let mut random = Lcg(7);
    let orders: Vec<Order> = (1..=20)
        .map(|i| Order {
            id: format!("order-{i:02}"),
            cents: 500 + 125 * i,
        })
        .collect();
    for order in orders.iter().filter(|_| random.below(4) == 0) {
        lock(&gateway.flaky).push(order.id.clone());
    }

    let deliveries = Arc::new(AtomicU32::new(0));
    let redeliveries = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for order in &orders {
        for _ in 0..1 + random.below(4) {
            let jitter = Duration::from_millis(random.below(40));
            let mut instance = random.below(services.len() as u64) as usize;
            let (services, order) = (services.clone(), order.clone());
            let (deliveries, redeliveries) = (deliveries.clone(), redeliveries.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                // The broker's at-least-once loop: redeliver, to the next instance, until the
                // handler succeeds.
                loop {
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    match services[instance].charge(&order).await {
                        Ok(receipt) => return receipt,
                        Err(err) => {
                            if let PaymentError::Idempotency(err) = &err {
                                eprintln!("delivery of {} failed: {err}", order.id);
                            }
                            redeliveries.fetch_add(1, Ordering::SeqCst);
                            instance = (instance + 1) % services.len();
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
            Err(err) => {
                eprintln!("a delivery task failed: {err}");
                return false;
            }
        }
    }

    let charges = lock(&gateway.charges).clone();
    let charged_once = orders
        .iter()
        .filter(|o| charges.get(&o.id) == Some(&1))
        .count();
    let same_receipt = receipts
        .values()
        .filter(|rs| rs.iter().all(|r| *r == rs[0]))
        .count();
    println!("service instances:   {}", services.len());
    println!("orders:              {}", orders.len());
    println!(
        "deliveries:          {} ({} redeliveries after errors)",
        deliveries.load(Ordering::SeqCst),
        redeliveries.load(Ordering::SeqCst)
    );
    println!(
        "handler executions:  {} (the other deliveries were replayed or waited for the first)",
        executions.load(Ordering::SeqCst)
    );
    println!(
        "charges:             {charged_once} orders charged exactly once, {} not",
        orders.len() - charged_once
    );
    println!(
        "receipts:            {same_receipt} of {} orders gave every delivery the same receipt",
        orders.len()
    );
    let ok = charged_once == orders.len() && same_receipt == orders.len();
    if ok {
        println!("every order was charged exactly once");
    }
    ok
}
