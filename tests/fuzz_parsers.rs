//! Property-based fuzzing of every parser that reads untrusted input: Redis publications
//! (`bridge::parse`), handshake headers (`handshake`), the bench's configuration
//! (`config::Config::load_with_env`) and client event arguments (`handlers::EventArgs`).
//!
//! Each property runs a fixed number of cases per `cargo test` (see `docs/fuzzing.md`);
//! `PROPTEST_CASES=N` sets every property's count to N for a longer run, e.g.
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_parsers`.

use std::collections::BTreeMap;
use std::path::Path;

use frappe_realtime::bridge::{self, Malformed, Publication, Target};
use frappe_realtime::config::FrappeVersion;
use frappe_realtime::config::{Config, ConfigError, Overrides, Source};
use frappe_realtime::cors::AllowCors;
use frappe_realtime::handlers::EventArgs;
use frappe_realtime::handshake::{self, Credential, Namespace, Policy, Rejection};
use frappe_realtime::sites::{SiteSettings, SiteTable};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

#[path = "support/fuzz.rs"]
mod fuzz;
use fuzz::{RESERVED, WORDS, any_string, config, json_number, json_value, pick};

// ---------------------------------------------------------------------------------------------
// Case counts (`fuzz::config`)
// ---------------------------------------------------------------------------------------------

const PARSE_BYTES_CASES: u32 = 10_000;
const PARSE_JSON_CASES: u32 = 4_096;
const PARSE_VALID_CASES: u32 = 4_096;
const PARSE_FALSY_ROOM_CASES: u32 = 4_096;
const HOSTNAME_CASES: u32 = 10_000;
const HANDSHAKE_CASES: u32 = 8_192;
const SID_COOKIE_CASES: u32 = 8_192;
const AUTH_PAYLOAD_CASES: u32 = 4_096;
const CONFIG_CASES: u32 = 2_048;
const EVENT_ARGS_JSON_CASES: u32 = 4_096;
const EVENT_ARGS_BYTES_CASES: u32 = 10_000;

// ---------------------------------------------------------------------------------------------
// 1. bridge::parse
// ---------------------------------------------------------------------------------------------

/// What `parse` must answer for an object, following protocol §6 and Frappe's `if (data.room)`.
fn expected_parse(object: &Map<String, Value>) -> Result<Publication, Malformed> {
    let event = match object.get("event") {
        Some(Value::String(event)) if !event.is_empty() => event.clone(),
        _ => return Err(Malformed::NoEvent),
    };
    if RESERVED.contains(&event.as_str()) {
        return Err(Malformed::ReservedEvent);
    }
    let target = match object.get("room") {
        Some(Value::String(room)) if !room.is_empty() => match object.get("namespace") {
            Some(Value::String(site)) if !site.is_empty() => Target::Room {
                site: site.clone(),
                room: room.clone(),
            },
            _ => return Err(Malformed::RoomWithoutNamespace),
        },
        Some(room) if js_truthy(room) => return Err(Malformed::BadRoom),
        _ => Target::EverySite,
    };
    Ok(Publication {
        event,
        message: object.get("message").cloned().unwrap_or(Value::Null),
        target,
    })
}

/// JavaScript truthiness, written independently of the crate's.
fn js_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The value the bridge sees once `value` went through Redis: serialised, then parsed by
/// serde_json. Without serde_json's `float_roundtrip` feature its parser may move a float by
/// one ulp (e.g. `981821831.3959407` reads as `981821831.3959408`), so messages are compared
/// with what serde_json reads from their text rather than with the generated value.
fn through_the_wire(value: &Value) -> Value {
    serde_json::from_str(&value.to_string()).expect("serde_json reads what it writes")
}

/// Objects shaped like publications: each of the four keys absent or any JSON (biased towards
/// the values that matter), plus unrelated keys.
fn publication_like() -> impl Strategy<Value = Map<String, Value>> {
    let part = |interesting: BoxedStrategy<Value>| {
        prop::option::weighted(0.85, prop_oneof![4 => interesting, 1 => json_value()])
    };
    let event = any_string().prop_map(Value::String).boxed();
    let room = prop_oneof![
        any_string().prop_map(Value::String),
        falsy_room().prop_map(|r| r.unwrap_or(Value::Null)),
    ]
    .boxed();
    let namespace = any_string().prop_map(Value::String).boxed();
    (
        part(event),
        part(room),
        part(namespace),
        prop::option::of(json_value()),
        btree_map(any_string(), json_value(), 0..3),
    )
        .prop_map(|(event, room, namespace, message, extra)| {
            let mut object: Map<String, Value> = extra.into_iter().collect();
            for (key, value) in [
                ("event", event),
                ("room", room),
                ("namespace", namespace),
                ("message", message),
            ] {
                match value {
                    Some(value) => object.insert(key.to_owned(), value),
                    None => object.remove(key),
                };
            }
            object
        })
}

/// A room that means "every site": absent (`None`), null, "", false, 0, 0.0 or -0.0.
fn falsy_room() -> impl Strategy<Value = Option<Value>> {
    select(vec![
        None,
        Some(Value::Null),
        Some(Value::from("")),
        Some(Value::Bool(false)),
        Some(Value::from(0)),
        Some(Value::from(0.0)),
        Some(Value::from(-0.0)),
    ])
}

/// A non-empty string. Built rather than filtered, so that long runs do not hit proptest's
/// limit on rejected inputs.
fn non_empty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => pick(RESERVED),
        1 => pick(WORDS),
        2 => "[ -~]{1,16}",
        3 => vec(any::<char>(), 1..16).prop_map(String::from_iter),
    ]
}

/// A non-empty event name Socket.IO does not reserve (the filter almost never rejects).
fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => pick(WORDS),
        2 => "[ -~]{1,16}",
        3 => vec(any::<char>(), 1..16).prop_map(String::from_iter),
    ]
    .prop_filter("not reserved", |s| !RESERVED.contains(&s.as_str()))
}

/// Keys that are not part of a publication, with any values: they must be ignored.
fn extra_keys() -> impl Strategy<Value = BTreeMap<String, Value>> {
    let key = prop_oneof![
        1 => pick(&["doctype", "docname", "user", "after_commit", "", "Event", "ROOM"]),
        1 => pick(RESERVED),
        2 => "[ -~]{0,16}",
        3 => vec(any::<char>(), 0..16).prop_map(String::from_iter),
    ];
    btree_map(
        key.prop_filter("not a publication key", |k| {
            !["event", "room", "namespace", "message"].contains(&k.as_str())
        }),
        json_value(),
        0..3,
    )
}

/// Bytes that are nearly JSON: a serialised value with one byte changed, cut short, or
/// wrapped in deep nesting.
fn nearly_json() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut bytes = v.to_string().into_bytes();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        }),
        (json_value(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let bytes = v.to_string().into_bytes();
            let cut = at.index(bytes.len() + 1);
            bytes[..cut].to_vec()
        }),
        (
            0usize..3_000,
            select(vec!["[", "{\"event\":", "{\"room\":["])
        )
            .prop_map(|(depth, open)| {
                let mut text = open.repeat(depth);
                text.push('1');
                text.into_bytes()
            }),
    ]
}

proptest! {
    #![proptest_config(config(PARSE_BYTES_CASES))]

    /// Arbitrary bytes, and bytes that are nearly JSON, never panic the parser, and what is
    /// not JSON is reported as such.
    #[test]
    fn parse_never_panics_on_bytes(bytes in prop_oneof![
        vec(any::<u8>(), 0..256),
        nearly_json(),
    ]) {
        let result = bridge::parse(&bytes, FrappeVersion::V16);
        if serde_json::from_slice::<Value>(&bytes).is_err() {
            prop_assert_eq!(result, Err(Malformed::NotJson));
        }
    }
}

proptest! {
    #![proptest_config(config(PARSE_JSON_CASES))]

    /// Any JSON value never panics the parser; for objects the answer is the one protocol §6
    /// gives (checked against an independent model), for anything else `NotAnObject`.
    #[test]
    fn parse_follows_the_spec_on_any_json(value in prop_oneof![
        json_value(),
        publication_like().prop_map(Value::Object),
    ]) {
        let result = bridge::parse(value.to_string().as_bytes(), FrappeVersion::V16);
        match through_the_wire(&value) {
            Value::Object(object) => prop_assert_eq!(result, expected_parse(&object)),
            _ => prop_assert_eq!(result, Err(Malformed::NotAnObject)),
        }
    }
}

proptest! {
    #![proptest_config(config(PARSE_VALID_CASES))]

    /// A valid publication for a room comes back with exactly its event, site, room and
    /// message, whatever else the object holds.
    #[test]
    fn valid_room_publications_round_trip(
        event in event_name(),
        message in prop::option::of(json_value()),
        site in non_empty_string(),
        room in non_empty_string(),
        extra in extra_keys(),
    ) {
        let mut object: Map<String, Value> = extra.into_iter().collect();
        object.insert("event".into(), Value::from(event.clone()));
        if let Some(message) = &message {
            object.insert("message".into(), message.clone());
        }
        object.insert("namespace".into(), Value::from(site.clone()));
        object.insert("room".into(), Value::from(room.clone()));
        let publication = bridge::parse(Value::Object(object).to_string().as_bytes(), FrappeVersion::V16);
        let message = message.as_ref().map(through_the_wire).unwrap_or(Value::Null);
        prop_assert_eq!(publication, Ok(Publication {
            event,
            message,
            target: Target::Room { site, room },
        }));
    }
}

proptest! {
    #![proptest_config(config(PARSE_FALSY_ROOM_CASES))]

    /// A falsy room (absent, null, "", false, 0) sends the event to every site, whatever the
    /// namespace says.
    #[test]
    fn falsy_rooms_go_to_every_site(
        event in event_name(),
        message in json_value(),
        room in falsy_room(),
        namespace in prop::option::of(json_value()),
        extra in extra_keys(),
    ) {
        let mut object: Map<String, Value> = extra.into_iter().collect();
        object.insert("event".into(), Value::from(event.clone()));
        object.insert("message".into(), message.clone());
        if let Some(room) = room {
            object.insert("room".into(), room);
        }
        if let Some(namespace) = namespace {
            object.insert("namespace".into(), namespace);
        }
        let publication = bridge::parse(Value::Object(object).to_string().as_bytes(), FrappeVersion::V16);
        prop_assert_eq!(publication, Ok(Publication {
            event,
            message: through_the_wire(&message),
            target: Target::EverySite,
        }));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. handshake: hostname, resolve_site, check
// ---------------------------------------------------------------------------------------------

/// Bytes a `HeaderValue` accepts: visible ASCII, space, tab and obs-text (0x80-0xFF).
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            8 => 0x20u8..=0x7e,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..40,
    )
}

/// Host names that make the checks pass or fail for interesting reasons.
fn host_name() -> impl Strategy<Value = String> {
    prop_oneof![
        pick(&[
            "a.local",
            "b.local",
            "localhost",
            "127.0.0.1",
            "erp.example.com",
            "[::1]",
            "",
            "A.LOCAL",
            "a.local."
        ]),
        "[a-z0-9.-]{1,12}",
        "[ -~]{0,12}",
    ]
}

/// A header built around a host name: optional scheme, the host (the case's shared one or
/// another), optional port and path; or raw bytes; or absent.
#[derive(Debug, Clone)]
enum HostHeader {
    Absent,
    Raw(Vec<u8>),
    Built {
        scheme: Option<String>,
        shared: bool,
        other: String,
        port: Option<String>,
        path: Option<String>,
    },
}

fn host_header() -> impl Strategy<Value = HostHeader> {
    prop_oneof![
        1 => Just(HostHeader::Absent),
        1 => header_bytes().prop_map(HostHeader::Raw),
        10 => (
            prop::option::of(prop_oneof![
                4 => pick(&["http://", "https://"]),
                1 => pick(&["ws://", "://", "http:/", "HTTP://", "http://u:p@"]),
                1 => "[a-z]{0,5}://",
            ]),
            prop::bool::weighted(0.9),
            host_name(),
            prop::option::of(prop_oneof![
                4 => any::<u16>().prop_map(|p| format!(":{p}")),
                1 => "[:0-9a-z]{0,6}",
            ]),
            prop::option::of("/[ -~]{0,12}"),
        )
            .prop_map(|(scheme, shared, other, port, path)| HostHeader::Built {
                scheme,
                shared,
                other,
                port,
                path,
            }),
    ]
}

impl HostHeader {
    fn bytes(&self, shared_host: &str) -> Option<Vec<u8>> {
        match self {
            Self::Absent => None,
            Self::Raw(bytes) => Some(bytes.clone()),
            Self::Built {
                scheme,
                shared,
                other,
                port,
                path,
            } => {
                let host = if *shared { shared_host } else { other };
                let text = [
                    scheme.as_deref().unwrap_or(""),
                    host,
                    port.as_deref().unwrap_or(""),
                    path.as_deref().unwrap_or(""),
                ]
                .concat();
                Some(text.into_bytes())
            }
        }
    }
}

/// Cookie header values: raw bytes, or well-formed pairs with or without a `sid`.
fn cookie_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => header_bytes(),
        3 => (cookie_pairs(), prop::option::of((any::<prop::sample::Index>(), sid_token())))
            .prop_map(|(mut pairs, sid)| {
                if let Some((at, token)) = sid {
                    pairs.insert(at.index(pairs.len() + 1), format!("sid={token}"));
                }
                pairs.join("; ").into_bytes()
            }),
    ]
}

/// RFC 6265 cookie-octets: no whitespace, `"`, `,`, `;` or `\`.
fn sid_token() -> impl Strategy<Value = String> {
    "[!#-+\\--:<-\\[\\]-~]{1,40}"
}

/// Cookie pairs other than a usable `sid`: decoy names (`SID`, `xsid`, `sid_`), an empty
/// `sid=`, pairs without `=`, empty pairs, and random names and values.
fn cookie_pairs() -> impl Strategy<Value = Vec<String>> {
    vec(
        prop_oneof![
            3 => ("[!#-'*+.0-9A-Z^-z|~-]{1,10}", "[!#-+\\--:<-\\[\\]-~]{0,20}")
                .prop_filter("not sid", |(name, _)| name != "sid")
                .prop_map(|(name, value)| format!("{name}={value}")),
            1 => pick(&["SID=x", "Sid=y", "xsid=z", "sid_=w", "sid=", " sid= ", "sid",
                "", "=", "=v", "full_name=J%20D", "system_user=yes", "user_id=Guest",
                "a=\"quoted\""]),
            1 => "[ -:<-~]{0,20}"
                .prop_filter("no sid pair", |s| !s.contains("sid")),
        ],
        0..6,
    )
}

#[derive(Debug, Clone)]
struct Handshake {
    shared_host: String,
    host: HostHeader,
    origin: HostHeader,
    site_name: HostHeader,
    cookies: Vec<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    default_site: Option<String>,
    namespace: String,
}

fn handshake_case() -> impl Strategy<Value = Handshake> {
    (
        host_name(),
        host_header(),
        host_header(),
        prop_oneof![3 => Just(HostHeader::Absent), 1 => host_header()],
        vec(cookie_value(), 0..3),
        prop::option::of(prop_oneof![
            header_bytes(),
            select(vec!["", "token k:s", "Basic dTpw", "Bearer abc", " "])
                .prop_map(|s| s.as_bytes().to_vec()),
        ]),
        prop::option::of(prop_oneof![host_name(), any_string()]),
        prop_oneof![host_name(), any_string()],
    )
        .prop_map(
            |(
                shared_host,
                host,
                origin,
                site_name,
                cookies,
                authorization,
                default_site,
                namespace,
            )| Handshake {
                shared_host,
                host,
                origin,
                site_name,
                cookies,
                authorization,
                default_site,
                namespace,
            },
        )
}

impl Handshake {
    fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut put = |name: &'static str, bytes: Option<Vec<u8>>| {
            if let Some(bytes) = bytes {
                let value = HeaderValue::from_bytes(&bytes).expect("generated a valid value");
                map.append(HeaderName::from_static(name), value);
            }
        };
        put("host", self.host.bytes(&self.shared_host));
        put("origin", self.origin.bytes(&self.shared_host));
        put(
            "x-frappe-site-name",
            self.site_name.bytes(&self.shared_host),
        );
        for cookie in &self.cookies {
            put("cookie", Some(cookie.clone()));
        }
        put("authorization", self.authorization.clone());
        map
    }
}

/// A header as the handshake reads it: present and visible ASCII. A value with obs-text
/// bytes (0x80-0xFF) is read as absent, so a non-empty `Authorization` of that kind is
/// ignored (falling back to the cookie, or `MissingCredentials`); the properties below
/// state the behaviour for the headers the handshake can read.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A bench with these sites, none with `allow_cors`.
fn bench_of(sites: &[&str]) -> SiteTable {
    sites
        .iter()
        .map(|site| ((*site).to_owned(), SiteSettings::default()))
        .collect()
}

/// Frappe 16 on a bench with `sites`, no `allow_cors` anywhere.
fn policy<'a>(sites: &'a SiteTable, default_site: Option<&'a str>) -> Policy<'a> {
    Policy {
        default_site,
        sites,
        common_allow_cors: &AllowCors::Unset,
        version: FrappeVersion::V16,
    }
}

/// What `check` promises about one handshake, whatever namespace it was asked about (`None`:
/// the root namespace), on a bench with the sites `bench` lists.
fn check_one(
    namespace: Option<&str>,
    headers: &HeaderMap,
    default_site: Option<&str>,
    bench: &SiteTable,
) -> Result<(), TestCaseError> {
    let resolved = handshake::resolve_site(headers, default_site, bench);
    let host = text(headers, "host");
    let origin = text(headers, "origin");
    let authorization = text(headers, "authorization").filter(|v| !v.is_empty());
    let has_cookie = headers.get("cookie").is_some();
    let policy = policy(bench, default_site);
    let asked = namespace.map_or(Namespace::Root, Namespace::Site);
    let site_ok = match (namespace, resolved.as_deref()) {
        (Some(namespace), Some(resolved)) => namespace == resolved,
        (None, Some(resolved)) => bench.contains(resolved),
        (_, None) => false,
    };
    // A missing Origin is a program's handshake; a present one must name the Host's host.
    let origin_ok = match (host, origin) {
        (_, None) => true,
        (Some(h), Some(o)) => handshake::hostname(h) == handshake::hostname(o),
        (None, Some(_)) => false,
    };
    match handshake::check(asked, headers, None, &policy) {
        Ok(accepted) => {
            prop_assert!(site_ok && origin_ok);
            prop_assert_eq!(Some(accepted.site.as_str()), resolved.as_deref());
            prop_assert_eq!(accepted.callback_origin.as_deref(), origin);
            match (&accepted.credential, authorization) {
                (Credential::Authorization(value), Some(given)) => prop_assert_eq!(value, given),
                (Credential::Sid(sid), None) => {
                    prop_assert!(!sid.is_empty());
                    // Some `name=value` pair of some Cookie header, trimmed, is `sid=<sid>`.
                    prop_assert!(
                        headers
                            .get_all("cookie")
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .flat_map(|v| v.split(';'))
                            .filter_map(|pair| pair.split_once('='))
                            .any(|(name, value)| name.trim() == "sid" && value.trim() == sid)
                    );
                }
                (credential, given) => {
                    return Err(TestCaseError::fail(format!(
                        "credential {credential:?} with Authorization {given:?}"
                    )));
                }
            }
            // Debug shows only the kind of credential, and `Accepted` nothing else secret.
            let shown = format!("{:?}", accepted.credential);
            prop_assert!(
                shown == "Authorization(<redacted>)" || shown == "Sid(<redacted>)",
                "credential Debug shows {}",
                shown
            );
            let secret = match &accepted.credential {
                Credential::Authorization(s) | Credential::Sid(s) => s,
            };
            if !"Authorization(<redacted>)Sid(<redacted>)".contains(secret.as_str()) {
                prop_assert!(!shown.contains(secret.as_str()));
            }
            prop_assert_eq!(
                format!("{accepted:?}"),
                format!(
                    "Accepted {{ site: {:?}, credential: {shown}, callback_origin: {:?} }}",
                    accepted.site, accepted.callback_origin
                )
            );
        }
        Err(refusal) => {
            // The first failing check, in protocol §3.3's order.
            let expected = if !site_ok {
                Some(Rejection::InvalidNamespace)
            } else if !origin_ok {
                Some(Rejection::InvalidOrigin)
            } else if authorization.is_none() && !has_cookie {
                Some(Rejection::MissingCredentials)
            } else if authorization.is_some() {
                None // must have been accepted
            } else {
                Some(Rejection::NoAuthenticationMethod)
            };
            prop_assert_eq!(Some(&refusal), expected.as_ref());
            prop_assert!(!refusal.to_string().is_empty());
            prop_assert!(!refusal.label().is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(HOSTNAME_CASES))]

    /// `hostname` never panics, returns a piece of its input without `:` or `/`, and is
    /// idempotent.
    #[test]
    fn hostname_is_a_bare_host(value in prop_oneof![
        any_string(),
        vec(any::<char>(), 0..64).prop_map(String::from_iter),
        "[a-z:/.\\[\\]0-9@?#]{0,24}",
    ]) {
        let host = handshake::hostname(&value);
        prop_assert!(!host.contains(':') && !host.contains('/'), "{:?} -> {:?}", value, host);
        prop_assert!(value.contains(host));
        prop_assert_eq!(handshake::hostname(host), host);
    }
}

proptest! {
    #![proptest_config(config(HANDSHAKE_CASES))]

    /// Any Host, Origin, Cookie, Authorization and X-Frappe-Site-Name never panic
    /// `resolve_site` or `check`; what `check` answers is what protocol §3.3 says.
    #[test]
    fn handshake_checks_hold(case in handshake_case()) {
        let headers = case.headers();
        let default_site = case.default_site.as_deref();
        let bench = bench_of(&[case.namespace.as_str()]);
        let resolved = handshake::resolve_site(&headers, default_site, &bench);
        if let Some(site) = &resolved {
            if Some(site.as_str()) != default_site {
                prop_assert!(!site.contains(':') && !site.contains('/'), "site {:?}", site);
            }
            // Asked about the site the headers resolve to, the later checks run; on `/` too
            // when the bench has that site.
            check_one(Some(site), &headers, default_site, &bench)?;
            check_one(None, &headers, default_site, &bench_of(&[site.as_str()]))?;
        } else {
            prop_assert!(text(&headers, "x-frappe-site-name").is_none());
            prop_assert!(text(&headers, "origin").is_none());
            prop_assert!(text(&headers, "host").is_none());
        }
        check_one(Some(&case.namespace), &headers, default_site, &bench)?;
        check_one(None, &headers, default_site, &bench)?;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The sid cookie through check
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(SID_COOKIE_CASES))]

    /// A `sid=<token>` among other cookie pairs, at any position, in one Cookie header or
    /// spread over several, is the credential when there is no Authorization header.
    #[test]
    fn the_sid_cookie_is_found_anywhere(
        pairs in cookie_pairs(),
        at in any::<prop::sample::Index>(),
        token in sid_token(),
        separator in select(vec!["; ", ";", " ; ", ";  "]),
        headers_split in vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let mut pairs = pairs;
        let at = at.index(pairs.len() + 1);
        // A usable sid earlier than ours would win, and the decoy list never has one.
        pairs.insert(at, format!("sid={token}"));
        // Cut the pairs into consecutive Cookie headers.
        let mut cuts: Vec<usize> = headers_split.iter().map(|i| i.index(pairs.len() + 1)).collect();
        cuts.push(0);
        cuts.push(pairs.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a.local:8000"));
        headers.insert("origin", HeaderValue::from_static("https://a.local"));
        for window in cuts.windows(2) {
            let value = pairs[window[0]..window[1]].join(separator);
            headers.append("cookie", HeaderValue::from_str(&value).expect("cookie header"));
        }
        let bench = bench_of(&["a.local"]);
        let policy = policy(&bench, None);
        let accepted = handshake::check(Namespace::Site("a.local"), &headers, None, &policy);
        prop_assert_eq!(
            accepted.map(|a| a.credential),
            Ok(Credential::Sid(token.clone())),
            "cookie headers {:?}",
            headers.get_all("cookie").iter().collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3b. The CONNECT auth payload
// ---------------------------------------------------------------------------------------------

/// An auth payload: any JSON, or an object with credential keys of any JSON value.
fn auth_payload() -> impl Strategy<Value = Value> {
    let credential_keys = btree_map(
        pick(&["sid", "token", "authorization", "pid", "offset", "Sid"]),
        prop_oneof![3 => any_string().prop_map(Value::String), 1 => json_value()],
        0..4,
    )
    .prop_map(|map| Value::Object(map.into_iter().collect()));
    prop_oneof![json_value(), credential_keys]
}

proptest! {
    #![proptest_config(config(AUTH_PAYLOAD_CASES))]

    /// Any auth payload never panics; with no credential in the headers, the handshake's
    /// credential is the payload's (`authorization`, then `token`, then `sid`, each a
    /// non-empty string that can travel in a header), else it is refused as missing.
    #[test]
    fn the_auth_payload_is_the_credential_of_last_resort(auth in auth_payload()) {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a.local"));
        let bench = bench_of(&["a.local"]);
        let policy = policy(&bench, None);
        let usable = |key: &str| {
            auth.get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty() && HeaderValue::from_str(v).is_ok())
        };
        let result = handshake::check(Namespace::Root, &headers, Some(&auth), &policy);
        match (usable("authorization"), usable("token"), usable("sid")) {
            (Some(value), _, _) => prop_assert_eq!(
                result.map(|a| a.credential),
                Ok(Credential::Authorization(value.to_owned()))
            ),
            (None, Some(token), _) => {
                let Ok(Credential::Authorization(value)) = result.map(|a| a.credential) else {
                    return Err(TestCaseError::fail("a token is an Authorization credential"));
                };
                prop_assert!(value.ends_with(token), "{:?} from {:?}", value, token);
            }
            (None, None, Some(sid)) => prop_assert_eq!(
                result.map(|a| a.credential),
                Ok(Credential::Sid(sid.to_owned()))
            ),
            (None, None, None) => prop_assert_eq!(result.err(), Some(Rejection::MissingCredentials)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Config::load_with_env
// ---------------------------------------------------------------------------------------------

/// The keys the service reads (protocol §1.2), which the generator sets mostly to values the
/// service accepts.
const CONFIG_KEYS: &[&str] = &[
    "socketio_port",
    "socketio_uds",
    "redis_queue",
    "redis_cache",
    "default_site",
    "developer_mode",
    "webserver_port",
    "webserver_host",
    "realtime_callback_url",
    "realtime_callback_timeout",
    "realtime_callback_concurrency",
    "realtime_reconnect_window",
    "realtime_frappe_version",
    "realtime_admin_token",
    "realtime_client_events_per_second",
    "realtime_client_event_burst",
    "realtime_max_rooms_per_socket",
    "redis_socketio",
    "redis_async_broker_port",
    "allow_cors",
];

/// The variables Frappe's service honours, and the key each one overrides.
const ENV_VARS: &[(&str, &str)] = &[
    ("FRAPPE_SITE", "default_site"),
    ("FRAPPE_REDIS_QUEUE", "redis_queue"),
    ("FRAPPE_REDIS_CACHE", "redis_cache"),
    ("FRAPPE_SOCKETIO_PORT", "socketio_port"),
    ("FRAPPE_SOCKETIO_UDS", "socketio_uds"),
];

/// Strings a bench really holds, and near misses.
fn config_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => pick(&[
            "9000", " 9000 ", "0", "65535", "65536", "70000", "-1", "ninety", "1e3", "15",
            "16", "15.40.2", "v16", "14", "99999999999999999999",
            "redis://127.0.0.1:11000", "redis://localhost:13000/0", "rediss://u:p@h:6380",
            "unix:///run/redis.sock", "redis+unix:///tmp/r.sock", "redis://", "redis://:0",
            "redis://[::1", "http://user:hunter2@x", "tcp://h:1",
            "http://127.0.0.1:8000", "https://erp.example.com/", "ftp://x", "http://", "/tmp/rt.sock",
            "a.local", "localhost", "",
        ]),
        2 => any_string(),
        1 => "[a-z+]{1,8}://[ -~]{0,24}",
    ]
}

fn config_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => config_string().prop_map(Value::String),
        2 => json_number(),
        1 => select(vec![-1i64, 0, 1, 15, 16, 65_535, 65_536, 10_000, 10_001])
            .prop_map(Value::from),
        1 => select(vec![0.001f64, 1e-10, 1e300, -0.5, 18446744073709551616.0])
            .prop_map(Value::from),
        2 => json_value(),
    ]
}

/// A value the service accepts for `key` (protocol §1.2).
fn valid_value(key: &str) -> BoxedStrategy<Value> {
    let port = || {
        prop_oneof![
            (1u16..).prop_map(Value::from),
            (1u16..).prop_map(|p| Value::from(format!(" {p} "))),
        ]
    };
    let seconds = || {
        prop_oneof![
            (1u32..100_000).prop_map(Value::from),
            (1e-6f64..1e6).prop_map(Value::from),
        ]
    };
    match key {
        "socketio_port" | "webserver_port" => port().boxed(),
        "redis_queue" | "redis_cache" => pick(&[
            "redis://127.0.0.1:11000",
            "redis://localhost:13000/0",
            "redis://u:p@h:6380",
            "unix:///run/redis.sock",
            "redis+unix:///tmp/r.sock",
            "redis://[::1]:6379",
        ])
        .prop_map(Value::from)
        .boxed(),
        "realtime_callback_url" => pick(&[
            "http://127.0.0.1:8000",
            "https://erp.example.com/",
            "http://[::1]:8000/base/",
        ])
        .prop_map(Value::from)
        .boxed(),
        "realtime_callback_timeout" | "realtime_reconnect_window" => seconds().boxed(),
        "realtime_callback_concurrency" => (1u32..=10_000).prop_map(Value::from).boxed(),
        "realtime_client_events_per_second" | "realtime_client_event_burst" => prop_oneof![
            (1u32..1_000_000).prop_map(Value::from),
            (1f64..1e6).prop_map(Value::from),
        ]
        .boxed(),
        "realtime_max_rooms_per_socket" => (4u32..100_000).prop_map(Value::from).boxed(),
        "realtime_frappe_version" => prop_oneof![
            (13u32..100).prop_map(Value::from),
            pick(&["13", "14", "15", "16", "14.82.1", "15.40.2", " 16.0.0-dev"])
                .prop_map(Value::from),
        ]
        .boxed(),
        "realtime_admin_token" => "tok-SECRET-[a-zA-Z0-9]{16,24}"
            .prop_map(Value::from)
            .boxed(),
        "developer_mode" => json_value().boxed(),
        "redis_socketio" => pick(&["redis://127.0.0.1:12000", "redis://localhost:13000/0"])
            .prop_map(Value::from)
            .boxed(),
        "redis_async_broker_port" => prop_oneof![
            (1u32..65_536).prop_map(Value::from),
            pick(&["redis://localhost:12311"]).prop_map(Value::from),
        ]
        .boxed(),
        "allow_cors" => prop_oneof![
            pick(&["*", "https://portal.example"]).prop_map(Value::from),
            vec(pick(&["https://a.example", "https://b.example", "*"]), 0..3).prop_map(Value::from),
        ]
        .boxed(),
        // socketio_uds, default_site, webserver_host: any string.
        _ => any_string().prop_map(Value::from).boxed(),
    }
}

/// A `common_site_config.json`-like object: each known key absent or set (mostly to a value
/// the service accepts, sometimes to anything), plus unrelated keys.
fn config_object() -> impl Strategy<Value = Map<String, Value>> {
    let known: Vec<_> = CONFIG_KEYS
        .iter()
        .map(|&key| {
            // `redis_queue` is usually there, `socketio_uds` (which wins over the port) rarely.
            let present = match key {
                "redis_queue" => 0.8,
                "socketio_uds" => 0.1,
                _ => 0.35,
            };
            prop::option::weighted(
                present,
                prop_oneof![9 => valid_value(key), 1 => config_value()],
            )
            .prop_map(move |value| value.map(|value| (key.to_owned(), value)))
        })
        .collect();
    (known, btree_map(any_string(), json_value(), 0..3)).prop_map(|(known, random)| {
        let mut object: Map<String, Value> = random.into_iter().collect();
        object.extend(known.into_iter().flatten());
        object
    })
}

/// A file's text: a JSON object, or something that is not (broken JSON, another JSON type,
/// invalid UTF-8).
#[derive(Debug, Clone)]
enum FileText {
    Object(Map<String, Value>),
    Other(Vec<u8>),
}

fn file_text() -> impl Strategy<Value = FileText> {
    prop_oneof![
        24 => config_object().prop_map(FileText::Object),
        1 => nearly_json().prop_map(FileText::Other),
        1 => json_value().prop_map(|v| FileText::Other(v.to_string().into_bytes())),
        1 => vec(any::<u8>(), 0..64).prop_map(FileText::Other),
    ]
}

impl FileText {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Object(object) => Value::Object(object.clone()).to_string().into_bytes(),
            Self::Other(bytes) => bytes.clone(),
        }
    }

    /// The object the loader gets out of the file, or `None` when it must refuse the file.
    fn object(&self) -> Option<Map<String, Value>> {
        let text = std::str::from_utf8(&self.bytes()).ok()?.to_owned();
        match serde_json::from_str(&text).ok()? {
            Value::Object(object) => Some(object),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Bench {
    /// `sites/common_site_config.json`; absent when `None`.
    common: Option<FileText>,
    /// The legacy `config.json`; absent when `None`.
    legacy: Option<FileText>,
    env: BTreeMap<&'static str, String>,
    frappe_version: Option<u32>,
}

/// What a `FRAPPE_*` variable holds: mostly a value its key accepts, sometimes anything.
fn env_value(key: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => valid_value(key).prop_map(|value| match value {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        1 => config_string(),
        1 => any_string(),
    ]
}

fn bench_case() -> impl Strategy<Value = Bench> {
    let env: Vec<_> = ENV_VARS
        .iter()
        .map(|&(var, key)| {
            prop::option::weighted(0.25, env_value(key)).prop_map(move |v| v.map(|v| (var, v)))
        })
        .collect();
    (
        prop_oneof![9 => file_text().prop_map(Some), 1 => Just(None)],
        prop_oneof![
            6 => Just(None),
            2 => config_object().prop_map(|o| Some(FileText::Object(o))),
            1 => file_text().prop_map(Some),
        ],
        env,
        prop::option::weighted(
            0.1,
            prop_oneof![select(vec![0u32, 14, 15, 16, 17, u32::MAX]), any::<u32>()],
        ),
    )
        .prop_map(|(common, legacy, env, frappe_version)| Bench {
            common,
            legacy,
            env: env.into_iter().flatten().collect(),
            frappe_version,
        })
}

/// The generated admin token (`tok-SECRET-…`, which no other value can contain), if it is
/// the one in force.
fn admin_token(layered: &BTreeMap<String, (Value, String)>) -> Option<&str> {
    match layered.get("realtime_admin_token") {
        Some((Value::String(token), _)) if token.starts_with("tok-SECRET-") => Some(token),
        _ => None,
    }
}

fn write(dir: &Path, relative: &str, text: &FileText) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text.bytes()).expect("write");
}

proptest! {
    #![proptest_config(config(CONFIG_CASES))]

    /// Any bench never panics the loader; every error names its file or variable and the
    /// key; a file that is not a JSON object is refused by name; what loads comes from the
    /// right layer.
    #[test]
    fn config_loads_or_names_the_problem(case in bench_case()) {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(legacy) = &case.legacy {
            write(dir.path(), "config.json", legacy);
        }
        if let Some(common) = &case.common {
            write(dir.path(), "sites/common_site_config.json", common);
        }
        let env = case.env.clone();
        let overrides = Overrides { frappe_version: case.frappe_version };
        let result = Config::load_with_env(dir.path(), &overrides, |var| env.get(var).cloned());

        let legacy = case.legacy.as_ref().map(|t| (t.object(), "config.json"));
        let common = case.common.as_ref().map(|t| (t.object(), "common_site_config.json"));
        let full_path = |name: &str| {
            let relative = if name == "config.json" { name.to_owned() } else { format!("sites/{name}") };
            dir.path().join(relative).display().to_string()
        };
        // A file that is not a JSON object stops everything, the first one first.
        if let Some((_, name)) = [legacy.clone(), common.clone()]
            .into_iter()
            .flatten()
            .find(|(object, _)| object.is_none())
        {
            let error = result.as_ref().err().map(ToString::to_string);
            prop_assert!(
                error.as_deref().is_some_and(|e| e.contains(&full_path(name))),
                "{} is broken but the loader said {:?}", name, error
            );
            let file_error = matches!(result,
                Err(ConfigError::Json { .. } | ConfigError::NotAnObject { .. } | ConfigError::Read { .. }));
            prop_assert!(file_error, "not a file error: {:?}", result);
            return Ok(());
        }

        // The layers as Node merges them: truthy file keys, then non-empty variables.
        let mut layered: BTreeMap<String, (Value, String)> = BTreeMap::new();
        for (object, name) in [legacy, common].into_iter().flatten() {
            for (key, value) in object.expect("checked above") {
                if js_truthy(&value) {
                    layered.insert(key, (value, name.to_owned()));
                }
            }
        }
        for &(var, key) in ENV_VARS {
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                layered.insert(key.to_owned(), (Value::from(value.clone()), var.to_owned()));
            }
        }

        match result {
            Ok(config) => {
                if config.frappe_version.has_site_namespaces() {
                    let queue = layered.get("redis_queue").and_then(|(v, _)| v.as_str());
                    prop_assert_eq!(Some(config.redis_queue.as_str()), queue);
                } else {
                    // Frappe 13 and 14: redis_socketio, else redis_async_broker_port, else
                    // their default.
                    let socketio = layered.get("redis_socketio").and_then(|(v, _)| v.as_str());
                    let broker = layered.get("redis_async_broker_port").map(|(v, _)| match v {
                        Value::Number(port) => format!("redis://localhost:{port}"),
                        other => other.as_str().unwrap_or_default().to_owned(),
                    });
                    let expected = socketio
                        .map(str::to_owned)
                        .or(broker)
                        .unwrap_or_else(|| "redis://localhost:12311".to_owned());
                    prop_assert_eq!(&config.redis_queue, &expected);
                }
                let site = layered.get("default_site").and_then(|(v, _)| v.as_str());
                prop_assert_eq!(config.default_site.as_deref(), site);
                let cache = layered.get("redis_cache").and_then(|(v, _)| v.as_str());
                prop_assert_eq!(config.redis_cache.as_deref(), cache);
                prop_assert!(config.callback_concurrency >= 1);
                prop_assert!(!config.callback_timeout.is_zero());
                prop_assert!(!config.reconnect_window.is_zero());
                if let Some(token) = admin_token(&layered) {
                    let shown = format!("{config:?}");
                    prop_assert!(!shown.contains(token), "the admin token is shown");
                }
            }
            Err(ConfigError::MissingRedisQueue) => {
                prop_assert!(!layered.contains_key("redis_queue"));
                prop_assert!(ConfigError::MissingRedisQueue.to_string().contains("redis_queue"));
            }
            Err(error @ ConfigError::BadValue { .. }) => {
                let message = error.to_string();
                let ConfigError::BadValue { origin, key, .. } = &error else { unreachable!() };
                // The key named is one that was set, in the layer named.
                let from_flag = matches!(origin, Source::Flag(_));
                prop_assert!(layered.contains_key(*key) || from_flag, "{}", message);
                prop_assert!(message.contains(&format!("key `{key}`")), "{}", message);
                match origin {
                    Source::File(path) => {
                        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        prop_assert!(message.contains(&*path.to_string_lossy()), "{}", message);
                        prop_assert_eq!(layered.get(*key).map(|(_, from)| from.as_str()), Some(name));
                    }
                    Source::Env(var) => {
                        let named = format!("environment variable {var}");
                        prop_assert!(message.contains(&named), "{}", message);
                        prop_assert!(ENV_VARS.contains(&(*var, *key)), "{}", message);
                        prop_assert_eq!(layered.get(*key).map(|(_, from)| from.as_str()), Some(*var));
                    }
                    Source::Flag(flag) => {
                        prop_assert!(message.contains(flag), "{}", message);
                        prop_assert_eq!(*key, "realtime_frappe_version");
                        prop_assert!(case.frappe_version.is_some());
                    }
                }
                if let Some(token) = admin_token(&layered) {
                    prop_assert!(!message.contains(token), "{}", message);
                }
            }
            Err(error) => {
                return Err(TestCaseError::fail(format!("unexpected error for valid files: {error}")));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. handlers::EventArgs
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(EVENT_ARGS_JSON_CASES))]

    /// Any array of arguments deserialises, keeping every argument in order; anything else
    /// is an error, never a panic.
    #[test]
    fn event_args_take_any_array(value in prop_oneof![
        3 => vec(json_value(), 0..8).prop_map(Value::Array),
        1 => json_value(),
    ]) {
        let from_value = serde_json::from_value::<EventArgs>(value.clone());
        let from_text = serde_json::from_str::<EventArgs>(&value.to_string());
        match &value {
            Value::Array(items) => {
                let args = from_value.expect("an array is always arguments");
                // The fields are private; Debug shows them all.
                prop_assert_eq!(format!("{args:?}"), format!("EventArgs({items:?})"));
                let wire: Vec<Value> = items.iter().map(through_the_wire).collect();
                let args = from_text.expect("an array's text is always arguments");
                prop_assert_eq!(format!("{args:?}"), format!("EventArgs({wire:?})"));
            }
            _ => {
                prop_assert!(from_value.is_err());
                prop_assert!(from_text.is_err());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(EVENT_ARGS_BYTES_CASES))]

    /// Arbitrary and nearly-JSON bytes never panic the deserialiser.
    #[test]
    fn event_args_never_panic_on_bytes(bytes in prop_oneof![
        vec(any::<u8>(), 0..128),
        nearly_json(),
    ]) {
        let _ = serde_json::from_slice::<EventArgs>(&bytes);
    }
}
