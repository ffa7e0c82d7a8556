//! Example servers for idem. `calls-api` is a small outbound-calling API whose create
//! endpoints are idempotent; `bench-server` serves the handlers the benchmarks measure. Their
//! routes are built here so that tests and benchmarks serve the same app.

#![forbid(unsafe_code)]
pub mod bench;
pub mod calls_api;
