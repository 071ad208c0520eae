//! Every limit has a clear answer: 431, 414, 413, 408, 503, 400 with a reason.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{Sim, device_toml, roundtrip};

fn hello_device(extra: &str) -> Sim {
    Sim::start(&device_toml(
        &[("http", "builtin:http-post")],
        &[("/", "http")],
        extra,
    ))
}

#[test]
fn oversized_head_gets_431() {
    let sim = hello_device("");
    let big = "a".repeat(5000);
    let r = roundtrip(
        &sim,
        format!("GET / HTTP/1.1\r\nHost: d\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431);
}

#[test]
fn too_many_headers_gets_431() {
    let sim = hello_device("");
    let mut req = String::from("GET / HTTP/1.1\r\nHost: d\r\n");
    for i in 0..40 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_eq!(roundtrip(&sim, req.as_bytes()).status, 431);
}

#[test]
fn long_uri_gets_414() {
    let sim = hello_device("");
    let path = "/".to_string() + &"p".repeat(2000);
    let r = roundtrip(
        &sim,
        format!("GET {path} HTTP/1.1\r\nHost: d\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 414);
}

#[test]
fn declared_body_over_the_limit_gets_413() {
    let sim = hello_device("[limits]\nmax_body_bytes = 1000\n");
    let r = roundtrip(
        &sim,
        b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 1001\r\n\r\n",
    );
    assert_eq!(r.status, 413);
}

#[test]
fn ambiguous_framing_gets_400_with_a_reason() {
    let sim = hello_device("");
    let r = roundtrip(
        &sim,
        b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().to_lowercase().contains("content-length"),
        "{}",
        r.text()
    );
    let r = roundtrip(&sim, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400, "missing Host");
    let r = roundtrip(&sim, b"GET / HTTP/2.0\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 505);
}

#[test]
fn slow_head_gets_408_and_is_closed() {
    let sim = hello_device("[limits]\nhead_timeout_ms = 300\n");
    let mut s = sim.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: d\r\n").unwrap(); // never finished
    let start = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{got:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn connections_past_max_get_503_and_the_device_recovers() {
    let sim = hello_device("[limits]\nmax_connections = 2\n");
    let a = sim.connect();
    let b = sim.connect();
    // Let the device accept both before the third arrives.
    std::thread::sleep(Duration::from_millis(200));
    let r = roundtrip(&sim, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    drop((a, b));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        roundtrip(&sim, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n").status,
        200
    );
}

#[test]
fn a_client_that_stops_reading_is_closed_and_frees_its_slot() {
    let sim = hello_device("[limits]\nmax_connections = 1\nresponse_timeout_ms = 500\n");
    let mut s = sim.connect();
    // Far more than socket buffers hold, and never read.
    for _ in 0..16 {
        s.write_all(b"GET /stream?kib=1024 HTTP/1.1\r\nHost: d\r\n\r\n")
            .unwrap();
    }
    sim.wait_for_log("peer read nothing");
    let start = Instant::now();
    let r = loop {
        let r = roundtrip(&sim, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n");
        if r.status != 503 || start.elapsed() > Duration::from_secs(5) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        r.status, 200,
        "the stalled connection's slot was given back"
    );
    drop(s);
}
