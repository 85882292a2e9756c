//! The fault scenarios, each a workload against a store under one kind of fault, returning the
//! oracle's [`Report`]. The tests run them in a short form with hard assertions; the `chaos`
//! example runs them longer and prints the table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{Idempotency, MemoryStore, Store};
use idem_redis::redis::aio::ConnectionManagerConfig;
use idem_redis::RedisStore;

use crate::workload::{self, History, Report, Spec};
use crate::{FaultPlan, FaultProxy, FaultyStore, ProxyFaults};
use idem_test_servers::{RedisCluster, RedisServer};

/// Which store a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store.
    Memory,
    /// A standalone `redis-server` started for the scenario.
    Redis,
    /// A 3-master Redis Cluster started for the scenario.
    Cluster,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Cluster => "cluster",
        })
    }
}

/// A client that gives up on a reply after 300ms, so slow replies become timeouts.
fn client_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_number_of_retries(2)
}

/// The store of `backend`, with the servers behind it (kept alive by the caller).
async fn backend(backend: Backend) -> Result<(Arc<dyn Store>, Vec<RedisServer>), idem_core::Error> {
    Ok(match backend {
        Backend::Memory => (Arc::new(MemoryStore::new()), Vec::new()),
        Backend::Redis => {
            let server = RedisServer::start();
            let store = RedisStore::connect_with_config(&server.url(), client_config()).await?;
            (Arc::new(store), vec![server])
        }
        Backend::Cluster => {
            let cluster = RedisCluster::start();
            let urls = cluster.urls();
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            let store = RedisStore::connect_cluster(&urls).await?;
            (Arc::new(store), cluster.nodes)
        }
    })
}

/// The runtime under test tries each store operation once, so that store errors reach the
/// calls (and the oracle) instead of being absorbed by its own retries.
fn runtime(store: Arc<dyn Store>, lease: Duration) -> Idempotency {
    Idempotency::from_arc(store)
        .with_store_attempts(1)
        .with_lease(lease)
}

/// Seeded store faults (fail before applying, apply then fail, delays) on any backend.
pub async fn store_faults(
    on: Backend,
    spec: &Spec,
    plan: FaultPlan,
) -> Result<Report, idem_core::Error> {
    let (store, _servers) = backend(on).await?;
    let faulty = Arc::new(FaultyStore::new(store, plan, spec.seed));
    let idem = runtime(faulty.clone(), spec.lease);
    let (report, _) = workload::run(&idem, spec, || faulty.heal()).await;
    Ok(report)
}

/// Renewals that fail while bodies run longer than the lease: outside the boundary. Another
/// delivery takes over the lapsed claim, so both bodies run; the stale one's record is refused
/// (`LeaseLost`). Returns the measured report.
pub async fn lease_overrun(on: Backend, spec: &Spec) -> Result<Report, idem_core::Error> {
    let (store, _servers) = backend(on).await?;
    let faulty = Arc::new(FaultyStore::new(store, FaultPlan::NONE, spec.seed));
    faulty.fail_renewals();
    let idem = runtime(faulty.clone(), spec.lease);
    let (report, _) = workload::run(&idem, spec, || faulty.heal()).await;
    Ok(report)
}

/// Network faults between the client and a standalone `redis-server`, through the proxy:
/// `faults` all along, plus a reset of every connection every `reset_every`, plus a black hole
/// for 400ms of every second when `black_holes` is set.
pub async fn network_faults(
    spec: &Spec,
    faults: ProxyFaults,
    reset_every: Option<Duration>,
    black_holes: bool,
) -> Result<(Report, (u64, u64)), idem_core::Error> {
    let server = RedisServer::start();
    let upstream = SocketAddr::from(([127, 0, 0, 1], server.port));
    let proxy = Arc::new(
        FaultProxy::start(upstream, spec.seed)
            .await
            .map_err(|err| idem_core::Error::store("connect", err))?,
    );
    let store = RedisStore::connect_with_config(&proxy.url(), client_config()).await?;
    let idem = runtime(Arc::new(store), spec.lease);
    proxy.set(faults);
    let disturber = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(reset_every.unwrap_or(Duration::from_millis(600))).await;
                if reset_every.is_some() {
                    proxy.reset_all();
                }
                if black_holes {
                    proxy.set(ProxyFaults {
                        black_hole: true,
                        ..faults
                    });
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    proxy.set(faults);
                }
            }
        })
    };
    let (report, _) = workload::run(&idem, spec, || {
        disturber.abort();
        proxy.heal();
    })
    .await;
    Ok((report, proxy.counts()))
}

/// Delivers every key of `spec` once more (up to `spec.attempts` tries each) into `history`.
pub async fn redeliver(idem: &Idempotency, spec: &Spec, history: &Arc<History>) -> Report {
    let keys = spec.keys();
    for key in &keys {
        for _ in 0..spec.attempts {
            if history.call(idem, key, spec.lease, Duration::ZERO).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    history.report(&keys)
}

/// The workload, then a SIGKILL and restart of the server, then every key delivered again:
/// with `appendfsync always` (`durable`) the records survive; without persistence they are
/// gone and every key runs again (outside the boundary).
pub async fn restart(spec: &Spec, durable: bool) -> Result<Report, idem_core::Error> {
    let args: &[&str] = if durable {
        &[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
    } else {
        &["--save", "", "--appendonly", "no"]
    };
    let mut server = RedisServer::start_with(args);
    let idem = runtime(
        Arc::new(RedisStore::connect_with_config(&server.url(), client_config()).await?),
        spec.lease,
    );
    let (_, history) = workload::run(&idem, spec, || {}).await;
    server.restart();
    let idem = runtime(
        Arc::new(RedisStore::connect_with_config(&server.url(), client_config()).await?),
        spec.lease,
    );
    Ok(redeliver(&idem, spec, &history).await)
}

/// A primary and a replica that replicates through the fault proxy; the proxy black-holes the
/// replication stream (lag), every key is delivered once to the primary, the primary dies, the
/// replica is promoted, and every key is delivered again. Without `WAIT` the records never
/// reached the replica and every key runs again (outside the boundary); with `WAIT`
/// (`replica_acks`) no body runs on an unreplicated claim, so nothing runs twice. Returns the
/// reports before and after the failover.
pub async fn failover(
    spec: &Spec,
    replica_acks: bool,
) -> Result<(Report, Report), idem_core::Error> {
    let primary = RedisServer::start_with(&["--save", "", "--repl-diskless-sync-delay", "0"]);
    let upstream = SocketAddr::from(([127, 0, 0, 1], primary.port));
    let link = FaultProxy::start(upstream, spec.seed)
        .await
        .map_err(|err| idem_core::Error::store("connect", err))?;
    let link_port = link.port().to_string();
    let replica = RedisServer::start_with(&["--save", "", "--replicaof", "127.0.0.1", &link_port]);
    while !primary
        .cli(&["info", "replication"])
        .contains("state=online")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    link.set(ProxyFaults {
        black_hole: true,
        ..ProxyFaults::default()
    });
    let mut store = RedisStore::connect_with_config(&primary.url(), client_config()).await?;
    if replica_acks {
        store = store.with_replica_acks(1, Duration::from_millis(200));
    }
    let idem = runtime(Arc::new(store), spec.lease);
    let history = Arc::new(History::default());
    let once = Spec {
        attempts: 1,
        ..spec.clone()
    };
    let before = redeliver(&idem, &once, &history).await;
    drop(primary); // the primary dies,
    drop(link); // and the replication stream it never forwarded with it
    replica.cli(&["replicaof", "no", "one"]);
    let promoted = runtime(
        Arc::new(RedisStore::connect_with_config(&replica.url(), client_config()).await?),
        spec.lease,
    );
    let after = redeliver(&promoted, spec, &history).await;
    Ok((before, after))
}
