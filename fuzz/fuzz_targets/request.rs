//! The request path through the attribute and the middleware: no panic, no 500, and every
//! refusal of the layer carries a stable code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    idem_tests::fuzz::request(data);
});
