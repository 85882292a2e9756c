//! The command line.

use std::time::Duration;

use clap::{Parser, Subcommand};
use idem_core::admin::KeyState;

/// See and act on idem's idempotency keys.
#[derive(Debug, Parser)]
#[command(name = "idem", version)]
pub(crate) struct Args {
    /// The store: a `redis://`, `rediss://` or `postgres://` URL.
    #[arg(long, env = "IDEM_STORE", value_name = "URL")]
    pub(crate) store: String,
    /// The URL is a node of a Redis Cluster.
    #[arg(long)]
    pub(crate) cluster: bool,
    /// The prefix of store keys, as the service sets it (`Idempotency::with_key_prefix`).
    #[arg(long, default_value = idem_core::DEFAULT_KEY_PREFIX, value_name = "PREFIX")]
    pub(crate) key_prefix: String,
    /// Redis: the prefix before every Redis key, as the service sets it
    /// (`RedisStore::with_key_prefix`).
    #[arg(long, value_name = "PREFIX")]
    pub(crate) redis_prefix: Option<String>,
    /// PostgreSQL: the store's table, as the service sets it (`PostgresStore::with_table`).
    #[arg(long, default_value = idem_postgres::DEFAULT_TABLE, value_name = "TABLE")]
    pub(crate) table: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Lists keys, a page at a time.
    List {
        /// Only keys in this state: inflight, unknown or completed.
        #[arg(long, value_parser = parse_state)]
        state: Option<KeyState>,
        /// Only keys of this namespace (under --key-prefix).
        #[arg(long)]
        namespace: Option<String>,
        /// Keys per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where to resume: the cursor a page printed.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        /// Every page, not only the first.
        #[arg(long, conflicts_with = "after")]
        all: bool,
    },
    /// Shows one key: its state, fence, time left, fingerprint and record.
    Show {
        #[command(flatten)]
        key: KeyArg,
        /// Print the recorded value itself, not only its size.
        #[arg(long)]
        value: bool,
    },
    /// Evicts a key, so that the next delivery runs the body again.
    Evict {
        #[command(flatten)]
        key: KeyArg,
        /// Evict only if the key is still in STATE under this fence (what `show` printed).
        #[arg(long, requires = "state")]
        fence: Option<u64>,
        /// Evict only if the key is still in this state under FENCE (what `show` printed).
        #[arg(long, requires = "fence", value_parser = parse_state)]
        state: Option<KeyState>,
    },
    /// Resolves a key held with an unknown outcome, once you know whether its effect happened.
    #[command(group(clap::ArgGroup::new("resolution").required(true).args(["release", "record"])))]
    Resolve {
        #[command(flatten)]
        key: KeyArg,
        /// The effect did not happen: release the key, so that the next delivery runs the body.
        #[arg(long)]
        release: bool,
        /// The effect happened, with this result (JSON, as the handler returns it): record it,
        /// so that every delivery replays it. (The HTTP layer's keys record whole responses in
        /// a format of their own: release those instead.)
        #[arg(long, value_name = "JSON")]
        record: Option<String>,
        /// Record the result as the handler's `Err` (for handlers that record errors).
        #[arg(long, requires = "record")]
        error: bool,
        /// How long to keep the record.
        #[arg(long, default_value = "24h", value_parser = parse_positive_duration, requires = "record")]
        retention: Duration,
        /// Resolve only if the key still holds this fence (the one `show` printed).
        #[arg(long)]
        fence: Option<u64>,
    },
    /// Counts keys by state (reads every key: for tools, not request paths).
    Stats,
    /// Checks that the store answers: exit code 0 when it does within the timeout.
    Ping {
        /// How long to wait for the connection and the answer.
        #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
        timeout: Duration,
    },
}

/// A key: `NAMESPACE KEY`, or the full store key as a listing prints it.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArg {
    /// The namespace (with KEY), or the full store key (alone).
    #[arg(value_name = "NAMESPACE|STORE_KEY")]
    pub(crate) first: String,
    /// The key, in NAMESPACE.
    #[arg(value_name = "KEY")]
    pub(crate) key: Option<String>,
}

impl KeyArg {
    /// The store key this names.
    pub(crate) fn store_key(&self, key_prefix: &str) -> Result<String, idem_core::Error> {
        match &self.key {
            Some(key) => idem_core::key::store_key(key_prefix, &self.first, key),
            None => Ok(self.first.clone()),
        }
    }
}

fn parse_state(text: &str) -> Result<KeyState, String> {
    text.parse()
        .map_err(|err: idem_core::Error| err.to_string())
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("it must be more than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}
