//! With a WARN-level filter (`RUST_LOG=warn`) the `idem.call` span (INFO) is disabled: a warning
//! must carry its call's namespace, key hash and fence itself. A process of its own, for its
//! global subscriber.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_core::testing::FaultyStore;
use idem_core::{Call, Error, Idempotency, MemoryStore};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// Each event's fields, as text.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<HashMap<String, String>>>>);
impl<S> tracing_subscriber::Layer<S> for Warnings
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(HashMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.insert(f.name().to_owned(), format!("{v:?}"));
            }
        }
        let mut fields = Fields(HashMap::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[test]
fn lease_lost_warning_has_call_context_at_warn_level() {
    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry()
        .with(LevelFilter::WARN)
        .with(warnings.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = std::sync::Arc::new(FaultyStore::new(MemoryStore::new()));
        store.leases_lost.store(true, Ordering::SeqCst);
        let idem = Idempotency::from_arc(store.clone());
        let lost = idem
            .run(
                Call::new("pay", "order-6").lease(Duration::from_millis(300)),
                async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    // Another caller takes the lapsed key over and keeps it.
                    let request = idem_core::ClaimRequest::new(
                        "idem:pay:order-6",
                        idem_core::AttemptId::random(),
                        b"",
                        Duration::from_secs(30),
                    );
                    idem_core::Store::claim(&*store, request).await.unwrap();
                    Ok::<u32, Error>(1)
                },
            )
            .await;
        assert!(matches!(lost, Err(Error::LeaseLost { .. })));
    });
    let seen = warnings.0.lock().unwrap().clone();
    let warning = seen
        .iter()
        .find(|fields| {
            fields
                .get("message")
                .is_some_and(|m| m.contains("lease_lost"))
        })
        .unwrap_or_else(|| panic!("no lease_lost warning in {seen:?}"));
    assert!(
        warning
            .get("idem.namespace")
            .is_some_and(|ns| ns.contains("pay")),
        "{warning:?}"
    );
    assert_eq!(
        warning.get("idem.key_hash").map(String::len),
        Some(18),
        "{warning:?}"
    );
    assert!(warning.contains_key("idem.fence"), "{warning:?}");
}
