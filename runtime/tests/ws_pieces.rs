//! Several WebSocket messages in one read reach a guest in one entry: the
//! `RECEIVE` callback of the first piece takes the pieces buffered behind it
//! with `lws.wasmgate_receive_next`, each a callback of its own, as lws makes
//! a `RECEIVE` callback for every frame of one read before anything else.
//! Driven through the context with the `ws-echo` guest (the SDK's
//! `export_ws!` does the taking) and with a WAT guest that calls the host
//! function itself.

mod common;

use std::time::Instant;

use common::client_frame as frame;
use wasmgate::Context;
use wasmgate::context::ConnId;

const TEXT: u8 = 1;
const PING: u8 = 9;

/// A frame as the device sent it: FIN, opcode, payload.
type Out = (bool, u8, Vec<u8>);

/// A WebSocket open on `ctx`, and the frames sent after the `101`.
fn open(ctx: &mut Context, now: Instant) -> (ConnId, Vec<Out>) {
    let (id, after) = common::open_websocket(ctx, now);
    (id, common::server_frames(&after))
}

/// `bytes` arrive in one read; what the device sends back, and the guest
/// entries and callbacks that took.
fn one_read(ctx: &mut Context, id: ConnId, bytes: &[u8], now: Instant) -> (Vec<Out>, u64, u64) {
    let before = ctx.stats();
    assert_eq!(ctx.receive(id, bytes, now), bytes.len());
    ctx.service(now);
    let out = common::server_frames(&common::drain(ctx, id, now));
    let after = ctx.stats();
    (
        out,
        after.entries - before.entries,
        after.callbacks - before.callbacks,
    )
}

fn echo_device() -> Context {
    common::websocket_device("echo_server", wasmgate_guests::WS_ECHO.to_vec())
}

/// A text frame for each of `words`, one after the other, as one read.
fn texts(words: &[&str]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| frame(true, TEXT, w.as_bytes()))
        .collect()
}

fn text(payload: &str) -> Out {
    (true, TEXT, payload.as_bytes().to_vec())
}

#[test]
fn eight_messages_in_one_read_are_echoed_in_order_from_one_entry() {
    let now = Instant::now();
    let mut ctx = echo_device();
    let (id, _) = open(&mut ctx, now);
    let words: Vec<String> = (0..8).map(|i| format!("message {i}")).collect();
    let read = texts(&words.iter().map(String::as_str).collect::<Vec<_>>());
    let (out, entries, callbacks) = one_read(&mut ctx, id, &read, now);
    let expected: Vec<Out> = words.iter().map(|w| text(w)).collect();
    assert_eq!(out, expected);
    assert_eq!(callbacks, 8, "a RECEIVE callback per message");
    assert_eq!(entries, 1, "the seven behind the first come in its entry");

    // One message per read: an entry each, as before.
    for w in &words[..3] {
        let (out, entries, callbacks) =
            one_read(&mut ctx, id, &frame(true, TEXT, w.as_bytes()), now);
        assert_eq!(out, [text(w)]);
        assert_eq!((entries, callbacks), (1, 1));
    }
}

#[test]
fn echoes_the_guest_queued_for_writeable_still_go_out_after_the_peers_fin() {
    let now = Instant::now();
    let mut ctx = echo_device();
    let (id, _) = open(&mut ctx, now);
    // 18 KB of messages and then FIN, the device sending only when it can
    // take no more (and then only 9 KiB): at the FIN the guest holds echoes
    // it could not write yet and asks for WRITEABLE until it has written
    // them (the session ended at the FIN before, and they were lost).
    let sent: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 3000]).collect();
    let read: Vec<u8> = sent.iter().flat_map(|m| frame(true, 2, m)).collect();
    let (mut at, mut out) = (0, Vec::new());
    for _ in 0..1000 {
        if at == read.len() {
            break;
        }
        let n = ctx.receive(id, &read[at..], now);
        at += n;
        ctx.service(now);
        if n == 0 {
            // Just enough for WRITEABLE (half the buffer free), no more.
            let tx = ctx.transmit(id).to_vec();
            let k = tx.len().min(9 * 1024);
            ctx.transmitted(id, k, now);
            out.extend_from_slice(&tx[..k]);
        }
    }
    assert_eq!(at, read.len(), "all taken");
    ctx.peer_closed(id, now);
    assert_echoed_then_closed(&mut ctx, id, out, &sent, now);
}

/// `ctx` sends what connection `id` has left to send (after `out`, already
/// sent) until it closes; the messages echoed must be `sent`, whole.
fn assert_echoed_then_closed(
    ctx: &mut Context,
    id: ConnId,
    mut out: Vec<u8>,
    sent: &[Vec<u8>],
    now: Instant,
) {
    for _ in 0..100 {
        if ctx.should_close(id) {
            break;
        }
        ctx.service(now);
        out.extend(common::drain(ctx, id, now));
    }
    assert!(ctx.should_close(id), "closed once all is out");
    let mut echoed = Vec::new();
    let mut message = Vec::new();
    for (fin, _, payload) in common::server_frames(&out) {
        message.extend(payload);
        if fin {
            echoed.push(std::mem::take(&mut message));
        }
    }
    assert!(
        echoed == sent,
        "every echo whole: {:?}",
        echoed.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn frames_that_came_with_the_upgrade_are_echoed_before_the_peers_fin_ends_it() {
    let now = Instant::now();
    let mut config = common::config_with(
        common::websocket_listener("echo_server"),
        "echo_server",
        wasmgate::config::Handler::Wasm(wasmgate_guests::WS_ECHO.to_vec()),
    );
    // Room for 9 KB of frames behind the upgrade request in its read, a
    // small receive buffer, so that most of them wait in the backlog, and
    // a small output buffer, so that the guest pauses receiving and the
    // backlog is still there at the FIN.
    config.limits.http.max_head_bytes = 16 * 1024;
    config.limits.ws.rx_buffer_bytes = 512;
    config.limits.ws.tx_buffer_bytes = 2048;
    let mut ctx = Context::new(config, now).expect("device starts");
    let peer = "127.0.0.1:40000".parse().expect("an address");
    let id = ctx.accept(0, peer, now).expect("a free slot");
    let sent: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'a' + i; 900]).collect();
    let mut read = common::UPGRADE.to_vec();
    read.extend(sent.iter().flat_map(|m| frame(true, 2, m)));
    assert_eq!(ctx.receive(id, &read, now), read.len(), "in one read");
    ctx.peer_closed(id, now);
    let out = common::drain(&mut ctx, id, now);
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the 101")
        + 4;
    assert_echoed_then_closed(&mut ctx, id, out[head_end..].to_vec(), &sent, now);
}

#[test]
fn a_message_in_pieces_and_one_longer_than_the_buffer_come_whole_in_one_entry() {
    // ws-echo takes 1 KiB pieces: 2,500 bytes are three, and a fragmented
    // message's frames are pieces too; all of one read in one entry.
    let now = Instant::now();
    let mut ctx = echo_device();
    let (id, _) = open(&mut ctx, now);
    let long = vec![b'x'; 2500];
    let mut read = frame(true, TEXT, &long);
    read.extend(frame(false, TEXT, b"frag"));
    read.extend(frame(true, 0, b"ment"));
    let (out, entries, callbacks) = one_read(&mut ctx, id, &read, now);
    let payload: Vec<u8> = out.iter().flat_map(|(_, _, p)| p.clone()).collect();
    assert_eq!(payload, [&long[..], b"fragment"].concat());
    assert_eq!(
        out.last().map(|f| f.0),
        Some(true),
        "the last piece ends the message"
    );
    assert_eq!(
        (entries, callbacks),
        (1, 5),
        "three pieces, then two frames"
    );
}

#[test]
fn a_ping_between_messages_is_answered_in_its_place() {
    let now = Instant::now();
    let mut ctx = echo_device();
    let (id, _) = open(&mut ctx, now);
    let read = [
        texts(&["one", "two"]),
        frame(true, PING, b"p"),
        texts(&["three"]),
    ]
    .concat();
    let (out, entries, callbacks) = one_read(&mut ctx, id, &read, now);
    assert_eq!(
        out,
        [
            text("one"),
            text("two"),
            (true, 10, b"p".to_vec()),
            text("three")
        ]
    );
    assert_eq!(
        (entries, callbacks),
        (2, 3),
        "the ping ends the first entry; the message after it starts the next"
    );
}

/// "one" and "two", then a frame a client may not send (unmasked), then
/// `after`.
fn two_then_broken(after: &[u8]) -> Vec<u8> {
    let unmasked = [0x81, 3, b'b', b'a', b'd'];
    [texts(&["one", "two"]), unmasked.to_vec(), after.to_vec()].concat()
}

/// `frame` closes with 1002, protocol error.
fn assert_protocol_error(frame: &Out) {
    let (fin, opcode, payload) = frame;
    assert!(*fin && *opcode == 8, "a close frame: {frame:?}");
    assert_eq!(payload[..2], 1002u16.to_be_bytes(), "protocol error");
}

#[test]
fn a_protocol_error_behind_good_messages_closes_after_their_echoes() {
    let now = Instant::now();
    let mut ctx = echo_device();
    let (id, _) = open(&mut ctx, now);
    let read = two_then_broken(&frame(true, TEXT, b"never"));
    let (out, entries, callbacks) = one_read(&mut ctx, id, &read, now);
    assert_eq!(out[..2], [text("one"), text("two")]);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_protocol_error(&out[2]);
    assert_eq!((entries, callbacks), (1, 2));
}

/// A WAT guest (protocol `pieces`, receive buffer 256..768, fragment cell at
/// 3072) whose `RECEIVE` echoes its piece as text, then takes the next one
/// with `wasmgate_receive_next` while the cell says more are buffered. A
/// piece starting with `P` also pauses receiving (`lws_rx_flow_control`), one
/// starting with `C` opens a client connection to 127.0.0.1:9, one starting
/// with `T` traps once it is echoed;
/// each piece first burns `BURN` rounds of a loop. When no piece is left it
/// sends `end`, so every entry ends with one. On `ESTABLISHED` it sends
/// what `wasmgate_receive_next` answers there, as a 4-byte binary message.
const GUEST: &str = r#"(module
    (import "lws" "lws_write" (func $write (param i32 i32 i32 i32) (result i32)))
    (import "lws" "lws_rx_flow_control" (func $flow (param i32 i32) (result i32)))
    (import "lws" "wasmgate_receive_next" (func $next (param i32) (result i32)))
    (import "lws" "lws_client_connect_via_info" (func $connect (param i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\06\00\00\00")
    (data (i32.const 768) "pieces")
    (data (i32.const 2100) "end")
    ;; lws_client_connect_via_info's struct: address at 4200 (9 bytes), port 9
    (data (i32.const 4096) "\68\10\00\00\09\00\00\00\09\00\00\00")
    (data (i32.const 4200) "127.0.0.1")
    (func (export "wasmgate_protocol") (result i32) (i32.const 0))
    (func (export "wasmgate_fragment_cell") (result i32) (i32.const 3072))
    (func (export "callback") (param $wsi i32) (param $reason i32) (param i32) (param $in i32) (param $len i32) (result i32)
      (local $i i32)
      (if (i32.eq (local.get $reason) (i32.const 0))
        (then
          (i32.store (i32.const 2048) (call $next (local.get $wsi)))
          (drop (call $write (local.get $wsi) (i32.const 2048) (i32.const 4) (i32.const 1)))))
      (if (i32.ne (local.get $reason) (i32.const 6)) (then (return (i32.const 0))))
      (loop $piece
        (local.set $i (i32.const 0))
        (block $burnt
          (loop $burn
            (br_if $burnt (i32.ge_u (local.get $i) (i32.const BURN)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $burn)))
        (drop (call $write (local.get $wsi) (local.get $in) (local.get $len) (i32.const 0)))
        (if (i32.eq (i32.load8_u (local.get $in)) (i32.const 80))
          (then (drop (call $flow (local.get $wsi) (i32.const 0)))))
        (if (i32.eq (i32.load8_u (local.get $in)) (i32.const 67))
          (then (drop (call $connect (i32.const 4096)))))
        (if (i32.eq (i32.load8_u (local.get $in)) (i32.const 84)) (then (unreachable)))
        (if (i64.ne (i64.and (i64.load (i32.const 3072)) (i64.const 8)) (i64.const 0))
          (then
            (local.set $len (call $next (local.get $wsi)))
            (local.set $in (i32.const 256))
            (br_if $piece (i32.ge_s (local.get $len) (i32.const 0))))))
      (drop (call $write (local.get $wsi) (i32.const 2100) (i32.const 3) (i32.const 0)))
      (i32.const 0)))"#;

fn wat_device(burn: u32) -> Context {
    let wat = GUEST.replace("BURN", &burn.to_string());
    let module = wat::parse_str(wat).expect("test WAT parses");
    common::websocket_device("pieces", module)
}

#[test]
fn outside_a_receive_callback_the_call_is_a_bad_state() {
    let now = Instant::now();
    let mut ctx = wat_device(0);
    let (_, out) = open(&mut ctx, now);
    assert_eq!(
        out,
        [(true, 2, (-2i32).to_le_bytes().to_vec())],
        "BAD_STATE"
    );
}

/// A WebSocket on `ctx` (the WAT guest) that got "one", "Pause" and "three"
/// in one read: the guest echoes the first two, the second pausing receipt,
/// in one entry of two callbacks; "three" waits.
fn paused_before_the_third(ctx: &mut Context, now: Instant) -> ConnId {
    let (id, _) = open(ctx, now);
    let read = texts(&["one", "Pause", "three"]);
    let (out, entries, callbacks) = one_read(ctx, id, &read, now);
    assert_eq!(out, [text("one"), text("Pause"), text("end")]);
    assert_eq!((entries, callbacks), (1, 2));
    id
}

#[test]
fn pausing_receipt_in_a_piece_leaves_the_pieces_behind_it_buffered() {
    let now = Instant::now();
    let mut ctx = wat_device(0);
    let id = paused_before_the_third(&mut ctx, now);
    // Still paused later: the third stays where it is.
    let (out, _, callbacks) = one_read(&mut ctx, id, &[], now);
    assert!(out.is_empty() && callbacks == 0, "{out:?}");
}

#[test]
fn input_a_paused_guest_never_took_from_a_peer_gone_is_dropped_without_a_close_frame() {
    let now = Instant::now();
    let mut ctx = wat_device(0);
    let id = paused_before_the_third(&mut ctx, now);
    // The peer closes; "three" waits behind the pause, and the guest never
    // resumes: after the close timeout the session ends (1006, `CLOSED`)
    // with no close frame, which a peer that sent FIN would not answer.
    ctx.peer_closed(id, now);
    assert!(!ctx.should_close(id), "the guest may still resume");
    assert_eq!(ends_at_the_fins_deadline(&mut ctx, id, now), 1, "CLOSED");
}

/// Connection `id`, whose peer sent FIN at `now`, ends at the close timeout
/// after it, with no close frame; the callbacks that took.
fn ends_at_the_fins_deadline(ctx: &mut Context, id: ConnId, now: Instant) -> u64 {
    let before = ctx.stats();
    let later = now + ctx.config().limits.ws.close_timeout;
    ctx.service(later);
    let out = common::server_frames(&common::drain(ctx, id, later));
    assert!(
        out.is_empty(),
        "no close frame after the peer's FIN: {out:?}"
    );
    assert!(ctx.should_close(id), "ended at the FIN's deadline");
    ctx.stats().callbacks - before.callbacks
}

#[test]
fn every_piece_of_an_entry_has_a_callbacks_fuel() {
    // A loop round costs the guest about eleven units of fuel: 300,000
    // rounds fit the default 5,000,000 of one callback, twice that do not.
    let now = Instant::now();
    let mut ctx = wat_device(300_000);
    let (id, _) = open(&mut ctx, now);
    let words = ["one", "two", "three"];
    // One message per read: one piece per entry.
    for w in words {
        let (out, ..) = one_read(&mut ctx, id, &frame(true, TEXT, w.as_bytes()), now);
        assert_eq!(
            out,
            [text(w), text("end")],
            "one piece's burn fits a callback"
        );
    }
    let (out, entries, callbacks) = one_read(&mut ctx, id, &texts(&words), now);
    assert_eq!(out, [text("one"), text("two"), text("three"), text("end")]);
    assert_eq!((entries, callbacks), (1, 3));
    assert_eq!(ctx.stats().faults, 0);
}

#[test]
fn a_broken_frame_behind_the_pieces_is_acted_on_once_the_entry_returns() {
    // As with a callback per piece, the guest finishes with the last good
    // piece (its `end` goes out) before the close the broken frame calls for.
    let now = Instant::now();
    let mut ctx = wat_device(0);
    let (id, _) = open(&mut ctx, now);
    let (out, entries, callbacks) = one_read(&mut ctx, id, &two_then_broken(&[]), now);
    assert_eq!(out[..3], [text("one"), text("two"), text("end")], "{out:?}");
    assert_eq!(out.len(), 4, "{out:?}");
    assert_protocol_error(&out[3]);
    assert_eq!((entries, callbacks), (1, 2));
}

#[test]
fn a_client_connection_asked_for_ends_the_entry() {
    // The connection is opened, and new `wsi`s lent, only after the entry:
    // the piece behind starts the next one.
    let now = Instant::now();
    let mut ctx = wat_device(0);
    let (id, _) = open(&mut ctx, now);
    let before = ctx.connections();
    let read = texts(&["one", "Connect", "three"]);
    let (out, entries, callbacks) = one_read(&mut ctx, id, &read, now);
    assert_eq!(
        out,
        [
            text("one"),
            text("Connect"),
            text("end"),
            text("three"),
            text("end")
        ]
    );
    assert_eq!((entries, callbacks), (2, 3));
    assert_eq!(ctx.connections(), before + 1, "the client connection");
}

const TOKEN: &str = "t";

/// The WAT guest as the factory module of a device in development mode
/// whose uploads are on trial for `window` callbacks and roll back at the
/// first fault.
fn trial_device(window: u32) -> Context {
    let module = wat::parse_str(GUEST.replace("BURN", "0")).expect("test WAT parses");
    let mut config = common::config_with(
        common::websocket_listener("pieces"),
        "pieces",
        wasmgate::config::Handler::Wasm(module),
    );
    let mut admin = wasmgate::admin::AdminConfig::new(TOKEN);
    admin.allow_unsigned = true;
    admin.trial_callbacks = window;
    admin.trial_max_faults = 0;
    config.admin = Some(admin);
    Context::new(config, Instant::now()).expect("device starts")
}

/// `method path` on the admin API with `body`; the whole answer.
fn admin(ctx: &mut Context, method: &str, path: &str, body: &[u8], now: Instant) -> String {
    let peer = "127.0.0.1:40009".parse().expect("an address");
    let id = ctx.accept(0, peer, now).expect("a free slot");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    assert_eq!(ctx.receive(id, &request, now), request.len());
    ctx.service(now);
    String::from_utf8_lossy(&common::drain(ctx, id, now)).into_owned()
}

/// Uploads the WAT guest, burning a round of its loop per piece, as a new
/// module of protocol `pieces` (on trial on a [`trial_device`]).
fn upload_burning_guest(ctx: &mut Context, now: Instant) {
    let module = wat::parse_str(GUEST.replace("BURN", "1")).expect("test WAT parses");
    let put = admin(ctx, "PUT", "/_admin/modules/pieces", &module, now);
    assert!(put.starts_with("HTTP/1.1 200 "), "{put}");
}

/// Uploads the WAT guest as a new module (on trial), opens a WebSocket to it
/// and sends three messages and one that traps in one read. Returns the
/// trial's callbacks before that read (the upgrade's), and the protocol's
/// entry in the admin API's `/_admin/modules` after it.
fn trap_behind_three(window: u32) -> (u64, serde_json::Value) {
    let now = Instant::now();
    let mut ctx = trial_device(window);
    upload_burning_guest(&mut ctx, now);
    let before = ctx.stats().callbacks;
    let (id, _) = open(&mut ctx, now);
    let opened = ctx.stats().callbacks - before;
    let (out, entries, callbacks) = one_read(&mut ctx, id, &texts(&["a", "b", "c", "Trap"]), now);
    assert_eq!(out[..4], [text("a"), text("b"), text("c"), text("Trap")]);
    assert_eq!(
        (entries, callbacks),
        (1, 4),
        "one entry, the fault in its last piece"
    );
    assert_eq!(ctx.stats().faults, 1);
    let answer = admin(&mut ctx, "GET", "/_admin/modules", b"", now);
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head");
    let modules: serde_json::Value = serde_json::from_str(body).expect("JSON");
    (opened, modules["modules"][0].clone())
}

#[test]
fn a_module_replaced_after_the_peers_fin_does_not_put_off_its_end() {
    let now = Instant::now();
    let mut ctx = trial_device(1000);
    let id = paused_before_the_third(&mut ctx, now);
    ctx.peer_closed(id, now);
    // A new module now: its drain deadline (60 s) is later than the FIN's.
    upload_burning_guest(&mut ctx, now);
    assert!(!ctx.should_close(id));
    ends_at_the_fins_deadline(&mut ctx, id, now);
}

#[test]
fn the_pieces_before_a_fault_count_first_for_a_modules_trial() {
    // Probe: how many callbacks opening the WebSocket takes from the trial.
    let (opened, _) = trap_behind_three(1_000);
    // FILTER_PROTOCOL_CONNECTION and ESTABLISHED (the WAT guest wants every
    // reason); PROTOCOL_INIT, at the upload, counts for no trial.
    assert_eq!(opened, 2);
    let opened = u32::try_from(opened).expect("a few");
    // The three good pieces complete a trial of that many more: it passes
    // before the fourth piece's fault is counted, which rolls nothing back.
    let (_, pieces) = trap_behind_three(opened + 3);
    assert_eq!(pieces["running"]["source"], "uploaded", "{pieces}");
    assert_eq!(pieces["state"], "active", "{pieces}");
    // One callback more to pass: the fault falls inside the trial.
    let (_, pieces) = trap_behind_three(opened + 4);
    assert_eq!(pieces["running"]["source"], "factory", "{pieces}");
    let expected = format!(
        "1 faults in its first {} callbacks (at most 0 allowed)",
        opened + 4
    );
    assert_eq!(pieces["last_rollback"], expected.as_str(), "{pieces}");
}
