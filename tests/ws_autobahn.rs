//! RFC 6455 conformance of the WebSocket server, measured the way libwebsockets
//! measures its own: the Autobahn TestSuite's `fuzzingclient` runs every case
//! against the `ws-echo` guest in the real simulator, over `ws://` and again
//! over `wss://` (a TLS listener with a certificate made for the test). Cases
//! 12.* and 13.* need permessage-deflate, which the device does not offer, and
//! are left out.
//!
//! Autobahn is Python 2 software; `tests/autobahn/setup.sh` installs it into a
//! virtualenv (once, cached in `~/.cache/wasmgate-autobahn` or
//! `$AUTOBAHN_VENV`). Where it cannot be installed the test says `SKIPPED` and
//! passes. The full report stays in `target/tmp/autobahn/` for a browser.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::autobahn::{assert_all_pass, autobahn_venv, read_results, run_with_timeout};
use support::certs::Ca;
use support::{Sim, device_toml};

/// How long the whole fuzzingclient run may take (libwebsockets needs ~40 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The device: ws-echo as the default WebSocket protocol of the listener, with
/// frame and message limits that let case 9's 16 MiB messages through; with
/// `tls`, the listener serves a certificate Autobahn (which checks none) accepts.
fn echo_device(tls: bool) -> Sim {
    let mut toml = device_toml(
        &[("echo_server", "builtin:ws-echo")],
        &[],
        "[limits]\nmax_connections = 8\n\
         ws_max_frame_bytes = 16777216\nws_max_message_bytes = 16777216\n",
    );
    // device_toml writes the listener table last: these keys belong to it.
    toml.push_str("websocket = [\"echo_server\"]\ndefault_websocket = \"echo_server\"\n");
    if tls {
        let leaf = Ca::new("autobahn wss CA").issue(&["127.0.0.1"]);
        toml.push_str(&format!(
            "[[listener.certificate]]\ncert = '''\n{}'''\nkey = '''\n{}'''\n",
            leaf.chain_pem, leaf.key_pem
        ));
    }
    Sim::start(&toml)
}

#[test]
fn autobahn_fuzzingclient_cases_pass_against_ws_echo() {
    fuzzingclient_run(false);
}

#[test]
fn autobahn_fuzzingclient_cases_pass_against_ws_echo_over_tls() {
    fuzzingclient_run(true);
}

/// Runs every case against the device (over TLS with `tls`) and requires
/// each to pass.
fn fuzzingclient_run(tls: bool) {
    let venv = match autobahn_venv() {
        Ok(venv) => venv,
        Err(why) => {
            eprintln!("SKIPPED: Autobahn TestSuite not installable: {why}");
            return;
        }
    };
    let sim = echo_device(tls);
    let (agent, scheme, dir) = if tls {
        ("wasmgate-tls", "wss", "autobahn-tls")
    } else {
        ("wasmgate", "ws", "autobahn")
    };
    let port = if tls { sim.tls_addr() } else { sim.addr() }.port();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let outdir = work.join("report");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&outdir).expect("report dir");
    let spec = serde_json::json!({
        "outdir": outdir,
        "servers": [{"agent": agent, "url": format!("{scheme}://127.0.0.1:{port}")}],
        "cases": ["*"],
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {},
    });
    let spec_path = work.join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let log_path = work.join("wstest.log");
    let log = std::fs::File::create(&log_path).expect("wstest log");

    let ran = run_with_timeout(
        Command::new(venv.join("bin/python"))
            .arg(venv.join("bin/wstest_local.py"))
            .args(["-m", "fuzzingclient", "-s"])
            .arg(&spec_path)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log),
        RUN_TIMEOUT,
    );
    let wstest_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    match ran {
        Ok(true) => {}
        Ok(false) => panic!(
            "wstest failed; its log:\n{}\nsimulator log:\n{}",
            wstest_log(),
            sim.logs()
        ),
        Err(why) => panic!(
            "wstest {why}; its log:\n{}\nsimulator log:\n{}",
            wstest_log(),
            sim.logs()
        ),
    }

    let results = read_results(&outdir, agent);
    assert!(!results.is_empty(), "Autobahn ran no cases");
    let title = format!("Autobahn fuzzingclient over {scheme}://");
    assert_all_pass(&title, &results, &work, &outdir, &sim);
}
