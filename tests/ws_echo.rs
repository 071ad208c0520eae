//! The `ws-echo` guest through the real simulator: the upgrade handshake (the
//! RFC 6455 accept key, refusals), frames on a raw socket (a masked text frame
//! echoed unmasked, fragments kept, the close handshake), the session bound
//! (four connections, a fifth refused), and a real client, Python
//! `websockets`, sending text, binary, a 1 MiB message and fragmented ones.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::ws_frame::client_frame as frame;
use support::{Sim, device_toml, read_response};

/// RFC 6455 section 1.3's example: this key must be answered with this accept value.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The echo server on `/` (WebSocket only) next to `hello` on `/hello`. The
/// WebSocket size limits are raised so that the 1 MiB message fits in one frame.
fn ws_device() -> Sim {
    let mut toml = device_toml(
        &[
            ("echo_server", "builtin:ws-echo"),
            ("hello", "builtin:hello"),
        ],
        &[("/hello", "hello")],
        "[limits]\nmax_connections = 8\n\
         ws_max_frame_bytes = 16777216\nws_max_message_bytes = 16777216\n",
    );
    // device_toml writes the listener table last: these keys belong to it.
    toml.push_str("websocket = [\"echo_server\"]\ndefault_websocket = \"echo_server\"\n");
    Sim::start(&toml)
}

/// An upgrade request for `/` with `key`, `version` and an optional subprotocol.
fn upgrade(key: &str, version: u32, protocol: Option<&str>) -> String {
    let protocol = protocol.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    format!(
        "GET / HTTP/1.1\r\nHost: device\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{protocol}\r\n"
    )
}

/// Opens a WebSocket to the echo server on a raw socket and checks the `101`.
fn open(sim: &Sim) -> BufReader<TcpStream> {
    let mut s = sim.connect();
    s.write_all(upgrade(RFC_KEY, 13, Some("echo_server")).as_bytes())
        .expect("send upgrade");
    let mut r = BufReader::new(s);
    let head = read_response(&mut r, true);
    assert_eq!(head.status, 101, "{head:?}");
    r
}

/// A frame as the server sent it.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Reads one server frame; panics if it is masked (servers must not mask).
/// Pings the runtime may send in between are skipped.
fn read_frame(r: &mut impl Read) -> Frame {
    loop {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).expect("frame head");
        assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                r.read_exact(&mut n).expect("16-bit length");
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                r.read_exact(&mut n).expect("64-bit length");
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(len).expect("length fits")];
        r.read_exact(&mut payload).expect("payload");
        let f = Frame {
            fin: head[0] & 0x80 != 0,
            opcode: head[0] & 0x0f,
            payload,
        };
        if f.opcode != 0x9 {
            return f;
        }
    }
}

#[test]
fn the_handshake_answers_101_with_the_rfc_accept_key_and_the_protocol() {
    let sim = ws_device();
    let mut s = sim.connect();
    s.write_all(upgrade(RFC_KEY, 13, Some("echo_server")).as_bytes())
        .unwrap();
    let head = read_response(&mut BufReader::new(s), true);
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert!(
        head.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{head:?}"
    );
    assert!(
        head.header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
        "{head:?}"
    );
    assert_eq!(head.header("sec-websocket-protocol"), Some("echo_server"));
}

#[test]
fn an_upgrade_naming_no_protocol_gets_the_default_and_no_protocol_header() {
    let sim = ws_device();
    let mut s = sim.connect();
    s.write_all(upgrade(RFC_KEY, 13, None).as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let head = read_response(&mut r, true);
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("sec-websocket-protocol"), None, "{head:?}");
    r.get_mut()
        .write_all(&frame(true, 0x1, b"default"))
        .unwrap();
    assert_eq!(read_frame(&mut r).payload, b"default");
}

#[test]
fn a_key_that_is_not_16_bytes_of_base64_is_refused_with_400() {
    let sim = ws_device();
    let mut s = sim.connect();
    s.write_all(upgrade("not-base64!", 13, Some("echo_server")).as_bytes())
        .unwrap();
    let r = read_response(&mut BufReader::new(s), false);
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn version_8_is_refused_with_426_naming_version_13() {
    let sim = ws_device();
    let mut s = sim.connect();
    s.write_all(upgrade(RFC_KEY, 8, Some("echo_server")).as_bytes())
        .unwrap();
    let r = read_response(&mut BufReader::new(s), false);
    assert_eq!(r.status, 426, "{r:?}");
    assert!(
        r.header("sec-websocket-version")
            .is_some_and(|v| v.split(',').any(|v| v.trim() == "13")),
        "{r:?}"
    );
}

#[test]
fn a_masked_text_frame_is_echoed_unmasked() {
    let sim = ws_device();
    let mut r = open(&sim);
    // RFC 6455 section 5.7: a masked "Hello".
    r.get_mut()
        .write_all(&[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ])
        .unwrap();
    let mut echo = [0u8; 7];
    r.read_exact(&mut echo).unwrap();
    assert_eq!(echo, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
}

#[test]
fn fragments_come_back_as_fragments_of_the_same_kind() {
    let sim = ws_device();
    let mut r = open(&sim);
    r.get_mut().write_all(&frame(false, 0x2, b"Hel")).unwrap();
    assert_eq!(
        read_frame(&mut r),
        Frame {
            fin: false,
            opcode: 0x2,
            payload: b"Hel".to_vec()
        }
    );
    r.get_mut().write_all(&frame(false, 0x0, b"l")).unwrap();
    assert_eq!(
        read_frame(&mut r),
        Frame {
            fin: false,
            opcode: 0x0,
            payload: b"l".to_vec()
        }
    );
    r.get_mut().write_all(&frame(true, 0x0, b"o")).unwrap();
    assert_eq!(
        read_frame(&mut r),
        Frame {
            fin: true,
            opcode: 0x0,
            payload: b"o".to_vec()
        }
    );
}

#[test]
fn a_message_longer_than_the_guests_buffer_comes_back_whole_and_in_order() {
    let sim = ws_device();
    let mut r = open(&sim);
    // 10 KiB in one frame: the guest gets (and echoes) ten 1 KiB pieces.
    let msg: Vec<u8> = (0..10 * 1024u32).map(|i| (i % 251) as u8).collect();
    r.get_mut().write_all(&frame(true, 0x2, &msg)).unwrap();
    let mut echoed = Vec::new();
    let mut frames = 0;
    loop {
        let f = read_frame(&mut r);
        assert_eq!(f.opcode, if frames == 0 { 0x2 } else { 0x0 }, "{frames}");
        echoed.extend_from_slice(&f.payload);
        frames += 1;
        if f.fin {
            break;
        }
    }
    assert_eq!(echoed, msg);
    assert!(frames > 1, "echoed piece by piece, not held whole");
}

#[test]
fn the_close_handshake_returns_the_peers_code_and_ends_the_connection() {
    let sim = ws_device();
    let mut r = open(&sim);
    r.get_mut()
        .write_all(&frame(true, 0x8, &[0x03, 0xe8]))
        .unwrap();
    let close = read_frame(&mut r);
    assert_eq!(close.opcode, 0x8);
    assert_eq!(close.payload.get(..2), Some(&[0x03, 0xe8][..]), "code 1000");
    assert!(support::closed_by_peer(r.get_mut()));
}

#[test]
fn messages_sent_before_a_half_close_are_echoed_then_the_connection_ends() {
    let sim = ws_device();
    let mut r = open(&sim);
    // Three messages and the client's FIN together, no close frame: the
    // session ends (1006), but the client can still read, and the answers
    // to what it sent before its FIN are not dropped.
    let big = support::pseudo_random(10 * 1024);
    let sent = [b"one".to_vec(), b"two".to_vec(), big];
    let read: Vec<u8> = sent.iter().flat_map(|m| frame(true, 0x2, m)).collect();
    r.get_mut().write_all(&read).unwrap();
    r.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    let mut message = Vec::new();
    while echoed.len() < sent.len() {
        let f = read_frame(&mut r);
        assert_ne!(f.opcode, 0x8, "no close frame after a FIN: {echoed:?}");
        message.extend_from_slice(&f.payload);
        if f.fin {
            echoed.push(std::mem::take(&mut message));
        }
    }
    assert!(echoed == sent, "the echoes, whole and in order");
    assert!(
        support::closed_by_peer(r.get_mut()),
        "then the device closes"
    );
}

#[test]
fn http_still_works_on_the_websocket_listener() {
    let sim = ws_device();
    let r = support::roundtrip(&sim, b"GET /hello HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world\n");
}

#[test]
fn a_fifth_connection_is_refused_while_four_sessions_are_open() {
    let sim = ws_device();
    // ws-echo has four session slots (max_sessions = 4).
    let mut open_ones: Vec<_> = (0..4).map(|_| open(&sim)).collect();
    let mut s = sim.connect();
    s.write_all(upgrade(RFC_KEY, 13, Some("echo_server")).as_bytes())
        .unwrap();
    let refused = read_response(&mut BufReader::new(s), false);
    assert_eq!(refused.status, 503, "{refused:?}");
    // The sessions still echo.
    for (i, r) in open_ones.iter_mut().enumerate() {
        let msg = format!("still here {i}");
        r.get_mut()
            .write_all(&frame(true, 0x1, msg.as_bytes()))
            .unwrap();
        assert_eq!(read_frame(r).payload, msg.as_bytes());
    }
    // Closing one frees its slot for a new connection.
    let mut first = open_ones.remove(0);
    first
        .get_mut()
        .write_all(&frame(true, 0x8, &[0x03, 0xe8]))
        .unwrap();
    assert!(support::closed_by_peer(first.get_mut()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = sim.connect();
        s.write_all(upgrade(RFC_KEY, 13, Some("echo_server")).as_bytes())
            .unwrap();
        let head = read_response(&mut BufReader::new(s), true);
        if head.status == 101 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never freed: {head:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The client side of [`python_websockets_client_gets_every_message_back`]:
/// exits 0 and prints `OK` when every echo matched.
const PY_CLIENT: &str = r#"
import asyncio, os, sys
import websockets

async def check(ws, message, what):
    await ws.send(message)
    echo = await ws.recv()
    want = message if isinstance(message, (str, bytes)) else type(message[0])().join(message)
    assert type(echo) is type(want), "%s: got %s, want %s" % (what, type(echo), type(want))
    assert echo == want, "%s: echo differs (%d vs %d)" % (what, len(echo), len(want))

async def main(url):
    async with websockets.connect(
        url, subprotocols=["echo_server"], max_size=None, compression=None
    ) as ws:
        assert ws.subprotocol == "echo_server", ws.subprotocol
        await check(ws, "hello, device", "text")
        await check(ws, bytes(range(256)), "binary")
        await check(ws, "", "empty text")
        await check(ws, os.urandom(1 << 20), "1 MiB binary")
        # Three-byte characters across the guest's 1 KiB pieces.
        await check(ws, "\u20ac\u00e9x" * 2000, "multi-byte text")
        await check(ws, ["frag", "mented ", "t\u00e9xt"], "fragmented text")
        await check(ws, [b"\x00\x01", b"", b"\xfe\xff"], "fragmented binary")
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        await ws.close()
        assert ws.close_code == 1000, ws.close_code
    print("OK")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 120))
"#;

#[test]
fn python_websockets_client_gets_every_message_back() {
    match Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED: python3 cannot import websockets (`python3 -m pip install websockets`; \
                 tests/run.sh installs it): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: python3 is not installed ({e})");
            return;
        }
    }
    let sim = ws_device();
    let out = Command::new("python3")
        .args(["-c", PY_CLIENT, &format!("ws://{}/", sim.addr())])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "python client failed ({}):\n{stdout}\n{stderr}\nsimulator log:\n{}",
        out.status,
        sim.logs()
    );
}
