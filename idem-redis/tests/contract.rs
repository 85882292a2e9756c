//! The store contract suite against real servers: a standalone `redis-server` and a 3-master
//! Redis Cluster, each started by the test itself.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use idem_core::admin::StoreAdmin;
use idem_core::testing::{AdminFixture, Fixture};
use idem_core::Store;
use idem_redis::RedisStore;
use idem_test_servers::RedisCluster;

/// A store with the servers behind it, which live as long as the test.
struct Served<S, G> {
    store: S,
    _servers: G,
}

impl<S: Store, G: Send + Sync> Fixture for Served<S, G> {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

impl<S: Store + StoreAdmin, G: Send + Sync> AdminFixture for Served<S, G> {
    fn admin(&self) -> &dyn StoreAdmin {
        &self.store
    }
}

/// A standalone store on a server of its own.
async fn standalone_store() -> Served<RedisStore, Option<idem_test_servers::RedisServer>> {
    let (url, server) = idem_test_servers::any_server();
    let store = RedisStore::connect(&url).await.unwrap();
    Served {
        store,
        _servers: server,
    }
}

/// A store on a 3-master cluster of its own.
async fn cluster_store(
) -> Served<RedisStore<idem_redis::redis::cluster_async::ClusterConnection>, RedisCluster> {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&urls).await.unwrap();
    Served {
        store,
        _servers: cluster,
    }
}

mod standalone {
    use super::*;

    idem_core::store_contract_tests!(standalone_store());
    idem_core::store_admin_contract_tests!(standalone_store());
}

mod cluster {
    use super::*;

    idem_core::store_contract_tests!(cluster_store());
    idem_core::store_admin_contract_tests!(cluster_store());
}
