//! A guest that misbehaves on purpose, to test that a guest cannot hurt the
//! runtime. Protocol `faulty`, by the path's last segment (so any mount works):
//!
//! - `/ok`: `200` `ok\n`, proof the instance (or its replacement) still serves;
//! - `/trap`: panics, so the callback traps (`500`, instance retired);
//! - `/loop`: loops forever calling `lws_now_usecs` (runs out of fuel);
//! - `/grow`: asks `memory.grow` for 4096 pages (256 MiB); a refusal that does
//!   not trap already makes it panic (`memory.grow refused`); if the growth is
//!   allowed it answers `200` `grew from N pages\n`, so a test sees the limit
//!   was not enforced;
//! - `/badptr`: calls `lws_write` with a range outside memory and panics when it
//!   gets `BAD_POINTER`, as it should (`500`);
//! - `/badptr-status`: the same call, answered `200` `lws_write returned N\n`, so
//!   a test can see the host returned -1 and did not trap;
//! - `/spin`: asks for `HTTP_WRITEABLE` again in every one, writing nothing
//!   (the runtime rate-limits it and gives up after `response_timeout_ms`);
//! - `/late-trap`: answers `200`, then traps in `HTTP_DROP_PROTOCOL`;
//! - `/stall`: asks for `HTTP_WRITEABLE` and then never answers (the runtime
//!   gives up after `response_timeout_ms` with `504`);
//! - `/header`: `200` with the value of request header `X-Probe`, or `404`;
//! - `/arg`: `200` with the value of URL argument `q`, or `404`;
//! - `/session`: `200` `sessions busy: N\n`, the requests in flight in this
//!   instance (this one included);
//! - anything else: the runtime's `404` (the guest answers nothing).
//!
//! Run it: not on the default device; add it to a config
//! (`wasmgate sim --print-default-config` is a start) as `[[protocol]] name =
//! "faulty"`, `module = "builtin:faulty"`, mount it at `/faulty`, run
//! `cargo run -p wasmgate-sim -- sim --config FILE`, then `curl -i
//! http://127.0.0.1:8080/faulty/trap` and `/faulty/ok`. The tests load it directly.
//!
//! Corners cut: a growth that succeeds is not written to (touching memory by
//! address would need `unsafe`; the host allocates it on growth anyway); the
//! busy count lives in the instance and restarts with a new one.

#![no_std]
// A guest only: built for wasm32 (memory.grow and its statics exist only there); it has no host
// tests, so a host build (`cargo test` in this workspace) compiles nothing.
#![cfg(target_arch = "wasm32")]

use core::arch::wasm32::memory_grow;
use core::fmt::Write;

use wasmgate_guest::abi::{self, BAD_POINTER};
use wasmgate_guest::lws::lws_now_usecs;
use wasmgate_guest::{Flow, FmtBuf, GuestCell, HttpHandler, Request, WriteMode};

/// Requests between `on_request` and their end, in this instance.
static BUSY: GuestCell<u32> = GuestCell::new(0);

/// Per request: whether it is counted in [`BUSY`], and what to misbehave on
/// after `on_request`.
#[derive(Clone, Copy, Default)]
struct Session {
    counted: bool,
    /// `/spin`: ask for `HTTP_WRITEABLE` again on every one, writing nothing.
    spin: bool,
    /// `/late-trap`: trap in `HTTP_DROP_PROTOCOL`, after the answer went out.
    trap_when_done: bool,
}

struct Faulty;

impl HttpHandler for Faulty {
    type Session = Session;

    fn on_request(req: &mut Request<'_, Session>, path: &str) -> Flow {
        BUSY.update(|n| n + 1);
        req.session().counted = true;
        match path.rsplit('/').next().unwrap_or_default() {
            "ok" => req.respond(200, "text/plain", b"ok\n"),
            "trap" => panic!("trap requested"),
            "loop" => loop {
                // A host call per turn: the loop cannot be optimized away and
                // burns fuel until the runtime stops it.
                lws_now_usecs();
            },
            "grow" => {
                let old = memory_grow::<0>(4096);
                if old == usize::MAX {
                    panic!("memory.grow refused");
                }
                text(req, format_args!("grew from {old} pages\n"))
            }
            "badptr" => {
                if bad_write(req) == BAD_POINTER {
                    panic!("lws_write refused a bad pointer");
                }
                req.respond(200, "text/plain", b"lws_write took a bad pointer\n")
            }
            "badptr-status" => {
                let ret = bad_write(req);
                text(req, format_args!("lws_write returned {ret}\n"))
            }
            "spin" => {
                req.session().spin = true;
                match req.ask_writeable() {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Close,
                }
            }
            "late-trap" => {
                req.session().trap_when_done = true;
                req.respond(200, "text/plain", b"answered, trapping next\n")
            }
            "stall" => match req.ask_writeable() {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Close,
            },
            "header" => {
                let mut buf = [0u8; 128];
                match req.header("x-probe", &mut buf) {
                    Ok(value) => text(req, format_args!("{value}\n")),
                    Err(_) => req.return_status(404, "no X-Probe header"),
                }
            }
            "arg" => {
                let mut buf = [0u8; 128];
                match req.query_arg("q", &mut buf) {
                    Ok(value) => text(req, format_args!("{value}\n")),
                    Err(_) => req.return_status(404, "no q argument"),
                }
            }
            "session" => {
                let busy = BUSY.get();
                text(req, format_args!("sessions busy: {busy}\n"))
            }
            _ => Flow::Continue,
        }
    }

    fn on_writeable(req: &mut Request<'_, Session>) -> Flow {
        if req.session().spin && req.ask_writeable().is_err() {
            return Flow::Close;
        }
        Flow::Continue
    }

    fn on_done(session: &mut Session) {
        uncount(session);
        if session.trap_when_done {
            panic!("trap after the transaction completed");
        }
    }

    fn on_closed(session: &mut Session) {
        uncount(session);
    }
}

fn uncount(session: &mut Session) {
    if session.counted {
        BUSY.update(|n| n.saturating_sub(1));
        session.counted = false;
    }
}

/// `lws_write` of 64 bytes at 0xFFFF_FF00, far past this module's memory. The raw
/// import is safe to call with any range: the host only reads, after checking.
fn bad_write(req: &Request<'_, Session>) -> i32 {
    abi::lws_write(
        req.wsi().raw(),
        0xFFFF_FF00_u32 as i32,
        64,
        WriteMode::HTTP.raw(),
    )
}

/// Answers `200 text/plain` with formatted text.
fn text(req: &mut Request<'_, Session>, args: core::fmt::Arguments<'_>) -> Flow {
    let mut body = FmtBuf::<64>::new();
    let _ = body.write_fmt(args);
    req.respond(200, "text/plain", body.as_bytes())
}

wasmgate_guest::export_http!(
    Faulty,
    name = "faulty",
    rx_buffer_size = 256,
    max_sessions = 4,
);
