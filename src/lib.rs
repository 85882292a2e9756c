//! Exactly-once *effects* for async Rust handlers.
//!
//! Exactly-once delivery is impossible: a reply can be lost, so callers retry, and retries
//! duplicate. Exactly-once effects are not: a store with the authority to reject duplicates
//! decides, per key, that the effect happens once, and every later delivery gets the recorded
//! result. `#[idempotent]` rewrites an `async fn` into **claim → execute → record**, and replays
//! the record to duplicates.
//!
//! ```
//! use idem::idempotent;
//! use serde::{Deserialize, Serialize};
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! static CHARGES: AtomicU32 = AtomicU32::new(0);
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Receipt { order: u64, cents: u64 }
//!
//! #[idempotent(key = order)]
//! async fn charge(order: u64, cents: u64) -> Result<Receipt, idem::Error> {
//!     CHARGES.fetch_add(1, Ordering::SeqCst); // the effect
//!     Ok(Receipt { order, cents })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idem::Error> {
//! let first = charge(7, 1250).await?;
//! let retry = charge(7, 1250).await?; // a duplicate delivery: replayed, not charged again
//! assert_eq!(first, retry);
//! assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```
//!
//! With no setup the function uses the process-wide default: an in-memory [`MemoryStore`]. A
//! service with several instances shares a store through an [`Idempotency`] handle, either
//! [`install`]ed as the default or named per function with `using = ...`: with the `redis`
//! feature, `idem::redis::RedisStore` on Redis (and with `redis-cluster`, on Redis Cluster).
//!
#![doc = include_str!("../docs/reference.md")]
//!
//! # Explanation
//!
//! The attribute keeps the signature and moves the body into a future that the runtime drives.
//! This method
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Receipt;
//! # struct Order { id: u64 }
//! # #[derive(Debug)] enum PayError { Idem(idem::Error) }
//! # impl From<idem::Error> for PayError { fn from(e: idem::Error) -> Self { PayError::Idem(e) } }
//! # struct Gateway;
//! # impl Gateway { async fn charge(&self, _: &Order) -> Result<Receipt, PayError> { Ok(Receipt) } }
//! # struct Payments { idem: idem::Idempotency, gateway: Gateway }
//! # impl Payments {
//! #[idem::idempotent(key = order.id, using = &self.idem)]
//! async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
//!     self.gateway.charge(order).await
//! }
//! # }
//! ```
//!
//! does what this does with the runtime's API, [`Idempotency::run`] with a [`Call`]:
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Receipt;
//! # struct Order { id: u64 }
//! # #[derive(Debug)] enum PayError { Idem(idem::Error) }
//! # impl From<idem::Error> for PayError { fn from(e: idem::Error) -> Self { PayError::Idem(e) } }
//! # struct Gateway;
//! # impl Gateway { async fn charge(&self, _: &Order) -> Result<Receipt, PayError> { Ok(Receipt) } }
//! # struct Payments { idem: idem::Idempotency, gateway: Gateway }
//! # impl Payments {
//! async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
//!     let call = idem::Call::new("my_app.payments.Payments.charge", order.id);
//!     self.idem
//!         .run(call, async move { self.gateway.charge(order).await })
//!         .await
//! }
//! # }
//! ```
//!
//! except that the macro's namespace is the function's own path, registered so that no two
//! functions of a program share one, and that its errors name the option at fault. The code it
//! generates is in the repository's `idem-macros/snapshots`, which tests keep equal to the real
//! expansion.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(all(feature = "postgres", feature = "axum"))]
mod postgres_connection;
mod private;

pub use idem_core::{
    context, default_runtime, install, require_installed, served, Call, CallOutcome, CallReport,
    ClaimContext, Disposition, Error, Fence, Idempotency, MemoryStore, Observer, OnInProgress,
    Served, UnknownHold, MAX_DURATION, MIN_LEASE, REQUIRE_INSTALLED_ENV,
};

pub mod steps {
    //! Advanced: a call in steps around its body, for code that cannot hand the body to
    //! [`Idempotency::run`](crate::Idempotency::run) as one future.
    //!
    //! * [`Idempotency::start`](crate::Idempotency::start) claims a key and stops there
    //!   ([`Started`]); [`Claimed::run_with`] runs the body under the claim later, on another
    //!   task, say.
    //! * [`Idempotency::begin_transaction`](crate::Idempotency::begin_transaction) and its
    //!   flavours claim a key inside a database transaction ([`TransactionBegun`]); the body
    //!   writes through [`TransactionClaim::connection`] and [`TransactionClaim::finish`] commits
    //!   its record with those writes. `#[idempotent(transaction = conn)]` and
    //!   `idem::postgres::begin` write this for you; these are the generic types behind them.
    //!   Run the body in [`with_context`] with [`TransactionClaim::context`], so that
    //!   [`idem::context`](crate::context) answers inside it.

    pub use idem_core::{
        with_context, Claimed, DetachedClaim, Started, TransactionBegun, TransactionClaim,
    };
}

/// Advanced: for store authors and for reaching into a store: the contract a backend
/// implements ([`Store`](store::Store), a per-key state machine;
/// [`TransactionalStore`](store::TransactionalStore) for a store whose records can commit in its
/// database's transactions), what it is asked and answers, and the record format the runtime
/// keeps in it.
pub mod store {
    pub use idem_core::encode::{hex, unhex};
    pub use idem_core::key::{check_namespace, store_key, MAX_PLAIN_KEY};
    pub use idem_core::{
        AttemptId, BoxError, ClaimOutcome, ClaimRequest, Fingerprint, Outcome, Record, Store,
        TransactionalStore, MAX_FINGERPRINT, RECORD_VERSION,
    };
}
pub use idem_macros::idempotent;

pub use idem_core::admin;

#[cfg(feature = "axum")]
#[doc = include_str!("../docs/http.md")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http {
    pub use idem_http::*;
}

/// The Redis store (feature `redis`; Redis Cluster with `redis-cluster`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    /// What [`RedisStore::from_connection`] runs its commands on, from redis-rs.
    pub use idem_redis::redis::aio::ConnectionLike;
    /// A redis-rs connection with reconnection, what [`RedisStore`] holds by default.
    pub use idem_redis::redis::aio::ConnectionManager;
    /// Connection settings for [`RedisStore::connect_with_config`], from redis-rs.
    pub use idem_redis::redis::aio::ConnectionManagerConfig;
    /// A Redis Cluster connection, what [`RedisStore::connect_cluster`] holds (feature
    /// `redis-cluster`), from redis-rs.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub use idem_redis::redis::cluster_async::ClusterConnection;
    /// A redis-rs client, for [`RedisStore::connect_with_client`].
    pub use idem_redis::redis::Client;
    /// Certificates for `Client::build_with_tls` (feature `redis-tls`), from redis-rs.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub use idem_redis::redis::{ClientTlsConfig, TlsCertificates};
    pub use idem_redis::{RedisStore, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};
}

/// The PostgreSQL store (feature `postgres`), whose record can commit in the handler's own
/// transaction: see `transaction = conn` in the options above.
///
/// ```no_run
/// use idem::postgres::sqlx::{self, PgConnection};
/// use idem::postgres::PostgresStore;
/// use idem::{idempotent, Idempotency};
///
/// #[derive(Debug)]
/// enum AppError {
///     Idem(idem::Error),
///     Db(sqlx::Error),
/// }
/// impl From<idem::Error> for AppError {
///     fn from(err: idem::Error) -> Self { AppError::Idem(err) }
/// }
/// impl From<sqlx::Error> for AppError {
///     fn from(err: sqlx::Error) -> Self { AppError::Db(err) }
/// }
///
/// struct Payments {
///     idem: Idempotency,
/// }
///
/// impl Payments {
///     /// The charge row and idem's record commit together, or neither does.
///     #[idempotent(key = order, using = &self.idem, transaction = conn)]
///     async fn charge(&self, conn: &mut PgConnection, order: i64, cents: i64) -> Result<i64, AppError> {
///         let id = sqlx::query_scalar("INSERT INTO charges (order_id, cents) VALUES ($1, $2) RETURNING id")
///             .bind(order)
///             .bind(cents)
///             .fetch_one(&mut *conn)
///             .await?;
///         Ok(id)
///     }
/// }
///
/// # async fn run() -> Result<(), AppError> {
/// let store = PostgresStore::connect("postgres://app@db.internal/app").await?;
/// store.migrate().await?;
/// let pool = store.pool().clone();
/// let payments = Payments { idem: Idempotency::new(store) };
/// let mut conn = pool.acquire().await?;
/// let charge = payments.charge(&mut conn, 17, 1250).await?; // a redelivery replays it
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    /// The `sqlx` this store is built on: your connections and pools must come from this
    /// version.
    pub use idem_postgres::sqlx;
    pub use idem_postgres::{
        begin, begin_recording_errors, begin_recording_errors_with, begin_with, PoolOptions,
        PostgresStore, TransactionBegun, TransactionClaim, DEFAULT_ACQUIRE_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS, DEFAULT_TABLE,
    };

    /// The request's PostgreSQL transaction, for an axum handler behind
    /// `IdempotencyLayer::new(idem).in_transaction::<PostgresStore>()` (features `postgres` and
    /// `axum`): the handler's writes through `&mut *tx` commit with its recorded response. See
    /// [`idem::http::Tx`](crate::http::Tx).
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub type Tx = idem_http::Tx<PostgresStore>;

    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub use crate::postgres_connection::Connection;
}

/// Advanced (feature `testing`): the store contract suite, for the tests of a
/// [`Store`](store::Store) of your own. `store_contract_tests!` generates one `#[tokio::test]`
/// per check of the contract (so the tests need tokio with `rt-multi-thread` and `macros`):
///
/// ```text
/// idem::testing::store_contract_tests!(async { MyStore::connect("...").await.unwrap() });
/// ```
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing {
    pub use idem_core::testing::*;
    pub use idem_core::{store_admin_contract_tests, store_contract_tests};
}

#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
