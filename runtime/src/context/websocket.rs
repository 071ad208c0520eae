//! WebSocket connections inside the context: the upgrade from HTTP, the
//! session's events turned into guest callbacks, and what a callback's outcome
//! means for the session (close reason, flow control, faults).

use std::time::Instant;

use super::{Backend, Binding, ConnId, Context};
use crate::config::OnTrap;
use crate::guest::{Fault, Fragment, reason};
use crate::http::ServerConn;
use crate::ws::{self, Event, Role, Session};

/// How long a client waits for the server to close TCP after the close
/// handshake before closing it itself.
const CLIENT_TCP_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Context {
    /// Answers an upgrade the device will not take, and closes.
    fn refuse_upgrade(&mut self, id: ConnId, status: u16, why: &str, extra: Option<(&str, &str)>) {
        tracing::info!(wsi = id.wsi(), status, "WebSocket upgrade refused: {why}");
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let phrase = match status {
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            426 => "Upgrade Required",
            _ => "Service Unavailable",
        };
        let extra = extra.map_or(String::new(), |(k, v)| format!("{k}: {v}\r\n"));
        let body = format!("{why}\n");
        // Answers to earlier pipelined requests go first.
        conn.preface = take_http_tx(conn);
        let refusal = format!(
            "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             {extra}Connection: close\r\n\r\n{body}",
            body.len()
        );
        conn.preface.extend_from_slice(refusal.as_bytes());
        conn.abort = true;
        conn.writable = false;
    }

    /// The request head asks for a WebSocket: pick the protocol, let the guest
    /// filter it, answer `101` and hand the connection to a session.
    pub(super) fn ws_upgrade(&mut self, id: ConnId, now: Instant) {
        let conn = self.conn(id).expect("caller checked");
        let listener = &self.config.listeners[conn.listener];
        let offered: Vec<&str> = listener.websocket.iter().map(String::as_str).collect();
        let req = conn
            .http
            .as_deref()
            .and_then(ServerConn::request)
            .expect("head");
        if req.body_expected() {
            self.refuse_upgrade(id, 400, "an upgrade request carries no body", None);
            return;
        }
        let accepted = match ws::accept(req, &offered, listener.default_websocket.as_deref()) {
            Ok(a) => a,
            Err(r) => {
                self.refuse_upgrade(id, r.status, r.reason, r.extra_header);
                return;
            }
        };
        let Some(p) = self
            .protocols
            .iter()
            .position(|x| x.name == accepted.protocol)
        else {
            self.refuse_upgrade(id, 404, "no such protocol", None);
            return;
        };
        if let Err((status, why)) = self.bind_protocol(id, p, now) {
            self.refuse_upgrade(id, status, why, None);
            return;
        }
        self.callback(
            id,
            reason::FILTER_PROTOCOL_CONNECTION,
            accepted.protocol.as_bytes(),
            now,
        );
        let conn = self.conn_mut(id).expect("still open");
        let answered = conn.http.as_ref().is_some_and(|h| h.response_started());
        if conn.abort || conn.binding.is_none() || answered {
            let binding = conn.binding.take();
            if answered {
                // The guest answered (or trapped and got its 500): nothing more.
                conn.abort = true;
            } else {
                conn.abort = false;
                self.refuse_upgrade(id, 403, "the protocol refused the connection", None);
            }
            if let Some(b) = binding {
                self.unbind(b, now);
            }
            return;
        }
        let limits = self.config.limits.ws;
        let conn = self.conn_mut(id).expect("still open");
        let leftover = conn
            .http
            .as_deref_mut()
            .map(ServerConn::take_for_upgrade)
            .unwrap_or_default();
        let mut session = Session::new(Role::Server, limits, now, id.wsi() as u64);
        let taken = session.feed(&leftover, now);
        conn.ws_backlog = leftover[taken..].to_vec();
        conn.preface = take_http_tx(conn);
        conn.preface.extend_from_slice(&accepted.response);
        conn.ws = Some(Box::new(session));
        conn.upgraded = true;
        if conn.peer_fin {
            // The FIN came before the upgrade was answered (it was pipelined
            // behind a request): `pump_ws` passes it on, and the session
            // gets the FIN's deadline.
            conn.end_ws_by(now + limits.close_timeout);
        }
        tracing::debug!(wsi = id.wsi(), protocol = %accepted.protocol, "WebSocket established");
        self.callback(id, reason::ESTABLISHED, &[], now);
        self.pump_ws(id, now);
    }

    /// Binds connection `id` to protocol `p`: its current instance (created if
    /// needed) and a zeroed session slot.
    pub(super) fn bind_protocol(
        &mut self,
        id: ConnId,
        p: usize,
        now: Instant,
    ) -> Result<(), (u16, &'static str)> {
        let Some(instance) = self.instance_for(p, now) else {
            return Err((503, "protocol unavailable"));
        };
        let slot = match &mut self.protocols[p].backend {
            Backend::Wasm { instances, .. } => {
                let inst = instances[instance].as_mut().expect("live instance");
                inst.bind()
                    .ok_or((503, "all sessions of this protocol are busy"))?
            }
            Backend::Native(_) => 0,
        };
        let conn = self.conn_mut(id).expect("caller checked");
        conn.binding = Some(Binding {
            protocol: p,
            instance,
            slot,
        });
        Ok(())
    }

    /// Turns every event the session has ready into callbacks.
    pub(super) fn pump_ws(&mut self, id: ConnId, now: Instant) {
        loop {
            let piece = self.rx_piece(id);
            let Some(conn) = self.conns[id.index()].as_mut().filter(|c| c.id == id) else {
                return;
            };
            let conn_reasons = conn.ws_reasons();
            let Some(ws) = conn.ws.as_mut() else {
                return;
            };
            if !conn.ws_backlog.is_empty() {
                // Frames that came with the upgrade request, as room allows.
                let taken = ws.feed(&conn.ws_backlog, now);
                conn.ws_backlog.drain(..taken);
            }
            if conn.peer_fin && conn.ws_backlog.is_empty() && !ws.peer_fin() {
                // The FIN came behind the backlog (or before the upgrade).
                ws.peer_closed(now);
            }
            let Some(event) = ws.poll_event(now, piece) else {
                if ws.input_done() && !conn.writable {
                    // The peer sent FIN, all it sent before is handled, and
                    // the guest asks for no `WRITEABLE` to send more: the
                    // session ends (1006, `CLOSED`, the next event) once what
                    // is queued has gone out.
                    ws.drop_input();
                    continue;
                }
                return;
            };
            let (why, fragment) = match event {
                Event::Data {
                    data,
                    first,
                    last,
                    binary,
                    remaining,
                } => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(data);
                    let fragment = Fragment {
                        first,
                        last,
                        binary,
                        remaining,
                        more: ws.has_buffered(),
                    };
                    (conn_reasons.0, fragment)
                }
                Event::Pong(payload) => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(payload);
                    (conn_reasons.1, Fragment::default())
                }
                Event::PeerClose { payload } => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(payload);
                    (reason::WS_PEER_INITIATED_CLOSE, Fragment::default())
                }
                Event::Closed { code } => {
                    tracing::debug!(wsi = id.wsi(), code, "WebSocket closed");
                    let conn = self.conn_mut(id).expect("still open");
                    if conn.client.is_some() && !conn.peer_fin {
                        // RFC 6455 7.1.1: the client waits for the server to
                        // close TCP (briefly); CLIENT_CLOSED comes with it.
                        conn.client_linger = Some(now + CLIENT_TCP_CLOSE_WAIT);
                    } else {
                        self.ws_deliver_closed(id, now);
                    }
                    continue;
                }
                Event::Failed { code, reason } => {
                    tracing::info!(wsi = id.wsi(), code, "WebSocket peer error: {reason}");
                    continue;
                }
            };
            self.fragment = fragment;
            let input = std::mem::take(&mut self.scratch);
            self.callback(id, why, &input, now);
            self.scratch = input;
            self.mark_dirty(id);
        }
    }

    /// The largest piece the bound guest takes at once.
    pub(super) fn rx_piece(&self, id: ConnId) -> usize {
        const FALLBACK: usize = 4096;
        let Some(b) = self.conn(id).and_then(|c| c.binding) else {
            return FALLBACK;
        };
        match &self.protocols[b.protocol].backend {
            Backend::Wasm { instances, .. } => instances[b.instance]
                .as_ref()
                .map_or(FALLBACK, |i| i.descriptor().rx_buffer_size as usize),
            Backend::Native(_) => FALLBACK,
        }
    }

    /// Gives the guest its `CLOSED` (once) and frees the session slot.
    pub(super) fn ws_deliver_closed(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.upgraded || conn.ws_closed_delivered {
            return;
        }
        conn.ws_closed_delivered = true;
        conn.writable = false;
        conn.timer = None;
        if conn.binding.is_some() {
            let closed = conn.ws_reasons().3;
            self.callback(id, closed, &[], now);
        }
        if let Some(b) = self.conn_mut(id).and_then(|c| c.binding.take()) {
            self.unbind(b, now);
        }
    }

    /// Timers and writeable callbacks of a WebSocket connection. Returns the
    /// deadlines it wants.
    pub(super) fn ws_service(&mut self, id: ConnId, now: Instant) -> [Option<Instant>; 6] {
        let mut due = [None; 6];
        if let Some(conn) = self.conn_mut(id)
            && let Some(by) = conn.client_linger
        {
            if now >= by {
                conn.client_linger = None;
                conn.hard_close = true;
                self.mark_dirty(id);
            } else {
                due[4] = Some(by);
            }
        }
        if let Some(conn) = self.conn_mut(id)
            && let Some(by) = conn.drain_by
        {
            if now >= by {
                conn.drain_by = None;
                conn.writable = false;
                let peer_gone = conn.peer_fin;
                // (A session that ended meanwhile only drains its output.)
                if let Some(ws) = conn.ws.as_mut().filter(|w| !w.is_closed()) {
                    if peer_gone {
                        tracing::info!(
                            wsi = id.wsi(),
                            "the peer closed and the close timeout passed: ending the session, \
                             dropping what it sent that was not taken"
                        );
                        ws.drop_input();
                    } else {
                        tracing::info!(wsi = id.wsi(), "closing a connection of a replaced module");
                        ws.close(1001, b"module replaced");
                    }
                }
                self.mark_dirty(id);
            } else {
                due[3] = Some(by);
            }
        }
        // Bytes held back since the upgrade go in first: a protocol error in
        // them queues a close frame and starts the close timer, both of which
        // must be seen below.
        let before = self
            .conn(id)
            .and_then(|c| c.ws.as_ref())
            .map(|w| w.tx().len());
        self.pump_ws(id, now);
        if let Some(ws) = self.conn_mut(id).and_then(|c| c.ws.as_mut()) {
            due[0] = ws.poll_timeout(now);
            due[5] = ws.trim_when_quiet(now, super::TRIM_AFTER);
            if Some(ws.tx().len()) != before || ws.is_closed() {
                self.mark_dirty(id);
            }
        }
        due[1] = self.writeable(id, now);
        due[2] = self.check_stall(id, now);
        due
    }

    /// Applies a WebSocket callback's result.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the pieces come apart in `callback`"
    )]
    pub(super) fn ws_outcome(
        &mut self,
        id: ConnId,
        b: Binding,
        why: i32,
        result: Result<i32, Fault>,
        close_reason: Option<(u16, Vec<u8>)>,
        on_trap: OnTrap,
        now: Instant,
    ) {
        match result {
            Ok(0) => {}
            Ok(_) if why == reason::CLOSED || why == reason::CLIENT_CLOSED => {}
            Ok(n) => {
                let (code, text) = close_reason.unwrap_or((1000, Vec::new()));
                tracing::debug!(wsi = id.wsi(), code, "callback {why} returned {n}: closing");
                if let Some(conn) = self.conn_mut(id) {
                    conn.writable = false;
                    if let Some(ws) = conn.ws.as_mut() {
                        ws.close(code, &text);
                    }
                }
            }
            Err(fault) => {
                self.fault_retires(b, id, why, &fault, on_trap);
                if let Some(conn) = self.conn_mut(id) {
                    conn.writable = false;
                    conn.ws_closed_delivered = true; // the faulted instance gets no more calls
                    conn.binding = None;
                    conn.timer = None;
                    if let Some(ws) = conn.ws.as_mut() {
                        ws.close(1011, b"guest module failed");
                    }
                }
                self.unbind(b, now);
            }
        }
    }

    /// `lws_callback_on_writable_all_protocol`: every WebSocket of protocol `p`.
    pub(super) fn writable_all(&mut self, p: usize) {
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            if conn.upgraded && conn.binding.is_some_and(|b| b.protocol == p) {
                conn.writable = true;
                let id = conn.id;
                self.touch_now(id);
            }
        }
    }
}

/// The HTTP bytes still queued on `conn` (answers to earlier pipelined
/// requests), taken out so they go before anything else.
fn take_http_tx(conn: &mut super::Conn) -> Vec<u8> {
    let Some(http) = conn.http.as_mut() else {
        return Vec::new();
    };
    let queued = http.tx().to_vec();
    http.consume_tx(queued.len());
    queued
}
