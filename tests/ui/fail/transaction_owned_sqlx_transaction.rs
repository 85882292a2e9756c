// An owned sqlx transaction would be dropped uncommitted by the function, and idem's record (a
// savepoint in it) with it: refused, at its type.
use idem::postgres::sqlx::{Postgres, Transaction};

#[idem::idempotent(key = id, transaction = tx)]
async fn book(mut tx: Transaction<'static, Postgres>, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
