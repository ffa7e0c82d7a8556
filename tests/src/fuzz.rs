//! The checks behind the fuzz targets in `fuzz/`, also run on a deterministic random corpus by
//! `tests/tests/fuzz_smoke.rs`. Each takes arbitrary bytes and panics only on a broken promise.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{test, web, App, HttpResponse};
use idem_actix::{codes, idempotent, Idempotency, IdempotencyConfig, IdempotencyKey, MokaStore};

/// Key parsing: never panics, accepts exactly the keys SPEC.md allows, and a key it accepts
/// keeps every rule and reads the same again in either form.
pub fn key(data: &[u8]) {
    use idem_core::ClientKey;
    let (max, raw) = match data.split_first() {
        Some((&first, rest)) => (usize::from(first) + 1, rest),
        None => (255, data),
    };
    let visible = |bytes: &[u8]| bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    // A bare key: 1 to `max` visible bytes, the first not a quote (which opens the quoted form).
    let bare_valid =
        raw.first() != Some(&b'"') && !raw.is_empty() && raw.len() <= max && visible(raw);
    match ClientKey::parse(raw, max) {
        Ok(key) => {
            let k = key.as_str();
            assert!(
                !k.is_empty() && k.len() <= max,
                "accepted {k:?} with max {max}"
            );
            assert!(visible(k.as_bytes()), "accepted {k:?}");
            if raw.first() != Some(&b'"') {
                assert_eq!(k.as_bytes(), raw, "a bare key is taken as sent");
            }
            // Quoted, with `"` and `\` escaped, it is the same key; and bare too, unless it
            // starts with a quote.
            let mut quoted = vec![b'"'];
            for b in k.bytes() {
                if matches!(b, b'"' | b'\\') {
                    quoted.push(b'\\');
                }
                quoted.push(b);
            }
            quoted.push(b'"');
            assert_eq!(
                ClientKey::parse(&quoted, max).as_ref(),
                Ok(&key),
                "{k:?} quoted"
            );
            if !k.starts_with('"') {
                assert_eq!(
                    ClientKey::parse(k.as_bytes(), max).as_ref(),
                    Ok(&key),
                    "{k:?} bare"
                );
            }
        }
        Err(error) => {
            assert!(!bare_valid, "refused the valid bare key {raw:?}: {error}");
            assert!(!error.to_string().is_empty());
        }
    }
}

#[idempotent]
async fn plain(body: web::Bytes, key: Option<IdempotencyKey>) -> HttpResponse {
    HttpResponse::Created().body(format!("{} {}", body.len(), key.is_some()))
}

#[idempotent(
    required,
    scope = "header:X-Tenant",
    mismatch = "unprocessable",
    errors = "problem",
    max_body = 64,
    max_response = 8
)]
async fn strict(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().body(body)
}

#[idempotent(
    scope = "basic_auth_user",
    mismatch = "replay",
    cache = "2xx",
    per_endpoint
)]
async fn json(body: web::Json<serde_json::Value>) -> HttpResponse {
    HttpResponse::Created().json(body.into_inner())
}

async fn wrapped(body: String) -> HttpResponse {
    HttpResponse::Accepted().body(body)
}

/// The app every input is sent to, with a store of its own.
fn app() -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(IdempotencyConfig::new(
            MokaStore::builder().max_bytes(4 << 20).build(),
        ))
        .route("/plain", web::route().to(plain))
        .route("/strict", web::route().to(strict))
        .route("/json/{id}", web::route().to(json))
        .service(
            web::scope("/mw")
                .wrap(Idempotency::new())
                .default_service(web::to(wrapped)),
        )
}

/// What the checks read of an answer.
struct Answer {
    status: u16,
    replayed: bool,
    body: Vec<u8>,
}

async fn send<S, B>(app: &S, req: actix_http::Request) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = app.call(req).await.expect("the app answers");
    let status = res.status().as_u16();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body = res.into_body().try_into_bytes().map(|b| b.to_vec());
    Answer {
        status,
        replayed,
        body: body.unwrap_or_default(),
    }
}

thread_local! {
    // Leaked: dropping it at thread exit would reach actix's thread locals, gone by then.
    static RUNTIME: &'static actix_web::rt::Runtime =
        Box::leak(Box::new(actix_web::rt::Runtime::new().expect("runtime")));
}

/// The request path: arbitrary method, route, headers, body and body coding through the
/// attribute and the middleware. Never a panic or a 500; every error of the layer carries a
/// stable code. Returns the status of the first answer.
pub fn request(data: &[u8]) -> u16 {
    let mut parts = data.split(|&b| b == 0xff);
    let selector = parts.next().unwrap_or_default();
    let pick = |i: usize| selector.get(i).copied().unwrap_or(0);
    let method = [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::GET,
    ][usize::from(pick(0)) % 5]
        .clone();
    let path = ["/plain", "/strict", "/json/1", "/json/2", "/mw/x"][usize::from(pick(1)) % 5];
    let mut headers = Vec::new();
    for name in [
        "idempotency-key",
        "authorization",
        "x-tenant",
        "x-request-id",
        "content-type",
    ] {
        let Some(value) = parts.next() else { break };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.push((HeaderName::from_static(name), value));
        }
    }
    let body = parts.next().unwrap_or_default().to_vec();
    // After the body, so that an input without it reads as it did before: the coding the body
    // claims, which the layer decodes to read the body as the handler's extractors do.
    if let Some(value) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.push((HeaderName::from_static("content-encoding"), value));
    }
    let make = move || {
        let mut builder = test::TestRequest::default()
            .method(method.clone())
            .uri(path);
        for header in &headers {
            builder = builder.append_header(header.clone());
        }
        builder.set_payload(body.clone()).to_request()
    };
    RUNTIME.with(|runtime| {
        runtime.block_on(async move {
            // A store of its own: an input's outcome is its own, whatever ran before it.
            let app = test::init_service(app()).await;
            // Twice: the second may be a replay, a conflict or a rerun.
            let first = send(&app, make()).await;
            check(first.status, &first.body);
            assert!(!first.replayed, "a replay from an empty store");
            let second = send(&app, make()).await;
            check(second.status, &second.body);
            if second.replayed {
                assert_eq!(
                    (second.status, &second.body),
                    (first.status, &first.body),
                    "a replay is the first answer"
                );
            }
            first.status
        })
    })
}

/// The layer's codes of 4xx answers (its 5xx ones fail the check by their status).
const CODES: [&str; 7] = [
    codes::KEY_MISSING,
    codes::KEY_INVALID,
    codes::SCOPE_MISSING,
    codes::CONFLICT,
    codes::BODY_INVALID,
    codes::BODY_TOO_LARGE,
    codes::RESPONSE_TOO_LARGE,
];

fn check(status: u16, body: &[u8]) {
    assert_ne!(status, 500, "a 500: {}", String::from_utf8_lossy(body));
    assert!(status < 500, "unexpected {status}");
    let text = String::from_utf8_lossy(body);
    if let Some(code) = layer_code(body) {
        assert!(
            CODES.contains(&code.as_str()),
            "unknown code {code} in {text}"
        );
    } else {
        // Anything else that is refused is actix's own answer (404, 405, a bad JSON body).
        assert!(
            status < 400 || matches!(status, 400 | 404 | 405 | 415),
            "{status} without a stable code: {text}"
        );
    }
}

fn layer_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value
        .pointer("/error/code")
        .or_else(|| value.get("code"))?
        .as_str()?;
    code.starts_with("idempotency_").then(|| code.to_owned())
}

/// A cheap deterministic generator for corpus-free smoke runs.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Up to `max` random bytes, biased towards the bytes that matter to the parsers.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        const INTERESTING: &[u8] = b"\"\\ \t;=,:-_./{}[]0aZ~\x7f\x80\xff\x00";
        let len = (self.next_u64() as usize) % (max + 1);
        (0..len)
            .map(|_| {
                let r = self.next_u64();
                if r.is_multiple_of(3) {
                    INTERESTING[(r >> 8) as usize % INTERESTING.len()]
                } else {
                    (r >> 16) as u8
                }
            })
            .collect()
    }
}
