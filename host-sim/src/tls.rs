//! TLS in the device config: listener certificates and the CA bundle for
//! client connections (inline PEM or files read into memory), and the
//! device's own certificate, made on first start in its flash folder.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Deserialize;
use wasmgate::tls::{Identity, ServerTls};

/// `[[listener.certificate]]`: one certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateSection {
    /// PEM chain, end-entity first: inline PEM or a file.
    pub cert: String,
    /// PEM private key: inline PEM or a file.
    pub key: String,
}

/// `[tls]`: device-wide TLS settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// The CA bundle client connections trust: inline PEM or a file.
    pub ca: Option<String>,
}

/// The value of a listener's `tls` key that asks for the device certificate.
pub(crate) const DEVICE_CERTIFICATE: &str = "device";

/// The folder of the device certificate, inside the flash folder.
const DEVICE_TLS_DIR: &str = "tls";

/// The files in [`DEVICE_TLS_DIR`], all made together by [`create`].
const DEVICE_FILES: [&str; 4] = ["ca.pem", "ca.key", "server.pem", "server.key"];

/// PEM text given inline, or read from a file relative to `base`.
pub(crate) fn pem_source(value: &str, base: &Path, what: &str) -> Result<Vec<u8>, String> {
    if value.contains("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    let path = base.join(value);
    std::fs::read(&path).map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))
}

/// The listener's certificates from `[[listener.certificate]]` entries.
/// Errors say which certificate (`certificate: ...` or `certificate 2: ...`)
/// or which file is at fault.
pub(crate) fn listener_certificates(
    entries: &[CertificateSection],
    base: &Path,
) -> Result<ServerTls, String> {
    let pems = entries
        .iter()
        .map(|c| {
            Ok((
                pem_source(&c.cert, base, "certificate")?,
                pem_source(&c.key, base, "key")?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let identities: Vec<Identity<'_>> = pems
        .iter()
        .map(|(chain, key)| Identity {
            chain_pem: chain,
            key_pem: key,
        })
        .collect();
    // With several, the runtime's error already says `certificate 2: ...`.
    ServerTls::from_pem(&identities).map_err(|e| match entries {
        [_] => format!("certificate: {e}"),
        _ => e.to_string(),
    })
}

/// The device's own certificate in `flash/tls/`: the CA that issued it
/// (`ca.pem`, for users to trust) and the server certificate (`server.pem`,
/// `server.key`), made on first use and read on later ones.
#[derive(Debug)]
pub struct DeviceCertificate {
    /// The device CA's certificate: what curl's `--cacert` or a browser trusts.
    pub ca_path: PathBuf,
    /// The listener identity.
    pub server: ServerTls,
    /// True when this call made it.
    pub created: bool,
}

impl DeviceCertificate {
    /// Reads the device certificate from `flash_dir`, making it first if the
    /// folder has none. `name` is the device name (the CA's name, and a
    /// `.local` name in the certificate).
    ///
    /// # Errors
    ///
    /// A half-made folder (some files missing), files that do not load, or
    /// a file that cannot be written.
    pub fn load_or_create(flash_dir: &Path, name: &str) -> Result<Self, String> {
        let dir = flash_dir.join(DEVICE_TLS_DIR);
        let missing: Vec<&str> = DEVICE_FILES
            .into_iter()
            .filter(|f| !dir.join(f).exists())
            .collect();
        let created = missing.len() == DEVICE_FILES.len();
        if created {
            create(&dir, name)?;
        } else if !missing.is_empty() {
            return Err(format!(
                "the device certificate in {} is incomplete: {} missing; delete that folder \
                 to make a new one",
                dir.display(),
                missing.join(", ")
            ));
        }
        let broken = |files: &str, e: &dyn std::fmt::Display| {
            format!(
                "the device certificate in {} does not load ({files}: {e}); delete that folder \
                 to make a new one",
                dir.display(),
            )
        };
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        // The CA and its key are never served, but a broken one is better
        // reported now than when a user tries to trust it.
        wasmgate::tls::TrustAnchors::from_pem(&read("ca.pem")?)
            .map_err(|e| broken("ca.pem", &e))?;
        KeyPair::from_pem(&String::from_utf8_lossy(&read("ca.key")?))
            .map_err(|e| broken("ca.key", &e))?;
        let (chain, key) = (read("server.pem")?, read("server.key")?);
        let server = ServerTls::from_pem(&[Identity {
            chain_pem: &chain,
            key_pem: &key,
        }])
        .map_err(|e| broken("server.pem and server.key", &e))?;
        Ok(DeviceCertificate {
            ca_path: dir.join("ca.pem"),
            server,
            created,
        })
    }
}

/// Makes the device CA and a server certificate it signs, valid for ten
/// years, for `localhost`, `<name>.local` (the name as a DNS label),
/// 127.0.0.1 and ::1.
fn create(dir: &Path, name: &str) -> Result<(), String> {
    let failed = |e: rcgen::Error| format!("cannot make the device certificate: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.distinguished_name = common_name(&format!("wasmgate device CA ({name})"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (not_before, not_after) = validity();
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

    let mut server = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    server.distinguished_name = common_name(name);
    server.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(failed)?),
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    let label = dns_label(name);
    if !label.is_empty() {
        let local = format!("{label}.local").try_into().map_err(failed)?;
        server.subject_alt_names.push(SanType::DnsName(local));
    }
    // macOS and iOS refuse a server certificate without the first, and
    // Python 3.13 (VERIFY_X509_STRICT by default) one without the second.
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = KeyPair::generate().map_err(failed)?;
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(failed)?;

    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write(&dir.join("ca.key"), &issuer.key().serialize_pem(), true)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
    // The chain: the server certificate, then the CA's.
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write(&dir.join("server.pem"), &chain, false)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// From a day ago (a device clock a little behind still accepts it) to ten
/// years from now.
fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(3650),
    )
}

/// `name` as one DNS label: lower case letters, digits and dashes.
fn dns_label(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    label[..label.len().min(63)]
        .trim_end_matches('-')
        .to_string()
}

/// Writes `text` to `path`; a key is readable by its owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-sim-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_all(flash: &Path) -> Vec<Vec<u8>> {
        DEVICE_FILES
            .iter()
            .map(|f| std::fs::read(flash.join("tls").join(f)).unwrap())
            .collect()
    }

    #[test]
    fn the_device_certificate_is_made_once_then_reused() {
        let flash = scratch("reuse");
        let first = DeviceCertificate::load_or_create(&flash, "My Device #1").unwrap();
        assert!(first.created);
        assert_eq!(first.ca_path, flash.join("tls/ca.pem"));
        let made = read_all(&flash);
        let second = DeviceCertificate::load_or_create(&flash, "My Device #1").unwrap();
        assert!(!second.created);
        assert_eq!(read_all(&flash), made, "the same four files, untouched");
        #[cfg(unix)]
        for key in ["ca.key", "server.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(flash.join("tls").join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key} is private");
        }
        std::fs::remove_dir_all(&flash).unwrap();
    }

    /// Checks `name` against the device certificate in `flash` as a client
    /// that trusts only the device CA would.
    fn verify(flash: &Path, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(flash.join("tls/ca.pem")).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            rustls::crypto::ring::default_provider().into(),
        )
        .build()
        .unwrap();
        let chain: Vec<_> = CertificateDer::pem_file_iter(flash.join("tls/server.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn the_device_certificate_is_trusted_through_its_ca_for_local_names_only() {
        let flash = scratch("names");
        DeviceCertificate::load_or_create(&flash, "Kitchen Sensor").unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "kitchen-sensor.local"] {
            verify(&flash, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["example.com", "other.local", "10.0.0.1"] {
            assert!(verify(&flash, name).is_err(), "{name} must not match");
        }
        // Strict verifiers (Python 3.13, macOS) also want these extensions,
        // found by their DER-encoded OIDs.
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let server = CertificateDer::from_pem_file(flash.join("tls/server.pem")).unwrap();
        let has = |oid: &[u8]| server.windows(oid.len()).any(|w| w == oid);
        assert!(
            has(&[0x06, 0x03, 0x55, 0x1d, 0x23]),
            "authority key identifier"
        );
        assert!(has(&[0x06, 0x03, 0x55, 0x1d, 0x25]), "extended key usage");
        std::fs::remove_dir_all(&flash).unwrap();
    }

    #[test]
    fn a_device_name_that_is_no_dns_label_only_loses_the_local_name() {
        let flash = scratch("label");
        DeviceCertificate::load_or_create(&flash, "###").unwrap();
        verify(&flash, "localhost").unwrap();
        std::fs::remove_dir_all(&flash).unwrap();
    }

    #[test]
    fn a_half_made_or_broken_device_certificate_is_an_error_saying_what_to_do() {
        let flash = scratch("half");
        DeviceCertificate::load_or_create(&flash, "d").unwrap();
        let tls = flash.join("tls");
        let made = read_all(&flash);
        std::fs::remove_file(tls.join("server.key")).unwrap();
        let err = DeviceCertificate::load_or_create(&flash, "d").unwrap_err();
        assert!(
            err.contains("incomplete")
                && err.contains("server.key missing")
                && err.contains(&tls.display().to_string())
                && err.contains("delete that folder"),
            "{err}"
        );
        for (i, file) in DEVICE_FILES.iter().enumerate() {
            for (j, f) in DEVICE_FILES.iter().enumerate() {
                let bytes: &[u8] = if i == j { b"garbage" } else { &made[j] };
                std::fs::write(tls.join(f), bytes).unwrap();
            }
            let err = DeviceCertificate::load_or_create(&flash, "d").unwrap_err();
            assert!(
                err.contains("does not load")
                    && err.contains(file)
                    && err.contains("delete that folder"),
                "{file}: {err}"
            );
            assert_eq!(
                std::fs::read(tls.join(file)).unwrap(),
                b"garbage",
                "{file} is reported, not replaced"
            );
        }
        std::fs::remove_dir_all(&flash).unwrap();
    }

    #[test]
    fn device_names_become_dns_labels() {
        assert_eq!(
            dns_label("wasmgate simulated device"),
            "wasmgate-simulated-device"
        );
        assert_eq!(dns_label("  Kitchen/Sensor  "), "kitchen-sensor");
        assert_eq!(dns_label(&"x".repeat(80)).len(), 63);
        assert_eq!(dns_label("###"), "");
    }

    #[test]
    fn pem_is_taken_inline_or_read_from_a_file() {
        let dir = scratch("pem");
        std::fs::write(dir.join("a.pem"), "-----BEGIN X-----\n").unwrap();
        assert_eq!(
            pem_source("a.pem", &dir, "certificate").unwrap(),
            b"-----BEGIN X-----\n"
        );
        assert_eq!(
            pem_source("-----BEGIN Y-----", &dir, "key").unwrap(),
            b"-----BEGIN Y-----"
        );
        let err = pem_source("missing.pem", &dir, "certificate").unwrap_err();
        assert!(err.contains("cannot read certificate file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
