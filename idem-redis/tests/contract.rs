//! The store contract suite against real servers: a standalone `redis-server` and a 3-master
//! Redis Cluster, each started by the test itself.

use idem_core::testing::Fixture;
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

mod standalone {
    use super::*;

    idem_core::store_contract_tests!(async {
        let (url, server) = idem_test_servers::any_server();
        let store = RedisStore::connect(&url).await.unwrap();
        Served {
            store,
            _servers: server,
        }
    });
}

mod cluster {
    use super::*;

    idem_core::store_contract_tests!(async {
        let cluster = RedisCluster::start();
        let urls = cluster.urls();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let store = RedisStore::connect_cluster(&urls).await.unwrap();
        Served {
            store,
            _servers: cluster,
        }
    });
}
