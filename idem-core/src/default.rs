//! The process-wide default runtime, for functions that name none.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{ClaimOutcome, ClaimRequest, Fence, MemoryStore, Store};
use crate::{Error, Idempotency};

static DEFAULT: OnceLock<Idempotency> = OnceLock::new();
static REQUIRE_INSTALLED: AtomicBool = AtomicBool::new(false);

/// The environment variable that, set to `1`, makes the implicit in-memory default an error
/// (as [`require_installed`] does), so that a production deployment can refuse it by
/// configuration.
pub const REQUIRE_INSTALLED_ENV: &str = "IDEM_REQUIRE_INSTALLED";

/// Installs the process-wide default [`Idempotency`], used by every `#[idempotent]` function
/// without `using = ...`.
///
/// Call it once at start-up, before the first idempotent call. It returns the runtime back as
/// `Err` when a default is already in place: installed before, or already created on first use
/// (an in-memory store), since switching stores under running calls would split their keys.
pub fn install(runtime: Idempotency) -> Result<(), Idempotency> {
    DEFAULT.set(runtime)
}

/// Refuses the implicit default: unless a runtime is [`install`]ed first, calls of functions
/// without `using = ...` fail with [`Error::InvalidOption`] instead of running on a
/// per-process [`MemoryStore`] that no other instance of the service sees. Call it at start-up,
/// before the first idempotent call (or set `IDEM_REQUIRE_INSTALLED=1`).
pub fn require_installed() {
    REQUIRE_INSTALLED.store(true, Ordering::Relaxed);
}

/// The process-wide default: the installed one, or else a shared [`MemoryStore`] with default
/// settings (the embedded default: everything works without a server). The first call that
/// falls back to the memory store logs a WARN saying so, once; with [`require_installed`] (or
/// `IDEM_REQUIRE_INSTALLED=1`) it is refused instead.
pub fn default_runtime() -> &'static Idempotency {
    DEFAULT.get_or_init(|| {
        let refused = REQUIRE_INSTALLED.load(Ordering::Relaxed)
            || std::env::var(REQUIRE_INSTALLED_ENV).is_ok_and(|value| value == "1");
        if refused {
            return Idempotency::new(NotInstalled);
        }
        tracing::warn!(
            "idem: a function without `using = ...` runs on the process-wide in-memory store, \
             which no other instance of this service sees (and a restart empties), so their \
             duplicates run again; install a shared store at start-up with \
             `idem::install(Idempotency::new(store))`, or set {REQUIRE_INSTALLED_ENV}=1 (or call \
             `idem::require_installed()`) to make this an error"
        );
        Idempotency::new(MemoryStore::new())
    })
}

/// The default when it is required to be installed and was not: every call is refused.
struct NotInstalled;

impl NotInstalled {
    fn refuse<T>() -> Result<T, Error> {
        Err(Error::invalid_option(
            "no idempotency runtime is installed, and the in-memory default is refused \
             (`require_installed` or IDEM_REQUIRE_INSTALLED=1): call \
             `idem::install(Idempotency::new(store))` at start-up, before the first call, or name \
             a runtime with `using = ...`",
        ))
    }
}

#[async_trait]
impl Store for NotInstalled {
    async fn claim(&self, _: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        Self::refuse()
    }

    async fn complete(&self, _: &str, _: Fence, _: &[u8], _: Duration) -> Result<(), Error> {
        Self::refuse()
    }

    async fn release(&self, _: &str, _: Fence) -> Result<(), Error> {
        Self::refuse()
    }

    async fn renew(&self, _: &str, _: Fence, _: Duration) -> Result<(), Error> {
        Self::refuse()
    }
}
