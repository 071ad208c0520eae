//! The idiomatic WebSocket layer, for servers and clients: a [`WsHandler`]
//! trait with one method per event, a [`Ws`] handle to send, close and pace the
//! connection, [`Ws::connect`] to open a client connection, and the
//! [`Fragment`] a received piece belongs to. One handler serves both roles: a
//! client connection's `CLIENT_*` events reach the same methods as a server
//! connection's. Built only on the lws-shaped layer; allocation-free, and it
//! keeps no state of its own in the session slot.

use crate::abi::{self, Rx};
use crate::http::Flow;
use crate::lws::{self, ClientConnectInfo, Error, Reason, WriteMode, Wsi};

/// The longest close reason a close frame carries: 125 payload bytes minus the
/// 2-byte code (RFC 6455, 5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// The code [`WsHandler::on_peer_close`] reports for a close frame without one
/// (RFC 6455's "no status received", which is never sent on the wire).
pub const NO_STATUS: u16 = 1005;

/// Whether a message is text or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A text message (UTF-8; the runtime checks what it receives).
    Text,
    /// A binary message.
    Binary,
}

impl MessageKind {
    /// The `lws_write` mode that starts a message of this kind.
    pub const fn write_mode(self) -> WriteMode {
        match self {
            Self::Text => WriteMode::TEXT,
            Self::Binary => WriteMode::BINARY,
        }
    }
}

/// Where a received piece sits in its message. A message longer than
/// `rx_buffer_size` (or sent in several frames) arrives in pieces: the first
/// has `first`, the last has `last`, a message in one piece has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fragment {
    /// The piece starts a message (`lws_is_first_fragment`).
    pub first: bool,
    /// The piece ends the message (`lws_is_final_fragment`).
    pub last: bool,
    /// The message is binary (`lws_frame_is_binary`).
    pub binary: bool,
    /// Bytes of the current frame still to come (`lws_remaining_packet_payload`).
    pub remaining: usize,
}

impl Fragment {
    /// The kind of the message this piece belongs to.
    pub const fn kind(self) -> MessageKind {
        if self.binary {
            MessageKind::Binary
        } else {
            MessageKind::Text
        }
    }

    /// The `lws_write` mode that sends this piece on as it came: the message's
    /// kind on its first piece, `CONTINUATION` on the others, `NO_FIN` unless it
    /// is the last (what an echo server needs).
    pub const fn echo_mode(self) -> WriteMode {
        lws::lws_write_ws_flags(self.kind().write_mode(), self.first, self.last)
    }

    /// Asks the host about the piece the current `RECEIVE` (or
    /// `CLIENT_RECEIVE`) callback carries: what `lws_is_first_fragment`,
    /// `lws_is_final_fragment`, `lws_frame_is_binary` and
    /// `lws_remaining_packet_payload` answer, in one host call
    /// (`wasmgate_fragment`) instead of four, each of which costs the guest
    /// more than the answer.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] outside a WebSocket `RECEIVE` callback for `wsi`.
    pub fn current(wsi: Wsi) -> Result<Self, Error> {
        let packed = abi::wasmgate_fragment(wsi.raw());
        if packed >= 0 {
            return Ok(Self::unpack(packed));
        }
        // A negative answer is a status, as the lws calls return.
        let code = i32::try_from(packed).unwrap_or(i32::MIN);
        Err(Error::from_code(code).unwrap_or(Error::BadState))
    }

    /// The piece of the `RECEIVE` (or `CLIENT_RECEIVE`) callback being
    /// dispatched for `wsi`: read from the fragment cell the host wrote before
    /// the callback, or, under a host that does not write it, asked with
    /// [`Fragment::current`].
    #[inline(always)]
    fn of_callback(wsi: Wsi) -> Result<Self, Error> {
        #[cfg(target_arch = "wasm32")]
        {
            let word = abi::FRAGMENT_CELL.get();
            if word & abi::FRAGMENT_PRESENT != 0 {
                return Ok(Self::unpack(word));
            }
        }
        Self::current(wsi)
    }

    /// A `wasmgate_fragment` answer that is not an error.
    #[inline(always)]
    fn unpack(packed: i64) -> Self {
        let remaining = packed >> abi::FRAGMENT_REMAINING_SHIFT;
        Self {
            first: packed & abi::FRAGMENT_FIRST != 0,
            last: packed & abi::FRAGMENT_FINAL != 0,
            binary: packed & abi::FRAGMENT_BINARY != 0,
            remaining: usize::try_from(remaining).unwrap_or(usize::MAX),
        }
    }
}

/// A guest that serves WebSocket connections: one associated function per lws
/// event, all with do-nothing defaults except [`WsHandler::on_receive`]. The
/// handler is a type (usually a unit struct); keep state per connection in
/// [`Self::Session`] and across connections in [`GuestCell`](crate::GuestCell)
/// statics. Export it with [`export_ws!`](crate::export_ws).
///
/// Per server connection, the events come in this order: `on_filter`, then (if
/// it accepted) `on_established`, then `on_receive`, `on_pong` and
/// `on_writeable` as data and room arrive, `on_timer` when a timer set with
/// [`Ws::set_timer`] is up, `on_peer_close` if the peer starts the close, and
/// always `on_closed` last.
///
/// A client connection (opened with [`Ws::connect`], or by the device config's
/// `[[client]]`) gets the same methods for lws's `CLIENT_*` reasons:
/// `on_established` (`CLIENT_ESTABLISHED`), `on_receive` (`CLIENT_RECEIVE`),
/// `on_pong` (`CLIENT_RECEIVE_PONG`), `on_writeable` (`CLIENT_WRITEABLE`),
/// `on_timer`, `on_peer_close`, and `on_closed` (`CLIENT_CLOSED`) last; or,
/// when it could not be made, only [`WsHandler::on_client_connection_error`].
/// Its session is fresh at the first of these.
///
/// Functions that return [`Flow`] close the connection with [`Flow::Close`];
/// [`Ws::close`] says with which code.
pub trait WsHandler {
    /// Per-connection state, lws's per-session data: a fresh `Default` value for
    /// every connection, stored in the slot the host assigns (no allocation),
    /// kept until `on_closed`.
    type Session: Default + Copy + 'static;

    /// `PROTOCOL_INIT`, once per instance. Return `false` to refuse to start.
    fn init() -> bool {
        true
    }

    /// `PROTOCOL_DESTROY`, once, before the instance is dropped.
    fn destroy() {}

    /// `FILTER_PROTOCOL_CONNECTION`: an upgrade asks for this protocol by
    /// `protocol` (the `Sec-WebSocket-Protocol` name the runtime matched).
    /// Return `false` to refuse it (the runtime answers `403`). Accepts all.
    fn on_filter(ws: &mut Ws, session: &mut Self::Session, protocol: &str) -> bool {
        let _ = (ws, session, protocol);
        true
    }

    /// `ESTABLISHED`: the `101` is queued; the connection is open. On a client
    /// connection, `CLIENT_ESTABLISHED`: the server accepted the handshake.
    fn on_established(ws: &mut Ws, session: &mut Self::Session) -> Flow {
        let _ = (ws, session);
        Flow::Continue
    }

    /// `RECEIVE` (or `CLIENT_RECEIVE`): the next piece of a message, at most
    /// `rx_buffer_size` bytes;
    /// `fragment` says where it sits in the message. Text arrives as bytes:
    /// a piece may end inside a character, and the runtime checks the whole
    /// message's UTF-8 (closing with 1007 if it is not).
    fn on_receive(
        ws: &mut Ws,
        session: &mut Self::Session,
        piece: &[u8],
        fragment: Fragment,
    ) -> Flow;

    /// `RECEIVE_PONG` (or `CLIENT_RECEIVE_PONG`): a pong arrived (the runtime
    /// answers pings itself).
    fn on_pong(ws: &mut Ws, session: &mut Self::Session, payload: &[u8]) -> Flow {
        let _ = (ws, session, payload);
        Flow::Continue
    }

    /// `SERVER_WRITEABLE` (`CLIENT_WRITEABLE` on a client connection): after
    /// [`Ws::ask_writeable`] (or [`Ws::writeable_all`]), the tx buffer has room.
    fn on_writeable(ws: &mut Ws, session: &mut Self::Session) -> Flow {
        let _ = (ws, session);
        Flow::Continue
    }

    /// `TIMER`: the timer set with [`Ws::set_timer`] is up. It fires once; set
    /// it again here for a periodic job (a reading to broadcast, a keepalive).
    fn on_timer(ws: &mut Ws, session: &mut Self::Session) -> Flow {
        let _ = (ws, session);
        Flow::Continue
    }

    /// `WS_PEER_INITIATED_CLOSE`: the peer sent a close frame with `code`
    /// ([`NO_STATUS`] if it had none) and `reason` (UTF-8 by the protocol, not
    /// checked here). The runtime answers it; `on_closed` follows.
    fn on_peer_close(session: &mut Self::Session, code: u16, reason: &[u8]) {
        let _ = (session, code, reason);
    }

    /// `CLOSED` (or `CLIENT_CLOSED`): the connection ended, however it did;
    /// the slot is freed after. A client may [`Ws::connect`] again from here.
    fn on_closed(session: &mut Self::Session) {
        let _ = session;
    }

    /// `CLIENT_CONNECTION_ERROR`: a client connection could not be made
    /// (`message` says why: `connection refused`, `timed out`, `handshake
    /// rejected with status 404`...). It is the connection's only event: no
    /// `on_closed` follows, and the slot is freed after. A client may
    /// [`Ws::connect`] again from here.
    fn on_client_connection_error(session: &mut Self::Session, message: &str) {
        let _ = (session, message);
    }
}

/// The WebSocket connection an event is about. Only lives for one callback.
#[derive(Debug)]
pub struct Ws {
    wsi: Wsi,
    /// [`Ws::close`] was called: the callback returns -1 whatever the handler says.
    closing: bool,
}

impl Ws {
    /// Opens a WebSocket client connection (`lws_client_connect_via_info`)
    /// and returns its `wsi` at once; its events then come to the handler of
    /// `info.local_protocol` (this guest's when empty), as [`WsHandler`] says.
    /// An associated function, not a method: call it from any callback of a
    /// connection, including `on_closed` and `on_client_connection_error`
    /// (to reconnect, or to open the next connection of a sequence).
    ///
    /// ```
    /// use wasmgate_guest::{Ws, lws::ClientConnectInfo};
    ///
    /// let info = ClientConnectInfo::new("127.0.0.1", 7681, "/");
    /// // Off wasm32 there is no host to connect: BAD_STATE.
    /// assert!(Ws::connect(&info).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`lws::lws_client_connect_via_info`]: [`Error::Invalid`] for a bad
    /// field or flag, [`Error::NotFound`] for an unknown `local_protocol`,
    /// [`Error::NoSpace`] when the device has no free connection,
    /// [`Error::BadState`] outside a connection's callback.
    pub fn connect(info: &ClientConnectInfo<'_>) -> Result<Wsi, Error> {
        lws::lws_client_connect_via_info(info)
    }

    /// The connection, for the lws-shaped calls in [`crate::lws`].
    pub fn wsi(&self) -> Wsi {
        self.wsi
    }

    /// Sends `text` as one whole text message (all or nothing).
    ///
    /// # Errors
    ///
    /// [`Error::NoSpace`] when the tx buffer cannot take it now: call
    /// [`Ws::ask_writeable`] and send it from `on_writeable`.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send(MessageKind::Text, text.as_bytes(), true, true)
    }

    /// Sends `data` as one whole binary message (all or nothing).
    ///
    /// # Errors
    ///
    /// As [`Ws::send_text`].
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send(MessageKind::Binary, data, true, true)
    }

    /// Sends one piece of a message of `kind`: `first` on its first piece,
    /// `last` on its last (both for a message in one piece). Pieces of one
    /// message must follow each other with no other message in between; a text
    /// message may be cut anywhere, even inside a character.
    ///
    /// # Errors
    ///
    /// As [`Ws::send_text`]; on [`Error::NoSpace`] nothing was sent.
    pub fn send(
        &mut self,
        kind: MessageKind,
        data: &[u8],
        first: bool,
        last: bool,
    ) -> Result<(), Error> {
        let mode = lws::lws_write_ws_flags(kind.write_mode(), first, last);
        lws::lws_write(self.wsi, data, mode).map(drop)
    }

    /// Asks for an `on_writeable` call when the tx buffer has room.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing.
    pub fn ask_writeable(&mut self) -> Result<(), Error> {
        lws::lws_callback_on_writable(self.wsi)
    }

    /// Asks for `on_writeable` on every connection of this protocol (a
    /// broadcast); returns how many were asked.
    ///
    /// # Errors
    ///
    /// Whatever the host refuses.
    pub fn writeable_all(&mut self) -> Result<u32, Error> {
        lws::lws_callback_on_writable_all_protocol()
    }

    /// Calls `on_timer` for this connection in `usecs` microseconds
    /// (`lws_set_timer_usecs`). A connection has one timer: setting it again
    /// moves it; it ends with the connection.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing, [`Error::Invalid`]
    /// for more than `i64::MAX` microseconds.
    pub fn set_timer(&mut self, usecs: u64) -> Result<(), Error> {
        lws::lws_set_timer_usecs(self.wsi, Some(usecs))
    }

    /// Cancels the timer of [`Ws::set_timer`], if one is set.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing.
    pub fn cancel_timer(&mut self) -> Result<(), Error> {
        lws::lws_set_timer_usecs(self.wsi, None)
    }

    /// Stops (`false`) or resumes (`true`) `on_receive` calls and reading from
    /// the peer: lws's rx flow control, for a guest that cannot take more now.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing.
    pub fn rx_flow(&mut self, enable: bool) -> Result<(), Error> {
        lws::lws_rx_flow_control(self.wsi, enable)
    }

    /// Closes the connection with `code` and `reason` (cut to
    /// [`MAX_CLOSE_REASON`] bytes at a character boundary): sets
    /// `lws_close_reason` and makes this callback return -1, whatever the
    /// handler then returns. Returns [`Flow::Close`], so `return ws.close(..)`
    /// reads as what happens. If the host refuses the code, the connection is
    /// closed all the same, with the runtime's default code.
    pub fn close(&mut self, code: u16, reason: &str) -> Flow {
        let reason = cut_reason(reason);
        let _ = lws::lws_close_reason(self.wsi, code, reason.as_bytes());
        self.closing = true;
        Flow::Close
    }
}

/// `reason` cut to [`MAX_CLOSE_REASON`] bytes at a character boundary.
fn cut_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    // `get` rather than indexing keeps panic code out of small guests.
    reason.get(..end).unwrap_or_default()
}

/// The longest UTF-8 prefix of `bytes`: the host sends text, but a guest
/// never trusts it to be.
fn utf8_prefix(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => bytes
            .get(..e.valid_up_to())
            .and_then(|valid| core::str::from_utf8(valid).ok())
            .unwrap_or_default(),
    }
}

/// A close frame's payload as (code, reason): [`NO_STATUS`] and no reason
/// when it has no code (a 1-byte payload is a protocol error the runtime
/// rejects; it reads as no code here).
fn parse_close(payload: &[u8]) -> (u16, &[u8]) {
    match payload {
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
        _ => (NO_STATUS, &[]),
    }
}

/// The reasons [`dispatch`] acts on, as the bitset the `wasmgate_wants` export
/// [`export_ws!`](crate::export_ws) makes: `PROTOCOL_INIT` and
/// `PROTOCOL_DESTROY` (`init`, `destroy`) and every server and client
/// connection event (each calls a handler method, and the first of a
/// connection gets its fresh session). Left out, as they fall through to 0
/// with no effect: the HTTP events of a plain request routed to the protocol
/// (`HTTP_BIND_PROTOCOL` resets a slot no later event of that request reads).
#[doc(hidden)]
pub const WANTED: u128 = crate::abi::reason_mask(&[
    Reason::ProtocolInit,
    Reason::ProtocolDestroy,
    Reason::FilterProtocolConnection,
    Reason::Established,
    Reason::Receive,
    Reason::ReceivePong,
    Reason::ServerWriteable,
    Reason::Timer,
    Reason::WsPeerInitiatedClose,
    Reason::Closed,
    Reason::ClientConnectionError,
    Reason::ClientEstablished,
    Reason::ClientReceive,
    Reason::ClientReceivePong,
    Reason::ClientWriteable,
    Reason::ClientClosed,
]);

/// The `callback` export's body for handler `H`: turns lws events into trait
/// calls. Called by [`export_ws!`](crate::export_ws).
#[doc(hidden)]
pub fn dispatch<H: WsHandler>(
    wsi: Wsi,
    reason: Reason,
    session: Option<&mut H::Session>,
    rx: Rx<'_>,
) -> i32 {
    let session = match (reason, session) {
        (Reason::ProtocolInit, _) => return if H::init() { 0 } else { 1 },
        (Reason::ProtocolDestroy, _) => {
            H::destroy();
            return 0;
        }
        (_, Some(session)) => session,
        // Every connection event names a slot; a host that sends none is broken.
        (
            Reason::FilterProtocolConnection
            | Reason::Established
            | Reason::Receive
            | Reason::ReceivePong
            | Reason::ServerWriteable
            | Reason::Timer
            | Reason::ClientEstablished
            | Reason::ClientReceive
            | Reason::ClientReceivePong
            | Reason::ClientWriteable,
            None,
        ) => return -1,
        (_, None) => return 0,
    };
    let mut ws = Ws {
        wsi,
        closing: false,
    };
    let flow = match reason {
        Reason::FilterProtocolConnection => match core::str::from_utf8(rx.input()) {
            Ok(protocol) if H::on_filter(&mut ws, session, protocol) => Flow::Continue,
            _ => Flow::Close,
        },
        Reason::Established | Reason::ClientEstablished => H::on_established(&mut ws, session),
        Reason::Receive | Reason::ClientReceive => match Fragment::of_callback(wsi) {
            Ok(fragment) => H::on_receive(&mut ws, session, rx.input(), fragment),
            // Without knowing where the piece goes, no handler can use it.
            Err(_) => Flow::Close,
        },
        Reason::ReceivePong | Reason::ClientReceivePong => H::on_pong(&mut ws, session, rx.input()),
        Reason::ServerWriteable | Reason::ClientWriteable => H::on_writeable(&mut ws, session),
        Reason::Timer => H::on_timer(&mut ws, session),
        Reason::WsPeerInitiatedClose => {
            let (code, why) = parse_close(rx.input());
            H::on_peer_close(session, code, why);
            Flow::Continue
        }
        Reason::Closed | Reason::ClientClosed => {
            H::on_closed(session);
            Flow::Continue
        }
        Reason::ClientConnectionError => {
            H::on_client_connection_error(session, utf8_prefix(rx.input()));
            Flow::Continue
        }
        _ => Flow::Continue,
    };
    if ws.closing {
        Flow::Close.code()
    } else {
        flow.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_fragment_unpacks() {
        let f = Fragment::unpack(300 << 8 | abi::FRAGMENT_FIRST | abi::FRAGMENT_BINARY);
        assert_eq!(
            f,
            Fragment {
                first: true,
                last: false,
                binary: true,
                remaining: 300
            }
        );
        let f = Fragment::unpack(abi::FRAGMENT_FINAL);
        assert!(!f.first && f.last && !f.binary && f.remaining == 0);
        // Off wasm32 the host call answers BAD_STATE.
        assert_eq!(Fragment::current(Wsi::from_raw(1)), Err(Error::BadState));
    }

    #[test]
    fn wanted_reasons_are_the_websocket_ones() {
        let wants = |r: Reason| crate::abi::in_mask(WANTED, r.raw());
        for r in [
            Reason::FilterProtocolConnection,
            Reason::Established,
            Reason::Receive,
            Reason::ClientReceive,
            Reason::WsPeerInitiatedClose,
            Reason::Closed,
            Reason::ClientClosed,
            Reason::Timer,
        ] {
            assert!(wants(r), "{r:?}");
        }
        for r in [
            Reason::HttpBindProtocol,
            Reason::Http,
            Reason::HttpBody,
            Reason::HttpDropProtocol,
            Reason::ClosedHttp,
        ] {
            assert!(!wants(r), "{r:?}");
        }
    }

    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct Seen {
        filtered: bool,
        established: bool,
        pongs: usize,
        timers: usize,
        peer_close: Option<(u16, usize)>,
        closed: bool,
        writeables: usize,
        /// The connection error's message: its length, and whether it said "refused".
        connection_error: Option<(usize, bool)>,
    }

    /// Records events; closes on the pong `"bye"`; refuses protocol `"no"`.
    struct Recorder;

    impl WsHandler for Recorder {
        type Session = Seen;

        fn on_filter(_ws: &mut Ws, session: &mut Seen, protocol: &str) -> bool {
            session.filtered = true;
            protocol != "no"
        }

        fn on_established(_ws: &mut Ws, session: &mut Seen) -> Flow {
            session.established = true;
            Flow::Continue
        }

        fn on_receive(_ws: &mut Ws, _session: &mut Seen, _piece: &[u8], _f: Fragment) -> Flow {
            Flow::Continue
        }

        fn on_pong(ws: &mut Ws, session: &mut Seen, payload: &[u8]) -> Flow {
            session.pongs += 1;
            if payload == b"bye" {
                // Returns Continue after asking to close: the close must win.
                let _ = ws.close(1000, "bye");
            }
            Flow::Continue
        }

        fn on_timer(ws: &mut Ws, session: &mut Seen) -> Flow {
            session.timers += 1;
            // Off wasm32 re-arming fails: close, to show the error reaches here.
            match ws.set_timer(1_000_000) {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Close,
            }
        }

        fn on_peer_close(session: &mut Seen, code: u16, reason: &[u8]) {
            session.peer_close = Some((code, reason.len()));
        }

        fn on_writeable(_ws: &mut Ws, session: &mut Seen) -> Flow {
            session.writeables += 1;
            Flow::Continue
        }

        fn on_closed(session: &mut Seen) {
            session.closed = true;
        }

        fn on_client_connection_error(session: &mut Seen, message: &str) {
            session.connection_error = Some((message.len(), message.contains("refused")));
        }
    }

    fn call(reason: Reason, session: Option<&mut Seen>, input: &[u8]) -> i32 {
        let mut buf = [0u8; 128];
        buf[..input.len()].copy_from_slice(input);
        dispatch::<Recorder>(
            Wsi::from_raw(3),
            reason,
            session,
            Rx::for_test(&mut buf, input.len()),
        )
    }

    #[test]
    fn events_reach_the_session_in_order() {
        let mut s = Seen::default();
        assert_eq!(
            call(Reason::FilterProtocolConnection, Some(&mut s), b"echo"),
            0
        );
        assert_eq!(call(Reason::Established, Some(&mut s), b""), 0);
        assert_eq!(call(Reason::ReceivePong, Some(&mut s), b"p"), 0);
        assert_eq!(
            call(Reason::WsPeerInitiatedClose, Some(&mut s), b"\x03\xe8ok"),
            0
        );
        assert_eq!(call(Reason::Closed, Some(&mut s), b""), 0);
        let expected = Seen {
            filtered: true,
            established: true,
            pongs: 1,
            timers: 0,
            peer_close: Some((1000, 2)),
            closed: true,
            ..Seen::default()
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn client_events_reach_the_same_methods() {
        let mut s = Seen::default();
        assert_eq!(call(Reason::ClientEstablished, Some(&mut s), b""), 0);
        assert_eq!(call(Reason::ClientReceivePong, Some(&mut s), b"p"), 0);
        assert_eq!(call(Reason::ClientWriteable, Some(&mut s), b""), 0);
        assert_eq!(
            call(Reason::WsPeerInitiatedClose, Some(&mut s), b"\x03\xe9"),
            0
        );
        assert_eq!(call(Reason::ClientClosed, Some(&mut s), b""), 0);
        let expected = Seen {
            established: true,
            pongs: 1,
            writeables: 1,
            peer_close: Some((1001, 0)),
            closed: true,
            ..Seen::default()
        };
        assert_eq!(s, expected);
        // CLIENT_RECEIVE asks the fragment queries, which answer BAD_STATE here.
        assert_eq!(call(Reason::ClientReceive, Some(&mut s), b"data"), -1);
        assert_eq!(call(Reason::ClientReceivePong, Some(&mut s), b"bye"), -1);
    }

    #[test]
    fn a_client_connection_error_reaches_its_handler_with_the_message() {
        let mut s = Seen::default();
        assert_eq!(
            call(
                Reason::ClientConnectionError,
                Some(&mut s),
                b"connection refused"
            ),
            0
        );
        assert_eq!(s.connection_error, Some((18, true)));
        assert!(!s.closed && !s.established);
        let mut s = Seen::default();
        assert_eq!(
            call(Reason::ClientConnectionError, Some(&mut s), b"timed\xffout"),
            0
        );
        assert_eq!(s.connection_error, Some((5, false)), "the UTF-8 prefix");
        assert_eq!(call(Reason::ClientConnectionError, None, b"x"), 0);
    }

    #[test]
    fn utf8_prefixes_stop_at_the_first_bad_byte() {
        assert_eq!(utf8_prefix(b"connection refused"), "connection refused");
        assert_eq!(utf8_prefix(b"ok\xc3"), "ok", "a cut character");
        assert_eq!(utf8_prefix(b"\xff"), "");
        assert_eq!(utf8_prefix("é".as_bytes()), "é");
    }

    #[test]
    fn a_refused_or_non_utf8_protocol_is_rejected() {
        let mut s = Seen::default();
        assert_ne!(
            call(Reason::FilterProtocolConnection, Some(&mut s), b"no"),
            0
        );
        assert!(s.filtered);
        let mut s = Seen::default();
        assert_ne!(
            call(Reason::FilterProtocolConnection, Some(&mut s), b"\xff"),
            0
        );
        assert!(
            !s.filtered,
            "the handler never sees a name that is not UTF-8"
        );
    }

    #[test]
    fn close_wins_over_the_handlers_return_value() {
        let mut s = Seen::default();
        assert_eq!(call(Reason::ReceivePong, Some(&mut s), b"bye"), -1);
    }

    #[test]
    fn a_piece_whose_fragment_state_cannot_be_read_closes() {
        // Off wasm32 the fragment queries answer BAD_STATE.
        let mut s = Seen::default();
        assert_eq!(call(Reason::Receive, Some(&mut s), b"data"), -1);
    }

    #[test]
    fn timer_events_reach_on_timer() {
        let mut s = Seen::default();
        assert_eq!(call(Reason::Timer, Some(&mut s), b""), -1, "re-arm failed");
        assert_eq!(s.timers, 1);
        assert_eq!(Reason::Timer.raw(), 73);
    }

    #[test]
    fn connection_events_without_a_session_are_refused() {
        assert_eq!(call(Reason::Receive, None, b""), -1);
        assert_eq!(call(Reason::ServerWriteable, None, b""), -1);
        assert_eq!(call(Reason::Timer, None, b""), -1);
        assert_eq!(call(Reason::ClientEstablished, None, b""), -1);
        assert_eq!(call(Reason::ClientReceive, None, b""), -1);
        assert_eq!(call(Reason::ClientWriteable, None, b""), -1);
        assert_eq!(call(Reason::ClientClosed, None, b""), 0);
        assert_eq!(call(Reason::ProtocolInit, None, b""), 0);
        assert_eq!(call(Reason::Other(99), None, b""), 0);
    }

    #[test]
    fn close_payloads_split_into_code_and_reason() {
        assert_eq!(parse_close(b"\x03\xe8"), (1000, &b""[..]));
        assert_eq!(parse_close(b"\x03\xe9going"), (1001, &b"going"[..]));
        assert_eq!(parse_close(b""), (NO_STATUS, &b""[..]));
        assert_eq!(parse_close(b"\x03"), (NO_STATUS, &b""[..]));
    }

    #[test]
    fn close_reasons_are_cut_to_123_bytes_at_a_character() {
        let long = "é".repeat(100); // 200 bytes
        let cut = cut_reason(&long);
        assert_eq!(cut.len(), 122, "123 would split a character");
        assert_eq!(cut_reason("short"), "short");
        let ascii = "x".repeat(130);
        assert_eq!(cut_reason(&ascii).len(), MAX_CLOSE_REASON);
    }

    #[test]
    fn fragments_echo_with_lws_modes() {
        let piece = |first, last, binary| Fragment {
            first,
            last,
            binary,
            remaining: 0,
        };
        assert_eq!(piece(true, true, false).echo_mode(), WriteMode::TEXT);
        assert_eq!(
            piece(true, false, true).echo_mode(),
            WriteMode::BINARY | WriteMode::NO_FIN
        );
        assert_eq!(
            piece(false, false, true).echo_mode(),
            WriteMode::CONTINUATION | WriteMode::NO_FIN
        );
        assert_eq!(
            piece(false, true, false).echo_mode(),
            WriteMode::CONTINUATION
        );
        assert_eq!(piece(true, true, true).kind(), MessageKind::Binary);
    }

    #[test]
    fn sends_fail_cleanly_off_wasm() {
        let mut ws = Ws {
            wsi: Wsi::from_raw(1),
            closing: false,
        };
        assert_eq!(ws.send_text("hi"), Err(Error::BadState));
        assert_eq!(ws.send_binary(b"hi"), Err(Error::BadState));
        assert_eq!(ws.rx_flow(false), Err(Error::BadState));
        assert_eq!(ws.set_timer(1_000), Err(Error::BadState));
        assert_eq!(ws.set_timer(u64::MAX), Err(Error::Invalid));
        assert_eq!(ws.cancel_timer(), Err(Error::BadState));
        assert_eq!(ws.close(1000, "bye"), Flow::Close);
        assert!(ws.closing, "a refused close reason still closes");
    }
}
