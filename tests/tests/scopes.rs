//! No built-in scope lets a caller without the credential reach another caller's record: Basic
//! auth is scoped by the user and a digest of the password, a header scope by the header's name
//! as well as its value, and a scope function by its identity as well as what it returns. The
//! principal scope is the caller an authentication middleware verified.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{error, post, web, HttpMessage as _, HttpRequest, HttpResponse};
use actix_web_httpauth::extractors::bearer::BearerAuth;
use actix_web_httpauth::middleware::HttpAuthentication;
use idem_actix::{idempotent, Idempotency, Policy, Principal, Scope};
use idem_tests::{assert_error, buggy_tenant, serve, serve_with_defaults, Counter, RawRequest};
use serde_json::json;

/// base64("app_1:key_1"), base64("app_1:WRONG"), base64("app_1:key_2").
const APP1_KEY1: &str = "YXBwXzE6a2V5XzE=";
const APP1_WRONG: &str = "YXBwXzE6V1JPTkc=";
const APP1_KEY2: &str = "YXBwXzE6a2V5XzI=";

/// Checks the app key itself, as a handler's extractor would: after the layer has answered
/// what it could. `app_1` accepts `key_1`, and `key_2` once it is rotated in.
fn app_key_is_valid(req: &HttpRequest) -> bool {
    let accepted = [format!("Basic {APP1_KEY1}"), format!("Basic {APP1_KEY2}")];
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| accepted.iter().any(|a| a == v))
}

#[post("/voice/v1/call")]
#[idempotent(scope = "basic_auth_user")]
async fn voice_call(req: HttpRequest, runs: web::Data<Counter>) -> HttpResponse {
    if !app_key_is_valid(&req) {
        return HttpResponse::Unauthorized().json(json!({ "error": "invalid app key" }));
    }
    let n = runs.bump();
    HttpResponse::Ok().json(json!({ "voice_id": format!("v{n}") }))
}

fn basic_call(basic: &str, key: &str) -> RawRequest {
    RawRequest::post("/voice/v1/call")
        .header("Authorization", &format!("Basic {basic}"))
        .header("Idempotency-Key", key)
        .json(&json!({ "to": ["+15550000001"] }))
}

#[actix_web::test]
async fn a_wrong_basic_password_never_gets_the_apps_replay() {
    let s = serve(|cfg| {
        cfg.service(voice_call);
    });
    let first = s.send(&basic_call(APP1_KEY1, "k")).await;
    assert_eq!(first.status, 200);
    let forged = s.send(&basic_call(APP1_WRONG, "k")).await;
    assert!(!forged.replayed(), "the app's response reached a wrong key");
    assert_eq!(
        forged.status, 401,
        "the handler, not the record, answers a wrong key"
    );
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn a_wrong_basic_password_first_does_not_poison_the_apps_key() {
    let s = serve(|cfg| {
        cfg.service(voice_call);
    });
    let forged = s.send(&basic_call(APP1_WRONG, "k")).await;
    assert_eq!(forged.status, 401);
    let real = s.send(&basic_call(APP1_KEY1, "k")).await;
    assert!(!real.replayed(), "the forger's 401 was replayed to the app");
    assert_eq!(real.status, 200);
    assert_eq!(s.runs.get(), 1);
    // And the app's own retry is still a replay of its own answer.
    let retry = s.send(&basic_call(APP1_KEY1, "k")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, real.body);
}

#[actix_web::test]
async fn a_rotated_basic_password_starts_a_new_scope() {
    let s = serve(|cfg| {
        cfg.service(voice_call);
    });
    s.send(&basic_call(APP1_KEY1, "k")).await;
    let rotated = s.send(&basic_call(APP1_KEY2, "k")).await;
    assert_eq!(rotated.status, 200);
    assert!(!rotated.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[post("/by-tenant")]
#[idempotent(scope = "header:X-Tenant", mismatch = "replay")]
async fn by_tenant(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("tenant's answer")
}

#[post("/by-user")]
#[idempotent(scope = "header:X-User", mismatch = "replay")]
async fn by_user(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("user's answer")
}

#[post("/by-tenant-lowercase")]
#[idempotent(scope = "header:x-tenant", mismatch = "replay")]
async fn by_tenant_lowercase(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("tenant's other answer")
}

fn keyed(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path).header("Idempotency-Key", key)
}

#[actix_web::test]
async fn header_scopes_of_different_names_never_share_keys() {
    let s = serve(|cfg| {
        cfg.service(by_tenant).service(by_user);
    });
    let tenant = s
        .send(&keyed("/by-tenant", "k").header("X-Tenant", "acme"))
        .await;
    assert_eq!(tenant.body, b"tenant's answer");
    // The same value in another header is another scope: nothing of the tenant's comes back.
    let user = s
        .send(&keyed("/by-user", "k").header("X-User", "acme"))
        .await;
    assert!(!user.replayed(), "X-User: acme got X-Tenant: acme's record");
    assert_eq!(user.body, b"user's answer");
    assert_eq!(s.runs.get(), 2);
}

/// A scope header sent twice (a proxy that appends its own line to the client's) is refused,
/// not read from its first line, and nothing runs: which line to trust cannot be told.
#[actix_web::test]
async fn a_scope_header_sent_twice_is_refused_and_runs_nothing() {
    let s = serve(|cfg| {
        cfg.service(by_tenant).service(scoped_by_api_key);
    });
    let twice = keyed("/by-tenant", "k")
        .header("X-Tenant", "acme")
        .header("X-Tenant", "evil-co");
    let message = assert_error(&s.send(&twice).await, 400, "idempotency_scope_missing");
    assert!(message.contains("more than once"), "{message}");
    let two_keys = keyed("/by-api-key", "k")
        .header("Authorization", "Bearer a")
        .header("Authorization", "Bearer b");
    assert_error(&s.send(&two_keys).await, 400, "idempotency_scope_missing");
    assert_eq!(s.runs.get(), 0);
}

#[post("/by-api-key")]
#[idempotent]
async fn scoped_by_api_key(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().finish()
}

#[post("/by-own-key")]
#[idempotent(scope = "header:Idempotency-Key")]
async fn by_own_key(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("one caller's answer")
}

/// A scope read from the key's own header scopes nothing: every caller who sends the key
/// sends the scope too. The attribute refuses it when it names the key's header, but this
/// one's comes from the app, known only at run time, where the contradiction was logged and
/// the endpoint served (a caller's replay went to anyone who sent its key). It answers 500
/// `idempotency_misconfigured`, and nothing runs; so does a middleware set up alike.
#[actix_web::test]
async fn a_scope_read_from_the_key_s_own_header_is_never_served() {
    let s = serve(|cfg| {
        cfg.service(by_own_key).service(
            web::scope("/wrapped")
                .wrap(
                    Idempotency::new()
                        .with_overrides(|o| o.scope(Scope::Header("idempotency-key"))),
                )
                .route("", web::post().to(by_tenant_plain)),
        );
    });
    for path in ["/by-own-key", "/wrapped"] {
        let first = s
            .send(&keyed(path, "k").header("Authorization", "Bearer a"))
            .await;
        let message = assert_error(&first, 500, "idempotency_misconfigured");
        assert!(
            !message.contains("Idempotency-Key"),
            "the client is not told the server's settings: {message}"
        );
    }
    assert_eq!(s.runs.get(), 0, "nothing ran");
    // A request without a key is not the layer's to refuse.
    let keyless = s.send(&RawRequest::post("/by-own-key")).await;
    assert_eq!(keyless.status, 201);
}

#[post("/key-in-tenant")]
#[idempotent(header = "X-Tenant")]
async fn key_in_tenant(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("a tenant's answer")
}

/// A key read from the header the application's scope reads (here `X-Tenant`, which the
/// attribute cannot see) is the server's misconfiguration, whatever the header holds: every
/// request is answered 500 `idempotency_misconfigured`, a value that is no valid key (`Acme
/// Corp`, with its space) included, where that one was answered 400
/// `idempotency_key_invalid`, blaming the client for the server's settings.
#[actix_web::test]
async fn a_key_read_from_the_scope_s_header_is_misconfigured_whatever_the_header_holds() {
    let defaults = Policy::DEFAULT.scope(Scope::Header("X-Tenant"));
    let s = serve_with_defaults(defaults, |cfg| {
        cfg.service(key_in_tenant);
    });
    for tenant in ["Acme Corp", "acme"] {
        let res = s
            .send(&RawRequest::post("/key-in-tenant").header("X-Tenant", tenant))
            .await;
        assert_error(&res, 500, "idempotency_misconfigured");
    }
    assert_eq!(s.runs.get(), 0, "nothing ran");
}

async fn by_tenant_plain(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("plain")
}

#[actix_web::test]
async fn a_header_scope_is_the_same_whatever_the_case_of_its_name() {
    let s = serve(|cfg| {
        cfg.service(by_tenant).service(by_tenant_lowercase);
    });
    s.send(&keyed("/by-tenant", "k").header("X-Tenant", "acme"))
        .await;
    let same = s
        .send(&keyed("/by-tenant-lowercase", "k").header("x-tenant", "acme"))
        .await;
    assert!(same.replayed(), "header names are case-insensitive");
    assert_eq!(same.body, b"tenant's answer");
    assert_eq!(s.runs.get(), 1);
}

/// The tenant, as an auth middleware would leave it: here from a header, through extensions.
#[derive(Clone)]
struct Claims {
    tenant: String,
}

fn claims_tenant(req: &HttpRequest) -> Option<String> {
    if let Some(tenant) = req.headers().get("x-tenant").and_then(|v| v.to_str().ok()) {
        req.extensions_mut().insert(Claims {
            tenant: tenant.to_owned(),
        });
    }
    req.extensions().get::<Claims>().map(|c| c.tenant.clone())
}

#[post("/scoped")]
#[idempotent(scope = claims_tenant)]
async fn scoped(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

/// What a scope by `X-Tenant` ([`tenant`]) does at `path`: one tenant's retry replays, another
/// tenant's key never meets it, and a request without a tenant is refused, never shared.
async fn tenant_suite(s: &idem_tests::Served, path: &str) {
    // No Authorization at all: the scope function is the only source of scope.
    let call = |tenant: &str| keyed(path, "k").header("X-Tenant", tenant);
    let a1 = s.send(&call("acme")).await;
    let a2 = s.send(&call("acme")).await;
    let b = s.send(&call("globex")).await;
    assert_eq!(a1.status, 201);
    assert!(a2.replayed());
    assert!(!b.replayed(), "another tenant's key never meets this one");
    let none = s
        .send(&keyed(path, "k").header("Authorization", "Bearer t"))
        .await;
    assert_error(&none, 400, "idempotency_scope_missing");
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn a_custom_scope_function_decides_whose_key_it_is() {
    let s = serve(|cfg| {
        cfg.service(scoped);
    });
    tenant_suite(&s, "/scoped").await;
}

fn tenant(req: &HttpRequest) -> Option<String> {
    Some(req.headers().get("x-tenant")?.to_str().ok()?.to_owned())
}

fn user(req: &HttpRequest) -> Option<String> {
    Some(req.headers().get("x-user")?.to_str().ok()?.to_owned())
}

mod elsewhere {
    /// Another function of the same name: another scope.
    pub fn tenant(req: &actix_web::HttpRequest) -> Option<String> {
        Some(req.headers().get("x-org")?.to_str().ok()?.to_owned())
    }
}

#[post("/fn-tenant")]
#[idempotent(scope = tenant, mismatch = "replay")]
async fn fn_tenant(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("tenant's answer")
}

#[post("/fn-tenant-by-path")]
#[idempotent(scope = self::tenant, mismatch = "replay")]
async fn fn_tenant_by_path(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("tenant's answer, by path")
}

#[post("/fn-user")]
#[idempotent(scope = user, mismatch = "replay")]
async fn fn_user(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("user's answer")
}

#[post("/fn-org")]
#[idempotent(scope = elsewhere::tenant, mismatch = "replay")]
async fn fn_org(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("org's answer")
}

#[actix_web::test]
async fn scope_functions_of_different_identity_never_share_keys() {
    let s = serve(|cfg| {
        cfg.service(fn_tenant).service(fn_user).service(fn_org);
    });
    let tenant = s
        .send(&keyed("/fn-tenant", "k").header("X-Tenant", "acme"))
        .await;
    assert_eq!(tenant.body, b"tenant's answer");
    let user = s
        .send(&keyed("/fn-user", "k").header("X-User", "acme"))
        .await;
    assert!(
        !user.replayed(),
        "user() = acme got tenant() = acme's record"
    );
    assert_eq!(user.body, b"user's answer");
    let org = s.send(&keyed("/fn-org", "k").header("X-Org", "acme")).await;
    assert!(
        !org.replayed(),
        "a function of the same name in another module shared keys"
    );
    assert_eq!(org.body, b"org's answer");
    assert_eq!(s.runs.get(), 3);
}

#[actix_web::test]
async fn one_scope_function_is_one_scope_however_its_path_is_written() {
    let s = serve(|cfg| {
        cfg.service(fn_tenant).service(fn_tenant_by_path);
    });
    s.send(&keyed("/fn-tenant", "k").header("X-Tenant", "acme"))
        .await;
    let same = s
        .send(&keyed("/fn-tenant-by-path", "k").header("X-Tenant", "acme"))
        .await;
    assert!(same.replayed(), "`tenant` and `self::tenant` are one scope");
    assert_eq!(same.body, b"tenant's answer");
    assert_eq!(s.runs.get(), 1);
}

/// Scope functions held in statics of one function-pointer type: their type names are equal,
/// so the written path is what tells them apart.
static TENANT_POINTER: fn(&HttpRequest) -> Option<String> = tenant;
static USER_POINTER: fn(&HttpRequest) -> Option<String> = user;

#[post("/pointer-tenant")]
#[idempotent(scope = TENANT_POINTER, mismatch = "replay")]
async fn pointer_tenant(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("tenant's answer")
}

#[post("/pointer-user")]
#[idempotent(scope = USER_POINTER, mismatch = "replay")]
async fn pointer_user(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("user's answer")
}

#[actix_web::test]
async fn scope_functions_behind_function_pointers_never_share_keys() {
    let s = serve(|cfg| {
        cfg.service(pointer_tenant).service(pointer_user);
    });
    s.send(&keyed("/pointer-tenant", "k").header("X-Tenant", "acme"))
        .await;
    let user = s
        .send(&keyed("/pointer-user", "k").header("X-User", "acme"))
        .await;
    assert!(!user.replayed(), "USER_POINTER got TENANT_POINTER's record");
    assert_eq!(user.body, b"user's answer");
    assert_eq!(s.runs.get(), 2);
}

/// The users behind the bearer tokens: Ada has two (a rotated one, another device).
fn user_of(token: &str) -> Option<&'static str> {
    match token {
        "ada-laptop" | "ada-phone" => Some("user:ada"),
        "bob" => Some("user:bob"),
        _ => None,
    }
}

/// An authentication middleware written with `from_fn`: it verifies the bearer token and
/// hands the user over as the principal.
async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(user) = token.and_then(user_of) else {
        return Err(error::ErrorUnauthorized("sign in"));
    };
    req.extensions_mut().insert(Principal::new(user));
    next.call(req).await
}

/// The same check as an actix-web-httpauth validator.
async fn validate(
    req: ServiceRequest,
    credentials: BearerAuth,
) -> Result<ServiceRequest, (actix_web::Error, ServiceRequest)> {
    match user_of(credentials.token()) {
        Some(user) => {
            req.extensions_mut().insert(Principal::new(user));
            Ok(req)
        }
        None => Err((error::ErrorUnauthorized("sign in"), req)),
    }
}

#[post("/calls")]
#[idempotent(scope = "principal")]
async fn principal_call(runs: web::Data<Counter>) -> HttpResponse {
    let n = runs.bump();
    HttpResponse::Created().body(format!("call_{n}"))
}

/// A plain handler, for the middleware form.
async fn plain_call(runs: web::Data<Counter>) -> HttpResponse {
    let n = runs.bump();
    HttpResponse::Created().body(format!("call_{n}"))
}

fn as_user(path: &str, token: &str, key: &str) -> RawRequest {
    keyed(path, key).header("Authorization", &format!("Bearer {token}"))
}

/// What the principal scope does, whichever middleware verified the caller: one scope per
/// user whatever its token, another user's key is its own, and an unverified caller reaches
/// nothing.
async fn principal_suite(s: &idem_tests::Served, path: &str) {
    let first = s.send(&as_user(path, "ada-laptop", "k")).await;
    assert_eq!(first.status, 201);
    let other_token = s.send(&as_user(path, "ada-phone", "k")).await;
    assert!(
        other_token.replayed(),
        "one user, one scope, whatever its token"
    );
    assert_eq!(other_token.body, first.body);
    let bob = s.send(&as_user(path, "bob", "k")).await;
    assert_eq!(bob.status, 201);
    assert!(!bob.replayed(), "another user's key is its own");
    let forged = s.send(&as_user(path, "forged", "k")).await;
    assert_eq!(forged.status, 401);
    assert!(!forged.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn the_principal_scope_is_the_caller_a_from_fn_middleware_verified() {
    let s = serve(|cfg| {
        cfg.service(
            web::scope("/v1")
                .wrap(from_fn(authenticate))
                .service(principal_call),
        );
    });
    principal_suite(&s, "/v1/calls").await;
}

#[actix_web::test]
async fn the_principal_scope_is_the_caller_an_httpauth_validator_verified() {
    let s = serve(|cfg| {
        cfg.service(
            web::scope("/v1")
                .wrap(HttpAuthentication::bearer(validate))
                .service(principal_call),
        );
    });
    principal_suite(&s, "/v1/calls").await;
}

#[actix_web::test]
async fn without_an_authentication_middleware_the_principal_scope_is_missing() {
    let s = serve(|cfg| {
        cfg.service(web::scope("/v1").service(principal_call));
    });
    let res = s.send(&as_user("/v1/calls", "ada-laptop", "k")).await;
    let message = assert_error(&res, 400, "idempotency_scope_missing");
    assert!(
        message.contains("an authentication middleware must")
            && message.contains("before the idempotency layer runs"),
        "{message}"
    );
    assert_eq!(s.runs.get(), 0, "never a shared scope");
}

#[actix_web::test]
async fn the_middleware_form_reads_the_principal_of_an_authentication_middleware_around_it() {
    // actix runs the middleware registered last first: authentication, then idempotency.
    let s = serve(|cfg| {
        cfg.service(
            web::scope("/v1")
                .wrap(Idempotency::new().with_overrides(|p| p.scope(Scope::Principal)))
                .wrap(from_fn(authenticate))
                .route("/calls", web::post().to(plain_call)),
        );
    });
    principal_suite(&s, "/v1/calls").await;
}

#[actix_web::test]
async fn the_middleware_form_inside_out_refuses_instead_of_sharing_a_scope() {
    // Idempotency registered last runs first, before any principal exists.
    let s = serve(|cfg| {
        cfg.service(
            web::scope("/v1")
                .wrap(from_fn(authenticate))
                .wrap(Idempotency::new().with_overrides(|p| p.scope(Scope::Principal)))
                .route("/calls", web::post().to(plain_call)),
        );
    });
    let res = s.send(&as_user("/v1/calls", "ada-laptop", "k")).await;
    assert_error(&res, 400, "idempotency_scope_missing");
    assert_eq!(s.runs.get(), 0);
}

#[actix_web::test]
async fn the_middleware_takes_a_scope_function_under_a_name_of_its_own() {
    let s = serve(|cfg| {
        cfg.service(
            web::scope("/v1")
                .wrap(Idempotency::new().with_scope_fn("tenant", tenant))
                .route("/calls", web::post().to(plain_call)),
        );
    });
    tenant_suite(&s, "/v1/calls").await;
}

fn same_tenant(req: &HttpRequest) -> Option<String> {
    tenant(req)
}

#[actix_web::test]
async fn middleware_scope_functions_share_keys_only_under_one_name() {
    let s = serve(|cfg| {
        let wrapped = |path: &str, name: &'static str, f: fn(&HttpRequest) -> Option<String>| {
            web::scope(path)
                .wrap(
                    Idempotency::new()
                        .with_scope_fn(name, f)
                        .with_overrides(|p| p.on_mismatch(idem_actix::OnMismatch::Replay)),
                )
                .route("/calls", web::post().to(plain_call))
        };
        cfg.service(wrapped("/a", "tenant", tenant))
            .service(wrapped("/b", "same-tenant", same_tenant))
            .service(wrapped("/c", "tenant", same_tenant));
    });
    let call = |path: &str| keyed(path, "k").header("X-Tenant", "acme");
    assert_eq!(s.send(&call("/a/calls")).await.status, 201);
    // Another name: another scope, whatever the function finds.
    assert!(!s.send(&call("/b/calls")).await.replayed());
    // The same name: the same scope (replayed, as a mismatch replays here).
    assert!(s.send(&call("/c/calls")).await.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[post("/buggy-scope")]
#[idempotent(scope = buggy_tenant)]
async fn buggy_scope(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

/// A scope function that panics is answered as a handler that panics is: 500, never kept by
/// a cache, with the request's id, and nothing claimed or run, where the connection closed
/// unanswered; the worker serves on, and the key runs once its scope can be found.
#[actix_web::test]
async fn a_scope_function_that_panics_is_answered_500_with_its_request_id_and_claims_nothing() {
    let s = serve(|cfg| {
        cfg.service(buggy_scope).service(
            web::scope("/v1")
                .wrap(Idempotency::new().with_scope_fn("buggy-tenant", buggy_tenant))
                .route("/calls", web::post().to(plain_call)),
        );
    });
    // The attribute, then the middleware (which answers it as an error of its service, as it
    // does a handler's panic).
    for (path, body) in [("/buggy-scope", "run 1"), ("/v1/calls", "call_2")] {
        let call = |tenant: &str| keyed(path, "k").header("X-Tenant", tenant);
        let res = call("boom")
            .try_send(s.server.addr)
            .await
            .expect("an answer, not a closed connection");
        assert_eq!(res.status, 500, "{path}: {res:?}");
        assert_eq!(res.header("cache-control"), Some("no-store"), "{path}");
        let id = res.header("x-request-id").unwrap_or_default();
        assert_eq!(
            id.len(),
            16,
            "{path}: a fresh id, as any answer has: {res:?}"
        );
        // The client's own id, when it sent a valid one, as for any other answer.
        let res = (call("boom").header("X-Request-ID", "req-boom.1"))
            .try_send(s.server.addr)
            .await
            .expect("an answer");
        assert_eq!(res.status, 500, "{path}");
        assert_eq!(res.header("x-request-id"), Some("req-boom.1"), "{path}");
        assert_eq!(s.runs.get(), usize::from(path != "/buggy-scope"), "{path}");
        let ran = s.send(&call("acme")).await;
        assert_eq!(ran.status, 201, "{path}");
        assert_eq!(ran.body, body.as_bytes());
        assert!(s.send(&call("acme")).await.replayed(), "{path}");
    }
}
