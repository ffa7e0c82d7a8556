//! Compile-time diagnostics of `#[idempotent]`: each case is one mistake a user can make,
//! with the error checked in beside it.
//!
//! A compile-fail case compares the compiler's whole message with its `.stderr`, and rustc
//! words its own part of a message (the types that implement a trait, its notes and help)
//! differently from one release to the next: those cases run on the toolchain the files were
//! written with ([`WRITTEN_WITH`]), and are skipped on another, saying so, unless
//! `IDEM_REQUIRE_UI=1` (as CI sets, so that a new toolchain there fails them, and the files
//! are written anew with `TRYBUILD=overwrite`). The cases that must compile run on any.

use std::process::Command;

/// The `major.minor` of the toolchain the `.stderr` files were written with.
const WRITTEN_WITH: &str = "1.95";

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/*-pass.rs");
    let required = std::env::var_os("IDEM_REQUIRE_UI").is_some_and(|v| v == "1");
    match rustc_version() {
        Some(version) if version == WRITTEN_WITH || required => {
            t.compile_fail("tests/ui/*-fail.rs");
        }
        found => eprintln!(
            "skipping the compile-fail cases: their messages were written with rustc {WRITTEN_WITH}, and this is {}; set IDEM_REQUIRE_UI=1 to run them anyway",
            found.as_deref().unwrap_or("a rustc that did not say its version")
        ),
    }
}

/// The `major.minor` of the rustc that cargo runs (`rustc 1.95.0 (...)` gives `1.95`).
fn rustc_version() -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}
