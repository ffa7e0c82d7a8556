//! The calling side of idempotency keys: send each operation under one key, retry it safely,
//! and learn whether its answer was a replay.
//!
//! A server with `#[idempotent]` on its handler runs an operation once per key and replays
//! the first answer to every retry. That helps only if the client keeps the key across its
//! retries and retries what is worth it. [`Client`] does both, over reqwest:
//!
//! ```
//! # use actix_web::{post, web, App, HttpResponse, HttpServer};
//! # use idem_actix::idempotent;
//! # #[post("/v1/calls")]
//! # #[idempotent(ttl = "24h", scope = "api_key")]
//! # async fn create_call(body: web::Json<serde_json::Value>) -> HttpResponse {
//! #     HttpResponse::Created().json(serde_json::json!({ "data": body.into_inner() }))
//! # }
//! # actix_web::rt::System::new().block_on(async {
//! # let server = HttpServer::new(|| App::new().service(create_call))
//! #     .workers(1)
//! #     .bind("127.0.0.1:0")?;
//! # let url = format!("http://{}/v1/calls", server.addrs()[0]);
//! # let server = server.run();
//! # let handle = server.handle();
//! # actix_web::rt::spawn(server);
//! use std::time::Duration;
//!
//! use idem_client::Client;
//! use serde_json::json;
//!
//! let client = Client::builder()
//!     .timeout(Duration::from_secs(5)) // each attempt
//!     .max_attempts(4)
//!     .build()?;
//!
//! // One logical operation: a key is made for it and kept across its retries.
//! let call = client
//!     .post(&url)
//!     .bearer_auth("demo")
//!     .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
//!     .send()
//!     .await?;
//! assert_eq!(call.status(), 201);
//! assert!(!call.replayed());
//!
//! // The same operation sent again under its key: the first answer, not a second call.
//! let again = client
//!     .post(&url)
//!     .bearer_auth("demo")
//!     .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
//!     .idempotency_key(call.key())
//!     .send()
//!     .await?;
//! assert!(again.replayed());
//! assert_eq!(again.body(), call.body());
//! # handle.stop(true).await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is retried
//! Every attempt of an operation sends the same method, URL, headers, body bytes and key, so
//! that the server recognises the retry (its fingerprint of the request matches).
//!
//! | outcome of an attempt | what the client does |
//! |---|---|
//! | 2xx, 3xx (not followed: a redirect is the operation's answer, and can be a replay), any other answer of the application (its 4xx but 408 and 429, and its 5xx but 502, 503 and 504), or a replay of any status (`Idempotent-Replayed: true`: the answer the server recorded, which a retry would only get again) | hands it back as a [`Response`]; [`Response::replayed`] tells a replay |
//! | connection refused, reset or broken mid-answer; attempt timed out | retries |
//! | 503 (store unavailable, overloaded, shutting down, or the application's) | retries, after its `Retry-After` |
//! | 429 (a rate limiter in front of the server: nothing ran) | retries, after its `Retry-After` if any; an application's own 429 is its answer again where the endpoint records it (a replay), and runs again where it does not (`cache = "2xx"`) |
//! | 408 (the server stopped waiting for the request) | retries, after its `Retry-After` if any; after the application's own 408 on an endpoint that records only 2xx (`cache = "2xx"`), it runs again |
//! | 502 or 504 (a gateway in front gave up, while the server may still run the operation; or the application's own) | retries, after its `Retry-After` if any: the retry gets the replay, or waits while the first attempt runs; after the application's own 5xx (never recorded) it runs again |
//! | 409 `idempotency_conflict` with `Retry-After`: the first attempt still runs | retries, after its `Retry-After`, to get the replay |
//! | 409 with `Retry-After` and a body with no code the client reads (the layer's, under an application's own error renderer; or the application's own 409) | taken as still running: retries, after its `Retry-After`; an application's own 409 is its answer again on a retry where the endpoint records it (a replay), and runs again where it does not (`cache = "2xx"`) |
//! | 409 or 422 `idempotency_conflict` without `Retry-After`: the key was used with another request | [`Error::Mismatch`], never retried ([`Error::GaveUp`] after an earlier attempt, which may have run) |
//! | 409 `idempotency_response_too_large`: the operation ran, and its response was too large for the server to keep | [`Error::ResponseNotKept`], never retried: look the outcome up, never send it again under a new key |
//! | another 4xx of the idempotency layer (`idempotency_key_invalid`, ...), or its 500 for a server it finds misconfigured (`idempotency_misconfigured`, ...): nothing was recorded, and nothing ran but after `idempotency_transaction_unavailable` (see [`Error::Refused`]) | [`Error::Refused`], never retried |
//! | an answer whose body is larger than [`max_response`](ClientBuilder::max_response) (16 MiB unless set) | [`Error::ResponseTooLarge`], not read and never retried: the operation may have run; send it again with the same key and a larger limit |
//! | attempts or time used up | [`Error::GaveUp`], with the key to send the operation again later |
//! | a redirect that a caller's own [`http_client`](ClientBuilder::http_client) followed went wrong (a loop, too many) | [`Error::Redirect`], with the key, never retried: the operation may have run |
//! | an answer that is not HTTP (a status line or header no parser reads) | [`Error::InvalidAnswer`], with the key, never retried: the operation may have run |
//! | `101 Switching Protocols`: the connection left HTTP, and an operation is no upgrade (the interim 1xx, such as `100 Continue`, are read past to the final answer) | [`Error::Informational`], with the key, never retried: the operation may have run |
//! | a TLS handshake the server refused, or a certificate the client does not trust (told with the `rustls` feature, through any reqwest client on rustls 0.23) | [`Error::Transport`], never retried: nothing was sent (after an attempt that was sent, [`Error::GaveUp`] with the key) |
//!
//! The client tells the layer's answers apart by their `idempotency_*` codes, in the error
//! formats idem-actix writes: a server whose own error renderer rewrites those codes leaves a
//! mismatch, or a response too large to keep, a plain 409 the client hands back as the
//! application's answer, and a caller that then sends the operation under a new key runs it
//! again. Keep the codes where the layer writes them.
//!
//! Waits between attempts grow exponentially from
//! [`initial_backoff`](ClientBuilder::initial_backoff) up to
//! [`max_backoff`](ClientBuilder::max_backoff), each between half and all of its step at
//! random, so that clients that failed together come back apart. A `Retry-After` from the
//! server is a floor: the wait is at least that long, plus up to half a step (one the client
//! cannot read, such as `1.5`, is ignored, and the backoff alone sets the wait). Attempts are
//! bounded in number ([`max_attempts`](ClientBuilder::max_attempts)) and in time
//! ([`max_elapsed`](ClientBuilder::max_elapsed)): the client gives up when the least wait
//! (the `Retry-After`, or half the step) would end past the time limit, and otherwise cuts the
//! random part to end before it.
//!
//! # Both sides
//! The server handler, with `idem-actix`:
//!
//! ```
//! # use actix_web::{post, web, HttpResponse, Responder};
//! # use idem_actix::idempotent;
//! # type NewCall = serde_json::Value;
//! # async fn dial(call: NewCall) -> NewCall { call }
//! #[post("/v1/calls")]
//! #[idempotent(ttl = "24h", scope = "api_key")]
//! async fn create_call(body: web::Json<NewCall>) -> impl Responder {
//!     HttpResponse::Created().json(dial(body.into_inner()).await)
//! }
//! ```
//!
//! And the call, with this crate:
//!
//! ```no_run
//! # async fn call() -> Result<(), Box<dyn std::error::Error>> {
//! # use serde_json::json;
//! let client = idem_client::Client::builder().build()?;
//! let call = client
//!     .post("http://127.0.0.1:8080/v1/calls")
//!     .bearer_auth("demo")
//!     .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
//!     .send() // retried under one key: a run the server recorded is never run again
//!     .await?;
//! println!("{} {} replayed: {}", call.status(), call.text(), call.replayed());
//! # Ok(())
//! # }
//! ```
//!
//! # Why a wrapper, not reqwest-middleware
//! The unit a key belongs to is the logical operation, not the HTTP request: the key is made
//! once before the first attempt, the body must be resent byte for byte, and the caller needs
//! more back than a response (whether it was a replay, the key to resume with, and a mismatch
//! told apart from a key in flight, which share status and code). A small wrapper owning the
//! body as [`bytes::Bytes`] and returning [`Response`] and [`Error`] says that in types. As
//! middleware, the body is whatever `reqwest::Request::try_clone` can copy (a streamed body
//! cannot be retried), the outcome travels back as a plain response or an `anyhow` error,
//! and `reqwest-retry` (0.9) does not honour `Retry-After`; together they would add
//! `anyhow`, `async-trait`, `futures` and `retry-policies` to a client that needs none of
//! them. A reqwest client of your own (with its middleware-free settings: TLS, proxies,
//! pools) is used through [`ClientBuilder::http_client`].
//!
//! # Features
//! - `rustls`: `https://` URLs, through rustls on ring. Without it the client reaches only
//!   `http://` URLs (or whatever the client given to [`ClientBuilder::http_client`] can).
//!   A reqwest client of your own then needs a crypto provider installed for the process
//!   before it is built, as [`ClientBuilder::http_client`] says.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod classify;
mod client;
mod error;
mod key;
mod operation;
mod response;
mod retry;

pub use client::{Client, ClientBuilder, DEFAULT_KEY_HEADER};
pub use error::{BuildError, Error, Failure};
pub use operation::Operation;
pub use response::Response;

/// The reqwest this crate is built on, to make a client for [`ClientBuilder::http_client`].
pub use reqwest;
/// reqwest's types that this crate's API speaks in.
pub use reqwest::{header, Method, StatusCode, Url};
