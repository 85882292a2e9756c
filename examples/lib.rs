//! The examples of idem's README, each built with only what it needs:
//!
//! ```sh
//! cargo run --example payments
//! cargo run --example ledger_postgres --features postgres
//! cargo run --example http_payments --features axum
//! ```
