//! The process-wide default runtime, for functions that name none.

use std::sync::OnceLock;

use crate::store::MemoryStore;
use crate::Idempotency;

static DEFAULT: OnceLock<Idempotency> = OnceLock::new();

/// Installs the process-wide default [`Idempotency`], used by every `#[idempotent]` function
/// without `using = ...`.
///
/// Call it once at start-up, before the first idempotent call. It returns the runtime back as
/// `Err` when a default is already in place: installed before, or already created on first use
/// (an in-memory store), since switching stores under running calls would split their keys.
pub fn install(runtime: Idempotency) -> Result<(), Idempotency> {
    DEFAULT.set(runtime)
}

/// The process-wide default: the installed one, or else a shared [`MemoryStore`] with default
/// settings (the embedded default: everything works without a server).
pub fn default_runtime() -> &'static Idempotency {
    DEFAULT.get_or_init(|| Idempotency::new(MemoryStore::new()))
}
