//! `idem`: see and act on idem's idempotency keys in a Redis or PostgreSQL store.
//!
//! ```text
//! idem --store redis://127.0.0.1:6379 list --state inflight --namespace charge
//! idem --store postgres://app@db/app show charge order-1
//! idem --store postgres://app@db/app evict charge order-1
//! idem --store redis://127.0.0.1:6379 stats --json
//! ```
//!
//! Exit codes: 0 done; 1 the store failed (the message says why); 2 the command line or an
//! option is wrong; 3 the key is absent; 4 the key changed since it was read, or is not in the
//! state the command needs (only a held key can be resolved), so nothing was done.

mod args;
mod commands;
mod connect;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("idem: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(commands::run(&args, &mut stdout)) {
        Ok(status) => status.code(),
        Err(err) => {
            eprintln!("idem: {}", describe(&err));
            match err {
                idem_core::Error::InvalidOption { .. } | idem_core::Error::InvalidKey { .. } => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// An error as an operator reads it: what failed and why, without what the library's own
/// messages add for a call (whether a body ran).
fn describe(err: &idem_core::Error) -> String {
    use idem_core::Error;
    match err {
        Error::Store {
            operation, source, ..
        } => format!("the store failed during `{operation}`: {source}"),
        Error::InvalidOption { reason, .. } | Error::InvalidKey { reason, .. } => reason.clone(),
        Error::Corrupt { key, reason, .. } => {
            format!("{key} holds data idem cannot read: {reason}")
        }
        other => other.to_string(),
    }
}
