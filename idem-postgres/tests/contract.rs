//! The store contract suite against a real PostgreSQL: a private cluster per test (or the
//! database at `IDEM_TEST_DATABASE_URL`), each test with a table of its own.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use idem_core::admin::StoreAdmin;
use idem_core::testing::{AdminFixture, Fixture};
use std::time::Duration;

use idem_core::Store;
use idem_postgres::PostgresStore;
use idem_test_servers::PostgresServer;

/// A store with the server behind it, which lives as long as the test.
struct Served {
    store: PostgresStore,
    _server: Option<PostgresServer>,
}

impl Fixture for Served {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

impl AdminFixture for Served {
    fn admin(&self) -> &dyn StoreAdmin {
        &self.store
    }
}

async fn fresh_store() -> Served {
    let (url, server) = idem_test_servers::any_database();
    let table = format!("idem_contract_{:016x}", fastrand_u64());
    let store = PostgresStore::connect(&url)
        .await
        .unwrap()
        .with_table(&table)
        .unwrap();
    store.migrate().await.unwrap();
    Served {
        store,
        _server: server,
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

idem_core::store_contract_tests!(fresh_store());
idem_core::store_admin_contract_tests!(fresh_store());

/// Connection errors end up in logs: they name the server, never the password in its URL,
/// whether the URL parses or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_do_not_show_the_password() {
    let port = idem_test_servers::free_port();
    for url in [
        format!("postgres://idem:hunter2@127.0.0.1:{port}/app"),
        format!("postgres://idem:hunt/er2@127.0.0.1:{port}/app"),
        format!("postgres://idem:hunter2@127.0.0.1:{port}/app?sslmode=nonsense"),
    ] {
        let err = PostgresStore::connect(&url).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunt/er2"),
            "{shown}"
        );
    }
}

/// A row idem did not write (its key is not UTF-8, which no idem key is) is left out of
/// listings, and pages go on past it, instead of every listing stopping at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_row_does_not_stop_a_listing() {
    use idem_core::admin::{ListQuery, StoreAdmin};
    use idem_core::{AttemptId, ClaimRequest};
    let served = fresh_store().await;
    let store = &served.store;
    for key in ["ns:a", "ns:c"] {
        let request = ClaimRequest::new(key, AttemptId::random(), b"", Duration::from_secs(60));
        store.claim(request).await.unwrap();
    }
    // Between the two in key order, as a pending claim.
    let table = store
        .schema_sql()
        .split("CREATE TABLE IF NOT EXISTS ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (key, state, fence, attempt, fingerprint, record, lease_until, \
           expires_at) VALUES ('\\x6e733a62ff'::bytea, 0, 99, NULL, '', NULL, \
           now() + interval '1 minute', now() + interval '1 minute')"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    for limit in [1, 2, 10] {
        let mut query = ListQuery::new().starting_with("ns:").with_limit(limit);
        let mut keys = Vec::new();
        loop {
            let page = store.list(&query).await.unwrap();
            keys.extend(page.keys.into_iter().map(|summary| summary.key));
            match page.next {
                Some(next) => query = query.after(next),
                None => break,
            }
        }
        assert_eq!(keys, ["ns:a", "ns:c"], "limit {limit}");
    }
}
