struct Receipt;

#[idem::idempotent(key = id)]
async fn charge(id: u64) -> Result<Receipt, idem::Error> {
    let _ = id;
    Ok(Receipt)
}

fn main() {}
