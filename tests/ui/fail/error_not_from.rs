#[idem::idempotent(key = id)]
async fn charge(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
