//! A response body fed from a channel, so a task can stream frames and end the body with an error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::respond::ResponseBody;

/// Frames buffered between the producing task and hyper. One keeps the producer at most one frame
/// ahead of the client, so backpressure and the stream gate stay visible to tests.
const CHANNEL_CAPACITY: usize = 1;

/// The receiving half: a body whose frames come from a [`BodySender`]. It has no size hint, so
/// HTTP/1.1 responses use chunked transfer encoding.
struct ChannelBody {
    frames: mpsc::Receiver<io::Result<Bytes>>,
}

/// The producing half. Dropping it ends the body cleanly, and [`BodySender::abort`] ends it with an
/// error.
pub(crate) struct BodySender {
    frames: mpsc::Sender<io::Result<Bytes>>,
}

/// Creates a streaming response body and the sender that feeds it.
pub(crate) fn channel() -> (BodySender, ResponseBody) {
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let body = ChannelBody { frames: receiver }.map_err(Into::into).boxed();
    (BodySender { frames: sender }, body)
}

impl BodySender {
    /// Sends one data frame. Returns false once the client has gone away.
    pub(crate) async fn send(&self, data: Bytes) -> bool {
        self.frames.send(Ok(data)).await.is_ok()
    }

    /// Completes when the client has gone away and no more frames can be delivered.
    pub(crate) async fn closed(&self) {
        self.frames.closed().await;
    }

    /// Ends the body with an error, which makes hyper close or reset the stream without a clean
    /// end.
    pub(crate) async fn abort(self, reason: &str) {
        let error = io::Error::other(reason.to_owned());
        // The client may already be gone, in which case there is nothing left to break.
        let _ = self.frames.send(Err(error)).await;
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.frames
            .poll_recv(cx)
            .map(|next| next.map(|result| result.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_then_end() {
        let (sender, mut body) = channel();
        tokio::spawn(async move {
            assert!(sender.send(Bytes::from_static(b"one")).await);
            assert!(sender.send(Bytes::from_static(b"two")).await);
        });
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("no error frame");
            received.push(frame.into_data().expect("data frame"));
        }
        assert_eq!(
            received,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
    }

    #[tokio::test]
    async fn abort_ends_body_with_error() {
        let (sender, mut body) = channel();
        tokio::spawn(async move {
            assert!(sender.send(Bytes::from_static(b"one")).await);
            sender.abort("broken on purpose").await;
        });
        let first = body.frame().await.expect("first frame");
        assert!(first.is_ok());
        let second = body.frame().await.expect("second frame");
        assert!(second.is_err());
    }
}
