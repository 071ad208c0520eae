//! A test guest that puts the runtime's WebSocket *client* through the Autobahn
//! TestSuite: it drives Autobahn's `fuzzingserver` the way every client under
//! test does (`shared/peers/autobahn_reference_client.py`), on the idiomatic
//! layer ([`WsHandler`] for the `CLIENT_*` events, [`Ws::connect`] for the
//! next connection). Protocol `autobahn-client`:
//!
//! 1. the device config opens `/getCaseCount`; its one text message is the
//!    number of cases, N;
//! 2. when that connection closes, the guest connects
//!    `/runCase?case=1&agent=wasmgate`, and echoes every message of the case
//!    back exactly: each received piece goes out as a piece with the matching
//!    write mode (`TEXT`/`BINARY` first, `CONTINUATION` after, `NO_FIN` on all
//!    but the last), through a queue of three pieces in the session (the
//!    SDK's `EchoQueue`) with
//!    `lws_rx_flow_control` when it is full, as `guests/ws-echo` does, so a
//!    16 MiB message streams through 1 KiB pieces;
//! 3. when a case's connection ends (`CLIENT_CLOSED`, or
//!    `CLIENT_CONNECTION_ERROR`), it connects the next case, from inside that
//!    callback;
//! 4. after case N it connects `/updateReports?agent=wasmgate`, and when that
//!    closes logs `autobahn-client: all N cases done`.
//!
//! The run's state (phase, N, current case) lives in [`GuestCell`] statics;
//! the paths are built in a 64-byte stack buffer.
//!
//! Run it: start `wstest -m fuzzingserver` with `"url": "ws://127.0.0.1:9001"`
//! (through `wstest_local.py`), then the simulator with `[[protocol]] name =
//! "autobahn-client" module = "builtin:autobahn-client"` and
//!
//! ```toml
//! [[client]]
//! name = "autobahn"
//! protocol = "autobahn-client"
//! address = "127.0.0.1"
//! port = 9001
//! path = "/getCaseCount"
//! ```
//!
//! `tests/ws_autobahn_client.rs` does this and checks the report.
//!
//! With `tls = true` on that `[[client]]` (a `wss://` fuzzingserver), the
//! guest sees `lws_is_ssl` on the first connection and opens the others with
//! `LCCSCF_USE_SSL` too.
//!
//! Corners cut: the server's address is fixed ([`SERVER_ADDRESS`],
//! [`SERVER_PORT`]): the device config's `[[client]]` opens only the first
//! connection, and a guest cannot read that connection's target, so the later
//! connections (which the guest opens) go to these constants, and the config
//! must name the same port. A connection that cannot even be asked for
//! (`lws_client_connect_via_info` failing at once) ends the run with
//! `autobahn-client: gave up: ...`, as does a case count that never came; if
//! the guest traps, its instance is replaced and the run's state is lost.

#![no_std]
// The export (and so the handler) exists only on wasm32; host builds run the tests.
#![cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "exported only on wasm32")
)]

use wasmgate_guest::lws::{ClientConnectInfo, LCCSCF_USE_SSL};
use wasmgate_guest::{EchoQueue, FmtBuf, GuestCell, Ws, lwsl_err, lwsl_user};
#[cfg(target_arch = "wasm32")]
use wasmgate_guest::{Flow, Fragment, WsHandler};

/// Where the fuzzingserver listens (Autobahn's usual port for it).
pub const SERVER_ADDRESS: &str = "127.0.0.1";
/// Its port; the device config's `[[client]]` must use the same.
pub const SERVER_PORT: u16 = 9001;
/// The agent name the results are filed under.
pub const AGENT: &str = "wasmgate";

/// Largest piece the runtime hands over, and so the size of a queue slot.
const RX_BUFFER_SIZE: usize = 1024;
/// Pieces a connection may have waiting for the tx buffer.
const QUEUE_DEPTH: usize = 3;
/// The most cases believed: Autobahn has about 520.
const MAX_CASES: u32 = 100_000;

/// Per-connection state: the echo's pieces not yet written, and its flow control.
type Echo = EchoQueue<QUEUE_DEPTH, RX_BUFFER_SIZE>;

// The per-session data must fit the device's `max_session_data_size` (4096 bytes
// by default): three 1 KiB pieces and their lengths and flags do.
const _: () = assert!(core::mem::size_of::<Echo>() <= 4096);

// ---- the run: which connection comes next ----

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The `/getCaseCount` connection (opened by the device config) runs.
    CaseCount,
    /// A `/runCase` connection runs.
    Cases,
    /// The `/updateReports` connection runs.
    Reports,
    /// All done, or given up: nothing more to connect.
    Over,
}

/// The run's state, shared by all connections (lws's per-vhost data).
struct Run {
    phase: GuestCell<Phase>,
    /// N, from `/getCaseCount`.
    count: GuestCell<u32>,
    /// The case being run, 1..=N.
    case: GuestCell<u32>,
    /// The first connection was TLS (`wss://`): so are the ones the guest opens.
    tls: GuestCell<bool>,
}

/// What to do now that a connection has ended.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Open a connection to this path.
    Connect(Path),
    /// The reports are written: the run is complete, with this many cases.
    Done(u32),
    /// The run cannot go on, for this reason.
    GiveUp(&'static str),
    /// The run is over already; nothing to do.
    Nothing,
}

impl Run {
    const fn new() -> Self {
        Self {
            phase: GuestCell::new(Phase::CaseCount),
            count: GuestCell::new(0),
            case: GuestCell::new(0),
            tls: GuestCell::new(false),
        }
    }

    /// A piece of `/getCaseCount`'s message: its decimal digits make N (the
    /// rest, such as white space, is skipped).
    fn take_count_digits(&self, piece: &[u8], first: bool) {
        if first {
            self.count.set(0);
        }
        for digit in piece.iter().filter(|b| b.is_ascii_digit()) {
            let n = self.count.get().saturating_mul(10) + u32::from(digit - b'0');
            self.count.set(n.min(MAX_CASES));
        }
    }

    /// The connection of the current phase ended, `failed` when it never
    /// opened: moves to the next connection.
    fn advance(&self, failed: bool) -> Next {
        match self.phase.get() {
            Phase::CaseCount => {
                if failed {
                    return self.give_up("cannot connect to the fuzzingserver");
                }
                if self.count.get() == 0 {
                    return self.give_up("no case count");
                }
                self.phase.set(Phase::Cases);
                self.case.set(1);
                Next::Connect(run_case(1))
            }
            Phase::Cases => {
                // A case that failed to connect is the server's to judge; go on.
                let case = self.case.get() + 1;
                self.case.set(case);
                if case <= self.count.get() {
                    Next::Connect(run_case(case))
                } else {
                    self.phase.set(Phase::Reports);
                    Next::Connect(update_reports())
                }
            }
            Phase::Reports if failed => self.give_up("cannot connect to update the reports"),
            Phase::Reports => {
                self.phase.set(Phase::Over);
                Next::Done(self.count.get())
            }
            Phase::Over => Next::Nothing,
        }
    }

    fn give_up(&self, why: &'static str) -> Next {
        self.phase.set(Phase::Over);
        Next::GiveUp(why)
    }
}

/// A request path, built on the stack without `core::fmt`.
type Path = FmtBuf<64>;

/// `/runCase?case=N&agent=wasmgate`; every path fits, so nothing is cut.
fn run_case(case: u32) -> Path {
    let mut p = Path::new();
    p.push_str("/runCase?case=");
    p.push_u32(case);
    p.push_str("&agent=");
    p.push_str(AGENT);
    p
}

/// `/updateReports?agent=wasmgate`.
fn update_reports() -> Path {
    let mut p = Path::new();
    p.push_str("/updateReports?agent=");
    p.push_str(AGENT);
    p
}

/// A connection ended (`failed`: it never opened): opens the next one, or
/// says the run is over.
fn connection_ended(run: &Run, failed: bool) {
    match run.advance(failed) {
        Next::Connect(path) => {
            if run.phase.get() == Phase::Cases {
                lwsl_user!(
                    "autobahn-client: case {} of {}",
                    run.case.get(),
                    run.count.get()
                );
            }
            let mut info = ClientConnectInfo::new(SERVER_ADDRESS, SERVER_PORT, path.as_str());
            if run.tls.get() {
                info.ssl_connection = LCCSCF_USE_SSL;
            }
            if let Err(e) = Ws::connect(&info) {
                run.phase.set(Phase::Over);
                lwsl_err!(
                    "autobahn-client: gave up: cannot connect {}: {}",
                    path.as_str(),
                    e
                );
            }
        }
        Next::Done(n) => lwsl_user!("autobahn-client: all {} cases done", n),
        Next::GiveUp(why) => lwsl_err!("autobahn-client: gave up: {}", why),
        Next::Nothing => {}
    }
}

// ---- the protocol ----

// A `GuestCell` static is `Sync` only on wasm32; host tests use a local `Run`.
#[cfg(target_arch = "wasm32")]
static RUN: Run = Run::new();

struct AutobahnClient;

#[cfg(target_arch = "wasm32")]
impl WsHandler for AutobahnClient {
    type Session = Echo;

    fn on_established(ws: &mut Ws, _echo: &mut Echo) -> Flow {
        if RUN.phase.get() == Phase::CaseCount {
            // The device config opened this one: the run follows its scheme.
            RUN.tls
                .set(wasmgate_guest::lws::lws_is_ssl(ws.wsi()).unwrap_or(false));
        }
        Flow::Continue
    }

    fn on_receive(ws: &mut Ws, echo: &mut Echo, piece: &[u8], fragment: Fragment) -> Flow {
        match RUN.phase.get() {
            Phase::CaseCount => {
                RUN.take_count_digits(piece, fragment.first);
                if fragment.last {
                    lwsl_user!("autobahn-client: {} cases", RUN.count.get());
                }
                Flow::Continue
            }
            Phase::Cases => echo.on_receive(ws, piece, fragment),
            Phase::Reports | Phase::Over => Flow::Continue,
        }
    }

    fn on_writeable(ws: &mut Ws, echo: &mut Echo) -> Flow {
        echo.on_writeable(ws)
    }

    fn on_closed(_echo: &mut Echo) {
        connection_ended(&RUN, false);
    }

    fn on_client_connection_error(_echo: &mut Echo, message: &str) {
        lwsl_user!("autobahn-client: connection error: {}", message);
        connection_ended(&RUN, true);
    }
}

wasmgate_guest::export_ws!(
    AutobahnClient,
    name = "autobahn-client",
    rx_buffer_size = RX_BUFFER_SIZE,
    max_sessions = 2,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(path: &str) -> Next {
        let mut p = Path::new();
        p.push_str(path);
        Next::Connect(p)
    }

    #[test]
    fn the_case_count_is_the_digits_of_the_message() {
        let run = Run::new();
        run.take_count_digits(b"5", true);
        run.take_count_digits(b"17\n", false);
        assert_eq!(run.count.get(), 517);
        run.take_count_digits(b" 3", true);
        assert_eq!(run.count.get(), 3, "a new message starts afresh");
        run.take_count_digits(b"99999999999999", true);
        assert_eq!(run.count.get(), MAX_CASES, "no overflow");
    }

    #[test]
    fn the_run_connects_each_case_then_the_reports() {
        let run = Run::new();
        run.take_count_digits(b"3", true);
        assert_eq!(
            run.advance(false),
            connect("/runCase?case=1&agent=wasmgate")
        );
        assert_eq!(
            run.advance(false),
            connect("/runCase?case=2&agent=wasmgate")
        );
        assert_eq!(
            run.advance(true),
            connect("/runCase?case=3&agent=wasmgate"),
            "a case that failed to connect is skipped"
        );
        assert_eq!(run.advance(false), connect("/updateReports?agent=wasmgate"));
        assert_eq!(run.phase.get(), Phase::Reports);
        assert_eq!(run.advance(false), Next::Done(3));
        assert_eq!(run.advance(false), Next::Nothing, "over");
    }

    #[test]
    fn the_run_gives_up_without_a_server_or_a_count() {
        let run = Run::new();
        assert_eq!(
            run.advance(true),
            Next::GiveUp("cannot connect to the fuzzingserver")
        );
        assert_eq!(run.advance(false), Next::Nothing);
        let run = Run::new();
        assert_eq!(run.advance(false), Next::GiveUp("no case count"));
        let run = Run::new();
        run.take_count_digits(b"1", true);
        let _ = run.advance(false);
        let _ = run.advance(false);
        assert!(matches!(run.advance(true), Next::GiveUp(_)), "no reports");
    }

    #[test]
    fn paths_fit_the_buffer_for_any_case_number() {
        assert_eq!(
            run_case(u32::MAX).as_str(),
            "/runCase?case=4294967295&agent=wasmgate"
        );
        assert_eq!(run_case(0).as_str(), "/runCase?case=0&agent=wasmgate");
        assert_eq!(update_reports().as_str(), "/updateReports?agent=wasmgate");
    }
}
