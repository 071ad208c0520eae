//! The edges of the HTTP-to-WebSocket upgrade: pipelining, frames that come
//! with the upgrade request, bodies, listeners without WebSocket protocols.

mod support;

use std::io::{BufRead, BufReader, Read, Write};

use support::{Sim, device_toml, read_response};

const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Protocol: echo_server\r\n\r\n";

fn echo_device(websocket: bool) -> Sim {
    let toml = device_toml(
        &[
            ("echo_server", "builtin:ws-echo"),
            ("hello", "builtin:hello"),
        ],
        &[("/", "hello")],
        "",
    );
    let toml = if websocket {
        toml + "websocket = [\"echo_server\"]\n"
    } else {
        toml
    };
    Sim::start(&toml)
}

/// A masked text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 65536);
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let mask = [9, 8, 7, 6];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (opcode, payload).
fn read_frame(r: &mut impl Read) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).expect("frame header");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            r.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).unwrap();
    (h[0] & 0x0f, payload)
}

/// Reads an HTTP head (status line and headers) and returns the status.
fn read_head(r: &mut impl BufRead) -> u16 {
    let mut status = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if status == 0 {
            status = line[9..12].parse().unwrap();
        }
        if line == "\r\n" {
            return status;
        }
    }
}

#[test]
fn an_upgrade_pipelined_behind_a_request_gets_both_answers_in_order() {
    let sim = echo_device(true);
    let mut s = sim.connect();
    let mut bytes = b"GET / HTTP/1.1\r\nHost: d\r\n\r\n".to_vec();
    bytes.extend_from_slice(UPGRADE);
    s.write_all(&bytes).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let first = read_response(&mut r, false);
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "hello world\n")
    );
    assert_eq!(read_head(&mut r), 101);
    s.write_all(&text_frame(b"after both")).unwrap();
    assert_eq!(read_frame(&mut r), (1, b"after both".to_vec()));
}

#[test]
fn frames_sent_with_the_upgrade_request_all_come_back() {
    let sim = echo_device(true);
    let mut s = sim.connect();
    let mut bytes = UPGRADE.to_vec();
    let messages: Vec<Vec<u8>> = (0..10).map(|i| vec![b'a' + i; 1000]).collect();
    for m in &messages {
        bytes.extend_from_slice(&text_frame(m));
    }
    s.write_all(&bytes).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_head(&mut r), 101);
    let mut echoed = Vec::new();
    while echoed.len() < 10 * 1000 {
        let (op, payload) = read_frame(&mut r);
        assert!(op == 1 || op == 0, "text or continuation, got {op}");
        echoed.extend_from_slice(&payload);
    }
    assert_eq!(echoed, messages.concat());
}

#[test]
fn an_upgrade_request_with_a_body_is_refused() {
    let sim = echo_device(true);
    let mut s = sim.connect();
    let req =
        String::from_utf8_lossy(UPGRADE).replace("\r\n\r\n", "\r\nContent-Length: 5\r\n\r\nhello");
    s.write_all(req.as_bytes()).unwrap();
    let r = read_response(&mut BufReader::new(s), false);
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn a_listener_without_websocket_protocols_serves_the_request_as_http() {
    let sim = echo_device(false);
    let mut s = sim.connect();
    s.write_all(UPGRADE).unwrap();
    let r = read_response(&mut BufReader::new(s), false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello world\n"));
}
