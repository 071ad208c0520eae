//! Where a `RECEIVE` piece sits in its message, as a guest learns it: from
//! `lws.wasmgate_fragment(wsi) -> i64` (the four lws fragment queries in one
//! host call), or from the fragment cell the host writes before the callback
//! when the guest exports `wasmgate_fragment_cell`. A WAT guest reports, for
//! every `RECEIVE` piece, what the combined call, the four lws calls and the
//! cell say; all must agree with where the piece sits in its message.

mod common;

use std::time::Instant;

use wasmgate::Context;
use wasmgate::config::GuestLimits;
use wasmgate::guest::Guest;

/// On `ESTABLISHED` reports `wasmgate_fragment` for a wrong `wsi`; on
/// `RECEIVE` reports it for the piece. A report is a 24-byte binary message:
/// the `i64` answer, then what `lws_is_first_fragment`,
/// `lws_is_final_fragment` and `lws_frame_is_binary` answer (a byte each, and
/// a pad byte), then `lws_remaining_packet_payload` (`i32`), then the `i64`
/// at 3072, the fragment cell when `CELL` is exported.
const GUEST: &str = r#"(module
    (import "lws" "wasmgate_fragment" (func $fragment (param i32) (result i64)))
    (import "lws" "lws_is_first_fragment" (func $first (param i32) (result i32)))
    (import "lws" "lws_is_final_fragment" (func $final (param i32) (result i32)))
    (import "lws" "lws_frame_is_binary" (func $binary (param i32) (result i32)))
    (import "lws" "lws_remaining_packet_payload" (func $remaining (param i32) (result i32)))
    (import "lws" "lws_write" (func $write (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    ;; rx_buffer 256 (512 bytes), sessions at 1024 (8 bytes x 4), name "frag"
    (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
    (data (i32.const 768) "frag")
    (func (export "wasmgate_protocol") (result i32) (i32.const 0))
    CELL
    (func $report (param $wsi i32) (param $answer i64)
      (i64.store (i32.const 2048) (local.get $answer))
      (i32.store8 (i32.const 2056) (call $first (local.get $wsi)))
      (i32.store8 (i32.const 2057) (call $final (local.get $wsi)))
      (i32.store8 (i32.const 2058) (call $binary (local.get $wsi)))
      (i32.store8 (i32.const 2059) (i32.const 0))
      (i32.store (i32.const 2060) (call $remaining (local.get $wsi)))
      (i64.store (i32.const 2064) (i64.load (i32.const 3072)))
      ;; LWS_WRITE_BINARY
      (drop (call $write (local.get $wsi) (i32.const 2048) (i32.const 24) (i32.const 1))))
    (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
      (if (i32.eq (local.get $reason) (i32.const 0))
        (then (call $report (local.get $wsi)
          (call $fragment (i32.add (local.get $wsi) (i32.const 1000))))))
      (if (i32.eq (local.get $reason) (i32.const 6))
        (then (call $report (local.get $wsi) (call $fragment (local.get $wsi)))))
      (i32.const 0)))"#;

/// The export that makes the host write the cell at 3072.
const CELL_EXPORT: &str =
    r#"(func (export "wasmgate_fragment_cell") (result i32) (i32.const CELL_AT))"#;

/// The guest, with the fragment cell exported at `cell_at` or not at all.
fn guest(cell_at: Option<u32>) -> String {
    let export = cell_at.map_or(String::new(), |at| {
        CELL_EXPORT.replace("CELL_AT", &at.to_string())
    });
    GUEST.replace("CELL", &export)
}

use common::client_frame as frame;

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;

/// What the guest reported for one piece.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    /// `wasmgate_fragment`'s answer.
    packed: i64,
    /// `lws_is_first_fragment`, `lws_is_final_fragment`, `lws_frame_is_binary`.
    lws_flags: [u8; 3],
    /// `lws_remaining_packet_payload`.
    lws_remaining: i32,
    /// The fragment cell's word.
    cell: i64,
}

impl Report {
    /// What the host calls must say for a piece, with no fragment cell.
    fn expected(first: bool, last: bool, binary: bool, remaining: i32) -> Self {
        let flags = i64::from(first) | i64::from(last) << 1 | i64::from(binary) << 2;
        Report {
            packed: i64::from(remaining) << 8 | flags,
            lws_flags: [u8::from(first), u8::from(last), u8::from(binary)],
            lws_remaining: remaining,
            cell: 0,
        }
    }

    /// ...for a piece with bytes buffered behind it (`FRAGMENT_MORE`: the
    /// rest of its frame here).
    fn with_more(self) -> Self {
        Report {
            packed: self.packed | 0x08,
            ..self
        }
    }

    /// ...and with one: the same word, marked as written by the host.
    fn with_cell(self) -> Self {
        Report {
            cell: self.packed | 0x80,
            ..self
        }
    }
}

fn device(cell_at: Option<u32>) -> Context {
    let module = wat::parse_str(guest(cell_at)).expect("test WAT parses");
    common::websocket_device("frag", module)
}

/// The reports in the server's frames (each a 24-byte binary message).
fn reports(tx: &[u8]) -> Vec<Report> {
    tx.chunks(26)
        .map(|f| {
            assert_eq!(&f[..2], &[0x82, 24], "a 24-byte binary report: {tx:?}");
            let p = &f[2..];
            Report {
                packed: i64::from_le_bytes(p[..8].try_into().unwrap()),
                lws_flags: [p[8], p[9], p[10]],
                lws_remaining: i32::from_le_bytes(p[12..16].try_into().unwrap()),
                cell: i64::from_le_bytes(p[16..24].try_into().unwrap()),
            }
        })
        .collect()
}

/// Opens a WebSocket to the guest (its fragment cell at `cell_at`, if any),
/// sends `frames`, returns the guest's reports (the first is the one of
/// `ESTABLISHED`).
fn exchange(cell_at: Option<u32>, frames: &[Vec<u8>]) -> Vec<Report> {
    let mut ctx = device(cell_at);
    let now = Instant::now();
    let (id, mut out) = common::open_websocket(&mut ctx, now);
    for f in frames {
        assert_eq!(ctx.receive(id, f, now), f.len());
        ctx.service(now);
        out.extend_from_slice(&common::drain(&mut ctx, id, now));
    }
    reports(&out)
}

#[test]
fn fragment_answers_for_first_middle_and_last_pieces() {
    for (kind, binary) in [(TEXT, false), (BINARY, true)] {
        let got = exchange(
            None,
            &[
                frame(false, kind, b"ab"),
                frame(false, CONTINUATION, b"cd"),
                frame(true, CONTINUATION, b"ef"),
            ],
        );
        let expected = [
            Report::expected(true, false, binary, 0),
            Report::expected(false, false, binary, 0),
            Report::expected(false, true, binary, 0),
        ];
        assert_eq!(got[1..], expected, "kind {kind}");
    }
}

#[test]
fn a_frame_longer_than_the_rx_buffer_reports_what_remains() {
    // 600 bytes in one frame, a 512-byte receive buffer: two pieces.
    let got = exchange(None, &[frame(true, BINARY, &[7; 600])]);
    assert_eq!(
        got[1..],
        [
            Report::expected(true, false, true, 88).with_more(),
            Report::expected(false, true, true, 0),
        ]
    );
}

#[test]
fn a_wrong_wsi_is_a_bad_state() {
    let got = exchange(None, &[]);
    assert_eq!(got.len(), 1, "the report of ESTABLISHED");
    assert_eq!(got[0].packed, -2, "BAD_STATE for a connection not lent");
}

/// The pieces of one message sent as three frames, the last frame longer
/// than the 512-byte receive buffer, and what every piece must report.
fn three_frames_and_their_reports() -> (Vec<Vec<u8>>, Vec<Report>) {
    let frames = vec![
        frame(false, TEXT, b"ab"),
        frame(false, CONTINUATION, b"cd"),
        frame(true, CONTINUATION, &[b'e'; 600]),
    ];
    let reports = vec![
        Report::expected(true, false, false, 0),
        Report::expected(false, false, false, 0),
        Report::expected(false, false, false, 88).with_more(),
        Report::expected(false, true, false, 0),
    ];
    (frames, reports)
}

#[test]
fn the_host_writes_the_fragment_cell_before_every_receive() {
    let (frames, expected) = three_frames_and_their_reports();
    let got = exchange(Some(3072), &frames);
    let expected: Vec<Report> = expected.into_iter().map(Report::with_cell).collect();
    assert_eq!(got[1..], expected);
    assert_eq!(
        got[0].cell, 0,
        "ESTABLISHED is not a RECEIVE: the cell is not written"
    );
}

#[test]
fn without_the_export_nothing_is_written_there() {
    let (frames, expected) = three_frames_and_their_reports();
    assert_eq!(exchange(None, &frames)[1..], expected);
}

#[test]
fn a_fragment_cell_outside_memory_is_refused_at_load() {
    // One page is 65,536 bytes: the last 8 fit, one byte further does not.
    let load = |at: u32| {
        let wasm = wat::parse_str(guest(Some(at))).expect("test WAT parses");
        Guest::load(&Guest::engine(), "frag", &wasm, GuestLimits::DEFAULT)
    };
    assert!(load(65_528).is_ok());
    let err = load(65_529).expect_err("a cell across the end of memory");
    assert_eq!(
        err.to_string(),
        "`wasmgate_fragment_cell()` answered 0xfff9: 8 bytes there are not inside memory (65536 bytes)"
    );
    // The receive buffer is 256..768: the word would overwrite the piece.
    assert!(load(248).is_ok() && load(768).is_ok());
    let err = load(761).expect_err("a cell in the receive buffer");
    assert_eq!(
        err.to_string(),
        "`wasmgate_fragment_cell()` answered 0x2f9: 8 bytes there overlap the receive buffer (0x100..0x300)"
    );
}

#[test]
fn a_fragment_cell_export_of_another_type_is_refused_at_load() {
    let wat = guest(None).replace(
        "(func $report",
        r#"(func (export "wasmgate_fragment_cell") (param i32) (result i32) (i32.const 3072))
    (func $report"#,
    );
    let wasm = wat::parse_str(wat).expect("test WAT parses");
    let err = Guest::load(&Guest::engine(), "frag", &wasm, GuestLimits::DEFAULT)
        .expect_err("a cell export taking a parameter");
    assert_eq!(
        err.to_string(),
        "`wasmgate_fragment_cell` has type (i32) -> (i32), expected () -> (i32)"
    );
}

/// The `ws-echo` guest's answer to one message sent in three frames, the
/// last longer than its 1 KiB pieces.
fn echo_of_three_frames(module: Vec<u8>) -> Vec<(bool, u8, Vec<u8>)> {
    let mut ctx = common::websocket_device("echo_server", module);
    let now = Instant::now();
    let (id, _) = common::open_websocket(&mut ctx, now);
    let mut out = Vec::new();
    for f in [
        frame(false, TEXT, b"ab"),
        frame(false, CONTINUATION, b"cd"),
        frame(true, CONTINUATION, &[b'e'; 1500]),
    ] {
        assert_eq!(ctx.receive(id, &f, now), f.len());
        ctx.service(now);
        out.extend(common::drain(&mut ctx, id, now));
    }
    common::server_frames(&out)
}

#[test]
fn the_sdk_asks_the_host_call_when_no_runtime_writes_its_cell() {
    // The same module with its export renamed (same length, still valid):
    // the runtime does not know it, as one without the cell would not, and
    // never writes the cell; the SDK must then ask `wasmgate_fragment`.
    let renamed = {
        let mut wasm = wasmgate_guests::WS_ECHO.to_vec();
        let name = b"wasmgate_fragment_cell";
        let at = wasm
            .windows(name.len())
            .position(|w| w == name)
            .expect("the export's name");
        wasm[at + name.len() - 1] = b'x';
        wasm
    };
    let expected = vec![
        (false, TEXT, b"ab".to_vec()),
        (false, CONTINUATION, b"cd".to_vec()),
        (false, CONTINUATION, vec![b'e'; 1024]),
        (true, CONTINUATION, vec![b'e'; 476]),
    ];
    assert_eq!(
        echo_of_three_frames(wasmgate_guests::WS_ECHO.to_vec()),
        expected
    );
    assert_eq!(echo_of_three_frames(renamed), expected);
}

#[test]
fn the_sdk_websocket_and_lws_guests_export_the_fragment_cell() {
    let engine = wasmi::Engine::default();
    for (name, wasm) in [
        ("ws-echo", wasmgate_guests::WS_ECHO),
        ("ws-echo-64", wasmgate_guests::WS_ECHO_64),
        ("autobahn-client", wasmgate_guests::AUTOBAHN_CLIENT),
        // `export_lws_callback!` guests too, since they take pieces.
        ("ws-client", wasmgate_guests::WS_CLIENT),
        ("readings", wasmgate_guests::READINGS),
        ("hello", wasmgate_guests::HELLO),
    ] {
        let module = wasmi::Module::new(&engine, wasm).expect("the guest compiles");
        match module.get_export("wasmgate_fragment_cell") {
            Some(wasmi::ExternType::Func(ty)) => {
                assert!(ty.params().is_empty() && ty.results() == [wasmi::ValType::I32]);
            }
            other => panic!("{name}: wasmgate_fragment_cell is {other:?}"),
        }
        // Only a guest that handles WebSocket pieces asks for the next one:
        // `hello` (`reasons = [Reason::Http]`) does not import it.
        let takes = module
            .imports()
            .any(|i| i.module() == "lws" && i.name() == "wasmgate_receive_next");
        assert_eq!(takes, name != "hello", "{name}");
    }
    // `export_http!` guests get no WebSocket pieces: neither.
    for (name, wasm) in [
        ("http-post", wasmgate_guests::HTTP_POST),
        ("faulty", wasmgate_guests::FAULTY),
    ] {
        let module = wasmi::Module::new(&engine, wasm).expect("the guest compiles");
        assert!(
            module.get_export("wasmgate_fragment_cell").is_none(),
            "{name}"
        );
        assert!(
            !module
                .imports()
                .any(|i| i.name() == "wasmgate_receive_next"),
            "{name}"
        );
    }
}
