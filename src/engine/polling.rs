//! HTTP long-polling: the handshake GET, the long-poll GET, the POST, and the one task per
//! polling session that keeps its heartbeat and notices when its client stops polling.
//!
//! A GET waits until there is something to send: data, or an out-of-band PING (v4), PONG
//! (v3), CLOSE, or NOOP (the session upgraded or is upgrading). One GET at a time: a second
//! one closes the session (the first answers CLOSE, the second 400), as the protocol says.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use engineioxide_core::{Packet, PacketParseError, ProtocolVersion, TransportType};
use futures_util::StreamExt;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;

use super::heartbeat::Due;
use super::payload::{self, Outgoing};
use super::request::{EngineRequest, RequestError};
use super::session::{CloseReason, Queue, Session, SlowReason, Upgrade};
use super::{Core, EngineHandler};

/// How long a GET that arrives during an upgrade waits for it to finish (see
/// `upgraded_within`): Node's engine.io flushes such a GET on a tick of this length.
const UPGRADING_GET_WAIT: Duration = Duration::from_millis(100);

/// Open a session on polling: register it, start its task, and answer with the open packet
/// (and whatever `on_open` queued, which saves the client a round trip).
pub(super) fn open<H: EngineHandler>(
    core: &Arc<Core<H>>,
    request: &EngineRequest,
    parts: Parts,
) -> Response<Body> {
    let session = core.new_session(request.protocol, parts, true);
    let mut packets = vec![Outgoing::Open(core.open_packet(&session, true))];
    core.register(&session);
    tokio::spawn(drive(core.clone(), session.clone()));
    {
        let mut state = session.state();
        take_queued(
            &mut state.queue,
            core.config.max_payload_len(),
            &mut packets,
        );
    }
    respond(payload::encode(request.protocol, request.base64, &packets))
}

/// A long-poll GET.
pub(super) async fn poll<D>(
    session: &Session<D>,
    request: &EngineRequest,
    max_payload: usize,
) -> Response<Body> {
    let during_upgrade = session.state().upgrade != Upgrade::None;
    let _poller = match Poller::claim(session) {
        Ok(poller) => poller,
        Err(Refused::Upgraded) => return RequestError::BadRequest.response(),
        Err(Refused::Busy) => {
            session.close(CloseReason::MultiplePolling);
            return RequestError::BadRequest.response();
        }
    };
    if during_upgrade && upgraded_within(session, UPGRADING_GET_WAIT).await {
        return RequestError::BadRequest.response();
    }
    loop {
        let mut woken = pin!(session.woken());
        woken.as_mut().enable();
        if let Some(packets) = take_for_get(session, max_payload) {
            return respond(payload::encode(request.protocol, request.base64, &packets));
        }
        woken.await;
    }
}

/// Whether the session moves to its websocket within `wait`.
///
/// A GET that arrives while a websocket is taking the session over may be racing the
/// client's `5` on that websocket (the client sent it first, but it has its own connection).
/// Node's engine.io answers such a GET on a 100 ms tick, by which time the `5` has usually
/// landed and the GET finds the session upgraded (400); so does this. A GET that was
/// already waiting when the websocket came is the one a client waits for before it sends
/// `5`: it is answered at the probe, at once (`take_for_get`).
async fn upgraded_within<D>(session: &Session<D>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let mut woken = pin!(session.woken());
        woken.as_mut().enable();
        {
            let state = session.state();
            if state.transport == TransportType::Websocket {
                return true;
            }
            if state.upgrade == Upgrade::None || state.closing.is_some() {
                return false;
            }
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return false;
        }
    }
}

/// A POST: the client's packets, delivered in order; `ok` once all are.
pub(super) async fn push<H: EngineHandler>(
    core: &Core<H>,
    session: &Arc<Session<H::Data>>,
    request: Request<Body>,
) -> Response<Body> {
    if session.transport() != TransportType::Polling {
        return RequestError::BadRequest.response();
    }
    let content_type = request.headers().get(CONTENT_TYPE).cloned();
    let mut packets = pin!(payload::decode(
        request.into_body(),
        content_type.as_ref(),
        session.protocol,
        core.config.max_payload,
    ));
    while let Some(packet) = packets.next().await {
        if session.is_closed() {
            break;
        }
        match packet {
            Ok(packet) => receive(core, session, packet),
            Err(error) => {
                session.close(CloseReason::ParseError);
                return match error {
                    PacketParseError::PayloadTooLarge { .. } => {
                        status(StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    _ => RequestError::BadRequest.response(),
                };
            }
        }
    }
    let mut response = Response::new(Body::from("ok"));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    response
}

/// Deliver one packet the client POSTed.
fn receive<H: EngineHandler>(core: &Core<H>, session: &Arc<Session<H::Data>>, packet: Packet) {
    match packet {
        Packet::Message(text) => core.handler.on_message(session, text),
        Packet::Binary(data) | Packet::BinaryV3(data) => core.handler.on_binary(session, data),
        Packet::Pong if session.protocol == ProtocolVersion::V4 => {
            if let Some(polling) = session.state().polling.as_mut() {
                polling.heartbeat.pong(core.timing(), Instant::now());
            }
        }
        Packet::Ping if session.protocol == ProtocolVersion::V3 => {
            if let Some(polling) = session.state().polling.as_mut() {
                polling.heartbeat.client_ping(core.timing(), Instant::now());
                polling.pong_due = true;
            }
            session.wake();
        }
        Packet::Close => session.close(CloseReason::TransportClose),
        // NOOP, or an upgrade packet sent the wrong way: nothing to do.
        _ => {}
    }
}

/// Whether the session missed its heartbeat deadline, even if its task has not woken up to
/// notice yet; if so it is closed. A request that comes just after the deadline thus finds
/// the session gone, whatever the timer's granularity.
pub(super) fn expire_if_late<D>(session: &Session<D>) -> bool {
    let late = session
        .state()
        .polling
        .as_ref()
        .is_some_and(|polling| polling.heartbeat.expired(Instant::now()));
    if late {
        session.close(CloseReason::PingTimeout);
    }
    late
}

fn respond(encoded: payload::Encoded) -> Response<Body> {
    let content_type = encoded.content_type();
    let mut response = Response::new(Body::from(encoded.body));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn status(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// What a GET answers now, or `None` to keep waiting.
fn take_for_get<D>(session: &Session<D>, max_payload: usize) -> Option<Vec<Outgoing>> {
    let mut state = session.state();
    if let Some(reason) = state.closing {
        drop(state);
        // The client closed it (a POSTed CLOSE): end the GET quietly, and this was the last
        // request the session answers; otherwise tell it.
        let last = match reason {
            CloseReason::TransportClose => {
                session.forget();
                Outgoing::Noop
            }
            _ => Outgoing::Close,
        };
        return Some(vec![last]);
    }
    if state.transport == TransportType::Websocket || state.upgrade == Upgrade::Probed {
        return Some(vec![Outgoing::Noop]);
    }
    let mut packets = Vec::new();
    if let Some(polling) = state.polling.as_mut() {
        if std::mem::take(&mut polling.ping_due) {
            packets.push(Outgoing::Ping);
        }
        if std::mem::take(&mut polling.pong_due) {
            packets.push(Outgoing::Pong);
        }
    }
    take_queued(&mut state.queue, max_payload, &mut packets);
    (!packets.is_empty()).then_some(packets)
}

/// Move queued data into `packets`, about `max_payload` bytes of it (at least one packet).
fn take_queued(queue: &mut Queue, max_payload: usize, packets: &mut Vec<Outgoing>) {
    let mut budget = max_payload.saturating_sub(packets.iter().map(Outgoing::size_hint).sum());
    let before = packets.len();
    while let Some(frame) = queue.pop_within(budget, packets.len() == before) {
        let packet = Outgoing::Data(frame);
        budget = budget.saturating_sub(packet.size_hint() + 1);
        packets.push(packet);
    }
    if packets.len() > before {
        queue.taken(Instant::now());
    }
}

/// Why a GET may not wait.
enum Refused {
    /// Another GET is waiting.
    Busy,
    /// The session is on a websocket now.
    Upgraded,
}

/// The one GET allowed to wait on a session; released when the GET ends, answered or not.
struct Poller<'a, D>(&'a Session<D>);

impl<'a, D> Poller<'a, D> {
    fn claim(session: &'a Session<D>) -> Result<Self, Refused> {
        let mut state = session.state();
        let polling = state.polling.as_mut().ok_or(Refused::Upgraded)?;
        if polling.poller {
            return Err(Refused::Busy);
        }
        polling.poller = true;
        Ok(Self(session))
    }
}

impl<D> Drop for Poller<'_, D> {
    fn drop(&mut self) {
        let data_left = {
            let mut state = self.0.state();
            if let Some(polling) = state.polling.as_mut() {
                polling.poller = false;
            }
            !state.queue.is_empty()
        };
        // The session's task only watches for a stall while no GET waits.
        if data_left {
            self.0.wake();
        }
    }
}

/// What a polling session's task does next.
enum Next {
    /// Sleep until then, or until woken.
    Wait(Instant),
    /// The session closed: report it.
    Closed(CloseReason),
    /// The session is on a websocket now, whose task took over.
    Upgraded,
}

/// The task of a polling session: sends PINGs through the next GET, closes the session when
/// the client misses its heartbeat or leaves data unpolled for `stall_timeout`, and runs
/// `on_close` once it is closed (unless it upgraded: then the websocket's task does).
async fn drive<H: EngineHandler>(core: Arc<Core<H>>, session: Arc<Session<H::Data>>) {
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    loop {
        let mut woken = pin!(session.woken());
        woken.as_mut().enable();
        match next(&core, &session, Instant::now()) {
            Next::Wait(deadline) => timer.as_mut().reset(deadline),
            Next::Closed(reason) => {
                core.handler.on_close(&session, reason);
                // A session the client closed may still be waiting for its last GET.
                if reason == CloseReason::TransportClose {
                    tokio::time::sleep(core.config.ping_timeout).await;
                    session.forget();
                }
                return;
            }
            Next::Upgraded => return,
        }
        tokio::select! {
            () = timer.as_mut() => {}
            () = woken => {}
        }
    }
}

fn next<H: EngineHandler>(core: &Core<H>, session: &Session<H::Data>, now: Instant) -> Next {
    let cut = {
        let mut state = session.state();
        if let Some(reason) = state.closing {
            return Next::Closed(reason);
        }
        let waiting_since = state.queue.waiting_since();
        let Some(polling) = state.polling.as_mut() else {
            return Next::Upgraded;
        };
        let stall_at = waiting_since
            .filter(|_| !polling.poller)
            .map(|since| since + core.config.stall_timeout);
        match polling.heartbeat.poll(core.timing(), now) {
            Due::TimedOut => Some(CloseReason::PingTimeout),
            _ if stall_at.is_some_and(|at| now >= at) => {
                Some(CloseReason::SlowConsumer(SlowReason::Stalled))
            }
            due => {
                if due == Due::Ping {
                    polling.ping_due = true;
                }
                let deadline = polling.heartbeat.deadline();
                drop(state);
                if due == Due::Ping {
                    session.wake();
                }
                return Next::Wait(stall_at.map_or(deadline, |at| at.min(deadline)));
            }
        }
    };
    if let Some(reason) = cut {
        session.close(reason);
    }
    Next::Closed(session.close_reason().unwrap_or(CloseReason::ServerClose))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::session::Frame;
    use super::super::testing::{core, polling_session};
    use super::*;

    /// The client's CLOSE and its next GET race; the GET that comes second is told the session
    /// ended, and only after that is the session unknown.
    #[test]
    fn a_session_the_client_closed_answers_its_last_get_then_is_forgotten() {
        let core = core();
        let session = polling_session(&core);
        session.close(CloseReason::TransportClose);
        assert_eq!(core.sessions(), 1, "kept for the GET racing the CLOSE");
        assert_eq!(take_for_get(&session, 100), Some(vec![Outgoing::Noop]));
        assert_eq!(core.sessions(), 0);

        let by_server = polling_session(&core);
        by_server.close(CloseReason::PingTimeout);
        assert_eq!(
            core.sessions(),
            0,
            "a session the server closed is gone at once"
        );
    }

    #[test]
    fn a_get_takes_about_max_payload_of_data_but_at_least_one_packet() {
        let core = core();
        let session = polling_session(&core);
        session.send("0123456789".into(), &[]).expect("fits");
        session.send("abc".into(), &[]).expect("fits");
        let text = |s: &'static str| Outgoing::Data(Frame::Text(s.into()));
        assert_eq!(take_for_get(&session, 4), Some(vec![text("0123456789")]));
        assert_eq!(take_for_get(&session, 4), Some(vec![text("abc")]));
        assert_eq!(take_for_get(&session, 4), None);
    }

    #[test]
    fn the_first_ping_waits_for_the_interval_and_goes_out_of_band() {
        let core = core();
        let session = polling_session(&core);
        let start = Instant::now();
        assert!(matches!(next(&core, &session, start), Next::Wait(_)));
        assert_eq!(take_for_get(&session, 100), None, "no PING at once");
        let due = start + core.config.ping_interval + Duration::from_millis(1);
        assert!(matches!(next(&core, &session, due), Next::Wait(_)));
        for n in 0..core.config.max_queued_packets {
            session.send(n.to_string().into(), &[]).expect("fits");
        }
        let packets = take_for_get(&session, 1).expect("the PING");
        assert_eq!(
            packets.first(),
            Some(&Outgoing::Ping),
            "even with a full queue"
        );
    }

    #[test]
    fn a_missed_pong_closes_the_session_and_a_late_request_finds_it_gone() {
        let core = core();
        let session = polling_session(&core);
        let start = Instant::now();
        let late = start + core.config.ping_interval + core.config.ping_timeout;
        next(&core, &session, start + core.config.ping_interval);
        assert!(!expire_if_late(&session), "not yet");
        let Next::Closed(reason) = next(&core, &session, late + Duration::from_millis(1)) else {
            panic!("closed");
        };
        assert_eq!(reason, CloseReason::PingTimeout);
        assert_eq!(core.sessions(), 0);
    }

    #[test]
    fn unpolled_data_is_a_stall_only_while_no_get_waits() {
        let core = core();
        let session = polling_session(&core);
        session.send("a".into(), &[]).expect("fits");
        let stalled = Instant::now() + core.config.stall_timeout + Duration::from_millis(1);
        {
            let _waiting = Poller::claim(&session).ok().expect("one GET");
            assert!(matches!(next(&core, &session, stalled), Next::Wait(_)));
        }
        assert!(matches!(
            next(&core, &session, stalled),
            Next::Closed(CloseReason::SlowConsumer(SlowReason::Stalled))
        ));
    }

    #[test]
    fn a_second_get_is_refused_while_one_waits() {
        let core = core();
        let session = polling_session(&core);
        let first = Poller::claim(&session).ok().expect("first");
        assert!(matches!(Poller::claim(&session), Err(Refused::Busy)));
        drop(first);
        assert!(Poller::claim(&session).is_ok());
    }

    #[test]
    fn a_closed_session_answers_close_or_noop_when_the_client_closed_it() {
        let core = core();
        let by_server = polling_session(&core);
        by_server.close(CloseReason::MultiplePolling);
        assert_eq!(take_for_get(&by_server, 100), Some(vec![Outgoing::Close]));
        let by_client = polling_session(&core);
        by_client.close(CloseReason::TransportClose);
        assert_eq!(take_for_get(&by_client, 100), Some(vec![Outgoing::Noop]));
    }
}
