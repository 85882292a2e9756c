#[idem::idempotent(key = id, on_in_progress = retry)]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
