//! The `#[idempotent]` behaviour checks again on Redis, standalone and cluster: same counts,
//! same results as on the memory store. Each test starts its own servers.

mod common;

use idem::redis::RedisStore;
use idem::Idempotency;

/// A runtime with the servers behind it, which live as long as the test.
struct Served<G> {
    idem: Idempotency,
    _servers: G,
}

impl<G> AsRef<Idempotency> for Served<G> {
    fn as_ref(&self) -> &Idempotency {
        &self.idem
    }
}

mod standalone {
    use super::*;

    crate::behaviour_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async {
            let (url, server) = idem_test_servers::any_server();
            let store = RedisStore::connect(&url).await.unwrap();
            Served {
                idem: Idempotency::new(store),
                _servers: server,
            }
        }
    );
}

mod cluster {
    use super::*;

    crate::behaviour_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async {
            let cluster = idem_test_servers::RedisCluster::start();
            let urls = cluster.urls();
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            let store = RedisStore::connect_cluster(&urls).await.unwrap();
            Served {
                idem: Idempotency::new(store),
                _servers: cluster,
            }
        }
    );
}
