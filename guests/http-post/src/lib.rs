//! The lws port's HTTP POST example (ESP-IDF), as a guest on the idiomatic
//! layer. Protocol `http`:
//!
//! - every request logs `HTTP: <path>`;
//! - `POST` (any path, as in the lws example) logs each body piece (`HTTP_BODY: N bytes: <text>`, cut to one log
//!   line) and, once the body is complete, the total and its FNV-1a hash (to
//!   check the body arrived intact), then answers `200
//!   application/json` `{"status": "success", "message": "Received your request."}`;
//! - `GET /` (or `HEAD`) answers a small HTML page naming the device and these
//!   endpoints; `GET /status` answers JSON with the requests seen and the uptime;
//! - `GET /stream?kib=N` streams N KiB (default 16, at most 1024) of numbered
//!   lines with no `Content-Length` (chunked for HTTP/1.1), one KiB per
//!   `HTTP_WRITEABLE` callback, as lws guests stream large answers;
//! - anything else gets the guest's own `404` page (`lws_return_http_status`).
//!
//! Run it: `cargo run -p wasmgate-sim -- sim` starts the default device, which
//! mounts it (`builtin:http-post`) at `/`: `curl -i -d 'hello=device'
//! http://127.0.0.1:8080/` and watch the simulator's log.
//!
//! Corners cut: the body is logged, not parsed or echoed; the request counter and
//! start time live in the instance, so they restart when a new instance (after a
//! trap or an upload) takes over; the page names a fixed device, not the config's.

#![no_std]
// A guest only: built for wasm32 (its statics are `Sync` only there); it has no host
// tests, so a host build (`cargo test` in this workspace) compiles nothing.
#![cfg(target_arch = "wasm32")]

use core::fmt::Write;

use wasmgate_guest::lws::lws_now_usecs;
use wasmgate_guest::{Flow, FmtBuf, GuestCell, HttpHandler, Lossy, Method, Request, lwsl_user};

const INDEX: &str = "<!DOCTYPE html>\n\
<html><head><title>wasmgate simulated device</title></head><body>\n\
<h1>wasmgate simulated device</h1>\n\
<p>Served by the <code>http</code> protocol, a WebAssembly guest.</p>\n\
<ul>\n\
<li><code>GET /</code>: this page</li>\n\
<li><code>POST</code> (any path): logs the body and answers a JSON acknowledgement</li>\n\
<li><code>GET /status</code>: requests seen and uptime, as JSON</li>\n\
</ul>\n\
</body></html>\n";

const ACK: &str = r#"{"status": "success", "message": "Received your request."}"#;

/// Requests seen by this instance.
static REQUESTS: GuestCell<u32> = GuestCell::new(0);
/// `lws_now_usecs` at `PROTOCOL_INIT`.
static STARTED_US: GuestCell<i64> = GuestCell::new(0);

/// Per request: body bytes received so far (and their FNV-1a hash), KiB
/// still to stream.
#[derive(Clone, Copy, Default)]
struct Session {
    received: usize,
    fnv: u32,
    to_stream: u32,
    streamed: u32,
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

/// FNV-1a (32 bits) of `bytes`, continuing from `hash`: lets a client check
/// that the body arrived intact.
fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    hash
}

/// One KiB of the `/stream` answer: `block NNNNNN ` then dots, then a newline.
fn stream_block(n: u32) -> [u8; 1024] {
    let mut block = [b'.'; 1024];
    block[..6].copy_from_slice(b"block ");
    let mut digits = n;
    for i in (6..12).rev() {
        block[i] = if digits == 0 && i < 11 {
            b' '
        } else {
            b'0' + (digits % 10) as u8
        };
        digits /= 10;
    }
    block[12] = b' ';
    block[1023] = b'\n';
    block
}

struct HttpPost;

impl HttpHandler for HttpPost {
    type Session = Session;

    fn init() -> bool {
        STARTED_US.set(lws_now_usecs());
        true
    }

    fn on_request(req: &mut Request<'_, Session>, path: &str) -> Flow {
        lwsl_user!("HTTP: {}", path);
        let requests = REQUESTS.update(|n| n.wrapping_add(1));
        match (req.method(), path) {
            // Wait for the body; the answer comes from `on_body_complete`.
            (Method::Post, _) if req.has_body() => Flow::Continue,
            // No body (`Content-Length: 0`): no `HTTP_BODY_COMPLETION` will come.
            (Method::Post, _) => req.respond_json(200, ACK),
            (Method::Get | Method::Head, "/") => req.respond_html(200, INDEX),
            (Method::Get | Method::Head, "/stream") => {
                let mut arg = [0u8; 8];
                let kib = req
                    .query_arg("kib", &mut arg)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(16)
                    .min(1024);
                req.session().to_stream = kib;
                match req
                    .start(200, "text/plain", None)
                    .and_then(|()| req.ask_writeable())
                {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Close,
                }
            }
            (Method::Get | Method::Head, "/status") => {
                let uptime_ms = (lws_now_usecs() - STARTED_US.get()) / 1000;
                let mut json = FmtBuf::<96>::new();
                let _ = write!(
                    json,
                    r#"{{"requests": {requests}, "uptime_ms": {uptime_ms}}}"#
                );
                req.respond_json(200, json.as_str())
            }
            _ => req.return_status(404, "Nothing here: try GET /"),
        }
    }

    fn on_writeable(req: &mut Request<'_, Session>) -> Flow {
        let Session {
            to_stream,
            streamed,
            ..
        } = *req.session();
        if streamed == to_stream {
            return req.finish(b"").unwrap_or(Flow::Close);
        }
        match req.write(&stream_block(streamed)) {
            Ok(()) => req.session().streamed += 1,
            Err(wasmgate_guest::Error::NoSpace) => {}
            Err(_) => return Flow::Close,
        }
        match req.ask_writeable() {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    fn on_body(req: &mut Request<'_, Session>, chunk: &[u8]) -> Flow {
        let session = req.session();
        if session.received == 0 {
            session.fnv = FNV_OFFSET;
        }
        session.received += chunk.len();
        session.fnv = fnv1a(session.fnv, chunk);
        lwsl_user!("HTTP_BODY: {} bytes: {}", chunk.len(), Lossy(chunk));
        Flow::Continue
    }

    fn on_body_complete(req: &mut Request<'_, Session>) -> Flow {
        let Session { received, fnv, .. } = *req.session();
        lwsl_user!(
            "HTTP_BODY_COMPLETION: {} bytes in total, fnv1a {:08x}",
            received,
            fnv
        );
        req.respond_json(200, ACK)
    }
}

wasmgate_guest::export_http!(
    HttpPost,
    name = "http",
    rx_buffer_size = 1024,
    max_sessions = 8,
);
