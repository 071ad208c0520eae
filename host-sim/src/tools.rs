//! The operator's commands: `keygen`, `sign`, `inspect` and `upload`. Plain
//! functions over files and one HTTP/1.1 request; the `wasmgate` binary maps
//! its subcommands onto them. The signed module format and the update flow
//! are described in `docs/updating.md`.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wasmgate::config::GuestLimits;
use wasmgate::guest::{ABI_VERSION, Guest};
use wasmgate::store::{Manifest, Module, RequestedLimits};

/// Version put in the manifest when `upload` signs an unsigned module itself.
pub const DEV_VERSION: &str = "0.0.0-dev";
/// Upload bodies are written in pieces of this many bytes.
pub const UPLOAD_PIECE: usize = 16 * 1024;
/// Uploads larger than this many bytes show a progress bar.
pub const PROGRESS_ABOVE: usize = 64 * 1024;
/// How long to wait for the device to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one socket read or write may take (the device checks and starts
/// the module before it answers).
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest response head read from the device, in bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Longest response body read from the device, in bytes.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// A command that failed; `Display` is one line for the operator.
#[derive(Debug)]
pub enum ToolError {
    /// A file could not be read or written.
    File {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// `keygen` would overwrite a key file.
    Exists(PathBuf),
    /// A key file does not hold a hex 32-byte key.
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The module file cannot be read as a (signed) module.
    Module {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: wasmgate::store::ModuleError,
    },
    /// The system's random number generator failed.
    Random(String),
    /// A command-line value is not usable.
    Argument(String),
    /// The module is signed for another protocol than the one uploaded to.
    WrongProtocol {
        /// The protocol in the module's signed manifest.
        signed_for: String,
        /// The protocol given to `upload`.
        upload: String,
    },
    /// The device cannot be reached, or the connection failed.
    Network {
        /// The device URL.
        url: String,
        /// What happened.
        error: String,
    },
    /// The device's answer is not a readable HTTP response.
    BadResponse {
        /// The device URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The device refused (a status other than 2xx).
    Device {
        /// HTTP status.
        status: u16,
        /// The JSON body's `error`, else the body or the reason phrase.
        message: String,
    },
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File {
                action,
                path,
                error,
            } => write!(f, "cannot {action} {}: {error}", path.display()),
            Self::Exists(path) => write!(
                f,
                "{} already exists; refusing to overwrite a key (choose another --out)",
                path.display()
            ),
            Self::BadKey { path, why } => write!(f, "{}: {why}", path.display()),
            Self::Module { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Random(e) => write!(f, "cannot get random bytes for a key: {e}"),
            Self::Argument(why) => f.write_str(why),
            Self::WrongProtocol { signed_for, upload } => write!(
                f,
                "the module is signed for protocol `{signed_for}`, not `{upload}`; sign it again with --protocol {upload}"
            ),
            Self::Network { url, error } => {
                write!(f, "cannot talk to the device at {url}: {error}")
            }
            Self::BadResponse { url, why } => {
                write!(f, "the device at {url} sent an unreadable answer: {why}")
            }
            Self::Device { status, message } => write!(f, "device answered {status}: {message}"),
        }
    }
}

impl std::error::Error for ToolError {}

fn read_file(path: &Path) -> Result<Vec<u8>, ToolError> {
    std::fs::read(path).map_err(|error| ToolError::File {
        action: "read",
        path: path.to_path_buf(),
        error,
    })
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> ToolError {
    let path = path.to_path_buf();
    move |error| ToolError::File {
        action: "write",
        path,
        error,
    }
}

/// `prefix` with `suffix` appended to its last component (`dev` -> `dev.key`).
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Makes an ed25519 key pair: `PREFIX.key` (the hex secret seed, mode 0600 on
/// Unix) and `PREFIX.pub` (the hex public key, for the device config). Prints
/// both paths and the public key.
///
/// # Errors
///
/// [`ToolError::Exists`] if either file exists; [`ToolError::Random`] or
/// [`ToolError::File`] if the key cannot be made or written.
pub fn keygen(out_prefix: &Path) -> Result<(), ToolError> {
    let (key_path, pub_path) = (
        with_suffix(out_prefix, ".key"),
        with_suffix(out_prefix, ".pub"),
    );
    for path in [&key_path, &pub_path] {
        if path.exists() {
            return Err(ToolError::Exists(path.clone()));
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ToolError::Random(e.to_string()))?;
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    write_new(&key_path, &format!("{}\n", hex::encode(seed)), true)?;
    write_new(&pub_path, &format!("{}\n", hex::encode(public)), false)?;
    println!(
        "secret key: {} (keep it secret; it never goes on a device)",
        key_path.display()
    );
    println!("public key: {}", pub_path.display());
    println!(
        "  {} (add it to the device config's trusted keys)",
        hex::encode(public)
    );
    Ok(())
}

/// Creates `path` (never overwriting), owner-only if `secret` (on Unix).
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), ToolError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            ToolError::Exists(path.to_path_buf())
        } else {
            write_error(path)(error)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(write_error(path))
}

/// Reads a secret key file written by [`keygen`].
fn read_secret(path: &Path) -> Result<[u8; 32], ToolError> {
    let text = read_file(path)?;
    let bad = |why: String| ToolError::BadKey {
        path: path.to_path_buf(),
        why,
    };
    let text = std::str::from_utf8(&text).map_err(|_| bad("not a key file (not text)".into()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|e| bad(format!("not a hex 32-byte secret key ({e})")))?;
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(bad("this is a public key; sign with the .key file".into()));
    }
    Ok(seed)
}

/// Signs `module` for `protocol` with the secret key in `key`, recording
/// `version` and the `limits` the module asks for in the manifest (a device
/// that allows less refuses it with 409), and writes the signed file
/// to `out` (which may be `module` itself). A signature already in the file is
/// replaced. Prints what it wrote.
///
/// # Errors
///
/// [`ToolError::File`], [`ToolError::BadKey`], or [`ToolError::Module`] if
/// the input is not a well-formed module or the protocol or version is empty.
pub fn sign(
    module: &Path,
    key: &Path,
    protocol: &str,
    version: &str,
    limits: RequestedLimits,
    out: &Path,
) -> Result<(), ToolError> {
    let wasm = read_file(module)?;
    let secret = read_secret(key)?;
    let signed = sign_bytes(&wasm, &secret, protocol, version, limits).map_err(|error| {
        ToolError::Module {
            path: module.to_path_buf(),
            error,
        }
    })?;
    std::fs::write(out, &signed).map_err(write_error(out))?;
    let public = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
    println!(
        "wrote {} ({} bytes): protocol `{protocol}`, version {version}, signed by {}",
        out.display(),
        signed.len(),
        hex::encode(public)
    );
    Ok(())
}

fn sign_bytes(
    wasm: &[u8],
    secret: &[u8; 32],
    protocol: &str,
    version: &str,
    limits: RequestedLimits,
) -> Result<Vec<u8>, wasmgate::store::ModuleError> {
    let manifest = Manifest {
        protocol: protocol.to_string(),
        version: version.to_string(),
        abi: ABI_VERSION,
        limits,
    };
    wasmgate::store::sign(wasm, &manifest, secret)
}

/// A report on a module file: size, sha256, signature, manifest, the guest
/// ABI check (with the default guest limits), imports and exports.
///
/// # Errors
///
/// [`ToolError::File`] if it cannot be read, [`ToolError::Module`] if its
/// framing or signature section is broken. A module that fails the ABI check
/// is reported, not an error.
pub fn inspect(module: &Path) -> Result<String, ToolError> {
    let bytes = read_file(module)?;
    let m = Module::parse(&bytes, "").map_err(|error| ToolError::Module {
        path: module.to_path_buf(),
        error,
    })?;
    let mut r = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(r, "file:      {}", module.display());
    let _ = writeln!(
        r,
        "size:      {} bytes ({} of wasm, {} of signature section)",
        bytes.len(),
        m.wasm.len(),
        bytes.len() - m.wasm.len()
    );
    let _ = writeln!(r, "sha256:    {} (of the wasm)", hex::encode(m.sha256));
    let protocol = match &m.signature {
        None => {
            let _ = writeln!(
                r,
                "signature: none (devices accept it only in development mode)"
            );
            "inspect".to_string()
        }
        Some(sig) => {
            let key = hex::encode(sig.key);
            let state = match m.verify(&[sig.key], false) {
                Ok(_) => "valid",
                Err(_) => "INVALID",
            };
            let _ = writeln!(r, "signature: {state}, by key {key}");
            let l = &m.manifest.limits;
            let mut limits = Vec::new();
            if let Some(fuel) = l.fuel_per_callback {
                limits.push(format!("fuel_per_callback {fuel}"));
            }
            if let Some(pages) = l.max_memory_pages {
                limits.push(format!("max_memory_pages {pages}"));
            }
            let _ = writeln!(
                r,
                "manifest:  protocol `{}`, version {}, abi {}, limits: {}",
                m.manifest.protocol,
                m.manifest.version,
                m.manifest.abi,
                if limits.is_empty() {
                    "none requested".to_string()
                } else {
                    limits.join(", ")
                }
            );
            m.manifest.protocol.clone()
        }
    };
    match Guest::load(&Guest::engine(), &protocol, &m.wasm, GuestLimits::DEFAULT) {
        Ok(_) => {
            let _ = writeln!(
                r,
                "ABI check: ok (guest ABI v{ABI_VERSION}, default limits)"
            );
        }
        Err(e) => {
            let _ = writeln!(r, "ABI check: FAILED: {e}");
        }
    }
    match wasm_interface(&m.wasm) {
        Ok((imports, exports)) => {
            for (title, items) in [("imports", imports), ("exports", exports)] {
                let _ = writeln!(r, "{title} ({}):", items.len());
                for (name, what) in items {
                    let _ = writeln!(r, "  {name}: {what}");
                }
            }
        }
        Err(why) => {
            let _ = writeln!(r, "imports/exports: cannot read them: {why}");
        }
    }
    Ok(r)
}

/// A cursor over wasm bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("unexpected end at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("{n} bytes at byte {} run past the end", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Unsigned LEB128, at most `bits` bits.
    fn leb(&mut self, bits: u32) -> Result<u64, String> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift >= bits {
                return Err(format!("integer too long at byte {}", self.pos));
            }
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.leb(35).map(|v| v as u32)
    }

    fn name(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn valtype(&mut self) -> Result<&'static str, String> {
        Ok(match self.byte()? {
            0x7f => "i32",
            0x7e => "i64",
            0x7d => "f32",
            0x7c => "f64",
            0x7b => "v128",
            0x70 => "funcref",
            0x6f => "externref",
            b => return Err(format!("value type 0x{b:02x} is not one this tool reads")),
        })
    }

    /// Limits: `initial N, maximum M` (memory in pages, tables in elements).
    fn limits(&mut self) -> Result<String, String> {
        let flags = self.byte()?;
        let bits = if flags & 4 != 0 { 64 } else { 32 };
        let min = self.leb(bits + 6)?;
        let shared = if flags & 2 != 0 { ", shared" } else { "" };
        if flags & 1 != 0 {
            let max = self.leb(bits + 6)?;
            Ok(format!("initial {min}, maximum {max}{shared}"))
        } else {
            Ok(format!("initial {min}, no maximum{shared}"))
        }
    }
}

/// `(i32, i32) -> i32`.
fn signature(params: &[&str], results: &[&str]) -> String {
    let p = params.join(", ");
    match results {
        [] => format!("({p})"),
        [one] => format!("({p}) -> {one}"),
        many => format!("({p}) -> ({})", many.join(", ")),
    }
}

type Items = Vec<(String, String)>;

/// The module's imports and exports, each as (name, description), by walking
/// the type (1), import (2), function (3), memory (5) and export (7) sections.
fn wasm_interface(wasm: &[u8]) -> Result<(Items, Items), String> {
    let mut r = Reader::new(wasm);
    if r.take(8)? != b"\0asm\x01\0\0\0" {
        return Err("not a WebAssembly module".into());
    }
    let mut types: Vec<String> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new(); // type index per function, imports first
    let mut memories: Vec<String> = Vec::new(); // limits per memory, imports first
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let describe_func = |types: &[String], t: u32| {
        types
            .get(t as usize)
            .map_or_else(|| format!("func (type {t})"), |s| format!("func {s}"))
    };
    while !r.at_end() {
        let id = r.byte()?;
        let size = r.u32()? as usize;
        let mut s = Reader::new(r.take(size)?);
        match id {
            1 => {
                for _ in 0..s.u32()? {
                    if s.byte()? != 0x60 {
                        return Err("the type section uses types this tool does not read".into());
                    }
                    let params = (0..s.u32()?)
                        .map(|_| s.valtype())
                        .collect::<Result<Vec<_>, _>>()?;
                    let results = (0..s.u32()?)
                        .map(|_| s.valtype())
                        .collect::<Result<Vec<_>, _>>()?;
                    types.push(signature(&params, &results));
                }
            }
            2 => {
                for _ in 0..s.u32()? {
                    let name = format!("{}.{}", s.name()?, s.name()?);
                    let what = match s.byte()? {
                        0 => {
                            let t = s.u32()?;
                            func_types.push(t);
                            describe_func(&types, t)
                        }
                        1 => format!("table {} ({})", s.valtype()?, s.limits()?),
                        2 => {
                            let limits = s.limits()?;
                            memories.push(limits.clone());
                            format!("memory (pages: {limits})")
                        }
                        3 => {
                            let t = s.valtype()?;
                            let m = if s.byte()? == 1 { " (mutable)" } else { "" };
                            format!("global {t}{m}")
                        }
                        4 => {
                            s.byte()?;
                            format!("tag (type {})", s.u32()?)
                        }
                        k => return Err(format!("import `{name}` has unknown kind {k}")),
                    };
                    imports.push((name, what));
                }
            }
            3 => {
                for _ in 0..s.u32()? {
                    func_types.push(s.u32()?);
                }
            }
            5 => {
                for _ in 0..s.u32()? {
                    memories.push(s.limits()?);
                }
            }
            7 => {
                for _ in 0..s.u32()? {
                    let name = s.name()?;
                    let kind = s.byte()?;
                    let index = s.u32()?;
                    let what = match kind {
                        0 => func_types
                            .get(index as usize)
                            .map_or_else(|| format!("func {index}"), |&t| describe_func(&types, t)),
                        1 => "table".to_string(),
                        2 => memories
                            .get(index as usize)
                            .map_or_else(|| "memory".to_string(), |l| format!("memory, {l} pages")),
                        3 => "global".to_string(),
                        4 => "tag".to_string(),
                        k => format!("unknown kind {k}"),
                    };
                    exports.push((name, what));
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// Uploads `module` to the device's admin API: `PUT {device}/_admin/modules/{protocol}`
/// with `Authorization: Bearer <token>`. If `key` is given and the module is
/// unsigned, it is signed first for `protocol` with version
/// [`DEV_VERSION`]; a module that is already signed is sent as it is (the key
/// is then not used). Shows a progress bar on stderr for modules over
/// [`PROGRESS_ABOVE`] bytes. Returns the device's answer in words.
///
/// # Errors
///
/// [`ToolError::Argument`] for a device URL that is not `http://host[:port]`
/// or an unusable protocol name; file, key and module errors as for [`sign`];
/// [`ToolError::WrongProtocol`] before connecting if the module is signed for
/// another protocol; [`ToolError::Network`] (naming the URL) if the device
/// cannot be reached or the connection fails or times out;
/// [`ToolError::BadResponse`]; [`ToolError::Device`] for a status other than 2xx.
pub fn upload(
    device: &str,
    protocol: &str,
    token: Option<&str>,
    module: &Path,
    key: Option<&Path>,
) -> Result<String, ToolError> {
    let url = DeviceUrl::parse(device)?;
    if protocol.is_empty()
        || !protocol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ToolError::Argument(format!(
            "protocol name `{protocol}` may only contain letters, digits, `-`, `_` and `.`"
        )));
    }
    if let Some(t) = token
        && t.bytes().any(|b| b.is_ascii_control())
    {
        return Err(ToolError::Argument(
            "the token contains control characters".into(),
        ));
    }
    let bytes = read_file(module)?;
    let module_error = |error| ToolError::Module {
        path: module.to_path_buf(),
        error,
    };
    let parsed = Module::parse(&bytes, protocol).map_err(module_error)?;
    let body = match (&parsed.signature, key) {
        (Some(_), _) if parsed.manifest.protocol != protocol => {
            return Err(ToolError::WrongProtocol {
                signed_for: parsed.manifest.protocol,
                upload: protocol.to_string(),
            });
        }
        (Some(_), Some(_)) => {
            eprintln!(
                "note: {} is already signed; --key not used",
                module.display()
            );
            bytes
        }
        (None, Some(key)) => {
            let secret = read_secret(key)?;
            sign_bytes(
                &bytes,
                &secret,
                protocol,
                DEV_VERSION,
                RequestedLimits::default(),
            )
            .map_err(module_error)?
        }
        (_, None) => bytes,
    };
    let path = format!("{}/_admin/modules/{protocol}", url.base_path);
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.authority,
        body.len()
    );
    if let Some(t) = token {
        let _ = write!(head, "Authorization: Bearer {t}\r\n");
    }
    head.push_str("\r\n");

    let net = |error: String| ToolError::Network {
        url: device.to_string(),
        error,
    };
    let mut stream = url.connect().map_err(net)?;
    let sent = send(&mut stream, head.as_bytes(), &body);
    // A device that refuses early (401, 413) may answer and close before it
    // has read the whole body: its answer says more than the write error.
    let response = match read_response(&mut stream) {
        Ok(response) => response,
        Err(e) => {
            return Err(match sent {
                Err(write_error) => net(io_message(&write_error)),
                Ok(()) => match e {
                    ResponseError::Io(e) => net(io_message(&e)),
                    ResponseError::Bad(why) => ToolError::BadResponse {
                        url: device.to_string(),
                        why,
                    },
                },
            });
        }
    };
    answer(response)
}

/// `http://host[:port][/prefix]`.
#[derive(Debug, PartialEq, Eq)]
struct DeviceUrl {
    /// `host:port` as written (for the `Host` header).
    authority: String,
    host: String,
    port: u16,
    /// Path prefix without a trailing `/` (usually empty).
    base_path: String,
}

impl DeviceUrl {
    fn parse(url: &str) -> Result<Self, ToolError> {
        let bad = |why: &str| ToolError::Argument(format!("device URL `{url}`: {why}"));
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(bad(
                "https is not supported; use the device's http:// address",
            ));
        }
        if !lower.starts_with("http://") {
            return Err(bad(
                "must start with http://, e.g. http://192.168.1.20:8080",
            ));
        }
        let rest = &url["http://".len()..];
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        };
        if path.contains(['?', '#', ' ']) {
            return Err(bad("no query, fragment or spaces please"));
        }
        Ok(DeviceUrl {
            authority: authority.to_string(),
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        let mut last = format!("{} resolves to no address", self.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(IO_TIMEOUT))
                        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
                        .map_err(|e| io_message(&e))?;
                    return Ok(stream);
                }
                Err(e) => last = io_message(&e),
            }
        }
        Err(last)
    }
}

fn io_message(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            format!("timed out ({e})")
        }
        _ => e.to_string(),
    }
}

/// Writes the head, then the body in [`UPLOAD_PIECE`] pieces.
fn send(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    stream.write_all(head)?;
    let bar = if body.len() > PROGRESS_ABOVE {
        let bar =
            ProgressBar::with_draw_target(Some(body.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    for piece in body.chunks(UPLOAD_PIECE) {
        if let Err(e) = stream.write_all(piece) {
            bar.abandon();
            return Err(e);
        }
        bar.inc(piece.len() as u64);
    }
    bar.finish_and_clear();
    stream.flush()
}

/// The parts of a response the tool uses.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: String,
    body: Vec<u8>,
}

#[derive(Debug)]
enum ResponseError {
    Io(io::Error),
    Bad(String),
}

/// Reads one response: the head, then a `Content-Length` or chunked body, or
/// everything up to the close.
fn read_response(stream: &mut impl Read) -> Result<Response, ResponseError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(ResponseError::Bad("response head too long".into()));
        }
        let n = stream.read(&mut chunk).map_err(ResponseError::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ResponseError::Bad("the connection closed without an answer".into())
            } else {
                ResponseError::Bad("the connection closed in the middle of the answer".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head_end);
    let head = std::str::from_utf8(&buf)
        .map_err(|_| ResponseError::Bad("response head is not text".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, status, reason) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let status: u16 = match (version, status.and_then(|s| s.parse().ok())) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") && (100..1000).contains(&s) => s,
        _ => {
            return Err(ResponseError::Bad(format!(
                "status line `{}`",
                status_line.escape_debug()
            )));
        }
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ResponseError::Bad(format!(
                "header line `{}`",
                line.escape_debug()
            )));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ResponseError::Bad(format!("Content-Length `{value}`")))?;
            if n > MAX_RESPONSE_BODY {
                return Err(ResponseError::Bad(format!(
                    "a body of {n} bytes is too long"
                )));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    loop {
        let complete = match (chunked, length) {
            (true, _) => decode_chunked(&body)?,
            (false, Some(n)) if body.len() >= n => {
                body.truncate(n);
                Some(std::mem::take(&mut body))
            }
            _ => None,
        };
        if let Some(body) = complete {
            return Ok(Response {
                status,
                reason: reason.to_string(),
                body,
            });
        }
        if body.len() > MAX_RESPONSE_BODY {
            return Err(ResponseError::Bad("response body too long".into()));
        }
        let n = stream.read(&mut chunk).map_err(ResponseError::Io)?;
        if n == 0 {
            if chunked || length.is_some() {
                return Err(ResponseError::Bad(
                    "the connection closed in the middle of the answer".into(),
                ));
            }
            return Ok(Response {
                status,
                reason: reason.to_string(),
                body,
            });
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

/// A whole chunked body, `None` if more bytes are needed.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, ResponseError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[..line_end]).unwrap_or("?");
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ResponseError::Bad(format!("chunk size `{}`", line.escape_debug())))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line; none are expected.
            return Ok(data.starts_with(b"\r\n").then_some(out));
        }
        if size > MAX_RESPONSE_BODY || out.len() + size > MAX_RESPONSE_BODY {
            return Err(ResponseError::Bad(format!(
                "chunk of {size} bytes is too large"
            )));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err(ResponseError::Bad("chunk data not followed by CRLF".into()));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The device's answer in words, or [`ToolError::Device`].
fn answer(response: Response) -> Result<String, ToolError> {
    let text = String::from_utf8_lossy(&response.body).trim().to_string();
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    if !(200..300).contains(&response.status) {
        let message = json
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(str::to_string)
            .or_else(|| (!text.is_empty()).then(|| text.chars().take(300).collect()))
            .unwrap_or(response.reason);
        return Err(ToolError::Device {
            status: response.status,
            message,
        });
    }
    let Some(v) = json else {
        return Ok(if text.is_empty() {
            format!("device answered {} {}", response.status, response.reason)
        } else {
            format!("device answered {}: {text}", response.status)
        });
    };
    let (Some(protocol), Some(state)) = (v["protocol"].as_str(), v["state"].as_str()) else {
        return Ok(format!("device answered {}: {v}", response.status));
    };
    let mut words = format!("protocol `{protocol}`: {state}");
    if let Some(version) = v["module"]["version"].as_str() {
        let _ = write!(words, ", version {version}");
    }
    if let Some(sha) = v["module"]["sha256"].as_str() {
        let short: String = sha.chars().take(16).collect();
        let _ = write!(words, " (sha256 {short})");
    }
    if let (Some(n), Some(faults)) = (
        v["trial_callbacks"].as_u64(),
        v["trial_max_faults"].as_u64(),
    ) {
        let _ = write!(
            words,
            "; rolled back if it faults more than {faults} times in its first {n} callbacks"
        );
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use wasmgate::store::Trust;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop (only it,
    /// never the temp dir itself).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("wasmgate-tools-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            assert_ne!(self.0, std::env::temp_dir());
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn public_of(prefix: &Path) -> [u8; 32] {
        let text = std::fs::read_to_string(with_suffix(prefix, ".pub")).unwrap();
        let mut key = [0; 32];
        hex::decode_to_slice(text.trim(), &mut key).unwrap();
        key
    }

    #[test]
    fn keygen_sign_inspect_round_trip() {
        let dir = TempDir::new("round-trip");
        let prefix = dir.0.join("dev");
        keygen(&prefix).unwrap();
        let key = public_of(&prefix);
        let module = dir.0.join("http_post.wasm");
        std::fs::write(&module, wasmgate_guests::HTTP_POST).unwrap();
        let out = dir.0.join("http_post.signed.wasm");
        let limits = RequestedLimits {
            fuel_per_callback: None,
            max_memory_pages: Some(2),
        };
        sign(
            &module,
            &dir.0.join("dev.key"),
            "http",
            "1.2.0",
            limits,
            &out,
        )
        .unwrap();

        let file = std::fs::read(&out).unwrap();
        let m = Module::parse(&file, "http").unwrap();
        assert_eq!(m.wasm, wasmgate_guests::HTTP_POST);
        assert_eq!(m.manifest.version, "1.2.0");
        assert_eq!(m.verify(&[key], false), Ok(Trust::Signed { key }));

        let report = inspect(&out).unwrap();
        for expected in [
            "signature: valid, by key",
            &hex::encode(key),
            "protocol `http`, version 1.2.0, abi 1, limits: max_memory_pages 2",
            "ABI check: ok",
            "lws.lws_write: func (i32, i32, i32, i32) -> i32",
            "callback: func (i32, i32, i32, i32, i32) -> i32",
            "memory: memory, initial ",
            &hex::encode(m.sha256),
        ] {
            assert!(
                report.contains(expected),
                "missing `{expected}` in:\n{report}"
            );
        }
    }

    #[test]
    fn keygen_refuses_to_overwrite_and_keeps_the_secret_private() {
        let dir = TempDir::new("keygen");
        let prefix = dir.0.join("k");
        keygen(&prefix).unwrap();
        let before = std::fs::read(with_suffix(&prefix, ".key")).unwrap();
        let err = keygen(&prefix).unwrap_err();
        assert!(matches!(err, ToolError::Exists(_)), "{err}");
        assert!(err.to_string().contains("k.key"), "{err}");
        assert_eq!(std::fs::read(with_suffix(&prefix, ".key")).unwrap(), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(with_suffix(&prefix, ".key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn signing_with_the_public_key_file_says_so() {
        let dir = TempDir::new("pubkey");
        let prefix = dir.0.join("k");
        keygen(&prefix).unwrap();
        let module = dir.0.join("m.wasm");
        std::fs::write(&module, wasmgate_guests::HELLO).unwrap();
        let err = sign(
            &module,
            &with_suffix(&prefix, ".pub"),
            "http",
            "1",
            RequestedLimits::default(),
            &dir.0.join("o"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("public key"), "{err}");
    }

    #[test]
    fn inspect_reports_an_unsigned_module_that_fails_the_abi_check() {
        let dir = TempDir::new("inspect");
        let module = dir.0.join("empty.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
        let report = inspect(&module).unwrap();
        assert!(report.contains("signature: none"), "{report}");
        assert!(
            report.contains("ABI check: FAILED: module exports no"),
            "{report}"
        );
        assert!(report.contains("imports (0)"), "{report}");
        std::fs::write(&module, b"not wasm").unwrap();
        assert!(matches!(inspect(&module), Err(ToolError::Module { .. })));
    }

    /// A one-shot device: answers one request with `response` and hands back
    /// the request bytes.
    fn fake_device(response: String) -> (String, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 8192];
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if request.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            conn.write_all(response.as_bytes()).unwrap();
            request
        });
        (url, handle)
    }

    fn body_of(request: &[u8]) -> &[u8] {
        let end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        &request[end + 4..]
    }

    #[test]
    fn upload_puts_the_module_with_the_token_and_reports_the_answer() {
        let dir = TempDir::new("upload");
        let module = dir.0.join("big.wasm");
        // Over PROGRESS_ABOVE, so it goes in many pieces with a progress bar.
        let mut big = wasmgate_guests::HELLO.to_vec();
        big.extend_from_slice(&[0, 0x80, 0x80, 0x05]); // custom section of 81920 bytes
        big.push(1);
        big.push(b'x');
        big.resize(big.len() + 81_918, 0);
        std::fs::write(&module, &big).unwrap();
        let json = r#"{"protocol":"http","state":"trial","module":{"version":"unsigned"},"trial_callbacks":100,"trial_max_faults":0}"#;
        let (url, device) = fake_device(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ));
        let words = upload(&format!("{url}/"), "http", Some("s3cret"), &module, None).unwrap();
        let request = device.join().unwrap();
        let head = String::from_utf8_lossy(&request[..200]);
        assert!(
            head.starts_with("PUT /_admin/modules/http HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("Authorization: Bearer s3cret\r\n"), "{head}");
        assert_eq!(body_of(&request), big);
        assert_eq!(
            words,
            "protocol `http`: trial, version unsigned; rolled back if it faults more than 0 times in its first 100 callbacks"
        );
    }

    #[test]
    fn upload_with_a_key_signs_an_unsigned_module_first() {
        let dir = TempDir::new("upload-sign");
        let prefix = dir.0.join("k");
        keygen(&prefix).unwrap();
        let module = dir.0.join("m.wasm");
        std::fs::write(&module, wasmgate_guests::HELLO).unwrap();
        let (url, device) =
            fake_device("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".into());
        let words = upload(
            &url,
            "web",
            None,
            &module,
            Some(&with_suffix(&prefix, ".key")),
        )
        .unwrap();
        assert_eq!(words, "device answered 204 No Content");
        let request = device.join().unwrap();
        assert!(!String::from_utf8_lossy(&request).contains("Authorization"));
        let m = Module::parse(body_of(&request), "web").unwrap();
        assert_eq!(m.manifest.version, DEV_VERSION);
        assert_eq!(m.manifest.protocol, "web");
        let key = public_of(&prefix);
        assert_eq!(m.verify(&[key], false), Ok(Trust::Signed { key }));
    }

    #[test]
    fn refused_upload_carries_the_devices_error() {
        let dir = TempDir::new("upload-401");
        let module = dir.0.join("m.wasm");
        std::fs::write(&module, wasmgate_guests::HELLO).unwrap();
        let (url, device) = fake_device(
            "HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"error\":\"wrong \r\n7\r\ntoken\"}\r\n0\r\n\r\n"
                .into(),
        );
        let err = upload(&url, "http", Some("nope"), &module, None).unwrap_err();
        device.join().unwrap();
        assert!(
            matches!(&err, ToolError::Device { status: 401, message } if message == "wrong token"),
            "{err}"
        );
        assert_eq!(err.to_string(), "device answered 401: wrong token");
    }

    #[test]
    fn unreachable_device_is_named_in_the_error() {
        let dir = TempDir::new("upload-refused");
        let module = dir.0.join("m.wasm");
        std::fs::write(&module, wasmgate_guests::HELLO).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = upload(&url, "http", None, &module, None).unwrap_err();
        assert!(matches!(err, ToolError::Network { .. }), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[test]
    fn module_signed_for_another_protocol_is_not_uploaded() {
        let dir = TempDir::new("upload-wrong");
        let prefix = dir.0.join("k");
        keygen(&prefix).unwrap();
        let module = dir.0.join("m.wasm");
        std::fs::write(&module, wasmgate_guests::HELLO).unwrap();
        sign(
            &module,
            &with_suffix(&prefix, ".key"),
            "http",
            "1",
            wasmgate::store::RequestedLimits::default(),
            &module,
        )
        .unwrap();
        // Nothing listens here: the check happens before connecting.
        let err = upload("http://127.0.0.1:9", "echo", None, &module, None).unwrap_err();
        assert!(matches!(err, ToolError::WrongProtocol { .. }), "{err}");
    }

    #[test]
    fn device_urls_are_parsed_strictly() {
        let u = DeviceUrl::parse("http://192.168.1.20:8080/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("192.168.1.20", 8080, "")
        );
        let u = DeviceUrl::parse("http://[::1]:81/dev/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("::1", 81, "/dev")
        );
        assert_eq!(DeviceUrl::parse("http://device.local").unwrap().port, 80);
        for bad in [
            "https://x",
            "x:80",
            "http://",
            "http://x:port",
            "http://x/?a",
        ] {
            assert!(DeviceUrl::parse(bad).is_err(), "{bad}");
        }
        let err = upload("http://x", "a/b", None, Path::new("m"), None).unwrap_err();
        assert!(matches!(err, ToolError::Argument(_)), "{err}");
    }
}
