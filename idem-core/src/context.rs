//! The claim context that a running body can read.

use crate::Fence;

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

tokio::task_local! {
    static CONTEXT: ClaimContext;
}

/// The claim context of the idempotent body running in this task, or `None` outside one.
///
/// ```
/// # async fn demo() -> Result<(), idem_core::Error> {
/// let idem = idem_core::Idempotency::new(idem_core::MemoryStore::new());
/// let fence = idem
///     .run(idem_core::Call::new("demo", "k1"), async {
///         let ctx = idem_core::context().expect("inside a body");
///         Ok::<_, idem_core::Error>(ctx.fence.0)
///     })
///     .await?;
/// assert!(fence > 0);
/// assert!(idem_core::context().is_none());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub fn context() -> Option<ClaimContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

pub(crate) async fn scope<F: std::future::Future>(context: ClaimContext, future: F) -> F::Output {
    CONTEXT.scope(context, future).await
}
