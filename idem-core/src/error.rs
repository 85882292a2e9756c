//! The one error type of idem.

use std::fmt;
use std::time::Duration;

/// A boxed error from a store backend, kept as the source of [`Error::Store`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong around an idempotent call.
///
/// Each variant says whether the body ran, because that is what a caller must know to decide
/// what to do next:
///
/// | variant | did the body run in this call? |
/// | --- | --- |
/// | [`InvalidKey`](Error::InvalidKey), [`InvalidOption`](Error::InvalidOption), [`InProgress`](Error::InProgress), [`OutcomeUnknown`](Error::OutcomeUnknown), [`KeyReused`](Error::KeyReused), [`ClaimLapsed`](Error::ClaimLapsed), [`Deadlock`](Error::Deadlock), [`Store`](Error::Store), [`Corrupt`](Error::Corrupt), [`Encode`](Error::Encode) | no |
/// | [`LeaseLost`](Error::LeaseLost), [`NotRecorded`](Error::NotRecorded) | yes: its effect happened, its result was not recorded |
/// | [`TransactionAborted`](Error::TransactionAborted), [`RolledBack`](Error::RolledBack) | yes, and its database writes were rolled back; the key is free |
/// | [`CommitUnknown`](Error::CommitUnknown) | yes, and its writes and record committed together or not at all: a retry finds out |
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty, or the namespace is not usable. Nothing was claimed.
    #[non_exhaustive]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// A lease or retention the runtime cannot use (zero, below [`MIN_LEASE`](crate::MIN_LEASE),
    /// or above [`MAX_DURATION`](crate::MAX_DURATION)), or a default namespace that another
    /// function already has. Nothing was claimed; the body did not run. Fix the option.
    #[non_exhaustive]
    InvalidOption {
        /// Which option, its value and the accepted range.
        reason: String,
    },
    /// Another call holds the claim on this key and has not finished. The body did not run.
    /// Retry later (the other call's result will then be replayed) or wait for it
    /// (`on_in_progress = wait`).
    #[non_exhaustive]
    InProgress {
        /// The store key.
        key: String,
        /// How long the holder's lease had left when the store was asked, by the store's clock
        /// (`None` when the store did not say). A holder that is alive renews its lease, so this
        /// is a lower bound on the wait: a hint for `Retry-After`, not a promise.
        lease_remaining: Option<Duration>,
    },
    /// An earlier call of this key ended with an unknown outcome (its effect may have
    /// happened), and the key is held until an operator resolves it or its hold lapses. The
    /// body did not run. Find out whether the effect happened, then resolve the key
    /// (`idem resolve NAMESPACE KEY --record JSON` or `--release`).
    #[non_exhaustive]
    OutcomeUnknown {
        /// The store key.
        key: String,
    },
    /// The key was used before with a different request (fingerprint). The body did not run.
    /// A client reused an idempotency key for a different request: give it a new key.
    #[non_exhaustive]
    KeyReused {
        /// The store key.
        key: String,
    },
    /// The claim lapsed while the body ran (its lease could not be renewed, or another caller
    /// took over), so its result was not recorded: a write under a stale fencing token is
    /// refused. The body's effect may have happened; another call may run it again.
    #[non_exhaustive]
    LeaseLost {
        /// The store key.
        key: String,
    },
    /// The claim was granted but lapsed before the body could start: its reply came after the
    /// lease ran out, or the call waited longer than a lease to run. The store answered; the
    /// body did not run, and another call may hold the key now. Retry the call.
    #[non_exhaustive]
    ClaimLapsed {
        /// The store key.
        key: String,
    },
    /// In a database transaction, waiting for the key would never end: the transaction that
    /// holds it waits, directly or through others, for a key this call's transaction holds
    /// (two transactions claiming two keys in opposite orders). The database broke the cycle
    /// here; the body did not run. Roll this transaction back, which frees its keys for the
    /// other, and retry it.
    #[non_exhaustive]
    Deadlock {
        /// The store key this call waited for.
        key: String,
    },
    /// The store failed before the body ran; the body did not run (idem fails closed).
    ///
    /// `indeterminate` is true when the failing command may still have been applied (its reply
    /// was lost or timed out). A claim it may have made is released in the background (its
    /// attempt claims again, which the store answers with that claim, and releases it); with no
    /// tokio runtime to do so, it is held until its lease lapses.
    #[non_exhaustive]
    Store {
        /// The store operation that failed (`claim`, `complete`, ...).
        operation: &'static str,
        /// True when the command may have been applied although no reply arrived.
        indeterminate: bool,
        /// The backend's error.
        source: BoxError,
    },
    /// The body ran and returned, but its result could not be recorded after retries: the
    /// effect happened, the record may be missing. The claim stays held until its lease
    /// lapses; after that a retry runs the body again.
    #[non_exhaustive]
    NotRecorded {
        /// The store key.
        key: String,
        /// The last store error.
        source: Box<Self>,
    },
    /// The body ran inside a database transaction that its own statements broke: one failed, so
    /// the database aborted the transaction (PostgreSQL's `25P02`), or a deferred constraint
    /// failed at `COMMIT`. Everything rolled back, nothing was recorded and the key is free.
    /// Retrying runs the body again and will likely fail the same way: run statements that may
    /// fail inside a savepoint (sqlx: `begin()` on the connection), or return an `Err`. Effects
    /// outside the database may have happened.
    #[non_exhaustive]
    TransactionAborted {
        /// The operation that found the transaction aborted (`complete`, `commit`).
        operation: &'static str,
        /// The database's error.
        source: BoxError,
    },
    /// The body ran inside a database transaction, but its result could not be recorded (it
    /// cannot be serialized, or the record or commit failed): the transaction was rolled back,
    /// so the body's database writes and its claim are gone and the key is free. A retry runs
    /// the body again; effects outside the database may have happened.
    #[non_exhaustive]
    RolledBack {
        /// The store key.
        key: String,
        /// Why the result was not recorded.
        source: Box<Self>,
    },
    /// The body ran inside a database transaction whose `COMMIT` got no reply (the connection
    /// was lost): its writes and its record committed together or not at all. Retry the call:
    /// it replays the recorded result if they committed, and runs the body if they did not.
    #[non_exhaustive]
    CommitUnknown {
        /// The store key.
        key: String,
        /// The database driver's error.
        source: BoxError,
    },
    /// A stored record could not be decoded (garbage bytes, a value of the wrong type, or a
    /// record version this build does not know). It is never treated as a miss: inspect or
    /// delete the key by hand.
    #[non_exhaustive]
    Corrupt {
        /// The store key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The request fingerprint could not be serialized. The body did not run. (A result that
    /// cannot be serialized after the body ran is reported as [`NotRecorded`](Error::NotRecorded)
    /// with this as its source.)
    #[non_exhaustive]
    Encode {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },
}

impl Error {
    /// A transaction the body's own statements broke, for transactional stores (see
    /// [`Error::TransactionAborted`]).
    pub fn transaction_aborted(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::TransactionAborted {
            operation,
            source: source.into(),
        }
    }

    /// A store failure, for store implementations: the command certainly did not apply.
    pub fn store(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Store {
            operation,
            indeterminate: false,
            source: source.into(),
        }
    }

    /// A store failure whose command may have been applied (lost reply, timeout after send).
    pub fn store_indeterminate(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Store {
            operation,
            indeterminate: true,
            source: source.into(),
        }
    }

    /// A stored value that cannot be decoded, for store implementations.
    pub fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A wait for `key` that closed a cycle of waiting transactions, for transactional stores
    /// (see [`Error::Deadlock`]).
    pub fn deadlock(key: impl Into<String>) -> Self {
        Self::Deadlock { key: key.into() }
    }

    /// Another call holds `key`, for stores that find so outside a claim (a wait that ran out).
    pub fn in_progress(key: impl Into<String>, lease_remaining: Option<Duration>) -> Self {
        Self::InProgress {
            key: key.into(),
            lease_remaining,
        }
    }

    /// A refusal because the fencing token is no longer current, for store implementations.
    pub fn lease_lost(key: impl Into<String>) -> Self {
        Self::LeaseLost { key: key.into() }
    }

    /// An option that cannot be honoured, for store implementations (a table name, a setting):
    /// `reason` says what is wrong and what to write instead.
    pub fn invalid_option(reason: impl Into<String>) -> Self {
        Self::InvalidOption {
            reason: reason.into(),
        }
    }

    /// A key or key prefix that cannot be used, for store implementations.
    pub fn invalid_key(reason: impl Into<String>) -> Self {
        Self::InvalidKey {
            reason: reason.into(),
        }
    }

    /// True when the body of this call may have run (its effect may have happened).
    pub fn body_may_have_run(&self) -> bool {
        matches!(
            self,
            Self::LeaseLost { .. }
                | Self::NotRecorded { .. }
                | Self::TransactionAborted { .. }
                | Self::RolledBack { .. }
                | Self::CommitUnknown { .. }
        )
    }

    /// True when a store command behind this error may have been applied without a reply.
    pub fn is_indeterminate(&self) -> bool {
        match self {
            Self::Store { indeterminate, .. } => *indeterminate,
            Self::NotRecorded { source, .. } => source.is_indeterminate(),
            Self::CommitUnknown { .. } => true,
            _ => false,
        }
    }

    /// True for store failures worth retrying (as opposed to answers such as `LeaseLost`).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Self::Store { .. })
    }
}

/// Messages say what happened to the body (and so to its effect) and what to do. A cause is
/// never printed here but reached through [`std::error::Error::source`], as the Rust error
/// ecosystem expects (print the chain with `{:#}` in anyhow, or walk `source()`).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidKey { reason } => write!(
                f,
                "invalid idempotency key: {reason}; nothing was claimed and the body did not run"
            ),
            Self::InvalidOption { reason } => write!(
                f,
                "invalid idempotency option: {reason}; nothing was claimed and the body did not run"
            ),
            Self::InProgress { key, .. } => write!(
                f,
                "idempotency key `{key}` is held by another call still in progress, so the body did \
                 not run here; retry later to get that call's result"
            ),
            Self::OutcomeUnknown { key } => write!(
                f,
                "an earlier call of idempotency key `{key}` ended with an unknown outcome (its \
                 effect may have happened), and the key is held until it is resolved, so the \
                 body did not run; find out whether the effect happened, then resolve the key \
                 (`idem resolve`), or retry after the hold lapses"
            ),
            Self::KeyReused { key } => write!(
                f,
                "idempotency key `{key}` was already used for a different request (fingerprint \
                 mismatch), so the body did not run; use a new key for a new request"
            ),
            Self::LeaseLost { key } => write!(
                f,
                "the claim on `{key}` lapsed while the body ran (its lease was not renewed in time, \
                 or another call took over): the body ran and its effect may have happened, but its \
                 result was not recorded, and another call may run it again; make the effect \
                 idempotent downstream (pass `idem::context()`'s fence or a downstream key)"
            ),
            Self::Store {
                operation,
                indeterminate,
                ..
            } => {
                write!(f, "the idempotency store failed during `{operation}`")?;
                if *indeterminate {
                    write!(
                        f,
                        " and the command may have been applied (its reply was lost; a claim it \
                         may have made is released in the background)"
                    )?;
                }
                write!(
                    f,
                    "; the body did not run: retry when the store answers again"
                )
            }
            Self::NotRecorded { key, source } => {
                write!(f, "the body for `{key}` ran and its effect happened, but its result ")?;
                why_not_recorded(f, source)?;
                write!(
                    f,
                    "; the key stays claimed until its lease lapses, then a retry runs the body \
                     again: check whether the effect happened before retrying, or make it \
                     idempotent downstream"
                )
            }
            Self::ClaimLapsed { key } => write!(
                f,
                "the claim on `{key}` lapsed before the body could start (its reply came after \
                 the lease ran out, or the call waited longer than a lease to run); the body did \
                 not run, and another call may hold the key now: retry the call"
            ),
            Self::Deadlock { key } => write!(
                f,
                "waiting for idempotency key `{key}` would deadlock: the transaction holding it \
                 waits for a key this call's transaction holds, so the database broke the cycle \
                 here and the body did not run; roll this transaction back (freeing its keys) and \
                 retry it"
            ),
            Self::RolledBack { key, source } => {
                write!(f, "the body for `{key}` ran in a database transaction, but its result ")?;
                why_not_recorded(f, source)?;
                write!(
                    f,
                    ", so the transaction was rolled back: its writes are gone and the key is \
                     free; a retry runs the body again (effects outside the database may have \
                     happened)"
                )
            }
            Self::CommitUnknown { key, .. } => write!(
                f,
                "the body for `{key}` ran in a database transaction whose COMMIT got no reply: \
                 its writes and its record committed together or not at all; retry the call, \
                 which replays the result if they committed and runs the body if they did not"
            ),
            Self::Corrupt { key, reason } => write!(
                f,
                "the stored record for `{key}` is corrupt ({reason}), so the body did not run; it \
                 is not treated as a miss: inspect or delete the key"
            ),
            Self::Encode { what, .. } => write!(
                f,
                "could not encode {what}, so nothing was claimed and the body did not run"
            ),
            Self::TransactionAborted { operation, .. } => write!(
                f,
                "the body ran, but a statement of its own broke its database transaction, found \
                 at `{operation}`: its writes were rolled back, nothing was recorded and the key \
                 is free; a retry runs the body again, so run statements that may fail inside a \
                 savepoint, or return an error"
            ),
        }
    }
}

/// Why a result that ran was not recorded, from the error that stopped it.
fn why_not_recorded(f: &mut fmt::Formatter<'_>, source: &Error) -> fmt::Result {
    match source {
        Error::Store {
            operation,
            indeterminate,
            ..
        } => {
            write!(f, "could not be recorded (the store's `{operation}` failed")?;
            if *indeterminate {
                write!(f, ", and may have applied")?;
            }
            write!(f, ")")
        }
        Error::Encode { .. } => write!(f, "cannot be recorded (see the cause)"),
        Error::Corrupt { reason, .. } => write!(
            f,
            "could not be recorded (the value at the key was not an idem claim: {reason})"
        ),
        _ => write!(f, "could not be recorded"),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store { source, .. }
            | Self::TransactionAborted { source, .. }
            | Self::CommitUnknown { source, .. } => Some(source.as_ref()),
            // The store's or the encoder's own error: this variant's message already says which
            // operation failed, and the wrapped `Error`'s would contradict it ("did not run").
            Self::NotRecorded { source, .. } | Self::RolledBack { source, .. } => {
                match source.as_ref() {
                    inner @ (Self::Store { .. } | Self::Encode { .. }) => inner.source(),
                    Self::Corrupt { .. } => None,
                    inner => Some(inner),
                }
            }
            Self::Encode { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The body ran, but its result could not be recorded because of `source`.
pub(crate) fn not_recorded(key: String, source: Error) -> Error {
    Error::NotRecorded {
        key,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's message says what became of the body, in one line of single-spaced
    /// words, and leaves its cause to `source()`.
    #[test]
    fn every_message_says_what_became_of_the_body() {
        let store = || Error::store("claim", "connection refused");
        let encode = || Error::Encode {
            what: "the request fingerprint",
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        let cases: Vec<(Error, &str)> = vec![
            (Error::invalid_key("empty"), "the body did not run"),
            (Error::invalid_option("lease 0s"), "the body did not run"),
            (
                Error::InProgress {
                    key: "k".into(),
                    lease_remaining: None,
                },
                "the body did not run",
            ),
            (Error::KeyReused { key: "k".into() }, "the body did not run"),
            (
                Error::OutcomeUnknown { key: "k".into() },
                "held until it is resolved",
            ),
            (Error::lease_lost("k"), "the body ran"),
            (store(), "the body did not run"),
            (
                Error::store_indeterminate("complete", "timed out"),
                "may have been applied",
            ),
            (
                Error::NotRecorded {
                    key: "k".into(),
                    source: Box::new(store()),
                },
                "ran and its effect happened",
            ),
            (
                Error::NotRecorded {
                    key: "k".into(),
                    source: Box::new(encode()),
                },
                "cannot be recorded",
            ),
            (Error::corrupt("k", "bad magic"), "the body did not run"),
            (encode(), "the body did not run"),
            (
                Error::transaction_aborted("commit", "23505"),
                "the body ran",
            ),
            (
                Error::ClaimLapsed { key: "k".into() },
                "the body did not run",
            ),
            (Error::Deadlock { key: "k".into() }, "the body did not run"),
            (
                Error::RolledBack {
                    key: "k".into(),
                    source: Box::new(encode()),
                },
                "ran in a database transaction",
            ),
            (
                Error::RolledBack {
                    key: "k".into(),
                    source: Box::new(store()),
                },
                "the key is free",
            ),
            (
                Error::CommitUnknown {
                    key: "k".into(),
                    source: "connection reset".into(),
                },
                "committed together or not at all",
            ),
        ];
        let mut variants = std::collections::BTreeSet::new();
        for (err, says) in cases {
            variants.insert(variant(&err));
            let message = err.to_string();
            assert!(message.contains(says), "{message:?} should say {says:?}");
            assert_eq!(
                err.body_may_have_run(),
                !message.contains("did not run"),
                "body_may_have_run disagrees with {message:?}"
            );
            assert!(!message.contains("  "), "double space: {message:?}");
            assert!(!message.contains('\n'), "line break: {message:?}");
            assert_eq!(message.trim(), message, "{message:?}");
            assert!(
                !message.contains("connection refused"),
                "cause printed: {message:?}"
            );
        }
        assert_eq!(variants.len(), 15, "every variant has a case: {variants:?}");
    }

    /// The variant's name. Exhaustive (the enum is `non_exhaustive` to other crates only): a new
    /// variant fails to compile here until it has a case above.
    fn variant(err: &Error) -> &'static str {
        match err {
            Error::InvalidKey { .. } => "InvalidKey",
            Error::InvalidOption { .. } => "InvalidOption",
            Error::InProgress { .. } => "InProgress",
            Error::KeyReused { .. } => "KeyReused",
            Error::OutcomeUnknown { .. } => "OutcomeUnknown",
            Error::LeaseLost { .. } => "LeaseLost",
            Error::ClaimLapsed { .. } => "ClaimLapsed",
            Error::Deadlock { .. } => "Deadlock",
            Error::Store { .. } => "Store",
            Error::NotRecorded { .. } => "NotRecorded",
            Error::TransactionAborted { .. } => "TransactionAborted",
            Error::RolledBack { .. } => "RolledBack",
            Error::CommitUnknown { .. } => "CommitUnknown",
            Error::Corrupt { .. } => "Corrupt",
            Error::Encode { .. } => "Encode",
        }
    }
}
