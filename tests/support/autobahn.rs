//! Helpers shared by the Autobahn TestSuite tests (`ws_autobahn.rs` for the
//! server, `ws_autobahn_client.rs` for the client): installing Autobahn,
//! running `wstest` with a time limit, reading its `index.json` and judging
//! and summarising the results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Sim;

/// Installs Autobahn into a virtualenv (once, cached), printing its path last.
pub const SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/autobahn/setup.sh");

/// Behaviours that pass, for the case itself and for its closing handshake.
pub const PASSING: &[&str] = &["OK", "NON-STRICT", "INFORMATIONAL"];
pub const PASSING_CLOSE: &[&str] = &["OK", "INFORMATIONAL"];

/// Installs (or finds) Autobahn; its virtualenv's path, or why not.
pub fn autobahn_venv() -> Result<PathBuf, String> {
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

/// Runs `cmd` until it exits or `limit` passes (then kills it): `Ok(success)`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<bool, String> {
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
pub fn case_order(id: &str) -> Vec<u32> {
    id.split('.')
        .map(|n| n.parse().unwrap_or(u32::MAX))
        .collect()
}

/// One case's result from `index.json`.
pub struct Outcome {
    pub behavior: String,
    pub behavior_close: String,
}

/// The results of `agent` in `outdir/index.json`, by case id in suite order.
pub fn read_results(outdir: &Path, agent: &str) -> Vec<(String, Outcome)> {
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

/// Summarises `results` (a line starting with `title`), prints the summary,
/// writes it to `work/summary.txt`, and fails the test, with the simulator's
/// log tail, if any case did not pass.
pub fn assert_all_pass(
    title: &str,
    results: &[(String, Outcome)],
    work: &Path,
    outdir: &Path,
    sim: &Sim,
) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, o) in results {
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
        "{title}: {} cases: {} (12.* and 13.* excluded); {} failing; report: {}",
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
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
