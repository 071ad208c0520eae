//! The opening handshake (RFC 6455 §4): checking a client's upgrade request and
//! building the `101` answer on the server side, and the request a client sends.

use std::fmt;

use tungstenite::handshake::derive_accept_key;

use crate::http::Request;

/// An accepted upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The protocol the connection is bound to.
    pub protocol: String,
    /// The complete `101 Switching Protocols` response to send.
    pub response: Vec<u8>,
}

/// A refused upgrade: the HTTP status to answer and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// `400`, or `426` for a WebSocket version other than 13.
    pub status: u16,
    /// One line, no newline, e.g. `missing or invalid Sec-WebSocket-Key`.
    pub reason: &'static str,
    /// A header the response must carry (`Sec-WebSocket-Version: 13` with `426`).
    pub extra_header: Option<(&'static str, &'static str)>,
}

impl Refused {
    const fn bad(reason: &'static str) -> Self {
        Self {
            status: 400,
            reason,
            extra_header: None,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for Refused {}

/// Whether the request asks for a WebSocket upgrade (an `Upgrade` header listing
/// `websocket`), so the HTTP layer hands the connection to [`accept`].
#[must_use]
pub fn is_upgrade(req: &Request) -> bool {
    has_token(req, "upgrade", b"websocket")
}

/// The server side of the upgrade. `protocols` are the protocols this listener
/// serves; `default` is used when the request names none, or names only
/// protocols not served (then the response names no protocol, which a client
/// that offered some may refuse). The client's first served protocol wins.
///
/// # Errors
/// `400` for a malformed handshake: a method other than `GET`, HTTP/1.0, no
/// `websocket` in `Upgrade`, no `upgrade` token in `Connection`, a missing,
/// repeated or invalid `Sec-WebSocket-Key` (it must be the base64 of 16 bytes);
/// and when no protocol can be chosen (none served among those requested, or
/// none requested, and no default): the listener has nothing at that name, but
/// the client can fix its request, so `400` rather than `404`. `426` with
/// `Sec-WebSocket-Version: 13` when the version is missing, repeated or not 13.
pub fn accept(
    req: &Request,
    protocols: &[&str],
    default: Option<&str>,
) -> Result<Accepted, Refused> {
    if req.method() != "GET" {
        return Err(Refused::bad(
            "WebSocket upgrade with a method other than GET",
        ));
    }
    if req.version() != 1 {
        return Err(Refused::bad("WebSocket upgrade needs HTTP/1.1"));
    }
    if !is_upgrade(req) {
        return Err(Refused::bad("Upgrade header without websocket"));
    }
    if !has_token(req, "connection", b"upgrade") {
        return Err(Refused::bad("Connection header without upgrade"));
    }
    let mut versions = values(req, "sec-websocket-version");
    if versions.next() != Some(b"13") || versions.next().is_some() {
        return Err(Refused {
            status: 426,
            reason: "unsupported WebSocket version",
            extra_header: Some(("Sec-WebSocket-Version", "13")),
        });
    }
    let mut keys = values(req, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_key(key) => key,
        _ => return Err(Refused::bad("missing or invalid Sec-WebSocket-Key")),
    };

    let served = |name: &[u8]| {
        protocols
            .iter()
            .copied()
            .chain(default)
            .find(|p| p.as_bytes() == name)
    };
    let requested = || values(req, "sec-websocket-protocol").flat_map(list);
    let (protocol, named) = match requested().find_map(served) {
        Some(p) => (p, true),
        None => match default {
            Some(p) => (p, false),
            None if requested().next().is_none() => {
                return Err(Refused::bad(
                    "no Sec-WebSocket-Protocol and no default protocol",
                ));
            }
            None => return Err(Refused::bad("none of the requested protocols is served")),
        },
    };

    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    response.extend_from_slice(derive_accept_key(key).as_bytes());
    response.extend_from_slice(b"\r\n");
    if named {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(protocol.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    Ok(Accepted {
        protocol: protocol.to_owned(),
        response,
    })
}

/// The client side: the upgrade request for `path` on `host` with `key` (16
/// random bytes), and the `Sec-WebSocket-Accept` value the server must answer.
/// Characters HTTP forbids in those places (controls, and spaces in `path`) are
/// dropped; an empty `path` is `/`.
#[must_use]
pub fn client_request(
    host: &str,
    path: &str,
    origin: Option<&str>,
    protocol: Option<&str>,
    key: [u8; 16],
) -> (Vec<u8>, String) {
    let key = base64(&key);
    let mut req = Vec::with_capacity(256);
    req.extend_from_slice(b"GET ");
    let path_start = req.len();
    req.extend(path.bytes().filter(|&b| b > b' ' && b != 0x7F));
    if req.len() == path_start {
        req.push(b'/');
    }
    req.extend_from_slice(b" HTTP/1.1\r\n");
    header(&mut req, "Host", host);
    header(&mut req, "Upgrade", "websocket");
    header(&mut req, "Connection", "Upgrade");
    header(&mut req, "Sec-WebSocket-Key", &key);
    header(&mut req, "Sec-WebSocket-Version", "13");
    if let Some(origin) = origin {
        header(&mut req, "Origin", origin);
    }
    if let Some(protocol) = protocol {
        header(&mut req, "Sec-WebSocket-Protocol", protocol);
    }
    req.extend_from_slice(b"\r\n");
    (req, derive_accept_key(key.as_bytes()))
}

fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend(value.bytes().filter(|&b| b >= b' ' && b != 0x7F));
    out.extend_from_slice(b"\r\n");
}

/// The values of every header line named `name`.
fn values<'r>(req: &'r Request, name: &'static str) -> impl Iterator<Item = &'r [u8]> {
    req.headers()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The non-empty elements of a comma-separated list, without surrounding spaces.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a `name` header lists `token` (case-insensitive).
fn has_token(req: &Request, name: &'static str, token: &[u8]) -> bool {
    values(req, name)
        .flat_map(list)
        .any(|t| t.eq_ignore_ascii_case(token))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_value(c: u8) -> Option<u8> {
    BASE64.iter().position(|&a| a == c).map(|v| v as u8)
}

/// Whether `key` is the canonical base64 of 16 bytes: 22 characters, `==`, and
/// no stray bits in the last character.
fn is_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&c| base64_value(c).is_some())
        && base64_value(key[21]).is_some_and(|v| v & 0x0F == 0)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::http::{Event, Limits, ServerConn};

    /// Parses `head` with the HTTP layer and runs `f` on the request.
    fn with_request<T>(head: &[u8], f: impl FnOnce(&Request) -> T) -> T {
        let now = Instant::now();
        let mut conn = ServerConn::new(Limits::DEFAULT, now);
        assert_eq!(conn.feed(head, now), head.len());
        assert_eq!(conn.poll_event(now, 1024), Some(Event::Head));
        f(conn.request().expect("a request"))
    }

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    /// `RFC_REQUEST` with `from` replaced by `to` (the head must contain `from`).
    fn variant(from: &str, to: &str) -> Vec<u8> {
        let text = std::str::from_utf8(RFC_REQUEST).unwrap();
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1).into_bytes()
    }

    fn accept_bytes(
        head: &[u8],
        protocols: &[&str],
        default: Option<&str>,
    ) -> Result<Accepted, Refused> {
        with_request(head, |req| accept(req, protocols, default))
    }

    #[test]
    fn rfc_6455_example_is_accepted_with_its_accept_key() {
        let accepted = accept_bytes(RFC_REQUEST, &["superchat", "chat"], None).unwrap();
        // The client prefers `chat` (listed first); the listener's order does not matter.
        assert_eq!(accepted.protocol, "chat");
        assert_eq!(
            accepted.response,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn protocol_falls_back_to_default_without_naming_it() {
        let none_named = variant("Sec-WebSocket-Protocol: chat, superchat\r\n", "");
        let accepted = accept_bytes(&none_named, &["echo"], Some("echo")).unwrap();
        assert_eq!(accepted.protocol, "echo");
        let text = String::from_utf8(accepted.response).unwrap();
        assert!(!text.contains("Sec-WebSocket-Protocol"), "{text}");

        let accepted = accept_bytes(RFC_REQUEST, &["echo"], Some("echo")).unwrap();
        assert_eq!(accepted.protocol, "echo");

        let refused = accept_bytes(RFC_REQUEST, &["echo"], None).unwrap_err();
        assert_eq!(
            (refused.status, refused.reason),
            (400, "none of the requested protocols is served")
        );
        let refused = accept_bytes(&none_named, &["echo"], None).unwrap_err();
        assert_eq!(refused.status, 400);
    }

    #[test]
    fn protocols_listed_on_several_lines_are_all_considered() {
        let head = variant(
            "Sec-WebSocket-Protocol: chat, superchat\r\n",
            "Sec-WebSocket-Protocol: a,,  b \r\nSec-WebSocket-Protocol: superchat\r\n",
        );
        let accepted = accept_bytes(&head, &["superchat"], None).unwrap();
        assert_eq!(accepted.protocol, "superchat");
    }

    #[test]
    fn tokens_are_matched_in_lists_case_insensitively() {
        let head = variant("Connection: Upgrade", "Connection: keep-alive, UPGRADE");
        let head = String::from_utf8(head)
            .unwrap()
            .replace("Upgrade: websocket", "Upgrade: WebSocket");
        assert!(accept_bytes(head.as_bytes(), &["chat"], None).is_ok());
    }

    #[test]
    fn malformed_handshakes_are_refused_with_400() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "GET /chat",
                "POST /chat",
                "WebSocket upgrade with a method other than GET",
            ),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                "Upgrade header without websocket",
            ),
            (
                "Connection: Upgrade",
                "Connection: keep-alive",
                "Connection header without upgrade",
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "",
                "missing or invalid Sec-WebSocket-Key",
            ),
            // 15 bytes.
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25j",
                "missing or invalid Sec-WebSocket-Key",
            ),
            // Stray bits in the last character.
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25jZR==",
                "missing or invalid Sec-WebSocket-Key",
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25jZ!==",
                "missing or invalid Sec-WebSocket-Key",
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
                "missing or invalid Sec-WebSocket-Key",
            ),
        ];
        for (from, to, reason) in cases {
            let refused = accept_bytes(&variant(from, to), &["chat"], None).unwrap_err();
            assert_eq!((refused.status, refused.reason), (400, *reason), "{to}");
            assert_eq!(refused.extra_header, None);
        }
        let http10 = b"GET /chat HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let refused = accept_bytes(http10, &["chat"], Some("chat")).unwrap_err();
        assert_eq!(
            (refused.status, refused.reason),
            (400, "WebSocket upgrade needs HTTP/1.1")
        );
    }

    #[test]
    fn other_versions_get_426_naming_13() {
        for to in [
            "Sec-WebSocket-Version: 8\r\n",
            "",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n",
        ] {
            let refused = accept_bytes(
                &variant("Sec-WebSocket-Version: 13\r\n", to),
                &["chat"],
                None,
            )
            .unwrap_err();
            assert_eq!(refused.status, 426, "{to}");
            assert_eq!(refused.extra_header, Some(("Sec-WebSocket-Version", "13")));
        }
    }

    #[test]
    fn is_upgrade_looks_only_at_the_upgrade_header() {
        assert!(with_request(RFC_REQUEST, is_upgrade));
        assert!(with_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, websocket\r\n\r\n",
            is_upgrade
        ));
        assert!(!with_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
            is_upgrade
        ));
    }

    #[test]
    fn client_request_is_accepted_and_predicts_the_accept_key() {
        let (req, expected) = client_request(
            "device.local",
            "/ws\r\nX: y",
            Some("http://device.local"),
            Some("echo"),
            *b"the sample nonce",
        );
        assert_eq!(expected, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let text = String::from_utf8(req.clone()).unwrap();
        assert!(
            text.starts_with("GET /wsX:y HTTP/1.1\r\nHost: device.local\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "{text}"
        );
        let accepted = accept_bytes(&req, &["echo"], None).unwrap();
        assert_eq!(accepted.protocol, "echo");
        let line = format!("Sec-WebSocket-Accept: {expected}\r\n");
        assert!(
            String::from_utf8(accepted.response)
                .unwrap()
                .contains(&line)
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xFF; 16]), "/////////////////////w==");
        assert!(is_key(base64(&[0xFF; 16]).as_bytes()));
    }
}
