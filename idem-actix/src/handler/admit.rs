//! Admission: what a request needs before its key can be claimed. The key and scope are
//! checked, the body read (bounded) and the request fingerprinted; a request without a key
//! goes straight to the handler.
//!
//! A key from a header is checked before the body is read, so that a bad key costs no read;
//! a key from the body (a JSON member, or a key function) is looked for once the body is in.

use std::borrow::Cow;

use actix_web::dev;
use actix_web::error::PayloadError;
use actix_web::http::{header, Method};
use actix_web::mime;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use idem_core::{
    Body, BodyError, BodyForm, ClientKey, ErrorFormat, Fingerprint, IdempotencyError, JsonBody,
    KeyError, KeyOrigin, KeySource, Policy, StoreKey,
};

use super::record::rebuilt;
use super::{key_origin, Endpoint};
use crate::config::IdempotencyConfig;
use crate::extract::{Admitted, Passed};
use crate::functions::{FingerprintFunction, Functions, ReplayFunction};
use crate::metrics;
use crate::render::error_response;
use crate::request_id::RequestId;

/// What the layer makes of a request.
#[allow(
    clippy::large_enum_variant,
    reason = "lives in the one boxed future of a keyed request; boxing the keyed variant would cost a second allocation"
)]
pub(crate) enum Admission {
    /// No key, and none required: run the handler as if there were no layer. With whether
    /// the endpoint finds keys by a key function, for the answer to a handler that refuses
    /// the request for want of a key.
    Pass(HttpRequest, dev::Payload, bool),
    /// The layer answers itself; the handler does not run.
    Answer(HttpRequest, HttpResponse),
    /// A keyed request, ready to claim.
    Keyed(Keyed),
}

/// A keyed request: everything its claim ([`claim`], or [`execute`]) and its run need.
pub(crate) struct Keyed {
    pub(super) config: IdempotencyConfig,
    pub(super) policy: Policy,
    pub(super) store_key: StoreKey,
    pub(super) fingerprint: Fingerprint,
    /// Called on a replay: the endpoint's hook, else the application's.
    pub(super) on_replay: Option<ReplayFunction>,
    pub(super) span: tracing::Span,
    pub(super) run: Run,
}

/// What the handler of a keyed request needs, once its key is claimed.
pub(super) struct Run {
    pub(super) key: ClientKey,
    pub(super) request_id: RequestId,
    /// How the endpoint renders the layer's errors, if it names a format.
    pub(super) format: Option<ErrorFormat>,
    /// Whether the layer's store lends transactions.
    pub(super) lends: bool,
    pub(super) req: HttpRequest,
    pub(super) body: Bytes,
}

fn reject(
    req: HttpRequest,
    policy: &Policy,
    config: &IdempotencyConfig,
    request_id: &RequestId,
    error: IdempotencyError,
) -> Admission {
    Admission::Answer(req, refusal(policy, config, request_id, error))
}

/// The layer's answer to a request it refuses, counted and logged.
fn refusal(
    policy: &Policy,
    config: &IdempotencyConfig,
    request_id: &RequestId,
    error: IdempotencyError,
) -> HttpResponse {
    tracing::debug!(outcome = "rejected", %request_id, code = error.code(), %error);
    metrics::rejected(error.code());
    error_response(&error, request_id, policy.error_format, config.renderer())
}

/// Whether a request goes straight to the handler, with no store work at all: it has no key
/// header, the endpoint does not read its key elsewhere, and does not require one. The cheap
/// test every request takes first.
pub(crate) fn bypasses(endpoint: &Endpoint, functions: &Functions, req: &HttpRequest) -> bool {
    let config = IdempotencyConfig::of(req);
    endpoint.check_registered(config, req);
    let defaults = config.defaults();
    let required = endpoint.overrides.required.unwrap_or(defaults.required);
    // A header the endpoint names is where its keys are read (see `Overrides::apply_to`).
    let source = match (endpoint.overrides.key_source, endpoint.overrides.header) {
        (Some(source), _) => source,
        (None, Some(_)) => KeySource::Header,
        (None, None) => defaults.key_source,
    };
    let from_header = functions.key.is_none() && source == KeySource::Header;
    // An endpoint whose header is not a header name is not bypassed: its admission logs why.
    let absent = |name| !req.headers().contains_key(name);
    let bypassed = !required && from_header && endpoint.header(config).is_some_and(absent);
    if bypassed && endpoint.overrides.header.is_some() {
        // The application's header may be on it, and must not be taken for a key that no
        // layer serves.
        passed(req, Passed::Keyless);
    }
    bypassed
}

/// Marks `req` as served by a layer that passes it on without taking a key, and why.
pub(crate) fn passed(req: &HttpRequest, why: Passed) {
    req.extensions_mut().insert(why);
}

/// Whether an outer layer (the middleware around an attributed handler) has the request in
/// charge already: this one then steps aside.
pub(crate) fn taken(req: &HttpRequest) -> bool {
    req.extensions().contains::<Admitted>()
}

/// The error format of the endpoint that admitted `req`, if it names one.
#[cfg(feature = "postgres")]
pub(crate) fn admitted_format(req: &HttpRequest) -> Option<ErrorFormat> {
    req.extensions().get::<Admitted>()?.format
}

/// Whether `req` runs under a layer without its key's claim: the store failed, and the
/// endpoint fails open.
#[cfg(feature = "postgres")]
pub(crate) fn unprotected(req: &HttpRequest) -> bool {
    req.extensions()
        .get::<Admitted>()
        .is_some_and(|admitted| !admitted.claimed)
}

/// Whether the store of the layer that admitted `req` lends transactions.
#[cfg(feature = "postgres")]
pub(crate) fn admitted_lends(req: &HttpRequest) -> bool {
    req.extensions()
        .get::<Admitted>()
        .is_some_and(|admitted| admitted.lends)
}

/// Validates the key and scope, reads the body and fingerprints the request.
///
/// A key from a header is checked, and its scope found, before the body is read, so that a
/// bad key costs no read; a key from the body is looked for once the body is in. Either way
/// the body is read at one await point, so that this future holds one set of locals.
pub(crate) async fn admit(
    endpoint: &Endpoint,
    functions: Functions,
    req: HttpRequest,
    payload: dev::Payload,
) -> Admission {
    let config = IdempotencyConfig::of(&req).clone();
    let policy = endpoint.overrides.apply_to(*config.defaults());
    endpoint.check(&policy, &config);
    let origin = key_origin(functions.key.is_some(), &policy);
    let (request_id, from_header) = match origin {
        Some(_) => (RequestId::peek(&req), None),
        None => match header_key(endpoint, &functions, &config, &policy, &req) {
            Ok((key, store_key, request_id)) => (request_id, Some((key, store_key))),
            Err(None) => return Admission::Pass(req, payload, false),
            Err(Some(res)) => return Admission::Answer(req, res),
        },
    };
    // Its key checked (a missing or invalid one refused as any is), as far as it can be
    // without its body: its answer, a protocol switch or a tunnel, is never recorded, and it
    // goes to the handler as it came, unclaimed.
    if tunnels(&req) {
        return Admission::Pass(req, payload, functions.key.is_some());
    }
    let body = match read_body(&req, payload, policy.max_body).await {
        Ok(body) => body,
        Err(ReadError::Payload(e)) => {
            // Answered as every refusal of the layer is (envelope, code, `no-store`): a client
            // that half-closed, or a proxy that cut the body off, may still read it.
            let error = BodyError::Incomplete {
                reason: incomplete(&e),
            };
            return reject(req, &policy, &config, &request_id, error.into());
        }
        Err(ReadError::TooLarge) => {
            let error = IdempotencyError::BodyTooLarge {
                limit: policy.max_body,
            };
            return reject(req, &policy, &config, &request_id, error);
        }
    };
    // The body as the layer reads it, where it reads it: decoded, as the handler's extractors
    // decode it. The handler still gets it as it came.
    let reads = origin.is_some()
        || functions.fingerprint.is_some()
        || policy.fingerprint != BodyForm::Bytes;
    let decoded = match reads.then(|| decoded(&req, &body, policy.max_body)) {
        Some(Ok(decoded)) => decoded,
        Some(Err(e)) => return reject(req, &policy, &config, &request_id, e),
        None => None,
    };
    let read = decoded.as_ref().unwrap_or(&body);
    let (key, store_key, json) = match (from_header, origin) {
        (Some((key, store_key)), _) => (key, store_key, None),
        (None, Some(origin)) => match body_key(origin, &functions, &policy, &req, read) {
            Ok((key, json)) => match store_key(endpoint, &req, &policy, &functions, &key) {
                Ok(store_key) => (key, store_key, json),
                Err(e) => return reject(req, &policy, &config, &request_id, e),
            },
            Err(None) => return Admission::Pass(req, rebuilt(body), functions.key.is_some()),
            Err(Some(e)) => return reject(req, &policy, &config, &request_id, e),
        },
        // A request whose key is not in the body has it from its header.
        (None, None) => return Admission::Pass(req, rebuilt(body), false),
    };
    let fingerprint = fingerprint(&req, read, json.as_ref(), &policy, functions.fingerprint);
    drop(json);
    drop(decoded);
    let fingerprint = match fingerprint {
        Ok(fingerprint) => fingerprint,
        Err(e) => return reject(req, &policy, &config, &request_id, e.into()),
    };
    keyed(
        config,
        policy,
        functions,
        store_key,
        fingerprint,
        key,
        request_id,
        req,
        body,
    )
}

/// Whether `req` has the rest of its connection for its payload, as actix-web's HTTP/1 decoder
/// gives it to a WebSocket handshake (`Upgrade: websocket`, its body not chunked) and to a
/// `CONNECT` without a body of its own: a payload that ends only when the client closes the
/// connection, so that reading it to its end would hold the answer back for good. Only a GET
/// is a handshake (RFC 6455): another method that says `Upgrade: websocket` is admitted as any
/// request is, so that a header cannot take it past the layer.
fn tunnels(req: &HttpRequest) -> bool {
    let headers = req.headers();
    // Any of its `Upgrade` lines, as the decoder reads them.
    let websocket = req.method() == Method::GET
        && (headers
            .get_all(header::UPGRADE)
            .filter_map(|v| v.to_str().ok()))
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    // A length of 0, which the decoder drops, is none: read as a number, as the decoder
    // reads it (`00` is 0).
    let connect = req.method() == Method::CONNECT
        && (headers.get(header::CONTENT_LENGTH)).is_none_or(|v| {
            (v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()) == Some(0)
        });
    (websocket || connect) && !headers.contains_key(header::TRANSFER_ENCODING)
}

/// The key of a request whose key is in a header, its store key and the request's id; or
/// `Err(None)` when it has none and needs none (it goes to the handler), or the refusal.
#[allow(
    clippy::result_large_err,
    reason = "returned once per request, straight into the admission, which holds the response anyway"
)]
fn header_key(
    endpoint: &Endpoint,
    functions: &Functions,
    config: &IdempotencyConfig,
    policy: &Policy,
    req: &HttpRequest,
) -> Result<(ClientKey, StoreKey, RequestId), Option<HttpResponse>> {
    // No key is read through a header that is not a header name (`Endpoint::check` has
    // logged the error): the request is answered as one without a key.
    let mut values = endpoint
        .header(config)
        .map(|name| req.headers().get_all(name))
        .into_iter()
        .flatten();
    let Some(raw) = values.next() else {
        if policy.required {
            let error = IdempotencyError::KeyMissing {
                header: policy.header,
            };
            let id = RequestId::of(req);
            return Err(Some(refusal(policy, config, &id, error)));
        }
        return Err(None);
    };
    // Kept with the request only if the handler runs: a replay or a refusal needs it just
    // for its own response.
    let request_id = RequestId::peek(req);
    // A scope read from the key's own header scopes nothing: whoever sends the key sends it.
    // Refused where both are known (the attribute and `Policy::check` refuse what they can
    // see; an endpoint's scope and the application's key header meet only here), logged by
    // `Endpoint::check`; and before the key's syntax, which a credential (`Bearer ...`) breaks,
    // so that the client is not blamed for the server's settings.
    if functions.scope.is_none() {
        if let Err(e) = policy.check_scope_header() {
            let error = IdempotencyError::Misconfigured(e);
            return Err(Some(refusal(policy, config, &request_id, error)));
        }
    }
    let parsed = match values.next() {
        Some(_) => Err(KeyError::Multiple),
        None => ClientKey::parse(raw.as_bytes(), policy.key_max_len),
    };
    let key = match parsed {
        Ok(key) => key,
        Err(reason) => {
            let error = IdempotencyError::KeyInvalid {
                header: policy.header,
                reason,
            };
            return Err(Some(refusal(policy, config, &request_id, error)));
        }
    };
    match store_key(endpoint, req, policy, functions, &key) {
        Ok(store_key) => Ok((key, store_key, request_id)),
        Err(e) => Err(Some(refusal(policy, config, &request_id, e))),
    }
}

/// The key a request's body holds (at the endpoint's JSON Pointer, or as its key function
/// finds it), with the body parsed as JSON when the key was read from it; or `Err(None)`
/// when there is none and none is required (the request goes to the handler as it is), or
/// the refusal.
fn body_key<'b>(
    origin: KeyOrigin,
    functions: &Functions,
    policy: &Policy,
    req: &HttpRequest,
    body: &'b Bytes,
) -> Result<(ClientKey, Option<JsonBody<'b>>), Option<IdempotencyError>> {
    // A body a key function reads is parsed (if its fingerprint needs it) only once it has a
    // key: without one, the request goes to the handler as it is.
    let (found, json) = match origin {
        KeyOrigin::Json(pointer) => {
            let json = JsonBody::parse(body).map_err(|e| Some(e.into()))?;
            let found = json
                .text_at(pointer)
                .map(|text| text.map(Cow::into_owned))
                .map_err(|found| KeyError::NotText { found });
            (found, Some(json))
        }
        _ => (Ok(functions.key.and_then(|f| f(req, body))), None),
    };
    let invalid = |reason| Some(IdempotencyError::BodyKeyInvalid { origin, reason });
    match found {
        Ok(Some(text)) => match key_of_text(&text, policy.key_max_len) {
            Ok(key) => Ok((key, json)),
            Err(reason) => Err(invalid(reason)),
        },
        Ok(None) if policy.required => Err(Some(IdempotencyError::BodyKeyMissing { origin })),
        Ok(None) => Err(None),
        Err(reason) => Err(invalid(reason)),
    }
}

/// A keyed request, ready to claim.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of `Keyed`, gathered by the two admissions"
)]
fn keyed(
    config: IdempotencyConfig,
    policy: Policy,
    functions: Functions,
    store_key: StoreKey,
    fingerprint: Fingerprint,
    key: ClientKey,
    request_id: RequestId,
    req: HttpRequest,
    body: Bytes,
) -> Admission {
    let span = tracing::debug_span!("idempotency", key = %key, request_id = %request_id);
    let on_replay = functions.on_replay.or(config.replay_hook());
    let format = policy.error_format;
    let lends = config.lends_transactions();
    Admission::Keyed(Keyed {
        config,
        policy,
        store_key,
        fingerprint,
        on_replay,
        span,
        run: Run {
            key,
            request_id,
            format,
            lends,
            req,
            body,
        },
    })
}

/// The store key of `key`, in the request's scope (and route, where keys are per endpoint).
fn store_key(
    endpoint: &Endpoint,
    req: &HttpRequest,
    policy: &Policy,
    functions: &Functions,
    key: &ClientKey,
) -> Result<StoreKey, IdempotencyError> {
    let scope = crate::scope::resolve(req, policy.scope, functions.scope)?;
    // A named endpoint's keys are kept under its name, whatever its route.
    let route = match (policy.per_endpoint, policy.endpoint_name) {
        (false, _) => None,
        (true, Some(name)) => Some(Cow::Borrowed(name)),
        (true, None) => {
            let pattern = (!endpoint.by_path).then(|| req.match_pattern()).flatten();
            Some(Cow::Owned(format!(
                "{} {}",
                req.method(),
                pattern.as_deref().unwrap_or(routed_path(req))
            )))
        }
    };
    Ok(StoreKey::new(&scope, route.as_deref(), key))
}

/// `req`'s path as actix routes it: with the percent-escapes of characters other than `%`, `/`
/// and `+` decoded (`/v1/%63alls` is `/v1/calls`), so that a path spelled two ways is one
/// endpoint to the layer, as it is one route to the app. (Its fingerprint keeps the path as
/// sent: see [`fingerprint`].)
fn routed_path(req: &HttpRequest) -> &str {
    req.match_info().as_str()
}

/// A key read from a request's body, under the key rules. It is taken as it is: a key that
/// starts with a quote is quoted first, so that a body's key is never unquoted as a
/// header's is.
fn key_of_text(text: &str, max_len: usize) -> Result<ClientKey, KeyError> {
    if !text.starts_with('"') {
        return ClientKey::parse(text.as_bytes(), max_len);
    }
    let quoted = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
    ClientKey::parse(quoted.as_bytes(), max_len)
}

/// The fingerprint of `req`, whose body is `body` (parsed already as `json` when the key
/// was read from it). The default (bytes, no header, no function) is the plain fingerprint.
fn fingerprint(
    req: &HttpRequest,
    body: &Bytes,
    json: Option<&JsonBody<'_>>,
    policy: &Policy,
    function: Option<FingerprintFunction>,
) -> Result<Fingerprint, BodyError> {
    // The path as sent: actix's decoded one is lossy (an escape that is no UTF-8 becomes
    // U+FFFD, so `/a/%FF` and `/a/%FE` would be one request), and a path spelled two ways is
    // at worst a mismatch, never another request's replay.
    let (method, path, query) = (req.method().as_str(), req.path(), req.query_string());
    if function.is_none()
        && policy.fingerprint == BodyForm::Bytes
        && policy.fingerprint_headers.is_empty()
    {
        return Ok(Fingerprint::new(method, path, query, body));
    }
    let headers = policy
        .fingerprint_headers
        .iter()
        .map(|&name| (name, req.headers().get_all(name).map(|v| v.as_bytes())));
    let custom;
    let parsed;
    let body = match (function, policy.fingerprint) {
        (Some(f), _) => {
            custom = f(req, body).ok_or(BodyError::Unreadable)?;
            Body::Custom(&custom)
        }
        // Only a body sent as JSON (or with no type) that is JSON is read as JSON (as is one
        // the key was read from, and no body, which is no document whatever its type): another is
        // compared as sent, and reaches the handler, whose extractors answer it as they would
        // without the layer (and a form that parses as JSON, `1.0`, is not the JSON `1`).
        (None, BodyForm::Json) => {
            let json = match json {
                Some(json) => Some(json),
                None if body.is_empty() || sent_as_json(req) => {
                    parsed = JsonBody::parse(body).ok();
                    parsed.as_ref()
                }
                None => None,
            };
            match json {
                Some(json) => Body::Json {
                    body: json,
                    ignore: policy.fingerprint_ignore,
                },
                None => Body::Bytes(body),
            }
        }
        // Only a body sent as a form is read as one: another (JSON sent to an endpoint that
        // compares forms) is compared as sent, as a form's decoding reads bodies alike that
        // are not (`+` is a space in a form, not in JSON).
        (None, BodyForm::Form) if sent_as_form(req) => Body::Form(body),
        (None, _) => Body::Bytes(body),
    };
    Ok(Fingerprint::canonical(method, path, query, body, headers))
}

/// Whether `req`'s body may be JSON by its type: sent as JSON (`application/json`, or a type
/// with the `+json` suffix, as actix's `web::Json` takes it by default), or with no type.
fn sent_as_json(req: &HttpRequest) -> bool {
    match req.mime_type() {
        Ok(Some(mime)) => mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Whether `req`'s body is sent as a form (`application/x-www-form-urlencoded`), as actix's
/// `web::Form` takes it, in UTF-8 (no charset, or that one). actix decodes a form in another
/// charset from it before its percent-escapes, so that a raw byte and its escape are two
/// values there, which the form's canonical reading would take alike: such a body is compared
/// as sent.
fn sent_as_form(req: &HttpRequest) -> bool {
    req.content_type()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        && req.encoding().is_ok_and(|e| e.name() == "UTF-8")
}

/// `body` decoded from the content coding its request names, as the handler's extractors
/// decode it, up to `limit` bytes decoded; `None` when it names none. It is decoded by
/// actix-web's own decoder, so in the codings this build's actix-web decodes (`gzip` and
/// `deflate` with its `compress-gzip` feature, `br` with `compress-brotli`, `zstd` with
/// `compress-zstd`: all three are default features) and by its rules (one gzip member, one
/// zlib stream, nothing after it). A coding it hands on undecoded (`x-gzip`, several codings,
/// one whose feature is off), or a body its decoder refuses, cannot be read.
fn decoded(
    req: &HttpRequest,
    body: &Bytes,
    limit: usize,
) -> Result<Option<Bytes>, IdempotencyError> {
    let Some(value) = req.headers().get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let coding = named(value);
    // Parsed as actix parses it: a value it cannot parse is handed on as it came.
    let parsed = value.to_str().ok().and_then(|v| v.parse().ok());
    let parsed = match parsed {
        _ if coding.is_empty() => return Ok(None),
        Some(header::ContentEncoding::Identity) => return Ok(None),
        Some(parsed) if actix_decodes(parsed) => parsed,
        _ => {
            let decodes = actix_decoded_codings();
            return Err(BodyError::Encoded { coding, decodes }.into());
        }
    };
    match actix_decoded(value, parsed, body, limit) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(Decoding::TooLarge) => Err(IdempotencyError::BodyTooLarge { limit }),
        Err(Decoding::Invalid) => Err(BodyError::Undecodable { coding }.into()),
    }
}

/// The coding `value` names, for a refusal: lowercase, and its first [`NAMED`] characters only, so
/// that a client cannot have the server answer (and log) as much text of its choosing as a
/// header holds.
fn named(value: &header::HeaderValue) -> String {
    let coding = String::from_utf8_lossy(value.as_bytes());
    let coding = coding.trim();
    match coding.char_indices().nth(NAMED) {
        Some((end, _)) => format!("{}...", coding[..end].to_ascii_lowercase()),
        None => coding.to_ascii_lowercase(),
    }
}

/// How much of a coding a refusal names.
const NAMED: usize = 32;

/// Why actix-web's decoder gave no body.
enum Decoding {
    /// Decoded, it is longer than the limit.
    TooLarge,
    /// Its decoder refused it.
    Invalid,
}

/// `body` as actix-web's `Bytes` extractor reads it with `Content-Encoding: value` (which
/// parses to `coding`), limited to `limit` bytes, handed over in [`pieces`](piece) its
/// decoder decodes in place, so that it is read at once.
fn actix_decoded(
    value: &header::HeaderValue,
    coding: header::ContentEncoding,
    body: &Bytes,
    limit: usize,
) -> Result<Bytes, Decoding> {
    use actix_web::FromRequest as _;
    use futures_util::FutureExt as _;
    let (req, _) = actix_web::test::TestRequest::post()
        .insert_header((header::CONTENT_ENCODING, value.clone()))
        .app_data(actix_web::web::PayloadConfig::new(limit))
        .to_http_parts();
    let (body, piece) = (body.clone(), piece(coding));
    let pieces = (0..body.len())
        .step_by(piece)
        .map(move |at| Ok::<_, PayloadError>(body.slice(at..body.len().min(at + piece))));
    let mut payload: dev::Payload = dev::Payload::Stream {
        payload: Box::pin(futures_util::stream::iter(pieces)),
    };
    match Bytes::from_request(&req, &mut payload).now_or_never() {
        Some(Ok(decoded)) => Ok(decoded),
        Some(Err(error)) if matches!(error.as_error(), Some(PayloadError::Overflow)) => {
            Err(Decoding::TooLarge)
        }
        Some(Err(_)) => Err(Decoding::Invalid),
        // Never with the pieces above: each is decoded in place. An actix-web that decoded
        // less in place would meet this on every compressed body the layer reads.
        None => {
            tracing::error!(
                "actix-web's decoder did not decode a request body at once, so the idempotency layer cannot read it: please report this with your actix-http version"
            );
            Err(Decoding::Invalid)
        }
    }
}

/// The most of a body in `coding` handed to actix's decoder at once. The decoder inflates a
/// piece whole before the limit is checked, so a piece is what inflates to at most about
/// 2 MiB past the limit at the coding's largest ratio: about 1,032 to 1 for deflate (`gzip`,
/// `deflate`), 32,768 to 1 for `zstd` (a block of 128 KiB of one byte costs 4). `br` has no
/// such ratio (about 13 bytes make a meta-block of 16 MiB: 203 bytes make 256 MiB), so it is
/// handed over 16 bytes at a time, and inflates about a meta-block past the limit (smaller
/// pieces inflate no less, as a meta-block comes out whole, and cost more: a byte at a time
/// takes four times as long). None is over 2,048 bytes: the decoder sends 2,049 or more to a
/// blocking task.
fn piece(coding: header::ContentEncoding) -> usize {
    use header::ContentEncoding as Coding;
    match coding {
        Coding::Gzip | Coding::Deflate => 2048,
        Coding::Zstd => 64,
        _ => 16,
    }
}

/// Whether this build's actix-web extractors decode request bodies in `coding`: which
/// depends on its features, which a library cannot see. Found once per coding by handing its
/// decoder bytes that are valid in none: a decoder refuses them (or reads them as something
/// else), where actix without one hands them on as they came.
fn actix_decodes(coding: header::ContentEncoding) -> bool {
    use std::sync::OnceLock;
    static DECODES: [OnceLock<bool>; DECODABLE.len()] =
        [const { OnceLock::new() }; DECODABLE.len()];
    let Some(at) = DECODABLE.iter().position(|&decodable| decodable == coding) else {
        return false;
    };
    *DECODES[at].get_or_init(|| {
        const PROBE: &[u8] = b"\x00\x00 not in any coding";
        let value = header::HeaderValue::from_static(coding.as_str());
        let read = actix_decoded(&value, coding, &Bytes::from_static(PROBE), 1024);
        !matches!(read, Ok(read) if read == PROBE)
    })
}

/// The codings an actix-web build may decode, each with a feature of its own, in the order
/// a refusal names them.
const DECODABLE: [header::ContentEncoding; 4] = [
    header::ContentEncoding::Gzip,
    header::ContentEncoding::Deflate,
    header::ContentEncoding::Brotli,
    header::ContentEncoding::Zstd,
];

/// The codings this build's actix-web decodes, by the names a request gives them.
fn actix_decoded_codings() -> Vec<&'static str> {
    DECODABLE
        .into_iter()
        .filter(|&coding| actix_decodes(coding))
        .map(|coding| coding.as_str())
        .collect()
}

/// What went wrong with a body that did not arrive whole, for its refusal's message.
fn incomplete(error: &PayloadError) -> String {
    match error {
        PayloadError::Incomplete(_) => "it ended before its declared length".to_owned(),
        PayloadError::EncodingCorrupted => "its transfer coding is malformed".to_owned(),
        other => other.to_string(),
    }
}

/// Why a keyed request's body could not be read.
enum ReadError {
    /// It is longer than the policy's `max_body`.
    TooLarge,
    /// The payload failed (a malformed chunk, a client gone).
    Payload(PayloadError),
}

impl From<PayloadError> for ReadError {
    fn from(error: PayloadError) -> Self {
        Self::Payload(error)
    }
}

/// What a body's `Content-Length` reserves before its bytes arrive: a client that declares
/// `max_body` and stalls after two bytes pins this much, not `max_body`. Longer bodies grow
/// the buffer as they arrive, by doubling, so what it holds stays within twice what was sent.
const RESERVED: usize = 64 * 1024;

/// Reads the whole body, up to `limit` bytes. A body that arrives in one chunk (most do) is
/// kept as it came, without a copy; a longer one is gathered in a buffer sized by its
/// `Content-Length`, up to [`RESERVED`] bytes before they have arrived.
async fn read_body(
    req: &HttpRequest,
    mut payload: dev::Payload,
    limit: usize,
) -> Result<Bytes, ReadError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ReadError::TooLarge);
    }
    let Some(first) = payload.next().await.transpose()? else {
        return Ok(Bytes::new());
    };
    if first.len() > limit {
        return Err(ReadError::TooLarge);
    }
    let Some(mut chunk) = payload.next().await.transpose()? else {
        return Ok(first);
    };
    let reserved = declared.unwrap_or(0).min(RESERVED);
    let mut body = BytesMut::with_capacity(reserved.max(first.len() + chunk.len()));
    body.extend_from_slice(&first);
    loop {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
        match payload.next().await.transpose()? {
            Some(next) => chunk = next,
            None => return Ok(body.freeze()),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use futures_util::FutureExt as _;

    use super::*;

    /// A payload of `items`, as they arrive.
    fn stream(items: Vec<Result<Bytes, PayloadError>>) -> dev::Payload {
        dev::Payload::Stream {
            payload: Box::pin(futures_util::stream::iter(items)),
        }
    }

    /// A payload that arrives in `chunks`.
    fn chunked(chunks: &[&'static [u8]]) -> dev::Payload {
        stream(chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect())
    }

    /// A payload that fails the test if it is read at all.
    fn unread() -> dev::Payload {
        dev::Payload::Stream {
            payload: Box::pin(futures_util::stream::poll_fn(|_| {
                panic!("the body was read")
            })),
        }
    }

    fn request(content_length: Option<usize>) -> HttpRequest {
        let mut req = TestRequest::post();
        if let Some(length) = content_length {
            req = req.insert_header((header::CONTENT_LENGTH, length.to_string()));
        }
        req.to_http_request()
    }

    fn read(
        content_length: Option<usize>,
        payload: dev::Payload,
        limit: usize,
    ) -> Result<Bytes, ReadError> {
        read_body(&request(content_length), payload, limit)
            .now_or_never()
            .expect("a payload that is ready")
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_too_large() {
        let body = read(Some(10), chunked(&[b"0123456789"]), 10);
        assert_eq!(&body.ok().unwrap()[..], b"0123456789");
        let over = read(None, chunked(&[b"0123456789"]), 9);
        assert!(matches!(over, Err(ReadError::TooLarge)));
    }

    #[test]
    fn a_body_in_one_chunk_is_kept_without_a_copy() {
        let chunk = Bytes::from_static(b"{\"to\":\"+15550000001\"}");
        let body = read(Some(chunk.len()), stream(vec![Ok(chunk.clone())]), 1024);
        let body = body.ok().unwrap();
        assert_eq!(body.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_any_read() {
        assert!(matches!(
            read(Some(11), unread(), 10),
            Err(ReadError::TooLarge)
        ));
    }

    #[test]
    fn a_chunked_body_is_gathered_whole_up_to_exactly_the_limit() {
        // No Content-Length, as with `Transfer-Encoding: chunked`.
        let body = read(None, chunked(&[b"abc", b"def", b"ghij"]), 10);
        assert_eq!(&body.ok().unwrap()[..], b"abcdefghij");
        let over = read(None, chunked(&[b"abc", b"def", b"ghij", b"k"]), 10);
        assert!(matches!(over, Err(ReadError::TooLarge)));
    }

    #[test]
    fn a_body_longer_than_its_declared_length_is_still_held_to_the_limit() {
        let lying = read(Some(3), chunked(&[b"abc", b"def", b"ghij"]), 8);
        assert!(matches!(lying, Err(ReadError::TooLarge)));
        let short = read(Some(100), chunked(&[b"abc", b"def"]), 100);
        assert_eq!(&short.ok().unwrap()[..], b"abcdef", "a short declared body");
    }

    #[test]
    fn an_empty_body_is_empty_and_a_failing_one_an_error() {
        assert!(read(None, dev::Payload::None, 10).ok().unwrap().is_empty());
        assert!(read(Some(0), chunked(&[]), 0).ok().unwrap().is_empty());
        let failing = stream(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(PayloadError::Incomplete(None)),
        ]);
        assert!(matches!(
            read(None, failing, 10),
            Err(ReadError::Payload(PayloadError::Incomplete(None)))
        ));
    }

    #[test]
    fn a_compressed_body_is_decoded_whole_under_the_largest_limit() {
        let body = gzipped(b"{\"id\":1}");
        let req = TestRequest::post()
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .to_http_request();
        // `usize::MAX` is how a policy says "no limit": it must not read as none at all.
        let decoded = decoded(&req, &body, usize::MAX).ok().flatten();
        assert_eq!(decoded.as_deref(), Some(&b"{\"id\":1}"[..]));
        let over = decoded_over(&req, &body, 7);
        assert!(over, "one byte under the decoded length is too large");
    }

    /// actix's decoder sends a chunk of 2,049 bytes or more to a blocking task; the layer
    /// reads in place, so it hands a long body over in smaller pieces.
    #[test]
    fn a_compressed_body_of_many_pieces_is_decoded_at_once() {
        let mut n: u64 = 1;
        let text: String = (0..20_000)
            .map(|_| {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + (n >> 59) as u8 % 26)
            })
            .collect();
        let body = gzipped(text.as_bytes());
        assert!(body.len() > 3 * 2048, "{}", body.len());
        let req = TestRequest::post()
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .to_http_request();
        let decoded = decoded(&req, &body, 1 << 20).ok().flatten();
        assert_eq!(decoded.as_deref(), Some(text.as_bytes()));
    }

    #[test]
    fn a_coding_actix_passes_on_undecoded_is_refused_not_decoded() {
        let body = gzipped(b"{\"id\":1}");
        // actix's extractors decode `gzip` but hand `x-gzip` on as it came: the layer reading
        // a key or fingerprint from the decoded JSON would read what the handler never sees.
        let req = TestRequest::post()
            .insert_header((header::CONTENT_ENCODING, "x-gzip"))
            .to_http_request();
        let refused = decoded(&req, &body, 1024);
        assert!(
            matches!(&refused, Err(IdempotencyError::BodyInvalid(BodyError::Encoded { coding, .. })) if coding == "x-gzip"),
            "{refused:?}"
        );
        // Its refusal names the codings this build decodes, and those alone.
        let Err(IdempotencyError::BodyInvalid(BodyError::Encoded { decodes, .. })) = refused else {
            unreachable!()
        };
        assert!(decodes.starts_with(&["gzip", "deflate"]), "{decodes:?}");
        for (coding, name) in [
            (header::ContentEncoding::Brotli, "br"),
            (header::ContentEncoding::Zstd, "zstd"),
        ] {
            assert_eq!(decodes.contains(&name), actix_decodes(coding), "{name}");
        }
    }

    #[test]
    fn the_extractors_of_a_build_with_compress_gzip_are_found_to_decode_gzip() {
        use header::ContentEncoding as Coding;
        assert!(actix_decodes(Coding::Gzip) && actix_decodes(Coding::Deflate));
        assert!(!actix_decodes(Coding::Identity));
    }

    #[test]
    fn a_second_gzip_member_or_bytes_after_a_zlib_stream_are_not_valid() {
        let mut members = gzipped(b"{\"id\":").to_vec();
        members.extend_from_slice(&gzipped(b"1}"));
        let mut trailing = zlibbed(b"{\"id\":1}").to_vec();
        trailing.push(0);
        for (coding, body) in [("gzip", members), ("deflate", trailing)] {
            let req = TestRequest::post()
                .insert_header((header::CONTENT_ENCODING, coding))
                .to_http_request();
            let refused = decoded(&req, &Bytes::from(body), 1024);
            assert!(
                matches!(
                    &refused,
                    Err(IdempotencyError::BodyInvalid(BodyError::Undecodable { .. }))
                ),
                "{coding}: {refused:?}"
            );
        }
    }

    /// `bytes` in zlib (`deflate`).
    fn zlibbed(bytes: &[u8]) -> Bytes {
        use std::io::Write as _;
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(bytes).unwrap();
        Bytes::from(zlib.finish().unwrap())
    }

    /// `bytes` in gzip.
    fn gzipped(bytes: &[u8]) -> Bytes {
        use std::io::Write as _;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(bytes).unwrap();
        Bytes::from(gzip.finish().unwrap())
    }

    /// Whether `body`, decoded, is refused as larger than `limit`.
    fn decoded_over(req: &HttpRequest, body: &Bytes, limit: usize) -> bool {
        matches!(
            decoded(req, body, limit),
            Err(IdempotencyError::BodyTooLarge { .. })
        )
    }

    #[test]
    fn a_key_from_a_body_is_taken_as_it_is_never_unquoted() {
        assert_eq!(key_of_text("order-1", 255).unwrap().as_str(), "order-1");
        let quoted = key_of_text("\"order-1\"", 255).unwrap();
        assert_eq!(quoted.as_str(), "\"order-1\"");
        assert_ne!(
            quoted,
            key_of_text("order-1", 255).unwrap(),
            "a header's quoted and bare forms are one key; a body's are two"
        );
    }
}
