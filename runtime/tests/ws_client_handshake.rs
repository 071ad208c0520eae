//! The WebSocket client, sans-IO: a `[[client]]` connection from the config is
//! asked of the driver, sends its handshake once connected, checks the
//! server's accept key, and calls the guest with the `CLIENT_*` reasons.

use std::time::{Duration, Instant};

use wasmgate::config::{Client, ClientTarget, GuestLimits, Handler, Limits, Protocol};
use wasmgate::{Config, Context};

/// On CLIENT_ESTABLISHED writes the text "hi"; on CLIENT_CONNECTION_ERROR
/// logs what it was given (the test reads it back through the status).
fn client_guest() -> Vec<u8> {
    wat::parse_str(
        r#"(module
            (import "lws" "lws_write" (func $write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "cli")
            (data (i32.const 2048) "hi")
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
              (if (i32.eq (local.get $reason) (i32.const 3))
                (then (drop (call $write (local.get $wsi) (i32.const 2048) (i32.const 2) (i32.const 0)))))
              (i32.const 0)))"#,
    )
    .expect("test WAT parses")
}

fn device() -> Context {
    device_at(Instant::now())
}

/// The device, started at `now` (its client's deadlines count from there).
fn device_at(now: Instant) -> Context {
    let config = Config {
        name: "test".into(),
        listeners: Vec::new(),
        protocols: vec![Protocol {
            name: "cli".into(),
            handler: Handler::Wasm(client_guest()),
        }],
        limits: Limits::DEFAULT,
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients: vec![Client {
            name: "test".into(),
            protocol: "cli".into(),
            target: ClientTarget {
                address: "192.0.2.1".into(),
                port: 9000,
                path: "/feed".into(),
                host: None,
                origin: None,
                ws_protocol: Some("echo-protocol".into()),
                tls: None,
            },
            reconnect: true,
        }],
        trust: None,
    };
    Context::new(config, now).expect("device starts")
}

fn header<'a>(request: &'a str, name: &str) -> &'a str {
    request
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {name} in {request}"))
}

/// Connects the config's client and lets its handshake request go.
fn handshake_sent(ctx: &mut Context, now: Instant) -> wasmgate::context::ConnId {
    let (id, _, _) = ctx.take_connects()[0].clone();
    ctx.connected(id, now);
    let n = ctx.transmit(id).len();
    ctx.transmitted(id, n, now);
    id
}

#[test]
fn the_handshake_is_sent_checked_and_the_guest_writes_on_established() {
    let mut ctx = device();
    let now = Instant::now();
    let connects = ctx.take_connects();
    assert_eq!(
        connects.len(),
        1,
        "the config's client is asked of the driver"
    );
    let (id, host, port) = connects[0].clone();
    assert_eq!((host.as_str(), port), ("192.0.2.1", 9000));
    ctx.connected(id, now);
    let request = String::from_utf8(ctx.transmit(id).to_vec()).unwrap();
    assert!(request.starts_with("GET /feed HTTP/1.1\r\n"), "{request}");
    assert_eq!(header(&request, "Sec-WebSocket-Protocol"), "echo-protocol");
    let key = header(&request, "Sec-WebSocket-Key");
    let n = request.len();
    ctx.transmitted(id, n, now);
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: echo-protocol\r\n\r\n"
    );
    ctx.receive(id, response.as_bytes(), now);
    let frame = ctx.transmit(id).to_vec();
    assert_eq!(frame[0], 0x81, "a final text frame");
    assert_eq!(frame[1], 0x80 | 2, "masked, two bytes");
    let mask = &frame[2..6];
    let payload: Vec<u8> = frame[6..8].iter().zip(mask).map(|(b, m)| b ^ m).collect();
    assert_eq!(payload, b"hi");
}

#[test]
fn a_wrong_accept_key_fails_the_connection_and_it_is_retried_later() {
    let mut ctx = device();
    let now = Instant::now();
    let id = handshake_sent(&mut ctx, now);
    ctx.receive(
        id,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        now,
    );
    assert!(ctx.should_close(id), "the failed connection is dropped");
    ctx.close(id, now);
    // reconnect = true: a new connect is asked for after the backoff.
    assert!(ctx.take_connects().is_empty(), "not at once");
    let later = now + Duration::from_secs(2);
    ctx.service(later);
    assert_eq!(ctx.take_connects().len(), 1, "retried after about a second");
}

#[test]
fn a_refused_connection_is_retried_with_growing_backoff() {
    let mut ctx = device();
    let mut now = Instant::now();
    let mut pending = ctx.take_connects();
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let (id, _, _) = pending[0].clone();
        ctx.connect_failed(id, "connection refused", now);
        ctx.close(id, now);
        let failed_at = now;
        pending = loop {
            now += Duration::from_millis(50);
            ctx.service(now);
            let asked = ctx.take_connects();
            if !asked.is_empty() {
                break asked;
            }
        };
        gaps.push(now - failed_at);
    }
    // 1 s, 2 s, 4 s, 8 s, each within a quarter either way.
    assert!(
        gaps.windows(2).all(|w| w[1] > w[0]),
        "backoff grows: {gaps:?}"
    );
    assert!(gaps[0] >= Duration::from_millis(700) && gaps[0] <= Duration::from_millis(1300));
}

#[test]
fn a_handshake_never_answered_times_out_at_the_deadline_service_returns() {
    let start = Instant::now();
    let mut ctx = device_at(start);
    let id = handshake_sent(&mut ctx, start);
    // The server never answers. The loop sleeps until what `service`
    // returns, and nothing else wakes it.
    let mut now = start;
    for _ in 0..10 {
        let Some(next) = ctx.service(now) else {
            break;
        };
        if ctx.should_close(id) {
            break;
        }
        now = next;
    }
    assert!(ctx.should_close(id), "the connection timed out");
    assert_eq!(
        now - start,
        Duration::from_secs(10),
        "at the connect timeout"
    );
    ctx.close(id, now);
    assert!(ctx.take_connects().is_empty(), "not at once");
    // The close scheduled the reconnect after the `service` above: the
    // driver is asked to call it again before it sleeps, and hears when.
    assert!(ctx.wants_service(), "the driver does not sleep past it");
    let failed_at = now;
    now = ctx.service(now).expect("the reconnect has a deadline");
    assert!(now > failed_at && now - failed_at <= Duration::from_millis(1300));
    ctx.service(now);
    assert_eq!(ctx.take_connects().len(), 1, "retried when service said");
}
