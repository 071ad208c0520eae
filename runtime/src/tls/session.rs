//! One connection's rustls session, between the driver's ciphertext and the
//! layers' plaintext.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{CertificateError, ClientConfig, Connection, Error};
use rustls_pki_types::ServerName;

use super::ServerTls;

/// Ciphertext queued for the driver before no more plaintext is taken from
/// the layer above: one full record and its overhead.
const OUT_HIGH_WATER: usize = 16 * 1024 + 256;
/// Plaintext encrypted at once: one record.
const PLAIN_CHUNK: usize = 16 * 1024;
/// Ciphertext taken from the driver at once.
const RX_CHUNK: usize = 16 * 1024;
/// Decrypted bytes rustls holds at most (its received-plaintext limit).
const PLAINTEXT_LIMIT: usize = 16 * 1024;

/// What a plain-HTTP request on a TLS port gets, before the connection closes.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
    Content-Type: text/plain\r\nContent-Length: 49\r\nConnection: close\r\n\r\n\
    This port speaks HTTPS: use https:// to reach it\n";

/// A connection's TLS session.
#[derive(Debug)]
pub(crate) struct Session {
    conn: Connection,
    /// Ciphertext for the driver. Dropped whenever it drains (see
    /// [`consume_tx`](Self::consume_tx)): an idle session holds none.
    out: Vec<u8>,
    /// Set once the layer above is done and `close_notify` is queued.
    close_sent: bool,
    /// Why the session failed; it takes no more input and closes once `out`
    /// (an alert, or the plain-HTTP answer) is sent.
    failure: Option<String>,
    started: Instant,
    /// Bytes seen from the peer so far (to tell plain HTTP from TLS).
    seen: bool,
    /// Decrypted bytes rustls holds for the layer above.
    plaintext: usize,
    /// The peer sent `close_notify`.
    peer_closed: bool,
    /// [`trim`](Self::trim) ran and nothing arrived since.
    trimmed: bool,
    /// Ciphertext taken from the driver that rustls had no room for yet.
    held: Vec<u8>,
}

impl Session {
    /// The session of a connection accepted on a listener with `tls`; none
    /// on a plain listener.
    pub(crate) fn for_listener(tls: Option<&ServerTls>, now: Instant) -> Option<Box<Self>> {
        let conn = rustls::ServerConnection::new(tls?.config.clone())
            .expect("a checked server config makes connections");
        Some(Box::new(Session::new(conn.into(), now)))
    }

    /// A client session to `name` (a DNS name or an IP address).
    ///
    /// # Errors
    ///
    /// A name that is neither, in words.
    pub(crate) fn client(
        config: Arc<ClientConfig>,
        name: &str,
        now: Instant,
    ) -> Result<Self, String> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        Ok(Session::new(conn.into(), now))
    }

    fn new(conn: Connection, now: Instant) -> Self {
        let mut session = Session {
            conn,
            out: Vec::new(),
            close_sent: false,
            failure: None,
            started: now,
            seen: false,
            plaintext: 0,
            peer_closed: false,
            trimmed: false,
            held: Vec::new(),
        };
        session.flush(); // a client's hello
        session
    }

    /// True while the handshake is under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// When the handshake times out (`timeout` after it began), while it is
    /// under way.
    pub(crate) fn handshake_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.is_handshaking() && self.failure.is_none()).then_some(self.started + timeout)
    }

    /// Why the session failed.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Ends the session for `why`; no more input is taken.
    pub(crate) fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }

    /// The peer ended the session with `close_notify`.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Decrypted bytes waiting for the layer above.
    pub(crate) fn plaintext(&self) -> usize {
        self.plaintext
    }

    /// How much ciphertext [`receive`](Self::receive) takes now: nothing
    /// while decrypted bytes wait for the layer above (back-pressure).
    pub(crate) fn rx_space(&self) -> usize {
        if self.failure.is_some()
            || self.plaintext > 0
            || !self.held.is_empty()
            || !self.conn.wants_read()
        {
            0
        } else {
            RX_CHUNK
        }
    }

    /// Takes ciphertext (all of it, up to [`rx_space`](Self::rx_space)) and
    /// decrypts what it completes. Returns how much was taken; on a failure
    /// the session records why (see [`failure`](Self::failure)) and queues
    /// the alert for the peer.
    pub(crate) fn receive(&mut self, data: &[u8]) -> usize {
        if self.failure.is_some() {
            return 0;
        }
        self.trimmed = false;
        if !self.seen && !data.is_empty() {
            self.seen = true;
            if self.conn.is_handshaking()
                && matches!(self.conn, Connection::Server(_))
                && data[0].is_ascii_uppercase()
            {
                // An HTTP method, not a TLS record (which starts with 0x16):
                // say so in the peer's own language.
                self.out.extend_from_slice(PLAIN_HTTP_ANSWER);
                self.fail("plain HTTP on a TLS port".into());
                return data.len();
            }
        }
        let rest = self.decrypt(data);
        // rustls holds at most 16 KiB of decrypted bytes: what would go past
        // that (a record completed by bytes read before, plus this chunk's)
        // waits here, taken, until the layer above has read some.
        self.held.extend_from_slice(&data[data.len() - rest..]);
        data.len()
    }

    /// Feeds `data` to rustls while it takes it; returns how many bytes it
    /// left (its decrypted-bytes buffer is full).
    fn decrypt(&mut self, mut data: &[u8]) -> usize {
        while !data.is_empty() && self.failure.is_none() {
            if self.plaintext >= PLAINTEXT_LIMIT {
                break;
            }
            match self.conn.read_tls(&mut data) {
                Ok(0) => break, // close_notify seen: the rest is ignored
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Other => break, // full
                Err(e) => {
                    self.fail(format!("TLS: {e}"));
                    break;
                }
            }
            match self.conn.process_new_packets() {
                Ok(state) => {
                    self.plaintext = state.plaintext_bytes_to_read();
                    self.peer_closed |= state.peer_has_closed();
                }
                Err(e) => {
                    self.fail(describe(&e));
                }
            }
        }
        self.flush();
        data.len()
    }

    /// Moves up to `buf.len()` decrypted bytes into `buf`; then decrypts
    /// ciphertext held back for lack of room.
    pub(crate) fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        // An error is "nothing waiting", or a peer gone without close_notify.
        let n = self.conn.reader().read(buf).unwrap_or_default();
        self.plaintext = self.plaintext.saturating_sub(n);
        if !self.held.is_empty() && self.plaintext < PLAINTEXT_LIMIT {
            let held = std::mem::take(&mut self.held);
            let rest = self.decrypt(&held);
            if rest > 0 {
                self.held = held[held.len() - rest..].to_vec();
            }
        }
        n
    }

    /// True when [`write_plaintext`](Self::write_plaintext) takes bytes now.
    pub(crate) fn wants_plaintext(&self) -> bool {
        self.failure.is_none()
            && !self.close_sent
            && !self.conn.is_handshaking()
            && self.out.len() < OUT_HIGH_WATER
    }

    /// Encrypts the first bytes of `data` (while
    /// [`wants_plaintext`](Self::wants_plaintext)). Returns how many.
    pub(crate) fn write_plaintext(&mut self, data: &[u8]) -> usize {
        if !self.wants_plaintext() {
            return 0;
        }
        let n = self
            .conn
            .writer()
            .write(&data[..data.len().min(PLAIN_CHUNK)])
            .unwrap_or(0);
        self.flush();
        n
    }

    /// The layer above is done: queue `close_notify` (once).
    pub(crate) fn close(&mut self) {
        if !self.close_sent && self.failure.is_none() {
            self.close_sent = true;
            self.conn.send_close_notify();
            self.flush();
        }
    }

    /// True once `close_notify` is queued.
    pub(crate) fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Ciphertext for the driver.
    pub(crate) fn tx(&self) -> &[u8] {
        &self.out
    }

    /// The driver sent `n` bytes of [`tx`](Self::tx).
    pub(crate) fn consume_tx(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
        if self.out.is_empty() {
            self.flush();
            // Drained: give the memory back, whatever its size. Encrypting the
            // next record costs far more than allocating its buffer again.
            if self.out.is_empty() {
                self.out = Vec::new();
            }
        }
    }

    /// Gives back what an idle session does not need: rustls keeps its
    /// receive buffer at the size of the largest record until its next read,
    /// and a read that finds nothing lets it shrink.
    pub(crate) fn trim(&mut self) {
        if self.plaintext == 0 && self.failure.is_none() && self.conn.wants_read() {
            let _ = self.conn.read_tls(&mut Nothing);
        }
        self.trimmed = true;
    }

    /// True when [`trim`](Self::trim) ran and nothing arrived since.
    pub(crate) fn trimmed(&self) -> bool {
        self.trimmed
    }

    fn flush(&mut self) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }
}

/// A reader with nothing to read yet.
struct Nothing;

impl Read for Nothing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// A TLS failure in words, as logs and `CLIENT_CONNECTION_ERROR` give it.
pub(crate) fn describe(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "TLS: unknown issuer: the certificate is not signed by a trusted CA".into()
            }
            CertificateError::NotValidForName => {
                "TLS: name mismatch: the certificate is for another name".into()
            }
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "TLS: name mismatch: the certificate is not valid for `{}` (it names {})",
                expected.to_str(),
                if presented.is_empty() {
                    "nothing".to_string()
                } else {
                    presented.join(", ")
                }
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: certificate not valid yet (is the device clock right?)".into()
            }
            CertificateError::BadSignature => "TLS: certificate has a bad signature".into(),
            other => format!("TLS: certificate rejected: {other:?}"),
        },
        Error::AlertReceived(alert) => {
            format!("TLS: handshake failure: the peer sent alert `{alert:?}`")
        }
        Error::NoApplicationProtocol => {
            "TLS: handshake failure: no common application protocol (ALPN)".into()
        }
        Error::InvalidMessage(_) => {
            format!("TLS: handshake failure: not TLS, or a corrupt record ({e})")
        }
        other => format!("TLS: handshake failure: {other}"),
    }
}
