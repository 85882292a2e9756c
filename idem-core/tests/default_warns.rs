//! The implicit in-memory default says so, once, loudly. A process of its own, for its global
//! subscriber and its process-wide default.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::{Arc, Mutex};

use idem_core::{default_runtime, Call, Error};
use tracing_subscriber::layer::SubscriberExt;

/// The messages of WARN events.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S> tracing_subscriber::Layer<S> for Warnings
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }
}

#[test]
fn the_implicit_memory_store_is_named_once_with_what_to_do() {
    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for order in 0..3 {
            let value = default_runtime()
                .run(Call::new("pay", order), async { Ok::<_, Error>(order) })
                .await
                .unwrap();
            assert_eq!(value, order);
        }
    });
    let seen = warnings.0.lock().unwrap().clone();
    let about_memory: Vec<&String> = seen
        .iter()
        .filter(|m| m.contains("process-wide in-memory store"))
        .collect();
    assert_eq!(about_memory.len(), 1, "once: {seen:?}");
    assert!(
        about_memory[0].contains("idem::install"),
        "{}",
        about_memory[0]
    );
    assert!(
        about_memory[0].contains("IDEM_REQUIRE_INSTALLED=1"),
        "{}",
        about_memory[0]
    );
}
