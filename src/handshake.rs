//! The checks Frappe makes on a Socket.IO handshake before it calls the site (protocol §3.2, §3.3),
//! widened for clients that are not a browser on the site's own origin.
//!
//! Everything here is pure: it reads the headers of the request that opened the engine.io
//! session, and the CONNECT packet's auth payload, and either names the site and the
//! credential to validate or says why the client is refused.
//!
//! Where we differ from Frappe's Node service, and why (the README has the operator's view):
//! - **No `Origin` is not a cross-site request.** Browsers send `Origin` on every websocket
//!   handshake and every cross-origin request, so a handshake without one comes from a program
//!   (an IDE extension, an agent, a mobile app) holding its own credential, or from a page on
//!   the same origin. Such a handshake passes the origin check; the credential is still
//!   validated by the site. A *different* `Origin` is refused as before, unless the site's
//!   `allow_cors` lists it.
//! - **The root namespace `/`** serves the site the handshake resolves to, in the same order
//!   as for `/<site>`, instead of accepting a socket that can never receive anything.
//! - **The CONNECT auth payload** (`{sid}`, `{token}`, `{authorization}`) is a credential when
//!   the headers carry none: non-browser Socket.IO clients cannot always set headers (a browser
//!   websocket never can).

use std::fmt;
use std::net::IpAddr;

use http::header::{AUTHORIZATION, COOKIE, HOST, HeaderName, ORIGIN, USER_AGENT};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::config::FrappeVersion;
use crate::cors::AllowCors;
use crate::sites::SiteTable;

/// `X-Frappe-Site-Name`, set by bench's nginx.
const SITE_NAME: HeaderName = HeaderName::from_static("x-frappe-site-name");
/// Set by a proxy on this machine that forwards the client's address (see [`client_ip`]).
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The headers an Engine.IO session keeps from the request that opened it: the ones
/// [`check`], [`resolve_site`] and [`client_ip`] read. Reading another header from
/// `Socket::request` means adding it here. The Socket.IO layer also reads `User-Agent`.
pub const SESSION_HEADERS: [HeaderName; 7] = [
    HOST,
    ORIGIN,
    COOKIE,
    AUTHORIZATION,
    SITE_NAME,
    FORWARDED_FOR,
    // Not the handshake's: connection state recovery sends offsets to browsers.
    USER_AGENT,
];

/// Why the local checks refuse a handshake, before the site is asked. `Display` is the exact
/// text the client gets in `connect_error`; `crate::admission` adds the refusals that come
/// later (the site's answer, the connection caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    InvalidNamespace,
    InvalidOrigin,
    MissingCredentials,
    NoAuthenticationMethod,
    /// Frappe 13 and 14's text for [`Rejection::MissingCredentials`].
    NoCookie,
    /// Frappe 13 and 14's text for [`Rejection::NoAuthenticationMethod`].
    NoSid,
}

impl Rejection {
    /// A short, bounded label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidNamespace => "invalid_namespace",
            Self::InvalidOrigin => "invalid_origin",
            Self::MissingCredentials | Self::NoCookie => "missing_credentials",
            Self::NoAuthenticationMethod | Self::NoSid => "no_authentication_method",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidNamespace => "Invalid namespace",
            Self::InvalidOrigin => "Invalid origin",
            Self::MissingCredentials => {
                "Missing cookie and authorization header. Either one needed for authentication."
            }
            Self::NoAuthenticationMethod => {
                "No authentication method used. Use cookie or authorization header."
            }
            Self::NoCookie => "No cookie transmitted.",
            Self::NoSid => "No sid transmitted.",
        })
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

/// A handshake that passed the local checks: who claims to be calling, for which site, from
/// where.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub site: String,
    pub credential: Credential,
    /// The `Origin` header when it is the site's own: the default base of callbacks to Frappe
    /// (protocol §4.3). `None` for a client that sent none (not a browser) and for a page on an
    /// origin the site's `allow_cors` admits: the site is not called back at someone else's
    /// origin (which would hand that server the user's credential), so such clients need a
    /// configured web server.
    pub callback_origin: Option<String>,
}

/// The namespace a handshake asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace<'a> {
    /// `/<site>` (Frappe 15 on).
    Site(&'a str),
    /// `/`: the site comes from the headers alone.
    Root,
}

impl<'a> Namespace<'a> {
    /// From a namespace path (`/` or `/<site>`).
    pub fn from_path(path: &'a str) -> Self {
        match path.strip_prefix('/') {
            Some("") | None => Self::Root,
            Some(site) => Self::Site(site),
        }
    }
}

/// What a handshake is checked against: the bench's configuration and its sites.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `default_site`, for clients that reach us as localhost.
    pub default_site: Option<&'a str>,
    pub sites: &'a SiteTable,
    /// `common_site_config.json`'s `allow_cors`, for sites without their own.
    pub common_allow_cors: &'a AllowCors,
    pub version: FrappeVersion,
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

/// Run the checks of protocol §3.3 in Frappe's order; the first failure wins and nothing after it
/// runs (Node keeps going after `Invalid namespace`; that defect is deliberately not copied).
/// `auth` is the CONNECT packet's payload, if any.
pub fn check(
    namespace: Namespace<'_>,
    headers: &HeaderMap,
    auth: Option<&Value>,
    policy: &Policy<'_>,
) -> Result<Accepted, Rejection> {
    let site = site_of(namespace, headers, policy)?;
    let callback_origin = origin_allowed(&site, headers, policy)?;
    let credential = credential(headers, auth, policy.version)?;
    Ok(Accepted {
        site,
        credential,
        callback_origin,
    })
}

/// The site of a handshake: the namespace's, which the headers must resolve to, or for `/`
/// whatever they resolve to, if the bench has that site.
fn site_of(
    namespace: Namespace<'_>,
    headers: &HeaderMap,
    policy: &Policy<'_>,
) -> Result<String, Rejection> {
    let resolved = resolve_site(headers, policy.default_site, policy.sites);
    match (namespace, resolved) {
        (Namespace::Site(site), Some(resolved)) if resolved == site => Ok(resolved),
        (Namespace::Root, Some(resolved)) if policy.sites.contains(&resolved) => Ok(resolved),
        _ => Err(Rejection::InvalidNamespace),
    }
}

/// Whether a handshake may come from its `Origin`: none (not a browser), the site's own host
/// (as Frappe checks it: Host and Origin name the same host), or one the site's `allow_cors`
/// lists. Returns the origin to call the site back at, the site's own only.
fn origin_allowed(
    site: &str,
    headers: &HeaderMap,
    policy: &Policy<'_>,
) -> Result<Option<String>, Rejection> {
    let Some(origin) = header(headers, ORIGIN.as_str()) else {
        return Ok(None);
    };
    let host = header(headers, HOST.as_str()).map(hostname);
    if host == Some(hostname(origin)) {
        return Ok(Some(origin.to_owned()));
    }
    let own = policy.sites.get(site).map(|s| s.allow_cors);
    let allow_cors = match &own {
        Some(allow_cors) if allow_cors.is_set() => allow_cors,
        _ => policy.common_allow_cors,
    };
    if allow_cors.allows(origin) {
        Ok(None)
    } else {
        Err(Rejection::InvalidOrigin)
    }
}

/// The credential of a handshake: the `Authorization` header, which wins over the cookie
/// (mobile apps send `sid=Guest` plus a token, #26766), then the `sid` cookie, then the
/// CONNECT auth payload when the headers carry neither.
fn credential(
    headers: &HeaderMap,
    auth: Option<&Value>,
    version: FrappeVersion,
) -> Result<Credential, Rejection> {
    if let Some(value) = header(headers, AUTHORIZATION.as_str()).filter(|v| !v.is_empty()) {
        return Ok(Credential::Authorization(value.to_owned()));
    }
    if let Some(sid) = sid_cookie(headers) {
        return Ok(Credential::Sid(sid));
    }
    if let Some(credential) = auth.and_then(payload_credential) {
        return Ok(credential);
    }
    let legacy = !version.has_site_namespaces();
    Err(match (headers.get(COOKIE).is_some(), legacy) {
        (false, false) => Rejection::MissingCredentials,
        (false, true) => Rejection::NoCookie,
        (true, false) => Rejection::NoAuthenticationMethod,
        (true, true) => Rejection::NoSid,
    })
}

/// A credential in the CONNECT auth payload: `{"authorization": "<header value>"}`,
/// `{"token": "<key>:<secret>"}` (Frappe's API keys, sent as `token <key>:<secret>`; a value
/// that already names its scheme, like `Bearer …`, is sent as it is, and one without a `:`
/// is taken for an OAuth bearer token) or `{"sid": "<session id>"}`. Other keys (such as
/// socket.io's own `pid` and `offset`) are ignored.
pub fn payload_credential(auth: &Value) -> Option<Credential> {
    let text = |key: &str| {
        auth.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty() && HeaderValue::from_str(v).is_ok())
    };
    if let Some(value) = text("authorization") {
        return Some(Credential::Authorization(value.to_owned()));
    }
    if let Some(token) = text("token") {
        let value = if token.contains(' ') {
            token.to_owned()
        } else if token.contains(':') {
            format!("token {token}")
        } else {
            format!("Bearer {token}")
        };
        return Some(Credential::Authorization(value));
    }
    text("sid").map(|sid| Credential::Sid(sid.to_owned()))
}

/// The site a handshake is for: `X-Frappe-Site-Name`, then `default_site` when the client
/// reached us as localhost, then the Origin's host, then the Host header's.
///
/// One step beyond Frappe: an Origin that is not a site of the bench (a portal or an SPA on
/// another domain, which the site's `allow_cors` may admit) does not name the site when the
/// Host does; Frappe's order would resolve such a page to its own domain and refuse it.
pub fn resolve_site(
    headers: &HeaderMap,
    default_site: Option<&str>,
    sites: &SiteTable,
) -> Option<String> {
    if let Some(site) = header(headers, SITE_NAME.as_str()) {
        return Some(hostname(site).to_owned());
    }
    let host = header(headers, HOST.as_str()).map(hostname);
    if let (Some(default_site), Some("localhost" | "127.0.0.1")) = (default_site, host) {
        return Some(default_site.to_owned());
    }
    let origin = header(headers, ORIGIN.as_str()).map(hostname);
    let foreign_origin = origin.is_some_and(|origin| !sites.contains(origin));
    let resolved = match host {
        Some(host) if foreign_origin && sites.contains(host) => Some(host),
        _ => origin.or(host),
    };
    resolved.map(str::to_owned)
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
    use crate::sites::SiteSettings;

    fn sites() -> SiteTable {
        [
            ("a.local".to_owned(), SiteSettings::default()),
            (
                "cors.local".to_owned(),
                SiteSettings {
                    allow_cors: AllowCors::Origins(vec!["https://portal.example".into()]),
                },
            ),
        ]
        .into_iter()
        .collect()
    }

    /// `check` for `namespace` on a bench with the sites above, Frappe 16.
    fn check_v16(namespace: &str, headers: &HeaderMap) -> Result<Accepted, Rejection> {
        check_with(namespace, headers, None, FrappeVersion::V16)
    }

    fn check_with(
        namespace: &str,
        headers: &HeaderMap,
        auth: Option<&Value>,
        version: FrappeVersion,
    ) -> Result<Accepted, Rejection> {
        let sites = sites();
        let policy = Policy {
            default_site: None,
            sites: &sites,
            common_allow_cors: &AllowCors::Unset,
            version,
        };
        check(Namespace::from_path(namespace), headers, auth, &policy)
    }

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

    /// A session keeps only [`SESSION_HEADERS`] of the request that opened it; they must be
    /// everything the handshake reads.
    #[test]
    fn the_headers_a_session_keeps_are_enough_for_the_handshake() {
        let full = headers(&[
            ("host", "a.local:8000"),
            ("origin", "http://a.local:8000"),
            ("cookie", "sid=abc; system_user=yes"),
            ("authorization", "token k:s"),
            ("x-frappe-site-name", "a.local"),
            ("accept-language", "en"),
        ]);
        let mut kept = HeaderMap::new();
        for name in &SESSION_HEADERS {
            for value in full.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        assert_eq!(kept.len(), 5);
        let from_full = check_v16("/a.local", &full).expect("accepted");
        let from_kept = check_v16("/a.local", &kept).expect("accepted");
        assert_eq!(from_kept.site, from_full.site);
        assert_eq!(from_kept.credential, from_full.credential);
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
        let none = SiteTable::default();
        let all = headers(&[
            ("x-frappe-site-name", "a.local"),
            ("host", "localhost:9000"),
            ("origin", "http://c.local"),
        ]);
        assert_eq!(
            resolve_site(&all, Some("d.local"), &none).as_deref(),
            Some("a.local")
        );
        let local = headers(&[("host", "127.0.0.1:9000"), ("origin", "http://c.local")]);
        assert_eq!(
            resolve_site(&local, Some("d.local"), &none).as_deref(),
            Some("d.local")
        );
        assert_eq!(
            resolve_site(&local, None, &none).as_deref(),
            Some("c.local")
        );
        let host_only = headers(&[("host", "e.local:9000")]);
        assert_eq!(
            resolve_site(&host_only, Some("d.local"), &none).as_deref(),
            Some("e.local")
        );
    }

    /// A page on another domain reaching the site's host directly: the Host names the site.
    #[test]
    fn a_foreign_origin_does_not_name_the_site_when_the_host_does() {
        let bench = sites();
        let portal = headers(&[
            ("host", "cors.local:9000"),
            ("origin", "https://portal.example"),
        ]);
        assert_eq!(
            resolve_site(&portal, None, &bench).as_deref(),
            Some("cors.local")
        );
        // An Origin that is a site of the bench still wins, as in Frappe.
        let other_site = headers(&[("host", "cors.local"), ("origin", "http://a.local")]);
        assert_eq!(
            resolve_site(&other_site, None, &bench).as_deref(),
            Some("a.local")
        );
        // Neither names a site: Frappe's order, and the namespace check refuses it.
        let nowhere = headers(&[("host", "x.example"), ("origin", "https://portal.example")]);
        assert_eq!(
            resolve_site(&nowhere, None, &bench).as_deref(),
            Some("portal.example")
        );
        let mut with_cookie = portal.clone();
        with_cookie.insert(COOKIE, HeaderValue::from_static("sid=abc"));
        let accepted = check_v16("/cors.local", &with_cookie).expect("the portal is admitted");
        assert_eq!(accepted.site, "cors.local");
    }

    #[test]
    fn checks_run_in_order() {
        let wrong_site = headers(&[("host", "b.local"), ("origin", "http://b.local")]);
        assert_eq!(
            check_v16("/a.local", &wrong_site).err(),
            Some(Rejection::InvalidNamespace)
        );

        let cross_origin = headers(&[
            ("x-frappe-site-name", "a.local"),
            ("host", "a.local"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            check_v16("/a.local", &cross_origin).err(),
            Some(Rejection::InvalidOrigin)
        );

        let base = [("host", "a.local:9000"), ("origin", "http://a.local")];
        assert_eq!(
            check_v16("/a.local", &headers(&base)).err(),
            Some(Rejection::MissingCredentials)
        );
        let mut other_cookie = base.to_vec();
        other_cookie.push(("cookie", "theme=dark"));
        assert_eq!(
            check_v16("/a.local", &headers(&other_cookie)).err(),
            Some(Rejection::NoAuthenticationMethod)
        );
    }

    #[test]
    fn frappe_14_names_a_missing_credential_its_own_way() {
        let base = [("host", "a.local"), ("origin", "http://a.local")];
        let v14 = |pairs: &[(&str, &str)]| {
            check_with("/", &headers(pairs), None, FrappeVersion::V14).err()
        };
        assert_eq!(v14(&base), Some(Rejection::NoCookie));
        assert_eq!(Rejection::NoCookie.to_string(), "No cookie transmitted.");
        let mut other_cookie = base.to_vec();
        other_cookie.push(("cookie", "theme=dark"));
        assert_eq!(v14(&other_cookie), Some(Rejection::NoSid));
        assert_eq!(Rejection::NoSid.to_string(), "No sid transmitted.");
        assert_eq!(Rejection::NoSid.label(), "no_authentication_method");
    }

    /// A program (no Origin) with a valid credential is not a cross-site browser request.
    #[test]
    fn no_origin_is_accepted_and_a_different_one_refused() {
        let program = headers(&[("host", "a.local:9000"), ("cookie", "sid=abc")]);
        let accepted = check_v16("/a.local", &program).expect("accepted");
        assert_eq!(accepted.callback_origin, None);
        assert_eq!(accepted.credential, Credential::Sid("abc".into()));

        let other = headers(&[
            ("x-frappe-site-name", "a.local"),
            ("host", "a.local:9000"),
            ("origin", "http://b.local"),
            ("cookie", "sid=abc"),
        ]);
        assert_eq!(
            check_v16("/a.local", &other).err(),
            Some(Rejection::InvalidOrigin)
        );
    }

    #[test]
    fn allow_cors_admits_the_origins_it_lists_and_only_those() {
        let from = |origin| {
            headers(&[
                ("x-frappe-site-name", "cors.local"),
                ("host", "cors.local"),
                ("origin", origin),
                ("cookie", "sid=abc"),
            ])
        };
        let accepted = check_v16("/cors.local", &from("https://portal.example")).expect("listed");
        assert_eq!(
            accepted.callback_origin, None,
            "the site is never called back at another origin"
        );
        assert_eq!(
            check_v16("/cors.local", &from("https://evil.example")).err(),
            Some(Rejection::InvalidOrigin)
        );
        // a.local lists nothing: the portal is refused there.
        let to_a = headers(&[
            ("x-frappe-site-name", "a.local"),
            ("host", "a.local"),
            ("origin", "https://portal.example"),
            ("cookie", "sid=abc"),
        ]);
        assert_eq!(
            check_v16("/a.local", &to_a).err(),
            Some(Rejection::InvalidOrigin)
        );
        // The common allow_cors applies to sites without their own.
        let sites = sites();
        let any = AllowCors::Any;
        let policy = Policy {
            default_site: None,
            sites: &sites,
            common_allow_cors: &any,
            version: FrappeVersion::V16,
        };
        assert!(check(Namespace::Site("a.local"), &to_a, None, &policy).is_ok());
        let evil_to_cors = from("https://evil.example");
        assert_eq!(
            check(Namespace::Site("cors.local"), &evil_to_cors, None, &policy).err(),
            Some(Rejection::InvalidOrigin),
            "a site's own allow_cors wins over the common one"
        );
    }

    #[test]
    fn the_root_namespace_serves_the_site_the_headers_resolve_to_if_it_exists() {
        let to_a = headers(&[("x-frappe-site-name", "a.local"), ("cookie", "sid=abc")]);
        assert_eq!(check_v16("/", &to_a).expect("accepted").site, "a.local");
        let to_unknown = headers(&[("x-frappe-site-name", "z.local"), ("cookie", "sid=abc")]);
        assert_eq!(
            check_v16("/", &to_unknown).err(),
            Some(Rejection::InvalidNamespace)
        );
        assert_eq!(
            check_v16("/", &headers(&[("cookie", "sid=abc")])).err(),
            Some(Rejection::InvalidNamespace),
            "no header names a site"
        );
    }

    #[test]
    fn the_auth_payload_is_a_credential_when_the_headers_carry_none() {
        let bare = headers(&[("host", "a.local")]);
        let with = |auth: Value| check_with("/a.local", &bare, Some(&auth), FrappeVersion::V16);
        assert_eq!(
            with(serde_json::json!({"sid": "abc"})).map(|a| a.credential),
            Ok(Credential::Sid("abc".into()))
        );
        assert_eq!(
            with(serde_json::json!({"token": "key:secret"})).map(|a| a.credential),
            Ok(Credential::Authorization("token key:secret".into()))
        );
        assert_eq!(
            with(serde_json::json!({"token": "opaque-oauth-token"})).map(|a| a.credential),
            Ok(Credential::Authorization(
                "Bearer opaque-oauth-token".into()
            ))
        );
        assert_eq!(
            with(serde_json::json!({"authorization": "Basic eDp5"})).map(|a| a.credential),
            Ok(Credential::Authorization("Basic eDp5".into()))
        );
        assert_eq!(
            with(serde_json::json!({"pid": "p", "offset": "1"})).err(),
            Some(Rejection::MissingCredentials)
        );
        assert_eq!(
            with(serde_json::json!({"sid": "line\nbreak"})).err(),
            Some(Rejection::MissingCredentials),
            "a value that cannot travel in a header is no credential"
        );
        // The headers' own credential wins.
        let cookie = headers(&[("host", "a.local"), ("cookie", "sid=from-cookie")]);
        let auth = serde_json::json!({"sid": "from-payload"});
        assert_eq!(
            check_with("/a.local", &cookie, Some(&auth), FrappeVersion::V16).map(|a| a.credential),
            Ok(Credential::Sid("from-cookie".into()))
        );
    }

    #[test]
    fn messages_are_frappes() {
        assert_eq!(Rejection::InvalidNamespace.to_string(), "Invalid namespace");
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
