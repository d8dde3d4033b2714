//! Why a socket went away: one type for every cause, from the client closing its tab to the
//! server cutting it on purpose, with the one label `frappe_realtime_disconnects_total`
//! counts it under (docs/metrics.md) and the logs say.
//!
//! The Engine.IO and Socket.IO layers know nothing of Frappe and report their own reasons
//! ([`CloseReason`], [`DisconnectReason`]); [`DisconnectCause::of`] reads those together with
//! the cause the service noted when it cut the socket itself.

use crate::engine::CloseReason;
use crate::socketio::DisconnectReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client's transport closed: a tab closed, a network gone.
    TransportClose,
    /// The client sent DISCONNECT for the namespace.
    ClientDisconnect,
    /// The client missed its PONG.
    PingTimeout,
    /// The connection failed (I/O or websocket protocol error).
    TransportError,
    /// The client sent a packet the protocol refuses.
    PacketParsingError,
    /// A second long-poll came while one was waiting.
    MultiplePollingError,
    /// The client did not take what was queued for it.
    SlowConsumer,
    /// The server disconnected it with no cause of ours noted.
    ServerDisconnect,
    /// The process is shutting down.
    ServerShutdown,
    /// It kept sending events over its budget.
    RateLimited,
    /// Its user's sessions were revoked (`/admin/disconnect`, the revoke channel).
    SessionRevoked,
    /// Its site is gone from the bench.
    SiteRemoved,
}

impl DisconnectCause {
    /// The `reason` label of `frappe_realtime_disconnects_total` and of the logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::TransportClose => "transport_close",
            Self::ClientDisconnect => "client_disconnect",
            Self::PingTimeout => "ping_timeout",
            Self::TransportError => "transport_error",
            Self::PacketParsingError => "packet_parsing_error",
            Self::MultiplePollingError => "multiple_polling_error",
            Self::SlowConsumer => "slow_consumer",
            Self::ServerDisconnect => "server_disconnect",
            Self::ServerShutdown => "server_shutdown",
            Self::RateLimited => "rate_limited",
            Self::SessionRevoked => "session_revoked",
            Self::SiteRemoved => "site_removed",
        }
    }

    /// The cause of a disconnect the Socket.IO layer reports as `reason`, given the cause the
    /// service noted if it cut the socket itself (`noted`).
    pub fn of(reason: DisconnectReason, noted: Option<Self>) -> Self {
        match (reason, noted) {
            (
                DisconnectReason::ServerDisconnect | DisconnectReason::NamespaceRemoved,
                Some(ours),
            ) => ours,
            (DisconnectReason::ClientDisconnect, _) => Self::ClientDisconnect,
            (DisconnectReason::ServerDisconnect, None) => Self::ServerDisconnect,
            // Namespaces go only with their site.
            (DisconnectReason::NamespaceRemoved, None) => Self::SiteRemoved,
            (DisconnectReason::Session(closed), _) => Self::of_session(closed),
        }
    }

    fn of_session(closed: CloseReason) -> Self {
        match closed {
            CloseReason::TransportClose => Self::TransportClose,
            CloseReason::TransportError => Self::TransportError,
            CloseReason::PingTimeout => Self::PingTimeout,
            CloseReason::ParseError => Self::PacketParsingError,
            CloseReason::MultiplePolling => Self::MultiplePollingError,
            CloseReason::SlowConsumer(_) => Self::SlowConsumer,
            CloseReason::ServerClose => Self::ServerDisconnect,
            CloseReason::ServerShutdown => Self::ServerShutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SlowReason;

    #[test]
    fn a_cause_the_service_noted_wins_over_the_layer_reason_for_its_own_cuts() {
        let noted = Some(DisconnectCause::SessionRevoked);
        let server = DisconnectCause::of(DisconnectReason::ServerDisconnect, noted);
        assert_eq!(server.label(), "session_revoked");
        let removed = DisconnectCause::of(DisconnectReason::NamespaceRemoved, None);
        assert_eq!(removed.label(), "site_removed");
        // A transport that closed first is what happened, whatever was noted.
        let closed = DisconnectReason::Session(CloseReason::TransportClose);
        assert_eq!(
            DisconnectCause::of(closed, noted).label(),
            "transport_close"
        );
    }

    #[test]
    fn every_slow_consumer_is_one_label() {
        for slow in [
            SlowReason::QueueFull,
            SlowReason::TooManyBytes,
            SlowReason::Stalled,
        ] {
            let reason = DisconnectReason::Session(CloseReason::SlowConsumer(slow));
            assert_eq!(DisconnectCause::of(reason, None).label(), "slow_consumer");
        }
    }
}
