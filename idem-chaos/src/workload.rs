//! The workload and its oracle: at-least-once deliveries of many keys, each body counting its
//! executions in process memory (the ground truth, not the store), every call's outcome recorded
//! as ok, definite failure or indeterminate; then the faults heal, every key is delivered once
//! more, and the history is checked against the invariants.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_core::{Call, Error, Idempotency};

/// One run's shape.
#[derive(Debug, Clone)]
pub struct Spec {
    /// How many keys are requested.
    pub keys: usize,
    /// How many times each key is delivered (all at once, jittered over `spread`).
    pub deliveries: usize,
    /// The lease of every call.
    pub lease: Duration,
    /// Bodies take a random time up to this.
    pub max_body: Duration,
    /// Deliveries start at a random time up to this.
    pub spread: Duration,
    /// How many times a delivery is retried after an error (at-least-once).
    pub attempts: usize,
    /// Seeds the jitter and body times.
    pub seed: u64,
    /// A prefix for the keys, so runs can share a store.
    pub key_prefix: String,
    /// At most this many deliveries are handled at once, as by a consumer with that many
    /// workers; `None`: every delivery at once.
    pub in_flight: Option<usize>,
}

impl Spec {
    /// The keys this spec requests.
    pub fn keys(&self) -> Vec<String> {
        (0..self.keys)
            .map(|i| format!("{}-k{i}", self.key_prefix))
            .collect()
    }

    /// A small run: `keys` keys delivered `deliveries` times each, 3s leases (well above the
    /// faults' outages, so that CI stays inside the boundary even on a slow machine).
    pub fn small(keys: usize, deliveries: usize, seed: u64) -> Self {
        Self {
            keys,
            deliveries,
            lease: Duration::from_secs(3),
            max_body: Duration::from_millis(600),
            spread: Duration::from_millis(500),
            attempts: 40,
            seed,
            key_prefix: format!("run{seed}"),
            in_flight: None,
        }
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// `Ok` with the value.
    Ok(String),
    /// A definite failure: the body did not run in this call.
    Definite(String),
    /// The body may have run, or the store may have applied a command: outcome unknown.
    Indeterminate(String),
    /// The body ran but its claim lapsed (`LeaseLost`) or its record could not be written
    /// (`NotRecorded`): the caller was told the effect may run again.
    Unrecorded(String),
    /// The body ran, its claim lapsed, and another call's record answered this one (the value,
    /// `served` saying `Replayed` though the body ran): its effect happened twice, and the
    /// caller can tell.
    Superseded(String),
}

/// Everything that happened, as seen from outside the store.
#[derive(Debug, Default)]
pub struct History {
    executions: Mutex<HashMap<String, Vec<u64>>>,
    calls: Mutex<Vec<(u64, String, CallOutcome)>>,
    lease_lost: AtomicU64,
    next_call: AtomicU64,
}

/// The figures of one run, and the invariants it broke.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Keys requested.
    pub keys: usize,
    /// Calls made (deliveries, their retries, and the final re-delivery).
    pub calls: usize,
    /// Body executions (ground truth).
    pub executions: usize,
    /// Executions beyond the first, summed over keys.
    pub duplicates: usize,
    /// Of those, the ones on keys where no call was told `LeaseLost` or `NotRecorded`: a
    /// duplicate nobody was warned of. Must be zero everywhere.
    pub unwarned_duplicates: usize,
    /// Calls told `LeaseLost` or `NotRecorded` (the store was unreachable for longer than a
    /// lease around the body: outside the guarantee, and said so to the caller).
    pub unrecorded: usize,
    /// Keys never executed, or not `Ok` after the faults healed (I5, I6).
    pub lost: usize,
    /// Calls that returned `Ok`.
    pub ok: usize,
    /// Calls that failed definitely (the body did not run).
    pub definite: usize,
    /// Calls surfaced as indeterminate.
    pub indeterminate: usize,
    /// Of those, `LeaseLost` (a write under a stale fence refused, I3).
    pub lease_lost: usize,
    /// Keys whose `Ok` values differ (I2).
    pub divergent: usize,
    /// Definite failures whose call did run the body (I4).
    pub definite_but_ran: usize,
}

impl Report {
    /// True when every invariant holds: no duplicate, nothing lost, one value per key, no
    /// execution hidden behind a definite failure.
    pub fn holds(&self) -> bool {
        self.duplicates == 0 && self.lost == 0 && self.divergent == 0 && self.definite_but_ran == 0
    }

    /// True when every duplicate was announced to a caller (`LeaseLost` or `NotRecorded` on
    /// that key) and nothing else broke: what a run whose store was unreachable for longer than
    /// a lease must still satisfy.
    pub fn holds_but_for_warned_duplicates(&self) -> bool {
        self.unwarned_duplicates == 0
            && self.lost == 0
            && self.definite_but_ran == 0
            && self.divergent == 0
    }

    /// Adds another run's figures.
    pub fn add(&mut self, other: &Self) {
        self.keys += other.keys;
        self.calls += other.calls;
        self.executions += other.executions;
        self.duplicates += other.duplicates;
        self.unwarned_duplicates += other.unwarned_duplicates;
        self.unrecorded += other.unrecorded;
        self.lost += other.lost;
        self.ok += other.ok;
        self.definite += other.definite;
        self.indeterminate += other.indeterminate;
        self.lease_lost += other.lease_lost;
        self.divergent += other.divergent;
        self.definite_but_ran += other.definite_but_ran;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl History {
    /// The outcomes of every call, in the order they ended (to compare two runs of a seed).
    pub fn outcomes(&self) -> Vec<(u64, String, CallOutcome)> {
        lock(&self.calls).clone()
    }

    /// Executions per key.
    pub fn executions(&self) -> HashMap<String, Vec<u64>> {
        lock(&self.executions).clone()
    }

    /// One call of `key`, recorded.
    pub async fn call(
        self: &Arc<Self>,
        idem: &Idempotency,
        key: &str,
        lease: Duration,
        body_time: Duration,
    ) -> bool {
        let call_id = self.next_call.fetch_add(1, Ordering::SeqCst);
        let history = self.clone();
        let body_key = key.to_owned();
        let (result, served) =
            idem_core::served(idem.run(Call::new("chaos", key).lease(lease), async move {
                lock(&history.executions)
                    .entry(body_key.clone())
                    .or_default()
                    .push(call_id);
                tokio::time::sleep(body_time).await;
                Ok::<_, Error>(format!("{body_key}#{call_id}"))
            }))
            .await;
        let outcome = match result {
            // `Superseded`: this call's body ran, and another's record answered it.
            Ok(value) if served == Some(idem_core::Served::Superseded) => {
                self.lease_lost.fetch_add(1, Ordering::Relaxed);
                CallOutcome::Superseded(value)
            }
            Ok(value) => CallOutcome::Ok(value),
            Err(err) => {
                if matches!(err, Error::LeaseLost { .. }) {
                    self.lease_lost.fetch_add(1, Ordering::Relaxed);
                }
                if err.body_may_have_run() {
                    CallOutcome::Unrecorded(err.to_string())
                } else if err.is_indeterminate() {
                    CallOutcome::Indeterminate(err.to_string())
                } else {
                    CallOutcome::Definite(err.to_string())
                }
            }
        };
        let ok = matches!(outcome, CallOutcome::Ok(_) | CallOutcome::Superseded(_));
        lock(&self.calls).push((call_id, key.to_owned(), outcome));
        ok
    }

    /// Checks the history of `keys`.
    pub fn report(&self, keys: &[String]) -> Report {
        let executions = lock(&self.executions);
        let calls = lock(&self.calls);
        let warned: std::collections::HashSet<&str> = calls
            .iter()
            .filter(|(_, _, outcome)| {
                matches!(
                    outcome,
                    CallOutcome::Unrecorded(_) | CallOutcome::Superseded(_)
                )
            })
            .map(|(_, key, _)| key.as_str())
            .collect();
        let mut report = Report {
            keys: keys.len(),
            calls: calls.len(),
            lease_lost: usize::try_from(self.lease_lost.load(Ordering::Relaxed))
                .unwrap_or(usize::MAX),
            ..Report::default()
        };
        let mut values: HashMap<&str, Vec<&str>> = HashMap::new();
        for (call_id, key, outcome) in calls.iter() {
            match outcome {
                CallOutcome::Ok(value) | CallOutcome::Superseded(value) => {
                    report.ok += 1;
                    values.entry(key).or_default().push(value);
                }
                CallOutcome::Definite(_) => {
                    report.definite += 1;
                    if executions.get(key).is_some_and(|ran| ran.contains(call_id)) {
                        report.definite_but_ran += 1;
                    }
                }
                CallOutcome::Indeterminate(_) => report.indeterminate += 1,
                CallOutcome::Unrecorded(_) => {
                    report.indeterminate += 1;
                    report.unrecorded += 1;
                }
            }
        }
        for key in keys {
            let ran = executions.get(key).map_or(0, Vec::len);
            report.executions += ran;
            report.duplicates += ran.saturating_sub(1);
            if !warned.contains(key.as_str()) {
                report.unwarned_duplicates += ran.saturating_sub(1);
            }
            let key_values = values.get(key.as_str());
            if ran == 0 || key_values.is_none() {
                report.lost += 1;
            }
            if key_values.is_some_and(|v| v.iter().any(|x| *x != v[0])) {
                report.divergent += 1;
            }
        }
        report
    }
}

/// Runs `spec` against `idem`: all deliveries, then `heal`, then after one lease (so that every
/// claim left behind has lapsed) one more delivery of every key, then the check.
pub async fn run(idem: &Idempotency, spec: &Spec, heal: impl FnOnce()) -> (Report, Arc<History>) {
    let history = Arc::new(History::default());
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let keys: Vec<String> = (0..spec.keys)
        .map(|i| format!("{}-k{i}", spec.key_prefix))
        .collect();
    let workers = spec
        .in_flight
        .map(|workers| Arc::new(tokio::sync::Semaphore::new(workers.max(1))));
    let mut tasks = Vec::new();
    for key in &keys {
        for _ in 0..spec.deliveries {
            let start = random_duration(&mut rng, spec.spread);
            let bodies: Vec<Duration> = (0..spec.attempts)
                .map(|_| random_duration(&mut rng, spec.max_body))
                .collect();
            let (idem, history, key, spec, workers) = (
                idem.clone(),
                history.clone(),
                key.clone(),
                spec.clone(),
                workers.clone(),
            );
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                // A worker handles the delivery and its redeliveries.
                let _worker = match &workers {
                    Some(workers) => workers.clone().acquire_owned().await.ok(),
                    None => None,
                };
                for (attempt, body_time) in bodies.into_iter().enumerate() {
                    if history.call(&idem, &key, spec.lease, body_time).await {
                        return;
                    }
                    // The broker's redelivery backoff.
                    let backoff = 10 * u64::try_from(attempt + 1).unwrap_or(1);
                    tokio::time::sleep(Duration::from_millis(backoff.min(200))).await;
                }
            }));
        }
    }
    for task in tasks {
        // A panicking delivery task is a harness bug; the report then shows the key as lost.
        let _ = task.await;
    }
    heal();
    tokio::time::sleep(spec.lease + Duration::from_millis(200)).await;
    for key in &keys {
        for _ in 0..spec.attempts {
            if history.call(idem, key, spec.lease, Duration::ZERO).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (history.report(&keys), history)
}

fn random_duration(rng: &mut fastrand::Rng, max: Duration) -> Duration {
    let max = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.u64(0..=max))
}
