//! The `wasmgate sim` command line: the built-in default device, config errors
//! that name the key at fault.

mod support;

use std::net::TcpListener;

use std::io::Write;

use support::{Sim, certs, roundtrip, wasmgate};

#[test]
fn printed_default_config_runs_and_serves_http_post_at_root() {
    let (ok, toml, _) = wasmgate(&["sim", "--print-default-config"]);
    assert!(ok);
    let toml = toml
        .replace("forward = 8080", "forward = 0")
        .replace("forward = 8443", "forward = 0");
    let sim = Sim::start(&toml);
    let r = roundtrip(
        &sim,
        b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("success"));

    // HTTPS with the device certificate the first start made: trusting the
    // device CA from the flash folder is enough.
    let ca = std::fs::read_to_string(sim.dir().join(".wasmgate-flash/tls/ca.pem"))
        .expect("the device CA is in the flash folder");
    let tls = certs::connect(sim.tls_addr(), &ca, "localhost");
    let mut r = std::io::BufReader::new(tls);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(support::read_response(&mut r, false).status, 200);
}

#[test]
fn sim_without_arguments_serves_on_8080() {
    for port in [8080, 8443] {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("SKIPPED: 127.0.0.1:{port} is in use, cannot start the default device there");
            return;
        }
    }
    let dir = support::scratch_dir();
    let flash = dir.join("flash");
    let sim = Sim::spawn(&["sim", "--flash", flash.to_str().unwrap()], dir);
    assert_eq!(sim.addr().port(), 8080);
    let r = roundtrip(&sim, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    let dir = support::scratch_dir();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[device]\nname = \"x\"\n[limits]\nmax_conections = 3\n",
    )
    .unwrap();
    let (ok, _, err) = wasmgate(&["sim", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("max_conections"), "{err}");

    std::fs::write(
        &path,
        "[device]\nname = \"x\"\n[[protocol]]\nname = \"p\"\nmodule = \"missing.wasm\"\n",
    )
    .unwrap();
    let (ok, _, err) = wasmgate(&["sim", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("protocol[0].module") && err.contains("missing.wasm"),
        "{err}"
    );

    std::fs::write(&path, b"\0asm\x01\0\0\0garbage").unwrap();
    std::fs::write(
        dir.join("bad-module.toml"),
        "[device]\nname = \"x\"\n[[protocol]]\nname = \"p\"\nmodule = \"bad.toml\"\n",
    )
    .unwrap();
    let (ok, _, err) = wasmgate(&[
        "sim",
        "--config",
        dir.join("bad-module.toml").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("protocol `p`") && err.contains("not valid WebAssembly"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
