//! What each command does.

use std::io::Write;
use std::process::ExitCode;

use idem_core::admin::{ActionOutcome, Cursor, KeyState, ListQuery, Resolution};
use idem_core::{Error, Fence, Outcome, Record};

use crate::args::{Args, Command};
use crate::connect::{connect, Backend};
use crate::output::Output;

/// How a command ended, for its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Done,
    /// The key is absent (or claimable: its lease or retention lapsed).
    Absent,
    /// The key changed since it was read: nothing was done.
    Changed,
}

impl Status {
    pub(crate) fn code(self) -> ExitCode {
        match self {
            Self::Done => ExitCode::SUCCESS,
            Self::Absent => ExitCode::from(3),
            Self::Changed => ExitCode::from(4),
        }
    }
}

/// Runs the command of `args`, writing what it prints to `out`.
pub(crate) async fn run(args: &Args, out: &mut dyn Write) -> Result<Status, Error> {
    let mut output = Output::new(out, args.json);
    if let Command::Ping { timeout } = &args.command {
        // The connection counts against the timeout too: a store that does not answer may
        // not accept one either.
        let started = std::time::Instant::now();
        let answered = tokio::time::timeout(*timeout, async {
            connect(args).await?.ping(*timeout).await
        })
        .await;
        return match answered {
            Ok(Ok(_)) => {
                output.pong(started.elapsed())?;
                Ok(Status::Done)
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::store(
                "ping",
                format!("the store did not answer within {timeout:?}"),
            )),
        };
    }
    let store = connect(args).await?;
    let store: &dyn Backend = &*store;
    match &args.command {
        Command::List {
            state,
            namespace,
            limit,
            after,
            all,
        } => {
            let mut query = match namespace {
                Some(namespace) => ListQuery::new().in_namespace(&args.key_prefix, namespace)?,
                None => ListQuery::new(),
            }
            .with_limit(*limit);
            if let Some(state) = state {
                query = query.with_state(*state);
            }
            if let Some(after) = after {
                query = query.after(Cursor::new(after.clone()));
            }
            let mut keys = Vec::new();
            loop {
                let page = store.list(&query).await?;
                keys.extend(page.keys);
                match page.next {
                    Some(next) if *all => query = query.after(next),
                    next => {
                        output.keys(&keys, next.as_ref())?;
                        return Ok(Status::Done);
                    }
                }
            }
        }
        Command::Show { key, value } => {
            let key = key.store_key(&args.key_prefix)?;
            match store.inspect(&key).await? {
                Some(info) => {
                    output.key(&info, *value)?;
                    Ok(Status::Done)
                }
                None => {
                    output.absent(&key)?;
                    Ok(Status::Absent)
                }
            }
        }
        Command::Evict { key, fence, state } => {
            let key = key.store_key(&args.key_prefix)?;
            let (fence, state) = match (fence, state) {
                (Some(fence), Some(state)) => (Fence(*fence), *state),
                _ => match store.inspect(&key).await? {
                    Some(info) => (info.summary.fence, info.summary.state),
                    None => {
                        output.absent(&key)?;
                        return Ok(Status::Absent);
                    }
                },
            };
            let outcome = store.evict(&key, fence, state).await?;
            output.evicted(&key, (fence, state), outcome)?;
            Ok(match outcome {
                ActionOutcome::Applied => Status::Done,
                _ => Status::Changed,
            })
        }
        Command::Resolve {
            key,
            release,
            record,
            error,
            retention,
            fence,
        } => {
            let key = key.store_key(&args.key_prefix)?;
            let Some(info) = store.inspect(&key).await? else {
                output.absent(&key)?;
                return Ok(Status::Absent);
            };
            let fence = fence.map_or(info.summary.fence, Fence);
            if info.summary.state != KeyState::Unknown || info.summary.fence != fence {
                output.not_held(&info, fence)?;
                return Ok(Status::Changed);
            }
            let resolution = match (release, record) {
                (true, _) | (false, None) => Resolution::Release,
                (false, Some(json)) => {
                    let value: serde_json::Value = serde_json::from_str(json).map_err(|err| {
                        Error::invalid_option(format!("--record is not JSON: {err}"))
                    })?;
                    let outcome = if *error { Outcome::Err } else { Outcome::Ok };
                    let json = value.to_string();
                    Resolution::Record {
                        record: Record::encode(outcome, &info.fingerprint, json.as_bytes()),
                        retention: *retention,
                    }
                }
            };
            let released = resolution == Resolution::Release;
            let outcome = store.resolve(&key, fence, resolution).await?;
            output.resolved(&key, fence, released, outcome)?;
            Ok(match outcome {
                ActionOutcome::Applied => Status::Done,
                _ => Status::Changed,
            })
        }
        Command::Stats => {
            let counts = store.count().await?;
            output.counts(&counts)?;
            Ok(Status::Done)
        }
        // Answered above, before connecting.
        Command::Ping { .. } => Ok(Status::Done),
    }
}
