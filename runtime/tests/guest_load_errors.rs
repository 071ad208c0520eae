//! A module that does not fit ABI v1 is refused at load with a message its
//! author can act on; a module that fits loads.

use wasmgate::config::GuestLimits;
use wasmgate::guest::{Guest, LoadError};

/// A minimal valid guest in WAT, with `extra` spliced into the module.
fn guest_wat(version: u32, extra: &str) -> String {
    format!(
        r#"(module
            {extra}
            (memory (export "memory") 1)
            ;; descriptor at 0: abi, rx_buffer, rx_size, sessions, pss_size, max_sessions, name, name_len
            (data (i32.const 0) "\{v:02x}\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "test")
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param i32 i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
        v = version
    )
}

fn load(wat: &str) -> Result<Guest, LoadError> {
    let wasm = wat::parse_str(wat).expect("test WAT parses");
    Guest::load(&Guest::engine(), "test", &wasm, GuestLimits::DEFAULT)
}

fn message(wat: &str) -> String {
    load(wat).expect_err("module must be refused").to_string()
}

#[test]
fn a_module_that_fits_the_abi_loads() {
    load(&guest_wat(1, "")).expect("valid guest");
}

/// The limits `ws-echo-64` (the benchmarks' echo guest: 64 sessions of
/// 12 KiB) documents; every other example guest fits the defaults.
const BENCH_ECHO_LIMITS: GuestLimits = GuestLimits {
    max_memory_pages: wasmgate_guests::WS_ECHO_64_MEMORY_PAGES,
    max_session_data_size: wasmgate_guests::WS_ECHO_64_SESSION_BYTES,
    ..GuestLimits::DEFAULT
};

#[test]
fn the_example_guests_load() {
    for (name, wasm) in wasmgate_guests::ALL {
        let limits = if *name == "ws-echo-64" {
            BENCH_ECHO_LIMITS
        } else {
            GuestLimits::DEFAULT
        };
        Guest::load(&Guest::engine(), name, wasm, limits).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_bench_echo_guest_under_default_limits_is_refused_saying_why() {
    let e = Guest::load(
        &Guest::engine(),
        "ws-echo-64",
        wasmgate_guests::WS_ECHO_64,
        GuestLimits::DEFAULT,
    )
    .expect_err("64 sessions of 12 KiB do not fit 4 pages");
    assert_eq!(
        e.to_string(),
        "module needs 14 memory pages; the limit is 4"
    );
}

#[test]
fn garbage_is_not_webassembly() {
    let e = Guest::load(&Guest::engine(), "t", b"not wasm", GuestLimits::DEFAULT).unwrap_err();
    assert!(
        e.to_string().starts_with("module is not valid WebAssembly"),
        "{e}"
    );
}

#[test]
fn missing_callback_is_named() {
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "wasmgate_protocol") (result i32) (i32.const 0)))"#;
    assert_eq!(message(wat), "module exports no `callback`");
}

#[test]
fn missing_memory_is_named() {
    let wat = r#"(module
        (func (export "wasmgate_protocol") (result i32) (i32.const 0))
        (func (export "callback") (param i32 i32 i32 i32 i32) (result i32) (i32.const 0)))"#;
    assert_eq!(message(wat), "module exports no `memory`");
}

#[test]
fn callback_with_the_wrong_type_is_named() {
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "wasmgate_protocol") (result i32) (i32.const 0))
        (func (export "callback") (param i32) (result i32) (i32.const 0)))"#;
    let msg = message(wat);
    assert!(
        msg.starts_with("`callback` has type (i32) -> (i32)"),
        "{msg}"
    );
}

#[test]
fn unknown_host_function_is_named() {
    let msg = message(&guest_wat(
        1,
        r#"(import "lws" "lws_foo" (func (param i32) (result i32)))"#,
    ));
    assert_eq!(msg, "module imports unknown host function `lws.lws_foo`");
}

#[test]
fn known_host_function_with_the_wrong_type_is_named() {
    let msg = message(&guest_wat(
        1,
        r#"(import "lws" "lws_write" (func (param i32) (result i32)))"#,
    ));
    assert!(msg.starts_with("module imports host function `lws.lws_write` with type (i32) -> (i32), expected (i32, i32, i32, i32) -> (i32)"), "{msg}");
}

#[test]
fn imports_from_other_modules_are_refused() {
    let msg = message(&guest_wat(1, r#"(import "env" "abort" (func))"#));
    assert_eq!(
        msg,
        "module imports `env.abort`; guests may import only from module `lws`"
    );
}

#[test]
fn another_abi_version_is_refused() {
    assert_eq!(
        message(&guest_wat(2, "")),
        "module speaks guest ABI v2; this runtime speaks v1"
    );
}

#[test]
fn initial_memory_over_the_limit_is_refused() {
    let wat = guest_wat(1, "").replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory (export "memory") 64)"#,
    );
    assert_eq!(
        message(&wat),
        "module needs 64 memory pages; the limit is 4"
    );
}

#[test]
fn protocol_init_failure_refuses_the_module() {
    let wat = guest_wat(1, "").replace(
        r#"(func (export "callback") (param i32 i32 i32 i32 i32) (result i32) (i32.const 0))"#,
        r#"(func (export "callback") (param i32 i32 i32 i32 i32) (result i32)
             (if (i32.eq (local.get 1) (i32.const 27)) (then unreachable)) (i32.const 0))"#,
    );
    let msg = message(&wat);
    assert!(msg.starts_with("PROTOCOL_INIT failed: trapped"), "{msg}");
}

#[test]
fn descriptor_outside_memory_is_refused() {
    let wat = guest_wat(1, "").replace(
        r#"(func (export "wasmgate_protocol") (result i32) (i32.const 0))"#,
        r#"(func (export "wasmgate_protocol") (result i32) (i32.const 65530))"#,
    );
    let msg = message(&wat);
    assert!(
        msg.starts_with("protocol descriptor: pointer 0xfffa is outside memory"),
        "{msg}"
    );
}

#[test]
fn rx_buffer_size_below_128_is_refused() {
    // rx_size field = 0x10 (16 bytes)
    let wat = guest_wat(1, "").replace(r"\00\02\00\00\00\04", r"\10\00\00\00\00\04");
    let msg = message(&wat);
    assert!(
        msg.contains("rx_buffer_size 16 is outside 128..=4096"),
        "{msg}"
    );
}

#[test]
fn a_table_over_the_limit_is_refused() {
    let wat = guest_wat(1, "(table 30000000 funcref)");
    let msg = message(&wat);
    assert!(msg.starts_with("module failed to start"), "{msg}");
}
