//! Test certificates made with rcgen: a CA per test, leaves it issues (valid
//! or expired) and self-signed leaves, each with the names asked for.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate with its key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, then its issuer's (when it has one).
    pub chain_pem: String,
    pub key_pem: String,
}

/// A certificate authority that exists for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, to trust.
    pub pem: String,
}

impl Ca {
    /// A fresh CA called `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.sign(leaf_params(names, false))
    }

    /// A certificate for `names` that expired yesterday.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.sign(leaf_params(names, true))
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A certificate for `names` that signs itself.
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params(names, false)
        .self_signed(&key)
        .expect("self-signed certificate");
    Leaf {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn dn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn leaf_params(names: &[&str], expired: bool) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    params.distinguished_name = dn(names.first().copied().unwrap_or("leaf"));
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
        })
        .collect();
    let day = time::Duration::days(1);
    let now = time::OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - 30 * day;
        params.not_after = now - day;
    } else {
        params.not_before = now - day;
        params.not_after = now + 30 * day;
    }
    params
}
