//! Idempotency-Key parsing: no panic, and accepted keys keep every rule.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idem_tests::fuzz::key(data));
