// A connection argument that is not a PostgreSQL connection: one error each, at its type.

#[idem::idempotent(key = id, transaction = conn)]
async fn by_value(mut conn: u64, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idem::idempotent(key = id, transaction = conn)]
async fn by_reference(conn: &mut String, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
