//! A sensor that pushes its readings to every browser watching it: one
//! protocol, `readings`, serving both an HTTP page and the WebSocket that page
//! opens, written on the lws-shaped layer as an lws protocol callback would be.
//! It shows a guest that answers HTTP and WebSocket reasons from one callback,
//! per-connection timers (`lws_set_timer_usecs`, `LWS_CALLBACK_TIMER`) driving
//! work with no request to answer, and a broadcast: a new reading asks every
//! connection for `SERVER_WRITEABLE` (`lws_callback_on_writable_all_protocol`)
//! and each sends it once, tracked by the `sent_seq` in its per-session data.
//! About once a second a simulated reading `{"seq": N, "celsius": 21.3}` is
//! made (the temperature is `21.0 + (N % 10) / 10`, formatted in tenths without
//! floats or `core::fmt`); `GET` on any path answers a page (under 2 KB, one
//! `lws_write`) that shows them live, and a client that connects gets the latest
//! reading at once.
//!
//! Run it: in the device config, `[[protocol]] name = "readings" module =
//! "builtin:readings"`, and in the `[[listener]]`, `mounts = { "/readings" =
//! "readings" }` and `websocket = ["readings"]` (plus `default_websocket =
//! "readings"` for clients that name no protocol); open
//! `http://127.0.0.1:8080/readings` in a browser, or
//! `python3 -m websockets ws://127.0.0.1:8080/` with the default set.
//! `tests/ws_readings.rs` drives it.
//!
//! Corners cut: the readings are made up; there is one reading, not a history,
//! so a client that falls more than a period behind skips to the latest (and
//! with no client connected no timer runs, so none are made); every WebSocket
//! connection keeps a timer though only one makes each reading (lws would use
//! one context-wide `lws_sul` instead); the four session slots are shared by
//! page requests and WebSocket connections, so four open sockets make the page
//! answer `503`; what clients send is ignored, and no `Origin` is checked; the
//! sequence restarts at 1 when a new instance takes over (after a trap or an
//! upload).

#![no_std]
// The export (and so the callback) exists only on wasm32; host builds run the tests.
#![cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "exported only on wasm32")
)]

use wasmgate_guest::lws::{
    Error, Method, Reason, WriteMode, Wsi, lws_add_http_common_headers, lws_callback_on_writable,
    lws_callback_on_writable_all_protocol, lws_finalize_write_http_header,
    lws_http_get_uri_and_method, lws_http_transaction_completed, lws_now_usecs,
    lws_return_http_status, lws_set_timer_usecs, lws_write,
};
use wasmgate_guest::{FmtBuf, GuestCell};

/// A reading every this many microseconds (while anyone is connected).
const PERIOD_US: u64 = 1_000_000;
/// The shortest re-arm: a timer that fires a little early waits this long, not
/// a whole period, and cannot spin.
const MIN_WAIT_US: u64 = 10_000;

/// The page `GET` answers: the latest reading big, one line per reading below.
const PAGE: &str = r##"<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>wasmgate readings</title>
<style>body{font-family:sans-serif;margin:2em}#now{font-size:4em;margin:.3em 0}#log{font-family:monospace;list-style:none;padding:0;color:#555}</style>
</head><body>
<h1>wasmgate readings</h1>
<p id="state">connecting...</p>
<div id="now">--</div>
<ul id="log"></ul>
<script>
var state = document.getElementById("state");
var now = document.getElementById("now");
var log = document.getElementById("log");
var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/", "readings");
ws.onopen = function () { state.textContent = "live: WebSocket protocol readings"; };
ws.onclose = function (e) { state.textContent = "closed (" + e.code + "), reload to reconnect"; };
ws.onmessage = function (e) {
  var r = JSON.parse(e.data), t = r.celsius.toFixed(1) + " \u00b0C";
  now.textContent = t;
  var li = document.createElement("li");
  li.textContent = "#" + r.seq + "  " + t;
  log.insertBefore(li, log.firstChild);
  if (log.children.length > 30) log.removeChild(log.lastChild);
};
</script>
</body></html>
"##;

// One `respond` must fit the device's 8 KiB tx buffer; keep well under it.
const _: () = assert!(PAGE.len() < 2048);

/// The protocol's shared state (lws's per-vhost protocol data): the latest
/// reading, which every connection sends once.
struct Latest {
    /// Its sequence number; 0 before the first.
    seq: GuestCell<u32>,
    /// `lws_now_usecs` when it was made.
    at_us: GuestCell<i64>,
}

impl Latest {
    const fn new() -> Self {
        Self {
            seq: GuestCell::new(0),
            at_us: GuestCell::new(0),
        }
    }
}

// A `GuestCell` static is `Sync` only on wasm32; host tests use a local `Latest`.
#[cfg(target_arch = "wasm32")]
static LATEST: Latest = Latest::new();

/// Per-session data. For a WebSocket, the last reading sent on it; unused by
/// page requests.
#[derive(Clone, Copy, Default)]
struct Pss {
    sent_seq: u32,
}

/// Microseconds until the next reading is due at `now`: 0 when it is due (no
/// reading yet, or a whole period since the last one).
fn until_due(now: i64, seq: u32, last_us: i64) -> u64 {
    if seq == 0 {
        return 0;
    }
    // A clock that went backwards counts as no time passed.
    let elapsed = u64::try_from(now.saturating_sub(last_us)).unwrap_or(0);
    PERIOD_US.saturating_sub(elapsed)
}

/// The simulated temperature of reading `seq`, in tenths of a degree.
const fn tenths_celsius(seq: u32) -> u32 {
    210 + seq % 10
}

/// Reading `seq` as JSON, formatted on the stack: `{"seq": 7, "celsius": 21.7}`.
/// The longest (a 10-digit `seq`) fits, so nothing is ever cut.
fn reading(seq: u32) -> FmtBuf<48> {
    let tenths = tenths_celsius(seq);
    let mut msg = FmtBuf::new();
    msg.push_str("{\"seq\": ");
    msg.push_u32(seq);
    msg.push_str(", \"celsius\": ");
    msg.push_u32(tenths / 10);
    msg.push_str(".");
    msg.push_u32(tenths % 10);
    msg.push_str("}");
    msg
}

/// `LWS_CALLBACK_HTTP`: the page for `GET` (and `HEAD`) on any path, `405` for
/// anything else.
fn serve_page(wsi: Wsi) -> i32 {
    let mut uri = [0u8; 256];
    let method = match lws_http_get_uri_and_method(wsi, &mut uri) {
        Ok((method, _)) => method,
        Err(Error::NoSpace) => return status(wsi, 414, "URI too long"),
        Err(_) => return -1,
    };
    if !matches!(method, Method::Get | Method::Head) {
        return status(wsi, 405, "GET only");
    }
    if lws_add_http_common_headers(
        wsi,
        200,
        "text/html; charset=utf-8",
        Some(PAGE.len() as u64),
    )
    .is_err()
        || lws_finalize_write_http_header(wsi).is_err()
        || lws_write(wsi, PAGE.as_bytes(), WriteMode::HTTP_FINAL).is_err()
    {
        return -1;
    }
    match lws_http_transaction_completed(wsi) {
        Ok(false) => 0,
        _ => -1,
    }
}

fn status(wsi: Wsi, code: u32, why: &str) -> i32 {
    match lws_return_http_status(wsi, code, why) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// `LWS_CALLBACK_TIMER` on a WebSocket: make a reading if one is due and tell
/// every connection, then re-arm for the next one.
fn on_timer(latest: &Latest, wsi: Wsi) -> i32 {
    let now = lws_now_usecs();
    let wait = match until_due(now, latest.seq.get(), latest.at_us.get()) {
        0 => {
            latest.seq.update(|n| n.wrapping_add(1));
            latest.at_us.set(now);
            // Best effort: a connection not asked now is asked at the next reading.
            let _ = lws_callback_on_writable_all_protocol();
            PERIOD_US
        }
        // Another connection's timer made the last reading: wait for the rest
        // of its period, so all timers end up due together.
        left => left.max(MIN_WAIT_US),
    };
    match lws_set_timer_usecs(wsi, Some(wait)) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// `LWS_CALLBACK_SERVER_WRITEABLE`: send the latest reading if this connection
/// has not had it.
fn send_latest(latest: &Latest, wsi: Wsi, pss: &mut Pss) -> i32 {
    let seq = latest.seq.get();
    if pss.sent_seq == seq {
        return 0;
    }
    match lws_write(wsi, reading(seq).as_bytes(), WriteMode::TEXT) {
        Ok(_) => {
            pss.sent_seq = seq;
            0
        }
        // The tx buffer is full (a slow reader): try again when it drains.
        Err(Error::NoSpace) => match lws_callback_on_writable(wsi) {
            Ok(()) => 0,
            Err(_) => -1,
        },
        Err(_) => -1,
    }
}

/// The protocol callback, lws style, with the shared state passed in.
fn callback_readings(
    latest: &Latest,
    wsi: Wsi,
    reason: Reason,
    user: Option<&mut Pss>,
    _in: &[u8],
) -> i32 {
    match reason {
        Reason::Http => serve_page(wsi),
        // The first reading comes from the timer; the latest one (if any) now.
        Reason::Established => {
            if lws_set_timer_usecs(wsi, Some(PERIOD_US)).is_err()
                || lws_callback_on_writable(wsi).is_err()
            {
                return -1;
            }
            0
        }
        Reason::Timer => on_timer(latest, wsi),
        Reason::ServerWriteable => match user {
            Some(pss) => send_latest(latest, wsi, pss),
            None => -1,
        },
        // FILTER_PROTOCOL_CONNECTION accepts every upgrade; RECEIVE is ignored.
        _ => 0,
    }
}

wasmgate_guest::export_lws_callback!(
    |wsi, reason, user, input| callback_readings(&LATEST, wsi, reason, user, input),
    name = "readings",
    rx_buffer_size = 128,
    session = Pss,
    max_sessions = 4,
);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn readings_are_json_with_the_temperature_in_tenths() {
        let text = |seq| reading(seq).as_bytes().to_vec();
        assert_eq!(text(1), br#"{"seq": 1, "celsius": 21.1}"#);
        assert_eq!(text(10), br#"{"seq": 10, "celsius": 21.0}"#);
        assert_eq!(text(0), br#"{"seq": 0, "celsius": 21.0}"#);
        assert_eq!(text(1234), br#"{"seq": 1234, "celsius": 21.4}"#);
        assert_eq!(
            text(u32::MAX),
            br#"{"seq": 4294967295, "celsius": 21.5}"#,
            "the longest one fits"
        );
    }

    #[test]
    fn a_reading_is_due_first_thing_and_then_once_a_period() {
        assert_eq!(until_due(5, 0, 0), 0, "no reading yet");
        assert_eq!(until_due(3_000_000, 4, 2_000_000), 0);
        assert_eq!(until_due(3_500_000, 4, 2_000_000), 0, "late is due");
        assert_eq!(until_due(2_300_000, 4, 2_000_000), 700_000);
        assert_eq!(
            until_due(1_000_000, 4, 2_000_000),
            PERIOD_US,
            "clock went back"
        );
    }

    #[test]
    fn a_timer_makes_the_first_reading_and_writeable_sends_it() {
        // Off wasm32 the clock reads 0 and every host call answers BAD_STATE.
        let latest = Latest::new();
        let wsi = Wsi::from_raw(3);
        let mut pss = Pss::default();
        assert_eq!(
            callback_readings(&latest, wsi, Reason::Timer, Some(&mut pss), b""),
            -1,
            "re-arming failed"
        );
        assert_eq!(latest.seq.get(), 1, "but the reading was made");
        assert_eq!(
            callback_readings(&latest, wsi, Reason::ServerWriteable, Some(&mut pss), b""),
            -1,
            "the write failed"
        );
        assert_eq!(pss.sent_seq, 0, "so it was not recorded as sent");
        pss.sent_seq = 1;
        assert_eq!(
            callback_readings(&latest, wsi, Reason::ServerWriteable, Some(&mut pss), b""),
            0,
            "nothing new to send"
        );
        assert_eq!(
            callback_readings(&latest, wsi, Reason::Receive, Some(&mut pss), b"hi"),
            0,
            "what clients send is ignored"
        );
    }

    #[test]
    fn the_page_opens_the_readings_websocket() {
        assert!(PAGE.contains("<title>wasmgate readings</title>"));
        assert!(PAGE.contains(
            r#"new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/", "readings")"#
        ));
        assert!(PAGE.len() < 2048, "{}", PAGE.len());
    }
}
