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
//!   that disconnects cancels nothing), and its response is recorded, unless it is a 5xx (or a
//!   non-2xx under `cache = "2xx"`), which releases the key so that a retry runs again.
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
//! With the feature `utoipa`, [`openapi::Contract`] writes what each idempotent operation
//! promises (its key header, replays, the layer's errors and the retention) into a utoipa
//! OpenAPI document. With the feature `cors`, [`cors::IdempotencyCors`] lets browsers on other
//! origins send keys and read `Idempotent-Replayed`.
//!
//! # Error codes
//! | status | code | when |
//! |---|---|---|
//! | 400 | `idempotency_key_missing` | the endpoint is `required` and no key was sent |
//! | 400 | `idempotency_key_invalid` | the key breaks the header's syntax (the message says which rule) |
//! | 400 | `idempotency_scope_missing` | no credentials or scope header to scope the key by |
//! | 400 | `idempotency_body_invalid` | the body cannot be read in the form its endpoint compares bodies in (`fingerprint = "json"` and a body that is not JSON), or searched for its key |
//! | 409 / 422 | `idempotency_conflict` | the key is in use by a running request, or by a different request |
//! | 413 | `idempotency_body_too_large` | a keyed request's body exceeds `max_body` |
//! | 409 | `idempotency_response_too_large` | the operation completed, but its response exceeded `max_response`; it will not run again |
//! | 503 | `idempotency_store_unavailable` | the store cannot be reached (fail closed), or the commit of a `Transaction` failed |
//! | 503 | `idempotency_overloaded` | this worker finishes as many runs for clients that went away as it allows ([`IdempotencyConfig::with_max_detached`]); nothing ran |
//! | 500 | `idempotency_transaction_unavailable` | a handler takes a `Transaction` that the app cannot lend (the log says why) |
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
mod render;
mod request_id;
mod scope;
mod transaction;

pub use idem_core::store;
#[cfg(feature = "postgres")]
pub use idem_core::store::{
    ClaimTransaction, PostgresStore, PostgresStoreBuilder, TransactionalClaim,
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
}
