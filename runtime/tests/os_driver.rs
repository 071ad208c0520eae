//! The OS-socket driver on real sockets (127.0.0.1): a peer's FIN that
//! arrives together with its last bytes is seen, although the read of those
//! bytes is short and no new readiness event follows it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wasmgate::Context;
use wasmgate::net::os::OsDriver;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: device\r\n\r\n";
const TURN: Duration = Duration::from_millis(10);

fn hello_on_loopback() -> (Context, OsDriver, SocketAddr) {
    let ctx = common::device("hello", wasmgate_guests::HELLO.to_vec());
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let driver = OsDriver::bind(&ctx, &[loopback]).expect("bind 127.0.0.1");
    let addr = driver.local_addrs().expect("listener address")[0];
    (ctx, driver, addr)
}

/// Turns the loop until the client has read the end of the stream, for at
/// most two seconds; returns what it read, and whether the stream ended.
fn read_to_end(ctx: &mut Context, driver: &mut OsDriver, client: &mut TcpStream) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let give_up = Instant::now() + Duration::from_secs(2);
    while Instant::now() < give_up {
        driver.service(ctx, Some(TURN)).expect("a turn of the loop");
        loop {
            match client.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read failed: {e}"),
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn a_request_and_the_peers_fin_in_one_event_are_answered_and_closed() {
    let (mut ctx, mut driver, addr) = hello_on_loopback();
    let mut client = TcpStream::connect(addr).expect("connect");
    client.set_nonblocking(true).expect("nonblocking");
    // The connection is accepted and its first read finds nothing.
    for _ in 0..5 {
        driver
            .service(&mut ctx, Some(TURN))
            .expect("a turn of the loop");
    }
    // The request and the FIN both reach the server's socket before its
    // next wait: one edge-triggered event carries both, and reading the
    // request is a short read.
    client.write_all(GET).expect("send the request");
    client.shutdown(Shutdown::Write).expect("send FIN");
    std::thread::sleep(Duration::from_millis(50));
    let (answer, ended) = read_to_end(&mut ctx, &mut driver, &mut client);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("hello world\n"), "{answer:?}");
    assert!(
        ended,
        "the server answered but never saw the client's FIN: the connection stays open"
    );
}

#[test]
fn keep_alive_requests_read_short_are_each_answered() {
    // The short read that ends a turn's reading must not lose a later
    // request: each arrives as a new event.
    let (mut ctx, mut driver, addr) = hello_on_loopback();
    let mut client = TcpStream::connect(addr).expect("connect");
    client.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    for i in 0..3 {
        client.write_all(GET).expect("send a request");
        let mut got = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(2);
        while !got.ends_with(b"hello world\n") && Instant::now() < give_up {
            driver
                .service(&mut ctx, Some(TURN))
                .expect("a turn of the loop");
            match client.read(&mut buf) {
                Ok(0) => panic!("request {i}: the server closed"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("client read failed: {e}"),
            }
        }
        let answer = String::from_utf8_lossy(&got);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "request {i}: {answer:?}"
        );
        assert!(answer.ends_with("hello world\n"), "request {i}: {answer:?}");
    }
}
