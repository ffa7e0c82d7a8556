//! The `#[idempotent]` attribute for actix-web handlers. Use it through `idem-actix`, which
//! re-exports it as `idem_actix::idempotent` and holds the runtime it calls.
//!
//! The arguments' names have one table (`names`); `attr` reads the arguments into a typed
//! model (`ast`), `valid` checks them together and the handler they go on, and `expand`
//! generates the code. Every mistake is collected on the way and reported at once.

#![forbid(unsafe_code)]
use proc_macro::TokenStream;

#[macro_use]
mod names;
mod ast;
mod attr;
mod errors;
mod expand;
mod valid;

/// Makes an actix-web handler idempotent: a request retried with the same `Idempotency-Key`
/// runs the handler once, and every retry gets the first response.
///
/// ```
/// # extern crate idem as idem_actix;
/// use actix_web::{post, web, HttpResponse, Responder};
/// use idem_actix::idempotent;
///
/// #[derive(serde::Deserialize)]
/// struct NewCall {
///     phone_number: String,
/// }
///
/// #[post("/v1/calls")]
/// #[idempotent(ttl = "24h", scope = "api_key")]
/// async fn create_call(body: web::Json<NewCall>) -> impl Responder {
///     HttpResponse::Created().body(format!("calling {}", body.phone_number))
/// }
/// # let _ = actix_web::App::new().service(create_call);
/// ```
///
/// The attribute goes above or below a route attribute (`#[post]`, `#[route]`), or on a plain
/// `async fn` registered with `web::resource(..).route(..)`; one that is not `async`, takes
/// `self`, or is `unsafe`, `const` or `extern` is a compile error, as it could not be an
/// actix-web handler. Attribute macros below it (such as
/// `#[tracing::instrument]`) expand first, on the handler as written. The handler takes any
/// extractors (up to 16) and returns any `Responder`, `Result<T, E: ResponseError>` included. A return type
/// with an `impl Trait` in it (`impl Responder`, `Result<impl Responder, C::Error>` in a
/// generic handler) is held to its bounds as without the attribute, by a function of its own
/// (generic over the handler's parameters when the type names them). Such a function cannot
/// name `Self` nor the parameters of an `impl` block around the handler: a part of the return
/// type that names them (`Result<impl Responder, S::Error>` in `impl<S: Store> Api<S>`) is
/// inferred from the value, and a return type that names `Self` (or names the handler's
/// parameters, whose bounds name `Self`) is held to `Responder` only. An `impl Trait` whose
/// bounds name the handler's own parameters, whose bounds name the block's (`fn f<T: AsRef<S>>()
/// -> impl Responder + Tagged<T>`), does not compile (E0401): name the type there. Lifetime parameters are taken as actix takes them, as `'static` (`async fn
/// hello<'a>() -> &'a str`), and type parameters are bounded `'static`, as actix asks of a
/// handler where it is registered.
///
/// An extractor that refuses a keyed request is answered as without the attribute, and the
/// key is released: the handler did not run, so nothing is recorded and a corrected retry
/// under the same key runs.
///
/// The function it writes is an actix handler whose one argument is the request and whose
/// output is an `HttpResponse`: it cannot be called directly with the extractors, as a unit
/// test that calls `create_call(web::Json(..))` would. Test it as a service
/// (`actix_web::test::init_service` and `call_service`), which also runs the layer. An app
/// that registers no `IdempotencyConfig` uses the process's default store, which every test
/// of a test binary shares: give each test's app its own
/// (`.app_data(IdempotencyConfig::new(MokaStore::new()))`), or keys, so that one test's
/// records are not another's replays or conflicts.
///
/// # Arguments
/// Every argument is optional; with none, the defaults of each section below apply. A bad value
/// is a compile error on that value, naming the accepted forms; an unknown or repeated argument
/// is one too.
///
#[doc = argument_table!()]
///
/// Arguments that make no sense together are refused: `wait_timeout` without
/// `in_flight = "wait"` (there is nothing to wait for); `fingerprint_ignore` without
/// `fingerprint = "json"`; `replay_headers` with `replay_drop_headers`; `key` with `header`;
/// `key = "json:..."` with `fingerprint = "form"`.
///
/// Every argument but `key = my_fn`, `fingerprint = my_fn`, `scope = my_fn` and `on_replay` has
/// a field of [`Policy`] of the same meaning, which the [`Idempotency`] middleware takes in its
/// `.with_overrides(..)` and an application in `IdempotencyConfig::with_defaults`; the
/// functions have methods of their own there (a scope function with a name that stands for
/// it in store keys, `.with_scope_fn("tenant", tenant)`).
///
/// [`Policy`]: ../idem_actix/struct.Policy.html
/// [`Idempotency`]: ../idem_actix/struct.Idempotency.html
///
/// ## `ttl`
///
/// How long a completed response is replayed, counted from completion: a duration such as
/// `"30s"`, `"15m"`, `"24h"` or `"7d"` (at least 1 s, at most 10 years; humantime's forms, such
/// as `"1h 30m"` or `"2 days"`, but not its `M` for months, one case away from minutes). Default
/// `"24h"`. After it, the key is new again.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(ttl = "15m")]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().body("call_1")
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/calls")).await, (201, false, "call_1".into()));
/// assert_eq!(send(&app, req("k").uri("/v1/calls")).await, (201, true, "call_1".into()));
/// # }) }
/// ```
///
/// ## `scope`
///
/// Whose key it is; keys of different scopes never meet, and a replay goes only to a request of
/// the same scope. Default `"api_key"`.
///
/// | value | hashed into the store key | who reaches a record |
/// |---|---|---|
/// | `"api_key"` | the whole `Authorization` header value, else `X-API-Key` | the holder of that exact credential |
/// | `"basic_auth_user"` | the HTTP Basic user name and a SHA-256 digest of its password (the password itself is never kept) | the holder of that user *and* password; a rotated password starts a new scope, and a wrong one is a scope of its own, so it neither gets the app's replay nor leaves its 401 for the app |
/// | `"principal"` | the [`Principal`] an authentication middleware inserted in the request's extensions | the caller that middleware verified, whatever its credential |
/// | `"header:<Name>"` | that header's name (in lowercase) and its value | anyone who can send that value: use it only behind a proxy that sets the header (never the key's own header, which is refused: at compile time when `header` names it, else answered 500 `idempotency_misconfigured` at run time when the application's key header is it; nor a header of one request, such as `X-Request-ID` or `Date`, refused at compile time: a retry would be in a scope of its own, and run again) |
/// | `"global"` | nothing: one scope for all clients | everyone (written on the endpoint: an application's defaults that scope keys globally are refused when it starts) |
/// | a function | its identity (its full path) and the `String` it returns | whoever makes it return that string |
///
/// A request without its scope gets 400 `idempotency_scope_missing`; there is no fallback.
///
/// A scope is only as strong as what it hashes. The layer finds the scope, and answers a
/// replay, *before* the handler's extractors run, so a check the handler makes (a password, a
/// token's signature) has not happened yet: a scope must be something a caller cannot present
/// without holding it, or something verified before the layer runs. `"principal"` is the one
/// to use with an authentication middleware: it reads what the middleware verified, and
/// refuses the request when nothing was (with the [`Idempotency`] middleware, the
/// authentication middleware must wrap it: register it with `wrap` after `Idempotency`).
///
/// A function goes without quotes: `fn(&HttpRequest) -> Option<String>`, checked at compile
/// time. It runs at the same point, so it must read only what an authentication middleware
/// already verified and put in the request's extensions, or a whole credential; never a claim
/// the handler would check later (a user id header, the subject of a token whose signature is
/// not yet verified). Its identity is part of the scope: two functions returning the same
/// string are two scopes, and one function is one scope however its path is written (a
/// function pointer, such as a `static` of type `fn(&HttpRequest) -> Option<String>`, is
/// known by the path written instead); moving or renaming it starts new scopes. A bare name
/// that is also a built-in scope's (`scope = api_key`) is refused as quotes left out; a
/// function of that name is written with its path, `scope = self::api_key`. The same holds for
/// `fingerprint`'s built-in forms.
///
/// [`Principal`]: ../idem_actix/struct.Principal.html
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::body::MessageBody;
/// use actix_web::dev::{ServiceRequest, ServiceResponse};
/// use actix_web::middleware::{from_fn, Next};
/// use actix_web::{post, HttpMessage, HttpRequest, HttpResponse};
/// use idem_actix::idempotent;
///
/// /// The tenant whose token the authentication middleware verified.
/// #[derive(Clone)]
/// struct Tenant(String);
///
/// async fn authenticate(
///     req: ServiceRequest,
///     next: Next<impl MessageBody>,
/// ) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
///     let tenant = match req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
///         Some("Bearer token-of-acme") => Some("acme"),
///         Some("Bearer token-of-globex") => Some("globex"),
///         _ => None, // goes on unauthenticated, with no tenant
///     };
///     if let Some(tenant) = tenant {
///         req.extensions_mut().insert(Tenant(tenant.to_owned()));
///     }
///     next.call(req).await
/// }
///
/// fn tenant(req: &HttpRequest) -> Option<String> {
///     req.extensions().get::<Tenant>().map(|t| t.0.clone())
/// }
///
/// #[post("/v1/calls")]
/// #[idempotent(scope = tenant)]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().wrap(from_fn(authenticate)).service(create_call)).await;
/// let call = |token: &str| {
///     TestRequest::post()
///         .uri("/v1/calls")
///         .insert_header(("Authorization", format!("Bearer {token}")))
///         .insert_header(("Idempotency-Key", "k"))
/// };
/// assert_eq!(send(&app, call("token-of-acme")).await.1, false);
/// assert_eq!(send(&app, call("token-of-globex")).await.1, false, "another tenant, another key");
/// assert_eq!(send(&app, call("token-of-acme")).await.1, true);
/// assert_eq!(send(&app, call("forged")).await.0, 400, "unverified: no scope, no replay");
/// # }) }
/// ```
///
/// ## `header`
///
/// The request header that carries the key. Default `"Idempotency-Key"`. Named, it is where
/// the endpoint reads its keys, also in an application whose defaults read them from bodies
/// (`Policy::key_source`). Not a header clients send for another purpose (a credential such
/// as `Authorization` or `X-API-Key`, `Cookie`, `Content-Type`, `User-Agent`, `Host`: the list
/// is `Policy::NOT_KEYS`): every request carrying the same value would share one key; refused
/// at compile time. Nor the header a `"header:<name>"` scope of the application reads, which the
/// attribute cannot see: that is answered 500 `idempotency_misconfigured` (and logged) on every
/// request that carries it.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(header = "X-Idempotency-Key")]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// let call = || TestRequest::post().uri("/v1/calls")
///     .insert_header(("Authorization", "Bearer t"))
///     .insert_header(("X-Idempotency-Key", "k"));
/// assert_eq!(send(&app, call()).await.1, false);
/// assert_eq!(send(&app, call()).await.1, true);
/// # }) }
/// ```
///
/// ## `key`
///
/// Where the key is, for APIs and webhooks that carry it in the body rather than in a header
/// of its own: `"json:<pointer>"` reads the string (or number, as it is spelled: `1` and `1.0`
/// are two keys, as a retry that resends its body unchanged never tells apart) a JSON Pointer
/// (RFC 6901) names in the JSON body, such as `"json:/event_id"`; a function
/// `fn(&HttpRequest, &[u8]) -> Option<String>`, named without quotes and checked at compile
/// time, finds it in the request and its body. The key rules hold as for a header (1 to
/// `key_max_len` bytes of visible ASCII, else 400 `idempotency_key_invalid`, naming where the
/// key was read), and so does the scope. A request without a key runs as if the endpoint were
/// not idempotent, unless `required` (400 `idempotency_key_missing`); an `Idempotency-Key`
/// header is not read. Every request's body is read (up to `max_body`) to look for the key; a
/// body that is not JSON gets 400 `idempotency_body_invalid` under `"json:..."`. Default: the
/// `header`.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/webhooks/payments")]
/// #[idempotent(key = "json:/event/id", fingerprint = "json")]
/// async fn payment_event() -> HttpResponse {
///     HttpResponse::Ok().body("handled")
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(payment_event)).await;
/// let delivery = |body: &'static str| {
///     TestRequest::post().uri("/webhooks/payments")
///         .insert_header(("Authorization", "Bearer t"))
///         .set_payload(body)
/// };
/// let event = r#"{"event":{"id":"evt_1","type":"paid"}}"#;
/// assert_eq!(send(&app, delivery(event)).await.1, false);
/// assert_eq!(send(&app, delivery(event)).await.1, true, "delivered twice, handled once");
/// # }) }
/// ```
///
/// ## `key_max_len`
///
/// The longest key accepted, in bytes once unquoted, from 1 to 8192. Default `255`. A longer
/// key gets 400 `idempotency_key_invalid`.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/emails")]
/// #[idempotent(key_max_len = 256)]
/// async fn send_email() -> HttpResponse {
///     HttpResponse::Ok().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(send_email)).await;
/// assert_eq!(send(&app, req(&"k".repeat(256)).uri("/emails")).await.0, 200);
/// let (status, _, body) = send(&app, req(&"k".repeat(257)).uri("/emails")).await;
/// assert_eq!(status, 400);
/// assert!(body.contains("idempotency_key_invalid"));
/// # }) }
/// ```
///
/// ## `required`
///
/// A flag (`required` or `required = true`): a request without a key gets 400
/// `idempotency_key_missing` instead of running unprotected.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/charges")]
/// #[idempotent(required)]
/// async fn charge() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(charge)).await;
/// let no_key = TestRequest::post().uri("/v1/charges").insert_header(("Authorization", "Bearer t"));
/// let (status, _, body) = send(&app, no_key).await;
/// assert_eq!(status, 400);
/// assert!(body.contains("idempotency_key_missing"));
/// # }) }
/// ```
///
/// ## `mismatch`
///
/// The answer when a key comes back with a different request (method, path, query or body):
/// `"conflict"` (409 `idempotency_conflict`, the default), `"unprocessable"` (422, as the IETF draft
/// says) or `"replay"` (the first response, ignoring the new request). `"replay"` ignores all of
/// it, the endpoint too: a key reused on another endpoint gets the first endpoint's response,
/// unless keys are kept per endpoint (`per_endpoint`), which APIs that ignore only a retry's
/// body want. An endpoint is its route pattern: under one key, another value of a path
/// parameter, or another query, is still the same endpoint, and gets the first response.
/// With `"replay"`, `fingerprint_headers` and `fingerprint_ignore` would change no answer,
/// and are refused.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(mismatch = "unprocessable")]
/// async fn create_call(body: String) -> HttpResponse {
///     HttpResponse::Created().body(body)
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/calls").set_payload("to A")).await.0, 201);
/// assert_eq!(send(&app, req("k").uri("/v1/calls").set_payload("to B")).await.0, 422);
/// # }) }
/// ```
///
/// ## `fingerprint`
///
/// How a request's body is compared with the first request of its key (its method and path
/// always count, and its query):
///
/// | value | bodies are the same when | query parameters |
/// |---|---|---|
/// | `"bytes"` (default) | byte for byte | as sent |
/// | `"json"` | as parsed JSON: members in any order, any whitespace, strings unescaped, numbers by exact value (`1`, `1.0` and `1e0` are one number); a body that is not JSON, or is sent as another type (its `Content-Type`), byte for byte | in any order (as sent, for a body compared byte for byte) |
/// | `"form"` | as `application/x-www-form-urlencoded` pairs in any order of their names (values of one name keep their order), decoded; a body sent as another type (its `Content-Type`), or as a form in another charset than UTF-8, byte for byte | in any order (as sent, for a body compared byte for byte) |
/// | a function | what the function `fn(&HttpRequest, &[u8]) -> Option<Vec<u8>>` (named without quotes, checked at compile time) makes of them is equal | in any order |
///
/// A body that is not JSON under `"json"`, or no form under `"form"`, is compared as sent and
/// reaches the handler, whose extractors answer it as they would without the attribute. A
/// body the function returns `None` for gets 400 `idempotency_body_invalid`; nothing is
/// claimed, so the corrected request runs with the same key. An empty body is no document,
/// not an error. In JSON, members of one name keep their order, and a body nested past 128
/// levels is not read as JSON.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, web, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(fingerprint = "json")]
/// async fn create_call(body: web::Json<serde_json::Value>) -> HttpResponse {
///     HttpResponse::Created().json(body.into_inner())
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// let call = |body: &'static str| req("k").uri("/v1/calls")
///     .insert_header(("Content-Type", "application/json"))
///     .set_payload(body);
/// assert_eq!(send(&app, call(r#"{"to":"+15555550123","agent":"a1"}"#)).await.0, 201);
/// // The same call, serialised again in another order: a replay.
/// assert_eq!(send(&app, call(r#"{ "agent": "a1", "to": "+15555550123" }"#)).await.1, true);
/// // Another call with the same key: a conflict.
/// assert_eq!(send(&app, call(r#"{"agent":"a1","to":"+15555550199"}"#)).await.0, 409);
/// // Not JSON: compared as sent, and answered by the handler's `web::Json` (400), as without
/// // the attribute; an extractor's refusal is not recorded.
/// let not_json = req("k2").uri("/v1/calls")
///     .insert_header(("Content-Type", "application/json"))
///     .set_payload("to=+15555550123");
/// assert_eq!(send(&app, not_json).await.0, 400);
/// # }) }
/// ```
///
/// A function compares bodies only the application can read:
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpRequest, HttpResponse};
/// use idem_actix::idempotent;
///
/// /// The lines of an order, in any order.
/// fn order_lines(_: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
///     let mut lines: Vec<&str> = std::str::from_utf8(body).ok()?.lines().collect();
///     lines.sort_unstable();
///     Some(lines.join("\n").into_bytes())
/// }
///
/// #[post("/v1/orders")]
/// #[idempotent(fingerprint = order_lines)]
/// async fn create_order() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_order)).await;
/// send(&app, req("k").uri("/v1/orders").set_payload("2 pears\n1 apple")).await;
/// let retry = send(&app, req("k").uri("/v1/orders").set_payload("1 apple\n2 pears")).await;
/// assert_eq!(retry.1, true);
/// # }) }
/// ```
///
/// ## `fingerprint_ignore`
///
/// Members of a JSON body that do not count, as JSON Pointers (RFC 6901, checked at compile
/// time): a client's timestamp or trace id that changes on every retry. With
/// `fingerprint = "json"` only. A pointer names object members and array elements
/// (`"/items/0/sent_at"`); `~1` stands for `/` and `~0` for `~` in a name. What it names is
/// left out wherever it is, present or not.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/messages")]
/// #[idempotent(fingerprint = "json", fingerprint_ignore = ["/client_sent_at", "/meta/trace_id"])]
/// async fn create_message() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_message)).await;
/// let message = |body: &'static str| req("k").uri("/v1/messages").set_payload(body);
/// send(&app, message(r#"{"text":"hi","client_sent_at":"10:00:00"}"#)).await;
/// let retry = send(&app, message(r#"{"text":"hi","client_sent_at":"10:00:07"}"#)).await;
/// assert_eq!(retry.1, true);
/// # }) }
/// ```
///
/// ## `fingerprint_headers`
///
/// Request headers that are part of the request, by name: a retry must send them with the
/// same values (each value compared as sent; a header sent several times, all its values in
/// their order). None by default. Not a header of one transfer or one request, which differs
/// between a request and its retry (`Connection`, `Date`, `X-Request-ID`, ...: the list is
/// `ReplayHeaders::NEVER`), so that every retry would be a mismatch; refused at compile time,
/// and by `Policy::check` for the middleware form.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/transfers")]
/// #[idempotent(fingerprint_headers = ["X-Account"])]
/// async fn transfer() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(transfer)).await;
/// let from = |account: &str| req("k").uri("/v1/transfers").insert_header(("X-Account", account));
/// send(&app, from("acct_1")).await;
/// assert_eq!(send(&app, from("acct_2")).await.0, 409);
/// # }) }
/// ```
///
/// ## `in_flight`
///
/// The answer while the first request with the key is still running: `"conflict"` (409
/// `idempotency_conflict` with `Retry-After`, the default) or `"wait"`: wait for the first to finish
/// (up to `wait_timeout`) and replay its response, or 409 after that.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(in_flight = "wait")]
/// async fn create_call() -> HttpResponse {
///     actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// let (a, b) = futures_util::join!(
///     send(&app, req("k").uri("/v1/calls")),
///     send(&app, req("k").uri("/v1/calls")),
/// );
/// assert_eq!((a.0, b.0), (201, 201));
/// assert!(a.1 != b.1, "one ran, the other waited and replayed it");
/// # }) }
/// ```
///
/// ## `wait_timeout`
///
/// How long a request waits for the running one under `in_flight = "wait"`: a duration.
/// Default: the application's bound where its defaults wait too
/// (`IdempotencyConfig::with_defaults` with `OnInFlight::Wait`), else `"10s"`. Only with
/// `in_flight = "wait"`; alone it is a compile error.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(in_flight = "wait", wait_timeout = "30s")]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/calls")).await.0, 201);
/// # }) }
/// ```
///
/// ## `cache`
///
/// Which responses are recorded and replayed: `"non_5xx"` (every status but 5xx, the default)
/// or `"2xx"`. Any other response releases the key, so a retry runs the operation again.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/contacts")]
/// #[idempotent(cache = "2xx")]
/// async fn create_contact(body: String) -> HttpResponse {
///     if body.is_empty() {
///         return HttpResponse::BadRequest().body("name is required");
///     }
///     HttpResponse::Created().body(body)
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_contact)).await;
/// assert_eq!(send(&app, req("k").uri("/contacts")).await.0, 400);
/// // The 400 was not recorded: the corrected request runs.
/// assert_eq!(send(&app, req("k").uri("/contacts").set_payload("ACME")).await, (201, false, "ACME".into()));
/// # }) }
/// ```
///
/// ## `per_endpoint`
///
/// A flag, or the endpoint's name: keys are per method and route (or per name) as well as
/// per scope, so the same key on two endpoints is two operations. Off by default, where reusing a key on another endpoint is a
/// mismatch. An endpoint is its method and route pattern: two handlers on one pattern and
/// method that a guard chooses between (by an `X-Api-Version` header, say) are one endpoint,
/// and a request the other takes, with the same body, replays the first's answer; name the
/// guard's header in [`fingerprint_headers`](#fingerprint_headers) to tell them apart.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/agents")]
/// #[idempotent(per_endpoint)]
/// async fn create_agent() -> HttpResponse {
///     HttpResponse::Created().body("agent")
/// }
///
/// #[post("/calls")]
/// #[idempotent(per_endpoint)]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().body("call")
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_agent).service(create_call)).await;
/// assert_eq!(send(&app, req("k").uri("/agents")).await, (201, false, "agent".into()));
/// assert_eq!(send(&app, req("k").uri("/calls")).await, (201, false, "call".into()));
/// # }) }
/// ```
///
/// Keys per method and route pattern change with the pattern: a deploy that renames a path
/// parameter (`{id}` to `{call_id}`) or gives it a pattern (`{id:\d+}`) makes a retry of a
/// request sent before it a new request, which runs again. `per_endpoint = "<name>"` keeps
/// the endpoint's keys under a name instead, whatever its pattern: choose one that lasts,
/// such as `"calls.update"`. A retry to another path than its first try's is still a
/// mismatch (the path is part of the request), never a replay. Endpoints of one name share
/// their keys (the same key on another of them is a mismatch, as the request differs, never
/// a second run). To keep the keys an endpoint already has, name it as its route was: its
/// method and pattern, `"PUT /calls/{id}"`; an endpoint moved under the `Idempotency`
/// middleware (which keys by path, and whose settings apply to what it wraps) keeps them
/// where the middleware is given that name
/// (`.with_overrides(|p| p.endpoint_name("PUT /calls/{id}"))`).
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{put, HttpResponse};
/// use idem_actix::idempotent;
///
/// // Yesterday's deploy.
/// #[put("/calls/{id}")]
/// #[idempotent(per_endpoint)]
/// async fn update_call() -> HttpResponse {
///     HttpResponse::Ok().body("updated")
/// }
///
/// // Today's: the parameter renamed, the keys kept under the route's old name.
/// #[put("/calls/{call_id}")]
/// #[idempotent(per_endpoint = "PUT /calls/{id}")]
/// async fn update_call_renamed() -> HttpResponse {
///     HttpResponse::Ok().body("updated again")
/// }
/// # fn main() { block_on(async {
/// # let store = idem_actix::IdempotencyConfig::new(idem_actix::MokaStore::new());
/// # let before = test::init_service(App::new().app_data(store.clone()).service(update_call)).await;
/// # let after = test::init_service(App::new().app_data(store).service(update_call_renamed)).await;
/// let retry = || req("k").method(actix_web::http::Method::PUT).uri("/calls/7");
/// assert_eq!(send(&before, retry()).await, (200, false, "updated".into()));
/// // The retry after the deploy replays the first answer.
/// assert_eq!(send(&after, retry()).await, (200, true, "updated".into()));
/// # }) }
/// ```
///
/// ## `lease`
///
/// How long a claim holds without renewal: a duration of at least `"100ms"`, default `"60s"`.
/// A running handler renews its lease every third of it, so long handlers keep their claim; a
/// claim whose holder crashed lapses after it, and a retry then runs again.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/exports")]
/// #[idempotent(lease = "5m")]
/// async fn export() -> HttpResponse {
///     HttpResponse::Accepted().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(export)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/exports")).await.0, 202);
/// # }) }
/// ```
///
/// ## `fail_open`
///
/// A flag: when the store cannot be reached, or cannot answer for its data for now (starting,
/// loading, a node that takes no writes in a failover), run the handler unprotected instead of
/// answering 503 `idempotency_store_unavailable` (the default, which runs nothing). A store
/// that answers with a refusal of its own (out of memory, a table never migrated, wrong
/// credentials), or a Redis claim that fewer replicas acknowledged than `wait_for_replicas`
/// asks, still fails closed: it was reached, and may hold the key. `fail_open = false`
/// fails closed even where the application's defaults fail open. A store can also be
/// configured to fail open for every endpoint, whatever the endpoint says.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::{idempotent, IdempotencyConfig};
///
/// #[post("/v1/telemetry")]
/// #[idempotent(fail_open)]
/// async fn record() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// // A store that is always down (feature `testing`).
/// let down = IdempotencyConfig::new(idem_actix::testing::UnavailableStore);
/// # let app = test::init_service(App::new().app_data(down).service(record)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/telemetry")).await.0, 201);
/// # }) }
/// ```
///
/// ## `errors`
///
/// The body of the layer's own errors on this endpoint: `"envelope"`
/// (`{"error":{"code":..,"message":..},"request_id":..}`), `"type"` (the same, with the code under
/// `error.type`) or `"problem"` (RFC 9457 `application/problem+json`). Without it, the renderer
/// registered with `IdempotencyConfig::with_error_renderer`, else `"envelope"`.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/contacts")]
/// #[idempotent(errors = "type", mismatch = "unprocessable")]
/// async fn create_contact(body: String) -> HttpResponse {
///     HttpResponse::Created().body(body)
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_contact)).await;
/// send(&app, req("k").uri("/contacts").set_payload("a")).await;
/// let (status, _, body) = send(&app, req("k").uri("/contacts").set_payload("b")).await;
/// assert_eq!(status, 422);
/// assert!(body.contains(r#""type":"idempotency_conflict""#));
/// # }) }
/// ```
///
/// ## `max_body`
///
/// The largest body of a request with a key, in bytes: the layer reads it to fingerprint the
/// request, and answers 413 `idempotency_body_too_large` past it, before claiming anything.
/// Default `2097152` (2 MiB).
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/notes")]
/// #[idempotent(max_body = 1024)]
/// async fn create_note(body: String) -> HttpResponse {
///     HttpResponse::Created().body(body)
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_note)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/notes").set_payload(vec![b'x'; 1025])).await.0, 413);
/// # }) }
/// ```
///
/// ## `max_response`
///
/// The largest response kept for replay, in bytes (body, and header names and values with 6
/// bytes for each header). Default
/// `1048576` (1 MiB). A larger response is still sent to the first client in full, and the key
/// is recorded as completed without it: retries get 409 `idempotency_response_too_large` and the
/// operation never runs again.
///
/// A streamed body of unknown length (server-sent events, say) goes out as it comes, and a
/// copy is kept up to this bound: the key stays claimed until the stream ends, then the whole
/// body is recorded. A stream that fails first releases the key, and one whose client goes
/// away is read on without it and recorded. With `max_response = 0` nothing is kept, and the
/// key is recorded as completed before the first piece is read. So a stream that fails at
/// once is not released (its retries get 409 `idempotency_response_too_large`, as do those of
/// an empty stream).
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/exports")]
/// #[idempotent(max_response = 1024)]
/// async fn export() -> HttpResponse {
///     HttpResponse::Created().body(vec![b'x'; 4096])
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(export)).await;
/// let first = test::call_service(&app, req("k").uri("/v1/exports").to_request()).await;
/// assert_eq!(test::read_body(first).await.len(), 4096);
/// let retry = test::call_service(&app, req("k").uri("/v1/exports").to_request()).await;
/// assert_eq!(retry.status(), 409);
/// # }) }
/// ```
///
/// ## `replay_set_cookie`
///
/// A flag: `Set-Cookie` headers are recorded and replayed with the rest of the response. Off by
/// default, where a response's cookies go to the first caller only: a replay goes to whoever
/// holds the key, and a cookie (a session, a CSRF token) is meant for the client the first
/// response went to. Turn it on for an endpoint whose cookie is part of the operation's
/// result, and whose keys only its own client can know.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/carts")]
/// #[idempotent(replay_set_cookie)]
/// async fn create_cart() -> HttpResponse {
///     HttpResponse::Created().insert_header(("Set-Cookie", "cart=c_1")).finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_cart)).await;
/// test::call_service(&app, req("k").uri("/v1/carts").to_request()).await;
/// let retry = test::call_service(&app, req("k").uri("/v1/carts").to_request()).await;
/// assert_eq!(retry.headers().get("set-cookie").unwrap(), "cart=c_1");
/// # }) }
/// ```
///
/// ## `replay_headers`
///
/// The recorded headers a replay repeats, by name in any case: only these. Headers of one
/// transfer or one request (`Date`, `Content-Length`, `X-Request-ID`, ...: the list is
/// `ReplayHeaders::NEVER`) are never replayed, and refused in the list (as in
/// `replay_drop_headers`), where they would do nothing; `Set-Cookie` is replayed only with
/// `replay_set_cookie`, whatever the list, while a
/// recorded `Content-Encoding` always is (the body's bytes are in that coding); name every
/// other header the replay needs, `Content-Type` included. Default: every recorded header.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(replay_headers = ["Location", "Content-Type"])]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created()
///         .insert_header(("Location", "/v1/calls/1"))
///         .insert_header(("Server-Timing", "db;dur=53"))
///         .finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// test::call_service(&app, req("k").uri("/v1/calls").to_request()).await;
/// let retry = test::call_service(&app, req("k").uri("/v1/calls").to_request()).await;
/// assert_eq!(retry.headers().get("location").unwrap(), "/v1/calls/1");
/// assert!(retry.headers().get("server-timing").is_none());
/// # }) }
/// ```
///
/// ## `replay_drop_headers`
///
/// Recorded headers a replay leaves out, by name in any case, on top of those never
/// replayed: a trace id or a timing of the first response. Not with `replay_headers`, and not
/// `Content-Encoding`, which a replay always repeats. None by default.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use actix_web::{post, HttpResponse};
/// use idem_actix::idempotent;
///
/// #[post("/v1/calls")]
/// #[idempotent(replay_drop_headers = ["Server-Timing"])]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created()
///         .insert_header(("Location", "/v1/calls/1"))
///         .insert_header(("Server-Timing", "db;dur=53"))
///         .finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// test::call_service(&app, req("k").uri("/v1/calls").to_request()).await;
/// let retry = test::call_service(&app, req("k").uri("/v1/calls").to_request()).await;
/// assert_eq!(retry.headers().get("location").unwrap(), "/v1/calls/1");
/// assert!(retry.headers().get("server-timing").is_none());
/// # }) }
/// ```
///
/// ## `on_replay`
///
/// A function called on every replay, with the request and the replayed response, which it
/// may change: to log or count replays, or add a header to them. A function
/// `fn(&HttpRequest, &mut HttpResponse)`, named without quotes and checked at compile time.
/// It replaces the application's hook (`IdempotencyConfig::on_replay`) on this endpoint.
///
/// ```
/// # extern crate idem as idem_actix;
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use actix_web::{post, HttpRequest, HttpResponse};
/// use idem_actix::idempotent;
///
/// static REPLAYS: AtomicUsize = AtomicUsize::new(0);
///
/// fn count(_: &HttpRequest, _: &mut HttpResponse) {
///     REPLAYS.fetch_add(1, Ordering::Relaxed);
/// }
///
/// #[post("/v1/calls")]
/// #[idempotent(on_replay = count)]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// send(&app, req("k").uri("/v1/calls")).await;
/// send(&app, req("k").uri("/v1/calls")).await;
/// assert_eq!(REPLAYS.load(Ordering::Relaxed), 1);
/// # }) }
/// ```
///
/// ## `crate`
///
/// The path of `idem_actix`, for a crate that depends on it under another name
/// (`idem = { package = "idem-actix", .. }` in `Cargo.toml`). Default `"idem_actix"`.
///
/// ```
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/doc/support.rs"));
/// // This crate depends on idem-actix as `idem`.
/// use actix_web::{post, HttpResponse};
///
/// #[post("/v1/calls")]
/// #[idem::idempotent(crate = "idem")]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
/// # fn main() { block_on(async {
/// # let app = test::init_service(App::new().service(create_call)).await;
/// assert_eq!(send(&app, req("k").uri("/v1/calls")).await.0, 201);
/// # }) }
/// ```
///
/// # Debugging the expansion
/// Set `IDEM_MACROS_DEBUG=1` (or a comma-separated list of handler names) while building to
/// print what the attribute generates to standard error; pipe it through `rustfmt` to read it. Cargo does not rebuild for an environment change alone: touch
/// the file, or `cargo clean -p <your crate>`, first.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.into();
    let mut func = match syn::parse2::<syn::ItemFn>(item2.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[idempotent] goes on an `async fn` handler",
            );
            let mut out = error.to_compile_error();
            out.extend(item2);
            return out.into();
        }
    };
    // The body's inner attributes (`#![allow(..)]`) are among the function's, as syn parses
    // them: emitted before the generated handler they would be refused there, so they
    // become the outer attributes they mean.
    for attr in &mut func.attrs {
        if let syn::AttrStyle::Inner(_) = attr.style {
            attr.style = syn::AttrStyle::Outer;
        }
    }
    let (reordered, args) = reordered(args.into());
    let mut errors = errors::Errors::default();
    let parsed = attr::parse(args.clone(), &mut errors);
    match &parsed {
        Ok(args) => valid::args(args, &mut errors),
        Err(syntax) => errors.add(syntax.clone()),
    }
    valid::handler(&func, &mut errors);
    match errors.finish(()).and(parsed) {
        Ok(parsed) => {
            if !reordered {
                if let Some(reordered) = macros_first(&parsed, args, &func) {
                    return reordered.into();
                }
            }
            let args = parsed;
            let name = func.sig.ident.to_string();
            let expanded = expand::expand(&args, func);
            if wants_debug(std::env::var("IDEM_MACROS_DEBUG").ok().as_deref(), &name) {
                eprintln!("#[idempotent] on `{name}` expands to:\n{expanded}\n");
            }
            expanded.into()
        }
        Err(errors) => {
            // Emit the handler untouched beside the errors, so nothing else fails to resolve.
            let mut out = errors.to_compile_error();
            out.extend(quote::quote!(#func));
            out.into()
        }
    }
}

/// The argument [`macros_first`] gives `#[idempotent]` when it gives it again.
const REORDERED: &str = "__idem_reordered";

/// Whether `args` begin with [`REORDERED`] (then taken off them): the handler was given to
/// [`macros_first`] already. An attribute it takes for a macro is not always one (a built-in
/// one it does not know, such as `#[unsafe(export_name = "..")]`, which no expansion removes),
/// and it would move it above itself again on every expansion, up to the compiler's
/// recursion limit.
fn reordered(args: proc_macro2::TokenStream) -> (bool, proc_macro2::TokenStream) {
    let mut tokens = args.clone().into_iter().peekable();
    match tokens.next() {
        Some(proc_macro2::TokenTree::Ident(ident)) if ident == REORDERED => {
            let _comma = tokens
                .next_if(|t| matches!(t, proc_macro2::TokenTree::Punct(p) if p.as_char() == ','));
            (true, tokens.collect())
        }
        _ => (false, args),
    }
}

/// The handler with `#[idempotent]` given again below the attribute macros that were below
/// it (`#[tracing::instrument]`, a route attribute), so that they expand first, on the
/// handler as written, as they would without `#[idempotent]`; `None` when there are none.
/// Given once: the attribute it gives carries [`REORDERED`].
fn macros_first(
    parsed: &ast::Args,
    args: proc_macro2::TokenStream,
    func: &syn::ItemFn,
) -> Option<proc_macro2::TokenStream> {
    let last = func.attrs.iter().rposition(|attr| !is_inert(attr))?;
    let (macros, rest) = func.attrs.split_at(last + 1);
    let krate = match &parsed.krate {
        Some(path) => quote::ToTokens::to_token_stream(&path.value),
        None => quote::quote!(::idem_actix),
    };
    let syn::ItemFn {
        vis, sig, block, ..
    } = func;
    let marker = proc_macro2::Ident::new(REORDERED, proc_macro2::Span::call_site());
    let args = if args.is_empty() {
        quote::quote!(#marker)
    } else {
        quote::quote!(#marker, #args)
    };
    Some(quote::quote! {
        #(#macros)*
        #[#krate::idempotent(#args)]
        #(#rest)*
        #vis #sig #block
    })
}

/// Whether `attr` is one the compiler or a tool reads, rather than an attribute macro: it
/// stays on the generated handler.
fn is_inert(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    let Some(first) = path.segments.first() else {
        return true;
    };
    let first = first.ident.to_string();
    if path.segments.len() > 1 {
        return matches!(
            first.as_str(),
            "rustfmt" | "clippy" | "diagnostic" | "rustdoc" | "rust_analyzer"
        );
    }
    matches!(
        first.as_str(),
        "doc"
            | "allow"
            | "warn"
            | "deny"
            | "forbid"
            | "expect"
            | "cfg"
            | "cfg_attr"
            | "must_use"
            | "deprecated"
            | "inline"
            | "cold"
            | "track_caller"
            | "no_mangle"
            | "export_name"
            | "link_section"
            | "target_feature"
            | "instruction_set"
            | "optimize"
            | "coverage"
            | "unsafe"
    )
}

/// Whether `IDEM_MACROS_DEBUG` (`setting`) asks to print the expansion of handler `name`:
/// `1`, `true` or `all` for every handler, else a comma-separated list of handler names.
fn wants_debug(setting: Option<&str>, name: &str) -> bool {
    match setting.map(str::trim) {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true" | "all") => true,
        Some(names) => names.split(',').any(|n| n.trim() == name),
    }
}

#[cfg(test)]
mod tests {
    use super::wants_debug;

    #[test]
    fn debug_output_is_opt_in_per_handler_or_for_all() {
        assert!(!wants_debug(None, "create_call"));
        assert!(!wants_debug(Some("0"), "create_call"));
        assert!(wants_debug(Some("1"), "create_call"));
        assert!(wants_debug(Some("all"), "create_call"));
        assert!(wants_debug(Some("list_calls, create_call"), "create_call"));
        assert!(!wants_debug(Some("create_message"), "create_call"));
    }
}
