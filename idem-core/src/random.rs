//! Unpredictable ids without a dependency on a random number crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// 128 bits from two independently keyed SipHash states (keys drawn from the OS by std) over
/// a process-wide counter, the time and the process id: unique per call and unguessable enough
/// for attempt ids, which need uniqueness, not secrecy.
pub(crate) fn u128() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `process::id()` is a system call: once per process is enough.
    static PROCESS_ID: LazyLock<u32> = LazyLock::new(std::process::id);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let half = || {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_u32(*PROCESS_ID);
        hasher.finish()
    };
    (u128::from(half()) << 64) | u128::from(half())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<u128> = (0..10_000).map(|_| super::u128()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
