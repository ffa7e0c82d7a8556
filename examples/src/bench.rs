//! The handlers `bench-server` and the in-process benchmarks measure: one trivial JSON
//! handler, bare and under `#[idempotent(scope = "global")]`, a reference for what the
//! embedded store alone costs a new key ([`store_alone`]), and one for what the least a layer
//! adds to it costs ([`floor`]).

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::body::MessageBody as _;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::idempotent;
use idem_core::clock::{Clock as _, Timestamp};
use idem_core::{Completed, Fingerprint, InFlight, MokaStore, Response, Store, StoreKey, Token};
use serde::Deserialize;
use serde_json::json;

/// The echo body.
#[derive(Deserialize)]
pub struct Echo {
    agent_id: String,
    phone_number: String,
}

/// Parses the body and answers 201 with a small JSON body.
pub async fn bare(body: web::Json<Echo>) -> HttpResponse {
    HttpResponse::Created().json(json!({
        "id": "call_1",
        "agent_id": body.agent_id,
        "phone_number": body.phone_number,
    }))
}

/// The same handler, idempotent.
#[idempotent(scope = "global")]
pub async fn idem(body: web::Json<Echo>) -> HttpResponse {
    bare(body).await
}

/// The bare handler, then what the embedded store itself does for a new key: a claim of the
/// request's `Idempotency-Key` and the completion of a record of this request's response,
/// built from it as the layer builds one (status, headers and body copied into a record), on
/// the store [`set_store_alone`] gave (a [`MokaStore`] of its own by default). Nothing of the
/// layer's own work (key syntax, scope, digests, reading the request body, the lease, clock
/// reads, metrics, the replay headers), so that the layer's new key can be compared with what
/// no layer on this store can avoid.
///
/// A reference, not a store to use: the key is spread by a cheap hash instead of SHA-256.
pub async fn store_alone(req: HttpRequest, body: web::Json<Echo>) -> HttpResponse {
    let res = bare(body).await;
    // A parsed name, as the layer's: a `&str` would be parsed, and copied, on every request.
    const KEY: HeaderName = HeaderName::from_static("idempotency-key");
    let Some(key) = req.headers().get(&KEY) else {
        return res;
    };
    let store = alone();
    let key = spread(key.as_bytes());
    let claim = InFlight {
        fingerprint: ALONE_FINGERPRINT,
        lease_until: ALONE_NOW.saturating_add(Duration::from_secs(60)),
        token: Token::from_u128(1),
    };
    if let Some(Ok(idem_core::Claim::Claimed)) = store.claim_now(&key, claim, ALONE_NOW) {
        let (head, body) = res.into_parts();
        let body = body
            .try_into_bytes()
            .unwrap_or_else(|_| unreachable!("the echo's body is whole"));
        let record = Completed {
            fingerprint: claim.fingerprint,
            response: Response::new(head.status().as_u16(), Headers(head.headers()), &body),
            completed_at: ALONE_NOW,
            expires_at: ALONE_NOW.saturating_add(Duration::from_secs(86_400)),
        };
        let _ = store.complete(&key, claim.token, record, ALONE_NOW).await;
        return head.set_body(actix_web::body::BoxBody::new(body));
    }
    res
}

/// The store alone ([`store_alone`]) and the least a layer that keeps idem's contract, with
/// its key and fingerprint scheme, adds to it for a new key: the key's syntax, the key's scope,
/// the body read whole (for the fingerprint) and handed on to the handler's extractor as a
/// payload rebuilt in one chunk, both SHA-256 digests (the store key and the fingerprint), a
/// random fencing token, and the two clock reads that date the claim's lease and the record's
/// expiry, the key claimed before the handler runs as the layer claims it. Nothing else of the
/// layer's: no request id, no lease renewal, no detaching, no guard of the handler's run, no
/// metrics, no check of a repeated key header or of a content coding.
///
/// A reference for what such a layer cannot avoid, not a layer: a key it refuses, or a body
/// the extractor refuses, is answered 400 with no body, and a key already claimed or recorded
/// goes to the handler unclaimed.
pub async fn floor(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    const KEY: HeaderName = HeaderName::from_static("idempotency-key");
    let Some(raw) = req.headers().get(&KEY) else {
        return match handed_on(&req, body).await {
            Some(echo) => bare(echo).await,
            None => HttpResponse::BadRequest().finish(),
        };
    };
    let Ok(key) = idem_core::ClientKey::parse(raw.as_bytes(), idem_core::DEFAULT_KEY_MAX_LEN)
    else {
        return HttpResponse::BadRequest().finish();
    };
    let scope = idem_core::ScopeValue::new("global", &b""[..]);
    let store_key = StoreKey::new(&scope, None, &key);
    let (method, path) = (req.method().as_str(), req.path());
    let fingerprint = Fingerprint::new(method, path, req.query_string(), &body);
    let (store, clock) = (alone(), floor_clock());
    let now = clock.now();
    let claim = InFlight {
        fingerprint,
        lease_until: now.saturating_add(Duration::from_secs(60)),
        token: Token::random(),
    };
    let claimed = matches!(
        store.claim_now(&store_key, claim, now),
        Some(Ok(idem_core::Claim::Claimed))
    );
    let Some(echo) = handed_on(&req, body).await else {
        if claimed {
            let _ = store.release(&store_key, claim.token).await;
        }
        return HttpResponse::BadRequest().finish();
    };
    let res = bare(echo).await;
    if !claimed {
        return res;
    }
    let (head, body) = res.into_parts();
    let body = body
        .try_into_bytes()
        .unwrap_or_else(|_| unreachable!("the echo's body is whole"));
    let now = clock.now();
    let record = Completed {
        fingerprint,
        response: Response::new(head.status().as_u16(), Headers(head.headers()), &body),
        completed_at: now,
        expires_at: now.saturating_add(Duration::from_secs(86_400)),
    };
    let _ = store.complete(&store_key, claim.token, record, now).await;
    head.set_body(actix_web::body::BoxBody::new(body))
}

/// The echo the handler's JSON extractor reads from `body`, handed to it as a payload rebuilt in
/// one chunk, as the layer hands on a small body.
async fn handed_on(req: &HttpRequest, body: web::Bytes) -> Option<web::Json<Echo>> {
    use actix_web::FromRequest as _;
    let chunk = futures_util::stream::once(std::future::ready(Ok(body)));
    let stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(chunk);
    let mut payload = actix_web::dev::Payload::Stream { payload: stream };
    web::Json::<Echo>::from_request(req, &mut payload)
        .await
        .ok()
}

/// The clock [`floor`] reads: the layer's default.
fn floor_clock() -> &'static idem_core::clock::MonotonicClock {
    static CLOCK: OnceLock<idem_core::clock::MonotonicClock> = OnceLock::new();
    CLOCK.get_or_init(idem_core::clock::MonotonicClock::new)
}

/// A response's headers as [`Response::new`] takes them: read twice, as it does, with no copy
/// (the layer's recording copies none either).
#[derive(Clone, Copy)]
struct Headers<'a>(&'a HeaderMap);

impl<'a> IntoIterator for Headers<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = std::iter::Map<
        actix_web::http::header::map::Iter<'a>,
        fn((&'a HeaderName, &'a HeaderValue)) -> Self::Item,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
}

/// The time [`store_alone`] claims and completes at: a fixed one, as it reads no clock.
const ALONE_NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);
const ALONE_FINGERPRINT: Fingerprint = Fingerprint::from_bytes([7; 32]);

static ALONE: OnceLock<MokaStore> = OnceLock::new();

/// The store of [`store_alone`]: the one [`set_store_alone`] gave, else a [`MokaStore`] of
/// the default capacity.
fn alone() -> &'static MokaStore {
    ALONE.get_or_init(MokaStore::new)
}

/// Gives [`store_alone`] its store (for example one of the same capacity as the layer's, and
/// as full). Only the first call counts; `false` when the store was already set.
pub fn set_store_alone(store: MokaStore) -> bool {
    ALONE.set(store).is_ok()
}

/// Writes `records` completed records of the echo's size into `store` under fresh keys, as
/// many new keys would: a store given more than it has room for starts full, and every new key
/// then evicts a record, as in a busy server's steady state.
pub async fn prefill(store: &MokaStore, records: usize) {
    let now = idem_core::clock::Clock::now(&idem_core::clock::SystemClock);
    for _ in 0..records {
        let (key, claim) = (fresh_key(), echo_claim(now));
        if let Some(Ok(idem_core::Claim::Claimed)) = store.claim_now(&key, claim, now) {
            let record = echo_record(&claim, now, Duration::from_secs(86_400));
            let _ = store.complete(&key, claim.token, record, now).await;
        }
    }
}

/// The echo request to `path`, with `key` as its `Idempotency-Key` when given, for the
/// in-process benches and tests (`.to_request()` builds it).
pub fn echo_request(path: &str, key: Option<&str>) -> actix_web::test::TestRequest {
    let req = actix_web::test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", "application/json"))
        .set_payload(r#"{"agent_id":"agent_1","phone_number":"+15555550123"}"#);
    match key {
        Some(key) => req.insert_header(("idempotency-key", key)),
        None => req,
    }
}

/// A fresh store key: a counter spread over the key's first bytes, and a random tail, so that
/// runs against a server that keeps its rows do not meet each other's keys.
pub fn fresh_key() -> StoreKey {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut key = [0; 32];
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    key[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    key[8..24].copy_from_slice(&Token::random().as_u128().to_be_bytes());
    StoreKey::from_bytes(key)
}

/// A claim of the echo as the engine writes it, at `now`.
pub fn echo_claim(now: Timestamp) -> InFlight {
    InFlight {
        fingerprint: Fingerprint::new("POST", "/idem/echo", "", b"{}"),
        lease_until: now.saturating_add(Duration::from_secs(30)),
        token: Token::random(),
    }
}

/// The record completing `claim` with the echo's response, kept `ttl` from `now`.
pub fn echo_record(claim: &InFlight, now: Timestamp, ttl: Duration) -> Completed {
    let body = br#"{"id":"call_1","agent_id":"agent_1","phone_number":"+15555550123"}"#;
    Completed {
        fingerprint: claim.fingerprint,
        response: Response::new(201, [("content-type", &b"application/json"[..])], body),
        completed_at: now,
        expires_at: now.saturating_add(ttl),
    }
}

/// A store key spread from `key` by FNV-1a and splitmix64's finalizer: cheap, where the
/// layer's is a SHA-256, and mixed enough that the first byte (the store's stripe) varies.
fn spread(key: &[u8]) -> StoreKey {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut bytes = [0; 32];
    bytes[..8].copy_from_slice(&mix(h).to_be_bytes());
    bytes[8..16].copy_from_slice(&mix(h ^ 0x9e37_79b9_7f4a_7c15).to_be_bytes());
    StoreKey::from_bytes(bytes)
}

/// The routes a bench server can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /bare/echo`: the handler without the layer.
    Bare,
    /// `POST /idem/echo`: the handler under the layer, on the app's (embedded) store.
    Idem,
    /// `POST /idem-redis/echo`: the handler under the layer, on a Redis store.
    IdemRedis,
    /// `POST /store-alone/echo`: the bare handler and the embedded store's own work for a
    /// new key ([`store_alone`]).
    StoreAlone,
    /// `POST /floor/echo`: the store alone and the least a layer adds to it ([`floor`]).
    Floor,
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "bare" => Ok(Route::Bare),
            "idem" => Ok(Route::Idem),
            "idem-redis" => Ok(Route::IdemRedis),
            "store-alone" => Ok(Route::StoreAlone),
            "floor" => Ok(Route::Floor),
            other => Err(format!(
                "unknown route `{other}`: expected bare, idem, idem-redis, store-alone or floor"
            )),
        }
    }
}

/// Registers `routes` in their order; `Route::IdemRedis` only when `redis` is given.
///
/// actix matches routes in the order they were registered, so each route pays a failed path
/// match for every route before it: `scripts/bench-http` runs the bare handler and the
/// idempotent ones in two servers, so that each measured route is the first of its app (but
/// `/idem-redis/echo`, which comes after `/idem/echo`). The in-process bench serves each route
/// from an app of its own.
pub fn configure(
    routes: Vec<Route>,
    redis: Option<idem_actix::IdempotencyConfig>,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        for route in &routes {
            match (route, &redis) {
                (Route::Bare, _) => bare_route(cfg),
                (Route::Idem, _) => idem_route(cfg),
                (Route::IdemRedis, Some(redis)) => redis_route(cfg, redis.clone()),
                (Route::IdemRedis, None) => {}
                (Route::StoreAlone, _) => store_alone_route(cfg),
                (Route::Floor, _) => floor_route(cfg),
            }
        }
    }
}

/// `POST /bare/echo`: the handler without the layer.
pub fn bare_route(cfg: &mut web::ServiceConfig) {
    cfg.route("/bare/echo", web::post().to(bare));
}

/// `POST /store-alone/echo`: the bare handler and the embedded store's own work for a new key.
pub fn store_alone_route(cfg: &mut web::ServiceConfig) {
    cfg.route("/store-alone/echo", web::post().to(store_alone));
}

/// `POST /floor/echo`: the store alone and the least a layer adds to it.
pub fn floor_route(cfg: &mut web::ServiceConfig) {
    cfg.route("/floor/echo", web::post().to(floor));
}

/// `POST /idem/echo`: the handler under the layer, on the app's store.
pub fn idem_route(cfg: &mut web::ServiceConfig) {
    cfg.route("/idem/echo", web::post().to(idem));
}

/// `POST /idem-redis/echo`: the handler under the layer, on `redis`.
pub fn redis_route(cfg: &mut web::ServiceConfig, redis: idem_actix::IdempotencyConfig) {
    cfg.service(
        web::scope("/idem-redis")
            .app_data(redis)
            .route("/echo", web::post().to(idem)),
    );
}

/// Where criterion writes a benchmark run's estimates, found as criterion finds it:
/// `CRITERION_HOME`, else `criterion` under `CARGO_TARGET_DIR`, else under the target
/// directory `cargo metadata` names (a `build.target-dir` of cargo's configuration), else
/// under the workspace's `target`.
pub fn criterion_dir() -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let metadata = || {
        let cargo = std::env::var_os("CARGO")?;
        let output = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .ok()?;
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        metadata["target_directory"]
            .as_str()
            .map(std::path::PathBuf::from)
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(metadata)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

#[cfg(test)]
mod tests {
    use actix_web::{test, App};

    use super::*;

    fn echo(key: Option<&str>) -> actix_http::Request {
        echo_request("/store-alone/echo", key).to_request()
    }

    #[actix_web::test]
    async fn the_store_alone_reference_does_the_store_work_of_a_new_key() {
        let app = test::init_service(App::new().configure(store_alone_route)).await;
        let store = alone();
        // Without a key it is the bare handler.
        let res = test::call_service(&app, echo(None)).await;
        assert_eq!(res.status(), 201);
        let key = "store-alone-test-key";
        let slot = spread(key.as_bytes());
        assert_eq!(
            store.get(&slot, ALONE_NOW).await.unwrap(),
            None,
            "not written yet"
        );
        // With one, the key is claimed and completed with a record of this response, as the
        // embedded store records a new key; the answer is the bare handler's.
        let res = test::call_service(&app, echo(Some(key))).await;
        assert_eq!(res.status(), 201);
        let sent = test::read_body(res).await;
        let Some(idem_core::Record::Completed(record)) = store.get(&slot, ALONE_NOW).await.unwrap()
        else {
            panic!("a completed record")
        };
        assert_eq!(record.response.status(), 201);
        assert_eq!(
            record.response.body(),
            &sent[..],
            "the response sent is recorded"
        );
        // Other keys land in other slots, spread over the store's stripes.
        let firsts: std::collections::HashSet<u8> = (0..64)
            .map(|i| spread(format!("k-{i}").as_bytes()).as_bytes()[0])
            .collect();
        assert!(firsts.len() > 32, "{} stripes of 64 keys", firsts.len());
    }

    #[actix_web::test]
    async fn the_floor_records_a_new_key_under_its_store_key_and_fingerprint() {
        let app = test::init_service(App::new().configure(floor_route)).await;
        let request = |key| echo_request("/floor/echo", key).to_request();
        assert_eq!(test::call_service(&app, request(None)).await.status(), 201);
        let key = "floor-test-key";
        let res = test::call_service(&app, request(Some(key))).await;
        assert_eq!(res.status(), 201);
        let sent = test::read_body(res).await;
        // Under the layer's store key and fingerprint for the same request (global scope).
        let client_key = idem_core::ClientKey::parse(key.as_bytes(), 255).unwrap();
        let scope = idem_core::ScopeValue::new("global", &b""[..]);
        let slot = StoreKey::new(&scope, None, &client_key);
        let body = br#"{"agent_id":"agent_1","phone_number":"+15555550123"}"#;
        let fingerprint = Fingerprint::new("POST", "/floor/echo", "", body);
        let now = floor_clock().now();
        let Some(idem_core::Record::Completed(record)) = alone().get(&slot, now).await.unwrap()
        else {
            panic!("a completed record")
        };
        assert_eq!(record.fingerprint, fingerprint);
        assert_eq!(record.response.body(), &sent[..]);
        assert!(record.expires_at > now.saturating_add(Duration::from_secs(86_000)));
        // A key it refuses is refused, and a body the extractor refuses releases the claim.
        let refused = test::call_service(&app, request(Some("two words"))).await;
        assert_eq!(refused.status(), 400);
        let unread = echo_request("/floor/echo", Some("floor-unread"))
            .set_payload("not json")
            .to_request();
        assert_eq!(test::call_service(&app, unread).await.status(), 400);
        let client_key = idem_core::ClientKey::parse(b"floor-unread", 255).unwrap();
        let slot = StoreKey::new(&scope, None, &client_key);
        assert_eq!(alone().get(&slot, now).await.unwrap(), None);
    }
}
