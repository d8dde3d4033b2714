//! HTTP long-polling payloads: several packets in one body.
//!
//! Encoding is ours (it reads straight from the session's queue). Decoding a POST body streams
//! it under `max_payload`: engineioxide-core's decoder for Engine.IO 4 and for Engine.IO 3
//! binary payloads, ours for Engine.IO 3 text payloads (see [`V3Text`]).
//!
//! - Engine.IO 4: packets joined by `\x1e`; a binary packet is `b` and its base64.
//! - Engine.IO 3, as text: each packet prefixed with its length in UTF-16 code units (what
//!   JavaScript's `String.length` counts) and `:`; binary as `b4` and base64.
//! - Engine.IO 3, binary (XHR2 clients, when a binary packet is in the batch): each packet
//!   prefixed with a type byte (0 text, 1 binary), its byte length as one byte per decimal
//!   digit, and 0xFF; a binary packet's data follows a `4` byte.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use engineioxide_core::{Packet, PacketParseError, ProtocolVersion};
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use http::HeaderValue;

use super::session::Frame;

/// One packet of a polling response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// The open packet's JSON.
    Open(String),
    Close,
    Ping,
    Pong,
    Noop,
    Data(Frame),
}

impl Outgoing {
    fn is_binary(&self) -> bool {
        matches!(self, Self::Data(Frame::Binary(_)))
    }

    /// The packet as text: its type digit and data, base64 for binary.
    fn write_text(&self, protocol: ProtocolVersion, out: &mut String) {
        match self {
            Self::Open(json) => {
                out.push('0');
                out.push_str(json);
            }
            Self::Close => out.push('1'),
            Self::Ping => out.push('2'),
            Self::Pong => out.push('3'),
            Self::Noop => out.push('6'),
            Self::Data(Frame::Text(text)) => {
                out.push('4');
                out.push_str(text);
            }
            Self::Data(Frame::Binary(data)) => {
                out.push_str(match protocol {
                    ProtocolVersion::V4 => "b",
                    ProtocolVersion::V3 => "b4",
                });
                STANDARD.encode_string(data, out);
            }
        }
    }

    /// About how many bytes the packet takes in a payload (base64 for binary), to keep a
    /// response under `max_payload`.
    pub fn size_hint(&self) -> usize {
        match self {
            Self::Open(json) => 1 + json.len(),
            Self::Data(Frame::Text(text)) => 1 + text.len(),
            Self::Data(Frame::Binary(data)) => 2 + data.len().div_ceil(3) * 4,
            Self::Close | Self::Ping | Self::Pong | Self::Noop => 1,
        }
    }
}

/// An encoded response body and whether it is a binary (v3) payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Encoded {
    pub body: Bytes,
    pub binary: bool,
}

impl Encoded {
    pub fn content_type(&self) -> HeaderValue {
        HeaderValue::from_static(if self.binary {
            "application/octet-stream"
        } else {
            "text/plain; charset=UTF-8"
        })
    }
}

/// Encode `packets` for a client of `protocol`; `base64` is a v3 client that asked for text
/// payloads only (`b64=1`).
pub fn encode(protocol: ProtocolVersion, base64: bool, packets: &[Outgoing]) -> Encoded {
    match protocol {
        ProtocolVersion::V4 => Encoded {
            body: encode_v4(packets),
            binary: false,
        },
        ProtocolVersion::V3 if !base64 && packets.iter().any(Outgoing::is_binary) => Encoded {
            body: encode_v3_binary(packets),
            binary: true,
        },
        ProtocolVersion::V3 => Encoded {
            body: encode_v3_text(packets),
            binary: false,
        },
    }
}

fn encode_v4(packets: &[Outgoing]) -> Bytes {
    let mut out = String::with_capacity(packets.iter().map(|p| p.size_hint() + 1).sum());
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            out.push('\x1e');
        }
        packet.write_text(ProtocolVersion::V4, &mut out);
    }
    Bytes::from(out)
}

fn encode_v3_text(packets: &[Outgoing]) -> Bytes {
    let mut out = String::with_capacity(packets.iter().map(|p| p.size_hint() + 8).sum());
    let mut packet = String::new();
    for each in packets {
        packet.clear();
        each.write_text(ProtocolVersion::V3, &mut packet);
        out.push_str(&packet.encode_utf16().count().to_string());
        out.push(':');
        out.push_str(&packet);
    }
    Bytes::from(out)
}

fn encode_v3_binary(packets: &[Outgoing]) -> Bytes {
    let mut out = Vec::with_capacity(packets.iter().map(|p| p.size_hint() + 12).sum());
    let mut text = String::new();
    for packet in packets {
        let (kind, body): (u8, &[u8]) = match packet {
            Outgoing::Data(Frame::Binary(data)) => (1, data),
            other => {
                text.clear();
                other.write_text(ProtocolVersion::V3, &mut text);
                (0, text.as_bytes())
            }
        };
        let length = body.len() + usize::from(kind);
        out.push(kind);
        out.extend(length.to_string().bytes().map(|digit| digit - b'0'));
        out.push(0xff);
        if kind == 1 {
            out.push(4);
        }
        out.extend_from_slice(body);
    }
    Bytes::from(out)
}

/// The content type of an Engine.IO 3 binary payload; any other is a text payload.
const BINARY: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// The packets of a POST body, read as they stream in; a body over `max_payload` yields
/// `PayloadTooLarge` instead of being read whole. The stream ends after its first error.
pub fn decode(
    body: axum::body::Body,
    content_type: Option<&HeaderValue>,
    protocol: ProtocolVersion,
    max_payload: u64,
) -> impl Stream<Item = Result<Packet, PacketParseError>> {
    if protocol == ProtocolVersion::V3 && content_type != Some(&BINARY) {
        Either::Left(V3Text::decode(body, max_payload))
    } else {
        Either::Right(engineioxide_core::payload::decoder(
            body,
            content_type,
            protocol,
            max_payload,
        ))
    }
}

/// An Engine.IO 3 text payload being decoded: `<length>:<packet>` repeated, the length in
/// UTF-16 code units (what JavaScript's `String.length` counts).
///
/// Ours rather than engineioxide-core's: that one spins forever, without ever yielding, when a
/// length ends inside a character outside the BMP (two UTF-16 units) and more bytes follow,
/// e.g. `1:😀x`. One such POST took a runtime worker thread for good.
///
/// As engine.io-parser 2 (Node) reads a payload: a length of 0 is skipped, anything else that
/// is not a length, `:` and exactly that many code units of valid UTF-8 is an error. Node would
/// take half of a surrogate pair; a Rust string cannot hold one, so that is an error too.
struct V3Text {
    body: axum::body::BodyDataStream,
    /// Bytes read and not decoded yet, from `start`.
    buffer: Vec<u8>,
    start: usize,
    read: u64,
    max_payload: u64,
    ended: bool,
    failed: bool,
}

/// What the start of a v3 text payload holds.
#[derive(Debug, PartialEq)]
enum Next<'a> {
    /// A packet's text, and how many bytes it took with its length.
    Packet(&'a str, usize),
    /// An empty packet (`0:`) of that many bytes, skipped as Node does.
    Empty(usize),
    /// Not enough bytes to tell.
    More,
    /// Nothing left.
    End,
    Invalid,
}

impl V3Text {
    fn decode(
        body: axum::body::Body,
        max_payload: u64,
    ) -> impl Stream<Item = Result<Packet, PacketParseError>> {
        let state = Self {
            body: body.into_data_stream(),
            buffer: Vec::new(),
            start: 0,
            read: 0,
            max_payload,
            ended: false,
            failed: false,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            let next = state.next().await;
            state.failed = matches!(next, Some(Err(_)));
            next.map(|next| (next, state))
        })
    }

    async fn next(&mut self) -> Option<Result<Packet, PacketParseError>> {
        if self.failed {
            return None;
        }
        loop {
            match next_v3(&self.buffer[self.start..], self.ended) {
                Next::Packet(text, used) => {
                    let packet = Packet::parse(ProtocolVersion::V3, text.to_owned());
                    self.start += used;
                    return Some(packet);
                }
                Next::Empty(used) => self.start += used,
                Next::End => return None,
                Next::Invalid => return Some(Err(PacketParseError::InvalidPacketLen)),
                Next::More => {
                    if let Err(error) = self.read_more().await {
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    /// Append the body's next chunk, or note its end.
    async fn read_more(&mut self) -> Result<(), PacketParseError> {
        match self.body.next().await {
            None => self.ended = true,
            Some(Err(_)) => return Err(PacketParseError::InvalidPacketPayload),
            Some(Ok(chunk)) => {
                self.read = self.read.saturating_add(chunk.len() as u64);
                if self.read > self.max_payload {
                    return Err(PacketParseError::PayloadTooLarge {
                        max: self.max_payload,
                    });
                }
                self.buffer.drain(..self.start);
                self.start = 0;
                self.buffer.extend_from_slice(&chunk);
            }
        }
        Ok(())
    }
}

/// The first packet of `bytes`, the rest of a v3 text payload; `ended` when no more will come.
fn next_v3(bytes: &[u8], ended: bool) -> Next<'_> {
    let more = || if ended { Next::Invalid } else { Next::More };
    if bytes.is_empty() {
        return if ended { Next::End } else { Next::More };
    }
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    match bytes.get(digits) {
        None => return more(),
        Some(b':') if digits > 0 => {}
        Some(_) => return Next::Invalid,
    }
    let length = std::str::from_utf8(&bytes[..digits]).map(str::parse::<usize>);
    let Ok(Ok(units)) = length else {
        return Next::Invalid;
    };
    let start = digits + 1;
    if units == 0 {
        return Next::Empty(start);
    }
    let rest = &bytes[start..];
    // A UTF-16 code unit takes at least one byte of UTF-8.
    if rest.len() < units {
        return more();
    }
    let (text, broken) = match std::str::from_utf8(rest) {
        Ok(text) => (text, false),
        Err(error) => {
            let (valid, _) = rest.split_at(error.valid_up_to());
            // Bytes that can never be UTF-8, or the start of a character cut short.
            let broken = error.error_len().is_some();
            (std::str::from_utf8(valid).unwrap_or_default(), broken)
        }
    };
    let mut counted = 0;
    for (at, c) in text.char_indices() {
        counted += c.len_utf16();
        if counted == units {
            let end = at + c.len_utf8();
            return Next::Packet(&text[..end], start + end);
        }
        if counted > units {
            // The length ends inside a surrogate pair.
            return Next::Invalid;
        }
    }
    if broken { Next::Invalid } else { more() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn text(s: &'static str) -> Outgoing {
        Outgoing::Data(Frame::Text(s.into()))
    }

    fn binary(b: &'static [u8]) -> Outgoing {
        Outgoing::Data(Frame::Binary(Bytes::from_static(b)))
    }

    #[test]
    fn v4_joins_packets_with_the_record_separator_and_binary_as_base64() {
        let encoded = encode(
            ProtocolVersion::V4,
            false,
            &[text("hello"), binary(&[1, 2, 3, 4]), Outgoing::Ping],
        );
        assert_eq!(encoded.body, "4hello\x1ebAQIDBA==\x1e2");
        assert!(!encoded.binary);
        assert_eq!(
            encode(ProtocolVersion::V4, false, &[Outgoing::Noop]).body,
            "6"
        );
    }

    #[test]
    fn v3_text_counts_utf16_code_units() {
        // "é" is 2 bytes of UTF-8 but one UTF-16 unit; "😀" is 4 bytes and two units.
        let encoded = encode(ProtocolVersion::V3, false, &[text("é😀"), Outgoing::Pong]);
        assert_eq!(encoded.body, "4:4é😀1:3");
        assert!(!encoded.binary);
    }

    #[test]
    fn v3_binary_payload_when_binary_is_in_the_batch_unless_the_client_asked_for_base64() {
        let packets = [text("hi"), binary(&[1, 2])];
        let encoded = encode(ProtocolVersion::V3, false, &packets);
        assert!(encoded.binary);
        assert_eq!(
            encoded.body,
            &[0, 3, 0xff, b'4', b'h', b'i', 1, 3, 0xff, 4, 1, 2][..]
        );
        assert_eq!(encoded.content_type(), "application/octet-stream");
        let base64 = encode(ProtocolVersion::V3, true, &packets);
        assert_eq!(base64.body, "3:4hi6:b4AQI=");
    }

    #[test]
    fn a_length_of_several_digits_is_one_byte_per_digit() {
        let long = "x".repeat(120);
        let encoded = encode(
            ProtocolVersion::V3,
            false,
            &[
                Outgoing::Data(Frame::Text(long.clone().into())),
                binary(&[9]),
            ],
        );
        assert_eq!(&encoded.body[..5], &[0, 1, 2, 1, 0xff]);
    }

    #[test]
    fn the_open_packet_is_a_zero_and_its_json() {
        let encoded = encode(ProtocolVersion::V4, false, &[Outgoing::Open("{}".into())]);
        assert_eq!(encoded.body, "0{}");
    }

    async fn decoded(
        protocol: ProtocolVersion,
        body: &'static [u8],
        max: u64,
    ) -> Vec<Result<Packet, String>> {
        decode(axum::body::Body::from(body), None, protocol, max)
            .map(|packet| packet.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn v4_posts_decode_text_binary_and_control_packets() {
        assert_eq!(
            decoded(ProtocolVersion::V4, b"4hello\x1ebAQIDBA==\x1e3\x1e1", 100).await,
            [
                Ok(Packet::Message("hello".into())),
                Ok(Packet::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
                Ok(Packet::Pong),
                Ok(Packet::Close),
            ]
        );
        assert_eq!(decoded(ProtocolVersion::V4, b"", 100).await, []);
    }

    #[tokio::test]
    async fn an_invalid_packet_or_an_oversized_body_is_an_error() {
        let invalid = decoded(ProtocolVersion::V4, b"abc", 100).await;
        assert!(matches!(invalid.as_slice(), [Err(_)]), "{invalid:?}");
        let bad_base64 = decoded(ProtocolVersion::V4, b"b!!", 100).await;
        assert!(matches!(bad_base64.as_slice(), [Err(_)]), "{bad_base64:?}");
        let large = decoded(ProtocolVersion::V4, b"4aaaaaaaaaa", 5).await;
        assert!(
            matches!(large.first(), Some(Err(e)) if e.contains("too large")),
            "{large:?}"
        );
    }

    /// Every packet of `body` fed to the decoder in chunks of `chunk` bytes, on a thread of its
    /// own: a decoder that spins without yielding cannot be timed out from its own runtime.
    fn decoded_in_chunks(
        protocol: ProtocolVersion,
        body: &'static [u8],
        chunk: usize,
    ) -> Vec<Result<Packet, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            let chunks = body.chunks(chunk).map(Ok::<_, std::convert::Infallible>);
            let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
            let packets = runtime.block_on(
                decode(body, None, protocol, 100)
                    .map(|packet| packet.map_err(|e| e.to_string()))
                    .collect(),
            );
            let _ = tx.send(packets);
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("decoding {body:?} did not end"))
    }

    #[test]
    fn a_v3_length_that_ends_inside_a_surrogate_pair_is_an_error_not_a_hang() {
        // engineioxide-core's decoder spun forever on this: "😀" is two UTF-16 units.
        for body in ["1:😀x", "1:😀", "2:4😀1:2"] {
            let packets = decoded_in_chunks(ProtocolVersion::V3, body.as_bytes(), 100);
            assert!(
                matches!(packets.as_slice(), [Err(_)]),
                "{body}: {packets:?}"
            );
        }
    }

    #[test]
    fn v3_text_decodes_the_same_however_the_body_is_cut() {
        let body = "4:4foo3:4😀0:2:4é1:2".as_bytes();
        for chunk in 1..=body.len() {
            assert_eq!(
                decoded_in_chunks(ProtocolVersion::V3, body, chunk),
                [
                    Ok(Packet::Message("foo".into())),
                    Ok(Packet::Message("😀".into())),
                    Ok(Packet::Message("é".into())),
                    Ok(Packet::Ping),
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn v3_text_that_is_no_length_or_no_utf8_is_an_error() {
        for body in [
            &b"x:4"[..],
            b":4",
            b"-1:4",
            b"2:4\xff",
            b"3:4\xe9",
            b"1:2\x80",
            b"12",
        ] {
            let packets = decoded_in_chunks(ProtocolVersion::V3, body, 100);
            assert!(
                matches!(packets.last(), Some(Err(_))),
                "{body:?}: {packets:?}"
            );
        }
        let too_large = decoded_in_chunks(ProtocolVersion::V3, &[b'1'; 101], 100);
        assert!(
            matches!(too_large.as_slice(), [Err(e)] if e.contains("too large")),
            "{too_large:?}"
        );
    }

    #[tokio::test]
    async fn v3_text_posts_are_length_prefixed() {
        assert_eq!(
            decoded(ProtocolVersion::V3, "6:4hellé1:2".as_bytes(), 100).await,
            [Ok(Packet::Message("hellé".into())), Ok(Packet::Ping)]
        );
        let truncated = decoded(ProtocolVersion::V3, b"9:4hi", 100).await;
        assert!(matches!(truncated.last(), Some(Err(_))), "{truncated:?}");
    }
}
