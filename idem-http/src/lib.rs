//! An `Idempotency-Key` layer for tower and axum, on [idem](https://docs.rs/idem)'s runtime.
//!
//! See [`IdempotencyLayer`] for what it does per request, and `docs/http.md` in the repository
//! for the draft's requirements, point by point, with the test that checks each.

mod axum;
mod body;
mod config;
mod fingerprint;
mod handle;
mod handler;
mod key;
mod layer;
mod problem;
mod recorded;
mod service;
mod status;
mod transaction;

pub use body::BufferedBody;
pub use config::{DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY, DEFAULT_MAX_RETRY_AFTER};
pub use fingerprint::default_fingerprint;
pub use handler::{MarkReplayed, MarkReplayedLayer, Problem};
pub use key::{IdempotencyKey, KeyError, IDEMPOTENCY_KEY, MAX_KEY_LEN};
pub use layer::IdempotencyLayer;
pub use problem::{problem_response, Rejection, DEFAULT_PROBLEM_BASE, IDEMPOTENCY_REJECTION};
pub use recorded::{DEFAULT_REPLAYED_HEADERS, IDEMPOTENT_REPLAYED};
pub use service::{IdempotencyService, ResponseFuture};
pub use status::default_on_status;
pub use transaction::{Tx, TxRejection};
