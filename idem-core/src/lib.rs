//! The engine of idem: idempotency keys for side-effecting HTTP endpoints, without a web
//! framework. Most users depend on `idem-actix`, which wires this into actix-web.
//!
//! A client that timed out does not know whether its request ran; it retries with the same
//! `Idempotency-Key`, and the server must run the operation once and give every retry the
//! first answer. This crate holds the rules: key syntax ([`ClientKey`]), whose key it is
//! ([`Scope`]), what identifies a request ([`Fingerprint`]), the [`Store`] of records and the
//! [`Engine`] that claims, records, releases and replays.
//!
//! ```
//! use idem_core::{Begin, Engine, Fingerprint, ClientKey, MokaStore, Policy, Response, Scope, StoreKey};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let engine = Engine::new(MokaStore::new());
//! let policy = Policy::DEFAULT;
//! let key = ClientKey::parse(b"order-42", policy.key_max_len).unwrap();
//! let scope = Scope::ApiKey
//!     .resolve(|name| (name == "authorization").then_some(&b"Bearer t1"[..]))
//!     .unwrap();
//! let store_key = StoreKey::new(&scope, None, &key);
//! let fingerprint = Fingerprint::new("POST", "/v1/calls", "", br#"{"to":"+15555550123"}"#);
//!
//! // The first request claims the key and runs the operation.
//! let Ok(Begin::Execute(lease)) = engine.begin(&policy, store_key, fingerprint).await else {
//!     panic!("a new key is claimed");
//! };
//! let response = Response::new(201, [("location", &b"/v1/calls/call_1"[..])], b"call_1");
//! lease.finish(response).await.unwrap();
//!
//! // A retry gets the first answer.
//! let Ok(Begin::Replay(first)) = engine.begin(&policy, store_key, fingerprint).await else {
//!     panic!("a completed key is replayed");
//! };
//! assert_eq!((first.response.status(), &first.response.body()[..]), (201, &b"call_1"[..]));
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod canonical;
pub mod clock;
mod digest;
mod engine;
mod error;
mod key;
mod policy;
mod record;
mod scope;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod warnings;

pub use crate::canonical::{check_pointer, Body, BodyError, BodyForm, JsonBody, PointerError};
pub use crate::digest::{Fingerprint, StoreKey};
pub use crate::engine::{Begin, Engine, Lease, Outcome, StoreObserver};
pub use crate::error::{codes, IdempotencyError, KeyOrigin, RETRY_AFTER};
pub use crate::key::{ClientKey, KeyError, DEFAULT_KEY_MAX_LEN};
pub use crate::policy::{
    CachePolicy, ErrorFormat, KeySource, OnInFlight, OnMismatch, OnStoreError, Overrides, Policy,
    PolicyError, ReplayHeaders,
};
pub use crate::record::{Completed, Headers, InFlight, Record, Response, Token};
pub use crate::scope::{Scope, ScopeError, ScopeValue};
pub use crate::store::{Claim, MokaStore, Store, StoreError};
