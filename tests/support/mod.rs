//! Helpers shared by the end-to-end tests: start the real `wasmgate` binary on
//! an ephemeral port with a device config, and talk to it with raw sockets or
//! curl.
#![allow(dead_code, reason = "each test file uses a different part")]

pub mod autobahn;
pub mod certs;
pub mod ws_frame;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A running simulator process, killed on drop.
pub struct Sim {
    child: Child,
    args: Vec<String>,
    /// Address of each listener, in config order, and whether it is TLS.
    pub addrs: Vec<(SocketAddr, bool)>,
    logs: Arc<Mutex<String>>,
    dir: PathBuf,
}

/// A device config with one listener on an ephemeral port. `protocols` are
/// `(name, "builtin:guest")`, `mounts` are `(prefix, protocol)`; `extra` is
/// appended to `[limits]` / `[guest]` sections as given.
pub fn device_toml(protocols: &[(&str, &str)], mounts: &[(&str, &str)], extra: &str) -> String {
    let mut t = String::from("[device]\nname = \"test device\"\nflash = \"flash\"\n");
    t.push_str(extra);
    t.push('\n');
    for (name, module) in protocols {
        t.push_str(&format!(
            "[[protocol]]\nname = \"{name}\"\nmodule = \"{module}\"\n"
        ));
    }
    let mounts: Vec<String> = mounts
        .iter()
        .map(|(prefix, p)| format!("\"{prefix}\" = \"{p}\""))
        .collect();
    t.push_str(&format!(
        "[[listener]]\nname = \"http\"\nport = 80\nforward = 0\nmounts = {{ {} }}\n",
        mounts.join(", ")
    ));
    t
}

/// A fresh directory of this test's own, removed when its [`Sim`] drops.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasmgate-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Sim {
    /// Starts `wasmgate sim --config` with `toml` and waits until it listens.
    pub fn start(toml: &str) -> Sim {
        Self::start_with(toml, &[])
    }

    /// Like [`start`](Self::start), with more `wasmgate sim` arguments
    /// (`--link ...`, `--net ...`).
    pub fn start_with(toml: &str, args: &[&str]) -> Sim {
        let dir = scratch_dir();
        let config = dir.join("device.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut all = vec!["sim", "--config", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|a| a.to_string()).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Self::spawn(&all, dir)
    }

    /// The network the simulator runs, as the tests ask for it:
    /// `WASMGATE_NET` (`smoltcp`, the default, or `host`).
    pub fn net() -> String {
        std::env::var("WASMGATE_NET").unwrap_or_else(|_| "smoltcp".into())
    }

    /// Starts `wasmgate` with `args` and waits for the listener banner. `dir` is
    /// the test's own scratch directory (from [`scratch_dir`]): it is deleted
    /// when the `Sim` drops.
    pub fn spawn(args: &[&str], dir: PathBuf) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .args(args)
            .env("WASMGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wasmgate");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            // Listener lines hold `http://ADDR/` or `https://ADDR/`.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.trim_start().starts_with("listener ") {
                    continue;
                }
                for (scheme, tls) in [("http://", false), ("https://", true)] {
                    if let Some(url) = line.split(scheme).nth(1) {
                        let addr = url.split_whitespace().next().unwrap_or("");
                        let _ = tx.send((addr.trim_end_matches('/').to_string(), tls));
                    }
                }
            }
        });
        let stderr = child.stderr.take().expect("piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("logs").push_str(&(line + "\n"));
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                let logs = logs.lock().expect("logs").clone();
                panic!("wasmgate did not print a listener address; stderr:\n{logs}")
            });
        let mut addrs = Vec::new();
        for (addr, tls) in std::iter::once(first).chain(std::iter::from_fn(|| {
            rx.recv_timeout(Duration::from_millis(50)).ok()
        })) {
            addrs.push((addr.parse().expect("socket address"), tls));
        }
        Sim {
            child,
            args: args.iter().map(|a| a.to_string()).collect(),
            addrs,
            logs,
            dir,
        }
    }

    /// The scratch directory (config, flash) of this simulator.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops the simulator, as a power cycle would, and starts it again with
    /// the same arguments and the same scratch directory (its flash survives).
    pub fn restart(mut self) -> Sim {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args: Vec<String> = std::mem::take(&mut self.args);
        let dir = std::mem::replace(&mut self.dir, PathBuf::new());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sim::spawn(&args, dir)
    }

    /// The first plain listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(_, tls)| !tls)
            .expect("a plain listener")
            .0
    }

    /// The first TLS listener's address.
    pub fn tls_addr(&self) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(_, tls)| *tls)
            .expect("a TLS listener")
            .0
    }

    /// Everything the simulator logged so far (stderr).
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").clone()
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "log line `{needle}` never came; logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens a TCP connection to the first listener.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    /// The simulator's resident memory in KiB (Linux `/proc`), if readable.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `r`: the head, then a body framed by
/// Content-Length, chunked encoding, or the end of the stream. `head_only` for
/// responses to HEAD.
pub fn read_response(r: &mut impl BufRead, head_only: bool) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1."), "not a status line: {line:?}");
    let status = line[9..12].parse().expect("status code");
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end_matches("\r\n");
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').expect("header with a colon");
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 100 || status == 204 || status == 304 {
        return resp;
    }
    if let Some(len) = resp.header("content-length") {
        let mut body = vec![0; len.parse().expect("length")];
        r.read_exact(&mut body).expect("body");
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim_end().split(';').next().unwrap_or(""), 16)
                .expect("hex chunk size");
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).expect("chunk");
            assert_eq!(&chunk[size..], b"\r\n", "chunk ends with CRLF");
            if size == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        r.read_to_end(&mut resp.body)
            .expect("body to end of stream");
    }
    resp
}

/// Sends `request` on a new connection and reads one response.
pub fn roundtrip(sim: &Sim, request: &[u8]) -> Response {
    let mut s = sim.connect();
    s.write_all(request).expect("send");
    let head_only = request.starts_with(b"HEAD ");
    read_response(&mut BufReader::new(s), head_only)
}

/// `curl` with `args`, or `None` (with the reason printed) when curl is not
/// installed. Returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> Option<(i32, String, String)> {
    match Command::new("curl").args(args).output() {
        Ok(out) => Some((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Err(e) => {
            eprintln!("SKIPPED: curl is not installed ({e}); tests/run.sh installs it");
            None
        }
    }
}

/// Runs the `wasmgate` binary with `args`: (success, stdout, stderr).
pub fn wasmgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(args)
        .output()
        .expect("run wasmgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True if the peer closed the connection (EOF or reset) within the read timeout.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// `len` pseudo-random bytes (xorshift, the same every run): test payloads.
pub fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
