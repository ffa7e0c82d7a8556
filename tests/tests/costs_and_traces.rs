//! What a request costs the store, and what it leaves in traces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{post, web, HttpRequest, HttpResponse};
use idem_actix::{idempotent, IdempotencyConfig, MokaStore};
use idem_core::testing::CountingStore;
use idem_tests::{Counter, Entered, Fields, RawRequest, TestServer};
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Metadata, Subscriber};

#[post("/op")]
#[idempotent]
async fn op(runs: web::Data<Counter>, req: HttpRequest) -> HttpResponse {
    runs.bump();
    tracing::info!(handler = "op");
    if req.headers().contains_key("x-fail") {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Created().body("done")
}

/// Records span fields and event outcomes from every thread, and the key of the span the
/// handler's own events happen in.
#[derive(Clone, Default)]
struct Traces {
    /// Span `n`'s fields are at index `n - 1`.
    spans: Arc<Mutex<Vec<HashMap<String, String>>>>,
    outcomes: Arc<Mutex<Vec<String>>>,
    /// For each event of the handler, the `key` field of the span it happened in, if any.
    handler_keys: Arc<Mutex<Vec<Option<String>>>>,
}

impl Subscriber for Traces {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push(fields);
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &Id, _: &SpanRecord<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        if let Some(outcome) = fields.remove("outcome") {
            self.outcomes.lock().unwrap().push(outcome);
        }
        if fields.contains_key("handler") {
            let current = Entered::current();
            let key = current.and_then(|id| {
                self.spans.lock().unwrap()[id as usize - 1]
                    .get("key")
                    .cloned()
            });
            self.handler_keys.lock().unwrap().push(key);
        }
    }
    fn enter(&self, id: &Id) {
        Entered::enter(id);
    }
    fn exit(&self, id: &Id) {
        Entered::exit(id);
    }
}

#[actix_web::test]
async fn each_request_costs_the_fewest_store_calls_and_is_traced() {
    let traces = Traces::default();
    tracing::subscriber::set_global_default(traces.clone()).expect("first subscriber");

    let store = CountingStore::new(MokaStore::new());
    let runs = Counter::default();
    let (idem, data) = (
        IdempotencyConfig::new(store.clone()),
        web::Data::new(runs.clone()),
    );
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .service(op);
    });
    let keyed = |key: &str| {
        RawRequest::post("/op")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", key)
            .header("X-Request-ID", &format!("rid-{key}"))
    };

    // Without a key: no store access at all.
    RawRequest::post("/op").send(server.addr).await;
    assert!(store.take().is_empty());

    // Executed: one claim and one completion.
    let first = keyed("trace-1").send(server.addr).await;
    assert_eq!(first.status, 201);
    assert_eq!(store.take(), HashMap::from([("claim", 1), ("complete", 1)]));

    // Replayed: one read (the claim that finds the record).
    assert!(keyed("trace-1").send(server.addr).await.replayed());
    assert_eq!(store.take(), HashMap::from([("claim", 1)]));

    // A 5xx: one claim and one release.
    keyed("trace-2")
        .header("X-Fail", "1")
        .send(server.addr)
        .await;
    assert_eq!(store.take(), HashMap::from([("claim", 1), ("release", 1)]));

    // A conflict: one claim.
    RawRequest::post("/op?other")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "trace-1")
        .send(server.addr)
        .await;
    assert_eq!(store.take(), HashMap::from([("claim", 1)]));
    assert_eq!(runs.get(), 3);

    let outcomes = traces.outcomes.lock().unwrap().clone();
    for expected in ["executed", "replayed", "released", "conflict"] {
        assert!(
            outcomes.iter().any(|o| o == expected),
            "{expected} not in {outcomes:?}"
        );
    }
    let spans = traces.spans.lock().unwrap().clone();
    assert!(
        spans
            .iter()
            .any(|s| s.get("key").map(String::as_str) == Some("trace-1")
                && s.get("request_id").map(String::as_str) == Some("rid-trace-1")),
        "no span with the key and request id: {spans:?}"
    );
    // The handler's own events happen inside the span of the request's key (and outside any
    // such span when there is no key).
    let handler_keys = traces.handler_keys.lock().unwrap().clone();
    assert_eq!(
        handler_keys,
        [None, Some("trace-1".to_owned()), Some("trace-2".to_owned())]
    );
}

#[post("/echo-auth")]
#[idempotent]
async fn echo(body: String) -> HttpResponse {
    HttpResponse::Created().body(format!("stored: {}", body.len()))
}

#[actix_web::test]
async fn stored_records_hold_no_raw_key_credential_or_request_header() {
    let store = MokaStore::new();
    let idem = IdempotencyConfig::new(store.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).service(echo);
    });
    for (auth, key) in [
        ("Bearer sk_live_SECRET1", "order-RAWKEY1"),
        ("Basic c2VjcmV0OlNFQ1JFVDI=", "RAWKEY2"),
    ] {
        let res = RawRequest::post("/echo-auth")
            .header("Authorization", auth)
            .header("Idempotency-Key", key)
            .header("Cookie", "session=SECRET3")
            .body("payload")
            .send(server.addr)
            .await;
        assert_eq!(res.status, 201);
    }
    let records = idem_core::testing::records(&store);
    assert_eq!(records.len(), 2);
    for (key, record) in records {
        let bytes = idem_core::testing::encoded(&record, idem_core::Token::random()).unwrap();
        let text = format!("{key} {}", String::from_utf8_lossy(&bytes));
        for secret in [
            "SECRET",
            "RAWKEY",
            "Bearer",
            "Basic",
            "authorization",
            "cookie",
        ] {
            assert!(
                !text.to_lowercase().contains(&secret.to_lowercase()),
                "{secret} in {text}"
            );
        }
    }
}
