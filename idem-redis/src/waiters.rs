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
/// How long a waiter waits for a subscriber being connected before it polls instead.
const CONNECT_WAIT: Duration = Duration::from_millis(100);
/// How long the server may take to confirm a subscription before the subscriber is retired.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, waiters poll for this long before the next try.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

type Registry = Arc<Mutex<HashMap<String, (Arc<Notify>, usize)>>>;

/// The subscriber side of a store.
pub(crate) struct Waiters {
    client: Option<redis::Client>,
    slot: Arc<Mutex<Slot>>,
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

/// Clears `connecting` however the connect task ends: done, or dropped with its runtime (a store
/// shared between runtimes outlives them) or by a panic, which then also delays the next try.
struct Connecting(Arc<Mutex<Slot>>);

impl Drop for Connecting {
    fn drop(&mut self) {
        let mut slot = lock(&self.0);
        slot.connecting = false;
        if slot.subscriber.is_none() && slot.next_attempt.is_none() {
            slot.next_attempt = Some(Instant::now() + RECONNECT_AFTER);
        }
    }
}

impl Waiters {
    pub(crate) fn new(client: Option<redis::Client>) -> Self {
        Self {
            client,
            slot: Arc::default(),
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
        // The server's answer is awaited (and the connection judged) by a task of its own, with
        // the library's timeout, however short the caller's budget: a silent connection is
        // retired even when no caller waits long enough to see it.
        let (mut sink, channel) = (subscriber.sink.clone(), channel.to_owned());
        let confirmed = tokio::spawn(async move {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.subscribe(channel)).await {
                Ok(Ok(())) => true,
                Ok(Err(_)) | Err(_) => {
                    subscriber.retire();
                    false
                }
            }
        });
        let budget = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(budget, confirmed).await {
            Ok(Ok(true)) => Some(subscription),
            _ => None,
        }
    }

    /// The shared subscriber, (re)connected when it is missing or its connection died; `None`
    /// while another waiter connects, shortly after a failed connect, or when connecting takes
    /// longer than `within`. The connect runs in a task of its own, bounded by
    /// [`CONNECT_TIMEOUT`], so a caller's short budget never cuts it short.
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
        // Spawned with the lock released: a runtime shutting down drops the task inside
        // `spawn`, and the guard's `Drop` takes the lock.
        let connect = {
            let (connecting, client) = (Connecting(self.slot.clone()), client.clone());
            tokio::spawn(async move {
                let connected =
                    tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await;
                let subscriber = match connected {
                    Ok(Ok(pubsub)) => Some(start(pubsub)),
                    Ok(Err(_)) | Err(_) => None,
                };
                let mut slot = lock(&connecting.0);
                slot.next_attempt = subscriber
                    .is_none()
                    .then(|| Instant::now() + RECONNECT_AFTER);
                slot.subscriber.clone_from(&subscriber);
                drop(slot);
                drop(connecting);
                subscriber
            })
        };
        // A connect that takes longer than a healthy one would is not waited for: the caller
        // polls, and finds the subscriber next time.
        match tokio::time::timeout(within.min(CONNECT_WAIT), connect).await {
            Ok(Ok(subscriber)) => subscriber,
            _ => None,
        }
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
