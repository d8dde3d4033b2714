//! The last refused handshakes, for the operators' status page: the diagnosis of "Invalid
//! origin" or "Invalid namespace" needs the headers that decided it, which no log line keeps
//! together. Only those headers are kept (Host, Origin, `X-Frappe-Site-Name`), never a
//! credential, each cut to a bounded length.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use http::HeaderMap;
use http::header::{HOST, ORIGIN};
use serde::Serialize;

/// How many refusals are kept; the oldest goes first.
const KEPT: usize = 50;
/// The most characters kept of a header value: enough for any host or origin, and a hostile
/// client cannot make the page large.
const HEADER_MAX_CHARS: usize = 200;

/// One refused handshake as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedHandshake {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The site of the metrics: the one the handshake resolved to, else the namespace's.
    pub site: String,
    pub namespace: String,
    /// The refusal's metric label (`invalid_origin`, `unauthorized`, …).
    pub reason: &'static str,
    /// What the client was told in `connect_error`.
    pub message: String,
    pub transport: &'static str,
    pub host: Option<String>,
    pub origin: Option<String>,
    /// `X-Frappe-Site-Name`, as bench's nginx sets it.
    pub site_name: Option<String>,
}

impl RefusedHandshake {
    /// The headers that decide a handshake's site and origin, from `headers`.
    pub fn with_headers(mut self, headers: &HeaderMap) -> Self {
        let value = |name: &str| {
            headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()))
                .map(|text| text.chars().take(HEADER_MAX_CHARS).collect::<String>())
        };
        self.host = value(HOST.as_str());
        self.origin = value(ORIGIN.as_str());
        self.site_name = value("x-frappe-site-name");
        self
    }
}

/// The last [`KEPT`] refused handshakes.
#[derive(Debug, Default)]
pub struct RecentRefusals(Mutex<VecDeque<RefusedHandshake>>);

impl RecentRefusals {
    pub fn record(&self, refused: RefusedHandshake) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(refused);
    }

    /// The kept refusals, the newest first.
    pub fn newest_first(&self) -> Vec<RefusedHandshake> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(site: &str) -> RefusedHandshake {
        RefusedHandshake {
            at_ms: 1,
            site: site.to_owned(),
            namespace: "/".to_owned(),
            reason: "invalid_origin",
            message: "Invalid origin".to_owned(),
            transport: "polling",
            host: None,
            origin: None,
            site_name: None,
        }
    }

    #[test]
    fn keeps_the_newest_and_shows_them_first() {
        let recent = RecentRefusals::default();
        for i in 0..KEPT + 3 {
            recent.record(refused(&format!("s{i}")));
        }
        let shown = recent.newest_first();
        assert_eq!(shown.len(), KEPT);
        assert_eq!(shown[0].site, format!("s{}", KEPT + 2));
        assert_eq!(shown[KEPT - 1].site, "s3");
    }

    #[test]
    fn keeps_only_the_deciding_headers_and_bounds_them() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "a.local:8000".parse().expect("header"));
        headers.insert("origin", "x".repeat(5000).parse().expect("header"));
        headers.insert("cookie", "sid=secret".parse().expect("header"));
        headers.insert("authorization", "token k:s".parse().expect("header"));
        let kept = refused("a.local").with_headers(&headers);
        assert_eq!(kept.host.as_deref(), Some("a.local:8000"));
        assert_eq!(kept.origin.map(|o| o.len()), Some(HEADER_MAX_CHARS));
        let shown = format!("{kept:?}", kept = refused("a").with_headers(&headers));
        assert!(!shown.contains("secret") && !shown.contains("k:s"));
    }
}
