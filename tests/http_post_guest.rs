//! The default device's `http-post` guest, driven through the real simulator
//! with raw sockets and curl: GET pages, POST bodies in every framing,
//! keep-alive, pipelining, HEAD, 404s.

mod support;

use std::io::{BufReader, Write};

use support::{Sim, curl, device_toml, read_response, roundtrip};

const JSON_ACK: &str = r#"{"status": "success", "message": "Received your request."}"#;

fn http_post_device() -> Sim {
    Sim::start(&device_toml(
        &[("http", "builtin:http-post"), ("hello", "builtin:hello")],
        &[("/", "http"), ("/hello", "hello")],
        "",
    ))
}

#[test]
fn get_root_serves_an_html_page_naming_the_device() {
    let sim = http_post_device();
    let r = roundtrip(&sim, b"GET / HTTP/1.1\r\nHost: device\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("wasmgate"), "{}", r.text());
    sim.wait_for_log("HTTP: /");
}

#[test]
fn post_with_content_length_is_acknowledged_with_json_and_logged() {
    let sim = http_post_device();
    let r = roundtrip(
        &sim,
        b"POST /config HTTP/1.1\r\nHost: d\r\nContent-Length: 11\r\n\r\nhello=world",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), JSON_ACK);
    sim.wait_for_log("hello=world");
}

#[test]
fn chunked_post_body_reaches_the_guest_in_pieces() {
    let sim = http_post_device();
    let r = roundtrip(
        &sim,
        b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nfirst\r\n6\r\n-piece\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), JSON_ACK);
    sim.wait_for_log("first");
    sim.wait_for_log("-piece");
}

#[test]
fn a_body_larger_than_rx_buffer_arrives_in_several_callbacks() {
    let sim = http_post_device();
    let body = "x".repeat(5000);
    let req = format!(
        "POST / HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = roundtrip(&sim, req.as_bytes());
    assert_eq!(r.status, 200);
    // http-post's rx_buffer_size is 1024: five pieces, never one of 5000.
    let logs = sim.wait_for_log("1024 bytes");
    assert!(!logs.contains("5000 bytes:"), "{logs}");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let sim = http_post_device();
    let s = sim.connect();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for i in 0..3 {
        write!(
            w,
            "POST /n{i} HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\nn{i}"
        )
        .unwrap();
        let r = read_response(&mut reader, false);
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), JSON_ACK);
    }
    w.write_all(b"GET /hello HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    let r = read_response(&mut reader, false);
    assert_eq!(r.text(), "hello world\n");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let sim = http_post_device();
    let mut s = sim.connect();
    s.write_all(
        b"GET /hello HTTP/1.1\r\nHost: d\r\n\r\n\
          POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\r\nabc\
          GET /nope-not-here HTTP/1.1\r\nHost: d\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let statuses: Vec<(u16, String)> = (0..4)
        .map(|_| {
            let r = read_response(&mut reader, false);
            (r.status, r.text())
        })
        .collect();
    assert_eq!(statuses[0], (200, "hello world\n".into()));
    assert_eq!(statuses[1], (200, JSON_ACK.into()));
    assert_eq!(statuses[2].0, 404);
    assert_eq!(statuses[3], (200, "hello world\n".into()));
    assert!(
        support::closed_by_peer(reader.get_mut()),
        "Connection: close honoured"
    );
}

#[test]
fn head_gets_the_headers_of_get_without_a_body() {
    let sim = http_post_device();
    let mut s = sim.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: d\r\n\r\nGET /hello HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let head = read_response(&mut reader, true);
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    // The next response starts right after the head: no body bytes in between.
    let next = read_response(&mut reader, false);
    assert_eq!(next.text(), "hello world\n");
}

#[test]
fn http_1_0_request_is_answered_and_closed() {
    let sim = http_post_device();
    let mut s = sim.connect();
    s.write_all(b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world\n");
    assert!(support::closed_by_peer(reader.get_mut()));
}

#[test]
fn a_path_no_mount_serves_gets_404_from_the_runtime() {
    let sim = Sim::start(&device_toml(
        &[("hello", "builtin:hello")],
        &[("/api", "hello")],
        "",
    ));
    let r = roundtrip(&sim, b"GET /other HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 404);
    let r = roundtrip(&sim, b"GET /api/x HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn curl_get_and_post_work() {
    let sim = http_post_device();
    let url = format!("http://{}/", sim.addr());
    let Some((code, out, err)) = curl(&["-sS", "--max-time", "10", &url]) else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wasmgate"), "{out}");

    let (code, out, err) = curl(&["-sS", "--max-time", "10", "-d", "a=1&b=2", &url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, JSON_ACK);
    sim.wait_for_log("a=1&b=2");
}

#[test]
fn curl_large_post_uses_expect_100_continue() {
    let sim = http_post_device();
    let url = format!("http://{}/", sim.addr());
    let body = "y".repeat(100_000);
    // curl sends `Expect: 100-continue` for bodies over 1 MiB... or when asked.
    let Some((code, out, err)) = curl(&[
        "-sS",
        "-v",
        "--max-time",
        "10",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &body,
        &url,
    ]) else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, JSON_ACK);
    assert!(
        err.contains("100 Continue"),
        "curl saw no 100 Continue:\n{err}"
    );
}

fn stream_block(n: usize) -> String {
    let mut line = format!("block {n:>6} ");
    while line.len() < 1023 {
        line.push('.');
    }
    line + "\n"
}

#[test]
fn a_response_streamed_across_writeable_callbacks_arrives_chunked_and_whole() {
    let sim = http_post_device();
    let s = sim.connect();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    w.write_all(b"GET /stream?kib=64 HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    let expected: String = (0..64).map(stream_block).collect();
    assert_eq!(r.body.len(), 64 * 1024);
    assert!(r.text() == expected, "streamed body differs");
    // The connection is still usable after a chunked answer.
    w.write_all(b"GET /hello HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader, false).text(), "hello world\n");
}

#[test]
fn a_streamed_response_to_http_1_0_ends_with_the_connection() {
    let sim = http_post_device();
    let mut s = sim.connect();
    s.write_all(b"GET /stream?kib=20 HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s), false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body.len(), 20 * 1024);
    assert_eq!(r.text(), (0..20).map(stream_block).collect::<String>());
}

#[test]
fn curl_receives_a_one_mib_streamed_response() {
    let sim = http_post_device();
    let url = format!("http://{}/stream?kib=1024", sim.addr());
    let Some((code, out, err)) = curl(&["-sS", "--max-time", "30", &url]) else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 1024 * 1024);
    assert!(out.starts_with(&stream_block(0)) && out.ends_with(&stream_block(1023)));
}
