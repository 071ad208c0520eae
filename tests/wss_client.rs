//! The device as a TLS WebSocket client (`wss://`): the `ws-client` guest on
//! a `[[client]]` connection with `tls = true`, against a rustls +
//! tungstenite server run by the test with certificates made for each case.
//! A certificate from the trusted CA works; a wrong name, a self-signed or an
//! expired certificate fails with the reason in words (the guest logs its
//! `CLIENT_CONNECTION_ERROR` text); `skip_hostname_check` and
//! `allow_self_signed` each let exactly their case through, only on the
//! connection that asks.

mod support;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use support::Sim;
use support::certs::{Ca, Leaf, self_signed};
use tungstenite::Message;

const GREETING: &str = "Hello, server!";
const WELCOME: &str = "welcome over TLS";

/// A WSS server on 127.0.0.1 presenting `leaf`. Each connection that gets
/// through the handshake sends [`WELCOME`] after reading the device's
/// greeting; the channel gets the greeting or the handshake error.
fn wss_server(leaf: &Leaf) -> (u16, mpsc::Receiver<Result<String, String>>) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let tls =
                StreamOwned::new(ServerConnection::new(config.clone()).expect("conn"), stream);
            let outcome = match tungstenite::accept(tls) {
                Ok(mut ws) => match ws.read() {
                    Ok(Message::Text(greeting)) => {
                        let _ = ws.send(Message::text(WELCOME));
                        let _ = ws.flush();
                        Ok(greeting.to_string())
                    }
                    other => Err(format!("no greeting: {other:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            if tx.send(outcome).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// A device that trusts `ca_pem` and runs one `[[client]]` per entry of
/// `clients` (extra TOML keys) to 127.0.0.1:`port` with TLS.
fn client_device(ca_pem: &str, port: u16, clients: &[&str]) -> Sim {
    let mut toml = format!(
        "[device]\nname = \"wss client test\"\nflash = \"flash\"\n\
         [tls]\nca = '''\n{ca_pem}'''\n\
         [[protocol]]\nname = \"echo-protocol\"\nmodule = \"builtin:ws-client\"\n\
         [[listener]]\nname = \"http\"\nport = 80\nforward = 0\nmounts = {{}}\n"
    );
    for (i, extra) in clients.iter().enumerate() {
        toml.push_str(&format!(
            "[[client]]\nname = \"c{i}\"\nprotocol = \"echo-protocol\"\naddress = \"127.0.0.1\"\n\
             port = {port}\npath = \"/\"\nws_protocol = \"echo-protocol\"\ntls = true\n\
             reconnect = false\n{extra}\n"
        ));
    }
    Sim::start(&toml)
}

/// Waits for a log line containing `needle`, up to 10 s.
fn wait_for(sim: &Sim, needle: &str) -> String {
    sim.wait_for_log(needle)
}

/// Expects the device to get through: the server hears the greeting and
/// the guest logs the welcome.
fn expect_success(sim: &Sim, server: &mpsc::Receiver<Result<String, String>>) {
    let greeting = server
        .recv_timeout(Duration::from_secs(10))
        .expect("the device connects");
    assert_eq!(greeting.as_deref(), Ok(GREETING), "logs:\n{}", sim.logs());
    wait_for(sim, &format!("Received: {WELCOME}"));
}

/// Expects the connection to fail with `reason` in the guest's
/// `CLIENT_CONNECTION_ERROR` text.
fn expect_failure(sim: &Sim, reason: &str) {
    let logs = wait_for(sim, "Connection error: ");
    let line = logs
        .lines()
        .find(|l| l.contains("Connection error: "))
        .expect("the line");
    assert!(line.contains(reason), "expected `{reason}` in: {line}");
}

#[test]
fn a_certificate_from_the_trusted_ca_works() {
    let ca = Ca::new("wss trusted CA");
    let (port, server) = wss_server(&ca.issue(&["127.0.0.1"]));
    let sim = client_device(&ca.pem, port, &[""]);
    expect_success(&sim, &server);
    assert!(
        !sim.logs().contains("weakened checks"),
        "full verification is not a warning"
    );
}

#[test]
fn the_host_names_the_server_when_given() {
    // As lws: the certificate is checked against `host` (its port dropped),
    // not against the address connected to.
    let ca = Ca::new("wss host CA");
    let (port, server) = wss_server(&ca.issue(&["sensor.example"]));
    let sim = client_device(&ca.pem, port, &["host = \"sensor.example:443\""]);
    expect_success(&sim, &server);
}

#[test]
fn a_wrong_name_fails_and_passes_only_with_skip_hostname_check() {
    let ca = Ca::new("wss name CA");
    let (port, _server) = wss_server(&ca.issue(&["device.example"]));
    let sim = client_device(&ca.pem, port, &[""]);
    expect_failure(&sim, "name mismatch");
    drop(sim);

    let (port, server) = wss_server(&ca.issue(&["device.example"]));
    let sim = client_device(&ca.pem, port, &["skip_hostname_check = true"]);
    expect_success(&sim, &server);
    wait_for(&sim, "certificate name not checked");
}

#[test]
fn a_self_signed_certificate_fails_and_passes_only_with_allow_self_signed() {
    let ca = Ca::new("wss self-signed CA");
    let (port, _server) = wss_server(&self_signed(&["127.0.0.1"]));
    let sim = client_device(&ca.pem, port, &[""]);
    expect_failure(&sim, "unknown issuer");
    drop(sim);

    let (port, server) = wss_server(&self_signed(&["127.0.0.1"]));
    let sim = client_device(&ca.pem, port, &["allow_self_signed = true"]);
    expect_success(&sim, &server);
    wait_for(&sim, "self-signed certificates allowed");
}

#[test]
fn allow_self_signed_on_one_connection_weakens_no_other() {
    let ca = Ca::new("wss per-connection CA");
    let stranger = Ca::new("a CA the device does not trust");
    let (port, server) = wss_server(&self_signed(&["127.0.0.1"]));
    let sim = client_device(&ca.pem, port, &["allow_self_signed = true", ""]);
    let mut outcomes: Vec<Result<String, String>> = (0..2)
        .map(|_| {
            server
                .recv_timeout(Duration::from_secs(10))
                .expect("both connect")
        })
        .collect();
    outcomes.sort();
    assert!(
        outcomes[0].is_ok() && outcomes[1].is_err(),
        "one lenient, one strict: {outcomes:?}\n{}",
        sim.logs()
    );
    expect_failure(&sim, "unknown issuer");
    drop(sim);

    // A certificate from an unknown CA is not self-signed: still refused.
    let (port, _server) = wss_server(&stranger.issue(&["127.0.0.1"]));
    let sim = client_device(&ca.pem, port, &["allow_self_signed = true"]);
    expect_failure(&sim, "unknown issuer");
}

#[test]
fn an_expired_certificate_fails_in_words() {
    let ca = Ca::new("wss expired CA");
    let (port, _server) = wss_server(&ca.issue_expired(&["127.0.0.1"]));
    let start = Instant::now();
    let sim = client_device(&ca.pem, port, &[""]);
    expect_failure(&sim, "expired");
    assert!(start.elapsed() < Duration::from_secs(10));
}
