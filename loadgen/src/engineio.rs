//! Just enough of Engine.IO 4 / Socket.IO 5 over a raw websocket to be one of Frappe's browser
//! tabs: open `/socket.io/?EIO=4&transport=websocket` with the headers bench's nginx passes
//! (protocol §3.2, §9.2), join the site's namespace, answer pings, and read events.
//!
//! Written by hand rather than with a Socket.IO client library so that one core can drive
//! tens of thousands of connections: a frame is classified by its first bytes and an event's
//! timestamp is read without parsing its JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::ports::{LeasedStream, SourcePorts};

/// An open websocket whose namespace CONNECT was acknowledged.
pub type Socket = WebSocketStream<LeasedStream>;

/// A joined namespace: the socket, and the session's `pid` when the server offers connection
/// state recovery (Socket.IO ≥ 4.6 puts it in the CONNECT reply beside `sid`).
pub struct Connected {
    pub socket: Socket,
    pub pid: Option<String>,
}

/// Where the clients connect and how they present themselves.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The site, which is also the namespace (`/<site>`).
    pub site: String,
    /// The `Origin` header: the site's web server, where the realtime service calls back.
    pub origin: String,
    /// Where the clients' source ports come from.
    pub source_ports: Arc<SourcePorts>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
}

impl Target {
    fn url(&self) -> String {
        format!("ws://{}/socket.io/?EIO=4&transport=websocket", self.addr)
    }

    /// `40/<site>,` and the auth payload, if any: join the namespace (Frappe's client sends
    /// no payload; a recovering socket.io-client sends its `pid` and `offset`).
    pub fn connect_packet(&self, auth: Option<&str>) -> String {
        format!("40/{},{}", self.site, auth.unwrap_or_default())
    }
}

/// Why a connection attempt did not end in a joined namespace.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect failed (refused while the server restarts, or out of ports).
    Tcp(std::io::Error),
    /// The HTTP upgrade or the websocket failed.
    Websocket(tungstenite::Error),
    /// The server answered the namespace CONNECT with CONNECT_ERROR (`44`); the text is the
    /// refusal message. socket.io-client does not retry after this.
    Refused(String),
    /// The server closed the connection or sent something unexpected during the handshake.
    Protocol(String),
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "tcp",
            Self::Websocket(_) => "websocket",
            Self::Refused(_) => "refused",
            Self::Protocol(_) => "protocol",
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(e) => write!(f, "tcp: {e}"),
            Self::Websocket(e) => write!(f, "websocket: {e}"),
            Self::Refused(message) => write!(f, "refused: {message}"),
            Self::Protocol(what) => write!(f, "protocol: {what}"),
        }
    }
}

/// Buffers per connection: small, since 19.5k of them live in one process and Frappe's events
/// are a few hundred bytes. tungstenite's default read buffer (128 KiB, zero-filled on first
/// read) would cost 2.5 GB at 19.5k clients.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(2 << 20))
}

/// Open a websocket as a Frappe tab with `sid`, and join the site's namespace with `auth` as
/// the CONNECT payload. The caller bounds the time.
pub async fn connect(
    target: &Target,
    sid: &str,
    auth: Option<&str>,
) -> Result<Connected, ConnectError> {
    let stream = target
        .source_ports
        .connect(target.addr)
        .await
        .map_err(ConnectError::Tcp)?;
    stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let mut request = target
        .url()
        .into_client_request()
        .map_err(ConnectError::Websocket)?;
    let headers = request.headers_mut();
    let user_agent = target.user_agent.clone().map(|ua| ("user-agent", ua));
    let fixed = [
        ("origin", target.origin.clone()),
        ("x-frappe-site-name", target.site.clone()),
        ("cookie", format!("sid={sid}")),
    ];
    for (name, value) in fixed.into_iter().chain(user_agent) {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| ConnectError::Protocol(format!("bad {name} header value")))?;
        headers.insert(name, value);
    }
    let (mut socket, _response) =
        client_async_with_config(request, stream, Some(websocket_config()))
            .await
            .map_err(ConnectError::Websocket)?;

    // Engine.IO OPEN (`0{"sid":…}`), then our namespace CONNECT, then its answer.
    let mut opened = false;
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnectError::Protocol("closed during the handshake".into()));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Websocket(e)),
        };
        match handshake_frame(&text, &target.site) {
            Handshake::Open if !opened => {
                opened = true;
                socket
                    .send(Message::text(target.connect_packet(auth)))
                    .await
                    .map_err(ConnectError::Websocket)?;
            }
            Handshake::Ping => socket
                .send(Message::text("3"))
                .await
                .map_err(ConnectError::Websocket)?,
            Handshake::Connected(pid) if opened => return Ok(Connected { socket, pid }),
            Handshake::Refused(message) => return Err(ConnectError::Refused(message)),
            _ => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected frame {:?}",
                    truncate(&text, 60)
                )));
            }
        }
    }
}

/// What a frame means while joining the namespace.
#[derive(Debug, PartialEq, Eq)]
enum Handshake {
    Open,
    Ping,
    /// The namespace is joined; the reply's `pid`, if it has one.
    Connected(Option<String>),
    Refused(String),
    Other,
}

fn handshake_frame(text: &str, site: &str) -> Handshake {
    if text.starts_with("0{") {
        return Handshake::Open;
    }
    if text == "2" {
        return Handshake::Ping;
    }
    let Some(rest) = text.strip_prefix('4') else {
        return Handshake::Other;
    };
    let Some(body) = namespace_body(&rest[1.min(rest.len())..], site) else {
        return Handshake::Other;
    };
    match rest.as_bytes().first() {
        Some(b'0') => Handshake::Connected(reply_pid(body)),
        Some(b'4') => Handshake::Refused(refusal_message(body)),
        _ => Handshake::Other,
    }
}

/// The part after `/<site>,` of a Socket.IO packet addressed to our namespace.
fn namespace_body<'a>(packet: &'a str, site: &str) -> Option<&'a str> {
    packet
        .strip_prefix('/')?
        .strip_prefix(site)?
        .strip_prefix(',')
}

/// `{"sid":"…","pid":"…"}` → the pid, if the reply has one.
fn reply_pid(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("pid")?
        .as_str()
        .map(str::to_owned)
}

/// `{"message":"Invalid origin"}` → `Invalid origin` (the whole body if it is not that shape).
fn refusal_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| truncate(body, 200).to_owned())
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// A frame on an established connection, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Engine.IO PING: answer `3` or the server drops us after pingTimeout.
    Ping,
    /// A Socket.IO EVENT (`42/<site>,[…]`) carrying a load generator stamp.
    Stamped(Stamp),
    /// Any other event (for example one the server emits itself).
    Event,
    /// Socket.IO DISCONNECT of our namespace, or Engine.IO CLOSE: the server let us go.
    Disconnect,
    Other,
}

/// What the publisher wrote into an event: which measurement step it belongs to and when it
/// was published, in nanoseconds since the run's clock origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub step: u32,
    pub sent_ns: u64,
}

/// Classify a text frame. Only the first bytes are looked at, then the stamp's two numbers
/// are found by name, so a delivery costs no JSON parse.
pub fn classify(text: &str) -> Frame {
    match text.as_bytes() {
        [b'2'] => Frame::Ping,
        [b'1', ..] | [b'4', b'1', ..] => Frame::Disconnect,
        [b'4', b'2', ..] => match stamp(text) {
            Some(stamp) => Frame::Stamped(stamp),
            None => Frame::Event,
        },
        _ => Frame::Other,
    }
}

/// The offset an event carries as its last argument (`42/<site>,["name",{…},"<offset>"]`),
/// which is what connection state recovery gives sockets that take offsets; `None` when the
/// last argument is not a string.
pub fn offset(text: &str) -> Option<&str> {
    let inner = text.strip_suffix("\"]")?;
    let start = inner.rfind(",\"")? + 2;
    let offset = &inner[start..];
    (!offset.contains(['"', '\\'])).then_some(offset)
}

/// The `"step"` and `"t"` numbers of a stamped event payload.
pub fn stamp(text: &str) -> Option<Stamp> {
    let step = number_after(text, "\"step\":")?;
    let sent_ns = number_after(text, "\"t\":")?;
    Some(Stamp {
        step: u32::try_from(step).ok()?,
        sent_ns,
    })
}

/// The unsigned integer right after the first `key` (JSON whitespace allowed before it).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_frames() {
        let site = "a.local";
        assert_eq!(
            handshake_frame(r#"0{"sid":"x","pingInterval":25000}"#, site),
            Handshake::Open
        );
        assert_eq!(handshake_frame("2", site), Handshake::Ping);
        assert_eq!(
            handshake_frame(r#"40/a.local,{"sid":"abc"}"#, site),
            Handshake::Connected(None)
        );
        assert_eq!(
            handshake_frame(r#"40/a.local,{"sid":"abc","pid":"p1"}"#, site),
            Handshake::Connected(Some("p1".into()))
        );
        assert_eq!(
            handshake_frame(r#"44/a.local,{"message":"Invalid origin"}"#, site),
            Handshake::Refused("Invalid origin".into())
        );
        assert_eq!(
            handshake_frame(r#"40/b.local,{"sid":"abc"}"#, site),
            Handshake::Other
        );
        assert_eq!(handshake_frame("4", site), Handshake::Other);
    }

    #[test]
    fn frames_and_stamps() {
        let frame = r#"42/a.local,["bench",{"pad":"xx","seq":12,"step":3,"t":123456789}]"#;
        assert_eq!(
            classify(frame),
            Frame::Stamped(Stamp {
                step: 3,
                sent_ns: 123_456_789
            })
        );
        // Whitespace as Python's json.dumps(indent=1) would leave it, if forwarded verbatim.
        let spaced = "42/a.local,[\"bench\",{\n \"seq\": 1,\n \"step\": 9,\n \"t\": 42\n}]";
        assert_eq!(
            classify(spaced),
            Frame::Stamped(Stamp {
                step: 9,
                sent_ns: 42
            })
        );
        assert_eq!(classify(r#"42/a.local,["pong"]"#), Frame::Event);
        assert_eq!(classify("2"), Frame::Ping);
        assert_eq!(classify("41/a.local,"), Frame::Disconnect);
        assert_eq!(classify("1"), Frame::Disconnect);
        assert_eq!(classify("6"), Frame::Other);
    }

    #[test]
    fn offsets_are_the_last_string_argument() {
        assert_eq!(
            offset(r#"42/a.local,["bench",{"step":3,"t":1},"1234"]"#),
            Some("1234")
        );
        assert_eq!(offset(r#"42/a.local,["bench",{"step":3,"t":1}]"#), None);
        assert_eq!(offset(r#"42/a.local,["bench","a\",\"b"]"#), None);
    }

    #[test]
    fn connect_packet_names_the_namespace() {
        let target = Target {
            addr: "127.0.0.1:9000".parse().expect("addr"),
            site: "a.local".into(),
            origin: "http://127.0.0.1:8000".into(),
            source_ports: SourcePorts::below_ephemeral_range(),
            user_agent: None,
        };
        assert_eq!(target.connect_packet(None), "40/a.local,");
        assert_eq!(
            target.connect_packet(Some(r#"{"pid":"p"}"#)),
            r#"40/a.local,{"pid":"p"}"#
        );
        assert_eq!(
            target.url(),
            "ws://127.0.0.1:9000/socket.io/?EIO=4&transport=websocket"
        );
    }
}
