//! The layer beside `tracing-actix-web`'s `TracingLogger`: where the layer's events land among
//! its spans, which request id a reader of the log finds, and what it logs of replays.
//!
//! One binary, one global subscriber: each test tells its requests apart by their
//! `X-Request-ID`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, Error, HttpResponse};
use idem_actix::{idempotent, Idempotency, IdempotencyConfig, MokaStore, RequestId};
use idem_tests::{
    assert_error, counted, eventually, release, until_orphaned, Counter, Entered, Fields,
    RawRequest, RawResponse, TestServer, HOLD,
};
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Metadata, Span, Subscriber};
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder, TracingLogger};

/// A span as the subscriber saw it: its name, its fields (recorded later ones included) and
/// its parent.
#[derive(Clone, Debug)]
struct Seen {
    name: &'static str,
    meta: &'static Metadata<'static>,
    fields: HashMap<String, String>,
    parent: Option<u64>,
}

/// An event: its fields and the span it happened in.
#[derive(Clone, Debug)]
struct Logged {
    fields: HashMap<String, String>,
    span: Option<u64>,
}

/// Every span and event of the binary, from every thread, with their parents.
#[derive(Clone, Default)]
struct Traces {
    /// Span `n` is at index `n - 1`.
    spans: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Logged>>>,
}

impl Subscriber for Traces {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        let parent = if span.is_root() {
            None
        } else {
            span.parent().map(Id::into_u64).or_else(Entered::current)
        };
        let mut spans = self.spans.lock().unwrap();
        spans.push(Seen {
            name: span.metadata().name(),
            meta: span.metadata(),
            fields,
            parent,
        });
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &Id, values: &SpanRecord<'_>) {
        let mut spans = self.spans.lock().unwrap();
        values.record(&mut Fields(&mut spans[id.into_u64() as usize - 1].fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let span = if event.is_root() {
            None
        } else {
            event.parent().map(Id::into_u64).or_else(Entered::current)
        };
        self.events.lock().unwrap().push(Logged { fields, span });
    }
    /// `TracingLogger` records the status in `Span::current()`, which asks for this.
    fn current_span(&self) -> tracing_core::span::Current {
        match Entered::current() {
            Some(id) => {
                let meta = self.spans.lock().unwrap()[id as usize - 1].meta;
                tracing_core::span::Current::new(Id::from_u64(id), meta)
            }
            None => tracing_core::span::Current::none(),
        }
    }
    fn enter(&self, id: &Id) {
        Entered::enter(id);
    }
    fn exit(&self, id: &Id) {
        Entered::exit(id);
    }
}

impl Traces {
    fn installed() -> &'static Traces {
        static TRACES: OnceLock<Traces> = OnceLock::new();
        TRACES.get_or_init(|| {
            let traces = Traces::default();
            tracing::subscriber::set_global_default(traces.clone())
                .expect("the test binary's first subscriber");
            traces
        })
    }

    /// `span` and its ancestors, innermost first.
    fn chain(&self, span: Option<u64>) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        let mut chain = Vec::new();
        let mut next = span;
        while let Some(id) = next {
            let seen = spans[id as usize - 1].clone();
            next = seen.parent;
            chain.push(seen);
        }
        chain
    }

    /// The layer's events (those with an `outcome`) about the request of id `request_id`,
    /// each with its spans, innermost first.
    fn outcomes_of(&self, request_id: &str) -> Vec<(String, Vec<Seen>)> {
        let events = self.events.lock().unwrap().clone();
        events
            .into_iter()
            .filter_map(|event| {
                let outcome = event.fields.get("outcome")?.clone();
                let chain = self.chain(event.span);
                let ours = event.fields.get("request_id").map(String::as_str) == Some(request_id)
                    || chain.iter().any(|s| {
                        s.name == "idempotency"
                            && s.fields.get("request_id").map(String::as_str) == Some(request_id)
                    });
                ours.then_some((outcome, chain))
            })
            .collect()
    }

    /// The root spans `TracingLogger` opened whose `http.target` is `target`.
    fn roots_for(&self, target: &str) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| {
                s.name == "HTTP request"
                    && s.fields.get("http.target").map(String::as_str) == Some(target)
            })
            .cloned()
            .collect()
    }
}

async fn create(
    runs: web::Data<Counter>,
    req: actix_web::HttpRequest,
    body: String,
) -> HttpResponse {
    counted(&runs, &req).await;
    HttpResponse::Created().body(format!("created {body}"))
}

/// A server whose `/{path}` scope has the middleware form of the layer and a `TracingLogger`
/// built by `R`, the logger outside the layer or inside it.
fn server<R: RootSpanBuilder + 'static>(
    path: &'static str,
    logger_outside: bool,
) -> (TestServer, Counter) {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    // One run at most for clients that went away: a refusal tells when one goes on alone.
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone()).app_data(idem.clone());
        // The last `wrap` is the outermost.
        if logger_outside {
            cfg.service(
                web::scope(path)
                    .wrap(Idempotency::new())
                    .wrap(TracingLogger::<R>::new())
                    .route("", web::post().to(create)),
            );
        } else {
            cfg.service(
                web::scope(path)
                    .wrap(TracingLogger::<R>::new())
                    .wrap(Idempotency::new())
                    .route("", web::post().to(create)),
            );
        }
    });
    (server, runs)
}

fn call(path: &str, key: &str, request_id: &str, body: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .header("X-Request-ID", request_id)
        .body(body)
}

/// The request id of `TracingLogger`'s root span among `chain`, if the event is in one.
fn root_id(chain: &[Seen]) -> Option<String> {
    let root = chain.iter().find(|s| s.name == "HTTP request")?;
    root.fields.get("request_id").cloned()
}

/// With `TracingLogger` outside the layer (or on the `App`, as it usually is), each of the
/// layer's events (a run, a replay, a conflict, a refusal) happens inside that request's root
/// span and so carries its request id; the layer's own span inside it carries the id the
/// client gets in `X-Request-ID`; and a replay or a refusal is logged with its status.
#[actix_web::test]
async fn outside_the_layer_tracing_logger_spans_every_event_of_the_layer_and_logs_replays() {
    let traces = Traces::installed();
    let (server, runs) = server::<DefaultRootSpanBuilder>("/outside", true);
    let first = call("/outside", "k1", "out-first", "a")
        .send(server.addr)
        .await;
    assert_eq!(first.status, 201);
    let replay = call("/outside", "k1", "out-replay", "a")
        .send(server.addr)
        .await;
    assert!(replay.replayed());
    let conflict = call("/outside", "k1", "out-conflict", "b")
        .send(server.addr)
        .await;
    assert_error(&conflict, 409, "idempotency_conflict");
    let refused = call("/outside", "bad key", "out-refused", "a")
        .send(server.addr)
        .await;
    assert_error(&refused, 400, "idempotency_key_invalid");
    assert_eq!(runs.get(), 1, "the operation ran once");

    let mut root_ids = Vec::new();
    for (res, id, outcome) in [
        (&first, "out-first", "executed"),
        (&replay, "out-replay", "replayed"),
        (&conflict, "out-conflict", "conflict"),
        (&refused, "out-refused", "rejected"),
    ] {
        assert_eq!(res.header("x-request-id"), Some(id));
        let events = traces.outcomes_of(id);
        assert!(
            events.iter().any(|(o, _)| o == outcome),
            "{id}: no {outcome} in {events:?}"
        );
        for (o, chain) in &events {
            let root = root_id(chain);
            assert!(
                root.is_some(),
                "{id}: {o} is outside the root span: {chain:?}"
            );
            root_ids.push(root);
        }
    }
    root_ids.dedup();
    assert_eq!(root_ids.len(), 4, "one root span per request: {root_ids:?}");

    // The root spans record each request's status: the replay's as replayed.
    let statuses = |roots: Vec<Seen>| -> Vec<String> {
        let mut statuses: Vec<_> = roots
            .iter()
            .filter_map(|s| s.fields.get("http.status_code").cloned())
            .collect();
        statuses.sort();
        statuses
    };
    assert_eq!(
        statuses(traces.roots_for("/outside")),
        ["201", "201", "400", "409"]
    );
}

#[idempotent]
async fn attributed(runs: web::Data<Counter>, req: actix_web::HttpRequest) -> HttpResponse {
    counted(&runs, &req).await;
    HttpResponse::Created().body("attributed")
}

/// The attribute is inside any middleware, `TracingLogger` on the `App` or a scope included:
/// its replays and conflicts are in the request's root span, with their status.
#[actix_web::test]
async fn an_attributed_handlers_replays_and_conflicts_are_in_the_root_span() {
    let traces = Traces::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone()).app_data(idem.clone()).service(
            web::scope("/attributed")
                .wrap(TracingLogger::default())
                .route("", web::post().to(attributed)),
        );
    });
    assert_eq!(
        call("/attributed", "k1", "attr-first", "a")
            .send(server.addr)
            .await
            .status,
        201
    );
    assert!(call("/attributed", "k1", "attr-replay", "a")
        .send(server.addr)
        .await
        .replayed());
    let conflict = call("/attributed", "k1", "attr-conflict", "b")
        .send(server.addr)
        .await;
    assert_error(&conflict, 409, "idempotency_conflict");
    for (id, outcome) in [("attr-replay", "replayed"), ("attr-conflict", "conflict")] {
        let events = traces.outcomes_of(id);
        let (_, chain) = events.iter().find(|(o, _)| o == outcome).expect(outcome);
        assert!(root_id(chain).is_some(), "{id}: outside the root span");
    }
    let mut statuses: Vec<_> = (traces.roots_for("/attributed").iter())
        .filter_map(|s| s.fields.get("http.status_code").cloned())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["201", "201", "409"]);
    assert_eq!(runs.get(), 1);
}

/// A run that goes on after its client went away still logs in its request's root span.
#[actix_web::test]
async fn a_run_whose_client_went_away_logs_in_its_requests_root_span() {
    let traces = Traces::installed();
    let (server, runs) = server::<DefaultRootSpanBuilder>("/gone", true);
    // Held until the server has let go of its reset client: only then does it run alone.
    call("/gone", "k1", "gone-first", "a")
        .header(HOLD, "gone-first")
        .send_and_reset(server.addr, || runs.get() == 1)
        .await;
    until_orphaned(server.addr, &call("/gone", "k1", "gone-waiting", "a")).await;
    release("gone-first");
    let executed = || {
        let events = traces.outcomes_of("gone-first");
        events.into_iter().find(|(o, _)| o == "executed")
    };
    eventually(|| executed().is_some()).await;
    let (_, chain) = executed().unwrap();
    assert!(
        root_id(&chain).is_some(),
        "outside the root span: {chain:?}"
    );
    assert!(call("/gone", "k1", "gone-retry", "a")
        .send(server.addr)
        .await
        .replayed());
    assert_eq!(runs.get(), 1);
}

/// With `TracingLogger` inside the layer, what the layer answers itself (a replay, a
/// conflict, a refusal) never reaches the logger: no root span, no status logged, and the
/// layer's events stand outside any request span. Only runs are logged by it.
#[actix_web::test]
async fn inside_the_layer_tracing_logger_sees_only_the_runs() {
    let traces = Traces::installed();
    let (server, runs) = server::<DefaultRootSpanBuilder>("/inside", false);
    let first = call("/inside", "k1", "in-first", "a")
        .send(server.addr)
        .await;
    assert_eq!(first.status, 201);
    let replay = call("/inside", "k1", "in-replay", "a")
        .send(server.addr)
        .await;
    assert!(replay.replayed());
    let conflict = call("/inside", "k1", "in-conflict", "b")
        .send(server.addr)
        .await;
    assert_error(&conflict, 409, "idempotency_conflict");
    assert_eq!(runs.get(), 1);

    let roots = traces.roots_for("/inside");
    assert_eq!(roots.len(), 1, "only the run has a root span: {roots:?}");
    for id in ["in-replay", "in-conflict"] {
        let events = traces.outcomes_of(id);
        assert!(!events.is_empty(), "{id} logged nothing");
        for (o, chain) in events {
            assert_eq!(root_id(&chain), None, "{id}: {o} in a root span");
        }
    }
}

/// `TracingLogger`'s request id is its own uuid, which the client never sees; the layer's is
/// the one it answers in `X-Request-ID` and its error bodies. A root span that records the
/// layer's id too (`RequestId::of` makes it once per request, and the layer then uses it) lets
/// a reader find a client's request id on every line of its log.
struct WithLayerId;

impl RootSpanBuilder for WithLayerId {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = RequestId::of(request.request());
        tracing_actix_web::root_span!(request, x_request_id = %id)
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[actix_web::test]
async fn a_root_span_can_carry_the_request_id_the_layer_answers_with() {
    let traces = Traces::installed();
    let (server, _runs) = server::<WithLayerId>("/correlated", true);
    let answered = |res: &RawResponse| res.header("x-request-id").unwrap().to_owned();
    // A fresh id as well as a client's own.
    let first = RawRequest::post("/correlated")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", "k1")
        .send(server.addr)
        .await;
    let replay = call("/correlated", "k1", "corr-replay", "")
        .send(server.addr)
        .await;
    assert!(replay.replayed());
    assert_eq!(answered(&replay), "corr-replay");
    let conflict = call("/correlated", "k1", "corr-conflict", "b")
        .send(server.addr)
        .await;
    let body = conflict.json();
    assert_eq!(body["request_id"], "corr-conflict");

    for res in [&first, &replay, &conflict] {
        let id = answered(res);
        let events = traces.outcomes_of(&id);
        assert!(!events.is_empty(), "{id} logged nothing");
        for (o, chain) in events {
            let root = chain.iter().find(|s| s.name == "HTTP request");
            let root = root.unwrap_or_else(|| panic!("{id}: {o} outside the root span"));
            assert_eq!(root.fields.get("x_request_id"), Some(&id), "{o}: {root:?}");
        }
    }
}
