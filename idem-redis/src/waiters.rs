//! Wake-ups for waiting duplicates: the complete and release scripts `PUBLISH` on the key's
//! channel, and one shared subscriber connection per store dispatches those messages to the
//! waiters of that key. Without a subscriber (none configured, or it failed), waiters poll.
//!
//! Every step that talks to the server is bounded in time, and no lock is held across one: a
//! subscriber connection that goes silent (half-open, as after a NAT or load balancer drops an
//! idle connection) is retired when a subscription gets no answer, and waiters poll until a new
//! one is connected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// How long connecting the subscriber may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the server may take to confirm a subscription before the subscriber is retired.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, waiters poll for this long before the next try.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

type Registry = Arc<Mutex<HashMap<String, (Arc<Notify>, usize)>>>;

/// The subscriber side of a store.
pub(crate) struct Waiters {
    client: Option<redis::Client>,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    subscriber: Option<Subscriber>,
    /// A connect is under way: other waiters poll meanwhile instead of queueing behind it.
    connecting: bool,
    /// No connect before this, after one failed.
    next_attempt: Option<Instant>,
}

#[derive(Clone)]
struct Subscriber {
    sink: PubSubSink,
    registry: Registry,
    alive: Arc<AtomicBool>,
    dispatcher: AbortHandle,
}

impl Subscriber {
    /// Stops using this connection: its dispatcher is stopped and its waiters are woken, to
    /// re-check the key themselves.
    fn retire(&self) {
        self.alive.store(false, Ordering::Relaxed);
        self.dispatcher.abort();
        wake_all(&self.registry);
    }
}

/// A live subscription to one channel; unsubscribes when the last one for it is dropped.
pub(crate) struct Subscription {
    pub(crate) changed: Arc<Notify>,
    channel: String,
    subscriber: Subscriber,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below leaves the data whole before anything can panic.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wake_all(registry: &Registry) {
    for (changed, _) in lock(registry).values() {
        changed.notify_waiters();
    }
}

/// Clears `connecting` however the connect ends, a dropped (cancelled) waiter included.
struct Connecting<'a>(&'a Mutex<Slot>);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        lock(self.0).connecting = false;
    }
}

impl Waiters {
    pub(crate) fn new(client: Option<redis::Client>) -> Self {
        Waiters {
            client,
            slot: Mutex::new(Slot::default()),
        }
    }

    /// Subscribes to `channel`, taking at most about `within`; `None` when no subscriber can be
    /// had now (the caller polls).
    pub(crate) async fn subscribe(&self, channel: &str, within: Duration) -> Option<Subscription> {
        let started = Instant::now();
        let subscriber = self.subscriber(within).await?;
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
        let budget = within.saturating_sub(started.elapsed());
        let mut sink = subscriber.sink.clone();
        match tokio::time::timeout(budget.min(SUBSCRIBE_TIMEOUT), sink.subscribe(channel)).await {
            Ok(Ok(())) => Some(subscription),
            // The caller's own budget ran out first: that says nothing of the connection.
            Err(_) if budget < SUBSCRIBE_TIMEOUT => None,
            // No answer in time: the connection is silent or broken. Retire it; the next waiter
            // connects a new one.
            Ok(Err(_)) | Err(_) => {
                subscriber.retire();
                None
            }
        }
    }

    /// The shared subscriber, (re)connected when it is missing or its connection died; `None`
    /// while another waiter connects, shortly after a failed connect, or when connecting takes
    /// longer than `within` or [`CONNECT_TIMEOUT`].
    async fn subscriber(&self, within: Duration) -> Option<Subscriber> {
        let client = self.client.as_ref()?;
        {
            let mut slot = lock(&self.slot);
            if let Some(subscriber) = &slot.subscriber {
                if subscriber.alive.load(Ordering::Relaxed) {
                    return Some(subscriber.clone());
                }
                subscriber.retire();
                slot.subscriber = None;
            }
            if slot.connecting || slot.next_attempt.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            slot.connecting = true;
        }
        let connecting = Connecting(&self.slot);
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT.min(within), client.get_async_pubsub()).await;
        // Only a failure of the server's (not the end of the caller's budget) delays the next try.
        let (subscriber, failed) = match connected {
            Ok(Ok(pubsub)) => (Some(start(pubsub)), false),
            Ok(Err(_)) => (None, true),
            Err(_) => (None, within >= CONNECT_TIMEOUT),
        };
        let mut slot = lock(&self.slot);
        slot.next_attempt = failed.then(|| Instant::now() + RECONNECT_AFTER);
        slot.subscriber.clone_from(&subscriber);
        drop(slot);
        drop(connecting);
        subscriber
    }
}

/// Starts dispatching a new connection's messages to the waiters of their channels.
fn start(pubsub: redis::aio::PubSub) -> Subscriber {
    let (sink, mut stream) = pubsub.split();
    let registry: Registry = Arc::default();
    let alive = Arc::new(AtomicBool::new(true));
    let dispatcher = {
        let (registry, alive) = (registry.clone(), alive.clone());
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let registry = lock(&registry);
                if let Some((changed, _)) = registry.get(message.get_channel_name()) {
                    changed.notify_waiters();
                }
            }
            alive.store(false, Ordering::Relaxed);
            // Wake everyone: their wait ends early and they re-check the state themselves.
            wake_all(&registry);
        })
        .abort_handle()
    };
    Subscriber {
        sink,
        registry,
        alive,
        dispatcher,
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
        if last && self.subscriber.alive.load(Ordering::Relaxed) {
            let mut sink = self.subscriber.sink.clone();
            let channel = std::mem::take(&mut self.channel);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // Bounded like every other exchange with the server, so a silent connection
                // leaves no task behind.
                runtime.spawn(async move {
                    let _ =
                        tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.unsubscribe(channel)).await;
                });
            }
        }
    }
}
