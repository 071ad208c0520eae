//! The WebSocket client through the real simulator: the `ws-client` guest (the
//! lws port's `echo-protocol` client) on a `[[client]]` connection the device
//! opens at start, against a tungstenite server run by the test. The server
//! gets the guest's greeting and sends a 1 MiB binary message and a text one,
//! which the guest logs; a server that closes the connection sees the device
//! come back (`reconnect = true`), with a fresh session that greets again; a
//! port where nothing listens makes a connection error the guest logs.

mod support;

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Sim, device_toml};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, WebSocket};

/// The guest's protocol name, asked for as `Sec-WebSocket-Protocol` too.
const PROTOCOL: &str = "echo-protocol";
const GREETING: &str = "Hello, server!";

/// A device running the `ws-client` guest, with one `[[client]]` to
/// 127.0.0.1:`port` (`extra` adds keys to that table).
fn client_device(port: u16, extra: &str) -> Sim {
    let mut toml = device_toml(&[(PROTOCOL, "builtin:ws-client")], &[], "");
    // device_toml writes the listener table last; a new array-of-tables
    // header after it starts the client's own table.
    toml.push_str(&format!(
        "\n[[client]]\nname = \"echo\"\nprotocol = \"{PROTOCOL}\"\naddress = \"127.0.0.1\"\n\
         port = {port}\npath = \"/\"\nws_protocol = \"{PROTOCOL}\"\n{extra}"
    ));
    Sim::start(&toml)
}

/// The handshake check: the request must ask for `echo-protocol`, and the
/// answer names it.
#[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
fn require_protocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let asked = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !asked.split(',').any(|p| p.trim() == PROTOCOL) {
        let mut refusal = ErrorResponse::new(Some(format!("no {PROTOCOL} in {asked:?}")));
        *refusal.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        PROTOCOL.parse().expect("header value"),
    );
    Ok(resp)
}

/// Accepts the next connection on `listener` and completes a WebSocket
/// handshake that requires (and answers) `Sec-WebSocket-Protocol: echo-protocol`.
fn accept(listener: &TcpListener) -> WebSocket<TcpStream> {
    let (stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    tungstenite::accept_hdr(stream, require_protocol).expect("WebSocket handshake")
}

/// The next data message, skipping pings and pongs.
fn next_message(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("read a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// Waits up to `limit` for a log line that satisfies `wanted`; returns it.
fn wait_for_line(sim: &Sim, limit: Duration, wanted: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let logs = sim.logs();
        if let Some(line) = logs.lines().find(|l| wanted(l)) {
            return line.to_string();
        }
        assert!(
            start.elapsed() < limit,
            "the awaited log line never came; logs:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_client_greets_the_server_and_logs_what_it_receives() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let mut ws = accept(&listener);
        let greeting = next_message(&mut ws);
        tx.send(greeting).expect("report the greeting");
        ws.send(Message::binary(vec![0x5a; 1024 * 1024]))
            .expect("send 1 MiB");
        ws.send(Message::text("greetings from the test server"))
            .expect("send text");
        // Keep the connection open until the device goes away.
        while ws.read().is_ok() {}
    });

    let sim = client_device(port, "");
    let greeting = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("no greeting within 5 s; logs:\n{}", sim.logs()));
    assert_eq!(greeting, Message::text(GREETING));
    sim.wait_for_log("Connected to server");
    sim.wait_for_log("Received: 1048576 bytes of binary");
    let logs = sim.wait_for_log("Received: greetings from the test server");
    assert!(
        !logs.contains("Connection error"),
        "no connection error expected; logs:\n{logs}"
    );
    drop(sim);
    let _ = server.join();
}

#[test]
fn a_dropped_connection_is_made_again_when_the_config_says_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The first connection: take the greeting, then close it from here.
        let mut ws = accept(&listener);
        let first = next_message(&mut ws);
        let _ = ws.close(None);
        // Finish the close handshake (the device's close frame, then EOF).
        while ws.read().is_ok() {}
        let _ = tx.send((1, first, Instant::now()));
        // The second: the device came back, with a fresh session that greets again.
        let mut ws = accept(&listener);
        let second = next_message(&mut ws);
        let _ = tx.send((2, second, Instant::now()));
        while ws.read().is_ok() {}
    });

    let sim = client_device(port, "reconnect = true\n");
    let (n, first, closed_at) = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("the first connection never came; logs:\n{}", sim.logs()));
    assert_eq!((n, first), (1, Message::text(GREETING)));
    let (n, second, again_at) = rx
        .recv_timeout(Duration::from_secs(6))
        .unwrap_or_else(|_| panic!("no second connection within 6 s; logs:\n{}", sim.logs()));
    assert_eq!((n, second), (2, Message::text(GREETING)));
    let waited = again_at.duration_since(closed_at);
    assert!(
        waited < Duration::from_secs(5),
        "reconnected after {waited:?}"
    );
    sim.wait_for_log("Connection closed");
}

#[test]
fn a_refused_connection_reaches_the_guest_as_a_connection_error() {
    // A port where nothing listens: bind one, then let it go.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let sim = client_device(port, "");
    let line = wait_for_line(&sim, Duration::from_secs(10), |l| {
        l.contains("Connection error:")
    });
    assert!(
        line.to_ascii_lowercase().contains("refused"),
        "the guest's log line should say the connection was refused: {line}"
    );
    assert!(
        !sim.logs().contains("Connected to server"),
        "{}",
        sim.logs()
    );
}
