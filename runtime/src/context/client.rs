//! WebSocket client connections: opened by a guest (`lws_client_connect_via_info`)
//! or by the device config at start, connected by the driver, then the
//! handshake, then a client-role session feeding the `CLIENT_*` callbacks.

use std::time::{Duration, Instant};

use super::{Binding, ConnId, Context};
use crate::config::ClientTarget;
use crate::guest::{ConnectRequest, reason};
use crate::ws::{self, Role, Session};

/// Longest a TCP connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest handshake response head we read.
const MAX_RESPONSE_HEAD: usize = 4096;

/// A client connection's progress before its session opens.
#[derive(Debug)]
pub(super) struct ClientState {
    pub target: ClientTarget,
    /// Index into `config.clients`, for reconnecting.
    pub config: Option<usize>,
    /// Failed attempts before this one (the backoff grows with it; an
    /// established connection resets it).
    pub attempt: u32,
    pub phase: Phase,
    pub deadline: Instant,
}

impl ClientState {
    /// The handshake is done; `deadline` no longer applies.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for the driver to connect.
    Connecting,
    /// The request is queued; reading the response head.
    Handshake { accept: String, head: Vec<u8> },
    /// The session runs.
    Open,
}

/// A reconnect waiting for its time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reconnect {
    pub at: Instant,
    pub client: usize,
    pub attempt: u32,
}

impl Context {
    /// Connections the driver should open: (connection, host, port). The
    /// driver answers each with [`connected`](Self::connected) or
    /// [`connect_failed`](Self::connect_failed).
    pub fn take_connects(&mut self) -> Vec<(ConnId, String, u16)> {
        std::mem::take(&mut self.connects)
    }

    /// The driver's TCP connection for `id` is up: send the handshake.
    pub fn connected(&mut self, id: ConnId, now: Instant) {
        self.touch(id);
        let seed = u64::from(id.0) ^ self.now_us(now) as u64;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(client) = conn.client.as_mut() else {
            return;
        };
        let t = &client.target;
        if let Some(options) = t.tls {
            let (address, port) = (t.address.clone(), t.port);
            // As lws: the certificate is checked against (and SNI names) the
            // `Host` when one is given, without its port; else the address.
            let name = t
                .host
                .as_deref()
                .map_or(address.as_str(), strip_port)
                .to_string();
            let session = self
                .client_tls
                .get(self.config.trust.as_ref(), options)
                .and_then(|config| crate::tls::Session::client(config, &name, now));
            match session {
                Ok(session) => {
                    let relaxed = options.relaxations();
                    if !relaxed.is_empty() {
                        tracing::warn!(
                            wsi = id.wsi(),
                            "TLS to {address}:{port} with weakened checks: {}",
                            relaxed.join(", ")
                        );
                    }
                    if let Some(conn) = self.conn_mut(id) {
                        conn.tls = Some(Box::new(session));
                    }
                }
                Err(why) => {
                    self.client_failed(id, &why, now);
                    return;
                }
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(client) = conn.client.as_mut() else {
            return;
        };
        let t = &client.target;
        let host = t
            .host
            .clone()
            .unwrap_or_else(|| format!("{}:{}", t.address, t.port));
        let key = xorshift_key(seed);
        let (request, accept) = ws::client_request(
            &host,
            &t.path,
            t.origin.as_deref(),
            t.ws_protocol.as_deref(),
            key,
        );
        conn.preface = request;
        client.phase = Phase::Handshake {
            accept,
            head: Vec::new(),
        };
        self.mark_dirty(id);
    }

    /// The driver could not connect `id`; `why` says how, in words. The
    /// connection is gone afterwards: the driver need not `close` it.
    pub fn connect_failed(&mut self, id: ConnId, why: &str, now: Instant) {
        self.client_failed(id, why, now);
        self.close(id, now);
    }

    /// Opens the config's client connections (at start).
    pub(super) fn open_config_clients(&mut self, now: Instant) {
        for i in 0..self.config.clients.len() {
            self.open_config_client(i, 0, now);
        }
    }

    fn open_config_client(&mut self, i: usize, attempt: u32, now: Instant) {
        let c = self.config.clients[i].clone();
        let Some(slot) = self.free_slots().next() else {
            tracing::warn!(client = %c.name, "no free connection for the client; retrying later");
            self.schedule_reconnect(i, attempt, now);
            return;
        };
        let id = ConnId::new(slot, self.generations[slot].wrapping_add(1));
        let request = ConnectRequest {
            wsi: id.wsi(),
            target: c.target,
            local_protocol: Some(c.protocol),
        };
        if let Err(why) = self.open_client(&request, None, Some((i, attempt)), now) {
            tracing::warn!(client = %c.name, "cannot open the client connection: {why}");
            self.schedule_reconnect(i, attempt, now);
        }
    }

    /// Opens the client connection `request` asked for (its `wsi` was handed
    /// out already), bound to its local protocol, or `caller`'s.
    pub(super) fn open_client(
        &mut self,
        request: &ConnectRequest,
        caller: Option<usize>,
        config: Option<(usize, u32)>,
        now: Instant,
    ) -> Result<(), String> {
        let id = ConnId(request.wsi as u32);
        let slot = id.index();
        if self.conns.get(slot).is_none_or(Option::is_some) {
            return Err("its connection slot was taken".into());
        }
        let protocol = match &request.local_protocol {
            Some(name) => self
                .protocols
                .iter()
                .position(|p| p.name == *name)
                .ok_or_else(|| format!("no protocol `{name}`"))?,
            None => caller.ok_or("no protocol to call back")?,
        };
        self.generations[slot] = ((id.0 - 1) >> 16) as u16;
        // The driver resolves names; an address given as an IP is known now.
        let ip = request
            .target
            .address
            .parse()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let peer = std::net::SocketAddr::new(ip, request.target.port);
        let mut conn = super::Conn::new(id, usize::MAX, peer, self.config.limits.http, now);
        conn.client = Some(ClientState {
            target: request.target.clone(),
            config: config.map(|(i, _)| i),
            attempt: config.map_or(0, |(_, a)| a),
            phase: Phase::Connecting,
            deadline: now + CONNECT_TIMEOUT,
        });
        self.put_conn(slot, conn);
        self.touch_now(id);
        if let Err((_, why)) = self.bind_protocol(id, protocol, now) {
            self.take_conn(slot);
            return Err(why.into());
        }
        tracing::debug!(
            wsi = id.wsi(),
            "client connection to {}:{}",
            request.target.address,
            request.target.port
        );
        self.connects
            .push((id, request.target.address.clone(), request.target.port));
        Ok(())
    }

    /// Bytes from the server while the handshake is under way.
    pub(super) fn client_handshake_bytes(
        &mut self,
        id: ConnId,
        data: &[u8],
        now: Instant,
    ) -> usize {
        let Some(conn) = self.conn_mut(id) else {
            return 0;
        };
        let Some(ClientState {
            phase: Phase::Handshake { accept, head },
            ..
        }) = conn.client.as_mut()
        else {
            return 0;
        };
        let room = MAX_RESPONSE_HEAD.saturating_sub(head.len());
        let take = data.len().min(room);
        head.extend_from_slice(&data[..take]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(head);
        let end = match parsed {
            Ok(httparse::Status::Complete(end)) => end,
            Ok(httparse::Status::Partial) if take == room => {
                self.client_failed(id, "handshake response head too long", now);
                return take;
            }
            Ok(httparse::Status::Partial) => return take,
            Err(e) => {
                self.client_failed(id, &format!("bad handshake response: {e}"), now);
                return take;
            }
        };
        let code = response.code.unwrap_or(0);
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let problem = if code != 101 {
            Some(format!("handshake rejected with status {code}"))
        } else if header("sec-websocket-accept").as_deref() != Some(accept.as_str()) {
            Some("handshake rejected: wrong Sec-WebSocket-Accept".to_string())
        } else {
            None
        };
        if let Some(why) = problem {
            self.client_failed(id, &why, now);
            return take;
        }
        let rest = head[end..].to_vec();
        let limits = self.config.limits.ws;
        let conn = self.conn_mut(id).expect("checked above");
        let mut session = Session::new(Role::Client, limits, now, u64::from(id.0));
        let fed = session.feed(&rest, now);
        conn.ws_backlog = rest[fed..].to_vec();
        conn.ws = Some(Box::new(session));
        conn.upgraded = true;
        if let Some(client) = conn.client.as_mut() {
            client.phase = Phase::Open;
        }
        tracing::debug!(wsi = id.wsi(), "client connection established");
        self.callback(id, reason::CLIENT_ESTABLISHED, &[], now);
        self.pump_ws(id, now);
        take
    }

    /// The client connection failed before its session opened: tell the
    /// guest, free the slot, maybe reconnect.
    pub(super) fn client_failed(&mut self, id: ConnId, why: &str, now: Instant) {
        tracing::info!(wsi = id.wsi(), "client connection failed: {why}");
        if self.conn(id).is_some_and(|c| c.binding.is_some()) {
            self.callback(id, reason::CLIENT_CONNECTION_ERROR, why.as_bytes(), now);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.ws_closed_delivered = true; // no CLIENT_CLOSED after an error
        conn.hard_close = true;
        let binding: Option<Binding> = conn.binding.take();
        self.mark_dirty(id);
        if let Some(b) = binding {
            self.unbind(b, now);
        }
    }

    /// A client connection is gone: reconnect it if the config says so.
    pub(super) fn client_gone(&mut self, client: &ClientState, now: Instant) {
        if let Some(i) = client.config
            && self.config.clients[i].reconnect
        {
            let attempt = if client.is_open() { 0 } else { client.attempt };
            self.schedule_reconnect(i, attempt, now);
        }
    }

    fn schedule_reconnect(&mut self, client: usize, attempt: u32, now: Instant) {
        if !self.config.clients[client].reconnect {
            return;
        }
        // 1 s doubling to 60 s, with up to a quarter of jitter either way.
        let base = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
        let jitter = xorshift_key(self.now_us(now) as u64 ^ u64::from(attempt))[0] as u64;
        let spread = base.as_millis() as u64 / 4;
        let millis = base.as_millis() as u64 - spread + jitter * 2 * spread / 255;
        self.reconnects.push(Reconnect {
            at: now + Duration::from_millis(millis),
            client,
            attempt: attempt + 1,
        });
        // Scheduled from `close`, after the `service` whose deadline the
        // driver is about to sleep to: it calls `service` again first, and
        // hears the reconnect's time.
        self.wake = true;
    }

    /// Opens the config's clients whose reconnect is due. (A connection's
    /// connect and handshake deadline is one of its own deadlines, in
    /// `Context::conn_deadlines`: a turn of the loop does not look at every
    /// connection for it.)
    pub(super) fn start_reconnects(&mut self, now: Instant) {
        // Allocates only when one is due.
        let due: Vec<Reconnect> = self.reconnects.extract_if(.., |r| r.at <= now).collect();
        for r in due {
            self.open_config_client(r.client, r.attempt, now);
        }
    }

    /// When the next reconnect is due.
    pub(super) fn next_reconnect(&self) -> Option<Instant> {
        self.reconnects.iter().map(|r| r.at).min()
    }
}

/// `host` without a trailing `:port` (`[v6]:port` keeps its address).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

/// 16 pseudo-random bytes from `seed` (xorshift64*): a WebSocket key only
/// needs to differ between connections.
fn xorshift_key(seed: u64) -> [u8; 16] {
    let mut x = seed | 1;
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        chunk.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn the_port_comes_off_a_host_header() {
        assert_eq!(strip_port("sensor.local:8443"), "sensor.local");
        assert_eq!(strip_port("sensor.local"), "sensor.local");
        assert_eq!(strip_port("[fd00::15]:443"), "fd00::15");
        assert_eq!(strip_port("fd00::15"), "fd00::15");
    }
}
