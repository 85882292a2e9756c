//! Withdrawals whose outcome may be unknown, held until an operator resolves them.
//!
//! The bank sometimes times out after moving the money. A withdrawal that times out must not be
//! run again seconds later (the money may have moved), nor ever without someone checking: the
//! runtime holds its key with `UnknownHold::UntilResolved`, and every later delivery fails with
//! `Error::OutcomeUnknown` until an operator, having asked the bank, resolves it with the `idem`
//! command (see "Operating idem" in the README).
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example withdraw --features redis
//! idem --store redis://127.0.0.1:6379 list --namespace withdraw
//! idem --store redis://127.0.0.1:6379 resolve withdraw w-2 --record '{"id":"w-2","cents":2500}'
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example withdraw --features redis
//! ```

use idem::redis::RedisStore;
use idem::{Call, Disposition, Error, Idempotency, UnknownHold};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Withdrawal {
    id: String,
    cents: u64,
}

#[derive(Debug)]
enum BankError {
    /// No answer from the bank: the money may have moved.
    TimedOut,
    Idempotency(Error),
}

impl From<Error> for BankError {
    fn from(err: Error) -> Self {
        Self::Idempotency(err)
    }
}

/// The bank: `w-2` times out on its first attempt.
async fn bank_withdraw(id: &str, cents: u64, attempt: u32) -> Result<Withdrawal, BankError> {
    if id == "w-2" && attempt == 1 {
        return Err(BankError::TimedOut);
    }
    Ok(Withdrawal {
        id: id.to_owned(),
        cents,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let idem = Idempotency::new(RedisStore::connect(&url).await?)
        .with_unknown_hold(UnknownHold::UntilResolved);
    let on_error = |err: &BankError| match err {
        BankError::TimedOut => Disposition::OutcomeUnknown,
        BankError::Idempotency(_) => Disposition::Release,
    };
    for (id, cents) in [("w-1", 1000), ("w-2", 2500), ("w-3", 400)] {
        let call = Call::new("withdraw", id);
        let result = idem
            .run_with(call, on_error, bank_withdraw(id, cents, 1))
            .await;
        match result {
            Ok(withdrawal) => println!("{id}: {withdrawal:?}"),
            Err(BankError::TimedOut) => println!("{id}: the bank timed out; the key is held"),
            Err(BankError::Idempotency(err)) => println!("{id}: {err}"),
        }
    }
    Ok(())
}
