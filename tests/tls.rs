//! HTTPS and WSS through the real simulator: a TLS listener with a
//! certificate from a CA made for the test (inline PEM in the device config),
//! next to a plain one. Clients: rustls (HTTP and, with tungstenite, WSS),
//! curl with `--cacert`, and Python's `ssl` and `websockets`. Bad input
//! (noise, a half handshake, a silent client, plain HTTP) closes only the
//! connection that sent it.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use support::certs::{self, Ca, Leaf};
use support::{Sim, read_response};
use tungstenite::Message;

/// Handshake timeout of the test device, short so that the stall test is quick.
const HANDSHAKE_TIMEOUT_MS: u64 = 1500;

/// A device with `http-post` on `/` and the `ws-echo` WebSocket protocol on
/// a plain listener and on a TLS listener serving `leaf`.
fn tls_device(leaf: &Leaf) -> Sim {
    let listener = |name: &str, port: u16| {
        format!(
            "[[listener]]\nname = \"{name}\"\nport = {port}\nforward = 0\n\
             mounts = {{ \"/\" = \"http\" }}\n\
             websocket = [\"echo_server\"]\ndefault_websocket = \"echo_server\"\n"
        )
    };
    let toml = format!(
        "[device]\nname = \"tls test\"\nflash = \"flash\"\n\
         [limits]\nmax_connections = 12\ntls_handshake_timeout_ms = {HANDSHAKE_TIMEOUT_MS}\n\
         ws_max_frame_bytes = 4194304\nws_max_message_bytes = 4194304\n\
         max_body_bytes = 4194304\n\
         [[protocol]]\nname = \"http\"\nmodule = \"builtin:http-post\"\n\
         [[protocol]]\nname = \"echo_server\"\nmodule = \"builtin:ws-echo\"\n\
         {}{}\
         [[listener.certificate]]\ncert = '''\n{}'''\nkey = '''\n{}'''\n",
        listener("http", 80),
        listener("https", 443),
        leaf.chain_pem,
        leaf.key_pem,
    );
    Sim::start(&toml)
}

#[test]
fn https_keep_alive_get_and_a_1_mib_post_with_a_rustls_client() {
    let ca = Ca::new("https e2e CA");
    let sim = tls_device(&ca.issue(&["localhost", "127.0.0.1"]));
    let tls = certs::connect(sim.tls_addr(), &ca.pem, "localhost");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut r = BufReader::new(tls);
    r.get_mut()
        .write_all(b"GET /status HTTP/1.1\r\nHost: device\r\n\r\n")
        .unwrap();
    let status = read_response(&mut r, false);
    assert_eq!(status.status, 200, "{status:?}");
    assert!(status.text().contains("\"requests\""), "{}", status.text());

    let payload = support::pseudo_random(1 << 20);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: device\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    let w = r.get_mut();
    w.write_all(head.as_bytes()).unwrap();
    w.write_all(&payload).unwrap();
    let ack = read_response(&mut r, false);
    assert_eq!(ack.status, 200, "{ack:?}");
    assert!(
        ack.text().contains("Received your request"),
        "{}",
        ack.text()
    );
    // The guest saw every body byte.
    sim.wait_for_log("HTTP_BODY_COMPLETION: 1048576 bytes in total");
}

#[test]
fn wss_echo_with_tungstenite_over_rustls() {
    let ca = Ca::new("wss e2e CA");
    let sim = tls_device(&ca.issue(&["localhost"]));
    let tls = certs::connect(sim.tls_addr(), &ca.pem, "localhost");
    let url = format!("wss://localhost:{}/", sim.tls_addr().port());
    let (mut ws, response) = tungstenite::client(url.as_str(), tls).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello over TLS")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello over TLS"));
    let big = support::pseudo_random(1 << 20);
    ws.send(Message::binary(big.clone())).unwrap();
    match ws.read().unwrap() {
        Message::Binary(echo) => assert!(echo[..] == big[..], "1 MiB echo differs"),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn curl_with_cacert_and_plain_http_on_the_tls_port() {
    let ca = Ca::new("curl e2e CA");
    let sim = tls_device(&ca.issue(&["localhost"]));
    let ca_file = sim.dir().join("test-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let port = sim.tls_addr().port();
    let url = format!("https://localhost:{port}/status");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let Some((code, out, err)) = support::curl(&[
        "-sS",
        "--resolve",
        &resolve,
        "--cacert",
        ca_file.to_str().unwrap(),
        &url,
    ]) else {
        return;
    };
    assert_eq!(code, 0, "curl failed: {err}");
    assert!(out.contains("\"requests\""), "{out}");

    // Without the CA, curl refuses the certificate (exit 60).
    let (code, _, err) =
        support::curl(&["-sS", "--resolve", &resolve, &url]).expect("curl ran once");
    assert_eq!(code, 60, "an unknown CA must fail verification: {err}");

    // Plain HTTP to the TLS port: a readable answer, not a hang.
    let (code, out, err) =
        support::curl(&["-sS", &format!("http://127.0.0.1:{port}/")]).expect("curl ran once");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("speaks HTTPS"), "{out}");
    sim.wait_for_log("plain HTTP on a TLS port");
}

const PY_CLIENT: &str = r#"
import asyncio, ssl, sys, urllib.request
import websockets

port, cafile = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
with urllib.request.urlopen(f"https://localhost:{port}/status", context=ctx, timeout=10) as r:
    assert r.status == 200, r.status
    assert b'"requests"' in r.read()

async def main():
    async with websockets.connect(f"wss://localhost:{port}/", ssl=ctx, max_size=None) as ws:
        for message in ["text over TLS", b"\x00\x01" * 40000]:
            await ws.send(message)
            echo = await asyncio.wait_for(ws.recv(), 10)
            assert echo == message, (len(echo), len(message))
        await ws.close()
    print("OK")

asyncio.run(asyncio.wait_for(main(), 60))
"#;

#[test]
fn python_ssl_and_websockets_clients() {
    match Command::new("python3")
        .args(["-c", "import ssl, websockets"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED: python3 cannot import ssl and websockets (tests/run.sh installs \
                 websockets): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: python3 is not installed ({e})");
            return;
        }
    }
    let ca = Ca::new("python e2e CA");
    let sim = tls_device(&ca.issue(&["localhost"]));
    let ca_file = sim.dir().join("test-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            PY_CLIENT,
            &sim.tls_addr().port().to_string(),
            ca_file.to_str().unwrap(),
        ])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "python client failed ({}):\n{stdout}\n{}\nsimulator log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sim.logs()
    );
}

/// True once the device has closed `s` (EOF or reset), waiting up to `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn noise_half_handshakes_and_silence_close_only_their_connections() {
    let ca = Ca::new("bad input CA");
    let sim = tls_device(&ca.issue(&["localhost"]));
    let addr = sim.tls_addr();

    let mut noisy = TcpStream::connect(addr).unwrap();
    noisy.write_all(&support::pseudo_random(3000)).unwrap();

    // Half a ClientHello, then nothing.
    let server = ServerName::try_from("localhost").unwrap();
    let mut hello = Vec::new();
    ClientConnection::new(certs::client_config(&ca.pem), server)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();

    // Meanwhile a real client is served, over TLS and in plain.
    let mut r = BufReader::new(certs::connect(addr, &ca.pem, "localhost"));
    r.get_mut()
        .write_all(b"GET /status HTTP/1.1\r\nHost: device\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);
    assert_eq!(
        support::roundtrip(&sim, b"GET /status HTTP/1.1\r\nHost: d\r\n\r\n").status,
        200
    );

    let limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS + 3000);
    assert!(
        closed_within(&mut noisy, limit),
        "noise closes its connection"
    );
    assert!(
        closed_within(&mut half, limit),
        "a half handshake times out"
    );
    assert!(closed_within(&mut silent, limit), "silence times out");
    let logs = sim.wait_for_log("handshake not finished");
    assert!(logs.contains("closing: TLS"), "reasons are logged:\n{logs}");

    // The established connection outlived them all.
    r.get_mut()
        .write_all(b"GET /status HTTP/1.1\r\nHost: device\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);
}
