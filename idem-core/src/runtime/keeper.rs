//! The lease keepers of a multi-thread runtime: one task per runtime and thread of origin that
//! watches the claims whose bodies run there, and starts a renewal task for a claim only once
//! its first renewal is near.
//!
//! Most bodies end long before a third of their lease, the first renewal: they cost a
//! registration (a lock and a map entry), not a task. A task per call (spawned and aborted) cost
//! several microseconds a call, mostly in waking a parked worker for it. A body that blocks its
//! thread (in `block_in_place`) is still renewed: the watcher and the renewal run on other
//! threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::lease::{HeldClaim, LeaseClock};
use super::Idempotency;
use crate::observe;
use crate::store::Fence;
use crate::time::{later, MIN_LEASE};

/// How often the watcher looks while claims are registered. A claim's first renewal is a third
/// of its lease after the claim, at least `MIN_LEASE / 3`; looking twice as often starts every
/// renewal task before its renewal is due.
const LOOK_EVERY: Duration = Duration::from_millis(40);
const _: () = assert!(LOOK_EVERY.as_nanos() * 6 <= MIN_LEASE.as_nanos());

thread_local! {
    /// The watcher of claims registered from this thread, with the runtime it runs on.
    static WATCHER: RefCell<Option<Arc<Watcher>>> = const { RefCell::new(None) };
}

/// Claims whose leases one watcher task keeps.
struct Watcher {
    runtime: tokio::runtime::Id,
    /// The watcher's task: finished once its runtime shut down.
    task: Mutex<Option<AbortHandle>>,
    claims: Mutex<Claims>,
    /// Wakes a watcher that found no claims.
    registered: Notify,
}

#[derive(Default)]
struct Claims {
    by_id: HashMap<u64, Watched>,
    next_id: u64,
    /// Whether the watcher is looking (it parks when it finds no claims).
    looking: bool,
}

/// A registered claim: what its renewal task needs, until it is started.
struct Watched {
    /// When its first renewal is due.
    due: Instant,
    renewal: Renewal,
}

enum Renewal {
    /// Not started yet.
    Pending {
        runtime: Idempotency,
        key: String,
        fence: Fence,
        lease: Duration,
        clock: Arc<LeaseClock>,
        hold_until: Option<Instant>,
        span: tracing::Span,
    },
    /// Started: renewing the lease until it is lost, or this claim is unregistered.
    Started(JoinHandle<()>),
}

/// A claim registered with a watcher; dropped, it is unregistered and its renewals stop.
pub(super) struct Kept {
    watcher: Arc<Watcher>,
    id: u64,
}

impl Drop for Kept {
    fn drop(&mut self) {
        let watched = lock(&self.watcher.claims).by_id.remove(&self.id);
        if let Some(Watched {
            renewal: Renewal::Started(task),
            ..
        }) = watched
        {
            task.abort();
        }
    }
}

/// Registers `claim` with the watcher of the current thread's runtime, so that its lease is kept
/// from other tasks while its body runs. `None` outside a multi-thread runtime: there a blocked
/// body blocks every task, and the body's own task keeps the lease.
pub(super) fn keep(runtime: &Idempotency, claim: &HeldClaim) -> Option<Kept> {
    let handle = Handle::try_current()
        .ok()
        .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread)?;
    let watcher = WATCHER.with(|cell| {
        let mut watcher = cell.borrow_mut();
        match &*watcher {
            Some(current) if current.runtime == handle.id() && current.alive() => current.clone(),
            _ => {
                let started = Watcher::start(&handle);
                *watcher = Some(started.clone());
                started
            }
        }
    });
    let watched = Watched {
        due: claim
            .lease_clock
            .valid_until()
            .checked_sub(claim.lease - claim.lease / 3)
            .unwrap_or_else(Instant::now),
        renewal: Renewal::Pending {
            runtime: runtime.clone(),
            key: claim.key.clone(),
            fence: claim.fence,
            lease: claim.lease,
            clock: claim.lease_clock.clone(),
            hold_until: claim.hold_until,
            span: tracing::Span::current(),
        },
    };
    let id = {
        let mut claims = lock(&watcher.claims);
        let id = claims.next_id;
        claims.next_id += 1;
        claims.by_id.insert(id, watched);
        if !std::mem::replace(&mut claims.looking, true) {
            watcher.registered.notify_one();
        }
        id
    };
    Some(Kept { watcher, id })
}

impl Watcher {
    fn start(handle: &Handle) -> Arc<Self> {
        let watcher = Arc::new(Self {
            runtime: handle.id(),
            task: Mutex::new(None),
            claims: Mutex::default(),
            registered: Notify::new(),
        });
        let task = handle.spawn(watch(watcher.clone()));
        *lock(&watcher.task) = Some(task.abort_handle());
        watcher
    }

    /// Whether its task still runs (not so once its runtime shut down).
    fn alive(&self) -> bool {
        lock(&self.task)
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }
}

/// The watcher's task: while claims are registered, looks every [`LOOK_EVERY`] and starts the
/// renewal task of each claim whose first renewal is near; parks when none are.
async fn watch(watcher: Arc<Watcher>) {
    loop {
        watcher.registered.notified().await;
        loop {
            let now = Instant::now();
            {
                let mut claims = lock(&watcher.claims);
                if claims.by_id.is_empty() {
                    claims.looking = false;
                    break;
                }
                for watched in claims.by_id.values_mut() {
                    if watched.due <= later(now, LOOK_EVERY) {
                        start_renewal(&mut watched.renewal);
                    }
                }
            }
            tokio::time::sleep_until(later(now, LOOK_EVERY)).await;
        }
    }
}

/// Starts a pending renewal on the current runtime (the watcher's).
fn start_renewal(renewal: &mut Renewal) {
    let Renewal::Pending {
        runtime,
        key,
        fence,
        lease,
        clock,
        hold_until,
        span,
    } = renewal
    else {
        return;
    };
    let (runtime, key, clock) = (runtime.clone(), std::mem::take(key), clock.clone());
    let (fence, lease, hold_until) = (*fence, *lease, *hold_until);
    let task = tokio::spawn(observe::in_span(span, async move {
        runtime
            .keep_lease_of(&key, fence, lease, &clock, hold_until)
            .await;
    }));
    *renewal = Renewal::Started(task);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
