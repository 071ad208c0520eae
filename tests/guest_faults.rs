//! A guest that traps, loops forever, grows memory past its limit or passes a
//! bad pointer: each request gets 500, the runtime goes on, and the next
//! request on a new connection succeeds.

mod support;

use std::io::{BufReader, Read, Write};

use support::{Sim, device_toml, read_response, roundtrip};

fn faulty_device(extra: &str) -> Sim {
    Sim::start(&device_toml(
        &[("faulty", "builtin:faulty"), ("hello", "builtin:hello")],
        &[("/", "faulty"), ("/hello", "hello")],
        extra,
    ))
}

fn get(sim: &Sim, path: &str) -> support::Response {
    roundtrip(
        sim,
        format!("GET {path} HTTP/1.1\r\nHost: d\r\n\r\n").as_bytes(),
    )
}

fn fault_then_recover(path: &str, log: &str) {
    let sim = faulty_device("");
    assert_eq!(get(&sim, "/ok").status, 200);
    let r = get(&sim, path);
    assert_eq!(r.status, 500, "{path}: {}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    sim.wait_for_log(log);
    let r = get(&sim, "/ok");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "after {path}");
    // Other protocols never noticed.
    assert_eq!(get(&sim, "/hello").status, 200);
}

#[test]
fn trap_gets_500_and_the_next_request_succeeds() {
    fault_then_recover("/trap", "trapped");
}

#[test]
fn endless_loop_runs_out_of_fuel_gets_500_and_the_next_request_succeeds() {
    fault_then_recover("/loop", "ran out of fuel");
}

#[test]
fn memory_growth_past_the_limit_gets_500_and_the_next_request_succeeds() {
    fault_then_recover("/grow", "trapped");
}

#[test]
fn bad_pointer_in_a_host_call_gets_500_and_the_next_request_succeeds() {
    fault_then_recover("/badptr", "trapped");
}

#[test]
fn bad_pointer_is_refused_with_a_status_not_a_trap() {
    let sim = faulty_device("");
    let r = get(&sim, "/badptr-status");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "lws_write returned -1\n");
}

#[test]
fn repeated_faults_never_take_the_device_down() {
    let sim = faulty_device("[guest]\nfuel_per_callback = 200000\n");
    for round in 0..5 {
        for path in ["/trap", "/loop", "/grow", "/badptr"] {
            assert_eq!(get(&sim, path).status, 500, "round {round} {path}");
        }
        assert_eq!(get(&sim, "/ok").status, 200, "round {round}");
    }
}

#[test]
fn on_trap_keep_serves_on_with_the_same_instance() {
    let sim = faulty_device("[guest]\non_trap = \"keep\"\n");
    assert_eq!(get(&sim, "/trap").status, 500);
    assert_eq!(get(&sim, "/ok").status, 200);
    let logs = sim.logs();
    assert!(!logs.contains("retired instance dropped"), "{logs}");
}

#[test]
fn a_guest_that_never_answers_gets_504_after_the_response_timeout() {
    let sim = faulty_device("[limits]\nresponse_timeout_ms = 300\n");
    let start = std::time::Instant::now();
    let r = get(&sim, "/stall");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    sim.wait_for_log("without progress");
    assert_eq!(get(&sim, "/ok").status, 200);
}

#[test]
fn guests_read_request_headers_and_url_arguments() {
    let sim = faulty_device("");
    let r = roundtrip(
        &sim,
        b"GET /header HTTP/1.1\r\nHost: d\r\nX-Probe: probe value 42\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "probe value 42\n"));
    assert_eq!(get(&sim, "/header").status, 404);
    let r = get(&sim, "/arg?x=1&q=hello%20device+again&z");
    assert_eq!((r.status, r.text().as_str()), (200, "hello device again\n"));
    assert_eq!(get(&sim, "/arg?x=1").status, 404);
}

#[test]
fn a_guest_that_keeps_asking_for_writeable_without_writing_still_times_out() {
    let sim = faulty_device("[limits]\nresponse_timeout_ms = 300\n");
    let r = get(&sim, "/spin");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(get(&sim, "/ok").status, 200);
}

#[test]
fn a_trap_after_the_answer_closes_without_a_second_response() {
    let sim = faulty_device("");
    let mut s = sim.connect();
    s.write_all(b"GET /late-trap HTTP/1.1\r\nHost: d\r\n\r\nGET /ok HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader, false);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "answered, trapping next\n")
    );
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing after the answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    sim.wait_for_log("trap after the transaction completed");
    assert_eq!(get(&sim, "/ok").status, 200);
}
