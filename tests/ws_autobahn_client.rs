//! RFC 6455 conformance of the WebSocket *client*, measured the way
//! libwebsockets measures its own: the Autobahn TestSuite's `fuzzingserver`
//! runs every case against the `autobahn-client` guest in the real simulator.
//! The device opens `/getCaseCount` (a `[[client]]` in its config); the guest
//! then runs each case, echoing what the server sends, and asks for the
//! reports. It runs over `ws://`, and again over `wss://`: the fuzzingserver
//! gets a certificate from a CA made for the test, the device trusts that CA
//! (`[tls] ca`) and its `[[client]]` says `tls = true`; the guest then opens
//! its own connections with `LCCSCF_USE_SSL`. Cases 12.* and 13.* need
//! permessage-deflate, which the device does not offer, and are left out.
//!
//! The guest connects its later connections to 127.0.0.1:9001 (it cannot read
//! the port of the config's connection), so the fuzzingserver listens there,
//! and the test fails at once, saying so, when something else holds that port.
//! The two runs take turns on it.
//!
//! Autobahn is Python 2 software; `tests/autobahn/setup.sh` installs it into a
//! virtualenv (once, cached in `~/.cache/wasmgate-autobahn` or
//! `$AUTOBAHN_VENV`). Where it cannot be installed the test says `SKIPPED` and
//! passes. The full report stays in `target/tmp/autobahn-client/` for a browser.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::autobahn::{assert_all_pass, autobahn_venv, read_results, tail};
use support::certs::Ca;
use support::{Sim, device_toml};

/// Where the `autobahn-client` guest connects (its `SERVER_PORT`).
const PORT: u16 = 9001;
/// The agent name the guest files its results under.
const AGENT: &str = "wasmgate";
/// How long the whole run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long wstest may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The two runs share port 9001: one at a time.
static PORT_9001: Mutex<()> = Mutex::new(());

/// The device: the autobahn-client guest, whose first connection the config
/// opens, with frame and message limits that let case 9's 16 MiB messages
/// through; with `trust`, over TLS to a server with a certificate from that CA.
fn client_device(port: u16, trust: Option<&str>) -> Sim {
    let tls = trust.map_or(String::new(), |ca| format!("[tls]\nca = '''\n{ca}'''\n"));
    let mut toml = device_toml(
        &[("autobahn-client", "builtin:autobahn-client")],
        &[],
        &format!(
            "[limits]\nmax_connections = 4\n\
             ws_max_frame_bytes = 16777216\nws_max_message_bytes = 16777216\n{tls}"
        ),
    );
    // device_toml writes the listener table last; a new array-of-tables
    // header after it starts the client's own table.
    toml.push_str(&format!(
        "\n[[client]]\nname = \"autobahn\"\nprotocol = \"autobahn-client\"\n\
         address = \"127.0.0.1\"\nport = {port}\npath = \"/getCaseCount\"\ntls = {}\n",
        trust.is_some()
    ));
    Sim::start(&toml)
}

/// The wstest process, killed when dropped.
struct Wstest(Child);

impl Drop for Wstest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `addr` accepts connections; `Err` if `wstest` exits first or
/// `limit` passes.
fn wait_until_listening(
    wstest: &mut Wstest,
    addr: SocketAddr,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = wstest.0.try_wait() {
            return Err(format!("wstest exited ({status}) before listening"));
        }
        if start.elapsed() > limit {
            return Err(format!("nothing listens on {addr} after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the guest's `all N cases done` line; N, or why not.
fn wait_for_the_run(sim: &Sim, wstest: &mut Wstest, limit: Duration) -> Result<u32, String> {
    let start = Instant::now();
    loop {
        let logs = sim.logs();
        if let Some(n) = logs.lines().find_map(|l| {
            let rest = l.split("autobahn-client: all ").nth(1)?;
            rest.split(" cases done").next()?.trim().parse().ok()
        }) {
            return Ok(n);
        }
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains("autobahn-client: gave up"))
        {
            return Err(format!("the guest gave up: {line}"));
        }
        if let Ok(Some(status)) = wstest.0.try_wait() {
            return Err(format!("wstest exited ({status}) during the run"));
        }
        if start.elapsed() > limit {
            return Err(format!("the run did not end within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn autobahn_fuzzingserver_cases_pass_against_the_autobahn_client_guest() {
    fuzzingserver_run(false);
}

#[test]
fn autobahn_fuzzingserver_cases_pass_against_the_autobahn_client_guest_over_tls() {
    fuzzingserver_run(true);
}

/// Runs every case with the device as the client (over TLS with `tls`) and
/// requires each to pass.
fn fuzzingserver_run(tls: bool) {
    let _turn = PORT_9001
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = match autobahn_venv() {
        Ok(venv) => venv,
        Err(why) => {
            eprintln!("SKIPPED: Autobahn TestSuite not installable: {why}");
            return;
        }
    };
    if let Err(e) = TcpListener::bind(("127.0.0.1", PORT)) {
        panic!(
            "port {PORT} is not free ({e}); the autobahn-client guest connects there, \
             so the fuzzingserver must listen on it"
        );
    }
    let (scheme, dir) = if tls {
        ("wss", "autobahn-client-tls")
    } else {
        ("ws", "autobahn-client")
    };
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let outdir = work.join("report");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&outdir).expect("report dir");
    let mut spec = serde_json::json!({
        "url": format!("{scheme}://127.0.0.1:{PORT}"),
        "outdir": outdir,
        "cases": ["*"],
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {},
    });
    let ca = tls.then(|| Ca::new("autobahn fuzzingserver CA"));
    if let Some(ca) = &ca {
        let leaf = ca.issue(&["127.0.0.1"]);
        let (cert, key) = (work.join("server.pem"), work.join("server.key"));
        std::fs::write(&cert, &leaf.chain_pem).expect("write certificate");
        std::fs::write(&key, &leaf.key_pem).expect("write key");
        spec["cert"] = serde_json::json!(cert);
        spec["key"] = serde_json::json!(key);
    }
    let spec_path = work.join("fuzzingserver.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let log_path = work.join("wstest.log");
    let log = std::fs::File::create(&log_path).expect("wstest log");
    let wstest_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut wstest = Wstest(
        Command::new(venv.join("bin/python"))
            .arg(venv.join("bin/wstest_local.py"))
            .args(["-m", "fuzzingserver", "-s"])
            .arg(&spec_path)
            // No embedded web server (it would take port 8080).
            .args(["--webport", "0"])
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start wstest"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    if let Err(why) = wait_until_listening(&mut wstest, addr, START_TIMEOUT) {
        panic!("wstest fuzzingserver: {why}; its log:\n{}", wstest_log());
    }

    let sim = client_device(PORT, ca.as_ref().map(|ca| ca.pem.as_str()));
    let count = match wait_for_the_run(&sim, &mut wstest, RUN_TIMEOUT) {
        Ok(n) => n,
        Err(why) => panic!(
            "{why}; wstest log (tail):\n{}\nsimulator log (tail):\n{}",
            tail(&wstest_log(), 40),
            tail(&sim.logs(), 80)
        ),
    };
    // The reports are written before the server closes /updateReports.
    drop(wstest);

    let results = read_results(&outdir, AGENT);
    assert!(!results.is_empty(), "Autobahn ran no cases");
    assert_eq!(
        results.len(),
        count as usize,
        "the guest ran {count} cases; the report has {}",
        results.len()
    );
    assert_all_pass(
        &format!("Autobahn fuzzingserver (client) over {scheme}://"),
        &results,
        &work,
        &outdir,
        &sim,
    );
}
