//! `#[idempotent]` wherever a handler can be, with every kind of extractor and return type,
//! and the layer's answers when handlers fail or the store is down.

use std::future::{ready, Ready};

use actix_web::http::StatusCode;
use actix_web::{
    dev, post, route, web, FromRequest, HttpRequest, HttpResponse, Responder, ResponseError,
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use idem_actix::{idempotent, IdempotencyConfig, IdempotencyKey, ProblemJson};
use idem_core::testing::UnavailableStore;
use idem_tests::{assert_error, serve, Counter, RawRequest, RawResponse, Served, TestServer};
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

// --- extractors ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Page {
    page: u32,
}

#[derive(Deserialize)]
struct Signup {
    email: String,
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

#[post("/form")]
#[idempotent]
async fn form(runs: web::Data<Counter>, form: web::Form<Signup>) -> HttpResponse {
    HttpResponse::Created().body(format!("{} {}", runs.bump(), form.email))
}

#[post("/string")]
#[idempotent]
async fn string_body(
    runs: web::Data<Counter>,
    body: String,
    key: Option<IdempotencyKey>,
) -> HttpResponse {
    let key = key.map(|k| k.as_str().to_owned()).unwrap_or_default();
    HttpResponse::Created().body(format!("{} {body} key={key}", runs.bump()))
}

#[post("/stream")]
#[idempotent]
async fn streamed(runs: web::Data<Counter>, mut payload: web::Payload) -> HttpResponse {
    let mut len = 0;
    while let Some(chunk) = payload.next().await {
        len += chunk.map(|c| c.len()).unwrap_or(0);
    }
    HttpResponse::Created().body(format!("{} {len} bytes", runs.bump()))
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

#[post("/panics")]
#[idempotent]
async fn panics(runs: web::Data<Counter>, req: HttpRequest) -> HttpResponse {
    let n = runs.bump();
    if req.headers().contains_key("x-panic") {
        panic!("handler bug");
    }
    HttpResponse::Created().body(format!("run {n}"))
}

#[post("/headers")]
#[idempotent]
async fn with_headers(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("X-Custom", "kept"))
        .append_header(("Link", "</a>; rel=a"))
        .append_header(("Link", "</b>; rel=b"))
        .insert_header(("X-Request-ID", "from-the-handler"))
        .body(format!("run {}", runs.bump()))
}

#[post("/problem")]
#[idempotent(errors = "problem")]
async fn problem(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[post("/small")]
#[idempotent(max_body = 16)]
async fn small(runs: web::Data<Counter>, body: Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("run {} {}", runs.bump(), body.len()))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(above_route)
            .service(multi_method)
            .service(web::resource("/plain").route(web::post().to(plain)))
            .service(many_extractors)
            .service(form)
            .service(string_body)
            .service(streamed)
            .service(fallible)
            .service(panics)
            .service(with_headers)
            .service(problem)
            .service(small);
    })
}

fn keyed(method: &str, path: &str, key: &str) -> RawRequest {
    RawRequest::new(method, path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
}

async fn twice(s: &Served, request: &RawRequest) -> (RawResponse, RawResponse) {
    let first = s.send(request).await;
    let second = s.send(request).await;
    (first, second)
}

fn text(res: &RawResponse) -> String {
    String::from_utf8_lossy(&res.body).into_owned()
}

#[actix_web::test]
async fn works_above_or_below_route_attributes_and_on_plain_handlers() {
    let s = app();
    for (method, path) in [("POST", "/above"), ("PUT", "/multi"), ("POST", "/plain")] {
        let (first, retry) = twice(&s, &keyed(method, path, path)).await;
        assert!(first.status < 300, "{path}: {}", first.status);
        assert!(!first.replayed() && retry.replayed(), "{path}");
        assert_eq!(retry.body, first.body, "{path}");
    }
    assert_eq!(s.runs.get(), 3);
}

#[actix_web::test]
async fn the_original_extractors_see_the_request() {
    let s = app();
    let request = keyed("POST", "/items/7?page=2", "ext-1")
        .header("X-Tenant", "acme")
        .body("raw body");
    let (first, retry) = twice(&s, &request).await;
    assert_eq!(first.status, 201, "{}", text(&first));
    assert_eq!(
        first.json(),
        json!({"run": 1, "id": 7, "page": 2, "method": "POST", "tenant": "acme", "key": "ext-1", "body": "raw body"})
    );
    assert!(retry.replayed());

    // Path and query are part of the fingerprint.
    let other_query = keyed("POST", "/items/7?page=3", "ext-1")
        .header("X-Tenant", "acme")
        .body("raw body");
    assert_error(&s.send(&other_query).await, 409, "idempotency_conflict");

    // An extractor that fails answers as it would without the attribute, and is recorded.
    let no_tenant = keyed("POST", "/items/7?page=2", "ext-2").body("raw body");
    let (first, retry) = twice(&s, &no_tenant).await;
    assert_eq!(first.status, 401);
    assert!(retry.replayed());
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn form_string_and_streaming_bodies_are_rebuilt_for_the_handler() {
    let s = app();
    let form_req = keyed("POST", "/form", "f")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("email=a%40example.com");
    let (first, retry) = twice(&s, &form_req).await;
    assert_eq!(text(&first), "1 a@example.com");
    assert!(retry.replayed());

    let (first, _) = twice(&s, &keyed("POST", "/string", "s").body("hello")).await;
    assert_eq!(text(&first), "2 hello key=s");
    let unkeyed = RawRequest::post("/string").body("plain");
    assert_eq!(text(&s.send(&unkeyed).await), "3 plain key=");

    let big = vec![b'x'; 100_000];
    let (first, retry) = twice(&s, &keyed("POST", "/stream", "p").body(big)).await;
    assert_eq!(text(&first), "4 100000 bytes");
    assert!(retry.replayed());
}

#[actix_web::test]
async fn result_errors_are_recorded_unless_they_are_server_errors() {
    let s = app();
    let (first, retry) = twice(&s, &keyed("POST", "/result", "ok")).await;
    assert_eq!(first.json(), json!({"run": 1}));
    assert!(retry.replayed());

    let (first, retry) = twice(
        &s,
        &keyed("POST", "/result", "422").header("X-Outcome", "422"),
    )
    .await;
    assert_eq!(first.status, 422);
    assert_eq!(retry.status, 422);
    assert!(retry.replayed());
    assert_eq!(text(&retry), "refused with 422 Unprocessable Entity");

    let (first, retry) = twice(
        &s,
        &keyed("POST", "/result", "503").header("X-Outcome", "503"),
    )
    .await;
    assert_eq!((first.status, retry.status), (503, 503));
    assert!(!retry.replayed(), "a 5xx releases the key");
    assert_eq!(s.runs.get(), 4);
}

#[actix_web::test]
async fn a_panicking_handler_answers_500_and_releases_its_key() {
    let s = app();
    let crash = s
        .send(&keyed("POST", "/panics", "p").header("X-Panic", "1"))
        .await;
    assert_eq!(crash.status, 500);
    assert!(crash.header("x-request-id").is_some());
    // The worker is still up, and the key is free for a retry.
    let retry = s.send(&keyed("POST", "/panics", "p")).await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn replays_carry_the_stored_headers_and_this_requests_id() {
    let s = app();
    let request = keyed("POST", "/headers", "h");
    let first = s.send(&request).await;
    assert_eq!(first.header("x-request-id"), Some("from-the-handler"));
    let retry = s
        .send(&request.clone().header("X-Request-ID", "retry-7"))
        .await;
    assert!(retry.replayed());
    assert_eq!(retry.header("x-custom"), Some("kept"));
    assert_eq!(retry.headers["link"], vec!["</a>; rel=a", "</b>; rel=b"]);
    assert_eq!(retry.header("x-request-id"), Some("retry-7"));
    assert!(first.header("idempotent-replayed").is_none());
}

#[actix_web::test]
async fn errors_render_as_problem_json_when_the_endpoint_says_so() {
    let s = app();
    s.send(&keyed("POST", "/problem", "k").body("a")).await;
    let res = s.send(&keyed("POST", "/problem", "k").body("b")).await;
    assert_eq!(res.status, 409);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let body = res.json();
    assert_eq!(body["status"], 409);
    assert_eq!(body["code"], "idempotency_conflict");
    assert_eq!(body["type"], "urn:idem:error:idempotency_conflict");
    assert_eq!(body["request_id"], res.header("x-request-id").unwrap());
}

#[actix_web::test]
async fn chunked_bodies_are_read_whole_and_held_to_the_limit() {
    let s = app();
    // No Content-Length: the limit is enforced while the chunks arrive.
    let over = keyed("POST", "/small", "chunks")
        .body(vec![b'x'; 17])
        .chunked(4);
    assert_error(&s.send(&over).await, 413, "idempotency_body_too_large");
    let fits = keyed("POST", "/small", "chunks")
        .body(vec![b'x'; 16])
        .chunked(4);
    let (first, retry) = twice(&s, &fits).await;
    assert_eq!(
        text(&first),
        "run 1 16",
        "the refused request claimed nothing"
    );
    assert!(retry.replayed());

    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let long = keyed("POST", "/stream", "long")
        .body(big.clone())
        .chunked(1000);
    let (first, retry) = twice(&s, &long).await;
    assert_eq!(text(&first), "2 100000 bytes");
    assert!(retry.replayed());
    // The fingerprint covers every chunk: the same key with one byte changed is a conflict.
    let mut changed = big;
    changed[99_999] ^= 1;
    let other = keyed("POST", "/stream", "long").body(changed).chunked(1000);
    assert_error(&s.send(&other).await, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn bodies_over_the_limit_get_413_before_any_claim() {
    let s = app();
    let res = s
        .send(&keyed("POST", "/small", "big").body(vec![b'x'; 17]))
        .await;
    assert_error(&res, 413, "idempotency_body_too_large");
    let fits = s
        .send(&keyed("POST", "/small", "big").body(vec![b'x'; 16]))
        .await;
    assert_eq!(
        text(&fits),
        "run 1 16",
        "the refused request claimed nothing"
    );
}

// --- the app's renderer and the store -----------------------------------------------------

#[post("/default-format")]
#[idempotent]
async fn default_format(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[post("/fail-open")]
#[idempotent(fail_open)]
async fn fail_open(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

fn down_app(config: IdempotencyConfig) -> (TestServer, Counter) {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(config.clone())
            .app_data(data.clone())
            .service(default_format)
            .service(fail_open);
    });
    (server, runs)
}

#[actix_web::test]
async fn an_unreachable_store_fails_closed_with_503() {
    let (server, runs) = down_app(IdempotencyConfig::new(UnavailableStore));
    let res = keyed("POST", "/default-format", "k")
        .send(server.addr)
        .await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(runs.get(), 0, "no handler runs without a claim");
    // Requests without a key never touch the store.
    let plain = RawRequest::post("/default-format").send(server.addr).await;
    assert_eq!(plain.status, 201);
}

#[actix_web::test]
async fn fail_open_runs_the_handler_unprotected() {
    let (server, runs) = down_app(IdempotencyConfig::new(UnavailableStore));
    let res = keyed("POST", "/fail-open", "k").send(server.addr).await;
    assert_eq!(res.status, 201);
    assert_eq!(runs.get(), 1);
}

#[actix_web::test]
async fn the_apps_renderer_applies_where_the_endpoint_names_none() {
    let (server, _) =
        down_app(IdempotencyConfig::new(UnavailableStore).with_error_renderer(ProblemJson));
    let res = keyed("POST", "/default-format", "k")
        .send(server.addr)
        .await;
    assert_eq!(res.status, 503);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    assert_eq!(res.json()["code"], "idempotency_store_unavailable");

    let custom = IdempotencyConfig::new(UnavailableStore).with_error_renderer(
        |e: &idem_actix::IdempotencyError, id: &str| {
            HttpResponse::Ok().body(format!("{}|{id}", e.code()))
        },
    );
    let (server, _) = down_app(custom);
    let res = keyed("POST", "/default-format", "k")
        .header("X-Request-ID", "r1")
        .send(server.addr)
        .await;
    assert_eq!(res.status, 503, "the layer keeps the status");
    assert_eq!(text(&res), "idempotency_store_unavailable|r1");
}

#[post("/huge")]
#[idempotent(max_response = 1024)]
async fn huge_response(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("X-Custom", "kept"))
        .body(vec![b'x'; 4096])
}

#[actix_web::test]
async fn a_response_too_large_to_keep_is_sent_once_and_never_rerun() {
    let s = serve(|cfg| {
        cfg.service(huge_response);
    });
    let first = s.send(&keyed("POST", "/huge", "k")).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        first.body.len(),
        4096,
        "the first client gets the whole response"
    );
    let retry = s.send(&keyed("POST", "/huge", "k")).await;
    assert_error(&retry, 409, "idempotency_response_too_large");
    let message = retry.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("201") && message.contains("will not run again"),
        "{message}"
    );
    assert_eq!(s.runs.get(), 1, "never silently re-executed");
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
