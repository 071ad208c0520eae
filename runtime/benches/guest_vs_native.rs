//! The price of the interpreter: the same `hello` handler as a WebAssembly
//! guest (`guests/hello`) and compiled natively into the runtime, each driven
//! through the same `Context` (HTTP parsing, dispatch, response framing) on one
//! keep-alive connection, without sockets. Rounds alternate between the two so
//! that both see the same machine state; the result is a ratio.
//!
//! Run: `cargo bench -p wasmgate --bench guest_vs_native` (add `-- --quick`
//! for a short run).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::context::NativeProtocol;
use wasmgate::guest::{Call, reason};
use wasmgate::http::Completion;
use wasmgate::{Config, Context};

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: device\r\nUser-Agent: bench\r\n\r\n";
const BODY: &[u8] = b"hello world\n";

/// `guests/hello`, written against the runtime's API instead of the `lws`
/// imports: the same calls in the same order.
#[derive(Debug)]
struct NativeHello;

impl NativeProtocol for NativeHello {
    fn callback(&mut self, call: &mut Call, why: i32, _input: &[u8]) -> i32 {
        if why != reason::HTTP {
            return 0;
        }
        let http = &mut call.http;
        let written = http
            .begin_head(200)
            .and_then(|()| http.add_header(b"content-type", b"text/plain"))
            .and_then(|()| http.set_content_length(Some(BODY.len() as u64)))
            .and_then(|()| http.finalize_head())
            .and_then(|()| http.write_body(BODY, true));
        if written.is_err() {
            return 1;
        }
        let done = http.finish_response();
        call.completed = Some(done);
        if done == Completion::Close { -1 } else { 0 }
    }
}

fn device(handler: Handler) -> Context {
    let config = Config {
        name: "bench".into(),
        listeners: vec![Listener {
            name: "http".into(),
            port: 80,
            mounts: vec![Mount {
                prefix: "/hello".into(),
                protocol: "hello".into(),
            }],
            websocket: Vec::new(),
            default_websocket: None,
            tls: None,
        }],
        protocols: vec![Protocol {
            name: "hello".into(),
            handler,
        }],
        limits: Limits::DEFAULT,
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients: Vec::new(),
        trust: None,
    };
    Context::new(config, Instant::now()).expect("bench device starts")
}

/// Serves `n` requests on one connection; returns the time per request.
fn run(ctx: &mut Context, n: u32) -> Duration {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let now = Instant::now();
    let id = ctx.accept(0, peer, now).expect("a free slot");
    let mut expected_len = 0;
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
        let _ = ctx.take_dirty();
    }
    let per_request = start.elapsed() / n;
    ctx.close(id, now);
    per_request
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round) = if quick { (5, 2_000) } else { (15, 20_000) };
    let mut guest = device(Handler::Wasm(wasmgate_guests::HELLO.to_vec()));
    let mut native = device(Handler::Native(|| Box::new(NativeHello)));
    // Warm up both (first instance creation, caches).
    run(&mut guest, 1_000);
    run(&mut native, 1_000);
    let (mut g, mut n) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        g.push(run(&mut guest, per_round));
        n.push(run(&mut native, per_round));
    }
    let (g, n) = (median(g), median(n));
    let ratio = g.as_secs_f64() / n.as_secs_f64();
    println!("guest_vs_native: {rounds} alternating rounds of {per_round} keep-alive GETs each");
    println!("  native handler : {:>8.0} ns/request", n.as_nanos());
    println!("  wasm guest     : {:>8.0} ns/request", g.as_nanos());
    println!(
        "  guest / native : {ratio:.2}x  (the interpreter adds {:.0}%)",
        (ratio - 1.0) * 100.0
    );
}
