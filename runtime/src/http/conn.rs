//! [`ServerConn`]: one HTTP/1.1 server connection as a state machine. It reads one
//! transaction at a time (head, body, then waits for the response to finish), so
//! pipelined responses go out in request order.

use std::fmt;
use std::time::Instant;

use super::body::{BodyDecoder, Chunked, Step};
use super::head::{HeadScanner, Request};
use super::response::{Context, Response, TxBuf};
use super::{
    Completion, Event, IDLE_KEEP, Limits, Rejection, ResponseError, release_drained, reserve_within,
};

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the receive side is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Waiting for, or reading, a request head.
    Head,
    /// `Event::Head` given; delivering the body.
    Body,
    /// `Event::BodyComplete` given; waiting for `finish_response`.
    Done,
    /// No more requests: the connection closes once `tx` is drained.
    Closed,
}

/// `Expect: 100-continue` handling for the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continue {
    /// Not asked for, or already settled (sent or made moot).
    No,
    /// To be sent when the body is first needed.
    Pending,
}

/// Bytes held by each of a connection's buffers (for tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Capacities {
    pub(super) rx: usize,
    pub(super) tx: usize,
    /// The staged response head.
    pub(super) head: usize,
    /// The request's copy of its head, and its header table.
    pub(super) request: usize,
}

#[cfg(test)]
impl Capacities {
    pub(super) const fn total(self) -> usize {
        self.rx + self.tx + self.head + self.request
    }
}

/// One HTTP/1.1 server connection, sans I/O: feed it the bytes read from the
/// socket, take [`Event`]s, answer through the response methods, send
/// [`ServerConn::tx`] and call [`ServerConn::poll_timeout`] by the deadline it
/// gives.
///
/// Its memory is bounded by [`Limits`]: a receive buffer of at most
/// `max_head_bytes`, a copy of the current head, a staged response head and the
/// output buffer. Each is allocated as bytes arrive or are queued, reused through
/// a transaction and the next pipelined one, and given back (down to 512 bytes)
/// once the connection goes idle. After an upgrade only the request is kept.
pub struct ServerConn {
    limits: Limits,
    rx: Vec<u8>,
    /// Bytes of `rx` before this are consumed.
    rx_start: usize,
    state: Rx,
    scanner: HeadScanner,
    request: Request,
    /// `request` is the current one (from `Event::Head` to `finish_response`).
    has_request: bool,
    body: BodyDecoder,
    expect: Continue,
    response: Response,
    tx: TxBuf,
    /// A rejection found by `poll_timeout`, for the next `poll_event`.
    pending: Option<Rejection>,
    closing: bool,
    peer_closed: bool,
    /// No request head has been completed yet on this connection.
    first_request: bool,
    /// A transaction ended without a clock: timers restart at the next `now`.
    restart_timers: bool,
    /// Since when the connection has waited for a request's first byte.
    idle_since: Instant,
    /// When the current head's first byte came (or the previous transaction ended
    /// with its bytes already buffered).
    head_started: Option<Instant>,
    /// When the body last made progress.
    body_progress: Instant,
    /// [`Self::take_for_upgrade`] ran: HTTP is over on this connection.
    upgraded: bool,
}

impl fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConn")
            .field("state", &self.state)
            .field("request", &self.request().map(Request::target))
            .field("rx_buffered", &self.rx_len())
            .field("tx_queued", &self.tx.bytes().len())
            .field("closing", &self.closing)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl ServerConn {
    /// A connection accepted at `now`.
    #[must_use]
    pub fn new(limits: Limits, now: Instant) -> Self {
        // A finalized head must be able to fit in the output buffer.
        let tx_limit = limits.tx_buffer_bytes.max(limits.max_response_head_bytes);
        Self {
            limits,
            rx: Vec::new(),
            rx_start: 0,
            state: Rx::Head,
            scanner: HeadScanner::new(),
            request: Request::new(),
            has_request: false,
            body: BodyDecoder::Length(0),
            expect: Continue::No,
            response: Response::new(limits.max_response_head_bytes),
            tx: TxBuf::new(tx_limit),
            pending: None,
            closing: false,
            peer_closed: false,
            first_request: true,
            restart_timers: false,
            idle_since: now,
            head_started: None,
            body_progress: now,
            upgraded: false,
        }
    }

    // ---- input ----

    /// Hands the connection over to another protocol after the `Event::Head` of
    /// an upgrade request (WebSocket): returns the bytes received after the
    /// head, releases the receive buffer and the staged head (the output buffer
    /// once [`Self::tx`] is drained), and parses nothing more. The request
    /// stays readable through [`Self::request`] for the new protocol's
    /// handshake callbacks.
    pub fn take_for_upgrade(&mut self) -> Vec<u8> {
        let rest = self.rx[self.rx_start..].to_vec();
        self.rx = Vec::new();
        self.rx_start = 0;
        self.state = Rx::Done;
        self.body = BodyDecoder::Length(0);
        self.upgraded = true;
        self.give_back();
        rest
    }

    /// How many bytes [`Self::feed`] takes now; the driver reads no more than this
    /// from the socket. It is 0 once the connection is closing, after the peer's
    /// FIN, after a request that ends the connection, and whenever the receive
    /// buffer (`max_head_bytes`) is full, e.g. with the next pipelined request
    /// while the current response is pending.
    #[must_use]
    pub fn rx_space(&self) -> usize {
        let refuse = match self.state {
            Rx::Closed => true,
            Rx::Done => !self.request.keep_alive() || self.response.must_close(),
            Rx::Head | Rx::Body => false,
        };
        if refuse || self.closing || self.peer_closed {
            0
        } else {
            self.limits.max_head_bytes.saturating_sub(self.rx_len())
        }
    }

    /// Appends up to [`Self::rx_space`] bytes of `data` and returns how many it took.
    pub fn feed(&mut self, data: &[u8], now: Instant) -> usize {
        self.observe(now);
        let n = data.len().min(self.rx_space());
        if n == 0 {
            return 0;
        }
        if self.rx_start == self.rx.len() {
            self.rx.clear();
            self.rx_start = 0;
        } else if self.rx_start > 0 && self.rx.len() + n > self.rx.capacity() {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        // `rx_space` is what the limit allows, whatever the capacity now.
        reserve_within(&mut self.rx, n, self.limits.max_head_bytes);
        self.rx.extend_from_slice(&data[..n]);
        match self.state {
            Rx::Head => {
                self.head_started.get_or_insert(now);
            }
            Rx::Body => self.body_progress = now,
            Rx::Done | Rx::Closed => {}
        }
        n
    }

    /// The peer sent FIN. An idle connection closes at once. Bytes already fed are
    /// still processed: a request they complete is served; a head or body they
    /// leave unfinished is rejected with `400` by [`Self::poll_event`].
    pub fn peer_closed(&mut self, now: Instant) {
        self.observe(now);
        self.peer_closed = true;
        if self.state == Rx::Head && self.rx_len() == 0 {
            self.close_now();
        }
    }

    /// The next event, if any. Body pieces are at most `max_piece` bytes (taken as
    /// at least 1), however the input was split. After `BodyComplete` nothing more
    /// comes until [`Self::finish_response`].
    pub fn poll_event(&mut self, now: Instant, max_piece: usize) -> Option<Event<'_>> {
        self.observe(now);
        if let Some(rejection) = self.pending.take() {
            return Some(Event::Rejected(rejection));
        }
        match self.state {
            Rx::Head => self.poll_head(now),
            Rx::Body => self.poll_body(now, max_piece.max(1)),
            Rx::Done | Rx::Closed => None,
        }
    }

    fn poll_head(&mut self, now: Instant) -> Option<Event<'_>> {
        let buffered = &self.rx[self.rx_start..];
        if buffered.is_empty() {
            if self.peer_closed {
                self.close_now();
            }
            return None;
        }
        let len = match self.scanner.scan(buffered, &self.limits) {
            Ok(Some(len)) => len,
            Ok(None) if self.peer_closed => {
                return Some(self.reject(Rejection::new(400, "connection closed mid-head")));
            }
            Ok(None) => return None,
            Err(rejection) => return Some(self.reject(rejection)),
        };
        let head = &self.rx[self.rx_start..self.rx_start + len];
        if let Err(rejection) = self.request.parse(head, &self.limits) {
            return Some(self.reject(rejection));
        }
        self.rx_start += len;
        self.scanner = HeadScanner::new();
        self.has_request = true;
        self.first_request = false;
        self.head_started = None;
        self.body = if self.request.is_chunked() {
            BodyDecoder::Chunked(Chunked::new(
                self.limits.max_body_bytes,
                self.limits.max_head_bytes,
            ))
        } else {
            BodyDecoder::Length(self.request.content_length().unwrap_or(0))
        };
        self.expect = if self.request.expects_continue() {
            Continue::Pending
        } else {
            Continue::No
        };
        self.body_progress = now;
        self.state = Rx::Body;
        Some(Event::Head)
    }

    fn poll_body(&mut self, now: Instant, max_piece: usize) -> Option<Event<'_>> {
        if self.expect == Continue::Pending {
            // The client waits for this only if it has not sent the body already,
            // and it must not come after the start of a final response.
            if self.rx_len() == 0 && !self.response.started() {
                self.tx.push(CONTINUE);
                self.body_progress = now;
            }
            self.expect = Continue::No;
        }
        let start = self.rx_start;
        let (used, step) = match self.body.decode(&self.rx[start..], max_piece) {
            Ok(found) => found,
            Err(rejection) => return Some(self.reject(rejection)),
        };
        self.rx_start += used;
        if used > 0 {
            self.body_progress = now;
        }
        match step {
            Step::Data(range) => Some(Event::Body(
                &self.rx[start + range.start..start + range.end],
            )),
            Step::Done => {
                self.state = Rx::Done;
                Some(Event::BodyComplete)
            }
            Step::Need if self.peer_closed => {
                Some(self.reject(Rejection::new(400, "connection closed mid-body")))
            }
            Step::Need => None,
        }
    }

    // ---- the current request ----

    /// The current request, from [`Event::Head`] until [`Self::finish_response`].
    #[must_use]
    pub fn request(&self) -> Option<&Request> {
        self.has_request.then_some(&self.request)
    }

    // ---- output ----

    /// Whether the response head has been queued (finalized, or a canned response).
    #[must_use]
    pub fn response_started(&self) -> bool {
        self.response.started()
    }

    /// Starts staging the response head with `status`.
    ///
    /// # Errors
    /// `BadState` without a current request or once a head was begun;
    /// `Invalid` for a status outside `100..=999`; `NoSpace` if
    /// `max_response_head_bytes` cannot hold even the status line.
    pub fn begin_head(&mut self, status: u16) -> Result<(), ResponseError> {
        self.check_request()?;
        self.response.begin(status, self.request.version())
    }

    /// Adds a header to the staged head. A trailing `:` on `name` is dropped.
    ///
    /// # Errors
    /// `BadState` unless a head is being staged; `Invalid` for a name that is not a
    /// token, a value with control characters (CR, LF, NUL…), or
    /// `Content-Length` / `Transfer-Encoding` / `Connection`, which the connection
    /// sets itself; `NoSpace` past `max_response_head_bytes`.
    pub fn add_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), ResponseError> {
        self.check_request()?;
        self.response.add_header(name, value)
    }

    /// Declares the body length; `None` (also the default) means unknown: chunked
    /// for HTTP/1.1, ended by closing the connection for HTTP/1.0.
    ///
    /// # Errors
    /// `BadState` unless a head is being staged.
    pub fn set_content_length(&mut self, len: Option<u64>) -> Result<(), ResponseError> {
        self.check_request()?;
        self.response.set_length(len)
    }

    /// Adds the framing and `Connection` headers and queues the head for sending.
    /// The head says `Connection: close` if the client asked for it or if the
    /// request body has not fully arrived (it will not be read past the response).
    ///
    /// # Errors
    /// `BadState` unless a head is being staged; `NoSpace` if the output buffer
    /// cannot take it now (retry once [`Self::tx`] drains).
    pub fn finalize_head(&mut self) -> Result<(), ResponseError> {
        self.check_request()?;
        let cx = Context {
            version: self.request.version(),
            head_request: self.request.is_head(),
            close: self.closing || !self.request.keep_alive() || !self.body_settles(),
        };
        self.response.finalize(cx, &mut self.tx)
    }

    /// Writes body bytes, all or nothing, and returns `data.len()`. Each write is
    /// one chunk of a chunked body; `fin` marks the last one (the
    /// `LWS_WRITE_HTTP_FINAL` mode) and adds the last chunk. Bytes for a `HEAD`
    /// request are counted but not sent.
    ///
    /// # Errors
    /// `BadState` before the head is finalized or after `fin`; `Invalid` for bytes
    /// past the declared `Content-Length` or on a 1xx/204/304 response; `NoSpace`
    /// if the output buffer cannot take it with its framing (see
    /// [`Self::body_space`]).
    pub fn write_body(&mut self, data: &[u8], fin: bool) -> Result<usize, ResponseError> {
        self.check_request()?;
        self.response.write_body(data, fin, &mut self.tx)
    }

    /// The most body bytes [`Self::write_body`] can take now, framing counted.
    #[must_use]
    pub fn body_space(&self) -> usize {
        if self.has_request {
            self.response.body_space(&self.tx)
        } else {
            0
        }
    }

    /// Ends the transaction (`lws_http_transaction_completed`): terminates a
    /// chunked body, skips what is left of the request body if it is already
    /// buffered, and goes on to the next (maybe pipelined) request. `Close` if the
    /// response or the request body is incomplete, nothing was answered, or either
    /// side asked to close.
    pub fn finish_response(&mut self) -> Completion {
        if !self.has_request {
            return if self.closing {
                Completion::Close
            } else {
                Completion::KeepAlive
            };
        }
        let complete = self.response.finish(&mut self.tx);
        let body_done = self.skip_body();
        self.has_request = false;
        self.response.reset();
        self.expect = Continue::No;
        let peer_gone = self.peer_closed && self.rx_len() == 0;
        if self.closing || !complete || !body_done || !self.request.keep_alive() || peer_gone {
            self.close_now();
            return Completion::Close;
        }
        self.state = Rx::Head;
        self.restart_timers = true;
        self.give_back();
        Completion::KeepAlive
    }

    /// Queues a whole canned response: `status`, `Content-Type: content_type`,
    /// `Content-Length`, the body (cut to `tx_buffer_bytes`; none for `HEAD`), and
    /// `Connection: close` when `close` is true (or the connection must close
    /// anyway). Anything staged is dropped. This may take the output buffer past
    /// its bound once: keep bodies small.
    ///
    /// It ends the response, not the transaction: call [`Self::finish_response`]
    /// after it as after any response. If a response had already started, or
    /// there is no current request, the connection is marked to close instead of
    /// going on.
    pub fn respond_simple(&mut self, status: u16, content_type: &str, body: &[u8], close: bool) {
        if self.response.started() {
            self.close_now();
            return;
        }
        let body = &body[..body.len().min(self.limits.tx_buffer_bytes)];
        let cx = if self.has_request {
            Context {
                version: self.request.version(),
                head_request: self.request.is_head(),
                close: close || self.closing || !self.request.keep_alive() || !self.body_settles(),
            }
        } else {
            Context {
                version: 1,
                head_request: false,
                close: true,
            }
        };
        self.response
            .canned(status, content_type, body, cx, &mut self.tx);
        if cx.close {
            self.close_now();
        }
    }

    /// Room left in the output buffer.
    #[must_use]
    pub fn tx_space(&self) -> usize {
        self.tx.space()
    }

    /// The bytes to send.
    #[must_use]
    pub fn tx(&self) -> &[u8] {
        self.tx.bytes()
    }

    /// `n` bytes of [`Self::tx`] were sent.
    pub fn consume_tx(&mut self, n: usize) {
        self.tx.consume(n);
        self.give_back();
    }

    // ---- lifecycle ----

    /// Enforces the timeouts at `now`: a head or body that is too slow is answered
    /// `408` (reported by the next [`Self::poll_event`] as `Rejected`) and the
    /// connection closes; an idle one just closes. Returns when to call again
    /// (`None`: no timer runs, e.g. while the response is up to the caller).
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        self.observe(now);
        if self.closing {
            return None;
        }
        let (deadline, expired) = match self.state {
            Rx::Head => match self.head_started {
                Some(started) => (
                    started + self.limits.head_timeout,
                    Some(Rejection::new(408, "request head timeout")),
                ),
                None if self.first_request => (self.idle_since + self.limits.head_timeout, None),
                None => (self.idle_since + self.limits.idle_timeout, None),
            },
            // Only while waiting on the peer: buffered bytes wait on the caller.
            Rx::Body if self.rx_len() == 0 && !self.body.is_done() => (
                self.body_progress + self.limits.body_timeout,
                Some(Rejection::new(408, "request body timeout")),
            ),
            Rx::Body | Rx::Done | Rx::Closed => return None,
        };
        if now < deadline {
            return Some(deadline);
        }
        match expired {
            Some(rejection) => {
                self.fail(rejection);
                self.pending = Some(rejection);
            }
            None => self.close_now(),
        }
        None
    }

    /// True when the connection is done: close it once [`Self::tx`] is drained.
    #[must_use]
    pub fn wants_close(&self) -> bool {
        self.closing
    }

    /// True when the connection is done and [`Self::tx`] is drained: drop the socket.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closing && self.tx.is_empty()
    }

    // ---- internals ----

    fn rx_len(&self) -> usize {
        self.rx.len() - self.rx_start
    }

    fn check_request(&self) -> Result<(), ResponseError> {
        if self.has_request {
            Ok(())
        } else {
            Err(ResponseError::BadState)
        }
    }

    /// Starts the timers of a transaction ended by `finish_response`, which has no
    /// `now`, at the first `now` seen after it.
    fn observe(&mut self, now: Instant) {
        if self.restart_timers {
            self.restart_timers = false;
            self.idle_since = now;
            if self.rx_len() > 0 {
                self.head_started = Some(now);
            }
        }
    }

    /// Whether the request body is complete with the bytes already buffered.
    fn body_settles(&self) -> bool {
        match self.state {
            Rx::Done => true,
            Rx::Body => {
                let mut body = self.body;
                let mut input = &self.rx[self.rx_start..];
                loop {
                    match body.decode(input, usize::MAX) {
                        Ok((used, Step::Data(_))) => input = &input[used..],
                        Ok((_, Step::Done)) => return true,
                        Ok((_, Step::Need)) | Err(_) => return false,
                    }
                }
            }
            Rx::Head | Rx::Closed => false,
        }
    }

    /// Consumes the rest of the request body if it is buffered; whether it was.
    fn skip_body(&mut self) -> bool {
        if self.state != Rx::Body {
            return self.state == Rx::Done;
        }
        loop {
            match self.body.decode(&self.rx[self.rx_start..], usize::MAX) {
                Ok((used, Step::Data(_))) => self.rx_start += used,
                Ok((used, Step::Done)) => {
                    self.rx_start += used;
                    self.state = Rx::Done;
                    return true;
                }
                Ok((_, Step::Need)) | Err(_) => return false,
            }
        }
    }

    /// Gives memory back while nothing is in progress. Idle means between
    /// transactions with no pipelined bytes buffered: then each buffer (the
    /// output buffer once drained) keeps at most [`IDLE_KEEP`] bytes, and the
    /// next request grows them again as its bytes come. A transaction in
    /// progress keeps them whole, so a body or a streamed response does not
    /// reallocate piece by piece. After an upgrade nothing is kept but the
    /// request, which stays readable.
    fn give_back(&mut self) {
        if self.upgraded {
            self.tx.give_back(0);
            self.response.give_back(0);
        } else if self.state == Rx::Head && self.rx_len() == 0 {
            release_drained(&mut self.rx, &mut self.rx_start);
            self.tx.give_back(IDLE_KEEP);
            self.response.give_back(IDLE_KEEP);
            self.request.give_back(IDLE_KEEP);
        }
    }

    /// Bytes held by each buffer.
    #[cfg(test)]
    pub(super) fn capacities(&self) -> Capacities {
        Capacities {
            rx: self.rx.capacity(),
            tx: self.tx.capacity(),
            head: self.response.capacity(),
            request: self.request.capacity(),
        }
    }

    fn close_now(&mut self) {
        self.closing = true;
        self.state = Rx::Closed;
    }

    /// Queues the error response (unless one has started) and closes.
    fn fail(&mut self, rejection: Rejection) {
        if !self.response.started() {
            let mut text = [0; 128];
            let n = rejection.reason.len().min(text.len() - 1);
            text[..n].copy_from_slice(&rejection.reason.as_bytes()[..n]);
            text[n] = b'\n';
            let cx = Context {
                version: 1,
                head_request: self.has_request && self.request.is_head(),
                close: true,
            };
            self.response.canned(
                rejection.status,
                "text/plain",
                &text[..=n],
                cx,
                &mut self.tx,
            );
        }
        self.response.abort();
        self.close_now();
    }

    fn reject(&mut self, rejection: Rejection) -> Event<'static> {
        self.fail(rejection);
        Event::Rejected(rejection)
    }
}
