//! Every signature shape keeps working: generics, where clauses, receivers, borrowed
//! arguments, `?` and early `return`, and the future stays `Send`.
#![deny(warnings)]

use std::fmt::Display;

use idem::{idempotent, Idempotency, MemoryStore};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug)]
enum AppError {
    Idem(idem::Error),
    Parse(std::num::ParseIntError),
}
impl From<idem::Error> for AppError {
    fn from(err: idem::Error) -> Self {
        AppError::Idem(err)
    }
}
impl From<std::num::ParseIntError> for AppError {
    fn from(err: std::num::ParseIntError) -> Self {
        AppError::Parse(err)
    }
}

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

struct Service {
    idem: Idempotency,
    charged: u64,
}

impl Service {
    #[idempotent(key = order.id, using = &self.idem, fingerprint = order)]
    async fn charge(&self, order: &Order) -> Result<u64, AppError> {
        if order.cents == 0 {
            return Ok(0);
        }
        let parsed: u64 = "7".parse()?;
        Ok(order.cents + parsed)
    }

    #[idempotent(key = id, using = &self.idem)]
    async fn charge_mut(&mut self, id: u32) -> Result<u64, AppError> {
        self.charged += u64::from(id);
        Ok(self.charged)
    }

    #[idempotent(key = id, using = &self.idem)]
    async fn consume(self, id: u32) -> Result<u64, AppError> {
        Ok(self.charged + u64::from(id))
    }

    #[idempotent(key = "static-key", using = &self.idem)]
    async fn no_args(&self) -> Result<(), idem::Error> {
        Ok(())
    }
}

#[idempotent(key = key)]
async fn generic<K, T>(key: K, value: T) -> Result<T, idem::Error>
where
    K: Display + Send,
    T: Serialize + DeserializeOwned + Send,
{
    Ok(value)
}

#[idempotent(key = format!("{}-{}", prefix, n))]
async fn borrowed<'a>(prefix: &'a str, n: &'a u32, names: &[String]) -> Result<usize, idem::Error> {
    Ok(prefix.len() + *n as usize + names.len())
}

#[idempotent(key = id)]
pub(crate) async fn with_inner_attribute(id: u32) -> Result<u32, idem::Error> {
    #![allow(clippy::identity_op)]
    Ok(id + 0)
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    let service = Service {
        idem: Idempotency::new(MemoryStore::new()),
        charged: 0,
    };
    let order = Order { id: "o".into(), cents: 1 };
    assert_send(service.charge(&order));
    assert_send(generic("k", 1u8));
    assert_send(borrowed("p", &1, &[]));
    assert_send(with_inner_attribute(1));
    assert_send(service.no_args());
    let mut service = service;
    assert_send(service.charge_mut(1));
    assert_send(service.consume(1));
}
