//! Idempotency keys for actix-web: a retried side effect runs once, and every retry gets the
//! first answer.
//!
//! A client that timed out on `POST /v1/calls` does not know whether the phone rang. It
//! retries with the same `Idempotency-Key`; with `#[idempotent]` on the handler, the server
//! runs the operation once and replays its response (with `Idempotent-Replayed: true`) to
//! every retry.
//!
//! ```
//! use actix_web::{post, test, web, App, HttpResponse, Responder};
//! use idem_actix::idempotent;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct NewCall {
//!     phone_number: String,
//! }
//!
//! #[post("/v1/calls")]
//! #[idempotent(ttl = "24h", scope = "api_key")]
//! async fn create_call(body: web::Json<NewCall>) -> impl Responder {
//!     // Dial once.
//!     HttpResponse::Created().json(serde_json::json!({ "to": body.phone_number }))
//! }
//!
//! # actix_web::rt::System::new().block_on(async {
//! let app = test::init_service(App::new().service(create_call)).await;
//! let request = || {
//!     test::TestRequest::post()
//!         .uri("/v1/calls")
//!         .insert_header(("Authorization", "Bearer tenant-1"))
//!         .insert_header(("Idempotency-Key", "call-0001"))
//!         .set_json(serde_json::json!({ "phone_number": "+15555550123" }))
//!         .to_request()
//! };
//! let first = test::call_service(&app, request()).await;
//! assert_eq!(first.status(), 201);
//! assert!(first.headers().get("idempotent-replayed").is_none());
//!
//! let retry = test::call_service(&app, request()).await;
//! assert_eq!(retry.status(), 201);
//! assert_eq!(retry.headers().get("idempotent-replayed").unwrap(), "true");
//! # });
//! ```
//!
//! # What happens to a request
//! - No key: the handler runs as if it were not annotated (unless `required`).
//! - A malformed key, or no credentials to scope it by: 400 with a stable error code.
//! - A new key: the key is claimed, the handler runs detached from the connection (a client
//!   that disconnects cancels nothing), and its response is recorded, unless it is a 1xx or a
//!   5xx (or a non-2xx under `cache = "2xx"`), which releases the key so that a retry runs
//!   again.
//! - The same key and request again: the recorded response is replayed.
//! - The same key while the first runs: 409 `idempotency_conflict` with `Retry-After`.
//! - The same key with a different request: 409 (or 422, or a replay, as configured).
//! - The store is unreachable: 503 `idempotency_store_unavailable`; the handler does not run.
//!
//! # Stores
//! Without configuration, all handlers of a process share an embedded [`MokaStore`]. Register
//! an [`IdempotencyConfig`] with `App::app_data` to choose the store, its capacity, or how
//! errors render. The embedded store is per process: several server processes need a shared
//! store. A new backend implements [`store::Store`]: the [`store`] module holds everything
//! that takes.
//!
//! # OpenAPI and CORS
//! With the feature `utoipa`, `openapi::Contract` writes what each idempotent operation
//! promises (its key header, replays, the layer's errors and the retention) into a utoipa
//! OpenAPI document. With the feature `cors`, `cors::IdempotencyCors` lets browsers on other
//! origins send keys and read `Idempotent-Replayed`.
//!
//! # Error codes
//! The layer's own answers carry a stable code, in the configured format: by default
//! `{"error":{"code":"...","message":"..."},"request_id":"..."}` with
//! `Content-Type: application/json` ([`JsonEnvelope`]; `errors = "type"` names the field
//! `type`), or RFC 9457 `application/problem+json` ([`ProblemJson`], `errors = "problem"`), or
//! what [`IdempotencyConfig::with_error_renderer`] makes of them. They all carry `X-Request-ID`
//! (equal to `request_id`) and `Cache-Control: no-store`.
//!
//! | status | code | when | `Retry-After` |
//! |---|---|---|---|
//! | 400 | `idempotency_key_missing` | the request has no key (in its header, in its body for `key = "json:..."`, or from a key function), and the endpoint is `required` or the handler takes an `IdempotencyKey` (not an `Option`) or a `Transaction`; elsewhere a request without a key runs as if the endpoint were not idempotent | |
//! | 400 | `idempotency_key_invalid` | the key breaks the key syntax: one header line, a token or a quoted string, 1 to `key_max_len` visible ASCII bytes (the message says which rule) | |
//! | 400 | `idempotency_scope_missing` | nothing to scope the key by: no credentials, no scope header, no [`Principal`], or a scope function that found none; or the header the scope is read from was sent more than once | |
//! | 400 | `idempotency_body_invalid` | the body cannot be searched for its key (`key = "json:..."` and a body that is not JSON), or read by the endpoint's fingerprint function (it returned `None`), or decoded from its `Content-Encoding` (where it reads a body, the layer decodes the codings actix-web's extractors decode: `gzip`, `deflate`, `br`, `zstd` with its default features); or it did not arrive whole (it ended before its `Content-Length`, or its chunked coding was malformed) | |
//! | 409 | `idempotency_conflict` | the first request with this key is still running (unless `in_flight = "wait"`); or, to a `Transaction` handler's run, another request took its key over (its lease lapsed) before its commit, so nothing was written and that request runs it | 1 s |
//! | 409, or 422 | `idempotency_conflict` | the key was used with a different request; 422 with `mismatch = "unprocessable"` | |
//! | 409 | `idempotency_conflict` | the recorded response is in a content coding (gzip, ...) negotiated for the first request (`Vary: Accept-Encoding`) that this request does not accept | |
//! | 409 | `idempotency_response_too_large` | the operation completed, but its response exceeded `max_response`, so it cannot be replayed; it will not run again | |
//! | 413 | `idempotency_body_too_large` | a keyed request's body exceeds `max_body` (where the key is read from the body, with `key = "json:..."` or a key function, any request's: the layer reads it to find the key) | |
//! | 503 | `idempotency_store_unavailable` | the store cannot be reached, or cannot answer for its data for now (starting, loading, a node that takes no writes in a failover), unless `fail_open`; or, whatever `fail_open` says, it answered with a refusal of its own, with a record it cannot read, gave up a claim for concurrent claims of the key, or took a claim fewer replicas acknowledged than Redis's `wait_for_replicas` asks; or a `Transaction` could not be opened or committed (its claim among the reasons: purged once its lease lapsed, with no other request holding the key, so nothing was written and the retry runs) | 1 s |
//! | 503 | `idempotency_overloaded` | this worker finishes as many runs for clients that went away as it allows ([`IdempotencyConfig::with_max_detached`]) | 1 s |
//! | 503 | `idempotency_shutting_down` | the server is shutting down, and its drain ([`IdempotencyConfig::drain`]) ran out of time before the handler answered: the run was stopped and its key released, so the retry runs it (a run whose handler had answered, its response's body read, is recorded instead, in the background, and its client gets that answer; one whose body of declared length was still being read is stopped as one that had not answered) | 1 s |
//! | 500 | `idempotency_transaction_unavailable` | a handler takes a `Transaction` that the app cannot lend: its store is not a `PostgresStore`, the handler is under no idempotency layer, the layer that claimed its key uses another `IdempotencyConfig` than the handler's scope registers (an `Idempotency` middleware reads its app's before routing), or it takes two; or, after its run, nothing of its transaction can be committed: it kept the transaction beyond its run, ended it itself (`COMMIT`, `ROLLBACK`), or answered a success over a statement of it that failed, or over writes a constraint checked at the commit refused (the log says which; the key is released) | |
//! | 500 | `idempotency_misconfigured` | the endpoint's settings, with the application's defaults, break a rule that keeps its promise and that neither could be refused for alone: its keys' scope is read from the key's own header (an endpoint's key header that an application's `Scope::Header` reads, which the attribute cannot see; the app's key header, where the endpoint names none); or the store can keep no record at all (a `MokaStore` of a few hundred bytes, given to `IdempotencyConfig::new`, whose `with_defaults` refuses it); the log says which | |
//! | 500 | `idempotency_layer_missing` | a handler takes [`IdempotencyKey`] and the request carries a key, but no idempotency layer serves the request (the handler is not `#[idempotent]`, nor inside an `Idempotency` middleware), or the middleware around it leaves the request's method alone (see `Idempotency::with_methods`; a `Transaction` asked for on such a request is answered alike); the log names the request, at `error` the first time for its route (then at `debug`) | |
//!
//! # Metrics
//! The layer records through the [`metrics`](https://docs.rs/metrics) facade and exports
//! nothing itself: install any recorder (for example `metrics-exporter-prometheus`), then
//! call [`describe_metrics`] once, which describes each metric to it (Prometheus's `# HELP`
//! lines) and starts each counter's series at zero (those of the labels listed below; a
//! series of another label appears with its first count).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `idem_requests_total` | counter | `outcome`: `executed` (ran and recorded), `replayed`, `released` (a 5xx, a response `cache` does not keep, a panic or a failed body, or an extractor's refusal of the request, the handler not run: the key is free again), `lost` (the claim lapsed and another took the key, so the response was not recorded), `unrecorded` (recording failed for a whole lease, or a `Transaction`'s commit failed; or a release failed, after a response not kept, a panic or a failed body: its claim is released in the background, or lapses with its lease), `unprotected` (ran without a claim, under `fail_open`; counted as it starts, and only so if a drain cancels it), `cancelled` (a drain ran out of time and cancelled the run: its key released, or its record written in the background if its handler had answered), `panicked` (the endpoint's key, scope or fingerprint function panicked, nothing claimed or run, or its replay hook did, the record kept: answered 500; a handler's own panic is `released`) |
//! | `idem_conflicts_total` | counter | `kind`: `in_flight`, `mismatch`, `response_too_large`, `encoding_not_accepted` (a replay in a coding the retry does not accept) |
//! | `idem_rejections_total` | counter | `code`: the error code of a request refused before any claim (a missing or invalid key, a missing scope, a body invalid or too large, `idempotency_overloaded`, `idempotency_misconfigured`) |
//! | `idem_store_errors_total` | counter | `op`: `claim`, `get`, `extend`, `complete`, `release`, `transaction` (opening a handler's `Transaction`, with the `postgres` feature); each try counts: a claim that failed, which may land later all the same, is released in the background in case it did, with tries a second apart at first and up to 16 s apart while the store still fails (eight over a lease of 60 s), so that in an outage `release` counts up to eight errors per refused request; not counted: a `Transaction`'s commit that Postgres refused for the handler's own doing (a statement of it that failed, a constraint checked at the commit, the transaction ended by the handler), answered and logged as the handler's fault |
//! | `idem_store_duration_seconds` | histogram | `op`, as above |
//! | `idem_store_evictions_total` | counter | none: records the store evicted to make room before their time to live |
//!
//! A rising `idem_store_evictions_total` means the store is too small for its traffic: a retry
//! of an evicted key runs its operation again. The embedded store counts them; size it as
//! [`MokaStoreBuilder::max_bytes`](idem_core::store::MokaStoreBuilder::max_bytes) says.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use actix_web::http::header::HeaderName;

mod config;
#[cfg(feature = "cors")]
pub mod cors;
mod extract;
mod functions;
mod handler;
mod metrics;
mod middleware;
#[cfg(feature = "utoipa")]
pub mod openapi;
mod outage;
mod render;
mod request_id;
mod scope;
mod transaction;

pub use idem_core::store;
#[cfg(feature = "postgres")]
pub use idem_core::store::{
    ClaimGone, ClaimTransaction, PostgresStore, PostgresStoreBuilder, TransactionEnded,
    TransactionalClaim,
};
#[cfg(feature = "redis")]
pub use idem_core::store::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "testing")]
pub use idem_core::testing;
pub use idem_core::{
    clock, codes, BodyError, BodyForm, CachePolicy, ErrorFormat, IdempotencyError, KeyError,
    KeyOrigin, KeySource, MokaStore, OnInFlight, OnMismatch, OnStoreError, Overrides, Policy,
    PolicyError, ReplayHeaders, Scope, Store, StoreError,
};
pub use idem_macros::idempotent;

pub use crate::config::IdempotencyConfig;
pub use crate::extract::{IdempotencyKey, NoIdempotencyKey};
pub use crate::functions::{FingerprintFn, KeyFn, ReplayHook};
pub use crate::handler::ScopeFn;
pub use crate::metrics::describe_metrics;
pub use crate::middleware::{Idempotency, IdempotencyService};
pub use crate::render::{ErrorRenderer, JsonEnvelope, ProblemJson};
pub use crate::request_id::RequestId;
pub use crate::scope::Principal;
#[cfg(feature = "postgres")]
pub use crate::transaction::Transaction;

/// `Idempotent-Replayed`, set to `true` on replayed responses.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// `X-Request-ID`, set on every response the layer handles.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Support for the code `#[idempotent]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::functions::{fingerprint, key, on_replay, Functions};
    pub use crate::handler::{fail, respond, run, scope, Endpoint, Raw, Reply};
    pub use crate::scope::ScopeFunction;
    pub use actix_web::dev::Payload as RawPayload;
    pub use actix_web::{FromRequest, HttpRequest, HttpResponse};
    pub use core::time::Duration;
    pub use idem_core::{
        BodyForm, CachePolicy, ErrorFormat, KeySource, OnInFlight, OnMismatch, OnStoreError,
        Overrides, ReplayHeaders, Scope,
    };

    /// An argument of an `#[idempotent]` handler: an extractor, said in the attribute's words
    /// when it is not one.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not an extractor, so it cannot be an argument of an `#[idempotent]` handler",
        label = "not an extractor (`FromRequest`)",
        note = "take a request body as `web::Json<{Self}>`, `web::Form<{Self}>` or `web::Bytes`, and shared state as `web::Data<{Self}>`"
    )]
    pub trait Extractor {}

    impl<T: FromRequest> Extractor for T {}

    /// Checks that `T` is an extractor, where the handler names it.
    pub fn extractor<T: Extractor>() {}

    /// A value of the handler's declared return type, for a `return` that never runs: it
    /// gives the body's `async` block that type, so that what the body hands back coerces
    /// to it.
    pub fn declared<T>() -> T {
        unreachable!("#[idempotent] never calls `declared`")
    }
}
