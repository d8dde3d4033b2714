//! The move of a polling session to a websocket.
//!
//! The client opens a websocket naming the session, sends `2probe` and gets `3probe`; the
//! server then ends any waiting GET with NOOP so the client can pause polling, and the client
//! sends `5`. From then on the session is the websocket's: its task serves it, GETs and POSTs
//! with its id are refused, and the polling task steps down. An upgrade that fails (the
//! websocket closes, sends something else, or takes longer than `upgrade_timeout`) leaves the
//! session on polling as it was.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use engineioxide_core::TransportType;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::request::RequestError;
use super::session::{Session, Upgrade};
use super::websocket::{self, Start, Ws};
use super::{Core, EngineHandler};

/// A websocket request naming a session: answer 101 and try the upgrade on it. A session
/// already on (or moving to) a websocket gets the websocket closed at once.
pub(super) fn accept<H: EngineHandler>(
    core: &Arc<Core<H>>,
    session: Arc<Session<H::Data>>,
    mut request: Request<Body>,
    key: &HeaderValue,
) -> Response<Body> {
    let Some(on_upgrade) = websocket::take_upgrade(&mut request) else {
        return RequestError::BadRequest.response();
    };
    let Some(attempt) = Attempt::claim(session) else {
        // As Node does: the websocket opens, then closes at once (a client library may not
        // expect an HTTP error on a websocket handshake it has a session for).
        return websocket::refuse(&core.config, on_upgrade, key);
    };
    tokio::spawn(websocket::run(
        core.clone(),
        attempt.session.clone(),
        on_upgrade,
        Start::Upgrade(attempt),
    ));
    websocket::switching_protocols(key)
}

/// Wait (at most `timeout`) for the client to probe and confirm on `ws`, then move the
/// session there. Whether it moved.
pub(super) async fn complete<D>(ws: &mut Ws, attempt: Attempt<D>, timeout: Duration) -> bool {
    let probed = tokio::time::timeout(timeout, probe(ws, &attempt)).await;
    matches!(probed, Ok(true)) && attempt.complete()
}

/// `2probe` → `3probe`, then `5`. Whether the client completed the upgrade.
async fn probe<D>(ws: &mut Ws, attempt: &Attempt<D>) -> bool {
    let session = &attempt.session;
    loop {
        let mut woken = pin!(session.woken());
        woken.as_mut().enable();
        if session.is_closed() {
            return false;
        }
        let message = tokio::select! {
            message = ws.next() => message,
            () = woken => continue,
        };
        match message {
            Some(Ok(Message::Text(text))) if text.as_str() == "2probe" => {
                if ws.send(Message::text("3probe")).await.is_err() {
                    return false;
                }
                attempt.probed();
            }
            Some(Ok(Message::Text(text))) if text.as_str() == "5" => {
                return session.state().upgrade == Upgrade::Probed;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            _ => return false,
        }
    }
}

/// An upgrade in progress; dropped before it completes, it leaves the session on polling.
pub(super) struct Attempt<D> {
    session: Arc<Session<D>>,
    done: bool,
}

impl<D> Attempt<D> {
    /// Claim the session's one upgrade slot, if it is on polling with none in progress.
    fn claim(session: Arc<Session<D>>) -> Option<Self> {
        {
            let mut state = session.state();
            let free = state.closing.is_none()
                && state.transport == TransportType::Polling
                && state.upgrade == Upgrade::None;
            if !free {
                return None;
            }
            state.upgrade = Upgrade::Attached;
        }
        Some(Self {
            session,
            done: false,
        })
    }

    /// The probe was answered: GETs now end at once with NOOP.
    fn probed(&self) {
        self.session.state().upgrade = Upgrade::Probed;
        self.session.wake();
    }

    /// Move the session to the websocket; `false` if it closed meanwhile (its polling task
    /// then reports the close).
    fn complete(mut self) -> bool {
        {
            let mut state = self.session.state();
            if state.closing.is_some() {
                return false;
            }
            state.transport = TransportType::Websocket;
            state.upgrade = Upgrade::None;
            state.polling = None;
        }
        self.done = true;
        self.session.wake();
        true
    }
}

impl<D> Drop for Attempt<D> {
    fn drop(&mut self) {
        if !self.done {
            self.session.state().upgrade = Upgrade::None;
            self.session.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{core, polling_session};
    use super::*;
    use crate::engine::CloseReason;

    #[test]
    fn one_upgrade_at_a_time_and_a_failed_one_frees_the_slot() {
        let core = core();
        let session = polling_session(&core);
        let first = Attempt::claim(session.clone()).expect("free");
        assert!(Attempt::claim(session.clone()).is_none(), "one at a time");
        first.probed();
        drop(first);
        assert_eq!(session.state().upgrade, Upgrade::None);
        assert_eq!(session.transport(), TransportType::Polling);
        let second = Attempt::claim(session.clone()).expect("free again");
        assert!(second.complete());
        assert_eq!(session.transport(), TransportType::Websocket);
        assert!(session.state().polling.is_none());
        assert!(Attempt::claim(session).is_none(), "already upgraded");
    }

    #[test]
    fn a_session_closed_during_the_upgrade_stays_with_its_polling_task() {
        let core = core();
        let session = polling_session(&core);
        let attempt = Attempt::claim(session.clone()).expect("free");
        session.close(CloseReason::PingTimeout);
        assert!(!attempt.complete());
        assert_eq!(session.transport(), TransportType::Polling);
    }
}
