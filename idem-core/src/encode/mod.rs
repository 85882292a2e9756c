//! How values become bytes: request fingerprints, exact JSON for records, and hex.

mod exact;
mod fingerprint;
mod hex;

pub(crate) use exact::encode_exactly;
pub use fingerprint::Fingerprint;
pub use hex::{hex, unhex};
