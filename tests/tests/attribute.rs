//! `#[idempotent]` wherever a handler can be (above or below a route attribute, on a plain, a
//! generic or an associated function), with every kind of extractor and return type, and its
//! settings found however the application registers them.

use std::future::{ready, Ready};

use actix_web::http::StatusCode;
use actix_web::{
    dev, post, route, web, FromRequest, HttpRequest, HttpResponse, Responder, ResponseError,
};
use bytes::Bytes;
use idem_actix::{idempotent, IdempotencyConfig, IdempotencyKey, MokaStore, Policy};
use idem_core::testing::UnavailableStore;
use idem_tests::{assert_error, assert_problem, serve, Counter, RawRequest, Served, TestServer};
use serde::Deserialize;
use serde_json::json;

// --- where the attribute goes --------------------------------------------------------------

#[idempotent]
#[post("/above")]
async fn above_route(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("above {}", runs.bump()))
}

#[route("/multi", method = "POST", method = "PUT")]
#[idempotent]
async fn multi_method(runs: web::Data<Counter>) -> impl Responder {
    format!("multi {}", runs.bump())
}

#[idempotent]
async fn plain(runs: web::Data<Counter>) -> String {
    format!("plain {}", runs.bump())
}

trait Carrier: 'static {
    fn name() -> &'static str;
}

struct Fake;

impl Carrier for Fake {
    fn name() -> &'static str {
        "fake"
    }
}

#[idempotent]
async fn generic<C: Carrier>(runs: web::Data<Counter>) -> impl Responder {
    format!("{} {}", C::name(), runs.bump())
}

struct Api;

impl Api {
    fn answer(n: usize) -> HttpResponse {
        HttpResponse::Created().body(format!("api {n}"))
    }

    #[idempotent(per_endpoint)]
    async fn create(runs: web::Data<Counter>) -> HttpResponse {
        Self::answer(runs.bump())
    }
}

// --- extractors ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Page {
    page: u32,
}

/// A custom extractor: the tenant from a header.
struct Tenant(String);

impl FromRequest for Tenant {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut dev::Payload) -> Self::Future {
        ready(
            req.headers()
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(|t| Tenant(t.to_owned()))
                .ok_or_else(|| actix_web::error::ErrorUnauthorized("x-tenant missing")),
        )
    }
}

#[post("/items/{id}")]
#[idempotent]
async fn many_extractors(
    runs: web::Data<Counter>,
    path: web::Path<(u32,)>,
    query: web::Query<Page>,
    req: HttpRequest,
    tenant: Tenant,
    key: IdempotencyKey,
    body: Bytes,
) -> HttpResponse {
    HttpResponse::Created().json(json!({
        "run": runs.bump(),
        "id": path.into_inner().0,
        "page": query.page,
        "method": req.method().as_str(),
        "tenant": tenant.0,
        "key": key.as_str(),
        "body": String::from_utf8_lossy(&body),
    }))
}

// --- return types and failures ------------------------------------------------------------

#[derive(Debug)]
struct Refused(StatusCode);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused with {}", self.0)
    }
}

impl ResponseError for Refused {
    fn status_code(&self) -> StatusCode {
        self.0
    }
}

#[post("/result")]
#[idempotent]
async fn fallible(
    runs: web::Data<Counter>,
    req: HttpRequest,
) -> Result<web::Json<serde_json::Value>, Refused> {
    let n = runs.bump();
    match req.headers().get("x-outcome").map(|v| v.as_bytes()) {
        Some(b"422") => Err(Refused(StatusCode::UNPROCESSABLE_ENTITY)),
        Some(b"503") => Err(Refused(StatusCode::SERVICE_UNAVAILABLE)),
        _ => Ok(web::Json(json!({ "run": n }))),
    }
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(above_route)
            .service(multi_method)
            .service(web::resource("/plain").route(web::post().to(plain)))
            .service(many_extractors)
            .service(fallible)
            .route("/generic", web::post().to(generic::<Fake>))
            .service(web::resource("/api").route(web::post().to(Api::create)));
    })
}

fn keyed(method: &str, path: &str, key: &str) -> RawRequest {
    RawRequest::new(method, path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
}

#[actix_web::test]
async fn works_above_or_below_route_attributes_and_on_plain_handlers() {
    let s = app();
    for (method, path) in [("POST", "/above"), ("PUT", "/multi"), ("POST", "/plain")] {
        let (first, retry) = s.twice(&keyed(method, path, path)).await;
        assert!(first.status < 300, "{path}: {}", first.status);
        assert!(!first.replayed() && retry.replayed(), "{path}");
        assert_eq!(retry.body, first.body, "{path}");
    }
    assert_eq!(s.runs.get(), 3);
}

#[actix_web::test]
async fn generic_and_associated_handlers_are_idempotent() {
    let s = app();
    let first = s.send(&keyed("POST", "/generic", "g")).await;
    assert_eq!(first.text(), "fake 1");
    assert!(s.send(&keyed("POST", "/generic", "g")).await.replayed());

    let first = s.send(&keyed("POST", "/api", "g")).await;
    assert_eq!(first.text(), "api 2", "per endpoint: a new key here");
    assert!(s.send(&keyed("POST", "/api", "g")).await.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn the_original_extractors_see_the_request() {
    let s = app();
    let request = keyed("POST", "/items/7?page=2", "ext-1")
        .header("X-Tenant", "acme")
        .body("raw body");
    let (first, retry) = s.twice(&request).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(
        first.json(),
        json!({"run": 1, "id": 7, "page": 2, "method": "POST", "tenant": "acme", "key": "ext-1", "body": "raw body"})
    );
    assert!(retry.replayed());

    // Path and query are part of the fingerprint: the concrete path, not the route's
    // pattern, which both paths match.
    let other_query = keyed("POST", "/items/7?page=3", "ext-1")
        .header("X-Tenant", "acme")
        .body("raw body");
    assert_error(&s.send(&other_query).await, 409, "idempotency_conflict");
    let other_path = keyed("POST", "/items/8?page=2", "ext-1")
        .header("X-Tenant", "acme")
        .body("raw body");
    assert_error(&s.send(&other_path).await, 409, "idempotency_conflict");

    assert_eq!(s.runs.get(), 1);
}

/// An extractor that refuses a keyed request answers as it would without the attribute, and
/// is not recorded: the handler did not run, so its key is released, and the retry that
/// corrects the request runs, where the refusal (here a tenant header forgotten once) was
/// replayed to every retry for the key's TTL.
#[actix_web::test]
async fn an_extractor_s_refusal_is_not_recorded_so_the_corrected_retry_runs() {
    let s = app();
    let no_tenant = keyed("POST", "/items/7?page=2", "ext-2").body("raw body");
    let (first, retry) = s.twice(&no_tenant).await;
    assert_eq!((first.status, retry.status), (401, 401));
    assert!(
        !retry.replayed(),
        "a refusal before the handler is not replayed"
    );
    assert!(first.header("x-request-id").is_some());
    assert_eq!(s.runs.get(), 0);
    let corrected = s.send(&no_tenant.clone().header("X-Tenant", "acme")).await;
    assert_eq!(corrected.status, 201, "{}", corrected.text());
    assert!(!corrected.replayed());
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn result_errors_are_recorded_unless_they_are_server_errors() {
    let s = app();
    let (first, retry) = s.twice(&keyed("POST", "/result", "ok")).await;
    assert_eq!(first.json(), json!({"run": 1}));
    assert!(retry.replayed());

    let (first, retry) = s
        .twice(&keyed("POST", "/result", "422").header("X-Outcome", "422"))
        .await;
    assert_eq!(first.status, 422);
    assert_eq!(retry.status, 422);
    assert!(retry.replayed());
    assert_eq!(retry.text(), "refused with 422 Unprocessable Entity");

    let (first, retry) = s
        .twice(&keyed("POST", "/result", "503").header("X-Outcome", "503"))
        .await;
    assert_eq!((first.status, retry.status), (503, 503));
    assert!(!retry.replayed(), "a 5xx releases the key");
    assert_eq!(s.runs.get(), 4);
}

// --- where the settings are found ---------------------------------------------------------

#[post("/default-format")]
#[idempotent]
async fn default_format(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[actix_web::test]
async fn settings_registered_as_web_data_are_found_too() {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = web::Data::new(IdempotencyConfig::new(UnavailableStore));
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .service(default_format);
    });
    let res = keyed("POST", "/default-format", "k")
        .send(server.addr)
        .await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert_eq!(runs.get(), 0);
}

/// As `default_format`, an endpoint of its own: its check of the configs it sees runs on its
/// first request, which another test's request would take.
#[post("/two-forms")]
#[idempotent]
async fn two_forms(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

/// Where one config is registered as `web::Data<IdempotencyConfig>` and another as an
/// `IdempotencyConfig`, the second is read, wherever each is registered: here a scope's own
/// (which reads keys from another header) was never read under the app's, so that its retries
/// ran again, unsaid. An error says so, once per endpoint.
#[actix_web::test]
async fn two_configs_registered_in_two_forms_are_reported_once() {
    let warnings = idem_tests::Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let scoped = web::Data::new(
        IdempotencyConfig::new(MokaStore::new())
            .with_defaults(Policy::DEFAULT.header("X-Idempotency-Key"))
            .unwrap(),
    );
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(IdempotencyConfig::new(MokaStore::new()))
            .app_data(data.clone())
            .service(
                web::scope("/scoped")
                    .app_data(scoped.clone())
                    .service(two_forms),
            );
    });
    for _ in 0..3 {
        RawRequest::post("/scoped/two-forms")
            .header("Authorization", "Bearer t")
            .header("X-Idempotency-Key", "k")
            .send(server.addr)
            .await;
    }
    let text = "one as web::Data<IdempotencyConfig> and one as IdempotencyConfig";
    assert_eq!(warnings.containing_from(text, server.threads()), 1);
}

// --- a handler's own refusal of a request without a key ------------------------------------

#[post("/own-header")]
#[idempotent(header = "X-Idempotency-Key", errors = "problem")]
async fn own_header(key: IdempotencyKey) -> HttpResponse {
    HttpResponse::Created().body(key.as_str().to_owned())
}

async fn wrapped_own_header(key: IdempotencyKey) -> HttpResponse {
    HttpResponse::Created().body(key.as_str().to_owned())
}

/// A handler that takes `IdempotencyKey` refuses a request without one as its endpoint would:
/// naming the endpoint's own key header, in the endpoint's error format.
#[actix_web::test]
async fn a_request_without_a_key_is_told_the_endpoints_own_header() {
    let s = serve(|cfg| {
        cfg.service(own_header).service(
            web::scope("/wrapped-own-header")
                .wrap(
                    idem_actix::Idempotency::new()
                        .with_overrides(|o| o.header("X-Idempotency-Key")),
                )
                .route("", web::post().to(wrapped_own_header)),
        );
    });
    let res = s
        .send(&RawRequest::post("/own-header").header("Authorization", "Bearer t"))
        .await;
    let body = assert_problem(&res, 400, "idempotency_key_missing");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("X-Idempotency-Key"), "{body}");

    let res = s
        .send(&RawRequest::post("/wrapped-own-header").header("Authorization", "Bearer t"))
        .await;
    let message = assert_error(&res, 400, "idempotency_key_missing");
    assert!(message.contains("X-Idempotency-Key"), "{message}");

    // With the key, both run.
    let keyed = |path| {
        RawRequest::post(path)
            .header("Authorization", "Bearer t")
            .header("X-Idempotency-Key", path)
    };
    assert_eq!(s.send(&keyed("/own-header")).await.status, 201);
    assert_eq!(s.send(&keyed("/wrapped-own-header")).await.status, 201);
}

// --- endpoint names -------------------------------------------------------------------------

/// `PUT /calls/{id}` as yesterday's deploy served it, keys per method and pattern.
#[route("/calls/{id}", method = "PUT")]
#[idempotent(per_endpoint)]
async fn update_by_pattern(runs: web::Data<Counter>) -> String {
    counted(runs).await
}

/// The same endpoint after a deploy that renamed its parameter and gave it a pattern.
#[route("/calls/{call_id:\\d+}", method = "PUT")]
#[idempotent(per_endpoint)]
async fn update_renamed(runs: web::Data<Counter>) -> String {
    counted(runs).await
}

/// The same, named as the route was before the deploy.
#[route("/calls/{call_id:\\d+}", method = "PUT")]
#[idempotent(per_endpoint = "PUT /calls/{id}")]
async fn update_renamed_keeping_keys(runs: web::Data<Counter>) -> String {
    counted(runs).await
}

/// A named endpoint, before and after the same deploy.
#[route("/calls/{id}", method = "PUT")]
#[idempotent(per_endpoint = "calls.update")]
async fn update_named(runs: web::Data<Counter>) -> String {
    counted(runs).await
}

#[route("/calls/{call_id:\\d+}", method = "PUT")]
#[idempotent(per_endpoint = "calls.update")]
async fn update_named_renamed(runs: web::Data<Counter>) -> String {
    counted(runs).await
}

/// One store, served by one deploy and then by the next (`before`, then `after`): how often
/// the handlers ran once a request was sent to the first and retried on the second.
async fn runs_across_a_deploy(
    before: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    after: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> (usize, bool) {
    let idem = IdempotencyConfig::new(MokaStore::new());
    let runs = web::Data::new(Counter::default());
    let request = keyed("PUT", "/calls/7", "k");
    let first = deployed(&idem, &runs, before);
    let answer = request.send(first.addr).await;
    assert_eq!((answer.status, answer.text()), (200, "run 1".to_owned()));
    drop(first);
    let second = deployed(&idem, &runs, after);
    let retry = request.send(second.addr).await;
    assert_eq!(retry.status, 200);
    (runs.get(), retry.replayed())
}

/// A server of the services `register` adds, on `idem`'s store, counting runs in `runs`.
fn deployed(
    idem: &IdempotencyConfig,
    runs: &web::Data<Counter>,
    register: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> TestServer {
    let (idem, runs) = (idem.clone(), runs.clone());
    TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(runs.clone());
        register(cfg);
    })
}

/// Keys per method and route pattern change with the pattern: a retry sent across a deploy
/// that renamed the route's parameter runs again. A named endpoint keeps its keys under its
/// name, so the retry replays; and an endpoint named as its route was keeps the keys it had
/// before it was named.
#[actix_web::test]
async fn a_named_endpoint_keeps_its_keys_across_a_deploy_that_changes_its_route() {
    type Deploy = fn(&mut web::ServiceConfig);
    // Before, after, and the runs and whether the retry was replayed.
    let deploys: [(&str, Deploy, Deploy, (usize, bool)); 4] = [
        (
            "unnamed: the retry runs again",
            |cfg| {
                cfg.service(update_by_pattern);
            },
            |cfg| {
                cfg.service(update_renamed);
            },
            (2, false),
        ),
        (
            "named",
            |cfg| {
                cfg.service(update_named);
            },
            |cfg| {
                cfg.service(update_named_renamed);
            },
            (1, true),
        ),
        (
            "named as its route was",
            |cfg| {
                cfg.service(update_by_pattern);
            },
            |cfg| {
                cfg.service(update_renamed_keeping_keys);
            },
            (1, true),
        ),
        // The middleware keys by path: an endpoint moved under it, the middleware named as
        // the endpoint's pattern was, keeps its keys too.
        (
            "moved under a middleware named as its route was",
            |cfg| {
                cfg.service(update_by_pattern);
            },
            |cfg| {
                let named = |p: idem_actix::Overrides| p.endpoint_name("PUT /calls/{id}");
                cfg.service(
                    web::scope("")
                        .wrap(idem_actix::Idempotency::new().with_overrides(named))
                        .route("/calls/{id}", web::put().to(counted)),
                );
            },
            (1, true),
        ),
    ];
    for (deploy, before, after, expected) in deploys {
        assert_eq!(
            runs_across_a_deploy(before, after).await,
            expected,
            "{deploy}"
        );
    }
}

/// Counts a run, and answers with its number.
async fn counted(runs: web::Data<Counter>) -> String {
    format!("run {}", runs.bump())
}

#[post("/v1/calls")]
#[idempotent(per_endpoint = "calls.create")]
async fn create_v1(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("v1 run {}", runs.bump()))
}

#[post("/v2/calls")]
#[idempotent(per_endpoint = "calls.create")]
async fn create_v2(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("v2 run {}", runs.bump()))
}

/// Two endpoints of one name share their keys: the same key sent to the other is the same
/// key with another request (its path differs), a mismatch, where unnamed endpoints per
/// endpoint would each run it.
#[actix_web::test]
async fn endpoints_of_one_name_share_their_keys() {
    let s = serve(|cfg| {
        cfg.service(create_v1).service(create_v2);
    });
    let first = s.send(&keyed("POST", "/v1/calls", "k")).await;
    assert_eq!((first.status, first.text()), (201, "v1 run 1".to_owned()));
    let other = s.send(&keyed("POST", "/v2/calls", "k")).await;
    assert_error(&other, 409, "idempotency_conflict");
    assert!(s.send(&keyed("POST", "/v1/calls", "k")).await.replayed());
    let fresh = s.send(&keyed("POST", "/v2/calls", "k2")).await;
    assert_eq!((fresh.status, fresh.text()), (201, "v2 run 2".to_owned()));
    assert_eq!(s.runs.get(), 2);
    // Where a mismatch replays the first answer, the other endpoint of the name answers with
    // it (the threat model says so).
    let s = serve(|cfg| {
        cfg.service(create_v1_replaying)
            .service(create_v2_replaying);
    });
    let first = s.send(&keyed("POST", "/v1/calls", "k")).await;
    let other = s.send(&keyed("POST", "/v2/calls", "k")).await;
    assert!(other.replayed());
    assert_eq!((other.text(), s.runs.get()), (first.text(), 1));
}

#[post("/v1/calls")]
#[idempotent(per_endpoint = "calls.create", mismatch = "replay")]
async fn create_v1_replaying(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("v1 run {}", runs.bump()))
}

#[post("/v2/calls")]
#[idempotent(per_endpoint = "calls.create", mismatch = "replay")]
async fn create_v2_replaying(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("v2 run {}", runs.bump()))
}

/// Defaults that answer mismatches with the first response, and list fingerprint headers
/// they would never read, are refused when the application is configured, as an endpoint's
/// own are: they would change no answer.
#[test]
fn defaults_that_replay_mismatches_and_list_fingerprint_headers_are_refused() {
    let defaults = Policy::DEFAULT
        .on_mismatch(idem_actix::OnMismatch::Replay)
        .fingerprint_headers(&["X-Account"]);
    let refused = IdempotencyConfig::new(MokaStore::new()).with_defaults(defaults);
    let unread = idem_actix::PolicyError::UnreadUnderReplay("fingerprint_headers");
    assert_eq!(refused.err(), Some(unread));
}

/// Keys shared between callers are written on the endpoint that shares them: defaults that
/// scope keys globally would share them on every endpoint that names no scope of its own,
/// unseen where the endpoint is written, and are refused when the application is configured,
/// where tenants of such an endpoint were replayed each other's responses. The endpoint's own
/// `scope = "global"` stays.
#[test]
fn a_global_scope_in_the_defaults_is_refused() {
    let defaults = Policy::DEFAULT.scope(idem_actix::Scope::Global);
    let refused = IdempotencyConfig::new(MokaStore::new()).with_defaults(defaults);
    assert_eq!(
        refused.err(),
        Some(idem_actix::PolicyError::GlobalScopeInDefaults)
    );
}

/// A name in the application's defaults would name every endpoint alike: refused when the
/// application is configured, whether its keys are per endpoint or not, with that reason.
#[test]
fn an_endpoint_name_in_the_defaults_is_refused() {
    for per_endpoint in [true, false] {
        let defaults = Policy::DEFAULT
            .per_endpoint(per_endpoint)
            .endpoint_name("calls.create");
        let refused = IdempotencyConfig::new(MokaStore::new()).with_defaults(defaults);
        let named = idem_actix::PolicyError::EndpointNameInDefaults("calls.create");
        assert_eq!(refused.err(), Some(named));
    }
}
