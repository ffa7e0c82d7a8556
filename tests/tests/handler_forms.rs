//! Handlers in every form the attribute accepts behave the same at run time: custom scope
//! functions, generic handlers, and associated functions that use `Self`.

use actix_web::{post, web, HttpMessage, HttpRequest, HttpResponse, Responder};
use idem_actix::idempotent;
use idem_tests::{assert_error, serve, Counter, RawRequest, Served};

/// The tenant, as an auth middleware would leave it: here from a header, through extensions.
#[derive(Clone)]
struct Claims {
    tenant: String,
}

fn tenant(req: &HttpRequest) -> Option<String> {
    if let Some(tenant) = req.headers().get("x-tenant").and_then(|v| v.to_str().ok()) {
        req.extensions_mut().insert(Claims {
            tenant: tenant.to_owned(),
        });
    }
    req.extensions().get::<Claims>().map(|c| c.tenant.clone())
}

#[post("/scoped")]
#[idempotent(scope = tenant)]
async fn scoped(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
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

fn app() -> Served {
    serve(|cfg| {
        cfg.service(scoped)
            .route("/generic", web::post().to(generic::<Fake>))
            .service(web::resource("/api").route(web::post().to(Api::create)));
    })
}

fn keyed(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path).header("Idempotency-Key", key)
}

#[actix_web::test]
async fn a_custom_scope_function_decides_whose_key_it_is() {
    let s = app();
    // No Authorization at all: the scope function is the only source of scope.
    let a1 = s
        .send(&keyed("/scoped", "k").header("X-Tenant", "acme"))
        .await;
    let a2 = s
        .send(&keyed("/scoped", "k").header("X-Tenant", "acme"))
        .await;
    let b = s
        .send(&keyed("/scoped", "k").header("X-Tenant", "globex"))
        .await;
    assert_eq!(a1.status, 201);
    assert!(a2.replayed());
    assert!(!b.replayed(), "another tenant's key never meets this one");
    let none = s
        .send(&keyed("/scoped", "k").header("Authorization", "Bearer t"))
        .await;
    assert_error(&none, 400, "idempotency_scope_missing");
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn generic_and_associated_handlers_are_idempotent() {
    let s = app();
    let auth = |r: RawRequest| r.header("Authorization", "Bearer t");
    let first = s.send(&auth(keyed("/generic", "g"))).await;
    assert_eq!(String::from_utf8_lossy(&first.body), "fake 1");
    assert!(s.send(&auth(keyed("/generic", "g"))).await.replayed());

    let first = s.send(&auth(keyed("/api", "g"))).await;
    assert_eq!(
        String::from_utf8_lossy(&first.body),
        "api 2",
        "per endpoint: a new key here"
    );
    assert!(s.send(&auth(keyed("/api", "g"))).await.replayed());
    assert_eq!(s.runs.get(), 2);
}
