#[idem::idempotent(key = id, ttl = "one day")]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idem::idempotent(key = id, lease = "0s")]
async fn zero(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}

#[idem::idempotent(key = id, lease = "100ms")]
async fn short_lease(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}
