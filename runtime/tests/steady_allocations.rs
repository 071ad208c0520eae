//! Once a connection is warm, serving it takes nothing from the allocator:
//! a keep-alive `GET` answered by `guests/hello`, and a 64-byte WebSocket
//! message echoed by `guests/ws-echo`, each as the WebAssembly guest and as
//! the runtime's native handler. Routing a request used to copy its path and
//! its protocol's name into two new strings, two allocations and two frees
//! per request on the device's busiest path.
//!
//! Driven through [`Context`] as a network driver drives it, with a counting
//! allocator around the device; the test itself allocates nothing inside
//! the device scope. One test in this binary, so no other thread's
//! allocations are counted as the device's.

mod common;
#[path = "../../tests/support/counting.rs"]
#[allow(dead_code, reason = "shared with the memory bench")]
mod counting;
#[path = "../../tests/support/hello_echo.rs"]
#[allow(dead_code, reason = "only the guest and native pair is counted")]
mod hello_echo;

use std::net::SocketAddr;
use std::time::Instant;

use counting::DeviceScope;
use wasmgate::Context;
use wasmgate::context::ConnId;
use wasmgate::context::native::HELLO_BODY;

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: device\r\nUser-Agent: test\r\n\r\n";
/// Requests or messages served before counting starts: buffers, the
/// guest's instance and the context's scratch space are made by then.
const WARM: usize = 50;
/// Requests or messages counted.
const COUNTED: usize = 500;

/// One exchange as a driver makes it: the bytes in, a service pass, what
/// the connection has to send taken and marked sent, the dirty list
/// drained. Returns the bytes the device answered.
fn exchange(
    ctx: &mut Context,
    id: ConnId,
    wire: &[u8],
    dirty: &mut Vec<ConnId>,
    now: Instant,
) -> usize {
    let taken = ctx.receive(id, wire, now);
    assert_eq!(taken, wire.len(), "the device takes the whole request");
    ctx.service(now);
    let mut answered = 0;
    loop {
        let n = ctx.transmit(id).len();
        if n == 0 {
            break;
        }
        ctx.transmitted(id, n, now);
        answered += n;
    }
    ctx.drain_dirty(dirty);
    dirty.clear();
    answered
}

/// Allocations the device makes for `COUNTED` exchanges of `wire` on a warm
/// connection (after `setup` and `WARM` exchanges); each must be answered
/// with `answer` bytes.
fn allocations(ctx: &mut Context, setup: &[u8], wire: &[u8], answer: usize) -> isize {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let now = Instant::now();
    let mut dirty = Vec::with_capacity(64);
    let scope = DeviceScope::enter();
    let id = ctx.accept(0, peer, now).expect("a free slot");
    if !setup.is_empty() {
        assert!(exchange(ctx, id, setup, &mut dirty, now) > 0, "the upgrade");
    }
    for _ in 0..WARM {
        assert_eq!(exchange(ctx, id, wire, &mut dirty, now), answer);
    }
    let before = counting::device_allocations();
    for _ in 0..COUNTED {
        assert_eq!(exchange(ctx, id, wire, &mut dirty, now), answer);
    }
    let made = counting::device_allocations() - before;
    ctx.close(id, now);
    drop(scope);
    made
}

#[test]
fn a_warm_connection_serves_requests_and_messages_without_allocating() {
    let (mut guest, mut native) = hello_echo::guest_and_native();
    let payload: Vec<u8> = (0..64u8).collect();
    let message = common::client_frame(true, 0x2, &payload);
    let head = "HTTP/1.1 200 OK\r\n".len();
    for (name, ctx) in [("guest", &mut guest), ("native", &mut native)] {
        // The answer's length, from one request outside the count.
        let peer: SocketAddr = "127.0.0.1:39999".parse().unwrap();
        let now = Instant::now();
        let id = ctx.accept(0, peer, now).expect("a free slot");
        ctx.receive(id, REQUEST, now);
        ctx.service(now);
        let response = ctx.transmit(id).to_vec();
        assert!(
            response.len() > head && response.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{name}: {:?}",
            String::from_utf8_lossy(&response)
        );
        assert!(response.ends_with(HELLO_BODY), "{name}: the body");
        ctx.close(id, now);
        ctx.service(now);

        let http = allocations(ctx, &[], REQUEST, response.len());
        assert_eq!(
            http, 0,
            "{name}: {http} allocations for {COUNTED} keep-alive requests"
        );
        let ws = allocations(ctx, common::UPGRADE, &message, 2 + payload.len());
        assert_eq!(ws, 0, "{name}: {ws} allocations for {COUNTED} echoes");
    }
}
