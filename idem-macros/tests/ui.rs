//! Compile-time diagnostics of `#[idempotent]`: each case is one mistake a user can make,
//! with the error checked in beside it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*-fail.rs");
    t.pass("tests/ui/*-pass.rs");
}
