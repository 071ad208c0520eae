//! TLS in the device config: listener certificates and the CA bundle for
//! client connections (inline PEM or files read into memory), and the
//! device's own certificate, made on first start in its flash folder.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
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

/// PEM text given inline, or read from a file relative to `base`.
pub(crate) fn pem_source(value: &str, base: &Path, what: &str) -> Result<Vec<u8>, String> {
    if value.contains("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    let path = base.join(value);
    std::fs::read(&path).map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))
}

/// The listener's certificates from `[[listener.certificate]]` entries.
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
    ServerTls::from_pem(&identities).map_err(|e| e.to_string())
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
        let files = ["ca.pem", "ca.key", "server.pem", "server.key"].map(|f| dir.join(f));
        let present = files.iter().filter(|f| f.exists()).count();
        let created = present == 0;
        if created {
            create(&dir, name)?;
        } else if present < files.len() {
            return Err(format!(
                "the device certificate in {} is incomplete (ca.pem, ca.key, server.pem and \
                 server.key are needed); delete that folder to make a new one",
                dir.display()
            ));
        }
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let (chain, key) = (read(&files[2])?, read(&files[3])?);
        let server = ServerTls::from_pem(&[Identity {
            chain_pem: &chain,
            key_pem: &key,
        }])
        .map_err(|e| {
            format!(
                "the device certificate in {} does not load ({e}); delete that folder to make \
                 a new one",
                dir.display()
            )
        })?;
        Ok(DeviceCertificate {
            ca_path: files[0].clone(),
            server,
            created,
        })
    }
}

/// Makes the device CA and a server certificate it signs, valid for ten
/// years, for `localhost`, `<name>.local`, 127.0.0.1 and ::1.
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
    if let Ok(local) = format!("{}.local", dns_label(name)).as_str().try_into() {
        server.subject_alt_names.push(SanType::DnsName(local));
    }
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

    #[test]
    fn the_device_certificate_is_made_once_then_reused() {
        let flash = scratch("reuse");
        let first = DeviceCertificate::load_or_create(&flash, "My Device #1").unwrap();
        assert!(first.created);
        let ca = std::fs::read(&first.ca_path).unwrap();
        let server = std::fs::read(flash.join("tls/server.pem")).unwrap();
        let second = DeviceCertificate::load_or_create(&flash, "My Device #1").unwrap();
        assert!(!second.created);
        assert_eq!(std::fs::read(&second.ca_path).unwrap(), ca, "same CA");
        assert_eq!(
            std::fs::read(flash.join("tls/server.pem")).unwrap(),
            server,
            "same server certificate"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(flash.join("tls/server.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the key is private");
        }
        std::fs::remove_dir_all(&flash).unwrap();
    }

    #[test]
    fn a_half_made_device_certificate_is_an_error_saying_what_to_do() {
        let flash = scratch("half");
        DeviceCertificate::load_or_create(&flash, "d").unwrap();
        std::fs::remove_file(flash.join("tls/server.key")).unwrap();
        let err = DeviceCertificate::load_or_create(&flash, "d").unwrap_err();
        assert!(
            err.contains("incomplete") && err.contains("delete"),
            "{err}"
        );
        std::fs::write(flash.join("tls/server.key"), "garbage").unwrap();
        let err = DeviceCertificate::load_or_create(&flash, "d").unwrap_err();
        assert!(err.contains("does not load"), "{err}");
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
