//! The fault harness of idem (not published): it attacks the promise that effects happen once
//! although deliveries repeat, the way Jepsen-style tests do, and measures what it finds.
//!
//! * [`FaultyStore`]: wraps any store; seeded fail-before-apply, apply-then-fail and delays.
//! * [`FaultProxy`]: a TCP proxy in front of a real `redis-server` that drops replies (the lost
//!   acknowledgement), delays them past the client's timeout, resets connections with commands
//!   in flight, and black-holes traffic.
//! * [`workload`]: at-least-once deliveries whose bodies count executions in process memory
//!   (the ground truth), every call's outcome recorded as ok, definite or indeterminate, and a
//!   [`Report`] that checks the invariants.
//! * [`scenarios`]: the fault scenarios, shared by the tests and the `chaos` example.
//! * [`ledger`]: the transactional mode's proof: child processes booking ledger rows in
//!   PostgreSQL, SIGKILLed at random and through database crashes.
//! * [`http_crash`]: the same proof through the HTTP layer in transactional mode: a server
//!   SIGKILLed every 1-2s, PostgreSQL restarted, keys charged over real HTTP.

mod faulty;
pub mod http_crash;
pub mod ledger;
mod proxy;
pub mod scenarios;
pub mod workload;

pub use faulty::{FaultCounts, FaultPlan, FaultyStore};
pub use proxy::{FaultProxy, ProxyFaults};
pub use workload::{CallOutcome, History, Report, Spec};
