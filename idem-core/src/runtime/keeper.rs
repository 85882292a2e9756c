//! The lease keeper of a multi-thread runtime: one task per runtime that watches the claims whose
//! bodies run there, and starts a renewal task for a claim only once its first renewal is near.
//!
//! Most bodies end long before a third of their lease, the first renewal: they cost a
//! registration (a lock and a map entry), not a task. A task per call (spawned and aborted) cost
//! several microseconds a call, mostly in waking a parked worker for it. A body that blocks its
//! thread (in `block_in_place`) is still renewed: the watcher and the renewal run on other
//! threads. The watcher sleeps until the earliest first renewal it has to start, and parks when
//! none is left; it ends with its runtime.

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
use crate::time::later;

/// How long before a claim's first renewal its renewal task is started: the watcher's margin for
/// being scheduled late. A claim whose first renewal is nearer than this when its body starts
/// (it started late, as a two-step call may) gets its renewal task at once.
const AHEAD: Duration = Duration::from_millis(40);

/// The watcher of each live runtime, by runtime.
static WATCHERS: Mutex<Vec<Arc<Watcher>>> = Mutex::new(Vec::new());

thread_local! {
    /// The watcher this thread used last: most calls of a thread run on one runtime.
    static CACHED: RefCell<Option<Arc<Watcher>>> = const { RefCell::new(None) };
}

/// Claims whose leases one watcher task keeps.
struct Watcher {
    runtime: tokio::runtime::Id,
    /// The watcher's task: finished once its runtime shut down.
    task: Mutex<Option<AbortHandle>>,
    claims: Mutex<Claims>,
    /// Wakes the watcher to look earlier than it planned.
    sooner: Notify,
}

#[derive(Default)]
struct Claims {
    by_id: HashMap<u64, Watched>,
    next_id: u64,
    /// When the watcher looks next; `None` while it is parked (no renewal left to start).
    looks_at: Option<Instant>,
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

/// Registers `claim` with the watcher of the current runtime, so that its lease is kept from
/// other tasks while its body runs. `None` outside a multi-thread runtime: there a blocked body
/// blocks every task, and the body's own task keeps the lease.
pub(super) fn keep(runtime: &Idempotency, claim: &HeldClaim) -> Option<Kept> {
    let handle = Handle::try_current()
        .ok()
        .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread)?;
    let watcher = watcher_of(&handle);
    let now = Instant::now();
    let due = claim
        .lease_clock
        .valid_until()
        .checked_sub(claim.lease - claim.lease / 3)
        .unwrap_or(now);
    let mut watched = Watched {
        due,
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
    let look_at = due.checked_sub(AHEAD).filter(|at| *at > now);
    if look_at.is_none() {
        // Its first renewal is near already: as the watcher would, at once.
        start_renewal(&mut watched.renewal);
    }
    let (id, sooner) = {
        let mut claims = lock(&watcher.claims);
        let id = claims.next_id;
        claims.next_id += 1;
        claims.by_id.insert(id, watched);
        let sooner = look_at.filter(|at| claims.looks_at.is_none_or(|planned| *at < planned));
        if sooner.is_some() {
            claims.looks_at = sooner;
        }
        (id, sooner.is_some())
    };
    if sooner {
        watcher.sooner.notify_one();
    }
    Some(Kept { watcher, id })
}

/// The watcher of `handle`'s runtime, started on first use. Cached per thread; one per runtime.
fn watcher_of(handle: &Handle) -> Arc<Watcher> {
    let runtime = handle.id();
    let cached = CACHED
        .try_with(|cached| {
            cached
                .borrow()
                .as_ref()
                .filter(|watcher| watcher.runtime == runtime && watcher.alive())
                .cloned()
        })
        .ok()
        .flatten();
    if let Some(watcher) = cached {
        return watcher;
    }
    let watcher = {
        let mut watchers = lock(&WATCHERS);
        // Runtimes that ended take their watchers' tasks with them; an ended runtime's id may
        // be reused.
        watchers.retain(|watcher| watcher.alive());
        match watchers.iter().find(|watcher| watcher.runtime == runtime) {
            Some(watcher) => watcher.clone(),
            None => {
                let watcher = Watcher::start(handle);
                watchers.push(watcher.clone());
                watcher
            }
        }
    };
    // During the thread's teardown there is no cache: the lookup above serves.
    let _ = CACHED.try_with(|cached| *cached.borrow_mut() = Some(watcher.clone()));
    watcher
}

impl Watcher {
    fn start(handle: &Handle) -> Arc<Self> {
        let watcher = Arc::new(Self {
            runtime: handle.id(),
            task: Mutex::new(None),
            claims: Mutex::default(),
            sooner: Notify::new(),
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

/// The watcher's task: starts the renewal task of each claim whose first renewal is near, then
/// sleeps until the next one is, or until a claim registered since needs it sooner; parks when
/// no renewal is left to start.
async fn watch(watcher: Arc<Watcher>) {
    loop {
        let looks_at = {
            let mut claims = lock(&watcher.claims);
            let horizon = later(Instant::now(), AHEAD);
            let mut next: Option<Instant> = None;
            for watched in claims.by_id.values_mut() {
                if !matches!(watched.renewal, Renewal::Pending { .. }) {
                    continue;
                }
                if watched.due <= horizon {
                    start_renewal(&mut watched.renewal);
                } else {
                    let at = watched.due - AHEAD;
                    next = Some(next.map_or(at, |next| next.min(at)));
                }
            }
            claims.looks_at = next;
            if claims.by_id.is_empty() && claims.by_id.capacity() > 64 {
                claims.by_id.shrink_to(64);
            }
            next
        };
        match looks_at {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = watcher.sooner.notified() => {}
                }
            }
            None => watcher.sooner.notified().await,
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
