//! An Engine.IO request read before anything is done with it: its query (`EIO`, `transport`,
//! `sid`, `b64`), whether it is a websocket upgrade, and the error answers Node's engine.io
//! gives when one is wrong (HTTP 400 with a JSON body and a *numeric* code, which clients
//! compare).
//!
//! Also what a session keeps of the request that opened it (see [`keep_for_session`]).

use std::str::FromStr;

use axum::body::Body;
use engineioxide_core::{ProtocolVersion, Sid, TransportType};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

/// Why a request is refused; the numbers are engine.io's (`Server.errors`). Code 4
/// (`Forbidden`) is not here: it answers Node's `allowRequest` hook, which this server does
/// not have (a handshake is checked at the Socket.IO CONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// 0: `transport` is missing or neither `polling` nor `websocket`.
    UnknownTransport,
    /// 1: `sid` names no live session.
    UnknownSid,
    /// 2: a request without `sid` (a handshake) that is not a GET.
    BadHandshakeMethod,
    /// 3: anything else a session cannot take (a websocket request that is no upgrade, a GET
    /// on a session that upgraded, a second upgrade, ...).
    BadRequest,
    /// 5: `EIO` is missing, not 3 or 4, or 3 where Engine.IO 3 is not allowed.
    UnsupportedProtocolVersion,
}

impl RequestError {
    pub fn code(self) -> u8 {
        match self {
            Self::UnknownTransport => 0,
            Self::UnknownSid => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest => 3,
            Self::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The answer: `400 {"code":<n>,"message":"..."}`, as Node's engine.io sends it.
    pub fn response(self) -> Response<Body> {
        let body = format!(
            r#"{{"code":{},"message":"{}"}}"#,
            self.code(),
            self.message()
        );
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// What an Engine.IO request asks for, once its query and method have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRequest {
    pub protocol: ProtocolVersion,
    pub transport: TransportType,
    /// The session it belongs to; `None` for a handshake.
    pub sid: Option<Sid>,
    /// An Engine.IO 3 polling client that cannot take binary payloads (`b64=1`), so binary
    /// packets go base64 in a text payload.
    pub base64: bool,
    /// A POST (polling data from the client); otherwise a GET.
    pub post: bool,
}

/// Check a request's method, query and upgrade headers, in the order Node's engine.io does
/// (transport, then session, then method), so the same request gets the same code.
pub fn parse(
    method: &Method,
    query: Option<&str>,
    upgrade: bool,
    allow_eio3: bool,
) -> Result<EngineRequest, RequestError> {
    let query = Query::parse(query.unwrap_or_default());
    let transport = query
        .transport
        .and_then(|t| TransportType::from_str(t).ok())
        .ok_or(RequestError::UnknownTransport)?;
    let protocol = match query.eio {
        Some("4") => ProtocolVersion::V4,
        Some("3") if allow_eio3 => ProtocolVersion::V3,
        _ => return Err(RequestError::UnsupportedProtocolVersion),
    };
    let sid = match query.sid {
        Some(sid) => Some(Sid::from_str(sid).map_err(|_| RequestError::UnknownSid)?),
        None => None,
    };
    let post = method == Method::POST;
    match (sid.is_some(), transport) {
        (false, _) if method != Method::GET => return Err(RequestError::BadHandshakeMethod),
        (true, TransportType::Polling) if method != Method::GET && !post => {
            return Err(RequestError::BadRequest);
        }
        (_, TransportType::Websocket) if !upgrade => return Err(RequestError::BadRequest),
        _ => {}
    }
    Ok(EngineRequest {
        protocol,
        transport,
        sid,
        base64: query.b64,
        post,
    })
}

/// The query parameters Engine.IO reads; the first of a repeated one counts. Values are taken
/// as they are: none of them is ever percent-encoded by a client (a sid is URL-safe base64).
#[derive(Debug, Default)]
struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
    b64: bool,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Self {
        let mut parsed = Query::default();
        for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            match key {
                "EIO" => {
                    parsed.eio.get_or_insert(value);
                }
                "transport" => {
                    parsed.transport.get_or_insert(value);
                }
                "sid" => {
                    parsed.sid.get_or_insert(value);
                }
                // JavaScript's truthiness, as Node reads it: any non-empty value.
                "b64" => parsed.b64 |= !value.is_empty(),
                _ => {}
            }
        }
        parsed
    }
}

/// `Sec-WebSocket-Key` when `headers` ask for a websocket (RFC 6455 §4.2.1: `Upgrade:
/// websocket`, `Connection: upgrade`, version 13); `None` for any other request.
pub fn websocket_key(headers: &HeaderMap) -> Option<&HeaderValue> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let version_13 = headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    (has_token(UPGRADE, "websocket") && has_token(CONNECTION, "upgrade") && version_13)
        .then(|| headers.get(SEC_WEBSOCKET_KEY))
        .flatten()
}

/// The request head a session keeps for its whole life: method, version, extensions (the
/// peer's address among them, minus hyper's upgrade handle), a copy of the URI and copies of
/// the `headers` listed.
///
/// hyper parses a head in place: its URI and header values are slices of the connection's
/// read buffer (16 KiB under `axum::serve`), so keeping them as they are would keep that
/// whole buffer alive as long as the session, long after a websocket released the connection.
pub fn keep_for_session(mut parts: Parts, headers: &[HeaderName]) -> Parts {
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    let kept = headers
        .iter()
        .map(|name| parts.headers.get_all(name).iter().count())
        .sum();
    let mut copies = HeaderMap::with_capacity(kept);
    for name in headers {
        for value in parts.headers.get_all(name) {
            if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                copy.set_sensitive(value.is_sensitive());
                copies.append(name.clone(), copy);
            }
        }
    }
    parts.headers = copies;
    parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(query: &str) -> Result<EngineRequest, RequestError> {
        parse(&Method::GET, Some(query), false, true)
    }

    #[test]
    fn a_polling_handshake_names_protocol_and_transport() {
        assert_eq!(
            get("EIO=4&transport=polling&t=NaBc"),
            Ok(EngineRequest {
                protocol: ProtocolVersion::V4,
                transport: TransportType::Polling,
                sid: None,
                base64: false,
                post: false,
            })
        );
    }

    #[test]
    fn transport_is_checked_first_then_protocol() {
        assert_eq!(get("EIO=4"), Err(RequestError::UnknownTransport));
        assert_eq!(
            get("EIO=4&transport=abc"),
            Err(RequestError::UnknownTransport)
        );
        assert_eq!(
            get("EIO=9&transport=abc"),
            Err(RequestError::UnknownTransport)
        );
        assert_eq!(
            get("transport=polling"),
            Err(RequestError::UnsupportedProtocolVersion)
        );
        assert_eq!(
            get("EIO=abc&transport=polling"),
            Err(RequestError::UnsupportedProtocolVersion)
        );
    }

    #[test]
    fn engine_io_3_only_when_allowed() {
        let v3 = "EIO=3&transport=polling&b64=1";
        let allowed = parse(&Method::GET, Some(v3), false, true).expect("v3 allowed");
        assert_eq!(allowed.protocol, ProtocolVersion::V3);
        assert!(allowed.base64);
        assert_eq!(
            parse(&Method::GET, Some(v3), false, false),
            Err(RequestError::UnsupportedProtocolVersion)
        );
    }

    #[test]
    fn a_handshake_is_a_get() {
        for method in [Method::POST, Method::PUT] {
            assert_eq!(
                parse(&method, Some("EIO=4&transport=polling"), false, true),
                Err(RequestError::BadHandshakeMethod)
            );
        }
    }

    #[test]
    fn a_session_request_is_a_get_or_a_post_with_a_well_formed_sid() {
        let query = "EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA";
        let post = parse(&Method::POST, Some(query), false, true).expect("post");
        assert!(post.post);
        assert_eq!(
            post.sid.map(|s| s.to_string()).as_deref(),
            Some("AAAAAAAAAAAAAAAA")
        );
        assert_eq!(
            parse(&Method::PUT, Some(query), false, true),
            Err(RequestError::BadRequest)
        );
        assert_eq!(
            get("EIO=4&transport=polling&sid=short"),
            Err(RequestError::UnknownSid)
        );
        assert_eq!(
            get("EIO=4&transport=polling&sid=AAAAAAAA%2FAAAAAAA"),
            Err(RequestError::UnknownSid)
        );
    }

    #[test]
    fn a_websocket_request_must_be_an_upgrade() {
        assert_eq!(
            get("EIO=4&transport=websocket"),
            Err(RequestError::BadRequest)
        );
        let upgrade = parse(&Method::GET, Some("EIO=4&transport=websocket"), true, true);
        assert_eq!(upgrade.map(|r| r.transport), Ok(TransportType::Websocket));
    }

    #[test]
    fn the_first_of_a_repeated_parameter_counts_and_a_pair_without_value_is_skipped() {
        let parsed = get("EIO&EIO=4&EIO=3&transport=polling&transport=websocket").expect("ok");
        assert_eq!(parsed.protocol, ProtocolVersion::V4);
        assert_eq!(parsed.transport, TransportType::Polling);
    }

    #[test]
    fn errors_answer_400_with_a_numeric_code() {
        let response = RequestError::UnsupportedProtocolVersion.response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response
                .headers()
                .get(CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(&b"application/json"[..])
        );
        let codes: Vec<u8> = [
            RequestError::UnknownTransport,
            RequestError::UnknownSid,
            RequestError::BadHandshakeMethod,
            RequestError::BadRequest,
            RequestError::UnsupportedProtocolVersion,
        ]
        .map(RequestError::code)
        .into();
        assert_eq!(codes, [0, 1, 2, 3, 5]);
    }

    #[test]
    fn a_websocket_upgrade_needs_upgrade_connection_version_and_key() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert_eq!(websocket_key(&headers), None);
        headers.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(websocket_key(&headers).is_some());
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(websocket_key(&headers), None);
    }

    #[test]
    fn a_kept_request_has_copies_of_the_listed_headers_only() {
        let request = http::Request::get("/socket.io/?EIO=4&transport=polling")
            .header("host", "a.local")
            .header("cookie", "sid=1")
            .header("cookie", "x=2")
            .header("user-agent", "test")
            .body(())
            .expect("request");
        let (parts, ()) = request.into_parts();
        let kept = keep_for_session(parts, &[http::header::HOST, http::header::COOKIE]);
        let pairs: Vec<(&str, &[u8])> = kept
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("host", &b"a.local"[..]),
                ("cookie", b"sid=1"),
                ("cookie", b"x=2")
            ]
        );
        assert_eq!(kept.uri, "/socket.io/?EIO=4&transport=polling");
    }
}
