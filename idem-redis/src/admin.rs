//! The operator's side of the Redis store.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use idem_core::admin::{
    report, timed_ping, Action, ActionOutcome, Cursor, KeyInfo, KeyPage, KeyState, KeySummary,
    ListQuery, Resolution, StateCounts, StoreAdmin,
};
use idem_core::encode::{hex, unhex};
use idem_core::{Error, Fence};
use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Value};

use crate::scripts::{EVICT, RESOLVE};
use crate::state::{self, State};
use crate::store::{redis_error, reply_text, unexpected, Keys, Node, RedisStore};

/// The bytes of a state value a listing reads: enough for its kind and fence.
const HEAD_BYTES: usize = 32;
/// How many keys a listing on a cluster reads at once.
const CLUSTER_READS: usize = 32;
/// The keys one `SCAN` step of `count` visits.
const COUNT_STEP: usize = 1000;

/// Lists keys with `SCAN` (never `KEYS`), a node at a time on a cluster: a listing visits every
/// key of the database (or of each primary), the namespace only narrowing what comes back, so
/// it is for tools, not request paths. A cursor names the node and its `SCAN` cursor, and
/// carries the keys of the last step that did not fit the page. On a cluster, a listing whose
/// primaries change between pages may miss keys; list again. Values that are not idem's at
/// idem's keys are left out of listings and counts; `inspect` reports them as corrupt (remove
/// such a value with `redis-cli DEL`). Listings need Redis 6.0 or later (`SCAN ... TYPE`). A
/// store made with [`from_connection`](RedisStore::from_connection) over a cluster connection
/// lists one node only: use [`connect_cluster`](RedisStore::connect_cluster) for tools.
#[async_trait]
impl<C> StoreAdmin for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn inspect(&self, key: &str) -> Result<Option<KeyInfo>, Error> {
        let state_key = self.state_key(key);
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("GET")
            .arg(&state_key)
            .cmd("PTTL")
            .arg(&state_key);
        let mut connection = self.connection.clone();
        let (value, ttl): (Option<Vec<u8>>, i64) = pipeline
            .query_async(&mut connection)
            .await
            .map_err(|err| redis_error("inspect", &state_key, err))?;
        let Some(value) = value else {
            return Ok(None);
        };
        let left = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
        match state::parse(&value) {
            Some(State::Pending {
                fence, fingerprint, ..
            }) => {
                let fingerprint = unhex(fingerprint)
                    .ok_or_else(|| Error::corrupt(&state_key, "its fingerprint is not hex"))?;
                Ok(Some(KeyInfo::in_flight(
                    key.to_owned(),
                    fence,
                    left,
                    fingerprint,
                )))
            }
            Some(State::Completed { fence, record }) => Ok(Some(KeyInfo::completed(
                key.to_owned(),
                fence,
                left,
                record.to_vec(),
            ))),
            Some(State::Held { fence, fingerprint }) => {
                let fingerprint = unhex(fingerprint)
                    .ok_or_else(|| Error::corrupt(&state_key, "its fingerprint is not hex"))?;
                Ok(Some(KeyInfo::unknown(
                    key.to_owned(),
                    fence,
                    left,
                    fingerprint,
                )))
            }
            Some(State::Released { .. }) => Ok(None),
            None => Err(Error::corrupt(&state_key, "its value is not an idem state")),
        }
    }

    async fn list(&self, query: &ListQuery) -> Result<KeyPage, Error> {
        let nodes = self.nodes().await?;
        let mut at = match query.cursor() {
            Some(cursor) => Position::parse(cursor, nodes.len())?,
            None => Position::start(),
        };
        let limit = query.limit();
        let mut keys = Vec::with_capacity(limit.min(1024));
        let pattern = scan_pattern(&format!("{}{{{}", self.key_prefix, query.head()));
        // The keys carried over from the last page are read again: they may have changed.
        let mut found = std::mem::take(&mut at.carried);
        loop {
            let mut selected = self
                .summaries(found)
                .await?
                .into_iter()
                .filter(|summary| query.selects(&summary.key, summary.state));
            keys.extend(selected.by_ref().take(limit - keys.len()));
            at.carried = selected.map(|summary| summary.key).collect();
            if keys.len() == limit || at.node >= nodes.len() {
                break;
            }
            let step = (limit - keys.len()).max(10);
            let (next, step_keys) = self.scan(&nodes[at.node], at.scan, &pattern, step).await?;
            found = step_keys;
            at.scan = next;
            if next == 0 {
                at.node += 1;
            }
        }
        let done = at.node >= nodes.len() && at.carried.is_empty();
        Ok(KeyPage::new(keys, (!done).then(|| at.cursor())))
    }

    async fn count(&self) -> Result<StateCounts, Error> {
        let pattern = scan_pattern(&format!("{}{{", self.key_prefix));
        let mut counts = StateCounts::default();
        for node in &self.nodes().await? {
            let mut scan = 0;
            loop {
                let (next, found) = self.scan(node, scan, &pattern, COUNT_STEP).await?;
                for summary in self.summaries(found).await? {
                    counts.add(summary.state, 1);
                }
                if next == 0 {
                    break;
                }
                scan = next;
            }
        }
        Ok(counts)
    }

    async fn evict(
        &self,
        key: &str,
        fence: Fence,
        state: KeyState,
    ) -> Result<ActionOutcome, Error> {
        let kind: &[u8] = match state {
            KeyState::InFlight => b"P",
            KeyState::Completed => b"R",
            KeyState::Unknown => b"U",
            _ => return Ok(ActionOutcome::Changed),
        };
        let keys = self.keys(key);
        let fence_text = fence.to_string();
        let reply = self
            .invoke(
                "evict",
                &keys,
                &EVICT,
                &[fence_text.as_bytes(), keys.channel.as_bytes(), kind],
            )
            .await?;
        self.acted("evict", Action::Evicted, (key, fence), &keys, &reply)
            .await
    }

    async fn resolve(
        &self,
        key: &str,
        fence: Fence,
        resolution: Resolution,
    ) -> Result<ActionOutcome, Error> {
        resolution.check()?;
        let keys = self.keys(key);
        let fence_text = fence.to_string();
        let mut args: Vec<Vec<u8>> =
            vec![fence_text.into_bytes(), keys.channel.clone().into_bytes()];
        let action = match resolution {
            Resolution::Release => Action::Released,
            Resolution::Record { record, retention } => {
                args.push(record);
                args.push(crate::store::millis(retention).to_string().into_bytes());
                Action::Recorded
            }
            other => {
                return Err(Error::invalid_option(format!(
                    "this store cannot resolve a key with {other:?}"
                )))
            }
        };
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = self.invoke("resolve", &keys, &RESOLVE, &args).await?;
        self.acted("resolve", action, (key, fence), &keys, &reply)
            .await
    }

    async fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        timed_ping(timeout, async {
            let mut connection = self.connection.clone();
            redis::cmd("PING")
                .query_async::<Value>(&mut connection)
                .await
                .map(drop)
                .map_err(|err| redis_error("ping", "PING", err))
        })
        .await
    }
}

/// A node to scan: the one connection, or a cluster primary's address.
enum ScanNode {
    Connection,
    Primary(String, u16),
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// An operator's script's answer: `OK` (reported, and acknowledged by replicas as the
    /// store's writes are) or `CHANGED`.
    async fn acted(
        &self,
        operation: &'static str,
        action: Action,
        (key, fence): (&str, Fence),
        keys: &Keys,
        reply: &Value,
    ) -> Result<ActionOutcome, Error> {
        match reply_text(reply) {
            Some(b"OK") => {
                self.await_replicas(operation, &keys.state).await?;
                report(action, key, fence);
                Ok(ActionOutcome::Applied)
            }
            Some(b"CHANGED") => Ok(ActionOutcome::Changed),
            _ => Err(unexpected(operation, reply)),
        }
    }

    /// The nodes that hold keys, in a stable order: the primaries of a cluster (by address),
    /// or the one server.
    async fn nodes(&self) -> Result<Vec<ScanNode>, Error> {
        let Some(route) = &self.router else {
            return Ok(vec![ScanNode::Connection]);
        };
        let slots = route(redis::cmd("CLUSTER").arg("SLOTS").clone(), Node::Any)
            .await
            .map_err(|err| redis_error("list", "CLUSTER SLOTS", err))?;
        let mut primaries =
            primaries(&slots).ok_or_else(|| unexpected_reply("CLUSTER SLOTS", &slots))?;
        primaries.sort();
        primaries.dedup();
        Ok(primaries
            .into_iter()
            .map(|(host, port)| ScanNode::Primary(host, port))
            .collect())
    }

    /// One `SCAN` step on `node`: the next cursor, and the store keys of the state keys found.
    async fn scan(
        &self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), Error> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg("string");
        let reply = match (node, &self.router) {
            (ScanNode::Primary(host, port), Some(route)) => {
                route(scan, Node::At(host.clone(), *port)).await
            }
            _ => {
                let mut connection = self.connection.clone();
                scan.query_async::<Value>(&mut connection).await
            }
        }
        .map_err(|err| redis_error("list", "SCAN", err))?;
        let (next, found) = <(u64, Vec<Vec<u8>>)>::from_redis_value(reply.clone())
            .map_err(|_| unexpected_reply("SCAN", &reply))?;
        let opening = format!("{}{{", self.key_prefix);
        // State keys only: `{prefix}{key}`, not the `:fence` key beside one.
        let keys = found
            .into_iter()
            .filter_map(|found| String::from_utf8(found).ok())
            .filter_map(|found| {
                found
                    .strip_prefix(opening.as_str())
                    .and_then(|rest| rest.strip_suffix('}'))
                    .map(str::to_owned)
            })
            .collect();
        Ok((next, keys))
    }

    /// The state, fence and time left of each key, read with one pipeline; keys that are gone,
    /// released or not idem's are left out.
    async fn summaries(&self, keys: Vec<String>) -> Result<Vec<KeySummary>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let read = |keys: &[String]| {
            let mut pipeline = redis::pipe();
            for key in keys {
                let state_key = self.state_key(key);
                pipeline
                    .cmd("GETRANGE")
                    .arg(&state_key)
                    .arg(0)
                    .arg(HEAD_BYTES - 1)
                    .cmd("PTTL")
                    .arg(&state_key);
            }
            let mut connection = self.connection.clone();
            async move {
                pipeline
                    .query_async::<Vec<(Vec<u8>, i64)>>(&mut connection)
                    .await
                    .map_err(|err| redis_error("list", "GETRANGE", err))
            }
        };
        let replies: Vec<(Vec<u8>, i64)> = if self.router.is_some() {
            // A cluster pipeline must stay in one slot: one per key, a few at a time.
            futures_util::stream::iter(keys.chunks(1).map(read))
                .buffered(CLUSTER_READS)
                .try_concat()
                .await?
        } else {
            read(&keys).await?
        };
        Ok(keys
            .into_iter()
            .zip(replies)
            .filter_map(|(key, (head, ttl))| {
                let state = match state::peek(&head)? {
                    (b'P', fence) => (KeyState::InFlight, fence),
                    (b'R', fence) => (KeyState::Completed, fence),
                    (b'U', fence) => (KeyState::Unknown, fence),
                    _ => return None,
                };
                let left = Duration::from_millis(u64::try_from(ttl).ok()?);
                Some(KeySummary::new(key, state.0, state.1, left))
            })
            .collect())
    }
}

/// Where a listing resumes: a node, its `SCAN` cursor, and the keys of the last step that did
/// not fit a page. As text: `node.scan`, then `.` and the hex of each carried key.
struct Position {
    node: usize,
    scan: u64,
    carried: Vec<String>,
}

impl Position {
    fn start() -> Self {
        Self {
            node: 0,
            scan: 0,
            carried: Vec::new(),
        }
    }

    fn cursor(&self) -> Cursor {
        let mut text = format!("{}.{}", self.node, self.scan);
        for key in &self.carried {
            text.push('.');
            text.push_str(&hex(key.as_bytes()));
        }
        Cursor::new(text)
    }

    fn parse(cursor: &Cursor, nodes: usize) -> Result<Self, Error> {
        let bad = || {
            Error::invalid_option(format!(
                "`{cursor}` is not a cursor of this store's listings; start the listing again"
            ))
        };
        let mut parts = cursor.as_str().split('.');
        let mut number =
            || -> Result<u64, Error> { parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad) };
        let node = usize::try_from(number()?).map_err(|_| bad())?;
        let scan = number()?;
        if node > nodes {
            return Err(bad());
        }
        let carried = parts
            .map(|key| {
                unhex(key.as_bytes())
                    .and_then(|key| String::from_utf8(key).ok())
                    .filter(|key| !key.is_empty())
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            node,
            scan,
            carried,
        })
    }
}

/// A `SCAN MATCH` pattern for the keys that start with `text`: its glob characters escaped.
fn scan_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// The addresses of the primaries in a `CLUSTER SLOTS` reply: `[[start, end, [host, port,
/// ...], replicas...], ...]`.
fn primaries(slots: &Value) -> Option<Vec<(String, u16)>> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let Value::Array(primary) = range.get(2)? else {
                return None;
            };
            let host = String::from_utf8(reply_text(primary.first()?)?.to_vec()).ok()?;
            let port = match primary.get(1)? {
                Value::Int(port) => u16::try_from(*port).ok()?,
                _ => return None,
            };
            Some((host, port))
        })
        .collect()
}

fn unexpected_reply(command: &str, reply: &Value) -> Error {
    Error::store("list", format!("unexpected reply to {command}: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(
            scan_pattern("idem:{a*b?[c]\\"),
            "idem:{a\\*b\\?\\[c\\]\\\\*"
        );
    }

    #[test]
    fn cursors_round_trip_with_carried_keys() {
        let position = Position {
            node: 2,
            scan: 1234,
            carried: vec!["idem:ns:a.b%3A".into(), "x".into()],
        };
        let parsed = Position::parse(&position.cursor(), 3).unwrap();
        assert_eq!((parsed.node, parsed.scan), (2, 1234));
        assert_eq!(parsed.carried, position.carried);
        for bad in ["", "1", "x.1", "9.0", "0.0.zz", "0.0.", "0.0.ff"] {
            assert!(Position::parse(&Cursor::new(bad), 3).is_err(), "{bad}");
        }
    }
}
