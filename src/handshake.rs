//! The checks Frappe makes on a Socket.IO handshake before it calls the site (spec §3.2, §3.3).
//!
//! Everything here is pure: it reads the headers of the request that opened the engine.io
//! session and either names the credential to validate or says why the client is refused.

use std::fmt;
use std::net::IpAddr;

use http::header::{AUTHORIZATION, COOKIE, HOST, HeaderName, ORIGIN, SEC_WEBSOCKET_KEY};
use http::{HeaderMap, HeaderValue, Request};

use crate::auth::AuthFailure;
use crate::caps::CapExceeded;

/// `X-Frappe-Site-Name`, set by bench's nginx.
const SITE_NAME: HeaderName = HeaderName::from_static("x-frappe-site-name");
/// Set by a proxy on this machine that forwards the client's address (see [`client_ip`]).
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The headers an engine.io session keeps from the request that opened it: the ones
/// [`check`], [`resolve_site`] and [`client_ip`] read, and `Sec-WebSocket-Key`, which
/// engine.io reads from that same request to answer a websocket upgrade. Reading another
/// header from `socket.req_parts()` means adding it here.
pub const SESSION_HEADERS: [HeaderName; 7] = [
    HOST,
    ORIGIN,
    COOKIE,
    AUTHORIZATION,
    SITE_NAME,
    FORWARDED_FOR,
    SEC_WEBSOCKET_KEY,
];

/// Why a handshake is refused. `Display` is the exact text the client gets in `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    InvalidNamespace,
    InvalidOrigin,
    MissingCredentials,
    NoAuthenticationMethod,
    /// The site did not vouch for the credential (or could not be asked).
    Unauthorized(AuthFailure),
    /// A `realtime_max_connections_per_*` cap is full.
    TooManyConnections(CapExceeded),
}

impl Refusal {
    /// A short, bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidNamespace => "invalid_namespace",
            Self::InvalidOrigin => "invalid_origin",
            Self::MissingCredentials => "missing_credentials",
            Self::NoAuthenticationMethod => "no_authentication_method",
            Self::Unauthorized(failure) => failure.kind.as_str(),
            Self::TooManyConnections(cap) => cap.label(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidNamespace => f.write_str("Invalid namespace"),
            Self::InvalidOrigin => f.write_str("Invalid origin"),
            Self::MissingCredentials => f.write_str(
                "Missing cookie and authorization header. Either one needed for authentication.",
            ),
            Self::NoAuthenticationMethod => {
                f.write_str("No authentication method used. Use cookie or authorization header.")
            }
            Self::Unauthorized(failure) => write!(f, "Unauthorized: {}", failure.detail),
            Self::TooManyConnections(cap) => write!(
                f,
                "Too many connections for this {}",
                match cap {
                    CapExceeded::Site => "site",
                    CapExceeded::Ip => "address",
                    CapExceeded::User => "user",
                }
            ),
        }
    }
}

/// What a client presents to prove who it is. `Debug` never shows the secret part.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The `Authorization` header, verbatim (`token k:s`, `Basic …`, `Bearer …`).
    Authorization(String),
    /// The value of the `sid` cookie.
    Sid(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Authorization(_) => f.write_str("Authorization(<redacted>)"),
            Self::Sid(_) => f.write_str("Sid(<redacted>)"),
        }
    }
}

/// A handshake that passed the local checks: who claims to be calling, from where.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub credential: Credential,
    /// The `Origin` header, the default base of callbacks to Frappe (spec §4.3).
    pub origin: String,
}

/// The client's address for per-address caps: the connection's peer, or, when the peer is a
/// proxy on this machine, the address that proxy appended last to `X-Forwarded-For` (earlier
/// entries come from the client and could be anything). Bench's nginx sets no such header, so
/// behind it every client is the loopback address.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer?;
    if !peer.is_loopback() {
        return Some(peer);
    }
    let forwarded = headers
        .get_all(&FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .last()
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    Some(forwarded.unwrap_or(peer))
}

/// Run the checks of spec §3.3 in Frappe's order; the first failure wins and nothing after it
/// runs (Node keeps going after `Invalid namespace`; that defect is deliberately not copied).
pub fn check(
    namespace_site: &str,
    headers: &HeaderMap,
    default_site: Option<&str>,
) -> Result<Accepted, Refusal> {
    if resolve_site(headers, default_site).as_deref() != Some(namespace_site) {
        return Err(Refusal::InvalidNamespace);
    }
    let host = header(headers, HOST.as_str()).map(hostname);
    let origin = header(headers, ORIGIN.as_str());
    let origin = match (host, origin) {
        (Some(host), Some(origin)) if host == hostname(origin) => origin.to_owned(),
        _ => return Err(Refusal::InvalidOrigin),
    };

    let authorization = header(headers, AUTHORIZATION.as_str()).filter(|v| !v.is_empty());
    let cookies = headers.get_all(COOKIE);
    if authorization.is_none() && cookies.iter().next().is_none() {
        return Err(Refusal::MissingCredentials);
    }
    // Authorization wins over the cookie: mobile apps send `sid=Guest` plus a token (#26766).
    let credential = match authorization {
        Some(value) => Credential::Authorization(value.to_owned()),
        None => match sid_cookie(headers) {
            Some(sid) => Credential::Sid(sid),
            None => return Err(Refusal::NoAuthenticationMethod),
        },
    };
    Ok(Accepted { credential, origin })
}

/// The site a handshake is for: `X-Frappe-Site-Name`, then `default_site` when the client
/// reached us as localhost, then the Origin's host, then the Host header's.
pub fn resolve_site(headers: &HeaderMap, default_site: Option<&str>) -> Option<String> {
    if let Some(site) = header(headers, SITE_NAME.as_str()) {
        return Some(hostname(site).to_owned());
    }
    let host = header(headers, HOST.as_str()).map(hostname);
    if let (Some(default_site), Some("localhost" | "127.0.0.1")) = (default_site, host) {
        return Some(default_site.to_owned());
    }
    header(headers, ORIGIN.as_str())
        .map(hostname)
        .or(host)
        .map(str::to_owned)
}

/// The request that opens an engine.io session, reduced to what the session needs to keep.
///
/// engine.io keeps that request's head (`socket.req_parts()`) for the session's whole life.
/// hyper parses a head in place: its URI and every header value are slices of the HTTP
/// connection's read buffer (hyper 1.12 `proto/h1/role.rs`, `Server::parse`), 16 KiB under
/// `axum::serve`, so the kept head pinned that whole buffer long after a websocket upgrade
/// had released the connection. Here the URI and the [`SESSION_HEADERS`] are copied into a
/// right-sized map of their own and the rest is dropped (a browser sends 15 or so headers
/// behind nginx, ~100 bytes of map entry each, plus the values). Method, version and
/// extensions (hyper's upgrade handle among them) are left as they are.
pub fn keep_for_session<B>(request: Request<B>) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    let kept = SESSION_HEADERS
        .iter()
        .map(|name| parts.headers.get_all(name).iter().count())
        .sum();
    let mut headers = HeaderMap::with_capacity(kept);
    for name in &SESSION_HEADERS {
        for value in parts.headers.get_all(name) {
            let copy = HeaderValue::from_bytes(value.as_bytes()).map(|mut copy| {
                copy.set_sensitive(value.is_sensitive());
                copy
            });
            headers.append(name.clone(), copy.unwrap_or_else(|_| value.clone()));
        }
    }
    parts.headers = headers;
    Request::from_parts(parts, body)
}

/// Frappe's notion of a hostname: drop a `scheme://` prefix and any path, then cut at the
/// first `:` (so IPv6 literals are mangled, exactly as in Frappe).
pub fn hostname(value: &str) -> &str {
    let without_scheme = match value.find("://") {
        Some(i) => &value[i + 3..],
        None => value,
    };
    let authority = without_scheme.split('/').next().unwrap_or_default();
    authority.split(':').next().unwrap_or_default()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `sid` cookie across every `Cookie` header; malformed pairs are skipped.
fn sid_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == "sid" && !c.value().is_empty())
        .map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    /// `keep_for_session` keeps what the handshake and engine.io read, in copies that share
    /// nothing with the parsed request (a `from_static` value points into the string below,
    /// as a parsed one points into hyper's read buffer).
    #[test]
    fn session_request_keeps_copies_of_what_the_handshake_reads() {
        const URI: &str = "/socket.io/?EIO=4&transport=websocket";
        const COOKIE_VALUE: &str = "sid=abc; system_user=yes";
        let request = Request::get(http::Uri::from_static(URI))
            .header("host", HeaderValue::from_static("a.local:8000"))
            .header("origin", "http://a.local:8000")
            .header("cookie", HeaderValue::from_static(COOKIE_VALUE))
            .header("cookie", "full_name=A")
            .header("authorization", "token k:s")
            .header("x-frappe-site-name", "a.local")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("user-agent", "Mozilla/5.0")
            .header("accept-language", "en")
            .body(())
            .expect("request");
        let kept = keep_for_session(request);
        let pairs: Vec<(&str, &str)> = kept
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii")))
            .collect();
        assert_eq!(
            pairs,
            [
                ("host", "a.local:8000"),
                ("origin", "http://a.local:8000"),
                ("cookie", COOKIE_VALUE),
                ("cookie", "full_name=A"),
                ("authorization", "token k:s"),
                ("x-frappe-site-name", "a.local"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ]
        );
        assert_eq!(kept.uri(), URI);
        assert_ne!(kept.uri().path().as_ptr(), URI.as_ptr());
        let cookie = kept.headers().get(COOKIE).expect("cookie").as_bytes();
        assert_ne!(cookie.as_ptr(), COOKIE_VALUE.as_ptr());
        assert!(
            kept.headers().capacity() < 16,
            "right-sized: {}",
            kept.headers().capacity()
        );
        let accepted = check("a.local", kept.headers(), None).expect("accepted");
        assert_eq!(
            accepted.credential,
            Credential::Authorization("token k:s".into())
        );
    }

    #[test]
    fn hostname_follows_frappe() {
        assert_eq!(
            hostname("https://erp.example.com:8443/x"),
            "erp.example.com"
        );
        assert_eq!(hostname("erp.example.com:8000"), "erp.example.com");
        assert_eq!(hostname("erp.example.com"), "erp.example.com");
        assert_eq!(hostname(""), "");
    }

    #[test]
    fn site_resolution_order() {
        let all = headers(&[
            ("x-frappe-site-name", "a.local"),
            ("host", "localhost:9000"),
            ("origin", "http://c.local"),
        ]);
        assert_eq!(
            resolve_site(&all, Some("d.local")).as_deref(),
            Some("a.local")
        );
        let local = headers(&[("host", "127.0.0.1:9000"), ("origin", "http://c.local")]);
        assert_eq!(
            resolve_site(&local, Some("d.local")).as_deref(),
            Some("d.local")
        );
        assert_eq!(resolve_site(&local, None).as_deref(), Some("c.local"));
        let host_only = headers(&[("host", "e.local:9000")]);
        assert_eq!(
            resolve_site(&host_only, Some("d.local")).as_deref(),
            Some("e.local")
        );
    }

    #[test]
    fn checks_run_in_order() {
        let wrong_site = headers(&[("host", "b.local"), ("origin", "http://b.local")]);
        assert_eq!(
            check("a.local", &wrong_site, None).err(),
            Some(Refusal::InvalidNamespace)
        );

        let no_origin = headers(&[("host", "a.local"), ("cookie", "sid=x")]);
        assert_eq!(
            check("a.local", &no_origin, None).err(),
            Some(Refusal::InvalidOrigin)
        );

        let cross_origin = headers(&[
            ("x-frappe-site-name", "a.local"),
            ("host", "a.local"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            check("a.local", &cross_origin, None).err(),
            Some(Refusal::InvalidOrigin)
        );

        let base = [("host", "a.local:9000"), ("origin", "http://a.local")];
        assert_eq!(
            check("a.local", &headers(&base), None).err(),
            Some(Refusal::MissingCredentials)
        );
        let mut other_cookie = base.to_vec();
        other_cookie.push(("cookie", "theme=dark"));
        assert_eq!(
            check("a.local", &headers(&other_cookie), None).err(),
            Some(Refusal::NoAuthenticationMethod)
        );
    }

    #[test]
    fn authorization_wins_over_the_sid_cookie() {
        let h = headers(&[
            ("host", "a.local"),
            ("origin", "https://a.local"),
            ("cookie", "sid=Guest; x=1"),
            ("authorization", "token k:s"),
        ]);
        let accepted = check("a.local", &h, None).expect("accepted");
        assert_eq!(
            accepted.credential,
            Credential::Authorization("token k:s".into())
        );
        assert_eq!(accepted.origin, "https://a.local");

        let h = headers(&[
            ("host", "a.local"),
            ("origin", "https://a.local"),
            ("cookie", "full_name=J%20D; sid=abc123"),
        ]);
        let accepted = check("a.local", &h, None).expect("accepted");
        assert_eq!(accepted.credential, Credential::Sid("abc123".into()));
    }

    #[test]
    fn messages_are_frappes() {
        assert_eq!(Refusal::InvalidNamespace.to_string(), "Invalid namespace");
        let failure = AuthFailure::error("Frappe answered HTTP 500".into());
        assert_eq!(
            Refusal::Unauthorized(failure).to_string(),
            "Unauthorized: Frappe answered HTTP 500"
        );
        assert!(!format!("{:?}", Credential::Sid("secret".into())).contains("secret"));
    }

    #[test]
    fn the_client_address_is_the_peer_or_what_a_local_proxy_appended_last() {
        let remote: IpAddr = "203.0.113.9".parse().expect("ip");
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut headers = HeaderMap::new();
        assert_eq!(client_ip(Some(local), &headers), Some(local));
        headers.insert(
            "x-forwarded-for",
            "10.0.0.1, 198.51.100.7".parse().expect("header"),
        );
        assert_eq!(
            client_ip(Some(local), &headers),
            "198.51.100.7".parse().ok()
        );
        assert_eq!(
            client_ip(Some(remote), &headers),
            Some(remote),
            "a remote peer cannot claim another address"
        );
        headers.insert("x-forwarded-for", "not an address".parse().expect("header"));
        assert_eq!(client_ip(Some(local), &headers), Some(local));
        assert_eq!(client_ip(None, &headers), None);
    }
}
