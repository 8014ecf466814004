//! The message relay between an upgraded client WebSocket and the upstream
//! WebSocket.
//!
//! Each direction is a pump that reads whole messages from one side and
//! writes them to the other, so both directions move independently and a
//! slow reader on one side never stalls the other. Message payloads are
//! `Bytes` taken from the read buffer; the only copy is the one that frames
//! (and, towards the upstream, masks) them for sending.
//!
//! Closing follows RFC 6455 section 5.5.1. A close frame from either side is
//! passed on with its code and reason, and the relay then waits up to
//! [`CLOSE_TIMEOUT`] for the other side's answer. When one side vanishes
//! without a close frame, the other side gets one: 1001 towards the
//! upstream, 1011 towards the client. When the `stop` future completes (for
//! example at shutdown), the client gets its close frame and the upstream a
//! normal close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::metrics::Traffic;

/// Time the relay waits for the far side to reply to a close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which party ended a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Upstream,
    Gateway,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Gateway => "gateway",
        }
    }
}

/// What happened on a relayed WebSocket.
#[derive(Debug)]
pub struct RelaySummary {
    pub closed_by: ClosedBy,
    /// The close code that ended the WebSocket; 1006 when there was none.
    pub close_code: u16,
    pub client_messages: u64,
    pub client_bytes: u64,
    pub upstream_messages: u64,
    pub upstream_bytes: u64,
}

/// How one direction ended.
enum PumpEnd {
    /// The reading side sent this close frame; it was passed on.
    Closed(Option<CloseFrame>),
    /// The reading side ended or failed without a close frame.
    ReadEnded,
    /// Writing to the other side failed.
    WriteFailed,
}

/// Messages and payload bytes of one direction: kept for the summary and
/// added to the gateway's metrics as they pass.
struct Counts {
    messages: u64,
    bytes: u64,
    traffic: Traffic,
}

impl Counts {
    fn new(traffic: Traffic) -> Self {
        Counts {
            messages: 0,
            bytes: 0,
            traffic,
        }
    }

    fn add(&mut self, bytes: u64) {
        self.messages += 1;
        self.bytes += bytes;
        self.traffic.message(bytes);
    }
}

/// Relays messages until both sides have closed, one side has vanished,
/// no message has passed in either direction for `idle_timeout` (the client
/// then gets 1001), or `stop` completes with the close frame to send to the
/// client.
///
/// `traffic` counts messages from the client, then from the upstream.
pub async fn relay<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    stop: impl Future<Output = CloseFrame>,
    idle_timeout: Duration,
    traffic: [Traffic; 2],
) -> RelaySummary
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let [client_traffic, upstream_traffic] = traffic;
    let mut from_client = Counts::new(client_traffic);
    let mut from_upstream = Counts::new(upstream_traffic);
    let activity = Activity::new();

    let (closed_by, close_code, follow_up) = {
        let to_upstream = pump(
            &mut client_rx,
            &mut upstream_tx,
            &mut from_client,
            &activity,
        );
        let to_client = pump(
            &mut upstream_rx,
            &mut client_tx,
            &mut from_upstream,
            &activity,
        );
        let idle = activity.idle_for(idle_timeout);
        tokio::pin!(to_upstream, to_client, stop, idle);
        tokio::select! {
            end = &mut to_upstream => match end {
                PumpEnd::Closed(frame) => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut to_client).await;
                    (ClosedBy::Client, code_of(frame.as_ref()), FollowUp::None)
                }
                PumpEnd::ReadEnded => (ClosedBy::Client, 1006, FollowUp::CloseUpstream(CloseCode::Away)),
                PumpEnd::WriteFailed => (ClosedBy::Upstream, 1006, FollowUp::CloseClient(CloseCode::Error)),
            },
            end = &mut to_client => match end {
                PumpEnd::Closed(frame) => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut to_upstream).await;
                    (ClosedBy::Upstream, code_of(frame.as_ref()), FollowUp::None)
                }
                PumpEnd::ReadEnded => (ClosedBy::Upstream, 1006, FollowUp::CloseClient(CloseCode::Error)),
                PumpEnd::WriteFailed => (ClosedBy::Client, 1006, FollowUp::CloseUpstream(CloseCode::Away)),
            },
            frame = &mut stop => {
                let code = u16::from(frame.code);
                (ClosedBy::Gateway, code, FollowUp::CloseBoth(frame))
            }
            () = &mut idle => {
                tracing::debug!(idle_secs = idle_timeout.as_secs(), "WebSocket idle; closing");
                let idle_frame = frame(CloseCode::Away, "idle timeout");
                (ClosedBy::Gateway, 1001, FollowUp::CloseBoth(idle_frame))
            }
        }
    };

    match follow_up {
        FollowUp::None => {}
        FollowUp::CloseUpstream(code) => {
            close_and_drain(
                &mut upstream_tx,
                &mut upstream_rx,
                frame(code, "client went away"),
            )
            .await;
        }
        FollowUp::CloseClient(code) => {
            close_and_drain(
                &mut client_tx,
                &mut client_rx,
                frame(code, "upstream connection lost"),
            )
            .await;
        }
        FollowUp::CloseBoth(client_frame) => {
            let upstream_frame = frame(CloseCode::Normal, "");
            tokio::join!(
                close_and_drain(&mut client_tx, &mut client_rx, client_frame),
                close_and_drain(&mut upstream_tx, &mut upstream_rx, upstream_frame),
            );
        }
    }

    // Tungstenite replies to a received close frame itself but sends the
    // reply only on that socket's next read, write or flush, and it rejects
    // a `send` of the relayed close frame once it has received one. Flush
    // both sides so a peer that closed first gets its reply before the
    // sockets are dropped.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = client_tx.flush().await;
        let _ = upstream_tx.flush().await;
    })
    .await;

    RelaySummary {
        closed_by,
        close_code,
        client_messages: from_client.messages,
        client_bytes: from_client.bytes,
        upstream_messages: from_upstream.messages,
        upstream_bytes: from_upstream.bytes,
    }
}

/// Close frames the relay still has to send after the pumps stopped.
enum FollowUp {
    None,
    CloseUpstream(CloseCode),
    CloseClient(CloseCode),
    CloseBoth(CloseFrame),
}

/// Time of the last message in either direction, shared by both pumps.
struct Activity {
    started: Instant,
    /// Milliseconds from `started` to the last message.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(elapsed, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Completes once no message has passed for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let Some(deadline) = self.last().checked_add(timeout) else {
                return std::future::pending().await;
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Moves messages from `rx` to `tx` until a close frame, an end or an error.
async fn pump<R, W>(
    rx: &mut SplitStream<WebSocketStream<R>>,
    tx: &mut SplitSink<WebSocketStream<W>, Message>,
    counts: &mut Counts,
    activity: &Activity,
) -> PumpEnd
where
    R: AsyncRead + AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = match rx.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::debug!(%error, "WebSocket read failed");
                return PumpEnd::ReadEnded;
            }
            None => return PumpEnd::ReadEnded,
        };
        activity.touch();
        if let Message::Close(frame) = message {
            // The peer may already be gone; the close is best effort.
            let _ = tx.send(Message::Close(frame.clone())).await;
            return PumpEnd::Closed(frame);
        }
        counts.add(message.len() as u64);
        if let Err(error) = tx.send(message).await {
            tracing::debug!(%error, "WebSocket write failed");
            return PumpEnd::WriteFailed;
        }
    }
}

/// Sends `frame` and reads until the peer's close reply or the timeout.
async fn close_and_drain<S>(
    tx: &mut SplitSink<WebSocketStream<S>, Message>,
    rx: &mut SplitStream<WebSocketStream<S>>,
    frame: CloseFrame,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if tx.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let drain = async {
        while let Some(Ok(message)) = rx.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

fn frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

fn code_of(frame: Option<&CloseFrame>) -> u16 {
    frame.map_or(1005, |frame| u16::from(frame.code))
}
