//! The lws port's WebSocket client example (ESP-IDF's `echo-protocol` client),
//! as a guest on the lws-shaped layer: one protocol callback with lws's
//! `CLIENT_*` reasons, ported case by case. Protocol `echo-protocol` is the
//! local protocol of a client connection the device opens: on
//! `LWS_CALLBACK_CLIENT_ESTABLISHED` it sends the text `Hello, server!` (from
//! `CLIENT_WRITEABLE` if the tx buffer cannot take it at once), and it logs
//! every message it receives as one line, `Received: <text>` (the first 100
//! bytes, with the length when the message is longer) or `Received: N bytes of
//! binary`, however many pieces the message arrived in. Connection errors
//! (`Connection error: connection refused`...) and closes are logged too.
//!
//! Run it: in the device config, `[[protocol]] name = "echo-protocol" module =
//! "builtin:ws-client"` and a connection for it to make:
//!
//! ```toml
//! [[client]]
//! name = "echo"
//! protocol = "echo-protocol"
//! address = "127.0.0.1"
//! port = 7681
//! path = "/"
//! ws_protocol = "echo-protocol"
//! reconnect = true
//! ```
//!
//! then start any echo server there (`shared/peers/lws-echo.c`, or `python3 -m
//! websockets` in server mode) and watch the simulator's log for `Received:
//! Hello, server!`. `tests/ws_client.rs` drives it against a tungstenite server.
//!
//! Corners cut: the greeting is sent once per connection and nothing else is
//! ever sent (the lws example's console input is not there); received data is
//! logged, not kept; reconnecting is the device config's `reconnect = true`,
//! not the guest's own; no `Origin` or subprotocol check on the server's answer.

#![no_std]
// The export (and so the callback) exists only on wasm32; host builds run the tests.
#![cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "exported only on wasm32")
)]

use wasmgate_guest::lws::{
    Error, Reason, WriteMode, Wsi, lws_callback_on_writable, lws_frame_is_binary,
    lws_is_final_fragment, lws_is_first_fragment, lws_write,
};
use wasmgate_guest::{Lossy, lwsl_err, lwsl_user};

/// What the client says once connected.
const GREETING: &str = "Hello, server!";
/// Bytes of a text message shown in its log line; with the prefix and the
/// length this stays well under the 256-byte log line.
const PREVIEW: usize = 100;

/// Per-session data: the greeting's state and the message being received.
#[derive(Clone, Copy)]
struct Pss {
    /// `Hello, server!` was sent on this connection.
    greeted: bool,
    /// The message being received is binary.
    binary: bool,
    /// Its bytes so far.
    received: u32,
    /// Its first [`PREVIEW`] bytes, for the log line.
    preview: [u8; PREVIEW],
    preview_len: u8,
}

impl Default for Pss {
    fn default() -> Self {
        Self {
            greeted: false,
            binary: false,
            received: 0,
            preview: [0; PREVIEW],
            preview_len: 0,
        }
    }
}

impl Pss {
    /// Takes one received piece; `first` starts a new message.
    fn take(&mut self, piece: &[u8], first: bool, binary: bool) {
        if first {
            self.binary = binary;
            self.received = 0;
            self.preview_len = 0;
        }
        self.received = self
            .received
            .saturating_add(u32::try_from(piece.len()).unwrap_or(u32::MAX));
        let room = self
            .preview
            .get_mut(usize::from(self.preview_len)..)
            .unwrap_or_default();
        let n = room.len().min(piece.len());
        // Equal lengths by construction: one `memory.copy`, no panic path.
        if let (Some(dst), Some(src)) = (room.get_mut(..n), piece.get(..n)) {
            dst.copy_from_slice(src);
            self.preview_len += n as u8;
        }
    }

    /// The kept start of the message, without a character cut at its end.
    fn preview(&self) -> &[u8] {
        let kept = self
            .preview
            .get(..usize::from(self.preview_len))
            .unwrap_or_default();
        match core::str::from_utf8(kept) {
            // Only the last character is cut (`error_len` is None): drop it.
            Err(e) if e.error_len().is_none() => kept.get(..e.valid_up_to()).unwrap_or_default(),
            _ => kept,
        }
    }

    /// Logs the message whose last piece has just arrived.
    fn log_message(&self) {
        if self.binary {
            lwsl_user!("Received: {} bytes of binary", self.received);
        } else if self.received > u32::from(self.preview_len) {
            lwsl_user!(
                "Received: {}... ({} bytes)",
                Lossy(self.preview()),
                self.received
            );
        } else {
            lwsl_user!("Received: {}", Lossy(self.preview()));
        }
    }
}

/// Sends the greeting; on a full tx buffer, asks for `CLIENT_WRITEABLE` to try
/// again. Returns what the callback returns.
fn greet(wsi: Wsi, pss: &mut Pss) -> i32 {
    if pss.greeted {
        return 0;
    }
    match lws_write(wsi, GREETING.as_bytes(), WriteMode::TEXT) {
        Ok(_) => {
            pss.greeted = true;
            0
        }
        Err(Error::NoSpace) => match lws_callback_on_writable(wsi) {
            Ok(()) => 0,
            Err(_) => -1,
        },
        Err(e) => {
            lwsl_err!("Cannot send the greeting: {}", e);
            -1
        }
    }
}

/// `LWS_CALLBACK_CLIENT_RECEIVE`: one piece of a message.
fn receive(wsi: Wsi, pss: &mut Pss, piece: &[u8]) -> i32 {
    let (Ok(first), Ok(last), Ok(binary)) = (
        lws_is_first_fragment(wsi),
        lws_is_final_fragment(wsi),
        lws_frame_is_binary(wsi),
    ) else {
        return -1;
    };
    pss.take(piece, first, binary);
    if last {
        pss.log_message();
    }
    0
}

/// The protocol callback, as lws's `callback_echo` in the C example.
fn callback_echo(wsi: Wsi, reason: Reason, user: Option<&mut Pss>, input: &[u8]) -> i32 {
    match (reason, user) {
        (Reason::ClientEstablished, Some(pss)) => {
            lwsl_user!("Connected to server");
            greet(wsi, pss)
        }
        (Reason::ClientWriteable, Some(pss)) => greet(wsi, pss),
        (Reason::ClientReceive, Some(pss)) => receive(wsi, pss, input),
        (Reason::ClientConnectionError, _) => {
            lwsl_err!("Connection error: {}", Lossy(input));
            0
        }
        (Reason::WsPeerInitiatedClose, _) => {
            let code = match input {
                [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                _ => 1005,
            };
            lwsl_user!("Server closes the connection (code {})", code);
            0
        }
        (Reason::ClientClosed, _) => {
            lwsl_user!("Connection closed");
            0
        }
        // Connection events always name a session; PROTOCOL_INIT and the rest: nothing to do.
        (Reason::ClientEstablished | Reason::ClientWriteable | Reason::ClientReceive, None) => -1,
        _ => 0,
    }
}

wasmgate_guest::export_lws_callback!(
    callback_echo,
    name = "echo-protocol",
    rx_buffer_size = 1024,
    session = Pss,
    max_sessions = 4,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_text_message_is_kept_whole() {
        let mut pss = Pss::default();
        pss.take(b"Hello", true, false);
        pss.take(b", client", false, false);
        assert_eq!(pss.preview(), b"Hello, client");
        assert_eq!(pss.received, 13);
        assert!(!pss.binary);
    }

    #[test]
    fn a_long_message_keeps_its_start_and_counts_the_rest() {
        let mut pss = Pss::default();
        for i in 0..1024 {
            pss.take(&[b'x'; 1024], i == 0, true);
        }
        assert_eq!(pss.received, 1024 * 1024);
        assert_eq!(pss.preview().len(), PREVIEW);
        assert!(pss.binary);
        pss.take(b"next", true, false);
        assert_eq!(pss.preview(), b"next", "a new message starts afresh");
        assert_eq!(pss.received, 4);
    }

    #[test]
    fn a_character_cut_by_the_preview_is_dropped() {
        let mut pss = Pss::default();
        let mut text = [b'a'; PREVIEW + 10];
        // "é" (2 bytes) across the preview's end.
        text[PREVIEW - 1] = 0xc3;
        text[PREVIEW] = 0xa9;
        pss.take(&text, true, false);
        assert_eq!(pss.preview().len(), PREVIEW - 1);
        assert!(core::str::from_utf8(pss.preview()).is_ok());
    }

    #[test]
    fn off_wasm_the_callback_fails_where_a_host_call_is_needed() {
        let wsi = Wsi::from_raw(3);
        let mut pss = Pss::default();
        assert_eq!(
            callback_echo(wsi, Reason::ClientEstablished, Some(&mut pss), b""),
            -1,
            "the greeting cannot be sent without a host"
        );
        assert!(!pss.greeted);
        assert_eq!(
            callback_echo(wsi, Reason::ClientReceive, Some(&mut pss), b"x"),
            -1
        );
        let refused = callback_echo(
            wsi,
            Reason::ClientConnectionError,
            None,
            b"connection refused",
        );
        assert_eq!(refused, 0);
        assert_eq!(
            callback_echo(wsi, Reason::ClientClosed, Some(&mut pss), b""),
            0
        );
        assert_eq!(callback_echo(wsi, Reason::ClientWriteable, None, b""), -1);
        pss.greeted = true;
        assert_eq!(
            callback_echo(wsi, Reason::ClientWriteable, Some(&mut pss), b""),
            0,
            "greeted once only"
        );
    }
}
