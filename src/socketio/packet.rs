//! The Socket.IO wire format, through socketioxide-parser-common: framing in both directions,
//! binary attachments reassembled on the way in, and every outgoing packet built here.
//!
//! Outgoing packets come out as an [`Encoded`]: the text and its attachments, built once and
//! then cloned (a reference count) into every recipient's queue.

use std::collections::VecDeque;

use bytes::Bytes;
use engineioxide_core::{ProtocolVersion, Sid, Str};
use serde::Serialize;
use socketioxide_core::Value;
use socketioxide_core::packet::Packet;
use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserError, ParserState};
use socketioxide_parser_common::CommonParser;

use super::event::Args;

/// One packet ready for any number of transports.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// Without Engine.IO's leading `4`.
    pub(crate) text: Str,
    pub(crate) attachments: Vec<Bytes>,
}

impl Encoded {
    /// Bytes on the wire, attachments included.
    pub(crate) fn size(&self) -> usize {
        self.text.len() + self.attachments.iter().map(Bytes::len).sum::<usize>()
    }

    /// The same event with `offset` as its last argument, as connection state recovery sends
    /// it: `2["ev",{…}]` becomes `2["ev",{…},"12"]`. Spliced into the text, so the payload is
    /// not encoded again. Only for events, whose text always ends with the array's `]`.
    pub(crate) fn with_offset(&self, offset: &str) -> Encoded {
        let text = self.text.as_str();
        let body = text.strip_suffix(']').unwrap_or(text);
        // A `&str` always serialises.
        let offset = serde_json::to_string(offset).unwrap_or_default();
        Encoded {
            text: Str::from(format!("{body},{offset}]")),
            attachments: self.attachments.clone(),
        }
    }
}

/// An event or ack payload that does not serialise (e.g. a map with non-string keys).
#[derive(Debug, thiserror::Error)]
#[error("payload does not serialize: {0}")]
pub struct EncodeError(#[from] ParserError);

fn encode(packet: Packet) -> Encoded {
    match CommonParser.encode(packet) {
        Value::Str(text, attachments) => Encoded {
            text,
            attachments: attachments.map(Vec::from).unwrap_or_default(),
        },
        Value::Bytes(_) => unreachable!("the common parser encodes every packet as text"),
    }
}

/// `{"sid"}`, and `pid` only with connection state recovery on: the official protocol suite
/// requires `sid` alone.
#[derive(Serialize)]
struct ConnectReply<'a> {
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<&'a str>,
}

/// The CONNECT reply: `0[/ns,]{"sid":…[,"pid":…]}` in protocol 5; protocol 4 replies carry no
/// payload.
pub(crate) fn connect_reply(
    ns: &Str,
    protocol: ProtocolVersion,
    sid: Sid,
    pid: Option<Sid>,
) -> Encoded {
    let payload = match protocol {
        ProtocolVersion::V3 => None,
        ProtocolVersion::V4 => Some(connect_payload(sid, pid)),
    };
    encode(Packet::connect(ns.clone(), payload))
}

fn connect_payload(sid: Sid, pid: Option<Sid>) -> Value {
    let reply = ConnectReply {
        sid: sid.as_str(),
        pid: pid.as_ref().map(Sid::as_str),
    };
    // A struct of string fields always serialises.
    let json = serde_json::to_string(&reply).unwrap_or_default();
    Value::Str(Str::from(json), None)
}

/// CONNECT_ERROR `4[/ns,]{"message":…}`.
pub(crate) fn connect_error(ns: &Str, message: &str) -> Encoded {
    encode(Packet::connect_error(ns.clone(), message))
}

pub(crate) fn disconnect(ns: &Str) -> Encoded {
    encode(Packet::disconnect(ns.clone()))
}

/// EVENT `2[/ns,][ack]["name",…payload]`, or BINARY_EVENT when the payload holds bytes. A
/// tuple payload becomes several arguments; anything else is one.
pub(crate) fn event<T: Serialize + ?Sized>(
    ns: &Str,
    name: &str,
    payload: &T,
    ack: Option<i64>,
) -> Result<Encoded, EncodeError> {
    let value = CommonParser.encode_value(payload, Some(name))?;
    let mut packet = Packet::event(ns.clone(), value);
    if let Some(id) = ack {
        packet.inner.set_ack_id(id);
    }
    Ok(encode(packet))
}

/// An event whose arguments are passed through as received: the same JSON text, the same
/// attachments.
pub(crate) fn event_with_args(ns: &Str, name: &str, args: &Args) -> Encoded {
    // A `&str` always serialises.
    let name = serde_json::to_string(name).unwrap_or_default();
    let json = match args.json() {
        "" => format!("[{name}]"),
        elements => format!("[{name},{elements}]"),
    };
    encode(Packet::event(ns.clone(), raw_value(json, args)))
}

/// ACK `3[/ns,]id[…payload]`, or BINARY_ACK when the payload holds bytes.
pub(crate) fn ack<T: Serialize + ?Sized>(
    ns: &Str,
    id: i64,
    payload: &T,
) -> Result<Encoded, EncodeError> {
    let value = CommonParser.encode_value(payload, None)?;
    Ok(encode(Packet::ack(ns.clone(), value, id)))
}

/// An ack whose arguments are passed through as received.
pub(crate) fn ack_with_args(ns: &Str, id: i64, args: &Args) -> Encoded {
    let json = format!("[{}]", args.json());
    encode(Packet::ack(ns.clone(), raw_value(json, args), id))
}

fn raw_value(json: String, args: &Args) -> Value {
    let attachments = match args.attachments() {
        [] => None,
        some => Some(VecDeque::from(some.to_vec())),
    };
    Value::Str(Str::from(json), attachments)
}

/// The limits a client's packets are decoded under.
#[derive(Debug, Clone)]
pub(crate) struct Limits(ParseConfig);

impl Limits {
    pub(crate) fn new(config: ParseConfig) -> Self {
        Self(config)
    }
}

/// Decode a text packet. `Ok(None)`: a binary packet that waits for its attachments.
pub(crate) fn decode_text(
    limits: &Limits,
    state: &ParserState,
    text: Str,
) -> Result<Option<Packet>, ParseError> {
    complete(CommonParser.decode_str(&limits.0, state, text))
}

/// Decode a binary frame: the next attachment of the pending binary packet.
pub(crate) fn decode_binary(
    limits: &Limits,
    state: &ParserState,
    data: Bytes,
) -> Result<Option<Packet>, ParseError> {
    complete(CommonParser.decode_bin(&limits.0, state, data))
}

fn complete(decoded: Result<Packet, ParseError>) -> Result<Option<Packet>, ParseError> {
    match decoded {
        Ok(packet) => Ok(Some(packet)),
        Err(ParseError::NeedsMoreBinaryData) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(encoded: &Encoded) -> &str {
        encoded.text.as_str()
    }

    fn args(json: &'static str, attachments: Vec<Bytes>) -> Args {
        Args::new(Str::from(json), attachments)
    }

    #[test]
    fn connect_replies_carry_only_the_sid_in_protocol_5() {
        let root = Str::from("/");
        let custom = Str::from("/custom");
        let sid = Sid::new();
        let reply = connect_reply(&root, ProtocolVersion::V4, sid, None);
        assert_eq!(text(&reply), format!("0{{\"sid\":\"{sid}\"}}"));
        let reply = connect_reply(&custom, ProtocolVersion::V4, sid, None);
        assert_eq!(text(&reply), format!("0/custom,{{\"sid\":\"{sid}\"}}"));
        assert_eq!(
            text(&connect_reply(&root, ProtocolVersion::V3, sid, None)),
            "0"
        );
        let reply = connect_reply(&custom, ProtocolVersion::V3, sid, None);
        assert_eq!(text(&reply), "0/custom,");
    }

    #[test]
    fn recovery_adds_the_pid_to_the_reply_and_offsets_to_events() {
        let (sid, pid) = (Sid::new(), Sid::new());
        let reply = connect_reply(&Str::from("/s"), ProtocolVersion::V4, sid, Some(pid));
        assert_eq!(
            text(&reply),
            format!("0/s,{{\"sid\":\"{sid}\",\"pid\":\"{pid}\"}}")
        );
        let plain = event(&Str::from("/s"), "ev", &serde_json::json!({"a": [1]}), None);
        let numbered = plain.expect("encodes").with_offset("12");
        assert_eq!(text(&numbered), r#"2/s,["ev",{"a":[1]},"12"]"#);
        let binary = (Bytes::from_static(&[1, 2]),);
        let numbered = event(&Str::from("/"), "file", &binary, None)
            .expect("encodes")
            .with_offset("3");
        assert_eq!(
            text(&numbered),
            r#"51-["file",{"_placeholder":true,"num":0},"3"]"#
        );
        assert_eq!(numbered.attachments.len(), 1);
    }

    #[test]
    fn control_packets() {
        let random = Str::from("/random");
        assert_eq!(
            text(&connect_error(&random, "Invalid namespace")),
            r#"4/random,{"message":"Invalid namespace"}"#
        );
        assert_eq!(text(&disconnect(&Str::from("/"))), "1");
        assert_eq!(text(&disconnect(&Str::from("/custom"))), "1/custom,");
    }

    #[test]
    fn events_with_serialised_payloads() {
        let root = Str::from("/");
        let encoded = event(&root, "auth", &serde_json::json!({}), None).expect("encodes");
        assert_eq!(text(&encoded), r#"2["auth",{}]"#);
        let encoded = event(&Str::from("/s"), "ev", &(1, "two"), Some(7)).expect("encodes");
        assert_eq!(text(&encoded), r#"2/s,7["ev",1,"two"]"#);
        let binary = (Bytes::from_static(&[1, 2]),);
        let encoded = event(&root, "file", &binary, None).expect("encodes");
        assert_eq!(
            text(&encoded),
            r#"51-["file",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(encoded.attachments, [Bytes::from_static(&[1, 2])]);
    }

    #[test]
    fn passed_through_arguments_keep_their_text_and_attachments() {
        let root = Str::from("/");
        let plain = args(r#"1,"2",{"3":[true]}"#, vec![]);
        assert_eq!(
            text(&event_with_args(&root, "message-back", &plain)),
            r#"2["message-back",1,"2",{"3":[true]}]"#
        );
        assert_eq!(
            text(&ack_with_args(&root, 456, &plain)),
            r#"3456[1,"2",{"3":[true]}]"#
        );
        let none = args("", vec![]);
        assert_eq!(text(&event_with_args(&root, "e", &none)), r#"2["e"]"#);
        assert_eq!(text(&ack_with_args(&root, 1, &none)), "31[]");

        let bins = vec![Bytes::from_static(&[1]), Bytes::from_static(&[2])];
        let binary = args(
            r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#,
            bins.clone(),
        );
        let encoded = ack_with_args(&root, 789, &binary);
        assert_eq!(
            text(&encoded),
            r#"62-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
        );
        assert_eq!(encoded.attachments, bins);
        let encoded = event_with_args(&Str::from("/c"), "a\"b", &binary);
        assert_eq!(
            text(&encoded),
            r#"52-/c,["a\"b",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
        );
    }

    #[test]
    fn acks_with_serialised_payloads() {
        let encoded = ack(&Str::from("/"), 3, &("ok",)).expect("encodes");
        assert_eq!(text(&encoded), r#"33["ok"]"#);
    }

    #[test]
    fn binary_packets_wait_for_their_attachments() {
        let limits = Limits::new(ParseConfig::default());
        let state = ParserState::default();
        let header = Str::from(r#"51-["m",{"_placeholder":true,"num":0}]"#);
        assert!(matches!(decode_text(&limits, &state, header), Ok(None)));
        let packet = decode_binary(&limits, &state, Bytes::from_static(&[9]));
        assert!(matches!(packet, Ok(Some(_))));
        let stray = decode_binary(&limits, &state, Bytes::from_static(&[9]));
        assert!(matches!(stray, Err(ParseError::UnexpectedBinaryPacket)));
        let unknown = decode_text(&limits, &state, Str::from("abc"));
        assert!(matches!(unknown, Err(ParseError::InvalidPacketType)));
    }
}
