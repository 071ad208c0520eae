//! Signed module files: the guest's wasm followed by one `wasmgate.signature`
//! custom section that holds the manifest and an ed25519 signature. Bytes in,
//! structs out; no I/O. The format is documented in `docs/updating.md`.

use std::ops::Range;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the custom section that carries the manifest and the signature.
pub const SIGNATURE_SECTION: &str = "wasmgate.signature";
/// What the signed message starts with (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"wasmgate-module-v1\n";
/// Largest signature section payload accepted, in bytes. A real one is a few
/// hundred bytes; the cap keeps a hostile upload from making us parse megabytes
/// of JSON.
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;
/// Longest `protocol` or `version` a manifest may carry, in bytes.
pub const MAX_MANIFEST_FIELD: usize = 128;
/// Version recorded in the derived manifest of an unsigned module.
pub const UNSIGNED_VERSION: &str = "unsigned";

/// `\0asm` and binary format version 1.
const WASM_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

/// What a module says about itself; signed together with its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Protocol the module serves (`http`, `echo-protocol`, ...).
    pub protocol: String,
    /// The author's version, shown by the admin API; not interpreted.
    pub version: String,
    /// Guest ABI version the module was built for.
    pub abi: u32,
    /// Limits the module asks for; the device decides.
    #[serde(default)]
    pub limits: RequestedLimits,
}

/// Limits a module asks for in its manifest. `None`: the device's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedLimits {
    /// Fuel for each callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_per_callback: Option<u64>,
    /// Linear memory cap, in 64 KiB pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_pages: Option<u32>,
}

impl Manifest {
    /// The manifest given to an unsigned module uploaded for `protocol`.
    pub fn unsigned(protocol: &str) -> Self {
        Manifest {
            protocol: protocol.to_string(),
            version: UNSIGNED_VERSION.to_string(),
            abi: crate::guest::ABI_VERSION,
            limits: RequestedLimits::default(),
        }
    }

    fn check(&self) -> Result<(), ModuleError> {
        for (field, value) in [("protocol", &self.protocol), ("version", &self.version)] {
            if value.is_empty() {
                return Err(ModuleError::BadManifest(format!("`{field}` is empty")));
            }
            if value.len() > MAX_MANIFEST_FIELD {
                return Err(ModuleError::BadManifest(format!(
                    "`{field}` is {} bytes long; at most {MAX_MANIFEST_FIELD}",
                    value.len()
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(ModuleError::BadManifest(format!(
                    "`{field}` contains control characters"
                )));
            }
        }
        Ok(())
    }
}

/// A module's signature: who signed, and the signature bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    /// The signer's ed25519 public key.
    pub key: [u8; 32],
    /// ed25519 signature over [`signed_message`].
    pub signature: [u8; 64],
}

/// A parsed module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The wasm bytes before the signature section: what the runtime loads.
    pub wasm: Vec<u8>,
    /// sha256 of [`wasm`](Self::wasm).
    pub sha256: [u8; 32],
    /// The manifest: signed, or derived for an unsigned module.
    pub manifest: Manifest,
    /// The manifest exactly as signed (its bytes are part of the signed message).
    pub manifest_json: String,
    /// `None` for an unsigned module.
    pub signature: Option<Signature>,
}

/// Who vouches for a module that passed [`Module::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Signed by this trusted key.
    Signed {
        /// The signer's public key.
        key: [u8; 32],
    },
    /// Unsigned, accepted because the device is in development mode.
    Unsigned,
}

/// A module file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleError {
    /// The bytes do not start with the wasm magic number and version 1.
    NotWasm,
    /// A section's framing is broken (truncated, size past the end).
    BadSection(String),
    /// More than one `wasmgate.signature` section.
    DuplicateSignature,
    /// The `wasmgate.signature` section is followed by other sections.
    SignatureNotLast,
    /// The signature section's payload is not the expected JSON, or a hex
    /// field is malformed.
    BadSignatureSection(String),
    /// The manifest is not the expected JSON or has an unusable field.
    BadManifest(String),
    /// The wasm bytes do not match the sha256 in the signature section.
    HashMismatch,
}

impl std::fmt::Display for ModuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotWasm => f.write_str(
                "not a WebAssembly module (it does not start with `\\0asm` and binary version 1)",
            ),
            Self::BadSection(why) => write!(f, "malformed WebAssembly section: {why}"),
            Self::DuplicateSignature => write!(
                f,
                "module has more than one `{SIGNATURE_SECTION}` section; sign the unsigned module again"
            ),
            Self::SignatureNotLast => write!(
                f,
                "the `{SIGNATURE_SECTION}` section is not the last section; sign the module after its last build step"
            ),
            Self::BadSignatureSection(why) => {
                write!(f, "unreadable `{SIGNATURE_SECTION}` section: {why}")
            }
            Self::BadManifest(why) => write!(f, "bad module manifest: {why}"),
            Self::HashMismatch => f.write_str(
                "the module's bytes do not match the sha256 in its signature section (changed after signing?)",
            ),
        }
    }
}

impl std::error::Error for ModuleError {}

/// A module that may not be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Unsigned, and the device is not in development mode.
    Unsigned,
    /// Signed by a key (hex) that is not in the device's trusted keys.
    UnknownKey(String),
    /// The signature does not verify over the module's hash and manifest.
    BadSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsigned => {
                f.write_str("module is not signed and the device is not in development mode")
            }
            Self::UnknownKey(key) => {
                write!(
                    f,
                    "module is signed by key {key}, which this device does not trust"
                )
            }
            Self::BadSignature => f.write_str(
                "module signature does not verify (manifest or module changed after signing)",
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The signature section's payload.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    manifest: String,
    sha256: String,
    key: String,
    signature: String,
}

impl Module {
    /// Parses a possibly signed module file. `protocol` is the upload's
    /// protocol, used for an unsigned module's derived manifest. The manifest's
    /// protocol is not compared with it here (the caller and
    /// [`Store::stage`](super::Store::stage) do that).
    ///
    /// # Errors
    ///
    /// A [`ModuleError`] naming what is wrong with the file: not wasm, broken
    /// section framing, a misplaced or repeated signature section, bad JSON or
    /// hex in it, or a sha256 that does not match the wasm bytes.
    pub fn parse(bytes: &[u8], protocol: &str) -> Result<Module, ModuleError> {
        let (wasm_end, payload) = split(bytes)?;
        let wasm = bytes[..wasm_end].to_vec();
        let sha256 = sha256(&wasm);
        let Some(payload) = payload else {
            let manifest = Manifest::unsigned(protocol);
            let manifest_json = manifest_json(&manifest)?;
            return Ok(Module {
                wasm,
                sha256,
                manifest,
                manifest_json,
                signature: None,
            });
        };
        let payload = &bytes[payload];
        if payload.len() > MAX_SIGNATURE_BYTES {
            return Err(ModuleError::BadSignatureSection(format!(
                "it is {} bytes; at most {MAX_SIGNATURE_BYTES}",
                payload.len()
            )));
        }
        let envelope: Envelope = serde_json::from_slice(payload)
            .map_err(|e| ModuleError::BadSignatureSection(e.to_string()))?;
        let claimed: [u8; 32] = decode_hex(&envelope.sha256, "sha256")?;
        let key: [u8; 32] = decode_hex(&envelope.key, "key")?;
        let signature: [u8; 64] = decode_hex(&envelope.signature, "signature")?;
        let manifest: Manifest = serde_json::from_str(&envelope.manifest)
            .map_err(|e| ModuleError::BadManifest(e.to_string()))?;
        manifest.check()?;
        if claimed != sha256 {
            return Err(ModuleError::HashMismatch);
        }
        Ok(Module {
            wasm,
            sha256,
            manifest,
            manifest_json: envelope.manifest,
            signature: Some(Signature { key, signature }),
        })
    }

    /// Checks the signature against `trusted` public keys. An unsigned module
    /// is accepted (as [`Trust::Unsigned`]) only when `allow_unsigned`; a
    /// signature that is present must verify, development mode or not.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Unsigned`] for an unsigned module when `!allow_unsigned`,
    /// [`VerifyError::UnknownKey`] for a key not in `trusted`,
    /// [`VerifyError::BadSignature`] if the signature, the wasm's hash or the
    /// manifest do not match what was signed.
    pub fn verify(&self, trusted: &[[u8; 32]], allow_unsigned: bool) -> Result<Trust, VerifyError> {
        let Some(sig) = &self.signature else {
            return if allow_unsigned {
                Ok(Trust::Unsigned)
            } else {
                Err(VerifyError::Unsigned)
            };
        };
        if !trusted.contains(&sig.key) {
            return Err(VerifyError::UnknownKey(hex::encode(sig.key)));
        }
        let key = VerifyingKey::from_bytes(&sig.key).map_err(|_| VerifyError::BadSignature)?;
        // The fields are public: check what is installed, not what was parsed.
        let sha256 = sha256(&self.wasm);
        let message = signed_message(&sha256, &self.manifest_json);
        key.verify_strict(
            &message,
            &ed25519_dalek::Signature::from_bytes(&sig.signature),
        )
        .map_err(|_| VerifyError::BadSignature)?;
        let signed: Manifest =
            serde_json::from_str(&self.manifest_json).map_err(|_| VerifyError::BadSignature)?;
        if sha256 != self.sha256 || signed != self.manifest {
            return Err(VerifyError::BadSignature);
        }
        Ok(Trust::Signed { key: sig.key })
    }

    /// The file to store or upload: the wasm plus the signature section, or
    /// the bare wasm if unsigned.
    pub fn to_bytes(&self) -> Vec<u8> {
        let Some(sig) = &self.signature else {
            return self.wasm.clone();
        };
        let envelope = Envelope {
            manifest: self.manifest_json.clone(),
            sha256: hex::encode(self.sha256),
            key: hex::encode(sig.key),
            signature: hex::encode(sig.signature),
        };
        // A struct of four strings always serialises.
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
        let mut out = self.wasm.clone();
        push_custom_section(&mut out, SIGNATURE_SECTION, &payload);
        out
    }
}

/// Signs `wasm` (any existing signature section is replaced) with `manifest`,
/// using the 32-byte ed25519 secret seed. Returns the signed file.
///
/// # Errors
///
/// [`ModuleError::NotWasm`] or [`ModuleError::BadSection`] if `wasm` is not a
/// well-framed module (or its old signature section is misplaced),
/// [`ModuleError::BadManifest`] for an empty or overlong protocol or version.
pub fn sign(wasm: &[u8], manifest: &Manifest, secret: &[u8; 32]) -> Result<Vec<u8>, ModuleError> {
    manifest.check()?;
    let (wasm_end, _old_signature) = split(wasm)?;
    let wasm = &wasm[..wasm_end];
    let sha256 = sha256(wasm);
    let manifest_json = manifest_json(manifest)?;
    let key = SigningKey::from_bytes(secret);
    let signature = key.sign(&signed_message(&sha256, &manifest_json));
    let module = Module {
        wasm: wasm.to_vec(),
        sha256,
        manifest: manifest.clone(),
        manifest_json,
        signature: Some(Signature {
            key: key.verifying_key().to_bytes(),
            signature: signature.to_bytes(),
        }),
    };
    Ok(module.to_bytes())
}

/// The bytes a module's signature covers:
/// `wasmgate-module-v1\n` + hex(sha256 of the wasm) + `\n` + manifest JSON.
pub fn signed_message(sha256: &[u8; 32], manifest_json: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + 65 + manifest_json.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(hex::encode(sha256).as_bytes());
    m.push(b'\n');
    m.extend_from_slice(manifest_json.as_bytes());
    m
}

/// sha256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn manifest_json(manifest: &Manifest) -> Result<String, ModuleError> {
    serde_json::to_string(manifest).map_err(|e| ModuleError::BadManifest(e.to_string()))
}

fn decode_hex<const N: usize>(text: &str, field: &str) -> Result<[u8; N], ModuleError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|e| {
        ModuleError::BadSignatureSection(format!("`{field}` is not {N} bytes of hex: {e}"))
    })?;
    Ok(out)
}

/// Appends a custom section (id 0, size, name length, name, payload).
fn push_custom_section(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut body = Vec::with_capacity(5 + name.len() + payload.len());
    push_leb(&mut body, name.len() as u64);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    out.push(0);
    push_leb(out, body.len() as u64);
    out.extend_from_slice(&body);
}

fn push_leb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads an unsigned LEB128 `u32` at `*pos` (at most 5 bytes).
fn read_leb_u32(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        if i == 4 && byte > 0x0f {
            return None; // more than 32 bits
        }
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// One top-level section: where it starts (its id byte) and its payload.
#[derive(Debug)]
struct RawSection {
    id: u8,
    start: usize,
    payload: Range<usize>,
}

/// Walks the section framing (ids and sizes only; contents are the engine's
/// business).
fn sections(bytes: &[u8]) -> Result<Vec<RawSection>, ModuleError> {
    if !bytes.starts_with(&WASM_HEADER) {
        return Err(ModuleError::NotWasm);
    }
    let mut out = Vec::new();
    let mut pos = WASM_HEADER.len();
    while pos < bytes.len() {
        let start = pos;
        let id = bytes[pos];
        pos += 1;
        let size = read_leb_u32(bytes, &mut pos).ok_or_else(|| {
            ModuleError::BadSection(format!("section at byte {start} has a broken size"))
        })? as usize;
        let end = pos.checked_add(size).filter(|&end| end <= bytes.len()).ok_or_else(|| {
            ModuleError::BadSection(format!(
                "section at byte {start} (id {id}) claims {size} bytes; the file ends {} bytes later",
                bytes.len() - pos
            ))
        })?;
        out.push(RawSection {
            id,
            start,
            payload: pos..end,
        });
        pos = end;
    }
    Ok(out)
}

/// A custom section's name and the range of its data, or `None` for other sections.
fn custom_section<'a>(
    bytes: &'a [u8],
    section: &RawSection,
) -> Result<Option<(&'a str, Range<usize>)>, ModuleError> {
    if section.id != 0 {
        return Ok(None);
    }
    let broken = || {
        ModuleError::BadSection(format!(
            "custom section at byte {} has a broken name",
            section.start
        ))
    };
    let payload = &bytes[section.payload.clone()];
    let mut pos = 0;
    let len = read_leb_u32(payload, &mut pos).ok_or_else(broken)? as usize;
    let name = payload.get(pos..pos + len).ok_or_else(broken)?;
    let name = std::str::from_utf8(name).map_err(|_| broken())?;
    let data = section.payload.start + pos + len..section.payload.end;
    Ok(Some((name, data)))
}

/// Splits a module file into the length of its wasm part and the range of
/// the signature section's payload, if it has one.
fn split(bytes: &[u8]) -> Result<(usize, Option<Range<usize>>), ModuleError> {
    let sections = sections(bytes)?;
    let mut found: Option<(usize, Range<usize>)> = None;
    for (i, section) in sections.iter().enumerate() {
        if let Some((SIGNATURE_SECTION, data)) = custom_section(bytes, section)? {
            if found.is_some() {
                return Err(ModuleError::DuplicateSignature);
            }
            found = Some((i, data));
        }
    }
    match found {
        None => Ok((bytes.len(), None)),
        Some((i, _)) if i + 1 != sections.len() => Err(ModuleError::SignatureNotLast),
        Some((i, data)) => Ok((sections[i].start, Some(data))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub const SECRET: [u8; 32] = [7; 32];
    pub const OTHER_SECRET: [u8; 32] = [9; 32];

    pub fn public(secret: &[u8; 32]) -> [u8; 32] {
        SigningKey::from_bytes(secret).verifying_key().to_bytes()
    }

    /// A small valid module whose bytes differ with `n`.
    pub fn wasm(n: u32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 1) (func (export "f") (result i32) i32.const {n}))"#
        ))
        .expect("test module")
    }

    pub fn manifest(protocol: &str, version: &str) -> Manifest {
        Manifest {
            protocol: protocol.into(),
            version: version.into(),
            abi: 1,
            limits: RequestedLimits::default(),
        }
    }

    fn signed() -> Vec<u8> {
        sign(&wasm(1), &manifest("http", "1.2.0"), &SECRET).unwrap()
    }

    #[test]
    fn signed_module_round_trips_through_parse_and_verify() {
        let file = signed();
        let m = Module::parse(&file, "http").unwrap();
        assert_eq!(m.wasm, wasm(1));
        assert_eq!(m.sha256, sha256(&wasm(1)));
        assert_eq!(m.manifest, manifest("http", "1.2.0"));
        assert_eq!(m.to_bytes(), file);
        let key = public(&SECRET);
        assert_eq!(m.verify(&[key], false), Ok(Trust::Signed { key }));
        assert_eq!(
            m.verify(&[public(&OTHER_SECRET), key], true),
            Ok(Trust::Signed { key })
        );
    }

    #[test]
    fn signature_covers_the_documented_message() {
        let m = Module::parse(&signed(), "http").unwrap();
        let mut message = b"wasmgate-module-v1\n".to_vec();
        message.extend_from_slice(hex::encode(sha256(&wasm(1))).as_bytes());
        message.push(b'\n');
        message.extend_from_slice(m.manifest_json.as_bytes());
        let sig = m.signature.unwrap();
        let key = VerifyingKey::from_bytes(&sig.key).unwrap();
        key.verify_strict(
            &message,
            &ed25519_dalek::Signature::from_bytes(&sig.signature),
        )
        .unwrap();
        assert_eq!(
            m.manifest_json,
            r#"{"protocol":"http","version":"1.2.0","abi":1,"limits":{}}"#
        );
    }

    #[test]
    fn signed_file_is_still_valid_wasm() {
        let file = signed();
        wasmi::Module::new(&wasmi::Engine::default(), &file[..]).expect("valid wasm");
        // And the section really is a custom section named as documented.
        let sections = sections(&file).unwrap();
        let last = sections.last().unwrap();
        let (name, data) = custom_section(&file, last).unwrap().unwrap();
        assert_eq!(name, "wasmgate.signature");
        let json: serde_json::Value = serde_json::from_slice(&file[data]).unwrap();
        assert_eq!(json["sha256"], hex::encode(sha256(&wasm(1))));
    }

    #[test]
    fn tampered_wasm_byte_is_a_hash_mismatch() {
        let mut file = signed();
        // The last byte of the wasm part: the `i32.const 1` function body's `end`
        // stays framed, so only the hash can tell.
        let n = wasm(1).len();
        let pos = (0..n).rev().find(|&i| file[i] == 1).unwrap();
        file[pos] = 2;
        assert_eq!(Module::parse(&file, "http"), Err(ModuleError::HashMismatch));
    }

    #[test]
    fn tampered_manifest_is_a_bad_signature() {
        let mut m = Module::parse(&signed(), "http").unwrap();
        m.manifest_json = m.manifest_json.replace("1.2.0", "9.9.9");
        let reparsed = Module::parse(&m.to_bytes(), "http").unwrap();
        assert_eq!(reparsed.manifest.version, "9.9.9");
        assert_eq!(
            reparsed.verify(&[public(&SECRET)], true),
            Err(VerifyError::BadSignature)
        );
        // The struct changed without the signed JSON: refused too.
        let mut m = Module::parse(&signed(), "http").unwrap();
        m.manifest.limits.max_memory_pages = Some(1000);
        assert_eq!(
            m.verify(&[public(&SECRET)], true),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn key_not_trusted_is_unknown_key_even_in_development_mode() {
        let m = Module::parse(&signed(), "http").unwrap();
        let err = m.verify(&[public(&OTHER_SECRET)], true).unwrap_err();
        assert_eq!(err, VerifyError::UnknownKey(hex::encode(public(&SECRET))));
        assert!(err.to_string().contains(&hex::encode(public(&SECRET))));
    }

    #[test]
    fn unsigned_module_is_accepted_only_in_development_mode() {
        let m = Module::parse(&wasm(1), "echo").unwrap();
        assert_eq!(m.signature, None);
        assert_eq!(m.manifest, Manifest::unsigned("echo"));
        assert_eq!(m.manifest.version, "unsigned");
        assert_eq!(m.sha256, sha256(&wasm(1)));
        assert_eq!(m.to_bytes(), wasm(1));
        assert_eq!(m.verify(&[public(&SECRET)], true), Ok(Trust::Unsigned));
        let err = m.verify(&[public(&SECRET)], false).unwrap_err();
        assert_eq!(err, VerifyError::Unsigned);
        assert_eq!(
            err.to_string(),
            "module is not signed and the device is not in development mode"
        );
    }

    #[test]
    fn signing_again_replaces_the_old_signature() {
        let again = sign(&signed(), &manifest("http", "2.0.0"), &OTHER_SECRET).unwrap();
        let m = Module::parse(&again, "http").unwrap();
        assert_eq!(m.wasm, wasm(1));
        assert_eq!(m.manifest.version, "2.0.0");
        let key = public(&OTHER_SECRET);
        assert_eq!(m.verify(&[key], false), Ok(Trust::Signed { key }));
    }

    #[test]
    fn signature_section_not_last_is_refused() {
        let mut file = signed();
        push_custom_section(&mut file, "name", b"");
        assert_eq!(
            Module::parse(&file, "http"),
            Err(ModuleError::SignatureNotLast)
        );
        // Signing such a file cannot guess which part is the module either.
        assert_eq!(
            sign(&file, &manifest("http", "1"), &SECRET),
            Err(ModuleError::SignatureNotLast)
        );
    }

    #[test]
    fn two_signature_sections_are_refused() {
        let once = signed();
        let mut twice = once.clone();
        twice.extend_from_slice(&once[wasm(1).len()..]);
        assert_eq!(
            Module::parse(&twice, "http"),
            Err(ModuleError::DuplicateSignature)
        );
    }

    #[test]
    fn bad_json_or_hex_in_the_signature_section_is_refused() {
        let section = |payload: &str| {
            let mut f = wasm(1);
            push_custom_section(&mut f, SIGNATURE_SECTION, payload.as_bytes());
            Module::parse(&f, "http")
        };
        assert!(matches!(
            section("{"),
            Err(ModuleError::BadSignatureSection(_))
        ));
        let sha = hex::encode(sha256(&wasm(1)));
        let good_manifest = r#"{\"protocol\":\"http\",\"version\":\"1\",\"abi\":1}"#;
        let sig = "00".repeat(64);
        let key = "11".repeat(32);
        let err = section(&format!(
            r#"{{"manifest":"{good_manifest}","sha256":"{sha}","key":"zz","signature":"{sig}"}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("`key`"), "{err}");
        let err = section(&format!(
            r#"{{"manifest":"{{}}","sha256":"{sha}","key":"{key}","signature":"{sig}"}}"#
        ))
        .unwrap_err();
        assert!(matches!(err, ModuleError::BadManifest(_)), "{err}");
        // Limits are optional; a well-formed section parses.
        let m = section(&format!(
            r#"{{"manifest":"{good_manifest}","sha256":"{sha}","key":"{key}","signature":"{sig}"}}"#
        ))
        .unwrap();
        assert_eq!(m.manifest.limits, RequestedLimits::default());
    }

    #[test]
    fn manifest_with_limits_has_the_documented_shape() {
        let m = Manifest {
            limits: RequestedLimits {
                fuel_per_callback: Some(5_000_000),
                max_memory_pages: Some(4),
            },
            ..manifest("http", "1.2.0")
        };
        let json = manifest_json(&m).unwrap();
        assert_eq!(
            json,
            r#"{"protocol":"http","version":"1.2.0","abi":1,"limits":{"fuel_per_callback":5000000,"max_memory_pages":4}}"#
        );
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let unknown = r#"{"protocol":"http","version":"1","abi":1,"owner":"me"}"#;
        assert!(serde_json::from_str::<Manifest>(unknown).is_err());
    }

    #[test]
    fn empty_protocol_cannot_be_signed() {
        let err = sign(&wasm(1), &manifest("", "1"), &SECRET).unwrap_err();
        assert!(matches!(err, ModuleError::BadManifest(_)), "{err}");
    }

    #[test]
    fn broken_framing_is_refused() {
        assert_eq!(Module::parse(b"hello", "http"), Err(ModuleError::NotWasm));
        assert_eq!(Module::parse(&[], "http"), Err(ModuleError::NotWasm));
        let file = signed();
        let cut = &file[..file.len() - 1];
        assert!(matches!(
            Module::parse(cut, "http"),
            Err(ModuleError::BadSection(_))
        ));
        let mut bad_leb = WASM_HEADER.to_vec();
        bad_leb.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            Module::parse(&bad_leb, "http"),
            Err(ModuleError::BadSection(_))
        ));
    }

    #[test]
    fn oversized_signature_section_is_refused() {
        let mut f = wasm(1);
        push_custom_section(
            &mut f,
            SIGNATURE_SECTION,
            &vec![b' '; MAX_SIGNATURE_BYTES + 1],
        );
        assert!(matches!(
            Module::parse(&f, "http"),
            Err(ModuleError::BadSignatureSection(_))
        ));
    }

    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<ModuleError>() <= 32);
        assert!(std::mem::size_of::<VerifyError>() <= 32);
    }
}
