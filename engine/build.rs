//! Builds the default policy (`policy-guest`) as a `wasm32-wasip2` component and
//! hands its path to the crate as `ATTRELAY_DEFAULT_POLICY`, so that the relay
//! embeds it and `cargo run` works on a fresh clone with no manual step.
//!
//! The nested cargo gets its own target directory: sharing ours would wait
//! forever on the build lock the outer cargo holds.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Without the runtime nothing embeds a policy (the gateway component
    // links the default policy's Rust code instead).
    if env::var_os("CARGO_FEATURE_RUNTIME").is_none() {
        return;
    }
    // A prebuilt component may be given instead (packaging, or toolchains
    // without the wasm32-wasip2 target, such as the fuzzing nightly).
    println!("cargo:rerun-if-env-changed=ATTRELAY_POLICY_WASM");
    if let Some(prebuilt) = env::var_os("ATTRELAY_POLICY_WASM") {
        let path = PathBuf::from(prebuilt);
        assert!(
            path.exists(),
            "ATTRELAY_POLICY_WASM={} does not exist",
            path.display()
        );
        println!("cargo:rerun-if-changed={}", path.display());
        println!("cargo:rustc-env=ATTRELAY_DEFAULT_POLICY={}", path.display());
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .expect("engine/ sits in the workspace")
        .to_path_buf();
    let guest = root.join("policy-guest");
    for p in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", guest.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    // One guest build shared by every profile of the host (debug, release, clippy).
    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("policy-guest");

    ensure_guest_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "attrelay-policy",
            "--lib",
        ])
        // Small and fast: no debug info in the embedded component.
        .args([
            "--config",
            "profile.release.debug=false",
            "--config",
            "profile.release.strip=true",
        ])
        .args(["--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    // The outer build's settings are not meant for the guest: a clippy or
    // coverage wrapper, host RUSTFLAGS, or a profile forced by environment.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd
        .status()
        .expect("could not run cargo to build the policy guest");
    if !status.success() {
        panic!(
            "building the default policy component failed ({status}); is the wasm32-wasip2 target installed? \
             (`rustup target add wasm32-wasip2`; rust-toolchain.toml requests it)"
        );
    }
    let wasm = target_dir.join("wasm32-wasip2/release/attrelay_policy.wasm");
    assert!(
        wasm.exists(),
        "expected the component at {}",
        wasm.display()
    );
    println!("cargo:rustc-env=ATTRELAY_DEFAULT_POLICY={}", wasm.display());
}

/// The guest's target, which `rust-toolchain.toml` lists.
const GUEST_TARGET: &str = "wasm32-wasip2";

/// Adds [`GUEST_TARGET`] to the toolchain building us when its standard
/// library is missing. rustup installs a toolchain file's targets only when
/// it installs the toolchain: on a machine where 1.95.0 was already there
/// without the target, `cargo run` would otherwise fail here, and the
/// README promises one command on a fresh machine.
fn ensure_guest_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.as_ref().is_some_and(|d| d.is_dir()) {
        return;
    }
    // Through rustup's proxy, RUSTUP_TOOLCHAIN names the toolchain cargo
    // runs (the one rust-toolchain.toml pins); the target goes to it.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    println!(
        "cargo:warning=the {GUEST_TARGET} target is missing from the toolchain; adding it with rustup (rust-toolchain.toml lists it)"
    );
    let mut add = Command::new("rustup");
    add.args(["target", "add", GUEST_TARGET]);
    if let Some(t) = &toolchain {
        add.args(["--toolchain", t]);
    }
    match add.status() {
        Ok(s) if s.success() => {}
        outcome => panic!(
            "the {GUEST_TARGET} target is not installed and `rustup target add {GUEST_TARGET}` failed ({outcome:?}); \
             install it by hand, or set ATTRELAY_POLICY_WASM to a prebuilt policy component"
        ),
    }
}
