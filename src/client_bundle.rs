//! The Socket.IO browser client at `/socket.io/socket.io.js` and its siblings.
//!
//! Node's socket.io serves its client bundle under its path by default (`serveClient`), and
//! some pages and custom apps load `/socket.io/socket.io.js` straight from the realtime
//! service instead of using the client Frappe bundles. This binary ships no client of its
//! own: it answers from the copy the bench already installed,
//! `apps/frappe/node_modules/socket.io-client/dist/<file>`, and with 404 when that copy is
//! not there.
//!
//! Only the file names Node serves are routed, each as a fixed route (see [`FILES`]); the
//! name read from disk is always one of these constants, never anything from the request, so
//! no request path can reach another file. Every other request under `/socket.io/` goes on
//! to engine.io (see `server::http_service`).
//!
//! As in Node: `Cache-Control: public, max-age=0`, `ETag: "<version>"` with the client
//! package's version, and 304 for a matching `If-None-Match` (strong or weak).
//!
//! The files are read from disk on every request, not cached: they are rarely asked for
//! (Frappe's own pages bundle their client, and browsers revalidate with the ETag, which
//! costs only a read of the small `package.json`), and `bench update` or a `yarn install`
//! can replace them under a running service, so a cache would need invalidating to stay
//! right. A file is read whole (the largest, the unminified bundle, is about 150 KB).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The client files socket.io 4.8 serves (its `CLIENT_FILES`), all under `/socket.io/`.
pub const FILES: [&str; 8] = [
    "socket.io.js",
    "socket.io.js.map",
    "socket.io.min.js",
    "socket.io.min.js.map",
    "socket.io.esm.min.js",
    "socket.io.esm.min.js.map",
    "socket.io.msgpack.min.js",
    "socket.io.msgpack.min.js.map",
];

/// Where the bench keeps the client package, relative to the bench directory.
const PACKAGE_DIR: &str = "apps/frappe/node_modules/socket.io-client";

/// What Node sends: caches may keep the file but must revalidate it (with the ETag).
const CACHE_CONTROL: &str = "public, max-age=0";
const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
const SOURCE_MAP: &str = "application/json; charset=utf-8";

/// The bench's copy of socket.io-client.
#[derive(Debug, Clone)]
pub struct ClientBundle {
    /// `…/socket.io-client/dist`, holding the [`FILES`].
    dist: PathBuf,
    /// `…/socket.io-client/package.json`, for the version (the ETag).
    package_json: PathBuf,
}

impl ClientBundle {
    pub fn new(bench_dir: &Path) -> Self {
        let package = bench_dir.join(PACKAGE_DIR);
        Self {
            dist: package.join("dist"),
            package_json: package.join("package.json"),
        }
    }

    /// Answer a GET (or HEAD) for `file`, one of [`FILES`].
    pub async fn serve(&self, file: &'static str, request: &HeaderMap) -> Response {
        let path = self.dist.join(file);
        let etag = self.etag().await;
        if let Some(etag) = &etag
            && request
                .get(header::IF_NONE_MATCH)
                .is_some_and(|candidates| matches_etag(candidates, etag))
        {
            // Only while the file is there: a 304 for a file that went away would keep
            // browsers using their stale copy.
            return match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => {
                    (StatusCode::NOT_MODIFIED, cache_headers(Some(etag))).into_response()
                }
                Ok(_) => not_found(),
                Err(e) => read_error(&path, &e),
            };
        }
        match tokio::fs::read(&path).await {
            Ok(body) => {
                let mut headers = cache_headers(etag.as_ref());
                let content_type = if file.ends_with(".map") {
                    SOURCE_MAP
                } else {
                    JAVASCRIPT
                };
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                (StatusCode::OK, headers, body).into_response()
            }
            Err(e) => read_error(&path, &e),
        }
    }

    /// `"<version>"` from the package's `package.json`; `None` (serve without an ETag) when
    /// it cannot be read or the version cannot be a quoted ETag.
    async fn etag(&self) -> Option<HeaderValue> {
        #[derive(serde::Deserialize)]
        struct Package {
            version: String,
        }
        let text = tokio::fs::read(&self.package_json).await.ok()?;
        let package: Package = serde_json::from_slice(&text).ok()?;
        etag_for(&package.version)
    }
}

/// The routes of every client file, for the service to try before engine.io.
pub fn router(bundle: ClientBundle) -> Router {
    let bundle = Arc::new(bundle);
    FILES.into_iter().fold(Router::new(), |router, file| {
        let bundle = bundle.clone();
        router.route(
            &format!("/socket.io/{file}"),
            get(move |headers: HeaderMap| async move { bundle.serve(file, &headers).await }),
        )
    })
}

/// The quoted ETag for a version, if the version has only characters an ETag may hold
/// (visible ASCII other than `"`; RFC 9110 §8.8.3).
fn etag_for(version: &str) -> Option<HeaderValue> {
    let allowed = |c: char| c.is_ascii_graphic() && c != '"';
    if version.is_empty() || !version.chars().all(allowed) {
        return None;
    }
    HeaderValue::from_str(&format!("\"{version}\"")).ok()
}

/// Whether an `If-None-Match` value names `etag`: `*`, or a list holding it, weakly compared
/// (`W/"4.8.1"` matches `"4.8.1"`), as RFC 9110 §13.1.2 asks. Node compares the whole header
/// with `"<version>"` and `W/"<version>"`; every value it accepts is accepted here.
fn matches_etag(candidates: &HeaderValue, etag: &HeaderValue) -> bool {
    let (Ok(candidates), Ok(etag)) = (candidates.to_str(), etag.to_str()) else {
        return false;
    };
    candidates.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

fn cache_headers(etag: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Some(etag) = etag {
        headers.insert(header::ETAG, etag.clone());
    }
    headers
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found\n").into_response()
}

/// 404 when the bench has no such file; anything else (permissions, I/O) is the operator's
/// to see: logged, and a 500.
fn read_error(path: &Path, error: &std::io::Error) -> Response {
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::IsADirectory | ErrorKind::NotADirectory => not_found(),
        _ => {
            tracing::warn!(file = %path.display(), error = %error, "cannot read the socket.io client");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(version: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let package = dir.path().join(PACKAGE_DIR);
        std::fs::create_dir_all(package.join("dist")).expect("mkdir");
        std::fs::write(package.join("dist/socket.io.js"), "/* full */").expect("write");
        std::fs::write(package.join("dist/socket.io.js.map"), "{}").expect("write");
        if let Some(version) = version {
            let json = serde_json::json!({"name": "socket.io-client", "version": version});
            std::fs::write(package.join("package.json"), json.to_string()).expect("write");
        }
        dir
    }

    fn if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body")
            .to_vec()
    }

    #[tokio::test]
    async fn serves_a_file_with_nodes_headers() {
        let dir = bench(Some("4.8.1"));
        let bundle = ClientBundle::new(dir.path());

        let response = bundle.serve("socket.io.js", &HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], JAVASCRIPT);
        assert_eq!(headers[header::ETAG], "\"4.8.1\"");
        assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=0");
        assert_eq!(body(response).await, b"/* full */");

        let response = bundle.serve("socket.io.js.map", &HeaderMap::new()).await;
        assert_eq!(response.headers()[header::CONTENT_TYPE], SOURCE_MAP);
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_while_the_file_exists() {
        let dir = bench(Some("4.8.1"));
        let bundle = ClientBundle::new(dir.path());
        for matching in ["\"4.8.1\"", "W/\"4.8.1\"", "\"x\", \"4.8.1\"", "*"] {
            let response = bundle.serve("socket.io.js", &if_none_match(matching)).await;
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{matching}");
            assert_eq!(response.headers()[header::ETAG], "\"4.8.1\"");
            assert!(body(response).await.is_empty());
        }
        let response = bundle
            .serve("socket.io.js", &if_none_match("\"4.8.0\""))
            .await;
        assert_eq!(response.status(), StatusCode::OK);

        // Known version, but this file is not in the bench: 404, not 304.
        let response = bundle
            .serve("socket.io.min.js", &if_none_match("\"4.8.1\""))
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn missing_package_or_files_are_404_or_served_without_etag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let response = ClientBundle::new(dir.path())
            .serve("socket.io.js", &HeaderMap::new())
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);

        let dir = bench(None);
        let response = ClientBundle::new(dir.path())
            .serve("socket.io.js", &if_none_match("*"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(header::ETAG).is_none());
    }

    #[test]
    fn only_versions_that_fit_in_an_etag_make_one() {
        assert_eq!(etag_for("4.8.1").expect("etag"), "\"4.8.1\"");
        assert_eq!(etag_for("4.8.1-rc.1+b").expect("etag"), "\"4.8.1-rc.1+b\"");
        for bad in ["", "4.8\"1", "4.8 1", "4.8\n1", "4.8.1é"] {
            assert!(etag_for(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn every_file_is_a_plain_name_under_socket_io() {
        for file in FILES {
            assert!(
                file.starts_with("socket.io.") && !file.contains('/'),
                "{file}"
            );
            assert!(file.ends_with(".js") || file.ends_with(".js.map"), "{file}");
        }
    }
}
