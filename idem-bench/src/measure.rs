//! One measured block: `tasks` concurrent tasks call one side for a fixed time, and every call's
//! latency is kept.

use std::future::Future;
use std::time::{Duration, Instant};

/// Which keys a block's calls use.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Keys {
    /// Keys no call used before: first executions. Each block gets its own `base`.
    Fresh { base: u64 },
    /// Keys `0..count`, completed before the block: replays.
    Existing { count: u64 },
}

impl Keys {
    fn key(self, task: u64, call: u64) -> u64 {
        match self {
            // 2^32 calls per task and block is far more than a block makes.
            Self::Fresh { base } => base + (task << 32) + call,
            // Tasks start at different places so that they do not walk the same keys in step.
            Self::Existing { count } => (task * 7919 + call) % count,
        }
    }
}

/// What one block measured.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// Calls that returned the expected value.
    pub(crate) ops: u64,
    /// Calls that failed or returned something else.
    pub(crate) errors: u64,
    /// The first error's text, for the log.
    pub(crate) first_error: Option<String>,
    /// Wall time from the first task's start to the last task's end.
    pub(crate) elapsed: Duration,
    /// Every call's latency, sorted.
    latencies: Vec<Duration>,
    /// Redis server time per call (µs, from `INFO commandstats`), for sides on Redis.
    pub(crate) server_us: Option<f64>,
}

impl Sample {
    /// Completed calls per second.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[rank]
    }
}

/// Runs `call` from `tasks` tasks for `length`, each task calling in a loop. `call` returns
/// `Err` with a message when the call failed or answered wrongly.
pub(crate) async fn block<F, Fut>(tasks: u64, length: Duration, keys: Keys, call: F) -> Sample
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let start = Instant::now();
    let deadline = start + length;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let mut first_error = None;
            let mut index = 0u64;
            loop {
                let before = Instant::now();
                if before >= deadline {
                    break;
                }
                let outcome = call(keys.key(task, index)).await;
                let latency = before.elapsed();
                index += 1;
                match outcome {
                    Ok(()) => latencies.push(latency),
                    Err(message) => {
                        errors += 1;
                        first_error.get_or_insert(message);
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut sample = Sample {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        server_us: None,
    };
    for handle in handles {
        match handle.await {
            Ok((latencies, errors, first_error)) => {
                sample.latencies.extend(latencies);
                sample.errors += errors;
                if sample.first_error.is_none() {
                    sample.first_error = first_error;
                }
            }
            Err(err) => {
                sample.errors += 1;
                sample.first_error = Some(format!("a task panicked: {err}"));
            }
        }
    }
    sample.elapsed = start.elapsed();
    sample.ops = sample.latencies.len() as u64;
    sample.latencies.sort_unstable();
    sample
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The Redis server's total command time so far (µs): the sum of `usec` over `INFO
/// commandstats`, so that the difference across a block is the server time its calls took.
pub(crate) async fn server_usec(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .map_err(|err| format!("INFO commandstats: {err}"))?;
    Ok(info
        .lines()
        .filter_map(|line| line.split("usec=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn fresh_keys_never_repeat_across_tasks_and_existing_keys_stay_in_range() {
        let fresh = Keys::Fresh { base: 1 << 50 };
        let mut seen = std::collections::HashSet::new();
        for task in 0..4 {
            for call in 0..1000 {
                assert!(seen.insert(fresh.key(task, call)));
            }
        }
        let existing = Keys::Existing { count: 100 };
        assert!((0..256).all(|task| (0..500).all(|call| existing.key(task, call) < 100)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_counts_calls_and_errors() {
        let sample = block(
            4,
            Duration::from_millis(50),
            Keys::Existing { count: 10 },
            |key| async move {
                tokio::task::yield_now().await;
                if key == 3 {
                    Err(format!("key {key}"))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert!(sample.ops > 0);
        assert!(sample.errors > 0);
        assert_eq!(sample.first_error.as_deref(), Some("key 3"));
        assert!(sample.quantile(0.5) <= sample.quantile(0.99));
        assert!(sample.ops_per_sec() > 0.0);
    }
}
