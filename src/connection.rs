//! Who is on the other end of an accepted connection, for the per-address connection caps.
//!
//! (A write meter used to live here, to notice clients that stopped reading: socketioxide's
//! full queues did not say whose they were. Our engine's queue does, and it cuts such a
//! session itself: see `engine::SlowReason`.)

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

/// What every request knows about its connection (as axum's `ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address; `None` on a Unix socket.
    pub ip: Option<IpAddr>,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let address: &SocketAddr = stream.remote_addr();
        Self {
            ip: Some(address.ip().to_canonical()),
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Self { ip: None }
    }
}
