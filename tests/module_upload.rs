//! Uploading guest modules to a running simulated device: signed or in
//! development mode, swapped live, rolled back by hand or by the device itself,
//! kept across a restart; every bad upload answered with its status.

mod support;

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Response, Sim, device_toml, read_response, roundtrip, wasmgate};

const TOKEN: &str = "test-token-123";
const HTML_MARK: &str = "wasmgate simulated device";

/// A device serving http-post at `/`, with the admin API configured by `admin`
/// (TOML lines of the `[admin]` section besides the token).
fn device(admin: &str) -> Sim {
    let extra = format!("[admin]\ntoken = \"{TOKEN}\"\n{admin}\n");
    Sim::start(&device_toml(
        &[("http", "builtin:http-post")],
        &[("/", "http")],
        &extra,
    ))
}

fn dev_device() -> Sim {
    device("development_mode = true\ntrial_max_faults = 2\ntrial_callbacks = 50")
}

fn admin(sim: &Sim, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: d\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    roundtrip(sim, &req)
}

fn upload(sim: &Sim, protocol: &str, module: &[u8]) -> Response {
    admin(
        sim,
        "PUT",
        &format!("/_admin/modules/{protocol}"),
        Some(TOKEN),
        module,
    )
}

fn get_root(sim: &Sim) -> String {
    let r = roundtrip(sim, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("JSON body ({e}): {}", r.text()))
}

/// A valid guest (it answers nothing) carrying `padding` bytes of data.
fn padded_guest(padding: usize) -> Vec<u8> {
    let wat = format!(
        r#"(module
            (memory (export "memory") 1)
            (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "http")
            (data (i32.const 4096) "{}")
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param i32 i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
        "x".repeat(padding)
    );
    wat::parse_str(wat).expect("test WAT parses")
}

/// `wasmgate sign MODULE --key KEY --protocol P --version V --out OUT`; returns
/// the signed file's bytes.
fn sign(module: &Path, key: &Path, protocol: &str, version: &str, out: &Path) -> Vec<u8> {
    let (ok, _, err) = wasmgate(&[
        "sign",
        s(module),
        "--key",
        s(key),
        "--protocol",
        protocol,
        "--version",
        version,
        "--out",
        s(out),
    ]);
    assert!(ok, "sign: {err}");
    std::fs::read(out).expect("signed file")
}

fn write_module(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write module");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn cli_upload_of_a_changed_module_changes_the_answer() {
    let sim = dev_device();
    assert!(get_root(&sim).contains(HTML_MARK));
    let module = write_module(sim.dir(), "hello.wasm", wasmgate_guests::HELLO);
    let url = format!("http://{}", sim.addr());
    let (ok, out, err) = wasmgate(&[
        "upload",
        "--device",
        &url,
        "--protocol",
        "http",
        "--token",
        TOKEN,
        s(&module),
    ]);
    assert!(ok, "upload failed: {err}");
    assert!(out.contains("http"), "the device's answer in words: {out}");
    assert_eq!(get_root(&sim), "hello world\n");
    let modules = json(&admin(&sim, "GET", "/_admin/modules", Some(TOKEN), b""));
    let http = &modules["modules"][0];
    assert_eq!(http["protocol"], "http");
    assert_eq!(http["running"]["source"], "uploaded");
    assert_eq!(http["state"], "trial");
}

#[test]
fn signed_modules_need_a_trusted_key() {
    let dir = support::scratch_dir();
    let (trusted, stranger) = (dir.join("trusted"), dir.join("stranger"));
    for k in [&trusted, &stranger] {
        let (ok, _, err) = wasmgate(&["keygen", "--out", s(k)]);
        assert!(ok, "keygen: {err}");
    }
    let public = std::fs::read_to_string(trusted.with_extension("pub")).unwrap();
    let sim = device(&format!("keys = [\"{}\"]", public.trim()));
    let hello = write_module(sim.dir(), "hello.wasm", wasmgate_guests::HELLO);

    // Unsigned: refused outside development mode.
    let r = upload(&sim, "http", wasmgate_guests::HELLO);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        json(&r)["error"].as_str().unwrap().contains("not signed"),
        "{}",
        r.text()
    );

    // Signed by a key the device does not know.
    let by_stranger = sign(
        &hello,
        &stranger.with_extension("key"),
        "http",
        "1.0.0",
        &sim.dir().join("stranger.wasm"),
    );
    let r = upload(&sim, "http", &by_stranger);
    assert_eq!(r.status, 403, "{}", r.text());

    // Signed by the trusted key, but tampered with after signing.
    let signed = sim.dir().join("signed.wasm");
    let good = sign(
        &hello,
        &trusted.with_extension("key"),
        "http",
        "2.0.0",
        &signed,
    );
    let mut tampered = good.clone();
    tampered[20] ^= 1;
    let r = upload(&sim, "http", &tampered);
    assert!(matches!(r.status, 400 | 403), "{} {}", r.status, r.text());
    assert!(get_root(&sim).contains(HTML_MARK), "nothing changed");

    // Signed by the trusted key: accepted.
    let (ok, out, _) = wasmgate(&["inspect", s(&signed)]);
    assert!(
        ok && out.contains("2.0.0"),
        "inspect shows the manifest: {out}"
    );
    let r = upload(&sim, "http", &good);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["module"]["signed_by"], public.trim());
    assert_eq!(get_root(&sim), "hello world\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_uploads_are_answered_with_their_status_and_change_nothing() {
    let sim = device("development_mode = true\nmax_module_bytes = 8192\nstore_bytes = 1000");
    let no_token = admin(
        &sim,
        "PUT",
        "/_admin/modules/http",
        None,
        wasmgate_guests::HELLO,
    );
    assert_eq!(no_token.status, 401);
    let wrong = admin(
        &sim,
        "PUT",
        "/_admin/modules/http",
        Some("wrong-token"),
        b"x",
    );
    assert_eq!(wrong.status, 401);

    let r = upload(&sim, "http", b"definitely not wasm");
    assert_eq!(r.status, 400, "{}", r.text());

    let unknown_import = wat::parse_str(
        r#"(module (import "lws" "lws_foo" (func)) (memory (export "memory") 1)
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param i32 i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let r = upload(&sim, "http", &unknown_import);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        json(&r)["error"],
        "module imports unknown host function `lws.lws_foo`"
    );

    let r = upload(&sim, "nope", wasmgate_guests::HELLO);
    assert_eq!(r.status, 404, "{}", r.text());

    let r = upload(&sim, "http", wasmgate_guests::HTTP_POST);
    assert_eq!(r.status, 413, "{}", r.text());

    let r = upload(&sim, "http", &padded_guest(1500));
    assert_eq!(r.status, 507, "a store of 1000 bytes: {}", r.text());

    let r = admin(&sim, "GET", "/_admin/modules/http", Some(TOKEN), b"");
    assert_eq!(r.status, 405);
    assert!(
        get_root(&sim).contains(HTML_MARK),
        "the device still runs its module"
    );
}

#[test]
fn a_module_signed_for_another_protocol_is_a_conflict() {
    let dir = support::scratch_dir();
    let key = dir.join("k");
    assert!(wasmgate(&["keygen", "--out", s(&key)]).0);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let sim = device(&format!("keys = [\"{}\"]", public.trim()));
    let hello = write_module(sim.dir(), "hello.wasm", wasmgate_guests::HELLO);
    let signed = sign(
        &hello,
        &key.with_extension("key"),
        "hello",
        "1.0.0",
        &sim.dir().join("for-hello.wasm"),
    );
    let r = upload(&sim, "http", &signed);
    assert_eq!(r.status, 409, "{}", r.text());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_module_that_traps_in_its_trial_is_rolled_back_by_the_device() {
    let sim = dev_device();
    let r = upload(&sim, "http", wasmgate_guests::FAULTY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        roundtrip(&sim, b"GET /ok HTTP/1.1\r\nHost: d\r\n\r\n").text(),
        "ok\n"
    );
    for _ in 0..3 {
        let r = roundtrip(&sim, b"GET /trap HTTP/1.1\r\nHost: d\r\n\r\n");
        assert_eq!(r.status, 500);
    }
    sim.wait_for_log("rolling back the new module");
    assert!(
        get_root(&sim).contains(HTML_MARK),
        "the previous module is back"
    );
    let modules = json(&admin(&sim, "GET", "/_admin/modules", Some(TOKEN), b""));
    let http = &modules["modules"][0];
    assert_eq!(http["running"]["source"], "factory");
    let why = http["last_rollback"].as_str().unwrap_or_default();
    assert!(why.contains("3 faults"), "the reason is kept: {modules}");
}

#[test]
fn manual_rollback_restores_the_previous_module_and_survives_a_restart() {
    let sim = dev_device();
    assert_eq!(upload(&sim, "http", wasmgate_guests::HELLO).status, 200);
    assert_eq!(get_root(&sim), "hello world\n");
    let r = admin(
        &sim,
        "POST",
        "/_admin/modules/http/rollback",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(get_root(&sim).contains(HTML_MARK));
    let r = admin(
        &sim,
        "POST",
        "/_admin/modules/http/rollback",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 409, "nothing left to roll back: {}", r.text());
    let sim = sim.restart();
    assert!(
        get_root(&sim).contains(HTML_MARK),
        "the rollback was persisted"
    );
}

#[test]
fn a_restart_keeps_the_uploaded_module() {
    let sim = dev_device();
    assert_eq!(upload(&sim, "http", wasmgate_guests::HELLO).status, 200);
    let sim = sim.restart();
    assert_eq!(get_root(&sim), "hello world\n");
    let modules = json(&admin(&sim, "GET", "/_admin/modules", Some(TOKEN), b""));
    assert_eq!(modules["modules"][0]["running"]["source"], "uploaded");
}

#[test]
fn status_reports_connections_and_per_protocol_counters() {
    let sim = dev_device();
    get_root(&sim);
    let status = json(&admin(&sim, "GET", "/_admin/status", Some(TOKEN), b""));
    assert_eq!(status["development_mode"], true);
    let http = &status["protocols"][0];
    assert_eq!(http["name"], "http");
    assert!(http["callbacks"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["connections"].as_u64().unwrap() >= 1);
}

#[test]
fn a_swap_under_steady_load_fails_no_request_and_drops_no_connection() {
    let sim = dev_device();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stream = sim.connect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                let (mut old, mut new) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    w.write_all(b"GET / HTTP/1.1\r\nHost: d\r\n\r\n")
                        .expect("connection kept");
                    let r = read_response(&mut reader, false);
                    assert_eq!(r.status, 200, "{}", r.text());
                    if r.text() == "hello world\n" {
                        new += 1;
                    } else {
                        assert!(r.text().contains(HTML_MARK));
                        old += 1;
                    }
                }
                (old, new)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upload(&sim, "http", wasmgate_guests::HELLO).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let (old, new) = c.join().expect("client saw no failure");
        assert!(
            old > 0 && new > 0,
            "both modules answered on one connection: {old} {new}"
        );
    }
}

/// A WebSocket client on `addr` speaking protocol `echo_server`.
fn ws_client(addr: std::net::SocketAddr) -> tungstenite::WebSocket<std::net::TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("ws://{addr}/")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "echo_server".parse().expect("header value"),
    );
    let (ws, _) = tungstenite::client(req, stream).expect("WebSocket handshake");
    ws
}

#[test]
fn a_swap_of_ws_echo_loses_no_message_and_closes_no_connection() {
    let extra = format!("[admin]\ntoken = \"{TOKEN}\"\ndevelopment_mode = true\n");
    let toml = device_toml(
        &[
            ("echo_server", "builtin:ws-echo"),
            ("http", "builtin:hello"),
        ],
        &[("/hello", "http")],
        &extra,
    ) + "websocket = [\"echo_server\"]\n";
    let sim = Sim::start(&toml);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = sim.addr();
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut ws = ws_client(addr);
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("client {c} message {sent}");
                    ws.send(tungstenite::Message::text(msg.clone()))
                        .expect("send");
                    let echo = ws.read().expect("no close, no error");
                    assert_eq!(echo.into_text().expect("text").as_str(), msg);
                    sent += 1;
                }
                ws.close(None).expect("close");
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = upload(&sim, "echo_server", wasmgate_guests::WS_ECHO);
    assert_eq!(r.status, 200, "{}", r.text());
    // A new connection after the swap is served by the new module.
    let mut fresh = ws_client(addr);
    fresh
        .send(tungstenite::Message::text("after the swap"))
        .unwrap();
    assert_eq!(
        fresh.read().unwrap().into_text().unwrap().as_str(),
        "after the swap"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let sent = c.join().expect("a client lost a message or its connection");
        assert!(
            sent > 10,
            "the client kept sending through the swap: {sent}"
        );
    }
    let modules = json(&admin(&sim, "GET", "/_admin/modules", Some(TOKEN), b""));
    assert_eq!(modules["modules"][0]["running"]["source"], "uploaded");
}

#[test]
fn a_restart_with_stricter_trust_settings_runs_the_factory_module() {
    let sim = dev_device();
    assert_eq!(upload(&sim, "http", wasmgate_guests::HELLO).status, 200);
    let config = sim.dir().join("device.toml");
    let strict = std::fs::read_to_string(&config).unwrap().replace(
        "development_mode = true",
        &format!("development_mode = false\nkeys = [\"{}\"]", "ab".repeat(32)),
    );
    std::fs::write(&config, strict).unwrap();
    let sim = sim.restart();
    assert!(
        get_root(&sim).contains(HTML_MARK),
        "an unsigned upload does not run on a device that no longer accepts unsigned modules"
    );
    sim.wait_for_log("running the factory module");
}

#[test]
fn a_restart_during_the_trial_resumes_it() {
    let sim = dev_device();
    assert_eq!(upload(&sim, "http", wasmgate_guests::FAULTY).status, 200);
    let sim = sim.restart();
    for _ in 0..3 {
        let r = roundtrip(&sim, b"GET /trap HTTP/1.1\r\nHost: d\r\n\r\n");
        assert_eq!(r.status, 500);
    }
    sim.wait_for_log("rolling back the new module");
    assert!(get_root(&sim).contains(HTML_MARK));
}

#[test]
fn an_admin_answer_larger_than_the_tx_buffer_is_an_error_not_a_cut() {
    let sim = Sim::start(&device_toml(
        &[("http", "builtin:http-post"), ("hello", "builtin:hello")],
        &[("/", "http")],
        &format!(
            "[limits]\ntx_buffer_bytes = 600\n[admin]\ntoken = \"{TOKEN}\"\ndevelopment_mode = true\n"
        ),
    ));
    let r = admin(&sim, "GET", "/_admin/modules", Some(TOKEN), b"");
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("tx_buffer_bytes")
    );
}

#[test]
fn websockets_on_a_replaced_module_close_after_the_drain_timeout() {
    let extra =
        format!("[admin]\ntoken = \"{TOKEN}\"\ndevelopment_mode = true\ndrain_timeout_ms = 400\n");
    let toml = device_toml(&[("echo_server", "builtin:ws-echo")], &[], &extra)
        + "websocket = [\"echo_server\"]\n";
    let sim = Sim::start(&toml);
    let mut old = ws_client(sim.addr());
    old.send(tungstenite::Message::text("before")).unwrap();
    assert_eq!(old.read().unwrap().into_text().unwrap().as_str(), "before");
    assert_eq!(
        upload(&sim, "echo_server", wasmgate_guests::WS_ECHO).status,
        200
    );
    // Still served by the old module until the deadline...
    old.send(tungstenite::Message::text("draining")).unwrap();
    assert_eq!(
        old.read().unwrap().into_text().unwrap().as_str(),
        "draining"
    );
    // ...then closed with 1001 "going away".
    let frame = match old.read().expect("a close frame, not an error") {
        tungstenite::Message::Close(frame) => frame,
        other => panic!("unexpected {other:?}"),
    };
    let frame = frame.expect("a close code");
    assert_eq!(u16::from(frame.code), 1001);
    let _ = old.flush(); // sends the answering close frame
    sim.wait_for_log("retired instance dropped");
}

#[test]
fn a_module_asking_for_more_than_the_device_allows_is_a_conflict() {
    let dir = support::scratch_dir();
    let key = dir.join("k");
    assert!(wasmgate(&["keygen", "--out", s(&key)]).0);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let sim = device(&format!("keys = [\"{}\"]", public.trim()));
    let hello = write_module(sim.dir(), "hello.wasm", wasmgate_guests::HELLO);
    let out = sim.dir().join("greedy.wasm");
    let (ok, _, err) = wasmgate(&[
        "sign",
        s(&hello),
        "--key",
        s(&key.with_extension("key")),
        "--protocol",
        "http",
        "--max-memory-pages",
        "64",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    let r = upload(&sim, "http", &std::fs::read(&out).unwrap());
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("64 memory pages"),
        "{}",
        r.text()
    );
    let _ = std::fs::remove_dir_all(dir);
}
