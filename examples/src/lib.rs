//! Example servers for idem. `calls-api` is a small outbound-calling API whose create
//! endpoints are idempotent; its routes are built here so that tests serve the same app.

pub mod calls_api;
