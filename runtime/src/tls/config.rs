//! Checked TLS configurations made from PEM bytes.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{ClientTlsOptions, Identity, TlsConfigError};

/// Sessions a listener remembers for resumption. Each entry is a few hundred
/// bytes; a device has a handful of clients, a browser opens about six
/// connections at once.
const SESSION_CACHE: usize = 32;

/// The crypto the runtime uses: *ring*, TLS 1.2 and 1.3.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS listener's certificates: checked, ready to serve. The first
/// certificate is the default; the others are chosen by the name the client
/// asks for (SNI). Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    pub(super) config: Arc<ServerConfig>,
    certificates: usize,
}

impl ServerTls {
    /// Parses and checks `identities` (at least one): each chain must hold at
    /// least one certificate, each key must parse and belong to its chain's
    /// first certificate.
    ///
    /// # Errors
    ///
    /// What is wrong, naming the identity (`certificate 2: ...`) when there
    /// are several.
    pub fn from_pem(identities: &[Identity<'_>]) -> Result<Self, TlsConfigError> {
        if identities.is_empty() {
            return Err(TlsConfigError("no certificate given".into()));
        }
        let provider = provider();
        let mut keys = Vec::with_capacity(identities.len());
        for (i, identity) in identities.iter().enumerate() {
            let which = if identities.len() > 1 {
                format!("certificate {}: ", i + 1)
            } else {
                String::new()
            };
            let key = certified_key(identity, &provider)
                .map_err(|e| TlsConfigError(format!("{which}{e}")))?;
            keys.push(Arc::new(key));
        }
        let certificates = keys.len();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { keys }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        // One resumption ticket per TLS 1.3 handshake is enough for a
        // client that reconnects; the default two doubles the cache churn.
        config.send_tls13_tickets = 1;
        Ok(ServerTls {
            config: Arc::new(config),
            certificates,
        })
    }

    /// How many certificates the listener chooses from.
    pub fn certificates(&self) -> usize {
        self.certificates
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.certificates)
            .finish()
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for ServerTls {}

fn certified_key(
    identity: &Identity<'_>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(identity.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {}", pem_error(&e)))?;
    if chain.is_empty() {
        return Err("certificate chain: no CERTIFICATE block in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem)
        .map_err(|e| format!("private key: {}", pem_error(&e)))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_string()
        }
        other => format!("private key: {other}"),
    })
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no matching PEM block found".into(),
        Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        Error::IllegalSectionStart { .. } => "a PEM block has a malformed BEGIN line".into(),
        Error::Base64Decode(why) => format!("bad base64 in a PEM block: {why}"),
        other => format!("{other:?}"),
    }
}

/// Picks the certificate for the name the client asked for; the first one
/// when it asked for none or for a name no certificate has.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            self.keys.iter().find(|k| {
                webpki::EndEntityCert::try_from(&k.cert[0])
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        chosen.or(self.keys.first()).cloned()
    }
}

/// The CA certificates a device trusts for its TLS client connections
/// (lws's `client_ssl_ca_mem`). Cheap to clone.
#[derive(Clone)]
pub struct TrustAnchors {
    pub(super) roots: Arc<RootCertStore>,
}

impl TrustAnchors {
    /// Parses a PEM bundle of one or more CA certificates.
    ///
    /// # Errors
    ///
    /// Bad PEM, no certificate in it, or a certificate that cannot be a
    /// trust anchor.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError(format!("CA bundle: {}", pem_error(&e))))?;
        if certs.is_empty() {
            return Err(TlsConfigError(
                "CA bundle: no CERTIFICATE block in the PEM".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| TlsConfigError(format!("CA bundle: certificate {}: {e}", i + 1)))?;
        }
        Ok(TrustAnchors {
            roots: Arc::new(roots),
        })
    }

    /// How many CA certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// True for a bundle without certificates (never made by
    /// [`from_pem`](Self::from_pem)).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustAnchors({} certificates)", self.roots.len())
    }
}

/// The rustls client configs a context has made, one per combination of
/// [`ClientTlsOptions`], made when first needed.
#[derive(Debug, Default)]
pub(crate) struct ClientConfigs {
    configs: [Option<Arc<ClientConfig>>; 4],
}

impl ClientConfigs {
    /// The config for `options`, trusting `anchors` (none: no CA, so only a
    /// self-signed certificate can pass, and only when allowed).
    pub(crate) fn get(
        &mut self,
        anchors: Option<&TrustAnchors>,
        options: ClientTlsOptions,
    ) -> Result<Arc<ClientConfig>, String> {
        let slot = &mut self.configs[options.index()];
        if let Some(config) = slot {
            return Ok(config.clone());
        }
        let provider = provider();
        let roots = anchors.map_or_else(|| Arc::new(RootCertStore::empty()), |a| a.roots.clone());
        let verifier = super::verify::Verifier::new(roots, options, provider.clone());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        *slot = Some(config.clone());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(chain: &str, key: &str) -> Result<ServerTls, String> {
        ServerTls::from_pem(&[Identity {
            chain_pem: chain.as_bytes(),
            key_pem: key.as_bytes(),
        }])
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_matching_chain_and_key_load() {
        let (chain, key) = leaf("device.test");
        assert_eq!(server(&chain, &key).unwrap().certificates(), 1);
    }

    #[test]
    fn bad_certificates_and_keys_are_refused_in_words() {
        let (chain, key) = leaf("device.test");
        let (_, other_key) = leaf("other.test");
        let cases = [
            (String::new(), key.clone(), "no CERTIFICATE block"),
            (key.clone(), key.clone(), "no CERTIFICATE block"),
            (chain.replace("-----END", "-----XXX"), key.clone(), "END"),
            (chain.clone(), String::new(), "private key"),
            (
                chain.clone(),
                other_key,
                "does not belong to the certificate",
            ),
        ];
        for (chain, key, expected) in cases {
            let err = server(&chain, &key).expect_err(expected);
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
        assert!(ServerTls::from_pem(&[]).is_err(), "no certificate at all");
    }

    #[test]
    fn several_certificates_name_the_bad_one() {
        let (chain, key) = leaf("a.test");
        let identities = [
            Identity {
                chain_pem: chain.as_bytes(),
                key_pem: key.as_bytes(),
            },
            Identity {
                chain_pem: b"",
                key_pem: key.as_bytes(),
            },
        ];
        let err = ServerTls::from_pem(&identities).unwrap_err().to_string();
        assert!(err.starts_with("certificate 2: "), "{err}");
    }

    #[test]
    fn a_ca_bundle_loads_and_garbage_does_not() {
        let (chain, _) = leaf("ca.test");
        assert_eq!(TrustAnchors::from_pem(chain.as_bytes()).unwrap().len(), 1);
        let err = TrustAnchors::from_pem(b"not pem").unwrap_err().to_string();
        assert!(err.contains("CA bundle"), "{err}");
    }
}
