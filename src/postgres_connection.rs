//! `idem::postgres::Connection`: a pooled connection as an axum extractor, for handlers with
//! `#[idempotent(transaction = conn)]`.

use std::ops::{Deref, DerefMut};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use idem_postgres::sqlx::pool::PoolConnection;
use idem_postgres::sqlx::{self, PgConnection, PgPool, Postgres};

use crate::http::Problem;

/// A connection of the application's pool, taken by an axum handler as an argument: name it in
/// `#[idempotent(transaction = conn)]` and the claim, the handler's writes through it and the
/// recorded response commit in one transaction. The router's state must give the pool
/// (`PgPool: FromRef<State>`). When no connection can be had within the pool's acquire
/// timeout, the request is answered 503 (a problem saying so) and the handler does not run: give
/// it the store's pool (`PostgresStore::pool`), whose timeout is 1 s, for a fast answer when the
/// database is down (sqlx's own default is 30 s).
///
/// Inside the function, the argument's name is the transaction's connection
/// (`&mut PgConnection`): write through `&mut *conn`.
///
/// ```no_run
/// use axum::extract::{FromRef, State};
/// use axum::{http::StatusCode, Json};
/// use idem::http::{IdempotencyKey, Problem};
/// use idem::postgres::{sqlx, Connection};
/// use idem::{idempotent, Idempotency};
///
/// #[derive(Clone)]
/// struct App { idem: Idempotency, pool: sqlx::PgPool }
///
/// impl FromRef<App> for sqlx::PgPool {
///     fn from_ref(app: &App) -> Self { app.pool.clone() }
/// }
///
/// #[idempotent(key = key, using = &app.idem, fingerprint = cents, transaction = conn)]
/// async fn charge(
///     State(app): State<App>,
///     key: IdempotencyKey,
///     mut conn: Connection,
///     Json(cents): Json<i64>,
/// ) -> Result<(StatusCode, Json<i64>), Problem> {
///     let id = sqlx::query_scalar("INSERT INTO charges (cents) VALUES ($1) RETURNING id")
///         .bind(cents)
///         .fetch_one(&mut *conn) // commits with the recorded 201
///         .await
///         .map_err(|_| Problem::status(StatusCode::SERVICE_UNAVAILABLE, "the database failed"))?;
///     Ok((StatusCode::CREATED, Json(id)))
/// }
/// ```
#[derive(Debug)]
pub struct Connection(PoolConnection<Postgres>);

impl Connection {
    /// The pooled connection.
    pub fn into_inner(self) -> PoolConnection<Postgres> {
        self.0
    }
}

impl Deref for Connection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl<S> FromRequestParts<S> for Connection
where
    PgPool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(_: &mut Parts, state: &S) -> Result<Self, Problem> {
        let unavailable = |detail: String| Problem::status(StatusCode::SERVICE_UNAVAILABLE, detail);
        match PgPool::from_ref(state).acquire().await {
            Ok(connection) => Ok(Self(connection)),
            Err(sqlx::Error::PoolClosed) => Err(unavailable(
                "the service is shutting down (its database pool is closed); retry against \
                 another instance, or later"
                    .to_owned(),
            )),
            Err(err) => Err(unavailable(format!(
                "no database connection could be had ({err}); the handler did not run, retry \
                 later"
            ))),
        }
    }
}

impl crate::private::OwnedConnection for Connection {
    type Connection = PgConnection;
    fn connection(&mut self) -> &mut PgConnection {
        self
    }
}
