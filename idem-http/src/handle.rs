//! One request with a key, step by step: admitted and read, claimed, run under the claim (in the
//! handler's transaction, in transactional mode), recorded; or replayed, or rejected.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use idem_core::{BoxError, Call, Claimed, Disposition, Error, Served, Started};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower_service::Service;

use crate::body::{read_request, read_response, BufferedBody, ReadError, ResponseRead};
use crate::config::Config;
use crate::key::{scoped_key, IdempotencyKey, KeyError};
use crate::problem::{rejection_for, Rejection};
use crate::recorded::RecordedResponse;
use crate::service::{call_inner, pass_through};
use crate::status::is_event_stream;
use crate::transaction::{Began, Lending, Unrecorded};

pub(crate) async fn serve<S, B, ResB>(
    config: Arc<Config>,
    inner: S,
    request: Request<B>,
) -> Result<Response<BufferedBody<ResB>>, S::Error>
where
    S: Service<Request<BufferedBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: Body + Unpin + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Into<BoxError>,
{
    if !config.methods.contains(request.method()) {
        return pass_through(inner, request.map(BufferedBody::new)).await;
    }
    let reject = |rejection: Rejection, detail: &str, retry_after: Option<Duration>| {
        Ok(rejection.to_response(&config.problem_base, detail, retry_after))
    };
    let key = match IdempotencyKey::from_headers(request.headers()) {
        Ok(key) => key,
        Err(KeyError::Missing) if !config.key_required => {
            return pass_through(inner, request.map(BufferedBody::new)).await;
        }
        Err(err) => return reject(err.rejection(), &err.to_string(), None),
    };
    // Counted as in flight from before the check, so that a `shutdown` that starts while this
    // request's body arrives waits for its handler.
    let in_flight = config.tasks.token();
    // The tracker's own state, not a flag of ours: one atomic orders this check against
    // `shutdown`'s close, so that either this request is refused or `shutdown` waits for it.
    if config.tasks.is_closed() {
        let detail = "the service is shutting down; retry against another instance, or later";
        return reject(
            Rejection::ShuttingDown,
            detail,
            Some(Duration::from_secs(1)),
        );
    }
    let (parts, body) = request.into_parts();
    let body = match read_request(body, config.max_request_body).await {
        Ok(body) => body,
        Err(ReadError::TooLarge) => {
            let detail = format!(
                "the request body is over this endpoint's limit of {} bytes",
                config.max_request_body
            );
            return reject(Rejection::BodyTooLarge, &detail, None);
        }
        Err(ReadError::Failed(err)) => {
            let detail = format!("the request body could not be read: {err}");
            return reject(Rejection::BodyUnreadable, &detail, None);
        }
    };
    // Taken once the body is in: a slow upload must not hold a slot.
    let permit = match &config.capacity {
        None => None,
        Some(capacity) => match capacity.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let detail = "too many requests with idempotency keys are in flight; retry later";
                return reject(
                    Rejection::OverCapacity,
                    detail,
                    Some(Duration::from_secs(1)),
                );
            }
        },
    };
    let scope = config.scope.as_ref().and_then(|scope| scope(&parts));
    let fingerprint = (config.fingerprint)(&parts, &body);
    let mut call = Call::new(
        config.namespace.clone(),
        scoped_key(scope.as_deref(), &parts, key.as_str()),
    )
    .with_fingerprint(fingerprint)
    .on_in_progress(config.in_flight);
    if let Some(lease) = config.lease {
        call = call.lease(lease);
    }
    if let Some(max_hold) = config.max_hold {
        call = call.max_hold(max_hold);
    }
    // Claimed (or replayed, or refused) here, on the connection's task.
    let request = Request::from_parts(parts, BufferedBody::full(body));
    if let Some(mode) = &config.transaction {
        let claimed = match mode.begin(&config.idem, call).await {
            Began::Done(Ok(recorded)) => return Ok(recorded.replay()),
            // No `fail_open` here: the handler's writes need the database that just failed.
            Began::Done(Err(err)) => {
                let (rejection, detail, retry_after) = rejection_for(&err, config.max_retry_after);
                return reject(rejection, &detail, retry_after);
            }
            Began::Claimed(claimed) => claimed,
        };
        let execution = {
            let config = config.clone();
            async move { run_in_transaction(&config, inner, request, claimed).await }
        };
        return spawn_handler(&config, execution, permit, in_flight).await;
    }
    let claimed = match config.idem.start::<RecordedResponse>(call).await {
        // A record that is not a response failed to decode: `Error::Corrupt`, below.
        Ok(Started::Recorded(recorded, _)) => return Ok(recorded.replay()),
        Ok(Started::Claimed(claimed)) => claimed,
        // `Started` may grow; nothing else is started.
        Ok(_) => return reject(Rejection::Misconfigured, "unknown start of a call", None),
        Err(Error::Store { .. }) if config.fail_open => return pass_through(inner, request).await,
        Err(err) => {
            let (rejection, detail, retry_after) = rejection_for(&err, config.max_retry_after);
            return reject(rejection, &detail, retry_after);
        }
    };
    let execution = {
        let config = config.clone();
        async move { run_under_claim(&config, inner, request, claimed).await }
    };
    spawn_handler(&config, execution, permit, in_flight).await
}

/// Runs a claimed request's `execution` (the handler, then its record) on a task of its own, so
/// that a client that goes away does not cancel the handler halfway through its effect: it
/// finishes and records, and the client's retry replays. Called at once after the claim (no
/// await between, so no cancellation either).
async fn spawn_handler<ResB, E>(
    config: &Config,
    execution: impl Future<Output = Result<Response<BufferedBody<ResB>>, E>> + Send + 'static,
    permit: Option<OwnedSemaphorePermit>,
    in_flight: TaskTrackerToken,
) -> Result<Response<BufferedBody<ResB>>, E>
where
    ResB: Body + Send + 'static,
    E: Send + 'static,
{
    let task = config.tasks.spawn(async move {
        let handled = execution.await;
        drop(permit);
        handled
    });
    // The task is tracked now.
    drop(in_flight);
    let reject = |rejection: Rejection, detail: &str, retry_after: Option<Duration>| {
        Ok(rejection.to_response(&config.problem_base, detail, retry_after))
    };
    match task.await {
        Ok(handled) => handled,
        Err(join) if join.is_panic() => {
            let detail = "the handler panicked; its outcome is unknown, so this key stays \
                          claimed until its lease lapses (or is held longer, until an operator \
                          resolves it, as the service's hold for unknown outcomes says), then a \
                          retry runs the handler again";
            reject(Rejection::HandlerPanicked, detail, None)
        }
        Err(_) => {
            let detail = "the service is shutting down; retry later";
            reject(
                Rejection::ShuttingDown,
                detail,
                Some(Duration::from_secs(1)),
            )
        }
    }
}

/// Why the handler's outcome is not a record.
enum Failure<E> {
    /// A response not to record, and what that means for the claim.
    Unrecorded(Disposition),
    /// The inner service failed (no response): the claim is released.
    Service(E),
    /// idem failed around the handler.
    Idem(Error),
}

impl<E> From<Error> for Failure<E> {
    fn from(err: Error) -> Self {
        Self::Idem(err)
    }
}

/// Runs the handler under the request's claim and records its response (or releases the key,
/// or keeps it as an unknown outcome).
async fn run_under_claim<S, B, ResB>(
    config: &Config,
    inner: S,
    request: Request<BufferedBody<B>>,
    claimed: Claimed,
) -> Result<Response<BufferedBody<ResB>>, S::Error>
where
    S: Service<Request<BufferedBody<B>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    // The handler's own response, whole, for this client (the record keeps fewer headers),
    // whatever becomes of the record.
    let mut first = None;
    let classify = |failure: &Failure<_>| match failure {
        Failure::Unrecorded(disposition) => *disposition,
        Failure::Service(_) | Failure::Idem(_) => Disposition::Release,
    };
    let (outcome, served) = idem_core::served(claimed.run_with(classify, async {
        let response = call_inner(inner, request).await.map_err(Failure::Service)?;
        let (parts, body) = response.into_parts();
        let disposition = match (config.on_status)(parts.status) {
            Disposition::Record if is_event_stream(&parts) => config.on_unrecordable,
            disposition => disposition,
        };
        if disposition != Disposition::Record {
            first = Some(Response::from_parts(parts, BufferedBody::new(body)));
            return Err(Failure::Unrecorded(disposition));
        }
        match read_response(body, config.max_response_body).await {
            ResponseRead::Whole(bytes) => {
                let replayed = |name: &http::HeaderName| config.replayed_headers.contains(name);
                let recorded = RecordedResponse::capture(&parts, bytes.clone(), replayed);
                first = Some(Response::from_parts(parts, BufferedBody::full(bytes)));
                Ok::<_, Failure<_>>(recorded)
            }
            ResponseRead::Unrecordable(body) => {
                first = Some(Response::from_parts(parts, body));
                Err(Failure::Unrecorded(config.on_unrecordable))
            }
        }
    }))
    .await;
    match (outcome, first) {
        // The claim lapsed while the handler ran and another request with the key recorded
        // its response meanwhile: that is the key's answer, for this client too (both clients
        // see one response; the handler's effect happened twice, as the trace warns).
        (Ok(recorded), Some(_)) if served == Some(Served::Superseded) => Ok(recorded.replay()),
        // The claim lapsed and another request holds the key now: this response was never
        // recorded and may differ from the one that will be, so it is not sent.
        (Err(Failure::Idem(Error::LeaseLost { .. })), Some(_)) => {
            let detail = "the handler ran, but its claim on this key lapsed and another request \
                          with the key is being processed; retry after the Retry-After delay to \
                          get the key's response";
            Ok(Rejection::InFlight.to_response(
                &config.problem_base,
                detail,
                Some(Duration::from_secs(1)),
            ))
        }
        // The handler answered: the client gets its answer, recorded or not (a failed record
        // is the next delivery's concern).
        (_, Some(response)) => Ok(response),
        (outcome, None) => {
            let err = match outcome {
                Ok(recorded) => return Ok(recorded.replay()),
                Err(Failure::Service(err)) => return Err(err),
                Err(Failure::Idem(err)) => err,
                // Only the handler returns this, and it left its response in `first`.
                Err(Failure::Unrecorded(_)) => {
                    Error::invalid_option("the handler's response was lost")
                }
            };
            let (rejection, detail, retry_after) = rejection_for(&err, config.max_retry_after);
            Ok(rejection.to_response(&config.problem_base, &detail, retry_after))
        }
    }
}

/// Runs the handler with the request's transaction lent to it, then records its response and
/// commits (or rolls back, or holds the key), and only then answers: the client never gets a
/// response whose writes did not commit.
async fn run_in_transaction<S, B, ResB>(
    config: &Config,
    inner: S,
    mut request: Request<BufferedBody<B>>,
    claimed: Box<dyn Lending>,
) -> Result<Response<BufferedBody<ResB>>, S::Error>
where
    S: Service<Request<BufferedBody<B>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    let reject = |rejection: Rejection, detail: &str| {
        Ok(rejection.to_response(&config.problem_base, detail, None))
    };
    claimed.lend(request.extensions_mut());
    // Everything the handler's code runs in (its future, its response body, their drops) is
    // under the guard, and the claim outside it: a panic anywhere there holds the key.
    let handled = idem_core::__macro_support::catch_unwind(respond(config, inner, request)).await;
    let reply = match handled {
        Ok(Ok(reply)) => reply,
        Ok(Err(err)) => {
            // No response: nothing to record, and the writes go.
            let _ = claimed.finish(Err(Disposition::Release)).await;
            return Err(err);
        }
        Err(_) => {
            // Effects outside the database may have started: the writes go, and the key is
            // held for a lease, as for a panic outside a transaction.
            let detail = match claimed.finish(Err(Disposition::OutcomeUnknown)).await {
                Err(Unrecorded::As(_)) => {
                    "the handler panicked; its database writes were rolled back, but other \
                     effects may have started, so this key stays claimed until its lease \
                     lapses (or is held longer, until an operator resolves it, as the \
                     service's hold for unknown outcomes says), then a retry runs the handler \
                     again"
                }
                Err(Unrecorded::Idem(Error::NotRecorded { .. })) => {
                    "the handler panicked; its database writes were rolled back, but other \
                     effects may have started, and the reply to the commit that holds this key \
                     for a lease was lost: wait a lease before retrying, which may run the \
                     handler again"
                }
                _ => {
                    "the handler panicked; its database writes were rolled back and the key is \
                     free, so a retry runs the handler again"
                }
            };
            return reject(Rejection::HandlerPanicked, detail);
        }
    };
    let ended = match reply {
        Reply::Record(parts, bytes) => {
            let replayed = |name: &http::HeaderName| config.replayed_headers.contains(name);
            let recorded = RecordedResponse::capture(&parts, bytes.clone(), replayed);
            match claimed.finish(Ok(recorded)).await {
                Ok(_) => return Ok(Response::from_parts(parts, BufferedBody::full(bytes))),
                ended => ended,
            }
        }
        Reply::Pass(parts, body, disposition) => {
            // The handler's own answer (a 5xx, say): its writes go, or with `OutcomeUnknown`
            // they go and the key is held. A body that still holds the `Tx` rolls it back when
            // it is dropped, which is what releasing asks.
            match claimed.finish(Err(disposition)).await {
                Err(Unrecorded::As(_) | Unrecorded::Kept) => {
                    return Ok(Response::from_parts(parts, BufferedBody::new(body)));
                }
                ended => ended,
            }
        }
        Reply::Unrecordable => {
            // What the handler wrote may not commit without its response, and a response
            // without its writes would misinform the client: neither is sent.
            let _ = claimed.finish(Err(config.on_unrecordable)).await;
            let detail = format!(
                "the handler's response cannot be recorded (an event stream, a body over {} \
                 bytes, trailers, or a body that failed), so its database writes were rolled \
                 back; in transactional mode every response of a covered route must be \
                 recordable",
                config.max_response_body
            );
            return reject(Rejection::ResponseUnrecordable, &detail);
        }
    };
    match ended {
        Err(Unrecorded::Kept) => reject(
            Rejection::Misconfigured,
            "the handler kept its `Tx` after it answered (moved into a task?), so its \
             transaction could not commit and was rolled back, and the key is free; use the \
             `Tx` only inside the handler",
        ),
        Err(Unrecorded::Idem(err)) => {
            let (rejection, detail, retry_after) = for_commit_error(&err);
            Ok(rejection.to_response(&config.problem_base, &detail, retry_after))
        }
        // Only `Release` and `OutcomeUnknown` come back as `As`, answered above, as is `Ok`.
        _ => reject(
            Rejection::Misconfigured,
            "a transactional request ended in a state the layer does not know",
        ),
    }
}

/// A transactional handler's response, read as far as its record needs.
enum Reply<ResB> {
    /// A response to record: its parts and whole body.
    Record(http::response::Parts, bytes::Bytes),
    /// A response not to record, passed on after its claim is settled as `Disposition` says.
    Pass(http::response::Parts, ResB, Disposition),
    /// A response to record that cannot be (its body is dropped).
    Unrecordable,
}

/// Calls the handler and reads its response as far as its record needs.
async fn respond<S, B, ResB>(
    config: &Config,
    inner: S,
    request: Request<BufferedBody<B>>,
) -> Result<Reply<ResB>, S::Error>
where
    S: Service<Request<BufferedBody<B>>, Response = Response<ResB>>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    let (parts, body) = call_inner(inner, request).await?.into_parts();
    let disposition = (config.on_status)(parts.status);
    if disposition != Disposition::Record {
        return Ok(Reply::Pass(parts, body, disposition));
    }
    if is_event_stream(&parts) {
        drop(body);
        return Ok(Reply::Unrecordable);
    }
    Ok(match read_response(body, config.max_response_body).await {
        ResponseRead::Whole(bytes) => Reply::Record(parts, bytes),
        ResponseRead::Unrecordable(rest) => {
            drop(rest);
            Reply::Unrecordable
        }
    })
}

/// The rejection for an error that ended a transaction after its handler ran.
fn for_commit_error(err: &Error) -> (Rejection, String, Option<Duration>) {
    let soon = Some(Duration::from_secs(1));
    match err {
        Error::TransactionAborted { .. } => (
            Rejection::TransactionAborted,
            "a statement of the handler failed and aborted the request's transaction, though \
             the handler answered as if it had succeeded: nothing it wrote remains, and the key \
             is free; run statements that may fail inside a savepoint, or answer 5xx when one \
             fails"
                .to_owned(),
            None,
        ),
        Error::CommitUnknown { .. } => (
            Rejection::StoreUnavailable,
            "the handler ran, but the reply to its transaction's COMMIT was lost: its writes and \
             its recorded response committed together or not at all; retry with the same key \
             to find out (a replay if they committed, a new run if not)"
                .to_owned(),
            soon,
        ),
        Error::NotRecorded { .. } => (
            Rejection::NotRecorded,
            "the handler ran and its outcome is unknown, so its database writes were rolled \
             back and its key was to be held for a lease, but the reply to that commit was \
             lost: the key may be held or free; wait a lease before retrying with this key, \
             which may run the handler again"
                .to_owned(),
            None,
        ),
        Error::RolledBack { source, .. } if matches!(**source, Error::Store { .. }) => (
            Rejection::StoreUnavailable,
            "the handler ran, but its transaction failed and was rolled back, so nothing it \
             wrote remains; retry with the same key"
                .to_owned(),
            soon,
        ),
        _ => (
            Rejection::NotRecorded,
            format!(
                "the handler ran, but its response could not be recorded, so its transaction \
                 was rolled back and nothing it wrote remains: {err}"
            ),
            None,
        ),
    }
}
