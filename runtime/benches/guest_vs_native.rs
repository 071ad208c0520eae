//! The price of the interpreter: the same `hello` handler as a WebAssembly
//! guest (`guests/hello`) and compiled natively into the runtime, each driven
//! through the same `Context` (HTTP parsing, dispatch, response framing) on one
//! keep-alive connection, without sockets. Rounds alternate between the two so
//! that both see the same machine state; the result is a ratio.
//!
//! Run: `cargo bench -p wasmgate --bench guest_vs_native` (add `-- --quick`
//! for a short run). Prints the result and writes it to
//! `target/bench/guest_vs_native.json`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::context::native::{HELLO_BODY as BODY, Hello};
use wasmgate::{Config, Context};

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: device\r\nUser-Agent: bench\r\n\r\n";

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
    let mut native = device(Handler::Native(|| Box::new(Hello)));
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
    let json = serde_json::json!({
        "bench": "guest_vs_native",
        "command": "cargo bench -p wasmgate --bench guest_vs_native",
        "rounds": rounds,
        "requests_per_round": per_round,
        "native_ns_per_request": n.as_nanos() as u64,
        "guest_ns_per_request": g.as_nanos() as u64,
        "guest_over_native": (ratio * 1000.0).round() / 1000.0,
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        )
        .join("bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join("guest_vs_native.json");
    let text = serde_json::to_string_pretty(&json).expect("json");
    std::fs::write(&path, text + "\n").expect("write the JSON");
    println!("guest_vs_native: wrote {}", path.display());
}
