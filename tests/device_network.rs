//! The simulated device's own network (`--net smoltcp`): every byte crosses
//! the device's smoltcp stack and the simulator's user-mode gateway over a
//! virtual Ethernet link. With 5% loss and reordering on that link, a 256 KiB
//! request body, a 256 KiB response and a 256 KiB WebSocket echo arrive intact;
//! ten times `max_connections` clients at once get served or refused, and the
//! device serves normally afterwards; a request reaches the device over IPv6.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Sim, read_response};

/// A device with `http-post` on `/` and `ws-echo` for WebSocket upgrades.
fn device_toml(max_connections: usize) -> String {
    format!(
        "[device]\nname = \"network test\"\nflash = \"flash\"\n\
         [limits]\nmax_connections = {max_connections}\nmax_body_bytes = 4194304\n\
         ws_max_frame_bytes = 4194304\nws_max_message_bytes = 4194304\n\
         [[protocol]]\nname = \"http\"\nmodule = \"builtin:http-post\"\n\
         [[protocol]]\nname = \"echo_server\"\nmodule = \"builtin:ws-echo\"\n\
         [[listener]]\nname = \"http\"\nport = 80\nforward = 0\nmounts = {{ \"/\" = \"http\" }}\n\
         websocket = [\"echo_server\"]\ndefault_websocket = \"echo_server\"\n"
    )
}

/// The simulator on the smoltcp network with `link` faults; `None` (with a
/// message) when the tests run the host driver, which has no link.
fn device_on_link(max_connections: usize, link: &str) -> Option<Sim> {
    if Sim::net() == "host" {
        eprintln!("SKIPPED: WASMGATE_NET=host has no device link to put faults on");
        return None;
    }
    let toml = device_toml(max_connections);
    Some(Sim::start_with(
        &toml,
        &["--net", "smoltcp", "--link", link],
    ))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The `/stream` answer of `kib` KiB, as the guest writes it.
fn stream_blocks(kib: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..kib {
        let mut block = [b'.'; 1024];
        block[..6].copy_from_slice(b"block ");
        let digits = format!("{n:>6}");
        block[6..12].copy_from_slice(digits.as_bytes());
        block[12] = b' ';
        block[1023] = b'\n';
        out.extend_from_slice(&block);
    }
    out
}

const LOSSY: &str = "loss=0.05,reorder=0.05,delay=2ms,jitter=1ms,seed=7";
// At 5% loss smoltcp recovers by its 1 s retransmission timeout (a 4 KiB
// window never collects three duplicate ACKs): each lost frame costs a
// second. 256 KiB each way is about 64 windows per direction and a dozen
// losses or more (1 MiB took 60 to 100 s a test), hence the long read
// timeouts below.
const LOSSY_KIB: u32 = 256;

#[test]
fn a_256_kib_post_and_a_256_kib_response_cross_a_lossy_link_intact() {
    let Some(sim) = device_on_link(8, LOSSY) else {
        return;
    };
    let payload = support::pseudo_random(LOSSY_KIB as usize * 1024);
    let mut s = sim.connect();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&payload).unwrap();
    let mut r = BufReader::new(s);
    let ack = read_response(&mut r, false);
    assert_eq!(ack.status, 200, "{ack:?}");
    sim.wait_for_log(&format!(
        "HTTP_BODY_COMPLETION: {} bytes in total, fnv1a {:08x}",
        payload.len(),
        fnv1a(&payload)
    ));

    r.get_mut()
        .write_all(format!("GET /stream?kib={LOSSY_KIB} HTTP/1.1\r\nHost: d\r\n\r\n").as_bytes())
        .unwrap();
    let stream = read_response(&mut r, false);
    assert_eq!(stream.status, 200);
    let expected = stream_blocks(LOSSY_KIB);
    assert_eq!(stream.body.len(), expected.len());
    assert!(stream.body == expected, "the answer differs");
}

#[test]
fn a_256_kib_websocket_echo_crosses_a_lossy_link_intact() {
    let Some(sim) = device_on_link(8, LOSSY) else {
        return;
    };
    let s = sim.connect();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let url = format!("ws://{}/", sim.addr());
    let (mut ws, _) = tungstenite::client(url.as_str(), s).expect("handshake");
    let message = support::pseudo_random(LOSSY_KIB as usize * 1024);
    ws.send(tungstenite::Message::binary(message.clone()))
        .unwrap();
    loop {
        match ws.read().expect("the echo") {
            tungstenite::Message::Binary(echo) => {
                assert_eq!(fnv1a(&echo), fnv1a(&message), "the echo differs");
                assert_eq!(echo.len(), message.len());
                break;
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// One GET on a fresh connection: its status, or `None` if the device
/// refused or reset the connection.
fn try_get(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12)?.parse().ok()
}

#[test]
fn a_flood_of_ten_times_max_connections_is_served_or_refused_and_then_all_is_normal() {
    let Some(sim) = device_on_link(4, "seed=1") else {
        return;
    };
    let addr = sim.addr();
    let rss_before = sim.rss_kib();
    let clients: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || try_get(addr)))
        .collect();
    let outcomes: Vec<Option<u16>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let served = outcomes.iter().filter(|o| **o == Some(200)).count();
    let busy = outcomes.iter().filter(|o| **o == Some(503)).count();
    let refused = outcomes.iter().filter(|o| o.is_none()).count();
    assert_eq!(
        served + busy + refused,
        40,
        "only 200, 503 or a refusal: {outcomes:?}"
    );
    assert!(served >= 4, "the admitted ones complete: {outcomes:?}");
    if let (Some(before), Some(after)) = (rss_before, sim.rss_kib()) {
        assert!(
            after < before + 16 * 1024,
            "memory stays bounded: {before} KiB -> {after} KiB"
        );
    }
    for _ in 0..8 {
        assert_eq!(try_get(addr), Some(200), "served normally afterwards");
    }
}

#[test]
fn a_request_reaches_the_device_over_ipv6() {
    if Sim::net() == "host" {
        eprintln!("SKIPPED: WASMGATE_NET=host serves the host's own sockets");
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this machine has no IPv6 loopback (::1)");
        return;
    }
    // The forward listens on [::1] and reaches the device's IPv6 address.
    let toml = device_toml(4).replace("forward = 0\n", "forward = 0\naddress = \"::1\"\n");
    let sim = Sim::start_with(&toml, &["--net", "smoltcp"]);
    assert!(sim.addr().is_ipv6(), "{}", sim.addr());
    let r = support::roundtrip(&sim, b"GET /status HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 200);
}
