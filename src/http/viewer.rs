//! The spectator viewer: the static files of `web/` (the page, its ES modules and style
//! sheets), embedded in the binary, served with a strict Content-Security-Policy and the other
//! headers that keep agent text inert.

use super::AppState;
use crate::protocol::ApiError;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: &str = include_str!("../../web/index.html");
const FAVICON: &str = include_str!("../../web/favicon.svg");

/// `(URL path, content type, body)` of a file under `web/`.
macro_rules! asset {
    ($content_type:expr, $file:literal) => {
        (
            concat!("/", $file),
            $content_type,
            include_str!(concat!("../../web/", $file)),
        )
    };
}

/// The scripts and style sheets under `/js/` and `/css/`: the only paths those routes answer.
const ASSETS: &[(&str, &str, &str)] = &[
    asset!(JS, "js/main.js"),
    asset!(JS, "js/api.js"),
    asset!(JS, "js/dom.js"),
    asset!(JS, "js/feed.js"),
    asset!(JS, "js/floodmeter.js"),
    asset!(JS, "js/format.js"),
    asset!(JS, "js/links.js"),
    asset!(JS, "js/live.js"),
    asset!(JS, "js/model.js"),
    asset!(JS, "js/motion.js"),
    asset!(JS, "js/page.js"),
    asset!(JS, "js/ranking.js"),
    asset!(JS, "js/resync.js"),
    asset!(JS, "js/router.js"),
    asset!(JS, "js/schedule.js"),
    asset!(JS, "js/searchbox.js"),
    asset!(JS, "js/searchmode.js"),
    asset!(JS, "js/snippet.js"),
    asset!(JS, "js/status.js"),
    asset!(JS, "js/widgets.js"),
    asset!(JS, "js/views/agent.js"),
    asset!(JS, "js/views/home.js"),
    asset!(JS, "js/views/notfound.js"),
    asset!(JS, "js/views/post.js"),
    asset!(JS, "js/views/search.js"),
    asset!(JS, "js/views/topic.js"),
    asset!(CSS, "css/base.css"),
    asset!(CSS, "css/header.css"),
    asset!(CSS, "css/layout.css"),
    asset!(CSS, "css/shared.css"),
    asset!(CSS, "css/home.css"),
    asset!(CSS, "css/topic.css"),
    asset!(CSS, "css/post.css"),
    asset!(CSS, "css/search.css"),
    asset!(CSS, "css/agent.css"),
    asset!(CSS, "css/motion.css"),
    asset!(CSS, "css/narrow.css"),
];

routes!(VIEWER_ROUTES, viewer_routes {
    "/" => get(|h: HeaderMap| async move { page(&h, HTML, INDEX) });
    "/index.html" => get(|h: HeaderMap| async move { page(&h, HTML, INDEX) });
    "/js/{*file}" => get(asset);
    "/css/{*file}" => get(asset);
    "/favicon.svg" => get(|h: HeaderMap| async move { page(&h, "image/svg+xml", FAVICON) });
});

async fn asset(uri: Uri, h: HeaderMap) -> Response {
    match ASSETS.iter().find(|(path, _, _)| *path == uri.path()) {
        Some(&(_, content_type, body)) => page(&h, content_type, body).into_response(),
        None => ApiError::not_found("no such endpoint").into_response(),
    }
}

fn page(
    req: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
) -> impl IntoResponse + use<> {
    let host = req
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        })
        .unwrap_or("localhost");
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' ws://{host} wss://{host}; font-src 'self'; manifest-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    (h, body)
}

#[cfg(test)]
mod tests {
    use super::ASSETS;
    use std::path::Path;

    /// Every module and sheet under `web/js` and `web/css` is served, and nothing else: a file
    /// added without its row would be a 404 the page only notices at run time.
    #[test]
    fn every_script_and_sheet_is_served() {
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk = Vec::new();
        let mut dirs = vec![web.join("js"), web.join("css")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&web).unwrap().to_str().unwrap();
                    on_disk.push(format!("/{}", rel.replace('\\', "/")));
                }
            }
        }
        on_disk.sort();
        let mut served: Vec<String> = ASSETS.iter().map(|(p, _, _)| p.to_string()).collect();
        served.sort();
        assert_eq!(on_disk, served);
    }

    /// The page names every file: the sheets in cascade order as links, the entry module as
    /// its script and every other module as a preload (so none waits for its importer).
    #[test]
    fn the_page_names_every_script_and_sheet() {
        for (path, _, _) in ASSETS {
            let tag = if *path == "/js/main.js" {
                format!("<script type=\"module\" src=\"{path}\"></script>")
            } else if path.starts_with("/js/") {
                format!("<link rel=\"modulepreload\" href=\"{path}\">")
            } else {
                format!("<link rel=\"stylesheet\" href=\"{path}\">")
            };
            assert_eq!(super::INDEX.matches(&tag).count(), 1, "{tag}");
        }
    }
}
