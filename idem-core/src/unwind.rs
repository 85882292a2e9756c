//! A future's panic caught as a value, for code that must settle a claim before the panic goes
//! on (the HTTP layer's and the macro's transactional handlers).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;

/// `future`'s output, or the payload of a panic in polling it. After a panic the future is
/// dropped at once (so that what it held, such as a lent transaction, is given back), and a
/// panic in that drop is caught too.
#[doc(hidden)]
pub async fn catch_unwind<F: Future>(future: F) -> Result<F::Output, Box<dyn Any + Send>> {
    let mut running = pin!(Some(future));
    std::future::poll_fn(move |cx| {
        let Some(future) = running.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => {
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| running.set(None)));
                Poll::Ready(Err(panic))
            }
        }
    })
    .await
}
