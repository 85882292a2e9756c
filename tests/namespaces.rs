//! Default namespaces: two functions of the same name never share records, whether they live in
//! different modules or are methods of different types; `namespace = "..."` pins one.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::atomic::{AtomicU32, Ordering};

use idem::{idempotent, Error, Idempotency, MemoryStore};

static BILLING_RUNS: AtomicU32 = AtomicU32::new(0);
static EMAIL_RUNS: AtomicU32 = AtomicU32::new(0);

mod billing {
    use super::*;

    #[idempotent(key = id, using = idem)]
    pub async fn handle(idem: &Idempotency, id: u32) -> Result<String, Error> {
        BILLING_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(format!("billed {id}"))
    }
}

mod email {
    use super::*;

    #[idempotent(key = id, using = idem)]
    pub async fn handle(idem: &Idempotency, id: u32) -> Result<u64, Error> {
        EMAIL_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(u64::from(id) * 2)
    }
}

#[tokio::test]
async fn functions_of_the_same_name_in_different_modules_do_not_share_records() {
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(billing::handle(&idem, 17).await.unwrap(), "billed 17");
    assert_eq!(email::handle(&idem, 17).await.unwrap(), 34);
    assert_eq!(billing::handle(&idem, 17).await.unwrap(), "billed 17");
    assert_eq!(email::handle(&idem, 17).await.unwrap(), 34);
    assert_eq!(BILLING_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(EMAIL_RUNS.load(Ordering::SeqCst), 1);
}

trait Handler {
    async fn handle(&self, id: u32) -> Result<String, Error>;
}

struct Refunds {
    idem: Idempotency,
    runs: AtomicU32,
}

struct Receipts {
    idem: Idempotency,
    runs: AtomicU32,
}

impl Handler for Refunds {
    #[idempotent(key = id, using = &self.idem)]
    async fn handle(&self, id: u32) -> Result<String, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(format!("refund {id}"))
    }
}

impl Handler for Receipts {
    #[idempotent(key = id, using = &self.idem)]
    async fn handle(&self, id: u32) -> Result<String, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(format!("receipt {id}"))
    }
}

impl Refunds {
    /// An associated function without a receiver, named like the trait method.
    #[idempotent(key = id, using = idem)]
    async fn audit(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

impl Receipts {
    #[idempotent(key = id, using = idem)]
    async fn audit(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id + 1000)
    }
}

#[tokio::test]
async fn methods_of_different_types_do_not_share_records() {
    let idem = Idempotency::new(MemoryStore::new());
    let refunds = Refunds {
        idem: idem.clone(),
        runs: AtomicU32::new(0),
    };
    let receipts = Receipts {
        idem: idem.clone(),
        runs: AtomicU32::new(0),
    };
    for _ in 0..2 {
        assert_eq!(refunds.handle(5).await.unwrap(), "refund 5");
        assert_eq!(receipts.handle(5).await.unwrap(), "receipt 5");
    }
    assert_eq!(refunds.runs.load(Ordering::SeqCst), 1);
    assert_eq!(receipts.runs.load(Ordering::SeqCst), 1);

    let (refund_audits, receipt_audits) = (AtomicU32::new(0), AtomicU32::new(0));
    for _ in 0..2 {
        assert_eq!(Refunds::audit(&idem, 9, &refund_audits).await.unwrap(), 9);
        assert_eq!(
            Receipts::audit(&idem, 9, &receipt_audits).await.unwrap(),
            1009
        );
    }
    assert_eq!(refund_audits.load(Ordering::SeqCst), 1);
    assert_eq!(receipt_audits.load(Ordering::SeqCst), 1);
}

mod before_the_move {
    use super::*;

    #[idempotent(key = id, using = idem, namespace = "charge")]
    pub async fn charge(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

mod after_the_move {
    use super::*;

    #[idempotent(key = id, using = idem, namespace = "charge")]
    pub async fn charge_order(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id + 1)
    }
}

#[tokio::test]
async fn a_pinned_namespace_keeps_records_across_a_move_or_rename() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    assert_eq!(before_the_move::charge(&idem, 3, &runs).await.unwrap(), 3);
    // The same function, moved and renamed: its pinned namespace finds the old record.
    assert_eq!(
        after_the_move::charge_order(&idem, 3, &runs).await.unwrap(),
        3
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        idem.store_key("charge", "3").unwrap(),
        "idem:charge:3",
        "a pinned namespace is used as written"
    );
}
