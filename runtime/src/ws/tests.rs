//! Session behaviour from byte fixtures: frames are built here by hand (not with
//! the frame layer under test), fed split in every way, and the output is decoded
//! back into frames.

use std::time::{Duration, Instant};

use super::*;

/// An event, owned, so several can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Data {
        data: Vec<u8>,
        first: bool,
        last: bool,
        binary: bool,
        remaining: u64,
    },
    Pong(Vec<u8>),
    PeerClose(Vec<u8>),
    Closed(u16),
    Failed(u16),
}

impl From<Event<'_>> for Ev {
    fn from(event: Event<'_>) -> Self {
        match event {
            Event::Data {
                data,
                first,
                last,
                binary,
                remaining,
            } => Self::Data {
                data: data.to_vec(),
                first,
                last,
                binary,
                remaining,
            },
            Event::Pong(p) => Self::Pong(p.to_vec()),
            Event::PeerClose { payload } => Self::PeerClose(payload.to_vec()),
            Event::Closed { code } => Self::Closed(code),
            Event::Failed { code, .. } => Self::Failed(code),
        }
    }
}

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame as a client sends it: masked with [`MASK`].
fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    raw(opcode, fin, Some(MASK), payload)
}

/// One frame on the wire, built by hand.
fn raw(opcode: u8, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A frame decoded from a session's output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    opcode: u8,
    fin: bool,
    masked: bool,
    payload: Vec<u8>,
}

/// Decodes every whole frame in `bytes`, unmasking payloads.
fn decode(mut bytes: &[u8]) -> Vec<Out> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (b0, b1) = (bytes[0], bytes[1]);
        assert_eq!(b0 & 0x70, 0, "reserved bits in output");
        let (mut len, mut at) = (u64::from(b1 & 0x7F), 2);
        if len == 126 {
            len = u64::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            at = 4;
        } else if len == 127 {
            len = u64::from_be_bytes(bytes[2..10].try_into().unwrap());
            at = 10;
        }
        let mask = (b1 & 0x80 != 0).then(|| {
            at += 4;
            [bytes[at - 4], bytes[at - 3], bytes[at - 2], bytes[at - 1]]
        });
        let end = at + len as usize;
        let mut payload = bytes[at..end].to_vec();
        if let Some(mask) = mask {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        frames.push(Out {
            opcode: b0 & 0x0F,
            fin: b0 & 0x80 != 0,
            masked: mask.is_some(),
            payload,
        });
        bytes = &bytes[end..];
    }
    assert!(bytes.is_empty(), "partial frame in output");
    frames
}

fn out(opcode: u8, payload: &[u8]) -> Out {
    Out {
        opcode,
        fin: true,
        masked: false,
        payload: payload.to_vec(),
    }
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn server(now: Instant) -> Session {
    Session::new(Role::Server, Limits::DEFAULT, now, 1)
}

fn server_with(limits: Limits, now: Instant) -> Session {
    Session::new(Role::Server, limits, now, 1)
}

/// Every event available now.
fn events(s: &mut Session, now: Instant, max_piece: usize) -> Vec<Ev> {
    let mut all = Vec::new();
    while let Some(event) = s.poll_event(now, max_piece) {
        all.push(event.into());
        assert!(all.len() < 100_000, "event loop");
    }
    all
}

/// Feeds all of `bytes` (polling events in between when the buffer is full).
fn feed_all(s: &mut Session, bytes: &[u8], now: Instant, max_piece: usize) -> Vec<Ev> {
    let mut all = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = s.feed(rest, now);
        rest = &rest[n..];
        all.extend(events(s, now, max_piece));
        if n == 0 && s.rx_space() == 0 {
            break;
        }
    }
    all.extend(events(s, now, max_piece));
    all
}

/// Drains a session's output and decodes it.
fn take_tx(s: &mut Session) -> Vec<Out> {
    let frames = decode(s.tx());
    let n = s.tx().len();
    s.consume_tx(n);
    frames
}

fn data(data: &[u8], first: bool, last: bool, binary: bool, remaining: u64) -> Ev {
    Ev::Data {
        data: data.to_vec(),
        first,
        last,
        binary,
        remaining,
    }
}

/// The concatenated payload of the Data events, and whether the flags describe
/// exactly one message.
fn message_of(evs: &[Ev]) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    let mut shape = Vec::new();
    for ev in evs {
        if let Ev::Data {
            data, first, last, ..
        } = ev
        {
            bytes.extend_from_slice(data);
            shape.push((*first, *last));
        }
    }
    let one = !shape.is_empty()
        && shape[0].0
        && shape.last().unwrap().1
        && shape[1..].iter().all(|s| !s.0)
        && shape[..shape.len() - 1].iter().all(|s| !s.1);
    (bytes, one)
}

// ---- receiving ----

#[test]
fn masked_frame_split_at_every_byte_gives_identical_pieces() {
    let t = Instant::now();
    let payload: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
    let wire = masked(BINARY, true, &payload);
    let whole = {
        let mut s = server(t);
        feed_all(&mut s, &wire, t, 64)
    };
    assert_eq!(whole.len(), 5);
    assert_eq!(whole[0], data(&payload[..64], true, false, true, 236));
    assert_eq!(whole[4], data(&payload[256..], false, true, true, 0));
    for at in 0..=wire.len() {
        // Both parts in before polling: the same pieces.
        let mut s = server(t);
        assert_eq!(s.feed(&wire[..at], t), at);
        assert_eq!(s.feed(&wire[at..], t), wire.len() - at);
        assert_eq!(events(&mut s, t, 64), whole, "split at {at}");
        // Polling in between: the same bytes, one message.
        let mut s = server(t);
        let mut evs = feed_all(&mut s, &wire[..at], t, 64);
        evs.extend(feed_all(&mut s, &wire[at..], t, 64));
        assert_eq!(message_of(&evs), (payload.clone(), true), "split at {at}");
    }
}

#[test]
fn bytes_fed_one_at_a_time_stream_out_as_they_come() {
    let t = Instant::now();
    let payload = "streamed, one byte at a time: κόσμε".as_bytes();
    let wire = masked(TEXT, true, payload);
    let mut s = server(t);
    let mut evs = Vec::new();
    for b in &wire {
        assert_eq!(s.feed(std::slice::from_ref(b), t), 1);
        evs.extend(events(&mut s, t, 4096));
    }
    // One piece per payload byte: nothing is held back for a whole frame.
    assert_eq!(evs.len(), payload.len());
    assert_eq!(message_of(&evs), (payload.to_vec(), true));
}

#[test]
fn fragmented_message_with_a_ping_between_fragments() {
    let t = Instant::now();
    let mut wire = masked(TEXT, false, b"Hello, ");
    wire.extend(masked(PING, true, b"are you there"));
    wire.extend(masked(CONT, false, b"fragmented "));
    wire.extend(masked(CONT, true, b"world"));
    let mut s = server(t);
    let evs = feed_all(&mut s, &wire, t, 4096);
    assert_eq!(
        evs,
        [
            data(b"Hello, ", true, false, false, 0),
            data(b"fragmented ", false, false, false, 0),
            data(b"world", false, true, false, 0),
        ]
    );
    assert_eq!(take_tx(&mut s), [out(PONG, b"are you there")]);
}

#[test]
fn empty_frames_still_start_and_end_messages() {
    let t = Instant::now();
    let mut wire = masked(TEXT, true, b"");
    wire.extend(masked(BINARY, false, b""));
    wire.extend(masked(CONT, true, b""));
    let mut s = server(t);
    assert_eq!(
        feed_all(&mut s, &wire, t, 4096),
        [
            data(b"", true, true, false, 0),
            data(b"", true, false, true, 0),
            data(b"", false, true, true, 0),
        ]
    );
}

#[test]
fn multibyte_character_split_across_frames_is_valid() {
    let t = Instant::now();
    // "€" is e2 82 ac; "𝄞" is f0 9d 84 9e.
    let mut wire = masked(TEXT, false, b"a\xe2");
    wire.extend(masked(CONT, false, b"\x82"));
    wire.extend(masked(CONT, false, b"\xac\xf0\x9d"));
    wire.extend(masked(CONT, true, b"\x84\x9e"));
    let mut s = server(t);
    let evs = feed_all(&mut s, &wire, t, 4096);
    assert_eq!(message_of(&evs), ("a€𝄞".as_bytes().to_vec(), true));
    assert!(s.tx().is_empty());
}

#[test]
fn invalid_utf8_fails_with_1007() {
    let t = Instant::now();
    let cases: &[&[&[u8]]] = &[
        &[b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"],
        &[b"ok\xc0\xaf"],
        // Valid pieces, invalid together (U+110000 across frames).
        &[b"\xf4", b"\x90\x80\x80"],
        // Ends inside a code point.
        &[b"\xce\xba\xe1"],
        &[b"ok", b"\xe2\x82"],
    ];
    for frames in cases {
        let mut wire = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let opcode = if i == 0 { TEXT } else { CONT };
            wire.extend(masked(opcode, i + 1 == frames.len(), f));
        }
        let mut s = server(t);
        let evs = feed_all(&mut s, &wire, t, 4096);
        assert_eq!(evs.last(), Some(&Ev::Failed(1007)), "{frames:x?}");
        assert_eq!(
            first_close_code(&take_tx(&mut s)),
            Some(1007),
            "{frames:x?}"
        );
    }
}

#[test]
fn invalid_utf8_fails_fast_in_the_middle_of_a_frame() {
    let t = Instant::now();
    let mut payload = b"valid start ".to_vec();
    payload.extend_from_slice(b"\xf4\x90\x80\x80");
    payload.extend(std::iter::repeat_n(b'x', 1000));
    let wire = masked(TEXT, true, &payload);
    let mut s = server(t);
    // Header and the first bytes: delivered at once.
    let head = wire.len() - payload.len();
    s.feed(&wire[..head + 12], t);
    assert_eq!(
        events(&mut s, t, 4096),
        [data(b"valid start ", true, false, false, 1004)]
    );
    // The second byte of the bad sequence is enough; the 1000 bytes never came.
    s.feed(&wire[head + 12..head + 14], t);
    assert_eq!(events(&mut s, t, 4096), [Ev::Failed(1007)]);
    assert!(s.is_closing() && !s.is_closed());
}

fn first_close_code(frames: &[Out]) -> Option<u16> {
    frames
        .iter()
        .find(|f| f.opcode == CLOSE)
        .map(|f| u16::from_be_bytes([f.payload[0], f.payload[1]]))
}

#[test]
fn each_protocol_error_fails_with_1002() {
    let t = Instant::now();
    let mut rsv = masked(TEXT, true, b"x");
    rsv[0] |= 0x40;
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&MASK);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RSV1 set", rsv),
        ("reserved data opcode", masked(0x3, true, b"x")),
        ("reserved control opcode", masked(0xB, true, b"x")),
        ("ping over 125 bytes", masked(PING, true, &[b'p'; 126])),
        ("fragmented ping", masked(PING, false, b"p")),
        ("continuation with nothing open", masked(CONT, true, b"x")),
        (
            "new message while one is open",
            [masked(TEXT, false, b"a"), masked(TEXT, true, b"b")].concat(),
        ),
        ("unmasked frame to a server", raw(TEXT, true, None, b"x")),
        ("1-byte close payload", masked(CLOSE, true, b"\x03")),
        ("length with the top bit", huge),
    ];
    for (name, wire) in cases {
        let mut s = server(t);
        let evs = feed_all(&mut s, &wire, t, 4096);
        // A bad close frame also completes the close handshake: `Closed` follows.
        assert!(
            matches!(
                evs[..],
                [.., Ev::Failed(1002)] | [.., Ev::Failed(1002), Ev::Closed(1002)]
            ),
            "{name}: {evs:?}"
        );
        assert_eq!(first_close_code(&take_tx(&mut s)), Some(1002), "{name}");
        assert_eq!(
            s.send(SendKind::Text, b"late", true),
            Err(SendError::BadState),
            "{name}"
        );
    }
}

#[test]
fn close_codes_are_checked() {
    let t = Instant::now();
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut s = server(t);
        let evs = feed_all(
            &mut s,
            &masked(CLOSE, true, &close_payload(code, b"")),
            t,
            4096,
        );
        // The peer's close came: the failure ends the session at once.
        assert_eq!(evs, [Ev::Failed(1002), Ev::Closed(1002)], "{code}");
        assert_eq!(first_close_code(&take_tx(&mut s)), Some(1002), "{code}");
        assert!(s.is_closed());
    }
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        let mut s = server(t);
        let payload = close_payload(code, b"");
        let evs = feed_all(&mut s, &masked(CLOSE, true, &payload), t, 4096);
        assert_eq!(
            evs,
            [Ev::PeerClose(payload.clone()), Ev::Closed(code)],
            "{code}"
        );
        assert_eq!(take_tx(&mut s), [out(CLOSE, &payload)], "{code}");
    }
}

#[test]
fn close_reason_must_be_utf8() {
    let t = Instant::now();
    let payload = close_payload(
        1000,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    );
    let mut s = server(t);
    let evs = feed_all(&mut s, &masked(CLOSE, true, &payload), t, 4096);
    assert_eq!(evs, [Ev::Failed(1007), Ev::Closed(1007)]);
    assert_eq!(first_close_code(&take_tx(&mut s)), Some(1007));
}

#[test]
fn masked_frame_to_a_client_fails_with_1002() {
    let t = Instant::now();
    let mut s = Session::new(Role::Client, Limits::DEFAULT, t, 7);
    let evs = feed_all(&mut s, &masked(BINARY, true, b"x"), t, 4096);
    assert_eq!(evs, [Ev::Failed(1002)]);
    let sent = take_tx(&mut s);
    assert!(sent[0].masked);
    assert_eq!(first_close_code(&sent), Some(1002));
}

#[test]
fn oversized_frame_fails_with_1009_from_its_header() {
    let t = Instant::now();
    let mut s = server(t);
    // Only the header of a frame one byte over 16 MiB.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(16 * 1024 * 1024 + 1u64).to_be_bytes());
    header.extend_from_slice(&MASK);
    assert_eq!(feed_all(&mut s, &header, t, 4096), [Ev::Failed(1009)]);
    assert_eq!(first_close_code(&take_tx(&mut s)), Some(1009));
    // Its payload is read and dropped while waiting for the peer's close.
    assert_eq!(feed_all(&mut s, &[0; 10_000], t, 4096), []);
    assert!(s.rx_space() > 0);
}

#[test]
fn message_growing_past_its_limit_fails_with_1009() {
    let t = Instant::now();
    let limits = Limits {
        max_message_bytes: 10,
        ..Limits::DEFAULT
    };
    let mut s = server_with(limits, t);
    let mut wire = masked(BINARY, false, b"123456");
    wire.extend(masked(CONT, true, b"12345"));
    let evs = feed_all(&mut s, &wire, t, 4096);
    assert_eq!(
        evs,
        [data(b"123456", true, false, true, 0), Ev::Failed(1009)]
    );
}

#[test]
fn a_16_mib_message_streams_through_a_4_kib_buffer() {
    let t = Instant::now();
    let len = 16 * 1024 * 1024;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(len as u64).to_be_bytes());
    header.extend_from_slice(&MASK);
    let mut s = server(t);
    assert_eq!(s.rx_space(), 4096);
    s.feed(&header, t);
    let chunk: Vec<u8> = (0..4096).map(|i| (i as u8) ^ MASK[i % 4]).collect();
    let (mut total, mut pieces, mut last_seen) = (0usize, 0, false);
    while total < len {
        let mut fed = 0;
        while fed < chunk.len() {
            let n = s.feed(&chunk[fed..], t);
            assert!(n > 0, "stuck at {total}");
            fed += n;
            while let Some(Event::Data { data, last, .. }) = s.poll_event(t, 1000) {
                assert!(data.len() <= 1000);
                assert!(
                    data.iter()
                        .enumerate()
                        .all(|(i, &b)| b == ((total + i) % 4096) as u8)
                );
                total += data.len();
                pieces += 1;
                last_seen = last;
            }
            assert!(s.rx_space() <= 4096);
        }
    }
    assert_eq!(total, len);
    assert!(last_seen);
    assert!(pieces >= len / 1000);
    assert!(s.tx().is_empty());
}

// ---- closing ----

#[test]
fn peer_starts_the_close_and_its_code_is_echoed() {
    let t = Instant::now();
    let mut s = server(t);
    let payload = close_payload(1001, "going away: κ".as_bytes());
    let mut wire = masked(CLOSE, true, &payload);
    wire.extend(masked(TEXT, true, b"after the close"));
    let evs = feed_all(&mut s, &wire, t, 4096);
    assert_eq!(evs, [Ev::PeerClose(payload), Ev::Closed(1001)]);
    assert_eq!(take_tx(&mut s), [out(CLOSE, &1001u16.to_be_bytes())]);
    assert!(s.is_closed() && s.is_closing());
    assert_eq!(s.rx_space(), 0);
    assert_eq!(s.send(SendKind::Text, b"x", true), Err(SendError::BadState));
    s.close(1000, b"");
    assert!(s.tx().is_empty(), "nothing after a close frame");
    assert_eq!(s.poll_timeout(t), None);
}

#[test]
fn empty_peer_close_is_answered_with_an_empty_close() {
    let t = Instant::now();
    let mut s = server(t);
    let evs = feed_all(&mut s, &masked(CLOSE, true, b""), t, 4096);
    assert_eq!(evs, [Ev::PeerClose(Vec::new()), Ev::Closed(1005)]);
    assert_eq!(take_tx(&mut s), [out(CLOSE, b"")]);
}

#[test]
fn we_start_the_close_and_ignore_data_until_the_answer() {
    let t = Instant::now();
    let mut s = server(t);
    s.close(4000, b"bye");
    s.close(1000, b"again");
    assert!(s.is_closing() && !s.is_closed());
    assert_eq!(take_tx(&mut s), [out(CLOSE, &close_payload(4000, b"bye"))]);
    assert_eq!(s.send(SendKind::Ping, b"", true), Err(SendError::BadState));
    let mut wire = masked(TEXT, true, b"ignored");
    wire.extend(masked(PING, true, b"not answered"));
    wire.extend(masked(CONT, true, b"not even a protocol error now"));
    wire.extend(masked(CLOSE, true, &close_payload(4000, b"")));
    let evs = feed_all(&mut s, &wire, t, 4096);
    assert_eq!(evs, [Ev::Closed(4000)]);
    assert!(s.tx().is_empty());
    assert!(s.is_closed());
}

#[test]
fn closing_mid_frame_skips_the_rest_and_answers_no_ping() {
    let t = Instant::now();
    let mut s = server(t);
    let text = masked(TEXT, true, b"0123456789");
    s.feed(&text[..10], t);
    assert_eq!(
        events(&mut s, t, 4096),
        [data(b"0123", true, false, false, 6)]
    );
    s.close(1000, b"");
    s.feed(&text[10..], t);
    assert_eq!(events(&mut s, t, 4096), []);
    // A ping half received when the close goes out gets no pong.
    let mut s = server(t);
    let ping = masked(PING, true, b"late");
    s.feed(&ping[..8], t);
    assert_eq!(events(&mut s, t, 4096), []);
    s.close(1000, b"");
    s.feed(&ping[8..], t);
    assert_eq!(events(&mut s, t, 4096), []);
    assert_eq!(take_tx(&mut s), [out(CLOSE, &close_payload(1000, b""))]);
}

#[test]
fn close_reason_is_cut_on_a_utf8_boundary() {
    let t = Instant::now();
    let mut s = server(t);
    // 122 ASCII bytes then "€" (3 bytes): only the ASCII fits in 123.
    let mut reason = vec![b'r'; 122];
    reason.extend_from_slice("€".as_bytes());
    s.close(1000, &reason);
    let sent = take_tx(&mut s);
    assert_eq!(sent[0].payload, close_payload(1000, &[b'r'; 122]));
    let mut s = server(t);
    s.close(1005, b"ignored");
    s.close(1006, b"");
    assert_eq!(take_tx(&mut s), [out(CLOSE, b"")]);
    let mut s = server(t);
    s.close(1006, b"not on the wire");
    assert_eq!(first_close_code(&take_tx(&mut s)), Some(1000));
}

#[test]
fn close_timeout_drops_the_connection() {
    let t = Instant::now();
    let mut s = server(t);
    s.close(1000, b"");
    let deadline = s.poll_timeout(t + Duration::from_secs(1));
    assert_eq!(deadline, Some(t + Duration::from_secs(6)));
    assert_eq!(s.poll_timeout(t + Duration::from_secs(5)), deadline);
    assert_eq!(s.poll_timeout(t + Duration::from_secs(6)), None);
    assert!(s.is_closed());
    assert!(s.tx().is_empty(), "the unread close frame is dropped");
    assert_eq!(events(&mut s, t, 4096), [Ev::Closed(1006)]);
}

#[test]
fn after_the_peers_fin_and_what_came_before_it_the_session_only_sends() {
    let t = Instant::now();
    let mut s = server(t);
    s.feed(&masked(TEXT, true, b"last words"), t);
    s.peer_closed(t);
    assert_eq!(s.rx_space(), 0);
    assert!(!s.input_done(), "what came before the FIN first");
    assert_eq!(
        events(&mut s, t, 4096),
        [data(b"last words", true, true, false, 0)]
    );
    assert!(s.input_done() && !s.is_closing());
    assert_eq!(
        s.poll_timeout(t + Duration::from_secs(3600)),
        None,
        "no pings"
    );
    s.send(SendKind::Text, b"still sent", true).unwrap();
    s.drop_input();
    assert_eq!(events(&mut s, t, 4096), [Ev::Closed(1006)]);
    assert_eq!(take_tx(&mut s), [out(TEXT, b"still sent")]);

    // A session already closing ends at the FIN.
    let mut s = server(t);
    s.close(1000, b"");
    s.peer_closed(t);
    assert!(s.is_closed());
    assert_eq!(events(&mut s, t, 4096), [Ev::Closed(1006)]);
}

// ---- sending ----

#[test]
fn send_is_all_or_nothing() {
    let t = Instant::now();
    let limits = Limits {
        tx_buffer_bytes: 10,
        ..Limits::DEFAULT
    };
    let mut s = server_with(limits, t);
    assert_eq!(s.send(SendKind::Binary, b"12345678", true), Ok(()));
    assert_eq!(s.tx_space(), 0);
    assert_eq!(s.send(SendKind::Binary, b"", true), Err(SendError::NoSpace));
    assert_eq!(s.tx().len(), 10);
    s.consume_tx(4);
    assert_eq!(
        s.send(SendKind::Binary, b"123", true),
        Err(SendError::NoSpace)
    );
    assert_eq!(s.send(SendKind::Binary, b"12", true), Ok(()));
    assert_eq!(s.tx().len(), 10);
    assert_eq!(
        s.send(SendKind::Text, &[b'x'; 11], true),
        Err(SendError::NoSpace)
    );
}

#[test]
fn send_checks_message_state_and_control_frames() {
    let t = Instant::now();
    let mut s = server(t);
    assert_eq!(
        s.send(SendKind::Continuation, b"x", true),
        Err(SendError::BadState)
    );
    assert_eq!(s.send(SendKind::Text, b"He", false), Ok(()));
    assert_eq!(
        s.send(SendKind::Binary, b"x", true),
        Err(SendError::BadState)
    );
    assert_eq!(s.send(SendKind::Text, b"x", true), Err(SendError::BadState));
    assert_eq!(s.send(SendKind::Ping, b"between", true), Ok(()));
    assert_eq!(
        s.send(SendKind::Ping, &[0; 126], true),
        Err(SendError::Invalid)
    );
    assert_eq!(s.send(SendKind::Pong, b"", false), Err(SendError::Invalid));
    assert_eq!(s.send(SendKind::Continuation, b"ll", false), Ok(()));
    assert_eq!(s.send(SendKind::Continuation, b"o", true), Ok(()));
    assert_eq!(
        s.send(SendKind::Continuation, b"x", true),
        Err(SendError::BadState)
    );
    assert_eq!(s.send(SendKind::Pong, &[7; 125], true), Ok(()));
    let big = vec![b'b'; 70_000 - 14];
    assert_eq!(
        s.send(SendKind::Binary, &big, true),
        Err(SendError::NoSpace)
    );
    assert_eq!(s.send(SendKind::Binary, &big[..300], true), Ok(()));
    let sent = take_tx(&mut s);
    let shape: Vec<(u8, bool, usize)> = sent
        .iter()
        .map(|f| (f.opcode, f.fin, f.payload.len()))
        .collect();
    assert_eq!(
        shape,
        [
            (TEXT, false, 2),
            (PING, true, 7),
            (CONT, false, 2),
            (CONT, true, 1),
            (PONG, true, 125),
            (BINARY, true, 300)
        ]
    );
    assert!(sent.iter().all(|f| !f.masked));
}

#[test]
fn pong_waits_for_room_and_the_newest_ping_wins() {
    let t = Instant::now();
    let limits = Limits {
        tx_buffer_bytes: 20,
        ..Limits::DEFAULT
    };
    let mut s = server_with(limits, t);
    assert_eq!(s.send(SendKind::Binary, &[1; 18], true), Ok(()));
    let mut wire = masked(PING, true, b"one");
    wire.extend(masked(PING, true, b"two"));
    assert_eq!(feed_all(&mut s, &wire, t, 4096), []);
    assert_eq!(s.tx().len(), 20);
    s.consume_tx(20);
    assert_eq!(take_tx(&mut s), [out(PONG, b"two")]);
}

// ---- keepalive and flow control ----

#[test]
fn keepalive_pings_after_silence_and_ends_without_an_answer() {
    let t = Instant::now();
    let mut s = server(t);
    let ping_at = t + Duration::from_secs(60);
    assert_eq!(s.poll_timeout(t), Some(ping_at));
    // Bytes from the peer push the ping back.
    let later = t + Duration::from_secs(30);
    s.feed(&masked(PONG, true, b"unsolicited"), later);
    assert_eq!(
        events(&mut s, later, 4096),
        [Ev::Pong(b"unsolicited".to_vec())]
    );
    let ping_at = later + Duration::from_secs(60);
    assert_eq!(s.poll_timeout(later), Some(ping_at));
    // The ping goes out; any frame in time answers it.
    assert_eq!(
        s.poll_timeout(ping_at),
        Some(ping_at + Duration::from_secs(10))
    );
    assert_eq!(take_tx(&mut s), [out(PING, b"")]);
    let answer = ping_at + Duration::from_secs(9);
    s.feed(&masked(PONG, true, b""), answer);
    assert_eq!(events(&mut s, answer, 4096), [Ev::Pong(Vec::new())]);
    assert_eq!(
        s.poll_timeout(answer),
        Some(answer + Duration::from_secs(60))
    );
    // Next time nothing comes back.
    let ping_at = answer + Duration::from_secs(60);
    assert_eq!(
        s.poll_timeout(ping_at),
        Some(ping_at + Duration::from_secs(10))
    );
    assert_eq!(s.poll_timeout(ping_at + Duration::from_secs(10)), None);
    assert!(s.is_closed());
    assert!(s.tx().is_empty());
    assert_eq!(events(&mut s, ping_at, 4096), [Ev::Closed(1006)]);
}

#[test]
fn no_ping_interval_means_no_timer() {
    let t = Instant::now();
    let limits = Limits {
        ping_interval: None,
        ..Limits::DEFAULT
    };
    let mut s = server_with(limits, t);
    assert_eq!(s.poll_timeout(t + Duration::from_secs(3600)), None);
}

#[test]
fn paused_rx_stops_data_but_answers_pings() {
    let t = Instant::now();
    let mut s = server(t);
    s.set_rx_paused(true);
    let mut wire = masked(PING, true, b"p");
    wire.extend(masked(TEXT, true, b"held"));
    wire.extend(masked(PING, true, b"q"));
    assert_eq!(s.feed(&wire, t), wire.len());
    assert_eq!(events(&mut s, t, 4096), []);
    assert_eq!(take_tx(&mut s), [out(PONG, b"p")]);
    assert_eq!(s.rx_space(), 0);
    assert_eq!(s.poll_timeout(t + Duration::from_secs(3600)), None);
    s.set_rx_paused(false);
    let resumed = t + Duration::from_secs(3600);
    assert_eq!(
        events(&mut s, resumed, 4096),
        [data(b"held", true, true, false, 0)]
    );
    assert_eq!(take_tx(&mut s), [out(PONG, b"q")]);
    assert_eq!(s.rx_space(), 4096);
    // Keepalive counts from the resume.
    assert_eq!(
        s.poll_timeout(resumed),
        Some(resumed + Duration::from_secs(60))
    );
}

// ---- both roles ----

/// Moves everything one session has to send into the other.
fn pump(from: &mut Session, to: &mut Session, now: Instant, max_piece: usize) -> Vec<Ev> {
    let mut evs = Vec::new();
    loop {
        let n = to.feed(from.tx(), now);
        from.consume_tx(n);
        evs.extend(events(to, now, max_piece));
        if n == 0 {
            return evs;
        }
    }
}

#[test]
fn client_and_server_talk_through_their_buffers() {
    let t = Instant::now();
    let mut client = Session::new(Role::Client, Limits::DEFAULT, t, 0xDEAD_BEEF);
    let mut server = server(t);
    let text = "κόσμε ".repeat(1000);
    let (a, b) = text.as_bytes().split_at(1001); // inside a character
    assert_eq!(client.send(SendKind::Text, a, false), Ok(()));
    assert_eq!(client.send(SendKind::Ping, b"hi", true), Ok(()));
    assert_eq!(client.send(SendKind::Continuation, b, true), Ok(()));
    assert!(decode(client.tx()).iter().all(|f| f.masked));
    let evs = pump(&mut client, &mut server, t, 512);
    assert_eq!(message_of(&evs), (text.as_bytes().to_vec(), true));
    assert!(
        evs.iter()
            .all(|e| matches!(e, Ev::Data { data, binary: false, .. } if data.len() <= 512))
    );
    // The server's answers are unmasked and the client accepts them.
    assert!(decode(server.tx()).iter().all(|f| !f.masked));
    assert_eq!(
        pump(&mut server, &mut client, t, 4096),
        [Ev::Pong(b"hi".to_vec())]
    );
    let payload = vec![0xA5; 14_000];
    assert_eq!(
        server.send(SendKind::Binary, &payload[..12_000], false),
        Ok(())
    );
    let mut evs = pump(&mut server, &mut client, t, 4096);
    assert_eq!(
        server.send(SendKind::Continuation, &payload[12_000..], true),
        Ok(())
    );
    evs.extend(pump(&mut server, &mut client, t, 4096));
    assert_eq!(message_of(&evs), (payload, true));
    // The client closes; the server echoes; both are done.
    client.close(1000, b"done");
    assert_eq!(
        pump(&mut client, &mut server, t, 4096),
        [
            Ev::PeerClose(close_payload(1000, b"done")),
            Ev::Closed(1000)
        ]
    );
    assert_eq!(pump(&mut server, &mut client, t, 4096), [Ev::Closed(1000)]);
    assert!(client.is_closed() && server.is_closed());
}

#[test]
fn client_masks_differ_from_frame_to_frame() {
    let t = Instant::now();
    let mut client = Session::new(Role::Client, Limits::DEFAULT, t, 0);
    client.send(SendKind::Binary, b"same", true).unwrap();
    client.send(SendKind::Binary, b"same", true).unwrap();
    let tx = client.tx();
    assert_eq!(tx.len(), 20);
    assert_ne!(tx[2..6], tx[12..16]);
    assert_ne!(tx[6..10], tx[16..20]);
}

// ---- memory ----

use crate::http::IDLE_KEEP;

/// Both buffers of an idle session keep at most [`IDLE_KEEP`] bytes.
fn assert_idle(s: &Session) {
    let (rx, tx) = s.buffer_capacity();
    assert!(
        rx <= IDLE_KEEP && tx <= IDLE_KEEP,
        "an idle session holds rx {rx}, tx {tx}"
    );
}

#[test]
fn a_new_session_holds_no_buffers_yet_offers_its_whole_limit() {
    let t = Instant::now();
    let mut s = server(t);
    assert_eq!(s.buffer_capacity(), (0, 0));
    assert_eq!(s.rx_space(), Limits::DEFAULT.rx_buffer_bytes);
    assert_eq!(s.tx_space(), Limits::DEFAULT.tx_buffer_bytes);
    // All of what `rx_space` offers is taken at once, from no capacity.
    let frame = masked(BINARY, true, &[7; 10_000]);
    assert_eq!(s.feed(&frame, t), Limits::DEFAULT.rx_buffer_bytes);
}

#[test]
fn buffers_are_kept_after_a_16_kib_message_until_trimmed() {
    let t = Instant::now();
    let mut s = server(t);
    let message: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
    let evs = feed_all(&mut s, &masked(BINARY, true, &message), t, 4096);
    assert_eq!(message_of(&evs), (message.clone(), true));
    assert_eq!(s.buffer_capacity().0, Limits::DEFAULT.rx_buffer_bytes);
    assert!(
        s.holds_spare(),
        "the receive buffer is kept for the next one"
    );
    // The echo, as big a frame as the output buffer takes.
    let echo = &message[..Limits::DEFAULT.tx_buffer_bytes - 4];
    s.send(SendKind::Binary, echo, true).unwrap();
    assert!(s.buffer_capacity().1 >= echo.len());
    // The peer reads it in two goes.
    s.consume_tx(1000);
    s.trim();
    assert!(
        s.buffer_capacity().1 >= echo.len() - 1000,
        "kept while bytes wait, trimmed or not"
    );
    s.consume_tx(s.tx().len());
    assert!(s.buffer_capacity().1 >= echo.len(), "kept for the next one");
    s.trim();
    assert_idle(&s);
    assert!(!s.holds_spare());
    // And the session goes on as before.
    let evs = feed_all(&mut s, &masked(TEXT, true, b"hi"), t, 4096);
    assert_eq!(evs, [data(b"hi", true, true, false, 0)]);
    s.send(SendKind::Text, b"hi", true).unwrap();
    assert_eq!(take_tx(&mut s), [out(TEXT, b"hi")]);
}

#[test]
fn kept_buffers_go_back_a_quiet_second_after_the_last_large_message() {
    let t = Instant::now();
    let second = Duration::from_secs(1);
    let mut s = server(t);
    assert_eq!(s.trim_when_quiet(t, second), None, "nothing kept yet");
    let large = [7; 3000];
    let echo_large = |s: &mut Session, at: Instant| {
        feed_all(s, &masked(BINARY, true, &large), at, 4096);
        s.send(SendKind::Binary, &large, true).unwrap();
        take_tx(s);
    };
    echo_large(&mut s, t);
    assert_eq!(s.trim_when_quiet(t, second), Some(t + second));
    // Small messages in between do not keep them...
    let t1 = t + Duration::from_millis(500);
    feed_all(&mut s, &masked(TEXT, true, b"hi"), t1, 4096);
    s.send(SendKind::Text, b"hi", true).unwrap();
    take_tx(&mut s);
    assert_eq!(s.trim_when_quiet(t1, second), Some(t + second));
    // ...a large one does.
    let t2 = t + Duration::from_millis(800);
    echo_large(&mut s, t2);
    assert_eq!(s.trim_when_quiet(t2, second), Some(t2 + second));
    assert!(s.buffer_capacity().0 >= 3000 && s.buffer_capacity().1 >= 3000);
    assert_eq!(s.trim_when_quiet(t2 + second, second), None);
    assert_idle(&s);
    assert_eq!(s.trim_when_quiet(t2 + 2 * second, second), None);
}

#[test]
fn small_messages_reuse_the_buffers() {
    let t = Instant::now();
    let mut s = server(t);
    let mut kept = Vec::new();
    for _ in 0..4 {
        let evs = feed_all(&mut s, &masked(TEXT, true, b"reading: 21.5"), t, 4096);
        assert_eq!(message_of(&evs).0, b"reading: 21.5");
        s.send(SendKind::Text, b"ok", true).unwrap();
        take_tx(&mut s);
        kept.push(s.buffer_capacity());
    }
    assert!(kept[0].0 > 0 && kept[0].1 > 0);
    assert!(kept.iter().all(|&k| k == kept[0]), "{kept:?}");
}

#[test]
fn buffers_are_kept_while_a_message_is_in_progress() {
    let t = Instant::now();
    let mut s = server(t);
    // Received: a frame that has not fully arrived, then a message whose
    // next frame has not.
    let frame = masked(BINARY, false, &[1; 3000]);
    feed_all(&mut s, &frame[..2000], t, 4096);
    s.trim();
    assert!(s.buffer_capacity().0 >= 2000);
    feed_all(&mut s, &frame[2000..], t, 4096);
    s.trim();
    assert!(s.buffer_capacity().0 >= 1000, "the message is still open");
    feed_all(&mut s, &masked(CONT, true, &[2; 10]), t, 4096);
    s.trim();
    assert_idle(&s);
    // Sent: a message in fragments keeps its buffer until its last frame.
    s.send(SendKind::Binary, &[3; 3000], false).unwrap();
    take_tx(&mut s);
    assert!(!s.holds_spare());
    s.trim();
    assert!(s.buffer_capacity().1 >= 3000);
    s.send(SendKind::Continuation, &[4; 3000], true).unwrap();
    take_tx(&mut s);
    s.trim();
    assert_idle(&s);
}

#[test]
fn buffers_never_grow_past_their_limits() {
    let t = Instant::now();
    let mut limits = Limits::DEFAULT;
    limits.rx_buffer_bytes = 1000;
    limits.tx_buffer_bytes = 3000;
    let mut s = server_with(limits, t);
    let message: Vec<u8> = (0..50_000).map(|i| (i % 251) as u8).collect();
    let wire = masked(BINARY, true, &message);
    let (mut rest, mut step, mut got) = (&wire[..], 1, Vec::new());
    while !rest.is_empty() {
        let n = s.feed(&rest[..rest.len().min(step)], t);
        rest = &rest[n..];
        step = step * 3 % 997 + 1;
        for ev in events(&mut s, t, 300) {
            if let Ev::Data { data, .. } = ev {
                got.extend(data);
            }
        }
        assert!(s.buffer_capacity().0 <= 1000, "{:?}", s.buffer_capacity());
    }
    assert_eq!(got, message);
    for i in 0..200 {
        let n = (s.tx_space().saturating_sub(4)).min(i * 37 % 2000 + 1);
        let kind = if i == 0 {
            SendKind::Binary
        } else {
            SendKind::Continuation
        };
        s.send(kind, &vec![b'y'; n], false).unwrap();
        assert!(s.buffer_capacity().1 <= 3000, "{:?}", s.buffer_capacity());
        // The peer reads part of it.
        s.consume_tx(s.tx().len().min(i * 53 % 2500));
    }
}

#[test]
fn a_peers_fin_keeps_what_was_queued_for_it() {
    // A FIN ends only the peer's sending: it may still read, so what was
    // queued before it goes out (a timeout drops it instead, above).
    let t = Instant::now();
    let mut s = server(t);
    s.send(SendKind::Binary, &[5; 5000], true).unwrap();
    s.peer_closed(t);
    assert!(s.input_done());
    s.drop_input();
    assert_eq!(events(&mut s, t, 4096), [Ev::Closed(1006)]);
    assert_eq!(take_tx(&mut s), [out(BINARY, &[5; 5000])]);
    assert!(s.tx().is_empty());

    // The same when the FIN comes behind input still to be used up.
    let mut s = server(t);
    s.send(SendKind::Binary, &[5; 300], true).unwrap();
    s.feed(&masked(TEXT, true, b"last words"), t);
    s.peer_closed(t);
    assert!(!s.input_done(), "its input first");
    assert_eq!(
        events(&mut s, t, 4096),
        [data(b"last words", true, true, false, 0)]
    );
    s.drop_input();
    assert_eq!(events(&mut s, t, 4096), [Ev::Closed(1006)]);
    assert_eq!(take_tx(&mut s), [out(BINARY, &[5; 300])]);
}

#[test]
fn input_left_paused_behind_a_peers_fin_can_be_dropped() {
    let t = Instant::now();
    let mut s = server(t);
    s.feed(&masked(TEXT, true, b"first"), t);
    s.feed(&masked(TEXT, true, b"never taken"), t);
    let first = s.poll_event(t, 4096).map(Ev::from);
    assert_eq!(first, Some(data(b"first", true, true, false, 0)));
    s.set_rx_paused(true);
    s.send(SendKind::Text, b"answer", true).unwrap();
    s.peer_closed(t);
    assert!(events(&mut s, t, 4096).is_empty(), "paused: nothing");
    assert!(!s.is_closed());
    s.drop_input();
    assert_eq!(events(&mut s, t, 4096), [Ev::Closed(1006)]);
    assert_eq!(take_tx(&mut s), [out(TEXT, b"answer")]);
    assert!(!s.has_buffered());
}
