//! The store contract suite against a real PostgreSQL: a private cluster per test (or the
//! database at `IDEM_TEST_DATABASE_URL`), each test with a table of its own.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use idem_core::admin::StoreAdmin;
use idem_core::testing::{AdminFixture, Fixture};
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
