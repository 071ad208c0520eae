//! A WebSocket connection keeps its receive and output buffers from one
//! message to the next, and gives them back once it has been quiet for a
//! second. Measured with a counting allocator around the context (the native
//! echo handler, 16 KiB messages): the second message needs no buffer grown
//! again (before, it grew the heap by 12 KiB again), and a second after it,
//! a small message in between notwithstanding, the device holds what it held
//! before the first.
//!
//! The allocator counts what this test's thread allocates inside the device
//! scope; one test in this binary all the same.

mod common;
#[path = "../../tests/support/counting.rs"]
#[allow(dead_code, reason = "shared with the memory bench")]
mod counting;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use counting::DeviceScope;
use wasmgate::Context;
use wasmgate::config::{Handler, Listener};
use wasmgate::context::ConnId;
use wasmgate::context::native::Echo;

const MESSAGE: usize = 16 * 1024;

/// A masked binary message in one frame, as a client sends it.
fn frame(payload: &[u8]) -> Vec<u8> {
    common::client_frame(true, 2, payload)
}

/// Everything the connection has to send now; counted, not kept, so that
/// the test allocates nothing inside the device scope.
fn drain(ctx: &mut Context, id: ConnId, now: Instant) -> usize {
    let mut sent = 0;
    loop {
        let n = ctx.transmit(id).len();
        if n == 0 {
            return sent;
        }
        ctx.transmitted(id, n, now);
        sent += n;
    }
}

/// Sends `wire` in what the connection takes at a time and returns the
/// bytes it answered once nothing more comes.
fn exchange(ctx: &mut Context, id: ConnId, mut wire: &[u8], now: Instant) -> usize {
    let mut answered = 0;
    for _ in 0..10_000 {
        let taken = ctx.receive(id, wire, now);
        wire = &wire[taken..];
        ctx.service(now);
        let sent = drain(ctx, id, now);
        answered += sent;
        if wire.is_empty() && taken == 0 && sent == 0 {
            return answered;
        }
    }
    panic!("the exchange did not settle");
}

#[test]
fn buffers_are_kept_between_messages_and_given_back_after_a_quiet_second() {
    let listener = Listener {
        name: "http".into(),
        port: 80,
        mounts: Vec::new(),
        websocket: vec!["echo".into()],
        default_websocket: Some("echo".into()),
        tls: None,
    };
    let mut ctx = common::device_with(listener, "echo", Handler::Native(|| Box::new(Echo)));
    let t0 = Instant::now();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let message: Vec<u8> = (0..MESSAGE).map(|i| (i % 251) as u8).collect();
    let wire = frame(&message);

    let scope = DeviceScope::enter();
    // A first connection makes what the context allocates once for all
    // (its scratch buffers), so that what follows is the connection's own.
    let warm = ctx.accept(0, peer, t0).expect("a free slot");
    exchange(&mut ctx, warm, common::UPGRADE, t0);
    exchange(&mut ctx, warm, &wire, t0);
    ctx.close(warm, t0);
    ctx.service(t0);
    let id = ctx.accept(0, peer, t0).expect("a free slot");
    let upgraded = exchange(&mut ctx, id, common::UPGRADE, t0);
    assert!(upgraded > 0, "the 101");
    let open = counting::device_bytes();

    // The first message grows the buffers...
    let echoed = exchange(&mut ctx, id, &wire, t0);
    assert!(echoed >= MESSAGE, "the whole echo: {echoed} bytes");
    let after_first = counting::device_bytes();
    assert!(
        after_first - open >= 4096,
        "kept for the next message: {} bytes",
        after_first - open
    );

    // ...and the next one, a moment later, finds them there.
    let t1 = t0 + Duration::from_millis(100);
    counting::reset_peak();
    let echoed = exchange(&mut ctx, id, &wire, t1);
    assert!(echoed >= MESSAGE);
    let grown = counting::device_peak() - after_first;
    assert!(
        grown < 1024,
        "the second message grew the device's heap by {grown} bytes"
    );

    // A small message half a second later does not keep them...
    let t2 = t1 + Duration::from_millis(500);
    let echoed = exchange(&mut ctx, id, &frame(b"21.5"), t2);
    assert_eq!(echoed, 2 + 4, "the small echo");
    let next = ctx.service(t2);
    assert!(
        next.is_some_and(|at| at <= t1 + Duration::from_secs(1)),
        "a deadline for the trim, a second after the large message: {next:?}"
    );
    assert_eq!(counting::device_bytes(), after_first, "not yet");
    // ...and a second after the large one, they go back.
    ctx.service(t1 + Duration::from_millis(1001));
    let quiet = counting::device_bytes();
    assert_eq!(
        quiet, open,
        "a quiet connection holds what it held right after its upgrade"
    );
    drop(scope);
}
