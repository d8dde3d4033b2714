//! Accepted connections, below HTTP: who is on the other end (for per-address caps) and a
//! write meter that notices a client which stopped taking bytes (a slow consumer) and lets
//! the server cut its connection.
//!
//! Why down here: socketioxide bounds each socket's send queue, but when the queue is full it
//! drops packets without saying whose, and `disconnect()` itself needs room in that queue. The
//! TCP stream is the one place that knows a client has stopped reading, and closing it works
//! whatever state the socket's queue is in.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared by a connection's stream and whoever watches it.
#[derive(Debug)]
pub struct WriteMeter {
    /// When a write first found the connection unable to take bytes, in milliseconds since
    /// [`WriteMeter::epoch`] plus one; 0 while writes flow.
    stalled_since: AtomicU64,
    /// Bytes of publications queued for this connection since it stalled (see
    /// [`crate::slow`]); back to 0 once it takes bytes again.
    backlog: AtomicU64,
    cut: AtomicBool,
    epoch: Instant,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl WriteMeter {
    fn new() -> Self {
        Self {
            stalled_since: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            epoch: Instant::now(),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        }
    }

    /// How long the connection has had bytes waiting that it would not take, if it has.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.stalled_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.now_ms().saturating_sub(since - 1)),
        }
        .map(Duration::from_millis)
    }

    /// Count `bytes` more queued for this connection while it is stalled; returns the total.
    pub fn add_backlog(&self, bytes: u64) -> u64 {
        self.backlog
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes)
    }

    /// Close the connection: every read and write from now on fails, and a task waiting on
    /// either is woken to see it.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn note_stalled(&self) {
        if self.stalled_since.load(Ordering::Relaxed) == 0 {
            self.stalled_since
                .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        }
    }

    fn note_flowing(&self) {
        if self.stalled_since.load(Ordering::Relaxed) != 0 {
            self.stalled_since.store(0, Ordering::Relaxed);
            self.backlog.store(0, Ordering::Relaxed);
        }
    }

    fn cut_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "cut by the server")
    }
}

/// A stream that reports write stalls to its [`WriteMeter`] and fails once it is cut.
pub struct MeteredStream<S> {
    inner: S,
    meter: Arc<WriteMeter>,
}

impl<S> MeteredStream<S> {
    pub fn meter(&self) -> &Arc<WriteMeter> {
        &self.meter
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.meter.is_cut() {
            return Poll::Ready(Err(WriteMeter::cut_error()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => {
                self.meter.reader.register(cx.waker());
                // A cut between the poll and the registration would otherwise go unseen.
                if self.meter.is_cut() {
                    return Poll::Ready(Err(WriteMeter::cut_error()));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> MeteredStream<S> {
    /// Track one write attempt's outcome.
    fn observe<T>(&self, cx: &Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                self.meter.note_stalled();
                self.meter.writer.register(cx.waker());
                if self.meter.is_cut() {
                    return Poll::Ready(Err(WriteMeter::cut_error()));
                }
                Poll::Pending
            }
            ready => {
                self.meter.note_flowing();
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.meter.is_cut() {
            return Poll::Ready(Err(WriteMeter::cut_error()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.observe(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.meter.is_cut() {
            return Poll::Ready(Err(WriteMeter::cut_error()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.observe(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// Not metered: a finished flush says nothing about whether the peer takes bytes (a TCP
    /// stream's flush is always ready).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A listener whose connections are [`MeteredStream`]s.
pub struct MeteredListener<L>(pub L);

impl<L: Listener> Listener for MeteredListener<L> {
    type Io = MeteredStream<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, address) = self.0.accept().await;
        let meter = Arc::new(WriteMeter::new());
        (MeteredStream { inner, meter }, address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// What every request knows about its connection (as axum's `ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address; `None` on a Unix socket.
    pub ip: Option<IpAddr>,
    pub meter: Arc<WriteMeter>,
}

impl Connected<IncomingStream<'_, MeteredListener<tokio::net::TcpListener>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, MeteredListener<tokio::net::TcpListener>>) -> Self {
        let address: &SocketAddr = stream.remote_addr();
        Self {
            ip: Some(address.ip().to_canonical()),
            meter: stream.io().meter().clone(),
        }
    }
}

impl Connected<IncomingStream<'_, MeteredListener<tokio::net::UnixListener>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, MeteredListener<tokio::net::UnixListener>>) -> Self {
        Self {
            ip: None,
            meter: stream.io().meter().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn metered(inner: tokio::io::DuplexStream) -> MeteredStream<tokio::io::DuplexStream> {
        MeteredStream {
            inner,
            meter: Arc::new(WriteMeter::new()),
        }
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_shows_as_stalled_until_it_reads_again() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = metered(server);
        let meter = server.meter().clone();
        let writer = tokio::spawn(async move { server.write_all(&[7; 256]).await });
        tokio::time::timeout(Duration::from_secs(5), async {
            while meter.stalled_for().is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the write stalls once the peer's buffer is full");
        let mut received = vec![0; 256];
        client.read_exact(&mut received).await.expect("read");
        writer.await.expect("join").expect("write completes");
        assert_eq!(meter.stalled_for(), None);
    }

    #[tokio::test]
    async fn cutting_wakes_a_blocked_writer_and_reader_with_an_error() {
        let (server, _client) = tokio::io::duplex(64);
        let server = metered(server);
        let meter = server.meter().clone();
        let (mut reader, mut writer) = tokio::io::split(server);
        let blocked_write = tokio::spawn(async move { writer.write_all(&[1; 1024]).await });
        let blocked_read = tokio::spawn(async move { reader.read_u8().await });
        tokio::time::timeout(Duration::from_secs(5), async {
            while meter.stalled_for().is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the write stalls");
        meter.cut();
        let (write, read) = tokio::time::timeout(Duration::from_secs(5), async {
            (blocked_write.await, blocked_read.await)
        })
        .await
        .expect("both wake up");
        assert!(write.expect("join").is_err());
        assert!(read.expect("join").is_err());
    }
}
