//! The claim context that a running body can read.

use std::cell::RefCell;
use std::sync::Arc;

use crate::encode::hex;
use crate::store::Fence;

/// What the running body holds: its store key and fencing token.
///
/// Pass [`fence`](ClaimContext::fence) to downstream systems that can compare it (a database row
/// with a `fence` column, a ledger API): they can then refuse a write from a holder whose claim
/// has been taken over, which is what makes a lapsed lease safe end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimContext {
    /// The full store key of the claim.
    pub key: String,
    /// The fencing token of the claim.
    pub fence: Fence,
}

impl ClaimContext {
    /// An idempotency key for a call this body makes to another system (a payment provider's
    /// `Idempotency-Key`, another idem service), named by `downstream` (`"stripe"`,
    /// `"ledger"`). It is derived from this call's store key alone, so every attempt of the
    /// same logical call gets the same one (retries, and a takeover after a lapsed lease or an
    /// unknown outcome), and the downstream system recognises the repeat; each name gets its
    /// own. It is shaped as a UUID (RFC 9562 version 8, from a SHA-256), which APIs that take
    /// idempotency keys accept.
    ///
    /// ```
    /// # use idem_core as idem; // what users of the `idem` crate write
    /// # async fn demo() -> Result<(), idem::Error> {
    /// let idem = idem::Idempotency::new(idem::MemoryStore::new());
    /// let key = idem
    ///     .run(idem::Call::new("charge", "order-1"), async {
    ///         let ctx = idem::context().expect("inside a body");
    ///         // e.g. `.header("Idempotency-Key", ctx.downstream_key("stripe"))`
    ///         Ok::<_, idem::Error>(ctx.downstream_key("stripe"))
    ///     })
    ///     .await?;
    /// assert_eq!(key.len(), 36);
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn downstream_key(&self, downstream: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"idem downstream key\0");
        hasher.update(self.key.as_bytes());
        hasher.update(b"\0");
        hasher.update(downstream.as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10
        let hex = hex(&bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

thread_local! {
    // The context of the body being polled (or dropped) on this thread: set around each poll,
    // the previous one put back after. A plain thread-local rather than tokio's task-local, so
    // that a body dropped while the thread's locals are being destroyed (a runtime kept in a
    // thread-local) is dropped without its context instead of panicking.
    static CONTEXT: RefCell<Option<Arc<ClaimContext>>> = const { RefCell::new(None) };
}

/// The claim context of the idempotent body running in this task, or `None` outside one.
///
/// It is set while the body is polled, so a future the body polls itself sees it too: tasks of a
/// `LocalSet` that the body drives with `run_until`, or a future it `block_on`s. Take the
/// context in the body and hand it on rather than reading it there.
///
/// ```
/// # use idem_core as idem; // what users of the `idem` crate write
/// # async fn demo() -> Result<(), idem::Error> {
/// let idem = idem::Idempotency::new(idem::MemoryStore::new());
/// let fence = idem
///     .run(idem::Call::new("demo", "k1"), async {
///         let ctx = idem::context().expect("inside a body");
///         Ok::<_, idem::Error>(ctx.fence.0)
///     })
///     .await?;
/// assert!(fence > 0);
/// assert!(idem::context().is_none());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub fn context() -> Option<ClaimContext> {
    CONTEXT
        .try_with(|context| context.borrow().as_deref().cloned())
        .ok()
        .flatten()
}

/// Runs `f` with `context` as the [`context()`] it sees (or, while the thread's locals are being
/// destroyed, without it).
pub(crate) fn poll_in<R>(context: Arc<ClaimContext>, f: impl FnOnce() -> R) -> R {
    /// Puts the previous context back, also when `f` panics.
    struct Restore(Option<Arc<ClaimContext>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let _ = CONTEXT.try_with(|context| *context.borrow_mut() = previous);
        }
    }
    match CONTEXT.try_with(|current| current.replace(Some(context))) {
        Ok(previous) => {
            let _restore = Restore(previous);
            f()
        }
        Err(_) => f(),
    }
}

/// Runs `body` with `context` as the [`context()`] it sees: for a body run under a claim that
/// the caller holds itself (a [`TransactionClaim`](crate::TransactionClaim)).
pub fn with_context<F: std::future::Future>(
    context: ClaimContext,
    body: F,
) -> impl std::future::Future<Output = F::Output> {
    WithContext {
        context: Arc::new(context),
        body: Some(body),
    }
}

pin_project_lite::pin_project! {
    /// What [`with_context`] returns.
    struct WithContext<F> {
        context: Arc<ClaimContext>,
        // An `Option` only so that a body dropped before its end (a cancelled call) is dropped
        // inside its context too.
        #[pin]
        body: Option<F>,
    }

    impl<F> PinnedDrop for WithContext<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut body = this.body;
            let context = this.context.clone();
            if std::thread::panicking() {
                // Already unwinding, a second panic out of this drop would abort the process:
                // the body's ends here, and the caller's goes on (as `run` does).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    poll_in(context, || body.set(None))
                }));
            } else {
                poll_in(context, || body.set(None));
            }
        }
    }
}

impl<F: std::future::Future> std::future::Future for WithContext<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        match this.body.as_pin_mut() {
            Some(body) => poll_in(this.context.clone(), || body.poll(cx)),
            // The body is taken only as the future is dropped.
            None => std::task::Poll::Pending,
        }
    }
}
