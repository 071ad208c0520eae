//! A WebSocket peer that sends and never reads: the echo guest pauses its
//! receiving (lws_rx_flow_control), the device stops reading the socket, and the
//! device's memory stays flat however much the peer pushes.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::{Sim, device_toml};

/// One masked binary frame of `len` bytes (client to server).
fn masked_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x82];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mask = [1, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend((0..len).map(|i| 0x5a ^ mask[i % 4]));
    f
}

#[test]
fn a_peer_that_never_reads_is_held_back_by_tcp_not_by_device_memory() {
    let toml = device_toml(&[("echo_server", "builtin:ws-echo")], &[], "")
        + "websocket = [\"echo_server\"]\n";
    let sim = Sim::start(&toml);
    let mut s = sim.connect();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: echo_server\r\n\r\n",
    )
    .unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let before = sim.rss_kib();
    let frame = masked_frame(64 * 1024);
    let mut pushed = 0usize;
    let start = Instant::now();
    // Push until the socket refuses more (the device stopped reading), at most 256 MiB.
    while pushed < 256 << 20 && start.elapsed() < Duration::from_secs(20) {
        match s.write_all(&frame) {
            Ok(()) => pushed += frame.len(),
            Err(_) => break,
        }
    }
    assert!(
        pushed < 64 << 20,
        "the device kept reading {pushed} bytes it could not echo"
    );
    let (Some(before), Some(after)) = (before, sim.rss_kib()) else {
        eprintln!("SKIPPED the memory check: /proc/<pid>/status is not readable here");
        return;
    };
    println!("pushed {pushed} bytes; device RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 4 * 1024,
        "device memory grew from {before} KiB to {after} KiB"
    );
}
