//! The `readings` guest through the real simulator: one protocol serving an
//! HTTP page and the WebSocket it opens, per-connection timers
//! (`lws_set_timer_usecs`, `LWS_CALLBACK_TIMER`) and a broadcast
//! (`lws_callback_on_writable_all_protocol`). Two Python `websockets` clients
//! connected at once must each get the readings about once a second, in
//! order, the same ones; a client that connects later gets the latest at once.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Sim, device_toml, roundtrip};

/// `readings` mounted at `/readings` and offered for WebSocket upgrades.
fn readings_device() -> Sim {
    let mut toml = device_toml(
        &[("readings", "builtin:readings")],
        &[("/readings", "readings")],
        "",
    );
    // device_toml writes the listener table last: this key belongs to it.
    toml.push_str("websocket = [\"readings\"]\n");
    Sim::start(&toml)
}

#[test]
fn get_answers_the_page_that_opens_the_readings_websocket() {
    let sim = readings_device();
    let r = roundtrip(&sim, b"GET /readings HTTP/1.1\r\nHost: device\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{r:?}"
    );
    let page = r.text();
    assert!(page.len() < 2048, "the page is {} bytes", page.len());
    assert!(page.contains("<title>wasmgate readings</title>"), "{page}");
    assert!(page.contains("new WebSocket("), "{page}");
    assert!(
        page.contains(r#"location.host + "/", "readings")"#),
        "{page}"
    );
}

#[test]
fn other_methods_are_refused_and_any_path_under_the_mount_gets_the_page() {
    let sim = readings_device();
    let r = roundtrip(
        &sim,
        b"POST /readings HTTP/1.1\r\nHost: device\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{r:?}");
    let r = roundtrip(&sim, b"GET /readings/live HTTP/1.1\r\nHost: device\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("wasmgate readings"));
}

/// Two clients connect together and read until each has `WANT` readings or 6 s
/// have passed; then a third connects and waits (at most 2 s) for its first
/// message. Prints `{"a": [[t, text]...], "b": [...], "late": [t, text]}`,
/// times in seconds since the first two connected (the late one's since it
/// connected).
const PY_CLIENTS: &str = r#"
import asyncio, json, sys, time
import websockets

WANT = 4

def connect(url):
    return websockets.connect(url, subprotocols=["readings"], compression=None)

async def collect(ws, got, start, deadline):
    while len(got) < WANT:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            msg = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            return
        assert isinstance(msg, str), "a binary message: %r" % msg
        got.append([time.monotonic() - start, msg])

async def main(url):
    a, b = await asyncio.gather(connect(url), connect(url))
    start = time.monotonic()
    got = {"a": [], "b": []}
    try:
        for ws in (a, b):
            assert ws.subprotocol == "readings", ws.subprotocol
        deadline = start + 6
        await asyncio.gather(
            collect(a, got["a"], start, deadline), collect(b, got["b"], start, deadline)
        )
    finally:
        await a.close()
        await b.close()
    async with connect(url) as late:
        joined = time.monotonic()
        msg = await asyncio.wait_for(late.recv(), 2)
        got["late"] = [time.monotonic() - joined, msg]
    print(json.dumps(got))

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 20))
"#;

/// One reading as a client saw it.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    /// Seconds since the clients connected.
    at: f64,
    seq: u64,
    /// Tenths of a degree.
    tenths: u64,
}

/// Parses a `[t, text]` pair; the text must be exactly `{"seq": N, "celsius": T}`.
fn reading(pair: &Value) -> Reading {
    let at = pair[0].as_f64().expect("time");
    let text = pair[1].as_str().expect("message text");
    let msg: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let obj = msg
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    assert_eq!(obj.len(), 2, "only seq and celsius: {text}");
    let seq = obj["seq"].as_u64().unwrap_or_else(|| panic!("seq: {text}"));
    let celsius = obj["celsius"]
        .as_f64()
        .unwrap_or_else(|| panic!("celsius: {text}"));
    let tenths = (celsius * 10.0).round() as u64;
    assert_eq!(tenths, 210 + seq % 10, "simulated value of {seq}: {text}");
    Reading { at, seq, tenths }
}

/// Checks one client's readings: at least 3, strictly increasing, paced.
fn check_client(name: &str, readings: &[Reading]) {
    assert!(
        readings.len() >= 3,
        "client {name} got {} readings in 6 s: {readings:?}",
        readings.len()
    );
    for w in readings.windows(2) {
        assert!(w[0].seq < w[1].seq, "client {name}: {readings:?}");
    }
    // About one a second. The first message may be the latest reading, sent on
    // connect, so pace from the second one on.
    let (second, last) = (&readings[1], &readings[readings.len() - 1]);
    let periods = (last.seq - second.seq) as f64;
    assert!(
        last.at - second.at >= 0.75 * periods,
        "client {name}: readings came faster than one a second: {readings:?}"
    );
}

fn python_websockets_available() -> bool {
    match Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIPPED: python3 cannot import websockets (`python3 -m pip install websockets`; \
                 tests/run.sh installs it): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED: python3 is not installed ({e})");
            false
        }
    }
}

#[test]
fn two_clients_get_the_same_readings_about_once_a_second() {
    if !python_websockets_available() {
        return;
    }
    let sim = readings_device();
    let out = Command::new("python3")
        .args(["-c", PY_CLIENTS, &format!("ws://{}/", sim.addr())])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python clients failed ({}):\n{stdout}\n{stderr}\nsimulator log:\n{}",
        out.status,
        sim.logs()
    );
    let got: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\nsimulator log:\n{}", sim.logs()));
    let client = |name: &str| -> Vec<Reading> {
        let list = got[name].as_array();
        list.unwrap_or_else(|| panic!("no list {name}: {stdout}"))
            .iter()
            .map(reading)
            .collect()
    };
    let (a, b) = (client("a"), client("b"));
    check_client("a", &a);
    check_client("b", &b);

    // A broadcast: while both were connected, both got the same readings.
    let from = a[0].seq.max(b[0].seq);
    let to = a[a.len() - 1].seq.min(b[b.len() - 1].seq);
    let window = |r: &[Reading]| -> Vec<(u64, u64)> {
        r.iter()
            .filter(|r| (from..=to).contains(&r.seq))
            .map(|r| (r.seq, r.tenths))
            .collect()
    };
    assert!(
        window(&a).len() >= 2,
        "the clients share too few readings: a {a:?}, b {b:?}"
    );
    assert_eq!(window(&a), window(&b), "a {a:?}\nb {b:?}");

    // A client that connects later gets the latest reading at once, not a
    // period later.
    let late = reading(&got["late"]);
    let newest = a[a.len() - 1].seq.max(b[b.len() - 1].seq);
    assert!(late.seq >= newest, "late {late:?} after {newest}");
    assert!(late.at < 0.5, "the latest reading took {} s", late.at);
}
