//! `Context::service` looks only at the connections that something happened
//! to, and at those whose deadline has come: a connection left alone still
//! times out on time while another keeps the loop busy, the wake-up that
//! `service` returns never passes a deadline it did not look at, and a
//! broadcast `WRITEABLE` reaches connections that were idle.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasmgate::Context;
use wasmgate::context::ConnId;

const SECOND: Duration = Duration::from_secs(1);
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: device\r\n\r\n";

fn hello_device() -> Context {
    common::device("hello", wasmgate_guests::HELLO.to_vec())
}

fn accept(ctx: &mut Context, port: u16, now: Instant) -> ConnId {
    let peer = SocketAddr::from(([127, 0, 0, 1], port));
    ctx.accept(0, peer, now).expect("a free slot")
}

/// What `id` has to send, taken as sent.
fn take_bytes(ctx: &mut Context, id: ConnId, now: Instant) -> Vec<u8> {
    let tx = ctx.transmit(id).to_vec();
    ctx.transmitted(id, tx.len(), now);
    tx
}

/// The same as text.
fn take_tx(ctx: &mut Context, id: ConnId, now: Instant) -> String {
    String::from_utf8_lossy(&take_bytes(ctx, id, now)).into_owned()
}

/// One keep-alive request on `busy`, answered.
fn busy_request(ctx: &mut Context, busy: ConnId, now: Instant) -> Option<Instant> {
    assert_eq!(ctx.receive(busy, GET, now), GET.len());
    let next = ctx.service(now);
    let answer = take_tx(ctx, busy, now);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("hello world\n"), "{answer}");
    next
}

#[test]
fn a_silent_connection_gets_408_at_its_head_deadline_while_another_is_busy() {
    let t0 = Instant::now();
    let mut ctx = hello_device();
    let silent = accept(&mut ctx, 40000, t0);
    ctx.receive(silent, b"GET / HTTP/1.1\r\nHost: dev", t0);
    let busy = accept(&mut ctx, 40001, t0);
    ctx.service(t0);
    let head_deadline = t0 + 10 * SECOND;
    for s in 1..10 {
        let now = t0 + s * SECOND;
        let next = busy_request(&mut ctx, busy, now);
        // The busy connection was looked at, the silent one was not; the
        // wake-up still covers the silent one's deadline.
        let next = next.expect("a deadline is pending");
        assert!(
            next <= head_deadline,
            "{s} s: wake-up {next:?} after the head deadline"
        );
        // Only asked: taking its output (`transmitted`) would be something
        // happening to it.
        assert!(!ctx.should_close(silent));
    }
    // The driver calls at the wake-up it was given.
    ctx.service(head_deadline);
    let answer = take_tx(&mut ctx, silent, head_deadline);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(ctx.should_close(silent));
    // The busy connection goes on.
    busy_request(&mut ctx, busy, head_deadline + SECOND);
    assert!(!ctx.should_close(busy));
}

#[test]
fn an_idle_keep_alive_connection_closes_at_its_idle_deadline_among_busy_ones() {
    let t0 = Instant::now();
    let mut ctx = hello_device();
    let idle = accept(&mut ctx, 40000, t0);
    let busy = accept(&mut ctx, 40001, t0);
    busy_request(&mut ctx, idle, t0);
    // 30 s without a request closes a keep-alive connection, silently.
    let idle_deadline = t0 + 30 * SECOND;
    let mut now = t0;
    while now + 3 * SECOND < idle_deadline {
        now += 3 * SECOND;
        let next = busy_request(&mut ctx, busy, now).expect("a deadline is pending");
        assert!(
            next <= idle_deadline,
            "wake-up {next:?} after the idle deadline"
        );
        assert!(!ctx.should_close(idle), "closed early, at {:?}", now - t0);
    }
    ctx.service(idle_deadline);
    assert_eq!(
        take_tx(&mut ctx, idle, idle_deadline),
        "",
        "closes silently"
    );
    assert!(ctx.should_close(idle));
    assert!(!ctx.should_close(busy));
}

#[test]
fn a_deadline_that_moved_later_is_kept_until_the_new_one() {
    // A connection that sends a request every 20 s never reaches its 30 s
    // idle deadline, though the first one is what `service` last saw of it
    // when it next looks at the whole table.
    let t0 = Instant::now();
    let mut ctx = hello_device();
    let conn = accept(&mut ctx, 40000, t0);
    let mut now = t0;
    for _ in 0..4 {
        busy_request(&mut ctx, conn, now);
        now += 20 * SECOND;
        let next = ctx.service(now - 10 * SECOND);
        assert!(next.is_some_and(|n| n <= now + 10 * SECOND));
        assert!(!ctx.should_close(conn));
    }
    ctx.service(now + 10 * SECOND);
    assert!(ctx.should_close(conn), "30 s after the last request");
}

/// Protocol `bcst`: a `RECEIVE` on any connection asks `WRITEABLE` for all
/// of the protocol's (`lws_callback_on_writable_all_protocol`), and each
/// `SERVER_WRITEABLE` writes the text message `w`.
const BROADCAST: &str = r#"(module
    (import "lws" "lws_callback_on_writable_all_protocol" (func $all (result i32)))
    (import "lws" "lws_write" (func $write (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
    (data (i32.const 768) "bcst")
    (data (i32.const 2048) "w")
    (func (export "wasmgate_protocol") (result i32) (i32.const 0))
    (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
      (if (i32.eq (local.get $reason) (i32.const 6))
        (then (drop (call $all))))
      (if (i32.eq (local.get $reason) (i32.const 11))
        (then (drop (call $write (local.get $wsi) (i32.const 2048) (i32.const 1) (i32.const 0)))))
      (i32.const 0)))"#;

use common::UPGRADE;

/// A WebSocket on the broadcast device, its `101` taken.
fn websocket(ctx: &mut Context, port: u16, now: Instant) -> ConnId {
    let id = accept(ctx, port, now);
    ctx.receive(id, UPGRADE, now);
    ctx.service(now);
    let answer = take_tx(ctx, id, now);
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    id
}

#[test]
fn a_broadcast_writeable_reaches_a_connection_that_was_idle() {
    let t0 = Instant::now();
    let module = wat::parse_str(BROADCAST).expect("test WAT parses");
    let mut ctx = common::websocket_device("bcst", module);
    let sender = websocket(&mut ctx, 40000, t0);
    let idle = websocket(&mut ctx, 40001, t0);
    // Both settle: nothing happens to `idle` from here on but the broadcast.
    let later = t0 + SECOND;
    ctx.service(later);
    assert_eq!(take_tx(&mut ctx, idle, later), "");
    // Taking its output (`transmitted`) was something happening to it: let `service`
    // see that, so that only the broadcast can bring it back.
    ctx.service(later);
    // A masked text frame "hi" from the sender.
    let mask = [1, 2, 3, 4];
    let mut frame = vec![0x81, 0x82];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    let now = later + SECOND;
    assert_eq!(ctx.receive(sender, &frame, now), frame.len());
    // The broadcast changed another connection: the driver is asked to run
    // `service` at once rather than at the next deadline.
    assert!(ctx.wants_service());
    ctx.service(now);
    // A text frame of one byte, `w`, to both.
    assert_eq!(take_bytes(&mut ctx, idle, now), b"\x81\x01w");
    assert_eq!(take_bytes(&mut ctx, sender, now), b"\x81\x01w");
}
