//! Built without the `tls` feature: the TLS types exist so that configs and
//! the context read the same, but none can be made, so every connection is
//! plain and the code that handles TLS sessions is unreachable.

use std::sync::Arc;
use std::time::Instant;

use super::{ClientTlsOptions, Identity, TlsConfigError};

const DISABLED: &str = "this runtime was built without TLS (the `tls` feature)";

/// A TLS listener's certificates; cannot be made without the `tls` feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTls {}

impl ServerTls {
    /// Always fails: TLS is not built in.
    ///
    /// # Errors
    ///
    /// Always.
    pub fn from_pem(_: &[Identity<'_>]) -> Result<Self, TlsConfigError> {
        Err(TlsConfigError(DISABLED.into()))
    }

    /// How many certificates the listener chooses from.
    pub fn certificates(&self) -> usize {
        match *self {}
    }
}

/// CA certificates for client connections; cannot be made without the `tls`
/// feature.
#[derive(Debug, Clone)]
pub enum TrustAnchors {}

impl TrustAnchors {
    /// Always fails: TLS is not built in.
    ///
    /// # Errors
    ///
    /// Always.
    pub fn from_pem(_: &[u8]) -> Result<Self, TlsConfigError> {
        Err(TlsConfigError(DISABLED.into()))
    }

    /// How many CA certificates the bundle holds.
    pub fn len(&self) -> usize {
        match *self {}
    }

    /// True for a bundle without certificates.
    pub fn is_empty(&self) -> bool {
        match *self {}
    }
}

/// Stands for the rustls client configs (made like them, with `default()`).
#[derive(Debug, Default)]
pub(crate) struct ClientConfigs {
    _none: (),
}

/// No client config exists.
#[derive(Debug)]
pub(crate) enum NoConfig {}

impl ClientConfigs {
    pub(crate) fn get(
        &mut self,
        _: Option<&TrustAnchors>,
        _: ClientTlsOptions,
    ) -> Result<Arc<NoConfig>, String> {
        Err(DISABLED.into())
    }
}

/// A TLS session; none exists without the `tls` feature.
#[derive(Debug)]
pub(crate) enum Session {}

#[allow(clippy::unused_self)]
impl Session {
    pub(crate) fn for_listener(tls: Option<&ServerTls>, _: Instant) -> Option<Box<Self>> {
        tls.map(|tls| match *tls {})
    }
    pub(crate) fn client(config: Arc<NoConfig>, _: &str, _: Instant) -> Result<Self, String> {
        match *config {}
    }
    pub(crate) fn is_handshaking(&self) -> bool {
        match *self {}
    }
    pub(crate) fn handshake_deadline(&self, _: std::time::Duration) -> Option<Instant> {
        match *self {}
    }
    pub(crate) fn failure(&self) -> Option<&str> {
        match *self {}
    }
    pub(crate) fn fail(&mut self, _: String) {
        match *self {}
    }
    pub(crate) fn peer_closed(&self) -> bool {
        match *self {}
    }
    pub(crate) fn plaintext(&self) -> usize {
        match *self {}
    }
    pub(crate) fn rx_space(&self) -> usize {
        match *self {}
    }
    pub(crate) fn receive(&mut self, _: &[u8]) -> usize {
        match *self {}
    }
    pub(crate) fn read_plaintext(&mut self, _: &mut [u8]) -> usize {
        match *self {}
    }
    pub(crate) fn wants_plaintext(&self) -> bool {
        match *self {}
    }
    pub(crate) fn write_plaintext(&mut self, _: &[u8]) -> usize {
        match *self {}
    }
    pub(crate) fn close(&mut self) {
        match *self {}
    }
    pub(crate) fn close_sent(&self) -> bool {
        match *self {}
    }
    pub(crate) fn tx(&self) -> &[u8] {
        match *self {}
    }
    pub(crate) fn consume_tx(&mut self, _: usize) {
        match *self {}
    }
    pub(crate) fn trim(&mut self) {
        match *self {}
    }
    pub(crate) fn trimmed(&self) -> bool {
        match *self {}
    }
}
