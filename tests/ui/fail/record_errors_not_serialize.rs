#[derive(Debug)]
struct Declined;

impl From<idem::Error> for Declined {
    fn from(_: idem::Error) -> Self {
        Declined
    }
}

#[idem::idempotent(key = id, record_errors)]
async fn charge(id: u64) -> Result<u64, Declined> {
    Ok(id)
}

fn main() {}
