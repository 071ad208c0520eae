//! Byte-fixture tests of [`ServerConn`]: no sockets, no sleeps; time is moved by hand.

use std::time::{Duration, Instant};

use super::*;

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: dev\r\n\r\n";
const POST_LENGTH: &[u8] = b"POST /upload HTTP/1.1\r\nHost: dev\r\nContent-Length: 26\r\n\r\n\
abcdefghijklmnopqrstuvwxyz\
GET /next HTTP/1.1\r\nHost: dev\r\n\r\n";
const POST_CHUNKED: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: dev\r\nTransfer-Encoding: chunked\r\n\r\n\
5;foo=bar\r\nhello\r\n\
1A\r\nabcdefghijklmnopqrstuvwxyz\r\n\
3 ; name=\"quoted\"\r\n!!!\r\n\
0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n\
GET /next HTTP/1.1\r\nHost: dev\r\n\r\n";
const CHUNKED_BODY: &[u8] = b"helloabcdefghijklmnopqrstuvwxyz!!!";

/// An owned copy of an [`Event`], to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Head(String),
    Body(Vec<u8>),
    BodyComplete,
    Rejected(u16),
}

fn conn(t0: Instant) -> ServerConn {
    ServerConn::new(Limits::DEFAULT, t0)
}

fn with_limits(t0: Instant, f: impl FnOnce(&mut Limits)) -> ServerConn {
    let mut limits = Limits::DEFAULT;
    f(&mut limits);
    ServerConn::new(limits, t0)
}

fn feed_all(c: &mut ServerConn, data: &[u8], now: Instant) {
    assert_eq!(c.feed(data, now), data.len(), "feed took less than given");
}

/// Every event available now.
fn events(c: &mut ServerConn, now: Instant, max_piece: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Some(event) = c.poll_event(now, max_piece) {
        out.push(match event {
            Event::Head => Ev::Head(c.request().expect("head has a request").target().to_owned()),
            Event::Body(piece) => {
                assert!(
                    !piece.is_empty() && piece.len() <= max_piece,
                    "piece of {}",
                    piece.len()
                );
                Ev::Body(piece.to_vec())
            }
            Event::BodyComplete => Ev::BodyComplete,
            Event::Rejected(r) => Ev::Rejected(r.status),
        });
    }
    out
}

/// Takes everything queued for sending, as text.
fn take_tx(c: &mut ServerConn) -> String {
    let out = String::from_utf8_lossy(c.tx()).into_owned();
    c.consume_tx(c.tx().len());
    out
}

fn respond(c: &mut ServerConn, status: u16, body: &[u8]) {
    c.begin_head(status).unwrap();
    c.add_header(b"Content-Type", b"text/plain").unwrap();
    c.set_content_length(Some(body.len() as u64)).unwrap();
    c.finalize_head().unwrap();
    c.write_body(body, true).unwrap();
}

/// Joins the body pieces of `evs`; checks the transaction's shape.
fn body_of(evs: &[Ev]) -> Vec<u8> {
    assert!(matches!(evs.first(), Some(Ev::Head(_))), "{evs:?}");
    assert_eq!(evs.last(), Some(&Ev::BodyComplete), "{evs:?}");
    evs.iter()
        .filter_map(|e| match e {
            Ev::Body(b) => Some(b.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

/// Feeds `parts` one after another, taking events after each; then answers and
/// checks that the request after the body (`GET /next`) is found intact.
fn body_through_parts(parts: &[&[u8]], max_piece: usize) -> Vec<u8> {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let mut evs = Vec::new();
    for part in parts {
        feed_all(&mut c, part, t0);
        evs.extend(events(&mut c, t0, max_piece));
    }
    let body = body_of(&evs);
    respond(&mut c, 200, b"ok");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert_eq!(
        events(&mut c, t0, max_piece),
        [Ev::Head("/next".into()), Ev::BodyComplete]
    );
    body
}

fn assert_body_split_anywhere(fixture: &[u8], expected: &[u8]) {
    for max_piece in [1, 3, 7, 4096] {
        for split in 0..=fixture.len() {
            let (a, b) = fixture.split_at(split);
            assert_eq!(
                body_through_parts(&[a, b], max_piece),
                expected,
                "split at {split}, max_piece {max_piece}"
            );
        }
        let bytes: Vec<&[u8]> = fixture.chunks(1).collect();
        assert_eq!(
            body_through_parts(&bytes, max_piece),
            expected,
            "byte by byte"
        );
    }
}

// ---- bodies ----

#[test]
fn content_length_body_split_anywhere_yields_same_bytes() {
    assert_body_split_anywhere(POST_LENGTH, b"abcdefghijklmnopqrstuvwxyz");
}

#[test]
fn chunked_body_with_extensions_and_trailers_split_anywhere_yields_same_bytes() {
    assert_body_split_anywhere(POST_CHUNKED, CHUNKED_BODY);
}

#[test]
fn body_pieces_never_exceed_max_piece() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, POST_LENGTH, t0);
    let evs = events(&mut c, t0, 10);
    let sizes: Vec<usize> = evs
        .iter()
        .filter_map(|e| {
            if let Ev::Body(b) = e {
                Some(b.len())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(sizes, [10, 10, 6]);
}

#[test]
fn bodyless_request_gets_head_then_body_complete() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/a".into()), Ev::BodyComplete]
    );
    assert!(!c.request().unwrap().body_expected());
}

#[test]
fn identical_duplicate_content_lengths_are_accepted() {
    for req in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    ] {
        let t0 = Instant::now();
        let mut c = conn(t0);
        feed_all(&mut c, req, t0);
        assert_eq!(body_of(&events(&mut c, t0, 64)), b"abc");
    }
}

#[test]
fn leading_empty_lines_before_a_request_are_skipped() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/a".into()), Ev::BodyComplete]
    );
}

// ---- rejections ----

/// Feeds `req` to a fresh connection; returns its events and what it sent.
fn reject_case(req: &[u8]) -> (Vec<Ev>, String, ServerConn) {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let taken = c.feed(req, t0);
    assert!(taken > 0);
    let evs = events(&mut c, t0, 64);
    let sent = take_tx(&mut c);
    (evs, sent, c)
}

/// `req` is rejected with `status` (after its head when `after_head`): the error
/// response is queued with `Connection: close`, its body is the reason line, and
/// the connection takes no more input and closes.
fn assert_rejected(req: &[u8], status: u16, after_head: bool) {
    let (evs, sent, mut c) = reject_case(req);
    let expected = if after_head {
        assert!(matches!(evs.first(), Some(Ev::Head(_))), "{evs:?}");
        evs[evs.len() - 1..].to_vec()
    } else {
        evs.clone()
    };
    assert_eq!(
        expected,
        [Ev::Rejected(status)],
        "{}",
        String::from_utf8_lossy(req)
    );
    assert!(sent.starts_with(&format!("HTTP/1.1 {status} ")), "{sent}");
    assert!(sent.contains("\r\nConnection: close\r\n"), "{sent}");
    assert!(
        sent.ends_with('\n') && !sent.ends_with("\r\n\r\n"),
        "body is the reason: {sent}"
    );
    assert_eq!(c.rx_space(), 0);
    assert_eq!(c.feed(b"GET / HTTP/1.1\r\n", Instant::now()), 0);
    assert!(c.wants_close() && c.is_closed());
    assert_eq!(c.poll_event(Instant::now(), 64), None);
}

/// One test per rejected fixture: `name: request => status` (`, after_head` when
/// the head itself is fine and the body is what gets rejected).
macro_rules! rejects {
    ($($name:ident: $req:expr => $status:expr $(, $after:ident)?;)*) => {$(
        #[test]
        fn $name() {
            let after_head: &[&str] = &[$(stringify!($after)),*];
            let after_head = after_head == ["after_head"];
            assert_rejected($req, $status, after_head);
        }
    )*};
}

rejects! {
    both_content_length_and_transfer_encoding_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
    differing_duplicate_content_lengths_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello" => 400;
    differing_content_length_list_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello" => 400;
    non_numeric_content_length_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n" => 400;
    negative_content_length_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n" => 400;
    signed_content_length_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n" => 400;
    overflowing_content_length_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n" => 400;
    transfer_encoding_not_ending_in_chunked_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n" => 400;
    transfer_encoding_chunked_then_gzip_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" => 400;
    transfer_encoding_chunked_twice_is_400:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
    transfer_coding_other_than_chunked_before_it_is_501:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => 501;
    transfer_encoding_in_http10_is_400:
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
    non_hex_chunk_size_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n" => 400, after_head;
    empty_chunk_size_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n" => 400, after_head;
    overflowing_chunk_size_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n" => 400, after_head;
    chunk_data_without_crlf_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n" => 400, after_head;
    bare_lf_in_chunk_size_line_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" => 400, after_head;
    bare_lf_after_chunk_data_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n" => 400, after_head;
    bare_lf_in_chunked_trailers_is_400_after_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n" => 400, after_head;
    obs_fold_is_400:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n" => 400;
    whitespace_before_first_header_is_400:
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n" => 400;
    missing_host_in_http11_is_400:
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n" => 400;
    two_hosts_is_400:
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => 400;
    bare_lf_line_ends_in_head_is_400:
        b"GET / HTTP/1.1\nHost: a\n\n" => 400;
    bare_lf_ending_the_head_is_400:
        b"GET / HTTP/1.1\r\nHost: a\r\n\n" => 400;
    cr_without_lf_in_head_is_400:
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n" => 400;
    invalid_method_token_is_400:
        b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
    empty_method_is_400:
        b" / HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
    invalid_version_string_is_400:
        b"GET / HTTX/1.1\r\nHost: a\r\n\r\n" => 400;
    lowercase_version_is_400:
        b"GET / http/1.1\r\nHost: a\r\n\r\n" => 400;
    missing_version_is_400:
        b"GET /\r\nHost: a\r\n\r\n" => 400;
    invalid_header_name_is_400:
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n" => 400;
    http2_version_is_505:
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" => 505;
    http12_version_is_505:
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" => 505;
    http3_version_is_505:
        b"GET / HTTP/3.0\r\nHost: a\r\n\r\n" => 505;
    unknown_expect_is_417:
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx" => 417;
    declared_body_over_limit_is_413_without_head:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n" => 413;
    too_many_headers_is_431:
        b"GET / HTTP/1.1\r\nHost: a\r\n\
        A: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\n\
        A: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\n\
        A: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\n\
        A: 1\r\nA: 1\r\n\r\n" => 431;
}

#[test]
fn http10_without_host_is_accepted() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET / HTTP/1.0\r\n\r\n", t0);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/".into()), Ev::BodyComplete]
    );
    assert_eq!(c.request().unwrap().version(), 0);
}

#[test]
fn thirty_two_headers_fit_the_default_limit() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for _ in 0..31 {
        req.extend_from_slice(b"A: 1\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, &req, t0);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/".into()), Ev::BodyComplete]
    );
}

#[test]
fn rejection_body_is_the_reason_line() {
    let (_, sent, _) = reject_case(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(
        sent,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\
         Connection: close\r\n\r\nboth Content-Length and Transfer-Encoding\n"
    );
}

#[test]
fn head_over_max_head_bytes_without_end_is_431() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n", t0);
    assert_eq!(events(&mut c, t0, 64), []);
    let filler = b"X-Filler: 0123456789012345678901234567890123456789\r\n";
    let mut fed = 25;
    while c.rx_space() > 0 {
        fed += c.feed(filler, t0);
    }
    assert_eq!(fed, 4096);
    assert_eq!(events(&mut c, t0, 64), [Ev::Rejected(431)]);
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

#[test]
fn long_request_target_is_414_before_the_head_completes() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET /", t0);
    feed_all(&mut c, &[b'a'; 1023], t0);
    assert_eq!(events(&mut c, t0, 64), []);
    feed_all(&mut c, b"a", t0);
    assert_eq!(events(&mut c, t0, 64), [Ev::Rejected(414)]);
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 414 URI Too Long\r\n"));
}

#[test]
fn request_target_of_exactly_max_uri_bytes_is_accepted() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let mut req = b"GET /".to_vec();
    req.extend_from_slice(&[b'a'; 1023]);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    feed_all(&mut c, &req, t0);
    assert!(matches!(events(&mut c, t0, 64)[0], Ev::Head(_)));
}

#[test]
fn chunked_body_over_limit_is_413_when_reached() {
    let t0 = Instant::now();
    let mut c = with_limits(t0, |l| l.max_body_bytes = 8);
    feed_all(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n4\r\nabcd\r\n",
        t0,
    );
    assert_eq!(
        events(&mut c, t0, 64),
        [
            Ev::Head("/".into()),
            Ev::Body(b"hello".to_vec()),
            Ev::Rejected(413)
        ]
    );
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 413 Content Too Large\r\n"));
    assert!(c.is_closed());
}

#[test]
fn body_error_after_response_started_closes_without_second_response() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        t0,
    );
    assert_eq!(events(&mut c, t0, 64), [Ev::Head("/".into())]);
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    let head = take_tx(&mut c);
    feed_all(&mut c, b"xyz\r\n", t0);
    assert_eq!(events(&mut c, t0, 64), [Ev::Rejected(400)]);
    assert_eq!(take_tx(&mut c), "");
    assert!(head.contains("Connection: close"), "body unread: {head}");
    assert!(c.is_closed());
    assert_eq!(c.write_body(b"x", true), Err(ResponseError::BadState));
    assert_eq!(c.finish_response(), Completion::Close);
}

// ---- keep-alive and pipelining ----

#[test]
fn three_pipelined_requests_are_answered_in_order() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz\
          GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
        t0,
    );
    let mut all = Vec::new();
    for (path, body) in [("/1", &b""[..]), ("/2", b"xyz"), ("/3", b"")] {
        let evs = events(&mut c, t0, 64);
        assert_eq!(evs[0], Ev::Head(path.into()));
        assert_eq!(body_of(&evs), body);
        // Nothing more until this transaction is finished.
        assert_eq!(events(&mut c, t0, 64), []);
        respond(&mut c, 200, path.as_bytes());
        assert_eq!(c.finish_response(), Completion::KeepAlive);
        all.push(take_tx(&mut c));
    }
    let bodies: Vec<&str> = all
        .iter()
        .map(|r| r.rsplit("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(bodies, ["/1", "/2", "/3"]);
    assert!(!c.wants_close());
}

#[test]
fn rx_space_is_zero_while_a_response_is_pending_and_the_buffer_is_full() {
    let t0 = Instant::now();
    let mut c = with_limits(t0, |l| l.max_head_bytes = 128);
    let stream: Vec<u8> = GET.iter().copied().cycle().take(GET.len() * 20).collect();
    let mut offset = c.feed(&stream, t0);
    assert_eq!(offset, 128);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/a".into()), Ev::BodyComplete]
    );
    // The first head left the buffer; the next pipelined ones fill it again.
    offset += c.feed(&stream[offset..], t0);
    assert_eq!(c.rx_space(), 0);
    assert_eq!(c.feed(&stream[offset..], t0), 0);
    assert_eq!(events(&mut c, t0, 64), []);
    respond(&mut c, 204, b"");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert_eq!(c.rx_space(), 0, "the next head is not parsed yet");
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/a".into()), Ev::BodyComplete]
    );
    assert_eq!(c.rx_space(), GET.len());
}

#[test]
fn client_connection_close_ends_after_the_response() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n",
        t0,
    );
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/".into()), Ev::BodyComplete]
    );
    assert!(!c.request().unwrap().keep_alive());
    assert_eq!(c.rx_space(), 0);
    respond(&mut c, 200, b"bye");
    let sent = take_tx(&mut c);
    assert!(sent.contains("\r\nConnection: close\r\n"), "{sent}");
    assert_eq!(c.finish_response(), Completion::Close);
    assert!(c.is_closed());
    assert_eq!(events(&mut c, t0, 64), []);
}

#[test]
fn http10_closes_by_default() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET / HTTP/1.0\r\n\r\n", t0);
    events(&mut c, t0, 64);
    respond(&mut c, 200, b"hi");
    let sent = take_tx(&mut c);
    assert!(sent.starts_with("HTTP/1.0 200 OK\r\n"), "{sent}");
    assert!(sent.contains("\r\nConnection: close\r\n"), "{sent}");
    assert_eq!(c.finish_response(), Completion::Close);
}

#[test]
fn http10_keep_alive_is_answered_with_keep_alive() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
        t0,
    );
    events(&mut c, t0, 64);
    respond(&mut c, 200, b"hi");
    let sent = take_tx(&mut c);
    assert!(sent.contains("\r\nConnection: keep-alive\r\n"), "{sent}");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/2".into()), Ev::BodyComplete]
    );
}

#[test]
fn http10_unknown_length_is_close_delimited() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        t0,
    );
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    c.write_body(b"raw bytes", false).unwrap();
    c.write_body(b"", true).unwrap();
    assert_eq!(
        take_tx(&mut c),
        "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nraw bytes"
    );
    assert_eq!(c.finish_response(), Completion::Close);
}

// ---- responses ----

#[test]
fn unknown_length_response_is_chunked_one_chunk_per_write() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.add_header(b"content-type:", b"text/plain").unwrap();
    c.set_content_length(None).unwrap();
    c.finalize_head().unwrap();
    assert_eq!(c.write_body(b"hello", false), Ok(5));
    assert_eq!(c.write_body(b"abcdefghijklmnopqrstuvwxyz", true), Ok(26));
    assert_eq!(
        take_tx(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
    );
    assert_eq!(c.write_body(b"more", false), Err(ResponseError::BadState));
    assert_eq!(c.finish_response(), Completion::KeepAlive);
}

#[test]
fn finish_without_fin_terminates_a_chunked_body() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    c.write_body(b"abc", false).unwrap();
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert!(take_tx(&mut c).ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
}

#[test]
fn content_length_response_overrun_is_invalid() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.set_content_length(Some(4)).unwrap();
    c.finalize_head().unwrap();
    assert_eq!(c.write_body(b"abc", false), Ok(3));
    assert_eq!(c.write_body(b"de", true), Err(ResponseError::Invalid));
    assert_eq!(c.write_body(b"d", true), Ok(1));
    assert_eq!(
        take_tx(&mut c),
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"
    );
    assert_eq!(c.finish_response(), Completion::KeepAlive);
}

#[test]
fn content_length_response_left_short_closes() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.set_content_length(Some(10)).unwrap();
    c.finalize_head().unwrap();
    c.write_body(b"abc", false).unwrap();
    assert_eq!(c.finish_response(), Completion::Close);
    assert!(c.wants_close());
}

#[test]
fn head_request_gets_the_head_and_no_body() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nHEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
        t0,
    );
    events(&mut c, t0, 64);
    assert!(c.request().unwrap().is_head());
    assert_eq!(c.request().unwrap().method_index(), 7);
    respond(&mut c, 200, b"hello");
    assert_eq!(
        take_tx(&mut c),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    );
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    // Unknown length: the framing header GET would get, but no chunks.
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    c.write_body(b"dropped", true).unwrap();
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert_eq!(
        take_tx(&mut c),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[test]
fn head_request_body_past_content_length_is_still_invalid() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.set_content_length(Some(2)).unwrap();
    c.finalize_head().unwrap();
    assert_eq!(c.write_body(b"abc", true), Err(ResponseError::Invalid));
}

#[test]
fn no_content_and_not_modified_have_no_framing_headers_nor_body() {
    for status in [204, 304] {
        let t0 = Instant::now();
        let mut c = conn(t0);
        feed_all(&mut c, GET, t0);
        events(&mut c, t0, 64);
        c.begin_head(status).unwrap();
        c.set_content_length(Some(5)).unwrap();
        c.finalize_head().unwrap();
        assert_eq!(c.write_body(b"x", false), Err(ResponseError::Invalid));
        assert_eq!(c.write_body(b"", true), Ok(0));
        let sent = take_tx(&mut c);
        assert!(
            !sent.contains("Content-Length") && !sent.contains("Transfer-Encoding"),
            "{sent}"
        );
        assert!(sent.ends_with("\r\n\r\n"));
        assert_eq!(c.finish_response(), Completion::KeepAlive);
    }
}

#[test]
fn response_headers_are_validated() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    assert_eq!(
        c.add_header(b"X", b"y"),
        Err(ResponseError::BadState),
        "before begin_head"
    );
    assert_eq!(c.begin_head(99), Err(ResponseError::Invalid));
    assert_eq!(c.begin_head(1000), Err(ResponseError::Invalid));
    c.begin_head(200).unwrap();
    assert_eq!(c.begin_head(200), Err(ResponseError::BadState));
    for (name, value) in [
        (&b"Bad Name"[..], &b"v"[..]),
        (b"", b"v"),
        (b"X-Split", b"a\r\nInjected: 1"),
        (b"X-Lf", b"a\nb"),
        (b"X-Nul", b"a\0b"),
        (b"Content-Length", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"Connection", b"close"),
    ] {
        assert_eq!(
            c.add_header(name, value),
            Err(ResponseError::Invalid),
            "{name:?}"
        );
    }
    assert_eq!(c.add_header(b"X-Ok", b"tab\tand \x80 obs-text"), Ok(()));
    let long = [b'v'; 1024];
    assert_eq!(c.add_header(b"X-Long", &long), Err(ResponseError::NoSpace));
    c.finalize_head().unwrap();
    assert_eq!(c.finalize_head(), Err(ResponseError::BadState));
    assert_eq!(c.add_header(b"X", b"y"), Err(ResponseError::BadState));
}

#[test]
fn response_calls_without_a_request_are_bad_state() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert_eq!(c.begin_head(200), Err(ResponseError::BadState));
    assert_eq!(c.write_body(b"x", true), Err(ResponseError::BadState));
    assert_eq!(c.finish_response(), Completion::KeepAlive);
}

#[test]
fn body_write_that_does_not_fit_tx_is_no_space_and_nothing_is_queued() {
    let t0 = Instant::now();
    let mut c = with_limits(t0, |l| l.tx_buffer_bytes = 1024);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    let queued = c.tx().len();
    let fits = c.body_space();
    assert_eq!(
        c.write_body(&vec![b'x'; fits + 1], false),
        Err(ResponseError::NoSpace)
    );
    assert_eq!(c.tx().len(), queued);
    assert_eq!(c.write_body(&vec![b'x'; fits], false), Ok(fits));
    assert_eq!(c.body_space(), 0);
    // The last chunk was kept room for.
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert!(c.tx().len() <= 1024);
    assert!(c.tx().ends_with(b"0\r\n\r\n"));
}

#[test]
fn finalize_waits_for_tx_room() {
    let t0 = Instant::now();
    let mut c = with_limits(t0, |l| {
        l.tx_buffer_bytes = 1024;
        l.max_response_head_bytes = 1024;
    });
    feed_all(
        &mut c,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        t0,
    );
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.set_content_length(Some(900)).unwrap();
    c.finalize_head().unwrap();
    c.write_body(&[b'x'; 900], true).unwrap();
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.add_header(b"X-Pad", &[b'p'; 200]).unwrap();
    assert_eq!(c.finalize_head(), Err(ResponseError::NoSpace));
    c.consume_tx(c.tx().len());
    assert_eq!(c.finalize_head(), Ok(()));
    assert!(take_tx(&mut c).contains("X-Pad: ppp"));
}

#[test]
fn unknown_status_has_empty_reason_phrase() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    respond(&mut c, 299, b"");
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 299 \r\n"));
}

#[test]
fn respond_simple_sends_a_whole_response_and_keeps_alive() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.respond_simple(404, "text/html", b"<h1>404</h1>", false);
    assert!(c.response_started());
    assert_eq!(
        take_tx(&mut c),
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 12\r\n\r\n<h1>404</h1>"
    );
    assert_eq!(c.finish_response(), Completion::KeepAlive);
}

#[test]
fn respond_simple_with_close_says_so_and_closes() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.add_header(b"X-Staged", b"dropped").unwrap();
    c.respond_simple(503, "text/plain", b"busy\n", true);
    let sent = take_tx(&mut c);
    assert!(
        sent.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{sent}"
    );
    assert!(
        sent.contains("\r\nConnection: close\r\n\r\nbusy\n") && !sent.contains("X-Staged"),
        "{sent}"
    );
    assert!(c.wants_close());
    assert_eq!(c.finish_response(), Completion::Close);
}

#[test]
fn respond_simple_after_response_started_only_marks_close() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    let head = take_tx(&mut c);
    c.respond_simple(500, "text/plain", b"oops\n", false);
    assert_eq!(take_tx(&mut c), "");
    assert!(head.starts_with("HTTP/1.1 200 OK"));
    assert!(c.is_closed());
    assert_eq!(c.finish_response(), Completion::Close);
}

#[test]
fn respond_simple_without_request_answers_and_closes() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    c.respond_simple(503, "text/plain", b"full\n", false);
    assert!(take_tx(&mut c).contains("Connection: close"));
    assert!(c.is_closed());
    assert_eq!(c.finish_response(), Completion::Close);
}

#[test]
fn early_response_with_unread_body_closes_the_connection() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial",
        t0,
    );
    assert_eq!(events(&mut c, t0, 4)[0], Ev::Head("/".into()));
    c.respond_simple(413, "text/plain", b"too big\n", false);
    assert!(take_tx(&mut c).contains("\r\nConnection: close\r\n"));
    assert_eq!(c.finish_response(), Completion::Close);
}

#[test]
fn response_before_reading_a_buffered_body_keeps_alive() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    feed_all(&mut c, req, t0);
    assert_eq!(c.poll_event(t0, 64), Some(Event::Head));
    respond(&mut c, 200, b"");
    assert!(!take_tx(&mut c).contains("Connection"));
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/b".into()), Ev::BodyComplete]
    );
}

#[test]
fn finish_without_any_response_closes() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    assert_eq!(c.finish_response(), Completion::Close);
    assert!(c.is_closed());
}

// ---- 100-continue ----

const EXPECT: &[u8] =
    b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";

#[test]
fn continue_is_sent_once_when_the_body_is_first_needed() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, EXPECT, t0);
    assert_eq!(c.poll_event(t0, 64), Some(Event::Head));
    assert_eq!(c.tx(), b"", "not before the body is asked for");
    assert_eq!(c.poll_event(t0, 64), None);
    assert_eq!(take_tx(&mut c), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(c.poll_event(t0, 64), None);
    feed_all(&mut c, b"hello", t0);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Body(b"hello".to_vec()), Ev::BodyComplete]
    );
    assert_eq!(c.tx(), b"", "only once");
}

#[test]
fn continue_is_not_sent_after_an_early_response() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, EXPECT, t0);
    assert_eq!(c.poll_event(t0, 64), Some(Event::Head));
    c.respond_simple(401, "text/plain", b"no\n", false);
    assert_eq!(c.poll_event(t0, 64), None);
    let sent = take_tx(&mut c);
    assert!(
        sent.starts_with("HTTP/1.1 401 ") && !sent.contains("100 Continue"),
        "{sent}"
    );
}

#[test]
fn continue_is_not_sent_when_the_body_already_came() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, EXPECT, t0);
    feed_all(&mut c, b"hel", t0);
    let evs = events(&mut c, t0, 64);
    assert_eq!(evs, [Ev::Head("/e".into()), Ev::Body(b"hel".to_vec())]);
    assert_eq!(c.tx(), b"");
}

#[test]
fn continue_is_ignored_for_http10_and_bodyless_requests() {
    for req in [
        &b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    ] {
        let t0 = Instant::now();
        let mut c = conn(t0);
        feed_all(&mut c, req, t0);
        events(&mut c, t0, 64);
        assert_eq!(c.tx(), b"");
    }
}

// ---- timeouts ----

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn slow_head_is_answered_408_and_closed() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET / HTTP/1.1\r\nHo", t0 + SECOND);
    assert_eq!(c.poll_timeout(t0 + 2 * SECOND), Some(t0 + 11 * SECOND));
    assert_eq!(c.poll_timeout(t0 + 11 * SECOND), None);
    assert!(c.wants_close());
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    assert_eq!(events(&mut c, t0 + 11 * SECOND, 64), [Ev::Rejected(408)]);
    assert!(c.is_closed());
}

#[test]
fn slowloris_dripping_bytes_is_cut_off_by_the_head_timeout() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa";
    let mut now = t0;
    for byte in req.chunks(1) {
        now += SECOND / 2;
        feed_all(&mut c, byte, now);
        assert_eq!(events(&mut c, now, 64), []);
        if c.poll_timeout(now).is_none() {
            break;
        }
    }
    assert!(now <= t0 + 11 * SECOND);
    assert!(c.wants_close());
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 408 "));
}

#[test]
fn idle_keep_alive_connection_closes_silently() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    respond(&mut c, 200, b"ok");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    take_tx(&mut c);
    let done = t0 + 2 * SECOND;
    assert_eq!(c.poll_timeout(done), Some(done + 30 * SECOND));
    assert_eq!(c.poll_timeout(done + 29 * SECOND), Some(done + 30 * SECOND));
    assert_eq!(c.poll_timeout(done + 30 * SECOND), None);
    assert!(c.is_closed());
    assert_eq!(c.tx(), b"");
    assert_eq!(events(&mut c, done + 30 * SECOND, 64), []);
}

#[test]
fn new_connection_sending_nothing_closes_silently_after_head_timeout() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert_eq!(c.poll_timeout(t0), Some(t0 + 10 * SECOND));
    assert_eq!(c.poll_timeout(t0 + 10 * SECOND), None);
    assert!(c.is_closed());
    assert_eq!(c.tx(), b"");
}

#[test]
fn pipelined_head_clock_starts_at_the_previous_transaction_end() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HT", t0);
    events(&mut c, t0, 64);
    respond(&mut c, 200, b"");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    let end = t0 + 5 * SECOND;
    assert_eq!(c.poll_timeout(end), Some(end + 10 * SECOND));
    assert_eq!(c.poll_timeout(end + 10 * SECOND), None);
    assert!(take_tx(&mut c).contains("408"));
}

#[test]
fn stalled_body_is_answered_408() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
        t0,
    );
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/".into()), Ev::Body(b"hello".to_vec())]
    );
    // Progress pushes the deadline.
    let later = t0 + 4 * SECOND;
    feed_all(&mut c, b"wo", later);
    events(&mut c, later, 64);
    assert_eq!(c.poll_timeout(later), Some(later + 10 * SECOND));
    assert_eq!(c.poll_timeout(later + 10 * SECOND), None);
    assert_eq!(events(&mut c, later + 10 * SECOND, 64), [Ev::Rejected(408)]);
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 408 "));
    assert!(c.is_closed());
}

#[test]
fn no_timer_runs_while_the_response_is_up_to_the_caller() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    assert_eq!(c.poll_timeout(t0 + 3600 * SECOND), None);
    assert!(!c.wants_close());
}

#[test]
fn buffered_body_waiting_for_the_caller_does_not_time_out() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
        t0,
    );
    assert_eq!(c.poll_event(t0, 64), Some(Event::Head));
    assert_eq!(c.poll_timeout(t0 + 60 * SECOND), None);
}

// ---- peer close ----

#[test]
fn peer_close_on_an_idle_connection_closes_silently() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    c.peer_closed(t0);
    assert!(c.is_closed());
    assert_eq!(c.tx(), b"");
}

#[test]
fn peer_close_mid_head_is_400() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n", t0);
    c.peer_closed(t0);
    assert_eq!(events(&mut c, t0, 64), [Ev::Rejected(400)]);
    assert!(take_tx(&mut c).starts_with("HTTP/1.1 400 "));
}

#[test]
fn peer_close_mid_body_is_400_after_buffered_bytes() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
        t0,
    );
    c.peer_closed(t0);
    assert_eq!(
        events(&mut c, t0, 64),
        [
            Ev::Head("/".into()),
            Ev::Body(b"hello".to_vec()),
            Ev::Rejected(400)
        ]
    );
}

#[test]
fn peer_half_close_after_a_request_still_gets_the_response() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(&mut c, GET, t0);
    c.peer_closed(t0);
    assert_eq!(c.rx_space(), 0);
    assert_eq!(
        events(&mut c, t0, 64),
        [Ev::Head("/a".into()), Ev::BodyComplete]
    );
    respond(&mut c, 200, b"ok");
    assert_eq!(c.finish_response(), Completion::Close);
    assert!(take_tx(&mut c).ends_with("\r\n\r\nok"));
    assert!(c.is_closed());
}

// ---- the request ----

#[test]
fn request_exposes_method_path_query_and_headers() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"DELETE /items/7?force=yes&name=a%20b+c HTTP/1.1\r\nHost: dev\r\nX-Token:  secret \r\n\r\n",
        t0,
    );
    events(&mut c, t0, 64);
    let r = c.request().unwrap();
    assert_eq!(r.method(), "DELETE");
    assert_eq!(r.method_index(), 5);
    assert_eq!(r.target(), "/items/7?force=yes&name=a%20b+c");
    assert_eq!(r.path(), "/items/7");
    assert_eq!(r.query(), Some("force=yes&name=a%20b+c"));
    assert_eq!(r.version(), 1);
    assert_eq!(r.header("x-token"), Some(&b"secret"[..]));
    assert_eq!(r.header("absent"), None);
    let names: Vec<&str> = r.headers().map(|(n, _)| n).collect();
    assert_eq!(names, ["Host", "X-Token"]);
    assert!(r.keep_alive());
}

#[test]
fn method_indices_follow_libwebsockets() {
    for (method, index) in [
        ("GET", 0),
        ("POST", 1),
        ("OPTIONS", 2),
        ("PUT", 3),
        ("PATCH", 4),
        ("DELETE", 5),
        ("HEAD", 7),
        ("PROPFIND", 8),
    ] {
        let t0 = Instant::now();
        let mut c = conn(t0);
        feed_all(
            &mut c,
            format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            t0,
        );
        events(&mut c, t0, 64);
        assert_eq!(c.request().unwrap().method_index(), index, "{method}");
    }
}

#[test]
fn query_arg_decodes_the_first_match() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    feed_all(
        &mut c,
        b"GET /q?xname=no&name&name=a%20b+c%2&name=second HTTP/1.1\r\nHost: a\r\n\r\n",
        t0,
    );
    events(&mut c, t0, 64);
    let r = c.request().unwrap();
    let mut out = [0; 16];
    let n = r.query_arg("name", &mut out).unwrap();
    assert_eq!(&out[..n], b"a b c%2");
    assert_eq!(r.query_arg("name=", &mut out), Ok(7));
    assert_eq!(
        r.query_arg("xname", &mut out).map(|n| out[..n].to_vec()),
        Ok(b"no".to_vec())
    );
    assert_eq!(
        r.query_arg("missing", &mut out),
        Err(QueryArgError::NotFound)
    );
    assert_eq!(
        r.query_arg("name", &mut [0; 6]),
        Err(QueryArgError::TooSmall)
    );
}

#[test]
fn request_is_gone_after_finish_response() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(c.request().is_none());
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    assert!(c.request().is_some());
    respond(&mut c, 200, b"");
    c.finish_response();
    assert!(c.request().is_none());
}

#[test]
fn limits_default_is_the_documented_values() {
    const L: Limits = Limits::DEFAULT;
    assert_eq!(L, Limits::default());
    assert_eq!(L, default_limits());
    assert_eq!(
        (L.max_head_bytes, L.max_headers, L.max_uri_bytes),
        (4096, 32, 1024)
    );
    assert_eq!(L.max_body_bytes, 1_048_576);
    assert_eq!((L.max_response_head_bytes, L.tx_buffer_bytes), (1024, 8192));
    assert_eq!(
        (L.head_timeout, L.body_timeout, L.idle_timeout),
        (10 * SECOND, 10 * SECOND, 30 * SECOND)
    );
}

#[test]
fn errors_are_small_and_say_what_went_wrong() {
    assert_eq!(std::mem::size_of::<ResponseError>(), 1);
    assert_eq!(
        ResponseError::NoSpace.to_string(),
        "no room in the response head or output buffer"
    );
    assert_eq!(
        QueryArgError::TooSmall.to_string(),
        "query argument value longer than the buffer"
    );
    assert_eq!(
        Rejection::new(400, "bare LF in request head").to_string(),
        "400 bare LF in request head"
    );
}

// ---- memory ----

use super::IDLE_KEEP;
use super::conn::Capacities;

/// A request with a head of about `len` bytes (a padding header).
fn padded_get(path: &str, len: usize) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: dev\r\nX-Pad: ").into_bytes();
    req.resize(len.saturating_sub(4).max(req.len()), b'p');
    req.extend_from_slice(b"\r\n\r\n");
    req
}

/// Every buffer of an idle connection keeps at most [`IDLE_KEEP`] bytes.
fn assert_idle(c: &ServerConn) {
    let caps = c.capacities();
    assert!(
        caps.rx <= IDLE_KEEP
            && caps.tx <= IDLE_KEEP
            && caps.head <= IDLE_KEEP
            && caps.request <= IDLE_KEEP,
        "an idle connection holds {caps:?}"
    );
}

#[test]
fn a_new_connection_holds_no_buffers_yet_offers_its_whole_limit() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert_eq!(c.capacities().total(), 0);
    assert_eq!(c.rx_space(), Limits::DEFAULT.max_head_bytes);
    assert_eq!(c.tx_space(), Limits::DEFAULT.tx_buffer_bytes);
    // All of what `rx_space` offers is taken at once, from no capacity.
    let partial = padded_get("/a", 10_000);
    assert_eq!(c.feed(&partial, t0), Limits::DEFAULT.max_head_bytes);
    assert!(c.capacities().rx <= Limits::DEFAULT.max_head_bytes);
}

#[test]
fn idle_keep_alive_connection_gives_its_buffers_back() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let body = vec![b'b'; 6000];
    // The output drains before the transaction ends, and after it.
    for drain_first in [true, false] {
        feed_all(&mut c, &padded_get("/big", 3000), t0);
        assert_eq!(events(&mut c, t0, 64)[0], Ev::Head("/big".into()));
        c.begin_head(200).unwrap();
        c.add_header(b"X-Long", &[b'v'; 700]).unwrap();
        c.set_content_length(Some(body.len() as u64)).unwrap();
        c.finalize_head().unwrap();
        c.write_body(&body, true).unwrap();
        let caps = c.capacities();
        assert!(
            caps.rx >= 3000 && caps.tx >= 6000 && caps.head >= 700,
            "{caps:?}"
        );
        let response = if drain_first {
            let response = take_tx(&mut c);
            assert_eq!(c.finish_response(), Completion::KeepAlive);
            response
        } else {
            assert_eq!(c.finish_response(), Completion::KeepAlive);
            take_tx(&mut c)
        };
        assert!(response.ends_with(std::str::from_utf8(&body).unwrap()));
        assert_idle(&c);
    }
    // The next request grows them again as its bytes come.
    feed_all(&mut c, GET, t0);
    assert_eq!(events(&mut c, t0, 64)[0], Ev::Head("/a".into()));
    respond(&mut c, 200, b"again");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    assert!(take_tx(&mut c).ends_with("\r\n\r\nagain"));
    assert_idle(&c);
}

#[test]
fn small_keep_alive_requests_reuse_their_buffers() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let mut kept = Vec::new();
    for _ in 0..4 {
        feed_all(&mut c, GET, t0);
        events(&mut c, t0, 64);
        respond(&mut c, 200, b"small");
        assert_eq!(c.finish_response(), Completion::KeepAlive);
        take_tx(&mut c);
        kept.push(c.capacities());
    }
    assert!(kept[0].rx > 0 && kept[0].tx > 0 && kept[0].head > 0);
    assert!(kept.iter().all(|&k| k == kept[0]), "{kept:?}");
}

#[test]
fn buffers_are_kept_while_a_transaction_is_in_progress() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    // A pipelined request is waiting: not idle.
    let mut two = padded_get("/1", 1500);
    two.extend_from_slice(GET);
    feed_all(&mut c, &two, t0);
    events(&mut c, t0, 64);
    c.begin_head(200).unwrap();
    c.set_content_length(None).unwrap();
    c.finalize_head().unwrap();
    // A streamed response keeps its output buffer between pieces.
    for _ in 0..3 {
        c.write_body(&[b'x'; 3000], false).unwrap();
        take_tx(&mut c);
        assert!(c.capacities().tx >= 3000);
    }
    c.write_body(b"", true).unwrap();
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    take_tx(&mut c);
    assert!(
        c.capacities().rx >= 1500,
        "the pipelined request is still buffered"
    );
    assert_eq!(events(&mut c, t0, 64)[0], Ev::Head("/a".into()));
    respond(&mut c, 204, b"");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    take_tx(&mut c);
    assert_idle(&c);
}

#[test]
fn buffers_never_grow_past_their_limits() {
    let t0 = Instant::now();
    let mut c = with_limits(t0, |l| {
        l.max_head_bytes = 1000;
        l.tx_buffer_bytes = 3000;
    });
    let mut req = b"POST /up HTTP/1.1\r\nHost: dev\r\nContent-Length: 20000\r\n\r\n".to_vec();
    req.extend((0..20_000).map(|i| (i % 251) as u8));
    let mut rest = &req[..];
    let mut step = 1;
    while !rest.is_empty() {
        let n = c.feed(&rest[..rest.len().min(step)], t0);
        rest = &rest[n..];
        step = step * 3 % 997 + 1;
        events(&mut c, t0, 300);
        assert!(c.capacities().rx <= 1000, "{:?}", c.capacities());
    }
    c.begin_head(200).unwrap();
    c.finalize_head().unwrap();
    for i in 0..200 {
        let n = c.body_space().min(i * 37 % 2000 + 1);
        c.write_body(&vec![b'y'; n], false).unwrap();
        assert!(c.capacities().tx <= 3000, "{:?}", c.capacities());
        // The peer reads part of it.
        c.consume_tx(c.tx().len().min(i * 53 % 2500));
    }
    assert!(c.capacities().head <= Limits::DEFAULT.max_response_head_bytes);
}

#[test]
fn upgrade_gives_the_http_buffers_back_but_keeps_the_request() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    // An earlier transaction left its buffers.
    feed_all(&mut c, GET, t0);
    events(&mut c, t0, 64);
    respond(&mut c, 200, b"first");
    assert_eq!(c.finish_response(), Completion::KeepAlive);
    take_tx(&mut c);
    let mut upgrade = b"GET /ws HTTP/1.1\r\nHost: dev\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    upgrade.extend_from_slice(b"frames");
    feed_all(&mut c, &upgrade, t0);
    assert_eq!(events(&mut c, t0, 64)[0], Ev::Head("/ws".into()));
    assert_eq!(c.take_for_upgrade(), b"frames");
    c.consume_tx(0);
    let caps = c.capacities();
    assert_eq!(
        Capacities { request: 0, ..caps },
        Capacities {
            rx: 0,
            tx: 0,
            head: 0,
            request: 0
        }
    );
    assert_eq!(c.request().map(Request::path), Some("/ws"));
}
