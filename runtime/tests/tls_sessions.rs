//! HTTPS through the context's TLS layer with an explicit clock: a rustls
//! client in the test exchanges records with the context in memory (no
//! sockets), so handshakes, versions, SNI, bad input and timeouts are exact.
#![cfg(feature = "tls")]

#[path = "../../tests/support/certs.rs"]
#[allow(dead_code, reason = "shared with the end-to-end tests")]
mod certs;
mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use wasmgate::Context;
use wasmgate::config::{Handler, Listener, Mount};
use wasmgate::context::ConnId;
use wasmgate::tls::{Identity, ServerTls};

const GET: &[u8] = b"GET /status HTTP/1.1\r\nHost: device\r\n\r\n";

/// A device serving the `http-post` guest on one TLS listener with `leaves`
/// (the first is the default certificate).
fn device(leaves: &[&certs::Leaf]) -> Context {
    let identities: Vec<Identity<'_>> = leaves
        .iter()
        .map(|l| Identity {
            chain_pem: l.chain_pem.as_bytes(),
            key_pem: l.key_pem.as_bytes(),
        })
        .collect();
    let listener = Listener {
        name: "https".into(),
        port: 443,
        mounts: vec![Mount {
            prefix: "/".into(),
            protocol: "http".into(),
        }],
        websocket: Vec::new(),
        default_websocket: None,
        tls: Some(ServerTls::from_pem(&identities).expect("test certificates load")),
    };
    let guest = Handler::Wasm(wasmgate_guests::HTTP_POST.to_vec());
    common::device_with(listener, "http", guest)
}

fn client(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// Moves records both ways until neither side has anything to say; returns
/// the plaintext the client read. Panics on a client-side TLS error.
fn exchange(ctx: &mut Context, id: ConnId, tls: &mut ClientConnection, now: Instant) -> Vec<u8> {
    let mut plain = Vec::new();
    for _ in 0..100 {
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records).expect("client records");
        }
        let mut sent = &records[..];
        while !sent.is_empty() {
            let space = ctx.rx_space(id).min(sent.len());
            assert!(space > 0, "the context takes the client's records");
            let n = ctx.receive(id, &sent[..space], now);
            sent = &sent[n..];
        }
        ctx.service(now);
        let answer = ctx.transmit(id).to_vec();
        ctx.transmitted(id, answer.len(), now);
        let mut incoming = &answer[..];
        while !incoming.is_empty() {
            tls.read_tls(&mut incoming).expect("client reads records");
            tls.process_new_packets()
                .expect("the client accepts the server");
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = tls.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&buf[..n]);
        }
        if records.is_empty() && answer.is_empty() {
            break;
        }
    }
    plain
}

#[test]
fn https_works_over_tls_1_3_and_1_2_with_alpn() {
    let ca = certs::Ca::new("tls-versions CA");
    let leaf = ca.issue(&["device.test"]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut ctx = device(&[&leaf]);
        let now = Instant::now();
        let id = ctx.accept(0, peer(), now).unwrap();
        assert!(ctx.is_tls(id));
        let name = ServerName::try_from("device.test").unwrap();
        let mut tls = ClientConnection::new(client(&ca.pem, &[version]), name).unwrap();
        tls.writer().write_all(GET).unwrap();
        let answer = String::from_utf8(exchange(&mut ctx, id, &mut tls, now)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{version:?}: {answer}");
        assert!(answer.contains("\"requests\""), "{version:?}: {answer}");
        assert_eq!(tls.protocol_version(), Some(version.version));
        assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
}

#[test]
fn sni_chooses_the_certificate_and_no_name_gets_the_first() {
    let (ca_a, ca_b) = (certs::Ca::new("sni CA a"), certs::Ca::new("sni CA b"));
    let (a, b) = (ca_a.issue(&["a.test"]), ca_b.issue(&["b.test"]));
    let mut ctx = device(&[&a, &b]);
    let now = Instant::now();
    for (ca, name) in [(&ca_a, "a.test"), (&ca_b, "b.test")] {
        let id = ctx.accept(0, peer(), now).unwrap();
        let server = ServerName::try_from(name).unwrap();
        let mut tls =
            ClientConnection::new(client(&ca.pem, rustls::DEFAULT_VERSIONS), server).unwrap();
        tls.writer().write_all(GET).unwrap();
        let answer = String::from_utf8(exchange(&mut ctx, id, &mut tls, now)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
    }
    // An IP address sends no SNI: the first certificate (a.test) comes.
    let id = ctx.accept(0, peer(), now).unwrap();
    let server = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls =
        ClientConnection::new(client(&ca_a.pem, rustls::DEFAULT_VERSIONS), server).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    ctx.receive(id, &hello, now);
    let flight = ctx.transmit(id).to_vec();
    tls.read_tls(&mut &flight[..]).unwrap();
    let err = tls
        .process_new_packets()
        .expect_err("a.test is not 127.0.0.1");
    assert!(
        err.to_string().contains("a.test"),
        "the default certificate was presented: {err}"
    );
}

#[test]
fn plain_http_to_the_tls_port_gets_a_readable_400_and_a_close() {
    let ca = certs::Ca::new("plain-http CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let now = Instant::now();
    let id = ctx.accept(0, peer(), now).unwrap();
    ctx.receive(id, GET, now);
    let answer = String::from_utf8(ctx.transmit(id).to_vec()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("https://"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "the length matches the body: {answer:?}"
    );
    assert!(!ctx.should_close(id), "the answer goes out first");
    let n = answer.len();
    ctx.transmitted(id, n, now);
    assert!(ctx.should_close(id));
}

#[test]
fn garbage_closes_that_connection_and_harms_no_other() {
    let ca = certs::Ca::new("garbage CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let now = Instant::now();
    let good = ctx.accept(0, peer(), now).unwrap();
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // Noise, a handshake record header with noise after it, and a
    // ClientHello record whose body is cut short.
    let mut record = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    record.extend(&noise[..64]);
    let truncated = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03];
    for garbage in [&noise[..], &record[..], &truncated[..]] {
        let bad = ctx.accept(0, peer(), now).unwrap();
        ctx.receive(bad, garbage, now);
        let alert = ctx.transmit(bad).len();
        ctx.transmitted(bad, alert, now);
        assert!(ctx.should_close(bad), "{garbage:?}");
        assert_eq!(ctx.rx_space(bad), 0, "no more input is taken");
        ctx.close(bad, now);
    }

    let name = ServerName::try_from("device.test").unwrap();
    let mut tls = ClientConnection::new(client(&ca.pem, rustls::DEFAULT_VERSIONS), name).unwrap();
    tls.writer().write_all(GET).unwrap();
    let answer = String::from_utf8(exchange(&mut ctx, good, &mut tls, now)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_handshake_that_stalls_is_closed_at_its_deadline() {
    let ca = certs::Ca::new("stall CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let start = Instant::now();
    let id = ctx.accept(0, peer(), start).unwrap();
    let name = ServerName::try_from("device.test").unwrap();
    let mut tls = ClientConnection::new(client(&ca.pem, rustls::DEFAULT_VERSIONS), name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    ctx.receive(id, &hello[..hello.len() / 2], start);
    let due = ctx.service(start).expect("the handshake has a deadline");
    assert!(due <= start + wasmgate::tls::HANDSHAKE_TIMEOUT);
    ctx.service(start + wasmgate::tls::HANDSHAKE_TIMEOUT - Duration::from_millis(1));
    assert!(!ctx.should_close(id), "not before the deadline");
    ctx.service(start + wasmgate::tls::HANDSHAKE_TIMEOUT);
    let _ = ctx.transmit(id).to_vec();
    let n = ctx.transmit(id).len();
    ctx.transmitted(id, n, start + wasmgate::tls::HANDSHAKE_TIMEOUT);
    assert!(ctx.should_close(id), "closed at the deadline");
}

#[test]
fn a_client_that_rejects_the_certificate_ends_only_its_connection() {
    let ca = certs::Ca::new("reject CA");
    let stranger = certs::Ca::new("some other CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let now = Instant::now();
    let id = ctx.accept(0, peer(), now).unwrap();
    let name = ServerName::try_from("device.test").unwrap();
    let mut tls =
        ClientConnection::new(client(&stranger.pem, rustls::DEFAULT_VERSIONS), name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    ctx.receive(id, &hello, now);
    let flight = ctx.transmit(id).to_vec();
    ctx.transmitted(id, flight.len(), now);
    tls.read_tls(&mut &flight[..]).unwrap();
    let err = tls.process_new_packets().expect_err("unknown issuer");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let mut alert = Vec::new();
    tls.write_tls(&mut alert).unwrap();
    ctx.receive(id, &alert, now);
    let rest = ctx.transmit(id).len();
    ctx.transmitted(id, rest, now);
    assert!(
        ctx.should_close(id),
        "the device closes after the client's alert"
    );
}

#[test]
fn a_large_request_body_and_its_answer_cross_tls_intact() {
    let ca = certs::Ca::new("body CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let now = Instant::now();
    let id = ctx.accept(0, peer(), now).unwrap();
    let name = ServerName::try_from("device.test").unwrap();
    let mut tls = ClientConnection::new(client(&ca.pem, rustls::DEFAULT_VERSIONS), name).unwrap();
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: device\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.set_buffer_limit(None); // all of it queued before the handshake
    tls.writer().write_all(head.as_bytes()).unwrap();
    tls.writer().write_all(&body).unwrap();
    let answer = String::from_utf8(exchange(&mut ctx, id, &mut tls, now)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Received your request"), "{answer}");
}

#[test]
fn records_of_mixed_sizes_never_overflow_the_decrypted_buffer() {
    // A large record cut by the driver's chunk, then small records: one
    // chunk then completes more than 16 KiB of plaintext at once, past what
    // rustls holds decrypted. Nothing may be lost or fail.
    let ca = certs::Ca::new("mixed records CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let now = Instant::now();
    let id = ctx.accept(0, peer(), now).unwrap();
    let name = ServerName::try_from("device.test").unwrap();
    let mut tls = ClientConnection::new(client(&ca.pem, rustls::DEFAULT_VERSIONS), name).unwrap();
    // One 16,000-byte record, then 70 of 200 bytes, twenty times: the big
    // record's start drifts across the 16 KiB chunks, so some chunk begins
    // with most of it read already and completes it plus ~15 KiB of small ones.
    let pieces: Vec<usize> = (0..20)
        .flat_map(|_| std::iter::once(16_000).chain(std::iter::repeat_n(200, 70)))
        .collect();
    let total: usize = pieces.iter().sum();
    let head = format!("POST /upload HTTP/1.1\r\nHost: device\r\nContent-Length: {total}\r\n\r\n");
    tls.set_buffer_limit(None);
    tls.writer().write_all(head.as_bytes()).unwrap();
    for (i, len) in pieces.iter().enumerate() {
        tls.writer()
            .write_all(&vec![b'a' + (i % 26) as u8; *len])
            .unwrap();
    }
    let answer = String::from_utf8(exchange(&mut ctx, id, &mut tls, now)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Received your request"), "{answer}");
}

#[test]
fn a_peer_that_stops_reading_is_dropped_after_the_response_timeout() {
    // The whole answer fits the session's ciphertext buffer: the HTTP layer
    // is done and idle, only encrypted bytes wait on the peer.
    let ca = certs::Ca::new("stalled reader CA");
    let mut ctx = device(&[&ca.issue(&["device.test"])]);
    let start = Instant::now();
    let id = ctx.accept(0, peer(), start).unwrap();
    let name = ServerName::try_from("device.test").unwrap();
    let mut tls = ClientConnection::new(client(&ca.pem, rustls::DEFAULT_VERSIONS), name).unwrap();
    tls.writer().write_all(GET).unwrap();
    exchange(&mut ctx, id, &mut tls, start);
    tls.writer()
        .write_all(b"GET /stream?kib=8 HTTP/1.1\r\nHost: device\r\n\r\n")
        .unwrap();
    let mut records = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut records).unwrap();
    }
    ctx.receive(id, &records, start);
    let timeout = wasmgate::config::Limits::DEFAULT.response_timeout;
    let mut closed_at = None;
    for s in 0..=3 * timeout.as_secs() {
        let now = start + Duration::from_secs(s);
        ctx.service(now);
        assert!(!ctx.transmit(id).is_empty(), "the answer waits, encrypted");
        if ctx.should_close(id) {
            closed_at = Some(s);
            break;
        }
    }
    let closed_at = closed_at.expect("dropped, not kept forever");
    assert!(closed_at >= timeout.as_secs(), "not before the timeout");
}
