// errors: 2. rustc reports the classifier's signature twice: at `on_error` (its argument type)
// and at the return type (the bound on its output); the first points at the user's token.
#[derive(Debug)]
struct MyErr;

impl From<idem::Error> for MyErr {
    fn from(_: idem::Error) -> Self {
        MyErr
    }
}

// A classifier of another error type than the function's.
fn classify(_: &idem::Error) -> idem::Disposition {
    idem::Disposition::Release
}

#[idem::idempotent(key = id, on_error = classify)]
async fn charge(id: u64) -> Result<u64, MyErr> {
    Ok(id)
}

fn main() {}
