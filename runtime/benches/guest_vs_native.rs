//! The price of the interpreter: the same handlers as WebAssembly guests
//! (`guests/hello`, `guests/ws-echo`) and compiled natively into the runtime
//! (`context::native::{Hello, Echo}`), each driven through the same `Context`
//! (HTTP parsing, dispatch, response framing; WebSocket framing) without
//! sockets: keep-alive GETs on one connection, then 64-byte WebSocket echoes on
//! another, one message per read and then eight per read (as a pipelining
//! client's messages arrive: the guest takes all eight in one entry,
//! `wasmgate_receive_next`). Rounds alternate between the two so that both see the same machine
//! state; the results are ratios.
//!
//! A third pair prices the interpreter's floor for a request: a WAT guest
//! whose `HTTP` callback is one `lws_return_http_status` (no SDK), against
//! a native handler making the same response. No guest can spend less per
//! request than an entry into wasmi and one host call.
//!
//! Run: `cargo bench -p wasmgate --bench guest_vs_native` (add `-- --quick`
//! for a short run). Prints the result and writes it to
//! `target/bench/guest_vs_native.json`.
//!
//! `-- --profile guest` (or `native`, `floor-guest`, `floor-native`) runs
//! one side alone, 1,000 of each
//! load and then 10,000, and measures nothing: for callgrind, whose
//! `--toggle-collect=guest_vs_native::run` then counts the 11,000 HTTP
//! requests only (`run_ws` the echoes).

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmgate::Context;
use wasmgate::config::Handler;
use wasmgate::context::NativeProtocol;
use wasmgate::context::native::{Echo, HELLO_BODY as BODY};
use wasmgate::guest::{Call, reason};

#[path = "../../tests/support/hello_echo.rs"]
mod hello_echo;
#[path = "../../tests/support/ws_frame.rs"]
mod ws_frame;

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: device\r\nUser-Agent: bench\r\n\r\n";

/// The upgrade to the echo protocol.
const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: device\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";
/// Size of the echoed messages.
const MESSAGE: usize = 64;
/// Messages per read in the pipelined WebSocket rounds.
const PIPELINED: usize = 8;

/// The floor's guest, protocol `hello`: it wants `HTTP` only and answers
/// it with one host call, `lws_return_http_status(wsi, 200, BODY)`.
const FLOOR_GUEST: &str = r#"(module
    (import "lws" "lws_return_http_status" (func $status (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\00\00\00\00\04\00\00\00\00\03\00\00\05\00\00\00")
    (data (i32.const 768) "hello")
    (data (i32.const 2048) "hello world\0a")
    (func (export "wasmgate_protocol") (result i32) (i32.const 0))
    (func (export "wasmgate_wants") (param $why i32) (result i32)
      (i32.eq (local.get $why) (i32.const 12)))
    (func (export "callback") (param $wsi i32) (param i32) (param i32) (param i32) (param i32) (result i32)
      (drop (call $status (local.get $wsi) (i32.const 200) (i32.const 2048) (i32.const 12)))
      (i32.const 0)))"#;

/// The floor's native handler: the response `lws_return_http_status`
/// makes, from `HTTP` only.
#[derive(Debug)]
struct Status;

impl NativeProtocol for Status {
    fn wants(&self, why: i32) -> bool {
        why == reason::HTTP
    }

    fn callback(&mut self, call: &mut Call, _why: i32, _input: &[u8]) -> i32 {
        let http = &mut call.http;
        http.respond_simple(200, "text/html; charset=utf-8", BODY, false);
        call.completed = Some(http.finish_response());
        0
    }
}

/// The floor's pair: [`FLOOR_GUEST`] and [`Status`] at `/hello`.
fn floor_pair() -> (Context, Context) {
    let module = wat::parse_str(FLOOR_GUEST).expect("the floor's WAT parses");
    let guest = hello_echo::device(Handler::Wasm(module), Handler::Native(|| Box::new(Echo)));
    let native = hello_echo::device(
        Handler::Native(|| Box::new(Status)),
        Handler::Native(|| Box::new(Echo)),
    );
    (guest, native)
}

/// Serves `n` requests on one connection; returns the time per request.
/// Never inlined: callgrind's `--toggle-collect` finds it by name.
#[inline(never)]
fn run(ctx: &mut Context, n: u32) -> Duration {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let now = Instant::now();
    let id = ctx.accept(0, peer, now).expect("a free slot");
    let mut expected_len = 0;
    // The drivers keep their list of connections to flush; so does this loop.
    let mut dirty = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let taken = ctx.receive(id, REQUEST, now);
        debug_assert_eq!(taken, REQUEST.len());
        ctx.service(now);
        let tx = ctx.transmit(id);
        if i == 0 {
            assert!(
                tx.starts_with(b"HTTP/1.1 200 OK\r\n") && tx.ends_with(BODY),
                "{tx:?}"
            );
            expected_len = tx.len();
        }
        assert_eq!(tx.len(), expected_len, "every response is the same");
        let len = black_box(tx).len();
        ctx.transmitted(id, len, now);
        ctx.drain_dirty(&mut dirty);
        dirty.clear();
    }
    let per_request = start.elapsed() / n;
    ctx.close(id, now);
    per_request
}

/// Echoes `n` 64-byte messages on one WebSocket, `per_read` of them
/// arriving together; returns the time per message. Never inlined, as
/// [`run`].
#[inline(never)]
fn run_ws(ctx: &mut Context, n: u32, per_read: usize) -> Duration {
    let peer: SocketAddr = "127.0.0.1:40001".parse().expect("address");
    let now = Instant::now();
    let id = ctx.accept(0, peer, now).expect("a free slot");
    ctx.receive(id, UPGRADE, now);
    ctx.service(now);
    let tx = ctx.transmit(id);
    assert!(tx.starts_with(b"HTTP/1.1 101 "), "{tx:?}");
    let len = tx.len();
    ctx.transmitted(id, len, now);
    let _ = ctx.take_dirty();
    // A masked binary frame, as a client sends it.
    let payload: Vec<u8> = (0..MESSAGE).map(|i| i as u8).collect();
    let frame = ws_frame::client_frame(true, 0x2, &payload).repeat(per_read);
    let reads = n / per_read as u32;
    // The drivers keep their list of connections to flush; so does this loop.
    let mut dirty = Vec::new();
    let start = Instant::now();
    for _ in 0..reads {
        let taken = ctx.receive(id, &frame, now);
        debug_assert_eq!(taken, frame.len());
        ctx.service(now);
        let tx = ctx.transmit(id);
        assert_eq!(
            tx.len(),
            (2 + MESSAGE) * per_read,
            "the echoes come back whole"
        );
        let len = black_box(tx).len();
        ctx.transmitted(id, len, now);
        ctx.drain_dirty(&mut dirty);
        dirty.clear();
    }
    let per_message = start.elapsed() / (reads * per_read as u32);
    ctx.close(id, now);
    per_message
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs every load on one side only (`--profile`); the floor's contexts
/// serve requests only.
fn profile(ctx: &mut Context, websocket: bool) {
    for n in [1_000, 10_000] {
        run(ctx, n);
        if websocket {
            run_ws(ctx, n, 1);
            run_ws(ctx, n, PIPELINED);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, per_round) = if quick { (5, 2_000) } else { (15, 20_000) };
    let (mut guest, mut native) = hello_echo::guest_and_native();
    let (mut floor_guest, mut floor_native) = floor_pair();
    if let Some(side) = args
        .iter()
        .position(|a| a == "--profile")
        .map(|i| args.get(i + 1))
    {
        match side.map(String::as_str) {
            Some("guest") => profile(&mut guest, true),
            Some("native") => profile(&mut native, true),
            Some("floor-guest") => profile(&mut floor_guest, false),
            Some("floor-native") => profile(&mut floor_native, false),
            _ => panic!("--profile takes `guest`, `native`, `floor-guest` or `floor-native`"),
        }
        return;
    }
    // Warm up both (first instance creation, caches).
    for ctx in [&mut guest, &mut native] {
        run(ctx, 1_000);
        run_ws(ctx, 1_000, 1);
        run_ws(ctx, 1_000, PIPELINED);
    }
    run(&mut floor_guest, 1_000);
    run(&mut floor_native, 1_000);
    let (mut g, mut n, mut gw, mut nw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut gp, mut np, mut gf, mut nf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        g.push(run(&mut guest, per_round));
        n.push(run(&mut native, per_round));
        gw.push(run_ws(&mut guest, per_round, 1));
        nw.push(run_ws(&mut native, per_round, 1));
        gp.push(run_ws(&mut guest, per_round, PIPELINED));
        np.push(run_ws(&mut native, per_round, PIPELINED));
        gf.push(run(&mut floor_guest, per_round));
        nf.push(run(&mut floor_native, per_round));
    }
    let (g, n) = (median(g), median(n));
    let (gw, nw) = (median(gw), median(nw));
    let (gp, np) = (median(gp), median(np));
    let (gf, nf) = (median(gf), median(nf));
    let ratio = g.as_secs_f64() / n.as_secs_f64();
    let ws_ratio = gw.as_secs_f64() / nw.as_secs_f64();
    let piped_ratio = gp.as_secs_f64() / np.as_secs_f64();
    let floor_ratio = gf.as_secs_f64() / nf.as_secs_f64();
    println!(
        "guest_vs_native: {rounds} alternating rounds of {per_round} keep-alive GETs \
         and {per_round} {MESSAGE}-byte WebSocket echoes (one, then {PIPELINED} per read) each"
    );
    println!("  HTTP  native handler : {:>8.0} ns/request", n.as_nanos());
    println!("        wasm guest     : {:>8.0} ns/request", g.as_nanos());
    println!(
        "        guest / native : {ratio:.2}x  (the interpreter adds {:.0}%)",
        (ratio - 1.0) * 100.0
    );
    println!("  WS    native handler : {:>8.0} ns/message", nw.as_nanos());
    println!("        wasm guest     : {:>8.0} ns/message", gw.as_nanos());
    println!(
        "        guest / native : {ws_ratio:.2}x  (the interpreter adds {:.0}%)",
        (ws_ratio - 1.0) * 100.0
    );
    println!(
        "  WS {PIPELINED} per read native  : {:>8.0} ns/message",
        np.as_nanos()
    );
    println!("        wasm guest     : {:>8.0} ns/message", gp.as_nanos());
    println!(
        "        guest / native : {piped_ratio:.2}x  (the interpreter adds {:.0}%)",
        (piped_ratio - 1.0) * 100.0
    );
    println!(
        "  HTTP, one host call (the floor) native : {:>6.0} ns/request",
        nf.as_nanos()
    );
    println!("        wasm guest     : {:>8.0} ns/request", gf.as_nanos());
    println!(
        "        guest / native : {floor_ratio:.2}x  (an entry and one host call add {:.0}%)",
        (floor_ratio - 1.0) * 100.0
    );
    let json = serde_json::json!({
        "bench": "guest_vs_native",
        "command": "cargo bench -p wasmgate --bench guest_vs_native",
        "rounds": rounds,
        "requests_per_round": per_round,
        "native_ns_per_request": n.as_nanos() as u64,
        "guest_ns_per_request": g.as_nanos() as u64,
        "guest_over_native": (ratio * 1000.0).round() / 1000.0,
        "ws_message_bytes": MESSAGE,
        "ws_native_ns_per_message": nw.as_nanos() as u64,
        "ws_guest_ns_per_message": gw.as_nanos() as u64,
        "ws_guest_over_native": (ws_ratio * 1000.0).round() / 1000.0,
        "ws_pipelined_per_read": PIPELINED,
        "ws_pipelined_native_ns_per_message": np.as_nanos() as u64,
        "ws_pipelined_guest_ns_per_message": gp.as_nanos() as u64,
        "ws_pipelined_guest_over_native": (piped_ratio * 1000.0).round() / 1000.0,
        "floor_native_ns_per_request": nf.as_nanos() as u64,
        "floor_guest_ns_per_request": gf.as_nanos() as u64,
        "floor_guest_over_native": (floor_ratio * 1000.0).round() / 1000.0,
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || {
                let runtime = Path::new(env!("CARGO_MANIFEST_DIR"));
                runtime.parent().expect("in the workspace").join("target")
            },
            PathBuf::from,
        )
        .join("bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join("guest_vs_native.json");
    let text = serde_json::to_string_pretty(&json).expect("json");
    std::fs::write(&path, text + "\n").expect("write the JSON");
    println!("guest_vs_native: wrote {}", path.display());
}
