//! `calls-api`'s OpenAPI document: served without a token, every route in it, and each
//! idempotent operation doing what the document says (its key header, its key rules, its
//! replays, its answer to a mismatch). The document states the handlers' `#[idempotent]`
//! arguments a second time; these tests are what keeps the two in step.

mod common;

use std::collections::BTreeSet;

use common::CallsApi;
use idem_tests::{assert_envelope, assert_error, RawRequest, RawResponse};
use serde_json::{json, Value};

const TOKEN: &str = "Bearer openapi-tests";

async fn document(api: &CallsApi) -> Value {
    let res = RawRequest::get("/openapi.json").send(api.addr).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("content-type"), Some("application/json"));
    res.json()
}

#[tokio::test]
async fn the_document_is_served_without_a_token_and_describes_every_route() {
    let api = CallsApi::start(None).await;
    let doc = document(&api).await;
    assert_eq!(doc["openapi"], "3.1.0");

    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/calls",
        "GET /v1/messages",
        "POST /v1/calls",
        "POST /v1/messages",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(routes, expected);

    // The routes without security in the document answer without a token; the others do not.
    for route in &expected {
        let (method, path) = route.split_once(' ').unwrap();
        let operation = &doc["paths"][path][method.to_lowercase()];
        let res = RawRequest::new(method, path)
            .json(&json!({}))
            .send(api.addr)
            .await;
        let open = operation["security"].is_null();
        assert_eq!(res.status == 401, !open, "{route} answered {}", res.status);
        assert!(
            operation["responses"][res.status.to_string()].is_object(),
            "{route} answered {}, which its document does not list",
            res.status
        );
    }
}

/// Two different requests to `path`, for a key's first use and its misuse.
fn bodies(path: &str) -> (Value, Value) {
    match path {
        "/v1/calls" => (
            json!({"agent_id": "agent_1", "phone_number": "+15555550123"}),
            json!({"agent_id": "agent_1", "phone_number": "+15555550199"}),
        ),
        "/v1/messages" => (
            json!({"to": "+15555550123", "text": "hello"}),
            json!({"to": "+15555550123", "text": "goodbye"}),
        ),
        other => panic!("no request bodies for {other}"),
    }
}

async fn post(api: &CallsApi, path: &str, header: &str, key: &str, body: &Value) -> RawResponse {
    RawRequest::post(path)
        .header("Authorization", TOKEN)
        .header(header, key)
        .json(body)
        .send(api.addr)
        .await
}

#[tokio::test]
async fn each_idempotent_operation_does_what_the_document_says() {
    let api = CallsApi::start(None).await;
    let doc = document(&api).await;
    let mut described = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let operation = &item["post"];
        let Some(contract) = operation.get("x-idempotency") else {
            continue;
        };
        described.push(path.clone());
        let key_parameter = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["in"] == "header" && p["name"] == contract["header"])
            .unwrap_or_else(|| panic!("{path}: the key header is a parameter"));
        let header = key_parameter["name"].as_str().unwrap();
        let max = key_parameter["schema"]["maxLength"].as_u64().unwrap() as usize;
        let (body, other) = bodies(path);

        // The documented header is the one that is honoured.
        let key = format!("{path}-key-1");
        let first = post(&api, path, header, &key, &body).await;
        assert_eq!(first.status, 201, "{path}");
        assert!(!first.replayed());
        let retry = post(&api, path, header, &key, &body).await;
        assert_eq!(retry.status, 201, "{path}");
        assert!(retry.replayed(), "{path}: the retry is a replay");
        assert_eq!(retry.body, first.body);
        let documented = &operation["responses"]["201"]["headers"]["Idempotent-Replayed"];
        assert_eq!(documented["schema"]["enum"], json!(["true"]), "{path}");

        // A key reused with another request gets the documented status.
        let mismatch = post(&api, path, header, &key, &other).await;
        let status = match &contract["on_mismatch"] {
            Value::Number(status) => status.as_u64().unwrap() as u16,
            other => panic!("{path}: on_mismatch {other}"),
        };
        assert_error(&mismatch, status, "idempotency_conflict");
        assert!(operation["responses"][status.to_string()].is_object());

        // The documented length is the limit. (Keys are per tenant, not per operation: each
        // operation gets keys of its own.)
        let longest = format!("{path}{}", "k".repeat(max - path.len()));
        assert_eq!(post(&api, path, header, &longest, &body).await.status, 201);
        let too_long = format!("{longest}k");
        let refused = post(&api, path, header, &too_long, &body).await;
        assert_error(&refused, 400, "idempotency_key_invalid");
        let bad_request = operation["responses"]["400"]["description"]
            .as_str()
            .unwrap();
        assert!(bad_request.contains("idempotency_key_invalid"), "{path}");

        // A handler's error is replayed only where the document says it can be. The calls
        // handler refuses a phone number that is not E.164 itself; the messages handler has
        // no 400 of its own, so its extractor's (a simulated status that is not 5xx) stands in,
        // never recorded, as no refusal before a handler runs is.
        let key = format!("{path}-key-2");
        let failing = |key: &str| {
            let request = RawRequest::post(path)
                .header("Authorization", TOKEN)
                .header(header, key);
            match path.as_str() {
                "/v1/calls" => {
                    request.json(&json!({"agent_id": "agent_1", "phone_number": "555-0123"}))
                }
                _ => request.header("X-Simulate-Status", "200").json(&body),
            }
        };
        assert_eq!(failing(&key).send(api.addr).await.status, 400);
        let again = failing(&key).send(api.addr).await;
        assert_eq!(again.status, 400);
        let replayable = operation["responses"]["400"]["headers"]
            .get("Idempotent-Replayed")
            .is_some();
        assert_eq!(again.replayed(), replayable, "{path}: a 400 replayed");

        // The carrier's failure is documented, never as a replay, and frees the key.
        let key = format!("{path}-key-3");
        let failed = RawRequest::post(path)
            .header("Authorization", TOKEN)
            .header(header, &key)
            .header("X-Simulate-Status", "502")
            .json(&body);
        let failed = failed.send(api.addr).await;
        // The application's own error, in the layer's envelope.
        assert_envelope(&failed, 502, "carrier_unavailable");
        let documented = &operation["responses"]["5XX"];
        assert!(documented["description"]
            .as_str()
            .unwrap()
            .contains("carrier_unavailable"));
        assert!(documented["headers"].get("Idempotent-Replayed").is_none());
        // A header it lists comes with the carrier's failure, or says which failure sends it.
        for (name, described) in documented["headers"].as_object().unwrap() {
            let when = described["description"].as_str().unwrap();
            assert!(
                failed.header(name).is_some() || when.contains("database_unavailable"),
                "{path}: {name}, listed on a 5XX, is missing from the carrier's failure: {when}"
            );
        }
        let retry = post(&api, path, header, &key, &body).await;
        assert_eq!((retry.status, retry.replayed()), (201, false), "{path}");
    }
    assert_eq!(described, ["/v1/calls", "/v1/messages"]);
}

#[tokio::test]
async fn the_retention_and_scope_are_published_in_words() {
    let api = CallsApi::start(None).await;
    let doc = document(&api).await;
    for path in ["/v1/calls", "/v1/messages"] {
        let operation = &doc["paths"][path]["post"];
        let words = operation["description"].as_str().unwrap();
        assert!(
            words.contains("kept for replay for 24 hours after it completes"),
            "{path}: {words}"
        );
        assert!(words.contains("Keys are per API key"), "{path}: {words}");
        assert_eq!(operation["x-idempotency"]["retention_seconds"], 86_400);
    }
}

#[tokio::test]
async fn an_answer_the_authentication_gives_is_not_documented_as_a_replay() {
    let api = CallsApi::start(None).await;
    let doc = document(&api).await;
    // The bearer check runs before the layer: a request without a token is refused the same
    // way each time, never replayed.
    for _ in 0..2 {
        let res = RawRequest::post("/v1/calls")
            .header("Idempotency-Key", "no-token")
            .json(&json!({"agent_id": "agent_1", "phone_number": "+15555550123"}))
            .send(api.addr)
            .await;
        assert_eq!(res.status, 401);
        assert_eq!(res.header("idempotent-replayed"), None);
    }
    for path in ["/v1/calls", "/v1/messages"] {
        let responses = &doc["paths"][path]["post"]["responses"];
        assert!(
            responses["401"]["headers"]["Idempotent-Replayed"].is_null(),
            "{path}: {}",
            responses["401"]
        );
        assert!(responses["201"]["headers"]["Idempotent-Replayed"].is_object());
    }
}

/// What the API answers itself, outside the layer, is documented with what it carries: a
/// 401 its `X-Request-ID`, and every route that reads or writes the database its 503
/// `database_unavailable` under `--database-url`, with `Retry-After` (the keyless calls and
/// the lists, where the layer's own 503s are not).
#[tokio::test]
async fn the_api_s_own_refusals_are_documented_with_their_headers() {
    let api = CallsApi::start(None).await;
    let doc = document(&api).await;
    let refused = RawRequest::get("/v1/calls").send(api.addr).await;
    assert_eq!(refused.status, 401);
    assert!(refused.header("x-request-id").is_some());
    for (path, method) in [
        ("/v1/calls", "get"),
        ("/v1/calls", "post"),
        ("/v1/messages", "get"),
        ("/v1/messages", "post"),
    ] {
        let responses = &doc["paths"][path][method]["responses"];
        assert!(
            responses["401"]["headers"]["X-Request-ID"].is_object(),
            "{method} {path}: {}",
            responses["401"]
        );
        let unavailable = &responses["503"];
        let said = unavailable["description"].as_str().unwrap_or_default();
        assert!(
            said.contains("database_unavailable"),
            "{method} {path}: {said}"
        );
        for header in ["Retry-After", "X-Request-ID"] {
            assert!(
                unavailable["headers"][header].is_object(),
                "{method} {path}: {header} in {unavailable}"
            );
        }
    }
}
