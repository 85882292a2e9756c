//! Native `async fn` in traits (default bodies and impls) and `#[async_trait]` impls.
#![deny(warnings)]

use async_trait::async_trait;
use idem::{idempotent, Idempotency};

trait Payments {
    fn idem(&self) -> &Idempotency;

    #[idempotent(key = id, using = self.idem())]
    async fn refund(&self, id: u64) -> Result<u64, idem::Error> {
        Ok(id)
    }

    async fn charge(&self, id: u64) -> Result<u64, idem::Error>;
}

struct Stripe(Idempotency);

impl Payments for Stripe {
    fn idem(&self) -> &Idempotency {
        &self.0
    }

    #[idempotent(key = id, using = &self.0)]
    async fn charge(&self, id: u64) -> Result<u64, idem::Error> {
        Ok(id * 2)
    }
}

#[async_trait]
trait Ledger {
    async fn post(&self, entry: &str, cents: i64) -> Result<i64, idem::Error>;
}

struct Books {
    idem: Idempotency,
}

#[async_trait]
impl Ledger for Books {
    #[idempotent(key = entry, using = &self.idem)]
    async fn post(&self, entry: &str, cents: i64) -> Result<i64, idem::Error> {
        if cents < 0 {
            return Ok(0);
        }
        Ok(cents + entry.len() as i64)
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let idem = Idempotency::new(idem::MemoryStore::new());
        let stripe = Stripe(idem.clone());
        assert_eq!(stripe.charge(2).await.unwrap(), 4);
        assert_eq!(stripe.refund(3).await.unwrap(), 3);
        let books: Box<dyn Ledger + Send + Sync> = Box::new(Books { idem });
        assert_eq!(books.post("e", 10).await.unwrap(), 11);
        assert_eq!(books.post("e", 99).await.unwrap(), 11, "replayed");
    });
}
