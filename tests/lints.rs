//! Expanded code must compile cleanly under the strictest lints a user may set: clippy runs on
//! this file in CI (`cargo clippy --all-targets -- -D warnings`), rustc on every test run.
#![deny(warnings, clippy::all)]

use idem::{idempotent, Idempotency, MemoryStore};

struct Service {
    idem: Idempotency,
}

impl Service {
    #[idempotent(key = id, using = &self.idem, ttl = "1h", lease = "5s", on_in_progress = reject)]
    async fn method(&self, id: u32) -> Result<u32, idem::Error> {
        if id == 0 {
            return Ok(0);
        }
        Ok(id * 2)
    }
}

#[idempotent(key = name, fingerprint = (name, amount), record_errors)]
async fn free(name: &str, amount: u64) -> Result<u64, Declined> {
    if amount > 100 {
        return Err(Declined::TooMuch);
    }
    Ok(amount)
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Declined {
    TooMuch,
    Idem(String),
}

impl From<idem::Error> for Declined {
    fn from(err: idem::Error) -> Self {
        Self::Idem(err.to_string())
    }
}

#[tokio::test]
async fn lint_clean_functions_behave() {
    let service = Service {
        idem: Idempotency::new(MemoryStore::new()),
    };
    assert_eq!(service.method(4).await.unwrap(), 8);
    assert_eq!(free("a", 500).await, Err(Declined::TooMuch));
    assert_eq!(free("a", 500).await, Err(Declined::TooMuch));
    assert_eq!(free("b", 5).await, Ok(5));
}
