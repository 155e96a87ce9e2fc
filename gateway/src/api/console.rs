//! The console: one page, its script and its style, embedded in the binary so it works in a
//! room without internet (no CDN, map tiles or web fonts). `/` and `/console` lead to
//! `/console/`; the page logs in and reads everything else from `/api/v1`.
//!
//! Each asset is gzipped once, on first use, and sent compressed to browsers that accept it,
//! with an ETag (a reload costs a 304) and a Content-Security-Policy that lets the page talk
//! to its own origin only.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::AppState;

/// One embedded file.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/console/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../console/index.html"),
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/app.js"),
    },
    Asset {
        path: "/console/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/app.css"),
    },
];

/// The page may load and connect to its own origin only (`data:` for the empty favicon).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// An asset compressed, and its ETag.
#[derive(Debug)]
struct Prepared {
    gzip: Vec<u8>,
    etag: HeaderValue,
}

fn prepared() -> &'static [Prepared] {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                // Writing to a Vec cannot fail.
                let gzip = gz
                    .write_all(a.body)
                    .and_then(|()| gz.finish())
                    .unwrap_or_default();
                let hash = hex::encode(&Sha256::digest(a.body)[..8]);
                let etag = HeaderValue::from_str(&format!("\"{hash}\""))
                    .unwrap_or(HeaderValue::from_static("\"0\""));
                Prepared { gzip, etag }
            })
            .collect()
    })
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let (asset, prepared) = (&ASSETS[i], &prepared()[i]);
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::VARY, HeaderValue::from_static("Accept-Encoding")),
        (header::ETAG, prepared.etag.clone()),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if headers.get(header::IF_NONE_MATCH) == Some(&prepared.etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if gzip_ok && !prepared.gzip.is_empty() {
        let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (common, [content_type, encoding], prepared.gzip.clone()).into_response()
    } else {
        (common, [content_type], asset.body).into_response()
    }
}

/// The console's routes (no identity needed: the page holds no data until its owner logs in).
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }));
    for (i, asset) in ASSETS.iter().enumerate() {
        router = router.route(
            asset.path,
            get(move |h: HeaderMap| async move { serve(i, &h) }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_compresses_and_the_page_names_only_embedded_files() {
        for (a, p) in ASSETS.iter().zip(prepared()) {
            assert!(
                !p.gzip.is_empty() && p.gzip.len() < a.body.len(),
                "{}",
                a.path
            );
        }
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for src in page.split(['"', '\'']).filter(|s| s.starts_with('/')) {
            assert!(
                ASSETS.iter().any(|a| a.path == src),
                "index.html refers to {src}, which is not embedded"
            );
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
