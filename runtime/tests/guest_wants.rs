//! The optional `wasmgate_wants(reason) -> i32` export: a callback whose
//! reason the guest declared it does not handle is not made (as if the guest
//! returned 0 at once), a guest without the export gets every callback, and a
//! bad `wasmgate_wants` is refused at load with a message naming it.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use wasmgate::Context;
use wasmgate::config::GuestLimits;
use wasmgate::guest::{Guest, LoadError, reason};

/// A guest that counts its connection callbacks in a global and answers
/// `HTTP` with `n=<count>` (the count includes the `HTTP` itself), with
/// `extra` spliced into the module (a `wasmgate_wants`, or nothing).
/// `init_result` is what it returns to `PROTOCOL_INIT`.
fn counting_guest(extra: &str, init_result: i32) -> String {
    format!(
        r#"(module
            (import "lws" "lws_return_http_status" (func $status (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "test")
            (data (i32.const 900) "n=0")
            (global $calls (mut i32) (i32.const 0))
            {extra}
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
              (if (i32.eq (local.get $reason) (i32.const 27))
                (then (return (i32.const {init_result}))))
              (if (i32.eq (local.get $reason) (i32.const 28))
                (then (return (i32.const 0))))
              (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
              (if (i32.eq (local.get $reason) (i32.const 12))
                (then
                  (i32.store8 (i32.const 902) (i32.add (i32.const 48) (global.get $calls)))
                  (drop (call $status (local.get $wsi) (i32.const 200) (i32.const 900) (i32.const 3)))))
              (i32.const 0)))"#
    )
}

/// `wasmgate_wants` that accepts `HTTP` (12) only.
const WANTS_HTTP_ONLY: &str = r#"(func (export "wasmgate_wants") (param i32) (result i32)
    (i32.eq (local.get 0) (i32.const 12)))"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT parses")
}

fn load(wat: &str) -> Result<Guest, LoadError> {
    Guest::load(&Guest::engine(), "test", &wasm(wat), GuestLimits::DEFAULT)
}

/// Sends two keep-alive GETs; returns each response.
fn two_requests(ctx: &mut Context) -> Vec<Vec<u8>> {
    let now = Instant::now();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let id = ctx.accept(0, peer, now).unwrap();
    let mut responses = Vec::new();
    for _ in 0..2 {
        ctx.receive(id, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n", now);
        ctx.service(now);
        let tx = ctx.transmit(id).to_vec();
        ctx.transmitted(id, tx.len(), now);
        responses.push(tx);
    }
    responses
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn reasons_the_guest_does_not_want_are_not_delivered() {
    let mut ctx = common::device("test", wasm(&counting_guest(WANTS_HTTP_ONLY, 0)));
    let responses = two_requests(&mut ctx);
    for (response, count) in responses.iter().zip([b"n=1", b"n=2"]) {
        assert!(response.starts_with(b"HTTP/1.1 200 OK"), "{response:?}");
        // Only the HTTP callbacks ran: no BIND (49) or DROP (50) before them.
        assert!(contains(response, count), "{response:?}");
    }
    assert_eq!(
        ctx.stats().callbacks,
        2,
        "skipped callbacks are not counted"
    );
}

#[test]
fn without_the_export_every_reason_is_delivered() {
    let mut ctx = common::device("test", wasm(&counting_guest("", 0)));
    let responses = two_requests(&mut ctx);
    // BIND, HTTP; then DROP, BIND, HTTP.
    for (response, count) in responses.iter().zip([b"n=2", b"n=5"]) {
        assert!(response.starts_with(b"HTTP/1.1 200 OK"), "{response:?}");
        assert!(contains(response, count), "{response:?}");
    }
    assert_eq!(ctx.stats().callbacks, 6);
}

#[test]
fn the_instance_keeps_the_answers() {
    let guest = load(&counting_guest(WANTS_HTTP_ONLY, 0)).expect("loads");
    let mut instance = guest.instantiate(0).expect("starts");
    assert!(instance.wants(reason::HTTP));
    for unwanted in [
        reason::HTTP_BIND_PROTOCOL,
        reason::HTTP_DROP_PROTOCOL,
        reason::PROTOCOL_INIT,
        reason::RECEIVE,
        reason::TIMER,
    ] {
        assert!(!instance.wants(unwanted), "reason {unwanted}");
    }
    assert!(
        instance.wants(200),
        "a reason never asked about is delivered"
    );
    // A skipped callback returns 0 and costs no fuel.
    let before = instance.fuel_used();
    let outcome = instance.call(reason::HTTP_BIND_PROTOCOL, 1, Some(0), b"x", None, 0);
    assert_eq!(outcome.result, Ok(0));
    assert_eq!(instance.fuel_used(), before);

    let all = load(&counting_guest("", 0)).expect("loads");
    let instance = all.instantiate(0).expect("starts");
    assert!(reason::ALL.iter().all(|&r| instance.wants(r)));
}

#[test]
fn protocol_init_follows_the_same_rule() {
    // PROTOCOL_INIT returning 1 refuses to start, unless it is not delivered.
    let msg = load(&counting_guest("", 1)).unwrap_err().to_string();
    assert_eq!(msg, "PROTOCOL_INIT failed: callback returned 1");
    load(&counting_guest(WANTS_HTTP_ONLY, 1)).expect("INIT is not delivered");
}

#[test]
fn wants_with_the_wrong_type_is_refused() {
    let wrong = r#"(func (export "wasmgate_wants") (result i32) (i32.const 1))"#;
    let msg = load(&counting_guest(wrong, 0)).unwrap_err().to_string();
    assert_eq!(
        msg,
        "`wasmgate_wants` has type () -> (i32), expected (i32) -> (i32)"
    );
    let not_a_function = r#"(global (export "wasmgate_wants") i32 (i32.const 1))"#;
    let msg = load(&counting_guest(not_a_function, 0))
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("`wasmgate_wants` has type not a function"),
        "{msg}"
    );
}

#[test]
fn wants_that_traps_is_refused() {
    let traps = r#"(func (export "wasmgate_wants") (param i32) (result i32) unreachable)"#;
    let msg = load(&counting_guest(traps, 0)).unwrap_err().to_string();
    assert!(
        msg.starts_with("`wasmgate_wants(27)` failed: trapped"),
        "{msg}"
    );
}

#[test]
fn wants_that_runs_out_of_fuel_is_refused() {
    let spins = r#"(func (export "wasmgate_wants") (param i32) (result i32)
        (loop $forever (br $forever)) (i32.const 1))"#;
    let msg = load(&counting_guest(spins, 0)).unwrap_err().to_string();
    assert_eq!(msg, "`wasmgate_wants(27)` failed: ran out of fuel");
}

/// The reasons `guest` (an embedded example) wants, of those the runtime has.
fn wanted_by(guest: &[u8]) -> Vec<i32> {
    let guest = Guest::load(&Guest::engine(), "t", guest, GuestLimits::DEFAULT).expect("loads");
    let instance = guest.instantiate(0).expect("starts");
    let mut wanted: Vec<i32> = reason::ALL
        .iter()
        .copied()
        .filter(|&r| instance.wants(r))
        .collect();
    wanted.sort_unstable();
    wanted
}

#[test]
fn the_sdk_macros_declare_what_their_dispatch_handles() {
    use reason::*;
    // export_lws_callback!(..., reasons = [Reason::Http]) with `session = ()`.
    assert_eq!(wanted_by(wasmgate_guests::HELLO), [HTTP]);
    // export_http!: the request's events (BIND resets the SDK's slot), and
    // the other reasons that reset it; not the WebSocket events.
    let mut http = vec![
        PROTOCOL_INIT,
        PROTOCOL_DESTROY,
        HTTP_BIND_PROTOCOL,
        HTTP,
        HTTP_BODY,
        HTTP_BODY_COMPLETION,
        HTTP_WRITEABLE,
        TIMER,
        HTTP_DROP_PROTOCOL,
        CLOSED_HTTP,
        FILTER_PROTOCOL_CONNECTION,
        CLIENT_ESTABLISHED,
        CLIENT_CONNECTION_ERROR,
    ];
    http.sort_unstable();
    assert_eq!(wanted_by(wasmgate_guests::HTTP_POST), http);
    // export_ws!: every WebSocket event, no HTTP ones.
    let mut ws = vec![
        PROTOCOL_INIT,
        PROTOCOL_DESTROY,
        FILTER_PROTOCOL_CONNECTION,
        ESTABLISHED,
        RECEIVE,
        RECEIVE_PONG,
        SERVER_WRITEABLE,
        TIMER,
        WS_PEER_INITIATED_CLOSE,
        CLOSED,
        CLIENT_CONNECTION_ERROR,
        CLIENT_ESTABLISHED,
        CLIENT_RECEIVE,
        CLIENT_RECEIVE_PONG,
        CLIENT_WRITEABLE,
        CLIENT_CLOSED,
    ];
    ws.sort_unstable();
    assert_eq!(wanted_by(wasmgate_guests::WS_ECHO), ws);
    // export_lws_callback! without `reasons`: everything.
    let mut all = reason::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(wanted_by(wasmgate_guests::READINGS), all);
}
