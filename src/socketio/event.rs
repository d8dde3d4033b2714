//! Client events and their arguments, read from a decoded packet's payload.
//!
//! Arguments are kept as the client sent them: the JSON text between the brackets (a slice of
//! the frame, no copy) and the binary attachments its placeholders point to. Handlers
//! deserialise what they need; pass-through (an echo, a relay) sends the same text again. The
//! whole payload is validated as JSON first, so passing it through cannot spread bad JSON.

use std::fmt;

use bytes::Bytes;
use engineioxide_core::Str;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use socketioxide_core::Value;

use super::ack::AckSender;

/// An event a client emitted.
#[derive(Debug)]
pub struct Event {
    /// The event name, unescaped.
    pub name: Str,
    pub args: Args,
    /// Present when the client asked for an acknowledgement.
    pub ack: Option<AckSender>,
}

/// Event or ack arguments as received: raw JSON and binary attachments.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// The array's elements without its brackets, e.g. `1,"2",{"3":[true]}`; empty for none.
    elements: Str,
    attachments: Vec<Bytes>,
}

impl Args {
    pub(crate) fn new(elements: Str, attachments: Vec<Bytes>) -> Self {
        Self {
            elements,
            attachments,
        }
    }

    /// The arguments' JSON text, comma-separated, without brackets. Binary arguments appear
    /// as `{"_placeholder":true,"num":i}`, `i` indexing [`Args::attachments`].
    pub fn json(&self) -> &str {
        &self.elements
    }

    pub fn attachments(&self) -> &[Bytes] {
        &self.attachments
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Deserialise the arguments as one JSON array: a `Vec<serde_json::Value>`, a tuple, or
    /// any type that reads a sequence.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&format!("[{}]", self.json()))
    }
}

/// A payload that is not what its packet type requires; the session is closed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidPayload {
    #[error("an event must be a JSON array whose first element is its name")]
    Event,
    #[error("ack arguments must be a JSON array")]
    Ack,
    #[error("the CONNECT payload must be a JSON object")]
    Auth,
}

/// Read an EVENT or BINARY_EVENT payload: `["name", …args]`.
pub(crate) fn read_event(payload: Value) -> Result<(Str, Args), InvalidPayload> {
    let (text, attachments) = text_of(payload).ok_or(InvalidPayload::Event)?;
    let mut json = serde_json::Deserializer::from_str(&text);
    json.deserialize_seq(EventShape)
        .and_then(|()| json.end())
        .map_err(|_| InvalidPayload::Event)?;
    let (name, elements) = split_event(&text).ok_or(InvalidPayload::Event)?;
    let name = unescape(&text, name).ok_or(InvalidPayload::Event)?;
    Ok((name, Args::new(text.slice(elements), attachments)))
}

/// Read an ACK or BINARY_ACK payload: `[…args]`.
pub(crate) fn read_ack(payload: Value) -> Result<Args, InvalidPayload> {
    let (text, attachments) = text_of(payload).ok_or(InvalidPayload::Ack)?;
    serde_json::from_str::<Vec<IgnoredAny>>(&text).map_err(|_| InvalidPayload::Ack)?;
    let (open, close) = brackets(text.as_bytes()).ok_or(InvalidPayload::Ack)?;
    let elements = trim_range(text.as_bytes(), open + 1, close);
    Ok(Args::new(text.slice(elements), attachments))
}

/// Check a CONNECT payload: absent, or a JSON object (anything else closes the session, as
/// in Node's parser). Returns the object's text, a slice of the frame.
pub(crate) fn read_auth(payload: Option<Value>) -> Result<Option<Str>, InvalidPayload> {
    let Some(payload) = payload else {
        return Ok(None);
    };
    let (text, _) = text_of(payload).ok_or(InvalidPayload::Auth)?;
    let mut json = serde_json::Deserializer::from_str(&text);
    json.deserialize_map(ObjectShape)
        .and_then(|()| json.end())
        .map_err(|_| InvalidPayload::Auth)?;
    Ok(Some(text))
}

fn text_of(payload: Value) -> Option<(Str, Vec<Bytes>)> {
    match payload {
        Value::Str(text, attachments) => {
            Some((text, attachments.map(Vec::from).unwrap_or_default()))
        }
        Value::Bytes(_) => None,
    }
}

type Range = std::ops::Range<usize>;

/// In a validated event array, where the name's string (without quotes) and the elements after
/// it are. Every index lands on an ASCII delimiter, hence on a char boundary.
fn split_event(text: &str) -> Option<(Range, Range)> {
    let bytes = text.as_bytes();
    let (open, close) = brackets(bytes)?;
    let quote = skip_space(bytes, open + 1);
    let end_quote = string_end(bytes, quote)?;
    let after = skip_space(bytes, end_quote + 1);
    let elements = match bytes.get(after) {
        Some(b',') => trim_range(bytes, after + 1, close),
        _ => close..close,
    };
    Some((quote + 1..end_quote, elements))
}

/// The indices of the outer `[` and `]` of a validated JSON array.
fn brackets(bytes: &[u8]) -> Option<(usize, usize)> {
    let open = skip_space(bytes, 0);
    let close = bytes.iter().rposition(|b| !is_space(*b))?;
    (bytes.get(open) == Some(&b'[') && bytes.get(close) == Some(&b']')).then_some((open, close))
}

/// The index of the quote closing the JSON string opened at `open`.
fn string_end(bytes: &[u8], open: usize) -> Option<usize> {
    if bytes.get(open) != Some(&b'"') {
        return None;
    }
    let mut at = open + 1;
    while let Some(b) = bytes.get(at) {
        match b {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
    None
}

fn trim_range(bytes: &[u8], start: usize, end: usize) -> Range {
    let start = skip_space(bytes, start).min(end);
    let end = bytes[start..end]
        .iter()
        .rposition(|b| !is_space(*b))
        .map_or(start, |last| start + last + 1);
    start..end
}

fn skip_space(bytes: &[u8], from: usize) -> usize {
    bytes
        .iter()
        .skip(from)
        .position(|b| !is_space(*b))
        .map_or(bytes.len(), |n| from + n)
}

/// JSON's own whitespace, not Unicode's.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The name as a `Str`: a slice of the frame when it has no escapes, decoded otherwise.
fn unescape(text: &Str, name: Range) -> Option<Str> {
    let raw = &text[name.clone()];
    if !raw.contains('\\') {
        return Some(text.slice(name));
    }
    let quoted = &text[name.start - 1..name.end + 1];
    serde_json::from_str::<String>(quoted).ok().map(Str::from)
}

/// Accepts a JSON array whose first element is a string, keeping nothing.
struct EventShape;

impl<'de> Visitor<'de> for EventShape {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array starting with the event name")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        seq.next_element::<AnyString>()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Accepts any JSON string, keeping nothing.
struct AnyString;

impl<'de> de::Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(AnyString)
    }
}

impl Visitor<'_> for AnyString {
    type Value = AnyString;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyString, E> {
        Ok(AnyString)
    }
}

/// Accepts any JSON object, keeping nothing.
struct ObjectShape;

impl<'de> Visitor<'de> for ObjectShape {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &'static str) -> Value {
        Value::Str(Str::from(text), None)
    }

    fn event(text: &'static str) -> Result<(String, String), InvalidPayload> {
        read_event(value(text)).map(|(name, args)| (name.to_string(), args.json().to_owned()))
    }

    fn pair(name: &str, args: &str) -> Result<(String, String), InvalidPayload> {
        Ok((name.to_owned(), args.to_owned()))
    }

    #[test]
    fn events_split_into_name_and_raw_arguments() {
        assert_eq!(
            event(r#"["message",1,"2",{"3":[true]}]"#),
            pair("message", r#"1,"2",{"3":[true]}"#)
        );
        assert_eq!(event(r#"["ping"]"#), pair("ping", ""));
        assert_eq!(event(r#" [ "a" , 1 , [2] ] "#), pair("a", "1 , [2]"));
        assert_eq!(event(r#"["a\"b\u00e9",[]]"#), pair("a\"bé", "[]"));
        assert_eq!(event(r#"["é","ü"]"#), pair("é", r#""ü""#));
    }

    #[test]
    fn a_name_without_escapes_is_a_slice_of_the_frame() {
        let text = Str::from(r#"["message",1]"#);
        let (name, args) = read_event(Value::Str(text.clone(), None)).expect("valid");
        let frame = text.as_bytes().as_ptr_range();
        assert!(frame.contains(&name.as_ptr()));
        assert!(frame.contains(&args.json().as_ptr()));
    }

    #[test]
    fn malformed_events_are_refused() {
        for bad in [
            "{}",
            r#"abc["message-with-ack",1]"#,
            "[]",
            "[1]",
            r#"["a",]"#,
            r#"["a""#,
            r#"["a"] x"#,
            "",
            r#"["a",{"b":}]"#,
        ] {
            assert_eq!(event(bad), Err(InvalidPayload::Event), "{bad}");
        }
        assert_eq!(
            read_event(Value::Bytes(Bytes::new())).map(|_| ()),
            Err(InvalidPayload::Event)
        );
    }

    #[test]
    fn ack_arguments_are_the_array_elements() {
        let args = read_ack(value(r#"[1,"2",{"3":[false]}]"#)).expect("valid");
        assert_eq!(args.json(), r#"1,"2",{"3":[false]}"#);
        assert_eq!(read_ack(value("[ ]")).expect("valid").json(), "");
        assert_eq!(read_ack(value("{}")), Err(InvalidPayload::Ack));
        assert_eq!(read_ack(value("[1")), Err(InvalidPayload::Ack));
    }

    #[test]
    fn attachments_stay_with_their_arguments() {
        let bins = std::collections::VecDeque::from([Bytes::from_static(&[1, 2, 3])]);
        let payload = Value::Str(
            Str::from(r#"["m",{"_placeholder":true,"num":0}]"#),
            Some(bins),
        );
        let (_, args) = read_event(payload).expect("valid");
        assert_eq!(args.attachments(), [Bytes::from_static(&[1, 2, 3])]);
    }

    #[test]
    fn arguments_deserialise_as_one_array() {
        let (_, args) = read_event(value(r#"["m",1,"x"]"#)).expect("valid");
        let (n, s): (u32, String) = args.deserialize().expect("tuple");
        assert_eq!((n, s.as_str()), (1, "x"));
        let all: Vec<serde_json::Value> = args.deserialize().expect("values");
        assert_eq!(all.len(), 2);
        assert!(!args.is_empty());
    }

    #[test]
    fn auth_is_an_object_or_absent() {
        assert_eq!(read_auth(None), Ok(None));
        let auth = read_auth(Some(value(r#"{"token":"123"}"#))).expect("object");
        assert_eq!(auth.as_deref(), Some(r#"{"token":"123"}"#));
        for bad in ["{bad", "[]", "\"s\"", "1", "null", "{} {}"] {
            assert_eq!(
                read_auth(Some(Value::Str(Str::from(bad), None))),
                Err(InvalidPayload::Auth),
                "{bad}"
            );
        }
    }
}
