//! The web client's files, embedded in the binary (plain HTML, CSS and JS; no
//! build step, nothing fetched from elsewhere).

/// One embedded file: its content type and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// The page's policy: its own files and WebSocket connections to its own host only.
pub const CSP: &str = "Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

/// The file served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", include_bytes!("web/index.html")),
        "/app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("web/app.js"),
        ),
        "/style.css" => ("text/css; charset=utf-8", include_bytes!("web/style.css")),
        "/icon.svg" => ("image/svg+xml", include_bytes!("web/icon.svg")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}
