//! The service the layer makes, and its future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use idem_core::BoxError;
use tower_service::Service;

use crate::body::BufferedBody;
use crate::config::Config;
use crate::handle::serve;

/// The service made by [`IdempotencyLayer`](crate::IdempotencyLayer) around an inner service.
#[derive(Clone)]
pub struct IdempotencyService<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S> std::fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyService").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<Request<B>> for IdempotencyService<S>
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
    type Response = Response<BufferedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    /// Always ready: the inner service is made ready (on a clone) only when a request reaches
    /// it, since replays and rejections never do.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ResponseFuture(Box::pin(serve(
            self.config.clone(),
            self.inner.clone(),
            request,
        )))
    }
}

/// Passes `request` to the inner service untouched.
pub(crate) async fn pass_through<S, B, ResB>(
    inner: S,
    request: Request<BufferedBody<B>>,
) -> Result<Response<BufferedBody<ResB>>, S::Error>
where
    S: Service<Request<BufferedBody<B>>, Response = Response<ResB>>,
{
    Ok(call_inner(inner, request).await?.map(BufferedBody::new))
}

/// The inner service's response to `request`, once it is ready.
pub(crate) async fn call_inner<S, Req>(mut inner: S, request: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(request).await
}

/// The future of [`IdempotencyService`]. Boxed: the request's path (read the body, claim, run the
/// handler on a task of its own, record) awaits many futures whose sizes add up; a named type, so
/// that the box can go without a breaking change.
pub struct ResponseFuture<ResB, E>(BoxedResponse<ResB, E>);

type BoxedResponse<ResB, E> =
    Pin<Box<dyn Future<Output = Result<Response<BufferedBody<ResB>>, E>> + Send>>;

impl<ResB, E> Future for ResponseFuture<ResB, E> {
    type Output = Result<Response<BufferedBody<ResB>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl<ResB, E> std::fmt::Debug for ResponseFuture<ResB, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
