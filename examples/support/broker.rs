//! The world around the payment example's service: a payment gateway that fails the way real
//! ones do, and a broker that delivers every order one to four times, often concurrently and to
//! different service instances, and redelivers whenever the handler fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{Idempotency, Served};

use crate::{Order, PaymentError, PaymentService, Receipt};

/// The downstream effect we must not repeat: a payment provider that, like real ones, takes an
/// idempotency key and answers a repeated key with the charge it already made.
#[derive(Default)]
pub(crate) struct Gateway {
    /// Charges made, per order.
    charges: Mutex<HashMap<String, u32>>,
    /// The receipt of every idempotency key seen.
    by_key: Mutex<HashMap<String, Receipt>>,
    /// Requests answered from `by_key`: repeats the gateway recognised.
    repeats: AtomicU32,
    next_charge_id: AtomicU32,
    /// Orders whose first attempt is refused before charging.
    unavailable: Mutex<Vec<String>>,
    /// Orders whose first attempt charges, but whose answer is lost (a timeout).
    timeouts: Mutex<Vec<String>>,
}

/// Removes `order` from `list`, telling whether it was there.
fn take(list: &Mutex<Vec<String>>, order: &str) -> bool {
    let mut list = lock(list);
    let found = list.iter().position(|id| id == order);
    found.map(|at| list.remove(at)).is_some()
}

impl Gateway {
    pub(crate) async fn charge(
        &self,
        order: &Order,
        idempotency_key: &str,
    ) -> Result<Receipt, PaymentError> {
        tokio::time::sleep(Duration::from_millis(20)).await; // the network round trip
        if take(&self.unavailable, &order.id) {
            return Err(PaymentError::GatewayUnavailable);
        }
        if let Some(receipt) = lock(&self.by_key).get(idempotency_key) {
            self.repeats.fetch_add(1, Ordering::SeqCst);
            return Ok(receipt.clone());
        }
        *lock(&self.charges).entry(order.id.clone()).or_default() += 1;
        let receipt = Receipt {
            order: order.id.clone(),
            cents: order.cents,
            charge_id: self.next_charge_id.fetch_add(1, Ordering::SeqCst) + 1,
        };
        lock(&self.by_key).insert(idempotency_key.to_owned(), receipt.clone());
        if take(&self.timeouts, &order.id) {
            return Err(PaymentError::GatewayTimeout);
        }
        Ok(receipt)
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
    for order in &orders {
        match random.below(6) {
            0 => lock(&gateway.unavailable).push(order.id.clone()),
            1 => lock(&gateway.timeouts).push(order.id.clone()),
            _ => {}
        }
    }
    let served: Arc<Mutex<HashMap<Served, u32>>> = Arc::default();

    let deliveries = Arc::new(AtomicU32::new(0));
    let redeliveries = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for order in &orders {
        for _ in 0..1 + random.below(4) {
            let jitter = Duration::from_millis(random.below(40));
            let mut instance = random.below(services.len() as u64) as usize;
            let (services, order) = (services.clone(), order.clone());
            let (deliveries, redeliveries) = (deliveries.clone(), redeliveries.clone());
            let served = served.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                // The broker's at-least-once loop: redeliver, to the next instance, until the
                // handler succeeds.
                loop {
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    // `served` tells this delivery's fate without changing `charge`.
                    let (result, how) = idem::served(services[instance].charge(&order)).await;
                    if let Some(how) = how {
                        *lock(&served).entry(how).or_default() += 1;
                    }
                    match result {
                        Ok(receipt) => return receipt,
                        Err(err) => {
                            match &err {
                                PaymentError::Idempotency(err @ idem::Error::InProgress { .. }) => {
                                    eprintln!("delivery of {}: {err}", order.id);
                                }
                                PaymentError::Idempotency(err) => {
                                    eprintln!("delivery of {} failed: {err}", order.id);
                                }
                                other => eprintln!("delivery of {}: {other:?}", order.id),
                            }
                            redeliveries.fetch_add(1, Ordering::SeqCst);
                            instance = (instance + 1) % services.len();
                            tokio::time::sleep(Duration::from_millis(200)).await;
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
    let served = lock(&served).clone();
    let count = |how: Served| served.get(&how).copied().unwrap_or(0);
    println!(
        "deliveries served:   {} executed, {} replayed, {} waited for the first, {} refused (in progress)",
        count(Served::Executed),
        count(Served::Replayed),
        count(Served::Waited),
        count(Served::NotRun)
    );
    println!(
        "gateway:             {} repeated requests recognised by their downstream key (after timeouts)",
        gateway.repeats.load(Ordering::SeqCst)
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
