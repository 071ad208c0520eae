//! `lws_set_timer_usecs` and `LWS_CALLBACK_TIMER`: a guest that answers a
//! request only when its timer fires, driven with an explicit clock.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasmgate::Context;

/// On `HTTP` sets a timer of `delay_us` (or, with `cancel`, sets and then
/// cancels it); on `TIMER` answers 200.
fn timer_guest(delay_us: i64, cancel: bool) -> Vec<u8> {
    let cancel_call = if cancel {
        "(drop (call $timer (local.get $wsi) (i64.const -1)))"
    } else {
        ""
    };
    let wat = format!(
        r#"(module
            (import "lws" "lws_set_timer_usecs" (func $timer (param i32 i64) (result i32)))
            (import "lws" "lws_callback_on_writable" (func $writable (param i32) (result i32)))
            (import "lws" "lws_return_http_status" (func $status (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "tick")
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
              (if (i32.eq (local.get $reason) (i32.const 12))
                (then
                  (drop (call $timer (local.get $wsi) (i64.const {delay_us})))
                  {cancel_call}
                  ;; asking for WRITEABLE keeps the runtime from answering 404
                  (drop (call $writable (local.get $wsi)))))
              (if (i32.eq (local.get $reason) (i32.const 73))
                (then (drop (call $status (local.get $wsi) (i32.const 200) (i32.const 0) (i32.const 0)))))
              (i32.const 0)))"#
    );
    wat::parse_str(wat).expect("test WAT parses")
}

fn device(module: Vec<u8>) -> Context {
    common::device("tick", module)
}

#[test]
fn the_timer_fires_once_its_time_is_up_and_not_before() {
    let mut ctx = device(timer_guest(50_000, false));
    let start = Instant::now();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let id = ctx.accept(0, peer, start).unwrap();
    ctx.receive(id, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n", start);
    let due = ctx.service(start).expect("a deadline: the timer");
    assert!(
        due <= start + Duration::from_millis(50),
        "the context asks to run by then"
    );
    assert!(ctx.transmit(id).is_empty(), "nothing before the timer");
    ctx.service(start + Duration::from_millis(49));
    assert!(ctx.transmit(id).is_empty(), "nothing before the timer");
    ctx.service(start + Duration::from_millis(50));
    assert!(ctx.transmit(id).starts_with(b"HTTP/1.1 200 OK"));
}

#[test]
fn a_cancelled_timer_never_fires() {
    let mut ctx = device(timer_guest(1_000, true));
    let start = Instant::now();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let id = ctx.accept(0, peer, start).unwrap();
    ctx.receive(id, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n", start);
    for ms in [0, 1, 5, 100, 1000] {
        ctx.service(start + Duration::from_millis(ms));
    }
    assert!(ctx.transmit(id).is_empty());
}

#[test]
fn a_guest_rearming_a_zero_timer_cannot_hold_the_loop() {
    // TIMER re-arms a 0 µs timer every time: each service() fires it once.
    let module = wat::parse_str(
        r#"(module
            (import "lws" "lws_set_timer_usecs" (func $timer (param i32 i64) (result i32)))
            (import "lws" "lws_callback_on_writable" (func $writable (param i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "tick")
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
              (if (i32.or (i32.eq (local.get $reason) (i32.const 12)) (i32.eq (local.get $reason) (i32.const 73)))
                (then
                  (drop (call $timer (local.get $wsi) (i64.const 0)))
                  (drop (call $writable (local.get $wsi)))))
              (i32.const 0)))"#,
    )
    .unwrap();
    let mut ctx = device(module);
    let start = Instant::now();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let id = ctx.accept(0, peer, start).unwrap();
    ctx.receive(id, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n", start);
    let before = ctx.stats().callbacks;
    let due = ctx
        .service(start + Duration::from_millis(5))
        .expect("a deadline");
    assert!(
        due > start + Duration::from_millis(5),
        "the re-armed timer waits for the next turn"
    );
    let fired = ctx.stats().callbacks - before;
    assert!(
        fired <= 3,
        "one TIMER (plus WRITEABLE) per turn, not {fired}"
    );
}
