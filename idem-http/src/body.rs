//! Bodies: reading a request body up to a limit, and a response body that may begin with frames
//! already read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use idem_core::BoxError;
use pin_project_lite::pin_project;

pin_project! {
    /// The body of requests the layer passes on and of responses it returns: frames already read
    /// (a buffered request, a recorded or replayed response), then, when the rest was not read,
    /// the original body.
    pub struct BufferedBody<B> {
        read: VecDeque<Result<Frame<Bytes>, BoxError>>,
        #[pin]
        rest: Option<B>,
    }
}

impl<B> BufferedBody<B> {
    /// The whole body, already read.
    pub fn full(bytes: Bytes) -> Self {
        let mut read = VecDeque::new();
        if !bytes.is_empty() {
            read.push_back(Ok(Frame::data(bytes)));
        }
        Self { read, rest: None }
    }

    /// `body`, untouched.
    pub fn new(body: B) -> Self {
        Self {
            read: VecDeque::new(),
            rest: Some(body),
        }
    }

    fn resumed(read: VecDeque<Result<Frame<Bytes>, BoxError>>, rest: Option<B>) -> Self {
        Self { read, rest }
    }
}

impl<B> From<Bytes> for BufferedBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl<B> std::fmt::Debug for BufferedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferedBody")
            .field("frames_read", &self.read.len())
            .field("more", &self.rest.is_some())
            .finish()
    }
}

impl<B> Body for BufferedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match this.rest.as_pin_mut() {
            None => Poll::Ready(None),
            Some(rest) => match rest.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(to_bytes_frame(frame)))),
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(|frame| Some(frame.as_ref().ok()?.data_ref()?.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(read),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

fn to_bytes_frame<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

/// Why a request body was not read.
pub(crate) enum ReadError {
    /// Over the limit (by `Content-Length`, or by what arrived).
    TooLarge,
    /// The body failed.
    Failed(BoxError),
}

/// Reads a whole request body of at most `limit` bytes.
pub(crate) async fn read_request<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Err(err) => Err(ReadError::Failed(err)),
    }
}

/// What reading a response body up to a limit found.
pub(crate) enum ResponseRead<B> {
    /// The whole body, within the limit, without trailers.
    Whole(Bytes),
    /// A body that cannot be recorded (over the limit, with trailers, or failed midway): what
    /// was read, then the rest, to pass on to the client unchanged.
    Unrecordable(BufferedBody<B>),
}

/// Reads a response body while it stays within `limit` bytes.
pub(crate) async fn read_response<B>(mut body: B, limit: usize) -> ResponseRead<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return ResponseRead::Unrecordable(BufferedBody::new(body));
    }
    let mut read = VecDeque::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let frame = to_bytes_frame(frame);
                let data_len = frame.data_ref().map(Bytes::len);
                read.push_back(Ok(frame));
                match data_len {
                    Some(len) if total.saturating_add(len) <= limit => total += len,
                    // Over the limit, or trailers (which a record does not keep).
                    _ => {
                        return ResponseRead::Unrecordable(BufferedBody::resumed(read, Some(body)))
                    }
                }
            }
            Some(Err(err)) => {
                // Pass the failure on where it happened; nothing is recorded.
                read.push_back(Err(err.into()));
                return ResponseRead::Unrecordable(BufferedBody::resumed(read, None));
            }
        }
    }
    let mut whole = BytesMut::with_capacity(total);
    for frame in read.into_iter().flatten() {
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    ResponseRead::Whole(whole.freeze())
}
