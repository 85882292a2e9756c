#[idem::idempotent(key = id, namespace = "pay:ments")]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
