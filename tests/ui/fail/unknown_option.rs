#[idem::idempotent(key = id, timeout = "1s")]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
