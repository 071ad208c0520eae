//! The idiomatic HTTP layer: an [`HttpHandler`] trait with one method per
//! event, a [`Request`] with typed response helpers, and [`Flow`] for what the
//! callback returns. Built only on the lws-shaped layer; allocation-free.

use core::fmt;

use crate::abi::{self, Rx};
use crate::log::{FmtBuf, LogLevel};
use crate::lws::{self, Error, Method, Reason, WriteMode, Wsi};

/// What a handler wants after an event: lws's callback return value. Shared
/// by [`HttpHandler`] and [`WsHandler`](crate::ws::WsHandler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Flow {
    /// Go on (return 0). For HTTP, after a request's last event, a guest that
    /// neither answered nor asked for `on_writeable` gets the runtime's `404`.
    Continue,
    /// Close the connection (return -1).
    Close,
}

impl Flow {
    /// The callback's return value: 0 or -1.
    pub const fn code(self) -> i32 {
        match self {
            Self::Continue => 0,
            Self::Close => -1,
        }
    }
}

/// A guest that serves HTTP: one associated function per lws event, all with
/// do-nothing defaults except [`HttpHandler::on_request`]. The handler is a type
/// (usually a unit struct); keep state across requests in
/// [`GuestCell`](crate::GuestCell) statics and per request in
/// [`Self::Session`]. Export it with [`export_http!`](crate::export_http).
///
/// Per request, the events come in this order: `on_request`, then `on_body` per
/// body piece and `on_body_complete` (only when the request has a body), then
/// `on_writeable` as often as asked for (and `on_timer` after
/// [`Request::set_timer`]), then `on_done` (or `on_closed`). Once
/// the response is complete ([`Request::respond`], [`Request::finish`],
/// [`Request::return_status`]), the request's remaining `on_body`,
/// `on_body_complete`, `on_writeable` and `on_timer` calls are skipped: answering early (a
/// `404` to a `POST`, say) needs no bookkeeping.
pub trait HttpHandler {
    /// Per-request state, lws's per-session data: a fresh `Default` value for
    /// every request, stored in the slot the host assigns (no allocation).
    type Session: Default + Copy + 'static;

    /// `PROTOCOL_INIT`, once per instance. Return `false` to refuse to start.
    fn init() -> bool {
        true
    }

    /// `PROTOCOL_DESTROY`, once, before the instance is dropped.
    fn destroy() {}

    /// `HTTP`: the request head is complete. `path` is the URL path without
    /// the query. Answer now, or return [`Flow::Continue`] to wait for the body.
    ///
    /// Not called for a path that is not UTF-8 (the SDK answers `400`) or one as
    /// long as `rx_buffer_size`, which leaves no room to read the method (`414`).
    fn on_request(req: &mut Request<'_, Self::Session>, path: &str) -> Flow;

    /// `HTTP_BODY`: the next piece of the body, at most `rx_buffer_size` bytes.
    fn on_body(req: &mut Request<'_, Self::Session>, chunk: &[u8]) -> Flow {
        let _ = (req, chunk);
        Flow::Continue
    }

    /// `HTTP_BODY_COMPLETION`: the whole body has been delivered.
    fn on_body_complete(req: &mut Request<'_, Self::Session>) -> Flow {
        let _ = req;
        Flow::Continue
    }

    /// `HTTP_WRITEABLE`: after [`Request::ask_writeable`], the tx buffer has room.
    fn on_writeable(req: &mut Request<'_, Self::Session>) -> Flow {
        let _ = req;
        Flow::Continue
    }

    /// `TIMER`: the timer set with [`Request::set_timer`] is up (a delayed or
    /// paced answer). Skipped once the response is complete.
    fn on_timer(req: &mut Request<'_, Self::Session>) -> Flow {
        let _ = req;
        Flow::Continue
    }

    /// `HTTP_DROP_PROTOCOL`: the transaction ended; the session is freed after.
    fn on_done(session: &mut Self::Session) {
        let _ = session;
    }

    /// `CLOSED_HTTP`: the connection closed while the request was bound.
    fn on_closed(session: &mut Self::Session) {
        let _ = session;
    }
}

/// What the SDK keeps per request next to the handler's session: the layout of
/// one per-session slot. Public only for the export macro.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot<S> {
    /// Read once, on `HTTP`.
    method: Option<Method>,
    /// Status and headers added, not yet finalized.
    head_open: bool,
    /// The response is complete: later events of the request are not passed on.
    done: bool,
    session: S,
}

/// The request an event is about, and the response to it. Only lives for one
/// callback; what must survive goes into [`Request::session`].
pub struct Request<'a, S> {
    wsi: Wsi,
    slot: &'a mut Slot<S>,
}

impl<S> fmt::Debug for Request<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("wsi", &self.wsi)
            .field("method", &self.method())
            .finish_non_exhaustive()
    }
}

impl<S> Request<'_, S> {
    /// The connection, for the lws-shaped calls in [`crate::lws`].
    pub fn wsi(&self) -> Wsi {
        self.wsi
    }

    /// The request method.
    pub fn method(&self) -> Method {
        self.slot.method.unwrap_or(Method::Other)
    }

    /// This request's session: `Default` at the start of every request.
    pub fn session(&mut self) -> &mut S {
        &mut self.slot.session
    }

    /// Request header `name` (case-insensitive), copied into `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without such a header, [`Error::NoSpace`] when it does
    /// not fit `buf`, [`Error::Invalid`] when it is not UTF-8.
    pub fn header<'b>(&self, name: &str, buf: &'b mut [u8]) -> Result<&'b str, Error> {
        let len = lws::lws_hdr_custom_copy(self.wsi, buf, name)?;
        text(&buf[..len])
    }

    /// Query argument `name`, percent-decoded into `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without such an argument, [`Error::NoSpace`] when it
    /// does not fit `buf`, [`Error::Invalid`] when it is not UTF-8.
    pub fn query_arg<'b>(&self, name: &str, buf: &'b mut [u8]) -> Result<&'b str, Error> {
        let len = lws::lws_get_urlarg_by_name_safe(self.wsi, name, buf)?;
        text(&buf[..len])
    }

    /// Whether the request has a body (`Transfer-Encoding`, or a `Content-Length`
    /// over 0). Without one, `on_body_complete` never comes: answer in
    /// `on_request` (a `POST` with an empty body, say).
    pub fn has_body(&self) -> bool {
        if lws::lws_hdr_custom_length(self.wsi, "transfer-encoding").is_ok() {
            return true;
        }
        let mut buf = [0u8; 20];
        match self.header("content-length", &mut buf) {
            Ok(len) => len.bytes().any(|b| (b'1'..=b'9').contains(&b)),
            // Longer than any u64: certainly not zero.
            Err(Error::NoSpace) => true,
            Err(_) => false,
        }
    }

    /// The peer's address as text, copied into `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::NoSpace`] when it does not fit `buf` (64 bytes always do).
    pub fn peer<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, Error> {
        let len = lws::lws_get_peer_simple(self.wsi, buf)?;
        text(&buf[..len])
    }

    /// Answers with `status`, `Content-Type: content_type`, a `Content-Length`
    /// and `body`, and completes the transaction. `body` must fit the tx buffer
    /// (stream bigger ones with [`Request::start`]).
    ///
    /// A host error is logged at `LLL_ERR` and closes the connection
    /// ([`Flow::Close`]); so does a connection the host will close anyway.
    pub fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) -> Flow {
        let sent = self
            .start(status, content_type, Some(body.len() as u64))
            .and_then(|()| self.finish(body));
        flow_or_log("respond", sent)
    }

    /// [`Request::respond`] with `text/html; charset=utf-8`.
    pub fn respond_html(&mut self, status: u16, html: &str) -> Flow {
        self.respond(status, "text/html; charset=utf-8", html.as_bytes())
    }

    /// [`Request::respond`] with `application/json`.
    pub fn respond_json(&mut self, status: u16, json: &str) -> Flow {
        self.respond(status, "application/json", json.as_bytes())
    }

    /// `lws_return_http_status`: the runtime's small HTML page for `status`
    /// (with `message` in it, may be empty); completes the transaction. Errors
    /// are handled as by [`Request::respond`].
    pub fn return_status(&mut self, status: u16, message: &str) -> Flow {
        let sent = lws::lws_return_http_status(self.wsi, status.into(), message).map(|()| {
            self.slot.done = true;
            Flow::Continue
        });
        flow_or_log("return_status", sent)
    }

    /// Starts a streamed response: status, `Content-Type`, and `Content-Length`
    /// if known (`None`: chunked for HTTP/1.1 clients). Add headers with
    /// [`Request::add_header`], then [`Request::write`] and [`Request::finish`],
    /// in this callback or later ones ([`Request::ask_writeable`]).
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] when a response was already started, [`Error::Invalid`]
    /// for a status outside 100..=999.
    pub fn start(
        &mut self,
        status: u16,
        content_type: &str,
        content_length: Option<u64>,
    ) -> Result<(), Error> {
        lws::lws_add_http_common_headers(self.wsi, status.into(), content_type, content_length)?;
        self.slot.head_open = true;
        Ok(())
    }

    /// Adds a response header after [`Request::start`], before the first write.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for CR/LF or a framing header (`Content-Length`,
    /// `Transfer-Encoding`, `Connection`), [`Error::BadState`] outside a head.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        lws::lws_add_http_header_by_name(self.wsi, name, value)
    }

    /// Sends a piece of the body (all or nothing), finalizing the head first if
    /// needed.
    ///
    /// # Errors
    ///
    /// [`Error::NoSpace`] when the tx buffer cannot take `chunk` now: call
    /// [`Request::ask_writeable`] and send it from `on_writeable`.
    /// [`Error::Invalid`] past `Content-Length`.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.send(chunk, WriteMode::HTTP)
    }

    /// Sends the last piece of the body (may be empty) and completes the
    /// transaction. [`Flow::Close`] when the connection will close.
    ///
    /// # Errors
    ///
    /// As [`Request::write`]; on [`Error::NoSpace`] nothing was sent and the
    /// transaction is still open.
    pub fn finish(&mut self, last: &[u8]) -> Result<Flow, Error> {
        self.send(last, WriteMode::HTTP_FINAL)?;
        self.slot.done = true;
        let closing = lws::lws_http_transaction_completed(self.wsi)?;
        Ok(if closing { Flow::Close } else { Flow::Continue })
    }

    /// Asks for an `on_writeable` call when the tx buffer has room.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing.
    pub fn ask_writeable(&mut self) -> Result<(), Error> {
        lws::lws_callback_on_writable(self.wsi)
    }

    /// Calls `on_timer` in `usecs` microseconds (`lws_set_timer_usecs`). The
    /// timer belongs to the connection, as in lws: setting it again moves it,
    /// and with keep-alive it can outlive this request, so cancel it
    /// ([`Request::cancel_timer`]) when the answer comes first.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing, [`Error::Invalid`]
    /// for more than `i64::MAX` microseconds.
    pub fn set_timer(&mut self, usecs: u64) -> Result<(), Error> {
        lws::lws_set_timer_usecs(self.wsi, Some(usecs))
    }

    /// Cancels the timer of [`Request::set_timer`], if one is set.
    ///
    /// # Errors
    ///
    /// [`Error::BadState`] for a connection that is closing.
    pub fn cancel_timer(&mut self) -> Result<(), Error> {
        lws::lws_set_timer_usecs(self.wsi, None)
    }

    fn send(&mut self, bytes: &[u8], mode: WriteMode) -> Result<(), Error> {
        if self.slot.head_open {
            lws::lws_finalize_write_http_header(self.wsi)?;
            self.slot.head_open = false;
        }
        lws::lws_write(self.wsi, bytes, mode).map(drop)
    }
}

/// Bytes the host copied, as text.
fn text(bytes: &[u8]) -> Result<&str, Error> {
    core::str::from_utf8(bytes).map_err(|_| Error::Invalid)
}

/// The flow of a convenience helper; an error is logged (without `core::fmt`)
/// and closes the connection.
fn flow_or_log(what: &str, result: Result<Flow, Error>) -> Flow {
    result.unwrap_or_else(|err| {
        let mut line = FmtBuf::<64>::new();
        line.push_str(what);
        line.push_str(" failed: ");
        line.push_str(err.name());
        line.log(LogLevel::Err);
        Flow::Close
    })
}

/// The reasons [`dispatch`] acts on, as the bitset the `wasmgate_wants` export
/// [`export_http!`](crate::export_http) makes: `PROTOCOL_INIT` and
/// `PROTOCOL_DESTROY` (`init`, `destroy`), every event of a request
/// (`HTTP`, `HTTP_BODY`, `HTTP_BODY_COMPLETION`, `HTTP_WRITEABLE`, `TIMER`,
/// `HTTP_DROP_PROTOCOL`, `CLOSED_HTTP`), and the reasons at which the glue
/// resets the session slot to a fresh [`Slot`] (`HTTP_BIND_PROTOCOL` above
/// all: the host only zeroes the slot). Left out, as they fall through to 0
/// with no effect: the other WebSocket and client events.
#[doc(hidden)]
pub const WANTED: u128 = abi::reason_mask(&[
    Reason::ProtocolInit,
    Reason::ProtocolDestroy,
    Reason::Http,
    Reason::HttpBody,
    Reason::HttpBodyCompletion,
    Reason::HttpWriteable,
    Reason::Timer,
    Reason::HttpDropProtocol,
    Reason::ClosedHttp,
]) | abi::reason_mask(&abi::FRESH_SLOT_REASONS);

/// The `callback` export's body for handler `H`: turns lws events into trait
/// calls. Called by [`export_http!`](crate::export_http).
#[doc(hidden)]
pub fn dispatch<H: HttpHandler>(
    wsi: Wsi,
    reason: Reason,
    slot: Option<&mut Slot<H::Session>>,
    mut rx: Rx<'_>,
) -> i32 {
    let slot = match (reason, slot) {
        (Reason::ProtocolInit, _) => return if H::init() { 0 } else { 1 },
        (Reason::ProtocolDestroy, _) => {
            H::destroy();
            return 0;
        }
        (_, Some(slot)) => slot,
        // Every HTTP event names a slot; a host that sends none is broken.
        (
            Reason::Http | Reason::HttpBody | Reason::HttpBodyCompletion | Reason::HttpWriteable,
            None,
        ) => return -1,
        (_, None) => return 0,
    };
    let flow = match reason {
        Reason::Http => {
            let mut req = Request { wsi, slot };
            // The ABI returns the method only with a copy of the path: let the host
            // copy it over itself, where it already sits in `in`.
            match lws::lws_http_get_uri_and_method(wsi, rx.from_input_mut()) {
                Ok((method, _)) => req.slot.method = Some(method),
                Err(Error::NoSpace) => return req.return_status(414, "URI too long").code(),
                Err(_) => return Flow::Close.code(),
            }
            match core::str::from_utf8(rx.input()) {
                Ok(path) => H::on_request(&mut req, path),
                Err(_) => req.return_status(400, "path is not UTF-8"),
            }
        }
        Reason::HttpBody | Reason::HttpBodyCompletion | Reason::HttpWriteable | Reason::Timer
            if slot.done =>
        {
            Flow::Continue
        }
        Reason::HttpBody => H::on_body(&mut Request { wsi, slot }, rx.input()),
        Reason::HttpBodyCompletion => H::on_body_complete(&mut Request { wsi, slot }),
        Reason::HttpWriteable => H::on_writeable(&mut Request { wsi, slot }),
        Reason::Timer => H::on_timer(&mut Request { wsi, slot }),
        Reason::HttpDropProtocol => {
            H::on_done(&mut slot.session);
            Flow::Continue
        }
        Reason::ClosedHttp => {
            H::on_closed(&mut slot.session);
            Flow::Continue
        }
        _ => Flow::Continue,
    };
    flow.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct Count {
        bytes: usize,
    }

    struct Counter;

    impl HttpHandler for Counter {
        type Session = Count;

        fn on_request(req: &mut Request<'_, Count>, _path: &str) -> Flow {
            req.respond_json(200, "{}")
        }

        fn on_body(req: &mut Request<'_, Count>, chunk: &[u8]) -> Flow {
            req.session().bytes += chunk.len();
            Flow::Continue
        }

        fn on_timer(req: &mut Request<'_, Count>) -> Flow {
            req.session().bytes += 1000;
            Flow::Continue
        }

        fn on_done(session: &mut Count) {
            session.bytes = usize::MAX;
        }
    }

    fn rx(buf: &mut [u8], len: usize) -> Rx<'_> {
        Rx::for_test(buf, len)
    }

    #[test]
    fn wanted_reasons_are_those_dispatch_acts_on() {
        let wants = |r: Reason| abi::in_mask(WANTED, r.raw());
        for r in [
            Reason::ProtocolInit,
            Reason::ProtocolDestroy,
            Reason::HttpBindProtocol, // resets the slot
            Reason::Http,
            Reason::HttpBody,
            Reason::HttpBodyCompletion,
            Reason::HttpWriteable,
            Reason::Timer,
            Reason::HttpDropProtocol,
            Reason::ClosedHttp,
        ] {
            assert!(wants(r), "{r:?}");
        }
        for r in [Reason::Established, Reason::Receive, Reason::Closed] {
            assert!(!wants(r), "{r:?}");
        }
    }

    #[test]
    fn flow_codes_are_lws_return_values() {
        assert_eq!(Flow::Continue.code(), 0);
        assert_eq!(Flow::Close.code(), -1);
    }

    #[test]
    fn body_pieces_reach_the_session() {
        let mut slot = Slot::<Count>::default();
        let mut buf = [7u8; 128];
        let ret = dispatch::<Counter>(
            Wsi::from_raw(1),
            Reason::HttpBody,
            Some(&mut slot),
            rx(&mut buf, 5),
        );
        assert_eq!(ret, 0);
        assert_eq!(slot.session.bytes, 5);
        dispatch::<Counter>(
            Wsi::from_raw(1),
            Reason::HttpDropProtocol,
            Some(&mut slot),
            rx(&mut buf, 0),
        );
        assert_eq!(slot.session.bytes, usize::MAX);
    }

    #[test]
    fn events_after_the_response_are_skipped() {
        let mut slot = Slot::<Count> {
            done: true,
            ..Slot::default()
        };
        let mut buf = [7u8; 128];
        let ret = dispatch::<Counter>(
            Wsi::from_raw(1),
            Reason::HttpBody,
            Some(&mut slot),
            rx(&mut buf, 5),
        );
        assert_eq!(ret, 0);
        assert_eq!(slot.session.bytes, 0);
    }

    #[test]
    fn timers_reach_on_timer_until_the_response_is_complete() {
        let mut slot = Slot::<Count>::default();
        let mut buf = [0u8; 128];
        let mut timer = |slot: &mut Slot<Count>| {
            dispatch::<Counter>(Wsi::from_raw(1), Reason::Timer, Some(slot), rx(&mut buf, 0))
        };
        assert_eq!(timer(&mut slot), 0);
        assert_eq!(slot.session.bytes, 1000);
        slot.done = true;
        assert_eq!(timer(&mut slot), 0);
        assert_eq!(slot.session.bytes, 1000, "skipped after the response");
        let mut req = Request {
            wsi: Wsi::from_raw(1),
            slot: &mut slot,
        };
        assert_eq!(req.set_timer(10), Err(Error::BadState));
        assert_eq!(req.cancel_timer(), Err(Error::BadState));
    }

    #[test]
    fn init_and_unknown_reasons_need_no_session() {
        let mut buf = [0u8; 128];
        assert_eq!(
            dispatch::<Counter>(
                Wsi::from_raw(0),
                Reason::ProtocolInit,
                None,
                rx(&mut buf, 0)
            ),
            0
        );
        assert_eq!(
            dispatch::<Counter>(Wsi::from_raw(0), Reason::Other(99), None, rx(&mut buf, 0)),
            0
        );
        assert_eq!(
            dispatch::<Counter>(Wsi::from_raw(0), Reason::Http, None, rx(&mut buf, 0)),
            -1
        );
    }

    #[test]
    fn a_failed_response_closes_the_connection() {
        // Off wasm32 every host call answers BAD_STATE.
        let mut slot = Slot::<Count>::default();
        let mut req = Request {
            wsi: Wsi::from_raw(1),
            slot: &mut slot,
        };
        assert_eq!(req.respond(200, "text/plain", b"hi"), Flow::Close);
        assert_eq!(req.start(200, "text/plain", None), Err(Error::BadState));
        assert!(!req.slot.head_open);
    }

    #[test]
    fn a_request_whose_method_cannot_be_read_is_closed() {
        // Off wasm32 `lws_http_get_uri_and_method` answers BAD_STATE.
        let mut slot = Slot::<Count>::default();
        let mut buf = [0u8; 128];
        buf[..11].copy_from_slice(b"/index.html");
        let ret = dispatch::<Counter>(
            Wsi::from_raw(1),
            Reason::Http,
            Some(&mut slot),
            rx(&mut buf, 11),
        );
        assert_eq!(ret, -1);
        assert_eq!(slot.method, None);
    }
}
