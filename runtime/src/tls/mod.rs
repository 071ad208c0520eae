//! TLS between the driver and the HTTP/WebSocket layers: one rustls session
//! per encrypted connection, sans-IO like everything above the driver. The
//! driver moves ciphertext; the layers above see plaintext and learn that a
//! connection is encrypted only through [`Context::is_tls`](crate::Context::is_tls).
//!
//! Certificates, keys and CA bundles come from PEM bytes in memory (lws's
//! `server_ssl_cert_mem`, `server_ssl_private_key_mem`, `client_ssl_ca_mem`).
//! Built without the `tls` feature, [`ServerTls`] and [`TrustAnchors`] cannot
//! be made and every connection is plain.

#[cfg(feature = "tls")]
mod config;
#[cfg(not(feature = "tls"))]
mod disabled;
#[cfg(feature = "tls")]
mod session;
#[cfg(feature = "tls")]
mod verify;

#[cfg(feature = "tls")]
pub(crate) use config::ClientConfigs;
#[cfg(feature = "tls")]
pub use config::{ServerTls, TrustAnchors};
#[cfg(not(feature = "tls"))]
pub(crate) use disabled::{ClientConfigs, Session};
#[cfg(not(feature = "tls"))]
pub use disabled::{ServerTls, TrustAnchors};
#[cfg(feature = "tls")]
pub(crate) use session::Session;

use std::time::Duration;

/// True when the runtime was built with TLS (the `tls` cargo feature).
pub const ENABLED: bool = cfg!(feature = "tls");

/// Longest a TLS handshake may take before the connection is closed, by
/// default ([`Limits::tls_handshake_timeout`](crate::config::Limits)).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `LCCSCF_USE_SSL`: connect with TLS (`wss://`).
pub const LCCSCF_USE_SSL: u32 = 1 << 0;
/// `LCCSCF_ALLOW_SELFSIGNED`: accept a server certificate that signs itself.
pub const LCCSCF_ALLOW_SELFSIGNED: u32 = 1 << 1;
/// `LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK`: accept a certificate issued for
/// another name.
pub const LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK: u32 = 1 << 2;

/// How a TLS client connection checks the server's certificate. The default
/// checks everything; each escape hatch applies to the one connection that
/// asks for it and is logged as a warning when that connection is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClientTlsOptions {
    /// Accept a self-signed server certificate (`LCCSCF_ALLOW_SELFSIGNED`).
    /// Its validity dates and name are still checked.
    pub allow_self_signed: bool,
    /// Accept a certificate for another name
    /// (`LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK`). The chain is still checked.
    pub skip_hostname_check: bool,
}

impl ClientTlsOptions {
    /// The options lws's `ssl_connection` flags ask for: `None` for a plain
    /// connection.
    ///
    /// # Errors
    ///
    /// A flag this runtime does not implement (such as `LCCSCF_ALLOW_EXPIRED`),
    /// or an escape hatch without `LCCSCF_USE_SSL`.
    pub fn from_lccscf(flags: u32) -> Result<Option<Self>, String> {
        let known =
            LCCSCF_USE_SSL | LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
        if flags & !known != 0 {
            return Err(format!(
                "unsupported ssl_connection flags {:#x}",
                flags & !known
            ));
        }
        if flags & LCCSCF_USE_SSL == 0 {
            return if flags == 0 {
                Ok(None)
            } else {
                Err("ssl_connection flags without LCCSCF_USE_SSL".into())
            };
        }
        Ok(Some(Self {
            allow_self_signed: flags & LCCSCF_ALLOW_SELFSIGNED != 0,
            skip_hostname_check: flags & LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK != 0,
        }))
    }

    /// The escape hatches in use, in words (empty: full verification).
    pub fn relaxations(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.allow_self_signed {
            out.push("self-signed certificates allowed");
        }
        if self.skip_hostname_check {
            out.push("certificate name not checked");
        }
        out
    }

    /// A small index for caching one rustls config per combination.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    fn index(self) -> usize {
        usize::from(self.allow_self_signed) | usize::from(self.skip_hostname_check) << 1
    }
}

/// A certificate, key or CA bundle that cannot be used, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError(pub String);

impl std::fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsConfigError {}

/// One certificate chain and its private key, as PEM text.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The certificate chain, end-entity certificate first.
    pub chain_pem: &'a [u8],
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lccscf_flags_map_to_options() {
        assert_eq!(ClientTlsOptions::from_lccscf(0), Ok(None));
        assert_eq!(
            ClientTlsOptions::from_lccscf(LCCSCF_USE_SSL),
            Ok(Some(ClientTlsOptions::default()))
        );
        let both =
            LCCSCF_USE_SSL | LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
        let options = ClientTlsOptions::from_lccscf(both).unwrap().unwrap();
        assert!(options.allow_self_signed && options.skip_hostname_check);
        assert_eq!(options.relaxations().len(), 2);
        assert!(ClientTlsOptions::from_lccscf(LCCSCF_ALLOW_SELFSIGNED).is_err());
        assert!(ClientTlsOptions::from_lccscf(LCCSCF_USE_SSL | 1 << 3).is_err());
    }

    #[test]
    fn every_option_combination_has_its_own_index() {
        let mut seen = std::collections::HashSet::new();
        for flags in 0..4 {
            let options = ClientTlsOptions::from_lccscf(LCCSCF_USE_SSL | flags << 1)
                .unwrap()
                .unwrap();
            assert!(options.index() < 4);
            assert!(seen.insert(options.index()));
        }
    }
}
