//! The `tracing` span of each call: its outcome, a hash of the key (never the key), its store
//! operations as child spans, and warnings for what needs attention (a lost lease, a failed
//! release). In a test file of its own:
//! the subscriber is the process's global one, so that no other test registers the callsites
//! first under no subscriber.

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

fn ok(value: u32) -> Result<u32, Error> {
    Ok(value)
}

/// Span fields and events, as a subscriber records them.
#[derive(Default, Clone)]
struct Captured(Arc<Mutex<Vec<(String, Fields)>>>);

/// A span's or an event's fields, as text.
type Fields = HashMap<String, String>;

struct FieldVisitor<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S> tracing_subscriber::Layer<S> for Captured
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        let fields = extensions.get_mut::<HashMap<String, String>>().unwrap();
        values.record(&mut FieldVisitor(fields));
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut FieldVisitor(&mut fields));
        let level = event.metadata().level().to_string();
        self.0
            .lock()
            .unwrap()
            .push((format!("event {level}"), fields));
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span
            .extensions()
            .get::<HashMap<String, String>>()
            .cloned()
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((format!("span {}", span.name()), fields));
    }
}

#[test]
fn spans_carry_the_outcome_and_a_hash_of_the_key_never_the_key() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        runtime.block_on(async {
            let store = Arc::new(FaultyStore::new(MemoryStore::new()));
            let idem = Idempotency::from_arc(store.clone());
            let call = || Call::new("traced", "customer-42@example.com");
            idem.run(call(), async { ok(1) }).await.unwrap();
            idem.run(call(), async { ok(1) }).await.unwrap();
            store.leases_lost.store(true, Ordering::SeqCst);
            let _ = idem
                .run(
                    Call::new("traced", "lost").lease(Duration::from_millis(300)),
                    async {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        take_over(&*store, "idem:traced:lost").await;
                        ok(2)
                    },
                )
                .await;
            store.leases_lost.store(false, Ordering::SeqCst);
            // A release that fails leaves the key held for a lease: a warning.
            store.releases_fail.store(true, Ordering::SeqCst);
            let _ = idem
                .run(Call::new("traced", "declined"), async {
                    Err::<u32, _>(Error::invalid_key("declined"))
                })
                .await;
        });
    }
    let captured = captured.0.lock().unwrap().clone();
    let calls: Vec<_> = captured
        .iter()
        .filter(|(name, _)| name == "span idem.call")
        .map(|(_, fields)| fields)
        .collect();
    let outcomes: Vec<_> = calls.iter().map(|f| f["idem.outcome"].as_str()).collect();
    assert_eq!(outcomes, ["executed", "replayed", "lease_lost", "released"]);
    assert!(
        captured.iter().any(|(name, fields)| name == "event WARN"
            && fields
                .get("message")
                .is_some_and(|m| m.contains("could not release"))),
        "a failed release is a warning: {captured:?}"
    );
    assert_eq!(calls[0]["idem.namespace"], "traced");
    assert!(calls[0].contains_key("idem.fence"));
    assert_eq!(
        calls[1].get("idem.fence"),
        calls[0].get("idem.fence"),
        "a replay's span names the execution it replays"
    );
    assert_eq!(calls[0]["idem.key_hash"], calls[1]["idem.key_hash"]);
    assert_eq!(calls[2]["error.type"], "lease_lost");
    let everything = format!("{captured:?}");
    assert!(
        !everything.contains("customer-42"),
        "the raw key must not be traced: {everything}"
    );
    let operations: Vec<_> = captured
        .iter()
        .filter(|(name, _)| name == "span idem.store")
        .map(|(_, fields)| fields["db.operation"].as_str())
        .collect();
    assert!(
        operations.contains(&"claim") && operations.contains(&"complete"),
        "{operations:?}"
    );
    assert!(
        captured.iter().any(|(name, fields)| name == "event WARN"
            && fields
                .get("message")
                .is_some_and(|m| m.contains("lease_lost"))),
        "a lost lease is a warning: {captured:?}"
    );
}

/// Another caller takes `key` over, its lease having lapsed, and keeps it: the lapsed call's
/// lease is lost (a key still free would take its record under a fresh claim).
async fn take_over(store: &dyn idem_core::Store, key: &str) {
    let request = idem_core::ClaimRequest::new(
        key,
        idem_core::AttemptId::random(),
        b"",
        Duration::from_secs(30),
    );
    let taken = store.claim(request).await.unwrap();
    assert!(
        matches!(taken, idem_core::ClaimOutcome::Acquired { .. }),
        "{taken:?}"
    );
}
