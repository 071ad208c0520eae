//! RFC 6455 conformance of the WebSocket server, measured the way libwebsockets
//! measures its own: the Autobahn TestSuite's `fuzzingclient` runs every case
//! against the `ws-echo` guest in the real simulator. Cases 12.* and 13.* need
//! permessage-deflate, which the device does not offer, and are left out.
//!
//! Autobahn is Python 2 software; `tests/autobahn/setup.sh` installs it into a
//! virtualenv (once, cached in `~/.cache/wasmgate-autobahn` or
//! `$AUTOBAHN_VENV`). Where it cannot be installed the test says `SKIPPED` and
//! passes. The full report stays in `target/tmp/autobahn/` for a browser.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Sim, device_toml};

const SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/autobahn/setup.sh");

/// How long the whole fuzzingclient run may take (libwebsockets needs ~40 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Behaviours that pass, for the case itself and for its closing handshake.
const PASSING: &[&str] = &["OK", "NON-STRICT", "INFORMATIONAL"];
const PASSING_CLOSE: &[&str] = &["OK", "INFORMATIONAL"];

/// Installs (or finds) Autobahn; its virtualenv's path, or why not.
fn autobahn_venv() -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(SETUP)
        .output()
        .map_err(|e| format!("cannot run bash {SETUP}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let venv = stdout.lines().last().unwrap_or("").trim();
    let venv = PathBuf::from(venv);
    if venv.join("bin/wstest_local.py").is_file() {
        Ok(venv)
    } else {
        Err(format!("setup.sh printed no virtualenv: {stdout}"))
    }
}

/// The device: ws-echo as the default WebSocket protocol of the listener, with
/// frame and message limits that let case 9's 16 MiB messages through.
fn echo_device() -> Sim {
    let mut toml = device_toml(
        &[("echo_server", "builtin:ws-echo")],
        &[],
        "[limits]\nmax_connections = 8\n\
         ws_max_frame_bytes = 16777216\nws_max_message_bytes = 16777216\n",
    );
    // device_toml writes the listener table last: these keys belong to it.
    toml.push_str("websocket = [\"echo_server\"]\ndefault_websocket = \"echo_server\"\n");
    Sim::start(&toml)
}

/// Runs `cmd` until it exits or `limit` passes (then kills it): `Ok(success)`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<bool, String> {
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {limit:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(250)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}

/// Case ids in the suite's order: "9.10.1" after "9.2.1".
fn case_order(id: &str) -> Vec<u32> {
    id.split('.')
        .map(|n| n.parse().unwrap_or(u32::MAX))
        .collect()
}

/// One case's result from `index.json`.
struct Outcome {
    behavior: String,
    behavior_close: String,
}

/// The results of `agent` in `outdir/index.json`, by case id in suite order.
fn read_results(outdir: &Path, agent: &str) -> Vec<(String, Outcome)> {
    let path = outdir.join("index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no Autobahn results at {}: {e}", path.display()));
    let index: serde_json::Value = serde_json::from_str(&text).expect("index.json is JSON");
    let cases = index
        .get(agent)
        .and_then(serde_json::Value::as_object)
        .unwrap_or_else(|| panic!("index.json has no agent {agent}: {text}"));
    let field = |case: &serde_json::Value, name: &str| {
        case.get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("MISSING")
            .to_string()
    };
    let mut results: Vec<(String, Outcome)> = cases
        .iter()
        .map(|(id, case)| {
            let outcome = Outcome {
                behavior: field(case, "behavior"),
                behavior_close: field(case, "behaviorClose"),
            };
            (id.clone(), outcome)
        })
        .collect();
    results.sort_by_key(|(id, _)| case_order(id));
    results
}

#[test]
fn autobahn_fuzzingclient_cases_pass_against_ws_echo() {
    let venv = match autobahn_venv() {
        Ok(venv) => venv,
        Err(why) => {
            eprintln!("SKIPPED: Autobahn TestSuite not installable: {why}");
            return;
        }
    };
    let sim = echo_device();
    let agent = "wasmgate";
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("autobahn");
    let outdir = work.join("report");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&outdir).expect("report dir");
    let spec = serde_json::json!({
        "outdir": outdir,
        "servers": [{"agent": agent, "url": format!("ws://127.0.0.1:{}", sim.addr().port())}],
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
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, o) in &results {
        *counts.entry(o.behavior.as_str()).or_default() += 1;
    }
    let failing: Vec<String> = results
        .iter()
        .filter(|(_, o)| {
            !PASSING.contains(&o.behavior.as_str())
                || !PASSING_CLOSE.contains(&o.behavior_close.as_str())
        })
        .map(|(id, o)| format!("  {id}: {} (close: {})", o.behavior, o.behavior_close))
        .collect();
    let summary = format!(
        "Autobahn fuzzingclient: {} cases: {} (12.* and 13.* excluded); {} failing; report: {}",
        results.len(),
        counts
            .iter()
            .map(|(behavior, n)| format!("{n} {behavior}"))
            .collect::<Vec<_>>()
            .join(", "),
        failing.len(),
        outdir.join("index.html").display()
    );
    println!("{summary}");
    std::fs::write(work.join("summary.txt"), format!("{summary}\n")).expect("write summary");
    assert!(
        failing.is_empty(),
        "{summary}\nfailing cases:\n{}\nsimulator log (tail):\n{}",
        failing.join("\n"),
        tail(&sim.logs(), 60)
    );
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
