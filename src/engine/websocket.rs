//! The websocket transport: ONE task per session that reads frames, writes the queue and
//! keeps the heartbeat.
//!
//! One task, not a reader, a writer and a heartbeat task: each tokio task costs a few hundred
//! bytes to a few KiB, and an idle session should cost little more than its read buffer
//! (docs/design.md). The task waits on all of it at once with a hand-written `poll_fn` rather
//! than `select!`, because reading and flushing both need the stream mutably; tungstenite
//! keeps separate wakers for the two directions, so polling both from one task is sound.
//!
//! The task takes about [`BATCH_BYTES`] from the queue, hands them to tungstenite (which
//! writes what the socket takes at once) and waits for the flush before it takes more. So a
//! client that reads slowly fills its queue, where the queue's bounds cut it, rather than
//! tungstenite's buffer. A flush during which the connection accepts no byte for
//! `stall_timeout` cuts the session as stalled.

use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use engineioxide_core::{Packet, ProtocolVersion, Str};
use futures_util::{FutureExt, Sink, SinkExt, Stream};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::heartbeat::{Due, Heartbeat};
use super::request::RequestError;
use super::session::{CloseReason, Frame, Session, SlowReason, Written};
use super::upgrade::{self, Attempt};
use super::{Core, EngineConfig, EngineHandler};

/// About how many bytes of queued packets the task hands to tungstenite before it waits for
/// the flush: what the socket does not take at once waits in tungstenite's write buffer,
/// which keeps its capacity, so this bounds that buffer too.
const BATCH_BYTES: usize = 16 * 1024;
/// How long a closing websocket gets to send its CLOSE packet and close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) type Ws = WebSocketStream<Counted<TokioIo<Upgraded>>>;

/// A websocket handshake without `sid`: answer 101 and open a session on it.
pub(super) fn accept<H: EngineHandler>(
    core: &Arc<Core<H>>,
    protocol: ProtocolVersion,
    mut request: Request<Body>,
    key: &HeaderValue,
) -> Response<Body> {
    let Some(on_upgrade) = take_upgrade(&mut request) else {
        return RequestError::BadRequest.response();
    };
    let session = core.new_session(protocol, request.into_parts().0, false);
    tokio::spawn(run(core.clone(), session, on_upgrade, Start::Open));
    switching_protocols(key)
}

/// How a websocket task begins.
pub(super) enum Start<D> {
    /// A new session: send the open packet, then serve it.
    Open,
    /// A polling session moving here: serve it once the upgrade completes.
    Upgrade(Attempt<D>),
}

/// The one task of a websocket session: take over the connection, open the session or
/// complete its upgrade, serve it until it closes, report the close, say goodbye.
///
/// Everything lives in this one future, and the websocket in one place in it (a value
/// moved from one local to another can take room in a future twice): its size is a third of
/// what an idle session costs.
pub(super) async fn run<H: EngineHandler>(
    core: Arc<Core<H>>,
    session: Arc<Session<H::Data>>,
    on_upgrade: OnUpgrade,
    start: Start<H::Data>,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let Some(ws) = connect(settings(&core.config), upgraded, Some(session.clone())) else {
        return;
    };
    let mut connection = Connection {
        core: &core,
        session: &session,
        heartbeat: Heartbeat::new(session.protocol, core.timing(), Instant::now()),
        flushing: false,
        progress: Progress {
            written: 0,
            at: Instant::now(),
        },
        read_first: true,
        ws,
    };
    let reason = match start {
        Start::Open => {
            let open = format!("0{}", core.open_packet(&session, false));
            core.register(&session);
            match connection.write(Message::text(open)) {
                Ok(()) => connection.serve().await,
                Err(reason) => reason,
            }
        }
        Start::Upgrade(attempt) => {
            // Boxed, as the goodbye below: these futures live a moment, and unboxed their room
            // would stay in the task (so in every idle session) for the session's whole life.
            let upgrading =
                upgrade::complete(&mut connection.ws, attempt, core.config.upgrade_timeout);
            if !Box::pin(upgrading).await {
                return;
            }
            connection.heartbeat = Heartbeat::new(session.protocol, core.timing(), Instant::now());
            connection.serve().await
        }
    };
    session.close(reason);
    let reason = session.close_reason().unwrap_or(reason);
    core.handler.on_close(&session, reason);
    Box::pin(finish(&mut connection.ws, reason)).await;
}

/// Answer 101, then close the websocket at once.
pub(super) fn refuse(
    config: &EngineConfig,
    on_upgrade: OnUpgrade,
    key: &HeaderValue,
) -> Response<Body> {
    let settings = settings(config);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await
            && let Some(mut ws) = connect(settings, upgraded, None)
        {
            let _ = tokio::time::timeout(CLOSE_GRACE, SinkExt::close(&mut ws)).await;
        }
    });
    switching_protocols(key)
}

/// hyper's handle on the connection, which the 101 answer hands over to us.
pub(super) fn take_upgrade(request: &mut Request<Body>) -> Option<OnUpgrade> {
    request.extensions_mut().remove::<OnUpgrade>()
}

pub(super) fn switching_protocols(key: &HeaderValue) -> Response<Body> {
    let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) else {
        return RequestError::BadRequest.response();
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The websocket settings `config` asks for.
fn settings(config: &EngineConfig) -> WebSocketConfig {
    let limit = Some(config.max_payload_len());
    // Writes go to the socket at once (`write_buffer_size` 0), so tungstenite's write buffer
    // only grows while the socket is full.
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
}

/// The websocket over an upgraded connection. tokio-tungstenite builds it in a future that is
/// ready at its first poll (it only picks up the waker, which every later poll replaces);
/// polling it here instead of awaiting it keeps that future out of the session's task.
fn connect(
    settings: WebSocketConfig,
    upgraded: Upgraded,
    session: Option<Arc<dyn Written>>,
) -> Option<Ws> {
    let io = Counted {
        inner: TokioIo::new(upgraded),
        written: 0,
        session,
    };
    WebSocketStream::from_raw_socket(io, Role::Server, Some(settings)).now_or_never()
}

/// The CLOSE packet and the close frame, where the connection can still take them.
async fn finish(ws: &mut Ws, reason: CloseReason) {
    let goodbye = match reason {
        // Nothing can be written to a stalled or broken connection.
        CloseReason::SlowConsumer(SlowReason::Stalled) | CloseReason::TransportError => return,
        // The client left: complete the close handshake only.
        CloseReason::TransportClose => None,
        _ => Some(Message::text("1")),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(goodbye) = goodbye {
            ws.send(goodbye).await?;
        }
        SinkExt::close(ws).await
    })
    .await;
}

/// When the connection last accepted bytes, as far as the task has seen.
#[derive(Debug, Clone, Copy)]
struct Progress {
    written: u64,
    at: Instant,
}

/// What woke the task.
enum Event {
    Flushed(Result<(), WsError>),
    Received(Option<Result<Message, WsError>>),
    Woken,
    Timer,
}

struct Connection<'a, H: EngineHandler> {
    core: &'a Core<H>,
    session: &'a Arc<Session<H::Data>>,
    heartbeat: Heartbeat,
    /// Written frames wait in tungstenite's buffer for the socket.
    flushing: bool,
    progress: Progress,
    /// Alternates which direction is polled first, so neither starves the other.
    read_first: bool,
    ws: Ws,
}

impl<'a, H: EngineHandler> Connection<'a, H> {
    async fn serve(&mut self) -> CloseReason {
        let session: &'a Arc<Session<H::Data>> = self.session;
        let mut timer = pin!(tokio::time::sleep_until(self.heartbeat.deadline()));
        loop {
            let mut woken = pin!(session.woken());
            woken.as_mut().enable();
            if let Some(reason) = session.close_reason() {
                return reason;
            }
            if !self.flushing
                && let Err(reason) = self.write_queued()
            {
                return reason;
            }
            let deadline = self.deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let event = poll_fn(|cx| self.poll_event(cx, woken.as_mut(), timer.as_mut())).await;
            let handled = match event {
                Event::Flushed(Ok(())) => {
                    self.flushing = false;
                    Ok(())
                }
                Event::Flushed(Err(_)) => Err(CloseReason::TransportError),
                Event::Received(Some(Ok(message))) => self.receive(message),
                Event::Received(Some(Err(error))) => Err(read_error(&error)),
                Event::Received(None) => Err(CloseReason::TransportClose),
                Event::Woken => Ok(()),
                Event::Timer => self.on_timer(Instant::now()),
            };
            if let Err(reason) = handled {
                return reason;
            }
        }
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        woken: Pin<&mut Notified<'_>>,
        timer: Pin<&mut Sleep>,
    ) -> Poll<Event> {
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Event::Timer);
        }
        if woken.poll(cx).is_ready() {
            return Poll::Ready(Event::Woken);
        }
        self.read_first = !self.read_first;
        if self.read_first
            && let Poll::Ready(message) = Pin::new(&mut self.ws).poll_next(cx)
        {
            return Poll::Ready(Event::Received(message));
        }
        if self.flushing
            && let Poll::Ready(flushed) = Pin::new(&mut self.ws).poll_flush(cx)
        {
            return Poll::Ready(Event::Flushed(flushed));
        }
        if !self.read_first
            && let Poll::Ready(message) = Pin::new(&mut self.ws).poll_next(cx)
        {
            return Poll::Ready(Event::Received(message));
        }
        Poll::Pending
    }

    /// The next heartbeat deadline, or the moment a pending flush counts as stalled.
    fn deadline(&self) -> Instant {
        let heartbeat = self.heartbeat.deadline();
        if self.flushing {
            heartbeat.min(self.progress.at + self.core.config.stall_timeout)
        } else {
            heartbeat
        }
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), CloseReason> {
        if self.flushing {
            let written = self.ws.get_ref().written;
            if written != self.progress.written {
                self.progress = Progress { written, at: now };
            } else if now >= self.progress.at + self.core.config.stall_timeout {
                return Err(CloseReason::SlowConsumer(SlowReason::Stalled));
            }
        }
        match self.heartbeat.poll(self.core.timing(), now) {
            Due::Nothing => Ok(()),
            Due::Ping => self.write(Message::text("2")),
            Due::TimedOut => Err(CloseReason::PingTimeout),
        }
    }

    /// Move about [`BATCH_BYTES`] of queued packets into the websocket.
    fn write_queued(&mut self) -> Result<(), CloseReason> {
        let mut budget = BATCH_BYTES;
        let mut first = true;
        loop {
            let frame = self.session.state().queue.pop_within(budget, first);
            let Some(frame) = frame else {
                return Ok(());
            };
            first = false;
            budget = budget.saturating_sub(frame.len());
            self.write(message(self.session.protocol, frame))?;
        }
    }

    /// Hand one message to tungstenite, which writes what the socket takes now and buffers
    /// the rest for the flush. (`start_send` without `poll_ready`: tokio-tungstenite's sink
    /// accepts a message whatever its state and only reports a full socket through the
    /// flush, which the loop then polls.)
    fn write(&mut self, message: Message) -> Result<(), CloseReason> {
        Pin::new(&mut self.ws)
            .start_send(message)
            .map_err(|_| CloseReason::TransportError)?;
        if !self.flushing {
            self.flushing = true;
            self.progress = Progress {
                written: self.ws.get_ref().written,
                at: Instant::now(),
            };
        }
        Ok(())
    }

    fn receive(&mut self, message: Message) -> Result<(), CloseReason> {
        let (handler, session) = (&self.core.handler, self.session);
        match message {
            // Copied out of the read buffer: `Str` has no safe constructor from bytes already
            // checked as UTF-8, and clients send little (events, PONGs).
            Message::Text(text) => {
                match Packet::parse(session.protocol, Str::copy_from_slice(text.as_str())) {
                    Ok(Packet::Message(text)) => handler.on_message(session, text),
                    Ok(Packet::Binary(data) | Packet::BinaryV3(data)) => {
                        handler.on_binary(session, data);
                    }
                    Ok(Packet::Pong) => self.heartbeat.pong(self.core.timing(), Instant::now()),
                    Ok(Packet::Ping) if session.protocol == ProtocolVersion::V3 => {
                        self.heartbeat
                            .client_ping(self.core.timing(), Instant::now());
                        self.write(Message::text("3"))?;
                    }
                    Ok(Packet::Close) => return Err(CloseReason::TransportClose),
                    // NOOP, a v4 client's PING, a stray probe: nothing to do.
                    Ok(_) => {}
                    Err(_) => return Err(CloseReason::ParseError),
                }
            }
            Message::Binary(data) => handler.on_binary(session, binary(session.protocol, data)?),
            Message::Close(_) => return Err(CloseReason::TransportClose),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        Ok(())
    }
}

/// A client's binary frame as Engine.IO data: v3 frames carry the packet type (4) first.
fn binary(protocol: ProtocolVersion, data: Bytes) -> Result<Bytes, CloseReason> {
    match protocol {
        ProtocolVersion::V4 => Ok(data),
        ProtocolVersion::V3 if data.first() == Some(&4) => Ok(data.slice(1..)),
        ProtocolVersion::V3 => Err(CloseReason::ParseError),
    }
}

/// A queued packet as a websocket message: `4` and the text, or the binary data (after a
/// `4` byte for v3).
fn message(protocol: ProtocolVersion, frame: Frame) -> Message {
    match (frame, protocol) {
        (Frame::Text(text), _) => {
            let mut framed = String::with_capacity(1 + text.len());
            framed.push('4');
            framed.push_str(&text);
            Message::text(framed)
        }
        (Frame::Binary(data), ProtocolVersion::V4) => Message::Binary(data),
        (Frame::Binary(data), ProtocolVersion::V3) => {
            let mut framed = Vec::with_capacity(1 + data.len());
            framed.push(4);
            framed.extend_from_slice(&data);
            Message::Binary(framed.into())
        }
    }
}

fn read_error(error: &WsError) -> CloseReason {
    match error {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            CloseReason::TransportClose
        }
        WsError::Capacity(_) | WsError::Utf8(_) => CloseReason::ParseError,
        _ => CloseReason::TransportError,
    }
}

/// A stream that counts the bytes written to it, so the task can tell a slow connection
/// (bytes trickle out) from a stalled one (none do), and tells its session whether the
/// connection takes bytes (the queue's byte bound counts only while it does not).
pub(super) struct Counted<S> {
    inner: S,
    written: u64,
    session: Option<Arc<dyn Written>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Counted<S> {
    fn count(&mut self, polled: &Poll<io::Result<usize>>) {
        let stalled = match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.written = self.written.wrapping_add(*n as u64);
                false
            }
            Poll::Pending => true,
            Poll::Ready(_) => return,
        };
        if let Some(session) = &self.session {
            session.stalled(stalled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_goes_out_after_a_4_and_v3_binary_after_a_4_byte() {
        let text = message(ProtocolVersion::V4, Frame::Text("hi".into()));
        assert_eq!(text, Message::text("4hi"));
        let data = Bytes::from_static(&[1, 2]);
        assert_eq!(
            message(ProtocolVersion::V4, Frame::Binary(data.clone())),
            Message::Binary(data.clone())
        );
        assert_eq!(
            message(ProtocolVersion::V3, Frame::Binary(data)),
            Message::Binary(Bytes::from_static(&[4, 1, 2]))
        );
    }

    #[test]
    fn a_v3_binary_frame_must_start_with_the_message_type() {
        assert_eq!(
            binary(ProtocolVersion::V3, Bytes::from_static(&[4, 9])),
            Ok(Bytes::from_static(&[9]))
        );
        assert_eq!(
            binary(ProtocolVersion::V3, Bytes::from_static(&[9])),
            Err(CloseReason::ParseError)
        );
        assert_eq!(
            binary(ProtocolVersion::V3, Bytes::new()),
            Err(CloseReason::ParseError)
        );
        assert_eq!(
            binary(ProtocolVersion::V4, Bytes::from_static(&[9])),
            Ok(Bytes::from_static(&[9]))
        );
    }
}
