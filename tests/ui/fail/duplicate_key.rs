#[idem::idempotent(key = id, key = id)]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
