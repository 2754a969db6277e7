//! The HTTP request a WebSocket listener connection starts with: an upgrade to
//! WebSocket (`GET /ws`, RFC 6455 §4.2), or a plain GET of the web client's files.
//! httparse reads the request; tungstenite derives the accept key.

use tungstenite::handshake::derive_accept_key;

/// The largest request head accepted (bytes).
pub const MAX_REQUEST: usize = 16 * 1024;

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not a whole request head yet.
    Partial,
    /// A valid upgrade: reply [`upgrade_response`], then speak WebSocket on the
    /// bytes after `consumed`.
    Upgrade {
        /// The client's `Sec-WebSocket-Key`.
        key: String,
        /// The request head's length.
        consumed: usize,
    },
    /// A GET (or HEAD) of `path`, query string removed.
    Get {
        /// The path, e.g. `/` or `/app.js`.
        path: String,
        /// HEAD: headers only.
        head: bool,
    },
    /// A request to refuse: the complete response to send before closing.
    Refuse(Vec<u8>),
}

fn header<'h>(req: &'h httparse::Request<'_, '_>, name: &str) -> Option<&'h str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// How many headers named `name` the request has.
fn count(req: &httparse::Request<'_, '_>, name: &str) -> usize {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether `key` is a `Sec-WebSocket-Key` as RFC 6455 §4.1 makes it: the base64
/// of 16 bytes, which is 22 characters of the base64 alphabet and `==`.
fn is_nonce(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// Reads the request head at the front of `data`.
pub fn parse(data: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(data) {
        // The limit holds however the head arrived: whole in one read too.
        Ok(httparse::Status::Complete(n)) if n <= MAX_REQUEST => n,
        Ok(httparse::Status::Partial) if data.len() <= MAX_REQUEST => return Request::Partial,
        Ok(httparse::Status::Complete(_)) => {
            return Request::Refuse(plain(431, "Request Header Fields Too Large", ""));
        }
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Request::Refuse(plain(431, "Request Header Fields Too Large", ""));
        }
        Err(e) => return Request::Refuse(plain(400, "Bad Request", &format!("{e}\n"))),
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or("/").to_owned();
    let upgrade = header(&req, "upgrade");
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        // RFC 6455 §4.2.1: an HTTP/1.1 (or later) GET.
        if method != "GET"
            || req.version != Some(1)
            || !has_token(header(&req, "connection"), "upgrade")
        {
            return Request::Refuse(plain(400, "Bad Request", "not a WebSocket upgrade\n"));
        }
        // §4.1: a Host header (one; RFC 9112 §3.2: a request with none or with
        // several gets 400), and one Sec-WebSocket-Key: with two, which one the
        // accept key answers would be a guess.
        if count(&req, "host") != 1 {
            return Request::Refuse(plain(400, "Bad Request", "one Host header is required\n"));
        }
        if count(&req, "sec-websocket-key") > 1 {
            return Request::Refuse(plain(
                400,
                "Bad Request",
                "more than one Sec-WebSocket-Key\n",
            ));
        }
        if header(&req, "sec-websocket-version") != Some("13") {
            return Request::Refuse(response(
                426,
                "Upgrade Required",
                "text/plain; charset=utf-8",
                &["Sec-WebSocket-Version: 13"],
                b"WebSocket version 13 only\n",
                false,
            ));
        }
        return match header(&req, "sec-websocket-key") {
            Some(key) if is_nonce(key) => Request::Upgrade {
                key: key.to_owned(),
                consumed,
            },
            Some(_) => Request::Refuse(plain(
                400,
                "Bad Request",
                "Sec-WebSocket-Key is not the base64 of 16 bytes\n",
            )),
            None => Request::Refuse(plain(400, "Bad Request", "Sec-WebSocket-Key missing\n")),
        };
    }
    match method {
        "GET" | "HEAD" => Request::Get {
            path,
            head: method == "HEAD",
        },
        _ => Request::Refuse(response(
            405,
            "Method Not Allowed",
            "text/plain; charset=utf-8",
            &["Allow: GET, HEAD"],
            b"GET or HEAD only\n",
            false,
        )),
    }
}

/// The 101 reply accepting an upgrade with `key`.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// A complete response that closes the connection (`Connection: close`).
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    extra: &[&str],
    body: &[u8],
    head: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    for h in extra {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// The reply to a connection refused because too many are in their HTTP phase.
pub fn busy() -> Vec<u8> {
    response(
        503,
        "Service Unavailable",
        "text/plain; charset=utf-8",
        &["Retry-After: 10"],
        b"too many pending requests, try again later\n",
        false,
    )
}

/// A plain-text response.
pub fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(
        status,
        reason,
        "text/plain; charset=utf-8",
        &[],
        body.as_bytes(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn an_upgrade_is_accepted_with_the_rfc_key() {
        let Request::Upgrade { key, consumed } = parse(UPGRADE.as_bytes()) else {
            panic!("not an upgrade");
        };
        assert_eq!(consumed, UPGRADE.len());
        let reply = String::from_utf8(upgrade_response(&key)).unwrap();
        // RFC 6455 §1.3's example.
        assert!(reply.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(parse(&UPGRADE.as_bytes()[..20]), Request::Partial);
    }

    #[test]
    fn bad_requests_are_refused() {
        let no_key = UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        let v8 = UPGRADE.replace("Version: 13", "Version: 8");
        let post = "POST / HTTP/1.1\r\n\r\n";
        let http10 = UPGRADE.replace("HTTP/1.1", "HTTP/1.0");
        let short_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==");
        let garbage_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "not*base64*at*all*!!!!==");
        let no_host = UPGRADE.replace("Host: x\r\n", "");
        let two_keys = UPGRADE.replace("\r\n\r\n", "\r\nSec-WebSocket-Key: x\r\n\r\n");
        for (req, status) in [
            (no_host.as_str(), "400"),
            (two_keys.as_str(), "400"),
            (no_key.as_str(), "400"),
            (http10.as_str(), "400"),
            (short_key.as_str(), "400"),
            (garbage_key.as_str(), "400"),
            (v8.as_str(), "426"),
            (post, "405"),
            ("\x16\x03\x01garbage\r\n\r\n", "400"),
        ] {
            let Request::Refuse(reply) = parse(req.as_bytes()) else {
                panic!("{req:?} accepted");
            };
            assert!(reply.starts_with(format!("HTTP/1.1 {status}").as_bytes()));
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert!(
            matches!(parse(huge.as_bytes()), Request::Refuse(r) if r.starts_with(b"HTTP/1.1 431"))
        );
        // Over the limit but complete in one read (an attacker's 17 KiB head was
        // served before): refused the same way.
        let whole = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        assert!(
            matches!(parse(whole.as_bytes()), Request::Refuse(r) if r.starts_with(b"HTTP/1.1 431"))
        );
    }

    #[test]
    fn a_get_names_its_path() {
        assert_eq!(
            parse(b"GET /app.js?v=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Get {
                path: "/app.js".into(),
                head: false
            }
        );
    }
}
