//! The spectator viewer: the static files of `web/`, embedded in the binary, served with a
//! strict Content-Security-Policy and the other headers that keep agent text inert.

use super::AppState;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");
const FAVICON: &str = include_str!("../../web/favicon.svg");

routes!(VIEWER_ROUTES, viewer_routes {
    "/" => get(|h: HeaderMap| async move { page(&h, "text/html; charset=utf-8", INDEX) });
    "/index.html" => get(|h: HeaderMap| async move { page(&h, "text/html; charset=utf-8", INDEX) });
    "/app.js" => get(|h: HeaderMap| async move {
        page(&h, "text/javascript; charset=utf-8", APP_JS)
    });
    "/style.css" => get(|h: HeaderMap| async move { page(&h, "text/css; charset=utf-8", STYLE) });
    "/favicon.svg" => get(|h: HeaderMap| async move { page(&h, "image/svg+xml", FAVICON) });
});

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
