//! Source ports for the clients, handed out by the load generator instead of the kernel.
//!
//! Why: all clients connect from 127.0.0.1 to one server port, so every connection's 4-tuple
//! differs only in its source port. When the kernel picks that port (`connect()` on an unbound
//! socket) it walks the ephemeral range checking each candidate against the established
//! connections; with ~20k of them in use that walk is most of the load core's time. Measured
//! during a 19.5k-client storm: 60% of the load core in `__inet_hash_connect` and
//! `__inet_check_established`, which made the storm's time-to-all-back the load generator's
//! figure rather than the server's. Binding each socket to a port known to be free costs one
//! lookup.
//!
//! The ports come from below the kernel's ephemeral range, so they never collide with the
//! ports the kernel gives other sockets (the server's calls to the web stand-in, Redis).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// The lowest port handed out: below it are the well-known and commonly configured ports.
const LOWEST: u16 = 10_000;
/// Ports tried per connection before leaving the choice to the kernel.
const TRIES: usize = 16;

/// The free source ports, oldest-freed first (a port freed long ago is the least likely to
/// still have a connection in TIME_WAIT).
pub struct SourcePorts {
    free: Mutex<VecDeque<u16>>,
}

impl std::fmt::Debug for SourcePorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let free = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("SourcePorts").field("free", &free).finish()
    }
}

impl SourcePorts {
    /// Every port from [`LOWEST`] up to the start of the kernel's ephemeral range.
    pub fn below_ephemeral_range() -> Arc<Self> {
        let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        Self::from_range(LOWEST..ephemeral_start.max(LOWEST))
    }

    fn from_range(ports: std::ops::Range<u16>) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(ports.collect()),
        })
    }

    fn take(self: &Arc<Self>) -> Option<PortLease> {
        let port = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()?;
        Some(PortLease {
            port,
            pool: self.clone(),
        })
    }

    /// Connect to `server` from one of the pool's ports; the port returns to the pool when the
    /// stream is dropped. Falls back to a kernel-chosen port when the pool is empty or its
    /// ports are taken by others.
    pub async fn connect(self: &Arc<Self>, server: SocketAddr) -> io::Result<LeasedStream> {
        for _ in 0..TRIES {
            let Some(lease) = self.take() else { break };
            let (socket, source) = match server.ip() {
                IpAddr::V4(_) => (TcpSocket::new_v4()?, IpAddr::V4(Ipv4Addr::LOCALHOST)),
                IpAddr::V6(_) => (TcpSocket::new_v6()?, IpAddr::V6(Ipv6Addr::LOCALHOST)),
            };
            // Lets a port whose last connection is in TIME_WAIT be bound again (the kernel
            // still refuses a 4-tuple that is in use, which `connect` reports below).
            socket.set_reuseaddr(true)?;
            if socket.bind(SocketAddr::new(source, lease.port)).is_err() {
                continue; // Another program listens on it; the lease goes back to the pool.
            }
            match socket.connect(server).await {
                Ok(stream) => {
                    return Ok(LeasedStream {
                        inner: stream,
                        _lease: Some(lease),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(LeasedStream {
            inner: TcpStream::connect(server).await?,
            _lease: None,
        })
    }
}

/// A port taken from a [`SourcePorts`]; dropping it gives the port back.
#[derive(Debug)]
struct PortLease {
    port: u16,
    pool: Arc<SourcePorts>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(self.port);
    }
}

/// A client's TCP stream, holding its source port until it is dropped.
#[derive(Debug)]
pub struct LeasedStream {
    inner: TcpStream,
    _lease: Option<PortLease>,
}

impl LeasedStream {
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay)
    }
}

impl AsyncRead for LeasedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LeasedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_uses_a_pool_port_and_gives_it_back_when_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = listener.local_addr().expect("addr");
        // A range of one port: the second connection can only get it after the first ends.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let pool = SourcePorts::from_range(port..port + 1);

        let first = pool.connect(server).await.expect("connect");
        let (_accepted, peer) = listener.accept().await.expect("accept");
        assert_eq!(peer.port(), port);
        assert!(
            pool.take().is_none(),
            "the port is leased while its stream lives"
        );
        drop(first);
        assert_eq!(pool.take().map(|lease| lease.port), Some(port));
    }
}
