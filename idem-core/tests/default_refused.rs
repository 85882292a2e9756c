//! With `require_installed`, the implicit in-memory default is refused: calls fail before their
//! body, saying what to do. A process of its own, for its process-wide default.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicUsize, Ordering};

use idem_core::{
    default_runtime, install, require_installed, Call, Error, Idempotency, MemoryStore,
};

#[tokio::test]
async fn a_required_runtime_that_was_not_installed_refuses_every_call() {
    require_installed();
    let runs = AtomicUsize::new(0);
    let refused = default_runtime()
        .run(Call::new("pay", "order-1"), async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(1)
        })
        .await;
    match refused {
        Err(Error::InvalidOption { reason, .. }) => {
            assert!(reason.contains("idem::install"), "{reason}");
        }
        other => panic!("expected InvalidOption, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the body did not run");
    // Too late to install: a default, once in place, is never switched under running calls.
    assert!(install(Idempotency::new(MemoryStore::new())).is_err());
}
