//! `RedisStore`: the `Store` contract on Redis and Redis Cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use idem_core::{ClaimOutcome, ClaimRequest, Error, Fence, Store};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult, Script, Value};

use crate::scripts::{CLAIM, COMPLETE, HOLD, RELEASE, RENEW};
use crate::server_clock::{self, Proposal, ServerClock};
use crate::state::{self, State};
use crate::waiters::Waiters;

/// How long a waiter without a subscriber sleeps between re-checks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Waits shorter than this do not subscribe (a subscription takes a round trip).
const MIN_SUBSCRIBED_WAIT: Duration = Duration::from_millis(20);
/// How long a subscribed waiter waits for a wake-up before it re-checks the key anyway.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A [`Store`] on Redis (or Redis Cluster, feature `cluster`): the shared authority for many
/// service instances.
///
/// * A claim is one plain command, `SET key pending NX PX lease GET`: it claims a free key, and
///   returns a completed record to a replay, without running a script. Every other transition
///   (recording, releasing, renewing, and claims that find a claim in progress or a released
///   one) is a Lua script, atomic on the server; scripts validate before their first write.
/// * Leases expire by the server's clock (`PX`), never a client's.
/// * Fencing tokens increase across claims of a key: see "Fences" below.
/// * All Redis keys of one idempotency key share a hash tag, so every command is single-slot and
///   works on a cluster.
/// * Costs: a first execution takes 2 round trips (claim, record), a replay 1 and no script;
///   an in-progress answer 2; renewals only happen for bodies longer than a third of the lease.
///   Needs Redis 7.0 or later for `SET ... NX GET`; on an older server every claim runs the
///   claim script instead (also 1 round trip, but a script).
///
/// # Fences
///
/// A fast claim proposes its fence: the server's clock in µs as this store estimates it. The
/// store reads the server's `TIME` together with a claim (same round trip) at most about once
/// a second, and in between adds the time elapsed on this machine's monotonic clock; on a
/// cluster, whose nodes have their own clocks, and over a connection from
/// [`from_connection`](Self::from_connection), every claim reads `TIME`. A proposal is kept
/// only if it is provably within 100ms of the server's clock when the claim was written
/// (allowing for the reading's round trip, the claim's round trip and 1000 ppm of drift);
/// otherwise the claim script replaces it with `max(last + 1, server µs)`. The bound is the same
/// for every claim, whatever its lease.
///
/// A key is only claimable afresh once the previous claim's lease has run out (a record or a
/// released claim keeps the key at least that long), so a new fence is at least
/// `previous lease - 100ms` above the previous claim's server time, and the previous fence at
/// most 100ms above it: fences increase as long as every lease is longer than 200ms (this store
/// treats a shorter one as `idem::MIN_LEASE`, 250ms, and the runtime never
/// asks for less), the server's clock does not go back, and (with `connect`) a failover does
/// not move to a server whose clock differs by more than 100ms within a second of it. Fences
/// have at most 16 digits (`2^53 - 1`, what Lua computes exactly); the scripts and this side
/// refuse anything else at idem's keys as corrupt before writing.
pub struct RedisStore<C = ConnectionManager> {
    pub(crate) connection: C,
    pub(crate) key_prefix: String,
    replica_acks: Option<(u32, Duration)>,
    waiters: Waiters,
    /// False once the server refused `SET ... NX GET` (Redis before 7.0).
    plain_claims: AtomicBool,
    /// The server's clock as last read; unused when `time_per_claim`.
    server_clock: ServerClock,
    /// Read `TIME` with every claim: on a cluster, and on connections we did not make.
    time_per_claim: bool,
    /// Sends a command to one node: set on clusters, where redis-rs would otherwise send
    /// `WAIT` to every primary and keep the least count, and `SCAN` to a random node.
    pub(crate) router: Option<Router>,
}

/// One node of a cluster.
#[cfg_attr(
    not(feature = "cluster"),
    allow(
        dead_code,
        reason = "only the cluster's router reads where a command goes"
    )
)]
pub(crate) enum Node {
    /// The primary that holds a key.
    PrimaryOf(String),
    /// The node at this address.
    At(String, u16),
    /// Any node.
    Any,
}

type RoutedFuture = std::pin::Pin<Box<dyn std::future::Future<Output = RedisResult<Value>> + Send>>;
pub(crate) type Router = std::sync::Arc<dyn Fn(redis::Cmd, Node) -> RoutedFuture + Send + Sync>;

/// What the fast claim did.
enum FastClaim {
    /// It decided.
    Done(ClaimOutcome),
    /// The claim script must decide; `wrote` when the fast claim's `SET` was applied (a claim of
    /// this attempt is in place, under a fence the script may replace).
    ToScript { wrote: bool },
}

/// The Redis keys of one idempotency key.
pub(crate) struct Keys {
    pub(crate) state: String,
    fence: String,
    pub(crate) channel: String,
}

impl Keys {
    fn beside(state: String) -> Self {
        Self {
            fence: format!("{state}:fence"),
            channel: format!("{state}:changed"),
            state,
        }
    }
}

impl<C> std::fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.key_prefix)
            .field("replica_acks", &self.replica_acks)
            .finish_non_exhaustive()
    }
}

/// How long `connect`'s connections may take to connect.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `connect`'s connections wait for a reply. A command that gets none is reported as
/// indeterminate; keep `with_replica_acks`'s timeout below it.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(400);

impl RedisStore<ConnectionManager> {
    /// Connects to `url` (`redis://host:port/db`, `rediss://...`, `redis+unix:///path`) with a
    /// reconnecting [`ConnectionManager`] set to fail fast, so that a request path gets the
    /// store's verdict within about a second when Redis is down: connections time out after
    /// [`DEFAULT_CONNECTION_TIMEOUT`] (500ms), replies after [`DEFAULT_RESPONSE_TIMEOUT`]
    /// (400ms), and a broken connection is reconnected once (after 50ms) before a command fails.
    /// With the runtime's 3 attempts per store operation, a call against a stopped server failed
    /// in 0.15-0.23s and against a silent one in 1.24s in the fail-fast tests (redis-rs's own
    /// defaults took 19s). [`fail_fast_config`](Self::fail_fast_config) is that configuration,
    /// to adjust and pass to [`connect_with_config`](Self::connect_with_config).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with_config(url, Self::fail_fast_config()).await
    }

    /// The connection settings of [`connect`](Self::connect).
    pub fn fail_fast_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_CONNECTION_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200))
    }

    /// Connects with your own connection settings (timeouts, retries).
    pub async fn connect_with_config(
        url: &str,
        config: ConnectionManagerConfig,
    ) -> Result<Self, Error> {
        let info = connection_info(url)?;
        let server = info.addr().to_string();
        let client = redis::Client::open(info).map_err(|err| connect_error(&server, err))?;
        Self::connect_with_client(client, config).await
    }

    /// Connects through a client you built: for TLS with your own certificate authority or a
    /// client certificate (`redis::Client::build_with_tls`, feature `tls`), or anything else
    /// `redis::Client` can be told. `config` is [`fail_fast_config`](Self::fail_fast_config)
    /// unless you have reasons. Checks the eviction policy as [`connect`](Self::connect) does.
    ///
    /// ```no_run
    /// # async fn example(ca_pem: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    /// # mod idem { pub mod redis {
    /// #     pub use idem_redis::redis::{Client, TlsCertificates};
    /// #     pub use idem_redis::RedisStore;
    /// # } } // the `idem` crate's re-exports
    /// use idem::redis::{Client, RedisStore, TlsCertificates};
    ///
    /// let certificates = TlsCertificates { client_tls: None, root_cert: Some(ca_pem) };
    /// let client = Client::build_with_tls("rediss://redis.internal:6380", certificates)?;
    /// let store = RedisStore::connect_with_client(client, RedisStore::fail_fast_config()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_client(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, Error> {
        use_tls_provider();
        let url = client.get_connection_info().addr().to_string();
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|err| connect_error(&url, err))?;
        let mut store = Self::from_connection(connection).with_pubsub(client);
        // One server behind one connection: a reading of its clock stays valid between claims.
        store.time_per_claim = false;
        store.check_eviction_policy().await?;
        Ok(store)
    }
}

#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
impl RedisStore<redis::cluster_async::ClusterConnection> {
    /// Connects to a Redis Cluster through any of its nodes' URLs.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, Error> {
        use_tls_provider();
        let infos = nodes
            .iter()
            .map(|node| connection_info(node))
            .collect::<Result<Vec<_>, _>>()?;
        let joined = infos
            .iter()
            .map(|info| info.addr().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let client = redis::cluster::ClusterClient::new(infos.clone())
            .map_err(|err| connect_error(&joined, err))?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(|err| connect_error(&joined, err))?;
        // Cluster PUBLISH reaches every node, so any node can serve the waiters.
        let router = connection.clone();
        let mut store = Self::from_connection(connection);
        store.router = Some(std::sync::Arc::new(move |command, node| {
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let mut connection = router.clone();
            let node = match node {
                Node::PrimaryOf(key) => {
                    SingleNodeRoutingInfo::SpecificNode(Route::with_key(&key, SlotAddr::Master))
                }
                Node::At(host, port) => SingleNodeRoutingInfo::ByAddress { host, port },
                Node::Any => SingleNodeRoutingInfo::Random,
            };
            let route = RoutingInfo::SingleNode(node);
            Box::pin(async move { connection.route_command(command, route).await })
        }));
        store.check_eviction_policy().await?;
        Ok(match infos.into_iter().next().map(redis::Client::open) {
            Some(Ok(client)) => store.with_pubsub(client),
            _ => store,
        })
    }
}

/// With the `tls` feature, makes rustls's `ring` provider the process's default unless one was
/// installed already: rustls cannot pick one by itself when the build enables two (`ring` here,
/// `aws-lc-rs` through another crate), and would panic on the first TLS connection.
fn use_tls_provider() {
    #[cfg(feature = "tls")]
    {
        // An error means a provider is installed already, which is what we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The connection settings of `url`, without the `CLIENT SETINFO` redis-rs sends on connect (a
/// command the least-privilege ACL rule does not grant). Errors never show the URL, which may
/// hold a password: the messages end up in logs.
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, Error> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(|err| {
        Error::store(
            "connect",
            format!(
                "the Redis URL does not parse ({:?}); write it as \
                 redis://[user:password@]host:port[/db], rediss://... or redis+unix:///path",
                err.kind()
            ),
        )
    })?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_redis_settings(settings))
}

fn connect_error(url: &str, err: RedisError) -> Error {
    Error::store(
        "connect",
        format!(
            "cannot connect to Redis at {url}: {err}; is the server running and the URL right?"
        ),
    )
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over a connection you made (a `MultiplexedConnection`, a `ConnectionManager`, a
    /// cluster connection, or your own wrapper). Waiting duplicates poll unless you also give
    /// a client for pub/sub with [`with_pubsub`](Self::with_pubsub).
    pub fn from_connection(connection: C) -> Self {
        Self {
            connection,
            key_prefix: String::new(),
            replica_acks: None,
            waiters: Waiters::new(None),
            plain_claims: AtomicBool::new(true),
            server_clock: ServerClock::default(),
            time_per_claim: true,
            router: None,
        }
    }

    /// Refuses a server that may evict idem's keys: one with a memory limit (`maxmemory`) and
    /// an eviction policy other than `noeviction`. Every idem key has an expiry, so the
    /// `volatile-*` policies (a common default of managed Redis) evict them as readily as the
    /// `allkeys-*` ones, and an evicted claim, record or fence lets a duplicate run the body
    /// again. It reads `INFO memory` (which managed services that block `CONFIG` still answer),
    /// from every primary of a cluster. `connect`, `connect_with_config` and `connect_cluster`
    /// call this; a store built with [`from_connection`](Self::from_connection) does not, so
    /// that is the way to accept the risk. A server that refuses `INFO` cannot be checked and is
    /// accepted; a reply without the memory settings is refused.
    pub async fn check_eviction_policy(&self) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let reply: RedisResult<Value> = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut connection)
            .await;
        let Ok(reply) = reply else {
            return Ok(());
        };
        let mut sections = Vec::new();
        info_texts(&reply, &mut sections);
        let mut checked = 0;
        for section in &sections {
            let field = |name: &str| {
                section.lines().find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .map(str::trim)
                })
            };
            let (Some(limit), Some(policy)) = (field("maxmemory"), field("maxmemory_policy"))
            else {
                continue;
            };
            checked += 1;
            if limit != "0" && policy != "noeviction" {
                return Err(Error::store(
                    "connect",
                    format!(
                        "the Redis server may evict idem's keys (maxmemory {limit}, \
                         maxmemory-policy {policy}): an evicted claim or record lets a duplicate \
                         run again; set `maxmemory-policy noeviction` (writes then fail when \
                         memory is full, and idem fails closed), or accept the risk by building \
                         the store with `RedisStore::from_connection`"
                    ),
                ));
            }
        }
        if checked == 0 {
            return Err(Error::store(
                "connect",
                format!(
                    "cannot tell whether the Redis server may evict idem's keys: its `INFO \
                     memory` reply has no maxmemory settings ({:.120}); build the store with \
                     `RedisStore::from_connection` to skip this check",
                    format!("{reply:?}")
                ),
            ));
        }
        Ok(())
    }

    /// Wakes waiting duplicates through pub/sub on a connection of `client`'s.
    #[must_use]
    pub fn with_pubsub(mut self, client: redis::Client) -> Self {
        self.waiters = Waiters::new(Some(client));
        self
    }

    /// Puts `prefix` before every Redis key (the runtime's own prefix, `idem:` by default, comes
    /// after it). It may not contain `{` or `}`, which Redis Cluster reads as a hash tag.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        if prefix.contains(['{', '}']) {
            return Err(Error::invalid_key(format!(
                "the Redis key prefix `{prefix}` contains `{{` or `}}`, which would change the hash slot of idem's keys"
            )));
        }
        self.key_prefix = prefix;
        Ok(self)
    }

    /// After every claim, renewal and record, waits until `replicas` replicas acknowledged the
    /// write (`WAIT replicas timeout`, on a cluster sent to the primary that holds the key), and
    /// fails closed when fewer do: a claim then reports a store error (the body does not run), a
    /// renewal is retried while the lease holds, a record is retried and then reported as not
    /// recorded. (A store built with `from_connection` over a cluster connection sends `WAIT`
    /// the way redis-rs routes it: to every primary, keeping the least count.)
    /// Each acknowledged write costs one more round trip. Keep `timeout` below the connection's
    /// response timeout ([`DEFAULT_RESPONSE_TIMEOUT`], 400ms, with `connect`), or the `WAIT`
    /// itself times out.
    #[must_use]
    pub fn with_replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_acks = Some((replicas, timeout));
        self
    }

    /// The state key alone: all a fast claim needs.
    pub(crate) fn state_key(&self, key: &str) -> String {
        // The braces make the whole idempotency key the hash tag: every key beside it is one slot.
        format!("{}{{{key}}}", self.key_prefix)
    }

    pub(crate) fn keys(&self, key: &str) -> Keys {
        Keys::beside(self.state_key(key))
    }

    pub(crate) async fn invoke(
        &self,
        operation: &'static str,
        keys: &Keys,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Value, Error> {
        let mut invocation = script.key(&keys.state);
        invocation.key(&keys.fence);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|err| redis_error(operation, &keys.state, err))
    }

    /// A fenced write's answer: `OK` or `LOST`.
    async fn fenced(
        &self,
        operation: &'static str,
        key: &str,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<(), Error> {
        let keys = self.keys(key);
        let reply = self.invoke(operation, &keys, script, args).await?;
        match reply_text(&reply) {
            Some(b"OK") => Ok(()),
            Some(b"LOST") => Err(Error::lease_lost(key)),
            _ => Err(unexpected(operation, &reply)),
        }
    }

    /// `WAIT replicas timeout` on the primary that holds `state` (the key just written); fails
    /// closed when fewer replicas acknowledged.
    pub(crate) async fn await_replicas(
        &self,
        operation: &'static str,
        state: &str,
    ) -> Result<(), Error> {
        let Some((replicas, timeout)) = self.replica_acks else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(millis(timeout));
        let reply = match &self.router {
            Some(route) => route(wait, Node::PrimaryOf(state.to_owned())).await,
            None => {
                let mut connection = self.connection.clone();
                wait.query_async(&mut connection).await
            }
        };
        let reply = reply.map_err(|err| redis_error(operation, "WAIT", err))?;
        let acked = i64::from_redis_value(reply).map_err(|err| {
            Error::store_indeterminate(operation, format!("unexpected WAIT reply: {err}"))
        })?;
        if acked < i64::from(replicas) {
            return Err(Error::store_indeterminate(
                operation,
                format!(
                    "only {acked} of {replicas} replicas acknowledged the write within {timeout:?}; \
                     it may be lost on failover"
                ),
            ));
        }
        Ok(())
    }

    /// The fast claim: one `SET NX GET` (with `TIME` when the store has no recent reading of the
    /// server's clock), no script. `ToScript` when the claim script has to decide: the key is
    /// pending or released, the proposed fence may be too far from the server's clock (the
    /// claim was written: `wrote`), or the server is older than 7.0.
    async fn plain_claim(
        &self,
        state: &str,
        attempt: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<FastClaim, Error> {
        const UNWRITTEN: FastClaim = FastClaim::ToScript { wrote: false };
        if !self.plain_claims.load(Ordering::Relaxed) {
            return Ok(UNWRITTEN);
        }
        let sent = Instant::now();
        let estimated = if self.time_per_claim {
            None
        } else {
            self.server_clock.propose(sent)
        };
        let fence = estimated.map_or_else(server_clock::propose_from_wall_clock, |p| p.fence);
        let mut set = redis::cmd("SET");
        set.arg(state)
            .arg(format!("P:{fence}:{attempt}:{fingerprint}"))
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET");
        let mut connection = self.connection.clone();
        let (previous, error) = match estimated {
            Some(Proposal { error, .. }) => {
                let previous = set.query_async::<Value>(&mut connection).await;
                let previous = match previous {
                    Ok(previous) => previous,
                    Err(err) => return self.refused(state, err),
                };
                // The claim was written somewhere within this round trip.
                (previous, error + sent.elapsed())
            }
            None => {
                let mut pipeline = redis::pipe();
                pipeline.add_command(set).cmd("TIME");
                // Per-command errors come back as values, so that a WRONGTYPE keeps its code.
                pipeline.ignore_errors();
                let replies: Vec<Value> = pipeline
                    .query_async(&mut connection)
                    .await
                    .map_err(|err| redis_error("claim", state, err))?;
                let round_trip = sent.elapsed();
                let mut replies = replies.into_iter();
                let (previous, time) = match (replies.next(), replies.next()) {
                    (Some(Value::ServerError(err)), _) => {
                        return self.refused(state, RedisError::from(err))
                    }
                    (Some(previous), Some(time)) => (previous, time),
                    _ => return Err(unexpected("claim", &Value::Nil)),
                };
                let server_now = <(u64, u64)>::from_redis_value(time)
                    .map(|(seconds, micros)| {
                        seconds.saturating_mul(1_000_000).saturating_add(micros)
                    })
                    .map_err(|err| {
                        Error::store_indeterminate("claim", format!("unexpected TIME reply: {err}"))
                    })?;
                self.server_clock.record(server_now, sent, round_trip);
                // TIME ran right after the claim was written.
                (previous, Duration::from_micros(fence.abs_diff(server_now)))
            }
        };
        let previous = match previous {
            Value::Nil if server_clock::acceptable(error) => {
                return Ok(FastClaim::Done(ClaimOutcome::acquired(Fence(fence))))
            }
            Value::Nil => return Ok(FastClaim::ToScript { wrote: true }),
            Value::BulkString(previous) => previous,
            other => return Err(unexpected("claim", &other)),
        };
        match state::parse(&previous) {
            Some(State::Completed { record, fence }) => {
                // The record is the tail of the value: keep the reply's buffer.
                let start = previous.len() - record.len();
                let mut previous = previous;
                previous.drain(..start);
                Ok(FastClaim::Done(ClaimOutcome::completed(previous, fence)))
            }
            Some(State::Held { fence, .. }) => Ok(FastClaim::Done(ClaimOutcome::held(fence))),
            Some(State::Pending { .. } | State::Released { .. }) => Ok(UNWRITTEN),
            None => Err(Error::corrupt(state, "its value is not an idem state")),
        }
    }

    /// A refused fast claim: a syntax error means a server before 7.0 (nothing was written, use
    /// the script from now on); anything else is the claim's error.
    fn refused(&self, state: &str, err: RedisError) -> Result<FastClaim, Error> {
        if err.code() == Some("ERR") && err.to_string().contains("syntax error") {
            self.plain_claims.store(false, Ordering::Relaxed);
            return Ok(FastClaim::ToScript { wrote: false });
        }
        Err(redis_error("claim", state, err))
    }

    /// The claim script: claims in progress, released claims, and fences to correct.
    async fn script_claim(
        &self,
        key: &str,
        keys: &Keys,
        attempt: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let lease = millis(lease).to_string();
        // A pending claim of this attempt found by the fast path holds an unconfirmed proposal.
        let refence: &[u8] = if self.plain_claims.load(Ordering::Relaxed) {
            b"1"
        } else {
            b"0"
        };
        let reply = self
            .invoke(
                "claim",
                keys,
                &CLAIM,
                &[
                    attempt.as_bytes(),
                    fingerprint.as_bytes(),
                    lease.as_bytes(),
                    refence,
                ],
            )
            .await?;
        parse_claim(key, &reply).ok_or_else(|| unexpected("claim", &reply))?
    }

    /// True when `key` is still pending under `fence`.
    async fn is_pending(&self, keys: &Keys, fence: Fence) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&keys.state)
            .query_async(&mut connection)
            .await
            .map_err(|err| redis_error("wait", &keys.state, err))?;
        Ok(match value.as_deref().map(state::parse) {
            Some(Some(State::Pending { fence: current, .. })) => current == fence,
            None
            | Some(Some(State::Completed { .. } | State::Released { .. } | State::Held { .. })) => {
                false
            }
            Some(None) => return Err(Error::corrupt(&keys.state, "not an idem state value")),
        })
    }
}

#[async_trait]
impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        let state = self.state_key(request.key);
        let lease = at_least_min_lease(request.lease);
        let attempt = format!("{:032x}", request.attempt.0);
        let fingerprint = idem_core::encode::hex(request.fingerprint);
        let outcome = match self
            .plain_claim(&state, &attempt, &fingerprint, lease)
            .await?
        {
            FastClaim::Done(outcome) => outcome,
            FastClaim::ToScript { wrote } => {
                let keys = Keys::beside(state.clone());
                let scripted = self
                    .script_claim(request.key, &keys, &attempt, &fingerprint, lease)
                    .await;
                match scripted {
                    // The fast path's claim is in place, so a failing script leaves a claim
                    // held however definite its own error.
                    Err(Error::Store {
                        operation, source, ..
                    }) if wrote => return Err(Error::store_indeterminate(operation, source)),
                    other => other?,
                }
            }
        };
        if let ClaimOutcome::Acquired { .. } = outcome {
            self.await_replicas("claim", &state).await?;
        }
        Ok(outcome)
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        let keys = self.keys(key);
        let fence = fence.to_string();
        let retention = millis(retention).to_string();
        self.fenced(
            "complete",
            key,
            &COMPLETE,
            &[
                fence.as_bytes(),
                record,
                retention.as_bytes(),
                keys.channel.as_bytes(),
            ],
        )
        .await?;
        self.await_replicas("complete", &keys.state).await
    }

    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        let keys = self.keys(key);
        let fence = fence.to_string();
        self.fenced(
            "release",
            key,
            &RELEASE,
            &[fence.as_bytes(), keys.channel.as_bytes()],
        )
        .await
    }

    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        let fence = fence.to_string();
        let lease = millis(at_least_min_lease(lease)).to_string();
        self.fenced("renew", key, &RENEW, &[fence.as_bytes(), lease.as_bytes()])
            .await?;
        // A renewal a failover loses would expire a live claim early: it is acknowledged like
        // the claim it extends.
        self.await_replicas("renew", &self.state_key(key)).await
    }

    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        let keys = self.keys(key);
        let fence = fence.to_string();
        let hold = millis(hold).to_string();
        self.fenced(
            "hold",
            key,
            &HOLD,
            &[fence.as_bytes(), hold.as_bytes(), keys.channel.as_bytes()],
        )
        .await?;
        self.await_replicas("hold", &keys.state).await
    }

    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        let keys = self.keys(key);
        // Too short a wait to subscribe in: re-check the key after it instead.
        if timeout < MIN_SUBSCRIBED_WAIT {
            tokio::time::sleep(timeout).await;
            return Ok(());
        }
        let subscription = self.waiters.subscribe(&keys.channel, timeout).await;
        let changed = subscription.as_ref().map(|s| s.changed.clone());
        let mut notified = std::pin::pin!(changed.as_ref().map(|changed| changed.notified()));
        // Registered before the re-check, so a change between the two is not missed.
        if let Some(notified) = notified.as_mut().as_pin_mut() {
            notified.enable();
        }
        if !self.is_pending(&keys, fence).await? {
            return Ok(());
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        match notified.as_pin_mut() {
            // Woken by the record, or re-checked after a while in case the subscriber went
            // silent without the connection closing.
            Some(notified) => {
                let _ = tokio::time::timeout(remaining.min(RECHECK_INTERVAL), notified).await;
            }
            None => tokio::time::sleep(remaining.min(POLL_INTERVAL)).await,
        }
        Ok(())
    }
}

/// The text sections of an `INFO` reply: one string, or on a cluster a map of node to string.
fn info_texts(reply: &Value, out: &mut Vec<String>) {
    match reply {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                info_texts(item, out);
            }
        }
        Value::Map(entries) => {
            for (_, value) in entries {
                info_texts(value, out);
            }
        }
        _ => {}
    }
}

/// Parses the claim script's reply; `None` when it has an unexpected shape.
fn parse_claim(key: &str, reply: &Value) -> Option<Result<ClaimOutcome, Error>> {
    let Value::Array(items) = reply else {
        return None;
    };
    let text = |i: usize| items.get(i).and_then(reply_text);
    Some(Ok(match text(0)? {
        b"A" => ClaimOutcome::acquired(state::parse_fence(text(1)?)?),
        b"R" => match state::parse(text(1)?) {
            Some(State::Completed { record, fence }) => {
                ClaimOutcome::completed(record.to_vec(), fence)
            }
            _ => {
                return Some(Err(Error::corrupt(
                    key,
                    "the stored record has no record header",
                )))
            }
        },
        b"U" => ClaimOutcome::held(state::parse_fence(text(1)?)?),
        b"P" => ClaimOutcome::InProgress {
            fence: state::parse_fence(text(1)?)?,
            fingerprint: idem_core::encode::unhex(text(2)?)?,
            lease_remaining: match items.get(3)? {
                Value::Int(ms) => Duration::from_millis(u64::try_from(*ms).unwrap_or(0)),
                _ => return None,
            },
        },
        _ => return None,
    }))
}

pub(crate) fn reply_text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

/// A reply our own script should never give: the script ran, so the outcome is unknown.
pub(crate) fn unexpected(operation: &'static str, reply: &Value) -> Error {
    Error::store_indeterminate(
        operation,
        format!("unexpected reply from the {operation} script: {reply:?}"),
    )
}

/// Redis errors: an error reply means the command did not apply (our scripts validate before
/// writing); a refused connection means it was never sent; anything else (I/O, timeouts, a
/// dropped connection) may have applied.
pub(crate) fn redis_error(operation: &'static str, key: &str, err: RedisError) -> Error {
    if let Some("IDEM_CORRUPT" | "WRONGTYPE") = err.code() {
        return Error::corrupt(key, err.to_string());
    }
    if matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        || err.is_connection_refusal()
    {
        Error::store(operation, err)
    } else {
        Error::store_indeterminate(operation, err)
    }
}

/// Milliseconds for `PX`, from 1 to `MAX_DURATION` (Redis refuses expiries past `i64`).
pub(crate) fn millis(duration: Duration) -> u64 {
    let capped = duration.min(idem_core::MAX_DURATION).as_millis();
    u64::try_from(capped).unwrap_or(u64::MAX).max(1)
}

/// A lease of at least `MIN_LEASE`: the runtime never asks for less, and the fences of a key
/// keep increasing only while every lease is longer than twice the accepted clock error.
fn at_least_min_lease(lease: Duration) -> Duration {
    lease.max(idem_core::MIN_LEASE)
}
