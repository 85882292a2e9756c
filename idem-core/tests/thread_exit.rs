//! A call still running when its runtime goes with the thread's locals (a runtime kept in a
//! thread-local). Its own test binary: once any test in a process pauses tokio's clock
//! (`start_paused`, `test-util`), tokio reads the time through a thread-local of its own, which
//! cannot be done during that destruction either; production builds do not pause the clock.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idem_core::{Call, Error, Idempotency, MemoryStore};

thread_local! {
    static RUNTIME: std::cell::RefCell<Option<tokio::runtime::Runtime>> =
        const { std::cell::RefCell::new(None) };
}

/// Regression (second review): a call still running when its runtime was dropped with the
/// thread's locals (a runtime kept in a thread-local) panicked ("cannot enter a task-local
/// scope during or after destruction"), which aborts a process built with `panic = "abort"`.
#[test]
fn a_call_dropped_with_the_threads_locals_does_not_panic() {
    static PANICS: AtomicU32 = AtomicU32::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("runtime-in-a-thread-local") {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let thread = std::thread::Builder::new()
        .name("runtime-in-a-thread-local".into())
        .spawn(|| {
            // Put in its thread-local first, so that it is destroyed after the locals the call
            // uses (thread-locals go in the reverse order of their first use).
            RUNTIME.with(|slot| {
                *slot.borrow_mut() = Some(
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap(),
                )
            });
            let idem = Idempotency::new(MemoryStore::new());
            RUNTIME.with(|slot| {
                let runtime = slot.borrow();
                runtime.as_ref().unwrap().block_on(async {
                    tokio::spawn(idem.run(Call::new("thread-local", "k"), async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<u32, Error>(1)
                    }));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            });
            // The runtime, with the call still running on it, goes at thread exit.
        })
        .unwrap();
    thread.join().unwrap();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic at thread exit");
}

/// Regression (third review): a call dropped while its caller unwinds, whose body's drop panics
/// too, aborted the process (a second panic out of a drop during unwinding). The body's panic now
/// ends there; the caller's goes on.
#[test]
fn a_body_whose_drop_panics_while_its_caller_unwinds_does_not_abort() {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("a body's drop panicked");
        }
    }
    let caller = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let idem = Idempotency::new(MemoryStore::new());
            let call = idem.run(Call::new("unwinding", "k"), async {
                let _probe = PanicsOnDrop;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<u32, Error>(1)
            });
            let mut call = std::pin::pin!(call);
            let pending = tokio::time::timeout(Duration::from_millis(10), call.as_mut()).await;
            assert!(pending.is_err(), "the body is still running");
            panic!("the caller panics, the call still held");
        })
    });
    // The caller's panic, reported as such: the process is still here.
    let joined = caller.join();
    assert!(joined.is_err());
}

/// Issue 20 (defect 7): the same under `with_context` (what `transaction = conn` expands to)
/// still aborted the process.
#[test]
fn a_body_in_with_context_whose_drop_panics_while_its_caller_unwinds_does_not_abort() {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("a body's drop panicked");
        }
    }
    let caller = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // A claim's context, as a transactional call hands it to its body.
            let idem = Idempotency::new(MemoryStore::new());
            let mut context = None;
            idem.run(Call::new("context", "k"), async {
                context = idem_core::context();
                Ok::<u32, Error>(1)
            })
            .await
            .unwrap();
            let context = context.unwrap();
            let body = idem_core::with_context(context, async {
                let _probe = PanicsOnDrop;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<u32, Error>(1)
            });
            let mut body = std::pin::pin!(body);
            let pending = tokio::time::timeout(Duration::from_millis(10), body.as_mut()).await;
            assert!(pending.is_err(), "the body is still running");
            panic!("the caller panics, the body still held");
        })
    });
    let joined = caller.join();
    assert!(joined.is_err());
}
