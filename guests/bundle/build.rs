//! Builds the example guests in `guests/` for `wasm32-unknown-unknown` with a
//! nested cargo, in their own workspace and target directory, so that a plain
//! `cargo build` or `cargo test` at the top level always has fresh `.wasm` files.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest crates to build; each becomes `<name with _>.wasm`.
const GUESTS: &[&str] = &[
    "hello",
    "http-post",
    "faulty",
    "ws-echo",
    "readings",
    "ws-client",
    "autobahn-client",
];

/// A guest built a second time with a feature.
struct Variant {
    crate_name: &'static str,
    feature: &'static str,
    /// Its name in the bundle.
    name: &'static str,
    /// Its shadow stack, when `guests/.cargo/config.toml`'s 16 KiB is too
    /// small: the SDK builds a fresh session on the stack before it moves it
    /// into its slot, so a stack must hold a few sessions.
    stack_size: Option<u32>,
}

const VARIANTS: &[Variant] = &[Variant {
    crate_name: "ws-echo",
    feature: "bench",
    name: "ws-echo-64",
    // Sessions of 12 KiB.
    stack_size: Some(64 * 1024),
}];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guests_dir = manifest_dir
        .parent()
        .expect("bundle lives in guests/")
        .to_path_buf();
    let root = guests_dir.parent().expect("guests/ lives in the workspace");
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests");

    for watched in GUESTS.iter().map(|g| guests_dir.join(g)).chain([
        guests_dir.join("Cargo.toml"),
        guests_dir.join(".cargo"),
        root.join("guest-sdk"),
    ]) {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    ensure_wasm_target(&guests_dir);
    build(&guests_dir, &target_dir, &[], None);
    // Variants: a guest built again with a feature, in a target directory of
    // its own (the same crate with other features would overwrite the first).
    for v in VARIANTS {
        build(
            &guests_dir,
            &target_dir.join(v.feature),
            &["-p", v.crate_name, "--features", v.feature],
            v.stack_size,
        );
    }

    let out = target_dir.join("wasm32-unknown-unknown/release");
    for guest in GUESTS {
        let file = out.join(format!("{}.wasm", guest.replace('-', "_")));
        assert!(exists(&file), "guest build produced no {}", file.display());
    }
    for v in VARIANTS {
        let built = target_dir
            .join(v.feature)
            .join("wasm32-unknown-unknown/release")
            .join(format!("{}.wasm", v.crate_name.replace('-', "_")));
        assert!(
            exists(&built),
            "guest build produced no {}",
            built.display()
        );
        std::fs::copy(
            &built,
            out.join(format!("{}.wasm", v.name.replace('-', "_"))),
        )
        .expect("cannot copy a guest variant next to the guests");
    }
    println!("cargo:rustc-env=WASMGATE_GUEST_DIR={}", out.display());
}

/// The wasm32 target the guests need. `rust-toolchain.toml` lists it, but
/// rustup adds a listed target only when it installs the toolchain itself: a
/// machine that already had the pinned toolchain lacks it, and the first
/// `cargo run` would fail. So it is added here, once, with what rustup says
/// shown as the build's warnings.
fn ensure_wasm_target(guests_dir: &Path) {
    const TARGET: &str = "wasm32-unknown-unknown";
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(guests_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|root| root.join("lib/rustlib").join(TARGET).is_dir()) {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]).current_dir(guests_dir);
    if let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") {
        cmd.arg("--toolchain").arg(toolchain);
    }
    println!(
        "cargo:warning=the guests need the {TARGET} target; running `rustup target add {TARGET}`"
    );
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => println!(
            "cargo:warning=`rustup target add {TARGET}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => {
            println!("cargo:warning=cannot run rustup ({e}); add the {TARGET} target by hand")
        }
    }
}

/// Runs the guests' cargo: `cargo build --release --target wasm32-unknown-unknown`
/// in `guests_dir`, into `target_dir`, with `extra` arguments.
fn build(guests_dir: &Path, target_dir: &Path, extra: &[&str], stack_size: Option<u32>) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests_dir)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .args(extra)
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings (coverage flags, clippy's wrapper, a host
    // target) must not leak into the guest build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || matches!(
                &*key,
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTDOCFLAGS"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    if let Some(bytes) = stack_size {
        // Appended to the config file's flags (cargo joins the arrays, this
        // one last), whose own stack size the linker's last one overrides.
        cmd.arg("--config").arg(format!(
            "target.wasm32-unknown-unknown.rustflags=[\"-C\", \"link-arg=-zstack-size={bytes}\"]"
        ));
    }
    let status = cmd.status().expect("cannot run cargo for the guests");
    if !status.success() {
        panic!(
            "building the guests in {} failed (is the target installed? `rustup target add wasm32-unknown-unknown`)",
            guests_dir.display()
        );
    }
}

fn exists(path: &Path) -> bool {
    path.metadata().map(|m| m.len() > 0).unwrap_or(false)
}
