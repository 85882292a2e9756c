#[idem::idempotent(key = id, transaction = conn)]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
