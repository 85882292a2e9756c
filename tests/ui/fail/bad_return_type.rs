#[idem::idempotent(key = id)]
async fn charge(id: u64) -> u64 {
    id
}

#[idem::idempotent(key = id)]
async fn tuple(id: u64) -> (u64, u64) {
    (id, id)
}

fn main() {}
