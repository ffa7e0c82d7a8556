//! The validated key, for handlers that want it.

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};

use idem_core::{ErrorFormat, IdempotencyError, Overrides};

use crate::config::IdempotencyConfig;
use crate::handler::key_origin;
use crate::render::error_response;
use crate::request_id::RequestId;

/// What the layer hands the handler of a keyed request it runs: the request's id and key
/// (for the [`RequestId`] and [`IdempotencyKey`](IdempotencyKey) extractors), and the
/// endpoint's error format (for the extractors that answer the layer's errors). It also
/// marks the request as taken in charge, so that an inner layer steps aside.
pub(crate) struct Admitted {
    pub(crate) request_id: RequestId,
    pub(crate) key: IdempotencyKey,
    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "only the Transaction extractor reads it")
    )]
    pub(crate) format: Option<ErrorFormat>,
    /// Whether the run holds its key's claim: `false` when it runs unprotected, the store
    /// having failed under `fail_open`.
    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "only the Transaction extractor reads it")
    )]
    pub(crate) claimed: bool,
    /// Whether the store of the layer that admitted the run lends transactions: the
    /// application's settings that layer read, which may not be those of the handler's scope
    /// (a middleware reads its app's before routing).
    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "only the Transaction extractor reads it")
    )]
    pub(crate) lends: bool,
}

/// Marks a request carrying the application's key header that a layer served but passed on
/// without taking a key: the key extractors then know a layer serves it. A request whose key
/// is the application's header, passed on for want of it, needs no mark: it carries none.
#[derive(Clone, Copy)]
pub(crate) enum Passed {
    /// For want of its endpoint's key (read from another header than the application's, or
    /// from the body).
    Keyless,
    /// For its method, one whose keys an [`Idempotency`](crate::Idempotency) middleware
    /// leaves alone: a handler inside that takes the key can never get one on this method, a
    /// fault of the server's. With the header the request carries its key in (the
    /// middleware's own, which may not be the application's).
    Method(&'static str),
}

/// The request's validated idempotency key, as an extractor.
///
/// Available in `#[idempotent]` handlers, and in handlers inside an
/// [`Idempotency`](crate::Idempotency) middleware (on the methods whose keys it honours), on
/// requests that carry a key; take `Option<IdempotencyKey>` where the key is optional. A
/// handler under no layer that takes it, or on a method its middleware leaves alone, is a
/// fault of the server's: a request with a key is answered 500 (see [`NoIdempotencyKey`]),
/// and logged.
///
/// ```
/// use actix_web::{post, HttpResponse};
/// use idem_actix::{idempotent, IdempotencyKey};
///
/// #[post("/v1/charges")]
/// #[idempotent(required)]
/// async fn charge(key: IdempotencyKey) -> HttpResponse {
///     // Pass the key on to a downstream API that deduplicates too.
///     HttpResponse::Created().body(format!("charged once for {}", key.as_str()))
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(pub(crate) idem_core::ClientKey);

impl IdempotencyKey {
    /// The key, unquoted.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for IdempotencyKey {
    type Target = idem_core::ClientKey;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The request has no idempotency key, or no idempotency layer serves its handler.
///
/// It answers 400 `idempotency_key_missing`, rendered as the application renders the layer's
/// errors ([`IdempotencyConfig::with_error_renderer`](crate::IdempotencyConfig::with_error_renderer)),
/// with the request's `X-Request-ID`. A request that carries the application's key header,
/// to a handler that no layer serves (neither `#[idempotent]` nor inside an
/// [`Idempotency`](crate::Idempotency) middleware), is a fault of the server's: 500
/// `idempotency_layer_missing`, and the log names the request (at `error` the first time for its route).
#[derive(Clone)]
pub struct NoIdempotencyKey {
    config: IdempotencyConfig,
    request_id: RequestId,
    cause: Cause,
}

/// Why a handler that takes the key gets none.
#[derive(Clone)]
enum Cause {
    /// The request has none: the client's to send.
    Missing,
    /// It carries one, but no layer serves the handler (logged when found).
    NoLayer,
    /// It carries one on a method the middleware around the handler leaves alone: what the
    /// log says when the refusal is answered, at `error` the first time for its route, then
    /// at `debug` (`loud`).
    Method { log: String, loud: bool },
}

impl std::fmt::Debug for NoIdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoIdempotencyKey")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for NoIdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cause {
            Cause::Missing => f.write_str("this request has no idempotency key; send one, or take Option<IdempotencyKey>"),
            Cause::NoLayer => f.write_str("this request's idempotency key was not taken: no idempotency layer serves its handler; annotate it with #[idempotent] or wrap it in Idempotency"),
            Cause::Method { .. } => f.write_str("this request's idempotency key was not taken: the Idempotency middleware around its handler leaves its method alone; add the method with Idempotency::with_methods, or take Option<IdempotencyKey>"),
        }
    }
}

impl ResponseError for NoIdempotencyKey {
    fn status_code(&self) -> StatusCode {
        match self.cause {
            Cause::Missing => StatusCode::BAD_REQUEST,
            Cause::NoLayer | Cause::Method { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match &self.cause {
            Cause::Missing => self.response_under(Overrides::NONE, false),
            Cause::NoLayer => self.render(&IdempotencyError::LayerMissing, None),
            Cause::Method { log, loud } => {
                // Logged here, where the refusal is answered: a handler taking
                // `Option<IdempotencyKey>` gets `None` for the ignored key, as documented.
                unserved(*loud, log);
                self.render(&IdempotencyError::LayerMissing, None)
            }
        }
    }
}

/// Logs `log`, a fault of the server's on a route no layer serves: at `error` the first time
/// for its route (`loud`), then at `debug`.
fn unserved(loud: bool, log: &str) {
    if loud {
        tracing::error!("{log}");
    } else {
        tracing::debug!("{log}");
    }
}

/// The methods of RFC 9110, by which a route no layer serves is named once each.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// The route of `req`, as a fault of the server's found on it is named in the log once (see
/// [`Named`](crate::outage::Named)): by its pattern, and its method where it is a standard
/// one (a method a client makes up would otherwise name the route again, and grow the set of
/// those named, with each request).
pub(crate) fn route(req: &HttpRequest) -> String {
    let pattern = req.match_pattern().unwrap_or_default();
    let method = req.method();
    let standard = STANDARD_METHODS.contains(method);
    let method = if standard { method.as_str() } else { "other" };
    format!("{method} {pattern}")
}

impl NoIdempotencyKey {
    /// The refusal of `req`, whose key (if any) no layer took, to a handler that takes
    /// `taker`.
    pub(crate) fn of(req: &HttpRequest, taker: &str) -> Self {
        let config = IdempotencyConfig::of(req).clone();
        let passed = req.extensions().get::<Passed>().copied();
        let first = || (config.outage().unserved).first(route(req));
        let cause = match passed {
            // Marked only when the request carries the middleware's key header.
            Some(Passed::Method(header)) => Cause::Method {
                log: format!(
                    "a handler takes {taker}, and {} {} carries an {header} header, but the Idempotency middleware around it leaves {} alone, so the key is ignored and the handler can never get one: add the method with Idempotency::with_methods, or take Option<IdempotencyKey>",
                    req.method(),
                    req.path(),
                    req.method(),
                ),
                loud: first(),
            },
            _ if !req.headers().contains_key(config.header()) => Cause::Missing,
            Some(Passed::Keyless) => Cause::Missing,
            None => {
                let log = format!(
                    "a handler takes {taker}, and {} {} carries an {} header, but no idempotency layer serves this request: annotate the handler with #[idempotent], or wrap it in Idempotency",
                    req.method(),
                    req.path(),
                    config.header(),
                );
                unserved(first(), &log);
                Cause::NoLayer
            }
        };
        Self {
            cause,
            config,
            request_id: RequestId::of(req),
        }
    }

    /// The answer under an endpoint's `overrides` (and its key function, if it has one):
    /// where it reads keys named (its key header, its body's member or its key function), in
    /// its error format. The extractor knows only the application's settings; the layer,
    /// which knows the endpoint's, answers with this instead.
    pub(crate) fn response_under(&self, overrides: Overrides, key_function: bool) -> HttpResponse {
        let policy = overrides.apply_to(*self.config.defaults());
        let error = match key_origin(key_function, &policy) {
            Some(origin) => IdempotencyError::BodyKeyMissing { origin },
            None => IdempotencyError::KeyMissing {
                header: policy.header,
            },
        };
        self.render(&error, policy.error_format)
    }

    /// `error` as this request's answer, in `format`, else the format the application's
    /// defaults name, else by its renderer.
    pub(crate) fn render(
        &self,
        error: &IdempotencyError,
        format: Option<ErrorFormat>,
    ) -> HttpResponse {
        let format = format.or(self.config.defaults().error_format);
        error_response(error, &self.request_id, format, self.config.renderer())
    }

    /// Whether the request carries a key that no layer took: its handler is under none.
    #[cfg(feature = "postgres")]
    pub(crate) fn unserved(&self) -> bool {
        matches!(self.cause, Cause::NoLayer)
    }

    /// Whether the request simply has no key, which is the client's to send: a layer that
    /// passed it on answers this for its endpoint.
    pub(crate) fn missing(&self) -> bool {
        matches!(self.cause, Cause::Missing)
    }
}

impl FromRequest for IdempotencyKey {
    type Error = NoIdempotencyKey;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = req
            .extensions()
            .get::<Admitted>()
            .map(|admitted| admitted.key.clone());
        // The handler may take it as `Option<IdempotencyKey>`: the log names both.
        let taker = "IdempotencyKey (or an Option of it)";
        ready(key.ok_or_else(|| NoIdempotencyKey::of(req, taker)))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody as _;
    use actix_web::test::TestRequest;
    use actix_web::{web, App, HttpResponse};
    use futures_util::FutureExt as _;
    use serde_json::Value;

    use super::*;
    use crate::{IdempotencyConfig, MokaStore, Policy, ProblemJson};

    async fn echo(key: IdempotencyKey) -> HttpResponse {
        HttpResponse::Ok().body(key.to_string())
    }

    /// The answer to a request without a key, to a handler that takes one, under `config`.
    async fn missing_key(config: IdempotencyConfig) -> (u16, String, String, Value) {
        let app = actix_web::test::init_service(
            App::new()
                .app_data(config)
                .route("/echo", web::post().to(echo)),
        )
        .await;
        let res =
            actix_web::test::call_service(&app, TestRequest::post().uri("/echo").to_request())
                .await;
        let header = |name: &str| {
            let value = res.headers().get(name).map(|v| v.to_str().unwrap());
            value.unwrap_or_default().to_owned()
        };
        let (content_type, request_id) = (header("content-type"), header("x-request-id"));
        let status = res.status().as_u16();
        let body = serde_json::from_slice(&actix_web::test::read_body(res).await).unwrap();
        (status, content_type, request_id, body)
    }

    #[actix_web::test]
    async fn a_missing_key_renders_as_the_default_json_envelope() {
        let (status, content_type, request_id, body) =
            missing_key(IdempotencyConfig::new(MokaStore::new())).await;
        assert_eq!((status, content_type.as_str()), (400, "application/json"));
        assert_eq!(body["error"]["code"], "idempotency_key_missing");
        assert_eq!(body["request_id"], request_id.as_str());
        assert!(!request_id.is_empty());
    }

    #[actix_web::test]
    async fn a_missing_key_renders_through_the_configured_renderer() {
        let config = IdempotencyConfig::new(MokaStore::new()).with_error_renderer(ProblemJson);
        let (status, content_type, request_id, body) = missing_key(config).await;
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/problem+json")
        );
        assert_eq!(body["type"], "urn:idem:error:idempotency_key_missing");
        assert_eq!(body["status"], 400);
        assert_eq!(body["request_id"], request_id.as_str());
    }

    /// The format the application's defaults name is the application's: its refusals that
    /// no endpoint answers (a key to a handler no layer serves) are in it too, as those of
    /// its endpoints are, where they were in the default envelope.
    #[test]
    fn a_key_no_layer_takes_is_refused_in_the_format_the_defaults_name() {
        let config = IdempotencyConfig::new(MokaStore::new())
            .with_defaults(Policy::DEFAULT.error_format(ErrorFormat::Problem))
            .unwrap();
        let req = TestRequest::post()
            .app_data(config)
            .insert_header(("Idempotency-Key", "k"))
            .to_http_request();
        let refused = extracted(&req).unwrap_err();
        let res = refused.error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let body = res.into_body().try_into_bytes().unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], idem_core::codes::LAYER_MISSING);
    }

    fn extracted(req: &HttpRequest) -> Result<IdempotencyKey, NoIdempotencyKey> {
        IdempotencyKey::from_request(req, &mut Payload::None)
            .now_or_never()
            .expect("ready at once")
    }

    #[test]
    fn the_key_is_there_for_a_request_the_layer_admitted() {
        let req = TestRequest::post().to_http_request();
        let key = idem_core::ClientKey::parse(b"\"order-1\"", 255).unwrap();
        let request_id = RequestId::peek(&req);
        req.extensions_mut().insert(Admitted {
            request_id,
            key: IdempotencyKey(key),
            format: None,
            claimed: true,
            lends: false,
        });
        assert_eq!(extracted(&req).unwrap().as_str(), "order-1");
    }

    #[test]
    fn without_one_the_handler_gets_a_400_that_says_what_to_do() {
        // A layer passed it on for want of its endpoint's key, though it carries the app's.
        let req = TestRequest::post()
            .insert_header(("Idempotency-Key", "sent-but-not-admitted"))
            .to_http_request();
        req.extensions_mut().insert(Passed::Keyless);
        let missing = extracted(&req).unwrap_err();
        assert_eq!(missing.status_code(), StatusCode::BAD_REQUEST);
        let body = missing
            .error_response()
            .into_body()
            .try_into_bytes()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], idem_core::codes::KEY_MISSING);
        // The client is told which header to send; the hint for the handler's author
        // (`Option<IdempotencyKey>`) is the error's Display, for the log.
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"));
        assert!(missing.to_string().contains("Option<IdempotencyKey>"));
    }
}
