//! Unique ids without a dependency on a random number crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// 128 bits, unique per call within a process and, with overwhelming probability, across
/// processes: a process-wide counter mixed with a per-process random secret (drawn once, from
/// the OS keys of std's `RandomState`, the time and the process id). The mix is a bijection of
/// the counter, so ids within a process never repeat; they are not secret (attempt ids need
/// uniqueness only), and cost a few instructions instead of two keyed hashes and a clock read.
pub(crate) fn u128() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SECRET: LazyLock<(u64, u64)> = LazyLock::new(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let half = || {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u128(nanos);
            hasher.write_u32(std::process::id());
            hasher.finish()
        };
        (half(), half())
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (high, low) = *SECRET;
    (u128::from(mix(high ^ count)) << 64) | u128::from(mix(low.wrapping_add(count)))
}

/// The finalizer of SplitMix64: a bijection of `u64` that moves every bit of the input.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<u128> = (0..10_000).map(|_| super::u128()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn halves_are_not_the_counter() {
        let (a, b) = (super::u128(), super::u128());
        // Consecutive counts must not give ids one apart (the mix spreads them).
        assert!(a.abs_diff(b) > 1 << 32, "{a:x} {b:x}");
    }
}
