//! The `calls-api` example's fixed contract (SPEC.md, "The example server").

use actix_web::web;
use idem_examples::calls_api::{configure, CallsState};
use idem_tests::{assert_envelope, assert_error, RawRequest, RawResponse, TestServer};
use serde_json::json;

struct Api {
    server: TestServer,
    state: web::Data<CallsState>,
}

/// The example's app on a free port, as `calls-api` builds it (embedded store, two workers).
fn start() -> Api {
    let state = web::Data::new(CallsState::default());
    let idem = idem_actix::IdempotencyConfig::new(idem_actix::MokaStore::new());
    let routes = configure(state.clone());
    let server = TestServer::start(2, move |cfg| {
        cfg.app_data(idem.clone());
        routes(cfg);
    });
    Api { server, state }
}

impl Api {
    async fn send(&self, request: RawRequest) -> RawResponse {
        request.send(self.server.addr).await
    }
}

fn create(tenant: &str, key: Option<&str>, body: serde_json::Value) -> RawRequest {
    let request = RawRequest::post("/v1/calls")
        .header("Authorization", &format!("Bearer {tenant}"))
        .json(&body);
    match key {
        Some(key) => request.header("Idempotency-Key", key),
        None => request,
    }
}

fn new_call(phone: &str) -> serde_json::Value {
    json!({ "agent_id": "agent_demo0001", "phone_number": phone })
}

#[actix_web::test]
async fn health_needs_no_token_and_everything_else_does() {
    let api = start();
    assert_eq!(api.send(RawRequest::get("/healthz")).await.status, 200);
    for request in [
        RawRequest::get("/v1/calls"),
        RawRequest::post("/v1/calls")
            .header("Idempotency-Key", "k")
            .json(&new_call("+15555550123")),
        RawRequest::get("/v1/messages"),
        RawRequest::post("/v1/messages").header("Authorization", "Basic abc"),
    ] {
        let res = api.send(request).await;
        assert_eq!(res.status, 401);
        assert_eq!(res.json()["error"]["code"], "unauthorized");
    }
    assert_eq!(api.state.call_count(), 0);
}

/// `HEAD` of the open routes is answered as their `GET` is, without a token: it fell through
/// to the token check (401), which a load balancer's health check by `HEAD` took for a dead
/// server.
#[actix_web::test]
async fn head_of_the_open_routes_needs_no_token() {
    let api = start();
    for path in ["/healthz", "/openapi.json"] {
        let res = api.send(RawRequest::new("HEAD", path)).await;
        assert_eq!(res.status, 200, "HEAD {path}: {res:?}");
        assert!(res.body.is_empty(), "HEAD {path}: {res:?}");
    }
}

/// A tenant is one `Authorization` value: its idempotency keys are scoped by the whole value
/// (`scope = "api_key"`), so another spelling of the same token (`bearer`, two spaces) would
/// be another scope, and a key the tenant already used would place its call again. Such
/// spellings are refused; they were taken as the same tenant.
#[actix_web::test]
async fn another_spelling_of_a_tenant_s_token_is_refused_not_a_second_scope() {
    let api = start();
    let first = api
        .send(create("ws1", Some("k-spelling"), new_call("+15555550123")))
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    for spelling in ["bearer ws1", "BEARER ws1", "Bearer  ws1", "Bearer ws1 x"] {
        let res = api
            .send(
                RawRequest::post("/v1/calls")
                    .header("Authorization", spelling)
                    .header("Idempotency-Key", "k-spelling")
                    .json(&new_call("+15555550123")),
            )
            .await;
        assert_envelope(&res, 401, "unauthorized");
    }
    assert_eq!(api.state.call_count(), 1);
}

#[actix_web::test]
async fn creating_a_call_answers_201_with_location_and_the_call() {
    let api = start();
    let res = api
        .send(create("t1", Some("k1"), new_call("+15555550123")))
        .await;
    assert_eq!(res.status, 201);
    let data = &res.json()["data"];
    let id = data["id"].as_str().unwrap();
    assert!(id.starts_with("call_") && id.len() > 5);
    assert_eq!(
        res.header("location"),
        Some(format!("/v1/calls/{id}").as_str())
    );
    assert_eq!(data["agent_id"], "agent_demo0001");
    assert_eq!(data["phone_number"], "+15555550123");
    assert_eq!(data["status"], "queued");

    let retry = api
        .send(create("t1", Some("k1"), new_call("+15555550123")))
        .await;
    assert!(retry.replayed());
    assert_eq!(retry.body, res.body);
    assert_eq!(api.state.call_count(), 1);

    let conflict = api
        .send(create("t1", Some("k1"), new_call("+15555550199")))
        .await;
    assert_error(&conflict, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn phone_numbers_must_be_e164() {
    let api = start();
    for phone in [
        "5555550123",
        "+1234567",
        "+1234567890123456",
        "+1555abc0123",
    ] {
        let res = api.send(create("t1", None, new_call(phone))).await;
        assert_eq!(res.status, 400, "{phone}");
        assert_eq!(res.json()["error"]["code"], "invalid_phone_number");
        assert_eq!(
            res.json()["request_id"],
            res.header("x-request-id").unwrap()
        );
    }
    assert_eq!(api.state.call_count(), 0);
}

/// A keyed call refused for its number is recorded as any answer but a 5xx is (the default):
/// its retry gets the same 400, replayed, with nothing dialled, and the same key with another
/// number is another request.
#[actix_web::test]
async fn a_refused_phone_number_is_recorded_and_replayed_to_its_retry() {
    let api = start();
    let first = api
        .send(create("t1", Some("bad-1"), new_call("5555550123")))
        .await;
    assert_eq!(first.status, 400);
    assert_eq!(first.json()["error"]["code"], "invalid_phone_number");
    assert!(!first.replayed());
    let retry = api
        .send(create("t1", Some("bad-1"), new_call("5555550123")))
        .await;
    assert_eq!(
        (retry.status, retry.body.clone()),
        (400, first.body.clone())
    );
    assert!(retry.replayed(), "{retry:?}");
    let other = api
        .send(create("t1", Some("bad-1"), new_call("+15555550123")))
        .await;
    assert_eq!(other.status, 409, "{other:?}");
    assert_eq!(other.json()["error"]["code"], "idempotency_conflict");
    assert_eq!(api.state.call_count(), 0);
}

#[actix_web::test]
async fn listing_shows_this_tenants_calls_oldest_first() {
    let api = start();
    let a1 = api
        .send(create("alice", None, new_call("+15555550001")))
        .await
        .json();
    api.send(create("bob", None, new_call("+15555550002")))
        .await;
    let a2 = api
        .send(create("alice", Some("k"), new_call("+15555550003")))
        .await
        .json();
    let list = api
        .send(RawRequest::get("/v1/calls").header("Authorization", "Bearer alice"))
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["data"], json!([a1["data"], a2["data"]]));
}

/// A call is as old as its request: one whose carrier takes a while is listed before a call
/// made after it that was placed sooner, as the Postgres ledger lists them (by the row
/// written before the carrier is called), where the embedded one listed them as their
/// carriers answered.
#[actix_web::test]
async fn a_slow_call_is_listed_before_a_later_call_placed_sooner() {
    let api = start();
    let slow = create("alice", Some("slow"), new_call("+15555550001"))
        .header("X-Simulate-Delay-Ms", "1000");
    let later = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        api.send(create("alice", Some("later"), new_call("+15555550002")))
            .await
    };
    let (slow, later) = futures_util::join!(api.send(slow), later);
    assert_eq!((slow.status, later.status), (201, 201));
    let list = api
        .send(RawRequest::get("/v1/calls").header("Authorization", "Bearer alice"))
        .await;
    assert_eq!(
        list.json()["data"],
        json!([slow.json()["data"], later.json()["data"]])
    );
}

#[actix_web::test]
async fn a_simulated_carrier_failure_creates_nothing_and_releases_the_key() {
    let api = start();
    let failing =
        create("t1", Some("k"), new_call("+15555550123")).header("X-Simulate-Status", "503");
    let res = api.send(failing).await;
    assert_eq!(res.status, 503);
    assert_eq!(api.state.call_count(), 0);
    let retry = api
        .send(create("t1", Some("k"), new_call("+15555550123")))
        .await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    assert_eq!(api.state.call_count(), 1);

    let not_5xx = create("t1", None, new_call("+15555550123")).header("X-Simulate-Status", "404");
    assert_eq!(api.send(not_5xx).await.status, 400);
}

/// A simulated delay over the 30 s calls-api sleeps at most is refused, saying so, where it
/// was cut to 30 s without a word; 30 s itself is taken.
#[actix_web::test]
async fn a_simulated_delay_over_its_bound_is_refused_with_the_bound() {
    let api = start();
    let too_long =
        create("t1", Some("long"), new_call("+15555550123")).header("X-Simulate-Delay-Ms", "30001");
    let res = api.send(too_long).await;
    let message = assert_envelope(&res, 400, "invalid_simulation");
    assert!(message.contains("at most 30000"), "{message}");
    assert_eq!(api.state.call_count(), 0);
}

#[actix_web::test]
async fn a_slow_call_is_in_flight_for_its_duplicates() {
    let api = start();
    // Long enough for the second of the two to be answered while the first dials, however
    // the machine schedules them.
    let slow = || {
        create("t1", Some("slow"), new_call("+15555550123")).header("X-Simulate-Delay-Ms", "3000")
    };
    let (a, b) = futures_util::join!(api.send(slow()), api.send(slow()));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    let conflict = if a.status == 409 { &a } else { &b };
    assert_error(conflict, 409, "idempotency_conflict");
    assert!(conflict.header("retry-after").is_some());
    assert_eq!(api.state.call_count(), 1);
}

#[actix_web::test]
async fn messages_use_x_idempotency_key_2xx_only_and_422_on_mismatch() {
    let api = start();
    let message = |key: &str, text: &str| {
        RawRequest::post("/v1/messages")
            .header("Authorization", "Bearer t1")
            .header("X-Idempotency-Key", key)
            .json(&json!({ "to": "+15555550123", "text": text }))
    };
    let first = api.send(message("m1", "hi")).await;
    assert_eq!(first.status, 201);
    assert!(first.json()["data"]["id"]
        .as_str()
        .unwrap()
        .starts_with("msg_"));
    assert!(api.send(message("m1", "hi")).await.replayed());
    assert_error(
        &api.send(message("m1", "bye")).await,
        422,
        "idempotency_conflict",
    );

    // A body the handler's extractor refuses (no `text`) was never run, so it is not stored,
    // under this rule or any: the fixed request runs. (The handler has no 4xx of its own for
    // the 2xx-only rule to leave unstored; that rule is tested with one in seed 004's
    // `failed_requests_are_not_cached`, whose profile this is.)
    let bad = RawRequest::post("/v1/messages")
        .header("Authorization", "Bearer t1")
        .header("X-Idempotency-Key", "m2")
        .json(&json!({ "to": "+15555550123" }));
    assert_eq!(api.send(bad).await.status, 400);
    let fixed = api.send(message("m2", "fixed")).await;
    assert_eq!((fixed.status, fixed.replayed()), (201, false));
    assert_eq!(api.state.message_count(), 2);

    let list = api
        .send(RawRequest::get("/v1/messages").header("Authorization", "Bearer t1"))
        .await;
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 2);
}

/// `scope = "api_key"`: one key sent by two tenants is two operations, each replayed to its
/// own tenant only, never one tenant's call to the other.
#[actix_web::test]
async fn one_key_from_two_tenants_creates_a_call_for_each() {
    let api = start();
    let alice = api
        .send(create("alice", Some("shared"), new_call("+15555550001")))
        .await;
    let bob = api
        .send(create("bob", Some("shared"), new_call("+15555550001")))
        .await;
    assert_eq!((alice.status, bob.status), (201, 201));
    assert!(!bob.replayed(), "bob's call is his own");
    assert_ne!(alice.json()["data"]["id"], bob.json()["data"]["id"]);
    assert_eq!(api.state.call_count(), 2);
    for (tenant, first) in [("alice", &alice), ("bob", &bob)] {
        let retry = api
            .send(create(tenant, Some("shared"), new_call("+15555550001")))
            .await;
        assert!(retry.replayed(), "{tenant}");
        assert_eq!(retry.body, first.body, "{tenant} gets their own call");
    }
    assert_eq!(api.state.call_count(), 2);
}

/// A call whose JSON is sent without `Content-Type: application/json` is refused by the
/// handler's `web::Json` before it runs: nothing is recorded, and the retry that adds the
/// header under the same key places the call, where the refusal was replayed for a day.
#[actix_web::test]
async fn a_call_refused_for_its_content_type_is_placed_by_the_corrected_retry() {
    let api = start();
    let body = new_call("+15555550123").to_string();
    let bare = RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer t1")
        .header("Idempotency-Key", "no-type")
        .body(body.as_str());
    let refused = api.send(bare).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(api.state.call_count(), 0);
    let corrected = api
        .send(create("t1", Some("no-type"), new_call("+15555550123")))
        .await;
    assert_eq!(corrected.status, 201, "{}", corrected.text());
    assert!(!corrected.replayed());
    assert_eq!(api.state.call_count(), 1);
}

/// The binary a user runs (`cargo run --release -p idem-examples --bin calls-api`) is built
/// with its normal dependencies' features alone, where its tests' build has those their
/// dev-dependencies add: it decodes gzip and deflate bodies as they do, where it refused them
/// (`idempotency_body_invalid`) while its tests' build took them.
#[test]
fn the_binary_as_the_readme_builds_it_decodes_gzip_and_deflate_bodies() {
    let tree = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--edges",
            "normal,features",
            "--invert",
            "actix-web",
        ])
        .args(["--package", "idem-examples", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo tree runs");
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.contains("actix-web feature \"compress-gzip\""),
        "calls-api is built without actix-web's compress-gzip:\n{tree}"
    );
}
