//! Acknowledgements both ways: the ones a client asks for ([`AckSender`]) and the ones the
//! server waits for after [`Socket::emit_with_ack`](super::Socket::emit_with_ack) ([`AckReply`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::sync::oneshot;

use super::event::Args;
use super::packet;
use super::socket::{EmitError, Socket};
use super::transport::SendError;

/// Answers one client event that asked for an ack. Sending consumes it; dropping it sends
/// nothing, as in Node.
#[derive(Debug)]
pub struct AckSender {
    socket: Socket,
    id: i64,
}

impl AckSender {
    pub(crate) fn new(socket: Socket, id: i64) -> Self {
        Self { socket, id }
    }

    /// Ack with `payload` as the arguments (a tuple for several).
    pub fn send<T: Serialize + ?Sized>(self, payload: &T) -> Result<(), EmitError> {
        let encoded = packet::ack(self.socket.namespace().path_str(), self.id, payload)?;
        Ok(self.socket.send(&encoded)?)
    }

    /// Ack with arguments as received, e.g. a client event's own.
    pub fn send_args(self, args: &Args) -> Result<(), SendError> {
        let encoded = packet::ack_with_args(self.socket.namespace().path_str(), self.id, args);
        self.socket.send(&encoded)
    }
}

/// The acks a socket waits for. Empty (no allocation) unless the server asked for one.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next_id: i64,
    waiting: Vec<(i64, oneshot::Sender<Args>)>,
}

impl Pending {
    /// A fresh id, and the receiver its answer will arrive on.
    pub(crate) fn register(&mut self) -> (i64, oneshot::Receiver<Args>) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        self.waiting.push((id, tx));
        (id, rx)
    }

    /// Hand the client's answer to whoever waits for `id`; unknown ids are ignored (the waiter
    /// may have given up).
    pub(crate) fn resolve(&mut self, id: i64, args: Args) {
        if let Some(tx) = self.take(id) {
            // The waiter may have been dropped in between; then nobody wants the answer.
            let _ = tx.send(args);
        }
    }

    pub(crate) fn forget(&mut self, id: i64) {
        self.take(id);
    }

    /// Drop every waiter: they see [`AckError::Disconnected`].
    pub(crate) fn clear(&mut self) {
        self.waiting = Vec::new();
    }

    fn take(&mut self, id: i64) -> Option<oneshot::Sender<Args>> {
        let at = self
            .waiting
            .iter()
            .position(|(waiting, _)| *waiting == id)?;
        Some(self.waiting.swap_remove(at).1)
    }
}

/// The client's answer to [`Socket::emit_with_ack`](super::Socket::emit_with_ack). Bound it
/// with `tokio::time::timeout`; dropping it forgets the ack.
#[derive(Debug)]
pub struct AckReply {
    socket: Socket,
    id: i64,
    answer: oneshot::Receiver<Args>,
}

impl AckReply {
    pub(crate) fn new(socket: Socket, id: i64, answer: oneshot::Receiver<Args>) -> Self {
        Self { socket, id, answer }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("the socket disconnected before it answered")]
    Disconnected,
}

impl Future for AckReply {
    type Output = Result<Args, AckError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map_err(|_| AckError::Disconnected)
    }
}

impl Drop for AckReply {
    fn drop(&mut self) {
        self.socket.forget_ack(self.id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use engineioxide_core::Str;

    use super::*;

    fn args(json: &'static str) -> Args {
        Args::new(Str::from(json), Vec::<Bytes>::new())
    }

    #[test]
    fn answers_reach_their_own_waiter() {
        let mut pending = Pending::default();
        let (first, mut first_rx) = pending.register();
        let (second, mut second_rx) = pending.register();
        assert_ne!(first, second);
        pending.resolve(second, args("2"));
        pending.resolve(second, args("again"));
        pending.resolve(99, args("unknown"));
        assert_eq!(second_rx.try_recv().expect("answered").json(), "2");
        assert!(first_rx.try_recv().is_err());
        pending.forget(first);
        assert!(pending.waiting.is_empty());
    }

    #[test]
    fn clearing_tells_waiters_the_socket_is_gone() {
        let mut pending = Pending::default();
        let (_, mut rx) = pending.register();
        pending.clear();
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
