//! The server-certificate check of TLS client connections: webpki's, with
//! lws's two escape hatches applied to exactly the failure each one names.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::ClientTlsOptions;

#[derive(Debug)]
pub(super) struct Verifier {
    /// `None` when the device trusts no CA.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    options: ClientTlsOptions,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        options: ClientTlsOptions,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        let webpki = (!roots.is_empty())
            .then(|| with_roots(roots, &provider))
            .flatten();
        Verifier {
            webpki,
            options,
            provider,
        }
    }

    /// The check against `roots`, relaxed by `skip_hostname_check`.
    fn check(
        &self,
        verifier: &WebPkiServerVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.options.skip_hostname_check => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
}

fn with_roots(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Option<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .ok()
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let unknown_issuer = Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let result = match &self.webpki {
            Some(v) => self.check(v, end_entity, intermediates, server_name, ocsp, now),
            None => Err(unknown_issuer.clone()),
        };
        match result {
            Err(e) if e == unknown_issuer && self.options.allow_self_signed => {
                // A self-signed certificate is its own issuer: trusted as its
                // own anchor it passes (dates and name still checked); a
                // certificate from an unknown CA still does not.
                let mut own = RootCertStore::empty();
                if own.add(end_entity.clone().into_owned()).is_err() {
                    return Err(e);
                }
                let Some(v) = with_roots(Arc::new(own), &self.provider) else {
                    return Err(e);
                };
                self.check(&v, end_entity, &[], server_name, ocsp, now)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
