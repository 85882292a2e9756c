//! Wake-ups for waiting duplicates: the complete and release scripts `PUBLISH` on the key's
//! channel, and one shared subscriber connection per store dispatches those messages to the
//! waiters of that key. Without a subscriber (none configured, or it failed), waiters poll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::Notify;

type Registry = Arc<Mutex<HashMap<String, (Arc<Notify>, usize)>>>;

/// The subscriber side of a store.
pub(crate) struct Waiters {
    client: Option<redis::Client>,
    subscriber: tokio::sync::Mutex<Option<Subscriber>>,
}

#[derive(Clone)]
struct Subscriber {
    sink: PubSubSink,
    registry: Registry,
    alive: Arc<AtomicBool>,
}

/// A live subscription to one channel; unsubscribes when the last one for it is dropped.
pub(crate) struct Subscription {
    pub(crate) changed: Arc<Notify>,
    channel: String,
    subscriber: Subscriber,
}

fn lock(registry: &Registry) -> MutexGuard<'_, HashMap<String, (Arc<Notify>, usize)>> {
    // The map is only ever updated whole, so a poisoned lock still holds consistent data.
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Waiters {
    pub(crate) fn new(client: Option<redis::Client>) -> Self {
        Waiters {
            client,
            subscriber: tokio::sync::Mutex::new(None),
        }
    }

    /// Subscribes to `channel`; `None` when no subscriber can be had (the caller polls).
    pub(crate) async fn subscribe(&self, channel: &str) -> Option<Subscription> {
        let mut subscriber = self.subscriber().await?;
        let changed = {
            let mut registry = lock(&subscriber.registry);
            let entry = registry
                .entry(channel.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let subscription = Subscription {
            changed,
            channel: channel.to_owned(),
            subscriber: subscriber.clone(),
        };
        match subscriber.sink.subscribe(channel).await {
            Ok(()) => Some(subscription),
            Err(_) => {
                subscriber.alive.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// The shared subscriber, (re)connected when it is missing or its connection died.
    async fn subscriber(&self) -> Option<Subscriber> {
        let client = self.client.as_ref()?;
        let mut slot = self.subscriber.lock().await;
        if let Some(subscriber) = slot.as_ref() {
            if subscriber.alive.load(Ordering::Relaxed) {
                return Some(subscriber.clone());
            }
        }
        let pubsub = client.get_async_pubsub().await.ok()?;
        let (sink, mut stream) = pubsub.split();
        let registry: Registry = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let subscriber = Subscriber {
            sink,
            registry: registry.clone(),
            alive: alive.clone(),
        };
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let registry = lock(&registry);
                if let Some((changed, _)) = registry.get(message.get_channel_name()) {
                    changed.notify_waiters();
                }
            }
            alive.store(false, Ordering::Relaxed);
            // Wake everyone: their wait ends early and they re-check the state themselves.
            for (changed, _) in lock(&registry).values() {
                changed.notify_waiters();
            }
        });
        *slot = Some(subscriber.clone());
        Some(subscriber)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut registry = lock(&self.subscriber.registry);
            match registry.get_mut(&self.channel) {
                Some(entry) if entry.1 > 1 => {
                    entry.1 -= 1;
                    false
                }
                Some(_) => {
                    registry.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last {
            let mut sink = self.subscriber.sink.clone();
            let channel = std::mem::take(&mut self.channel);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = sink.unsubscribe(channel).await;
                });
            }
        }
    }
}
