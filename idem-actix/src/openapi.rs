//! What each idempotent operation promises, written into an OpenAPI document (feature
//! `utoipa`).
//!
//! An idempotency key is a contract between two programs, and the IETF draft asks a server to
//! publish its side: which operations take a key, in which header, under which rules, and how
//! long a response is kept. A [`Contract`] names the idempotent operations and their settings;
//! [`Contract::apply`] writes into each of them, in a [`utoipa::openapi::OpenApi`]:
//! - the key's header as a parameter: its name, the length and characters a key may have,
//!   and whether it is required (a key read from the JSON body, `KeySource::Json`, is said
//!   in the description instead: the header is then never read);
//! - `Idempotent-Replayed` on every response that can be a replay (those the policy records,
//!   but for statuses that middleware outside the layer answers: see
//!   [`Contract::answered_outside`]; a range such as `4XX` when the policy records any status in
//!   it, `default` when it records any status the operation documents no other response for);
//! - the layer's own error responses (400, 409, 413, 422 and 503, as the policy can give
//!   them), in the configured error format, with `X-Request-ID`, `Retry-After` and
//!   `Cache-Control`, added to the operation's own response of that status, or of the range
//!   (`5XX`) or `default` it falls under, which a status of its own would otherwise hide;
//! - the policy in words, the retention (TTL) among them, at the end of the operation's
//!   description, and as an `x-idempotency` object for tools.
//!
//! The document is utoipa 6's: depend on `utoipa = "6"` to build it (with its derive macros
//! or its builders) and to name [`HttpMethod`].
//!
//! # Where the settings come from
//! `#[idempotent(...)]` compiles its arguments into the handler, where no document generator
//! reads them, so a contract states them again, one line per operation, with the setters the
//! arguments stand for ([`Overrides`]: `ttl = "24h"` is `.ttl(..)`, `mismatch = "unprocessable"`
//! is `.on_mismatch(OnMismatch::Unprocessable)`, and so on). A test that sends the documented
//! key to the server and checks the documented answers keeps the two in step. For the
//! [`Idempotency`](crate::Idempotency) middleware, [`Contract::middleware`] covers the
//! operations it wraps, with the same closure the middleware's `with_overrides` takes; a complete
//! [`Policy`] can be given with [`Contract::operation_policy`].
//!
//! A handler's own arguments are not settings either: one that takes
//! [`IdempotencyKey`](crate::IdempotencyKey) (not `Option<IdempotencyKey>`) or a `Transaction`
//! refuses a request without a key with 400 `idempotency_key_missing`, as `required = true`
//! does. State `.required(true)` for its operation, so that the document says the key is
//! required and lists that refusal, rather than that a request without one runs unprotected.
//!
//! Settings an operation does not override come from [`Contract::with_defaults`]: give it the
//! application's ([`IdempotencyConfig::defaults`](crate::IdempotencyConfig::defaults)), as
//! [`Contract::from_config`] does.
//!
//! Functions of the application's are not settings, and a contract cannot describe them: an
//! endpoint that finds its key with a function (`key = f`, the middleware's `with_key_fn`)
//! reads no key header, and one scoped by a function (`scope = f`, `with_scope_fn`) is not
//! scoped as any built-in scope says. Described by settings, such an operation would be
//! documented with a key header the server never reads, so that a client that followed the
//! document would send a key no retry is matched by, and run each retry again. Leave such
//! operations out of the contract, and say in their own description where their key comes
//! from.
//!
//! ```
//! use std::time::Duration;
//! use idem_actix::openapi::Contract;
//! use idem_actix::OnMismatch;
//! use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
//! use utoipa::openapi::{InfoBuilder, OpenApiBuilder, PathsBuilder, ResponseBuilder};
//!
//! let created = ResponseBuilder::new().description("The call was placed").build();
//! let mut doc = OpenApiBuilder::new()
//!     .info(InfoBuilder::new().title("calls").version("1").build())
//!     .paths(PathsBuilder::new().path(
//!         "/v1/calls",
//!         PathItem::new(
//!             HttpMethod::Post,
//!             OperationBuilder::new().response("201", created).build(),
//!         ),
//!     ))
//!     .build();
//!
//! // As `#[idempotent(ttl = "24h", mismatch = "unprocessable")]` on the handler says.
//! Contract::new()
//!     .operation(HttpMethod::Post, "/v1/calls", |p| {
//!         p.ttl(Duration::from_secs(24 * 3600))
//!             .on_mismatch(OnMismatch::Unprocessable)
//!     })
//!     .apply(&mut doc)?;
//!
//! let json = serde_json::to_value(&doc).unwrap();
//! let post = &json["paths"]["/v1/calls"]["post"];
//! assert_eq!(post["parameters"][0]["name"], "Idempotency-Key");
//! assert_eq!(post["parameters"][0]["schema"]["maxLength"], 255);
//! assert!(post["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());
//! assert!(post["responses"]["422"].is_object());
//! assert!(post["description"].as_str().unwrap().contains("for 24 hours"));
//! # Ok::<(), idem_actix::openapi::ContractError>(())
//! ```

use std::fmt::{self, Write as _};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use idem_core::{
    codes, CachePolicy, ErrorFormat, KeySource, OnInFlight, OnMismatch, OnStoreError, Overrides,
    Policy, PolicyError, Scope,
};
use serde_json::json;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{HttpMethod, Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    Components, ContentBuilder, OpenApi, Ref, RefOr, Required, Response, ResponseBuilder,
};

use crate::config::check_as_defaults;
use crate::IdempotencyConfig;

/// The methods whose keys the [`Idempotency`](crate::Idempotency) middleware honours by
/// default, of those an OpenAPI document names (every one but the safe ones).
const MIDDLEWARE_METHODS: [HttpMethod; 4] = [
    HttpMethod::Post,
    HttpMethod::Put,
    HttpMethod::Patch,
    HttpMethod::Delete,
];

/// A key's header value: a bare key (visible ASCII, not opening with a quote), or an RFC 8941
/// string (quoted, with `\"` and `\\` the only escapes). With the schema's `maxLength` at the
/// key's limit, every value it describes is accepted: unquoting only shortens a key.
pub const KEY_PATTERN: &str = r#"^(?:[!#-~][!-~]*|"(?:[!#-\[\]-~]|\\["\\])+")$"#;

/// The extension each described operation carries: the policy for tools, and the mark that
/// it was described (so that a second description is refused rather than doubled).
pub const EXTENSION: &str = "x-idempotency";

/// Which operations of an API are idempotent, and with what settings, for its OpenAPI
/// document. See the [module documentation](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct Contract {
    defaults: Policy,
    errors: ErrorFormat,
    declared: Vec<Declared>,
    /// Statuses answered before the layer (see [`Contract::answered_outside`]).
    outside: Vec<u16>,
}

#[derive(Clone, Debug)]
struct Declared {
    target: Target,
    settings: Settings,
}

/// The operations one declaration covers.
#[derive(Clone, Debug)]
enum Target {
    /// One operation.
    Operation { method: &'static str, path: String },
    /// The operations a middleware wraps: its methods, on every path under a prefix.
    Under { prefix: String },
}

#[derive(Clone, Copy, Debug)]
enum Settings {
    /// On top of the contract's defaults, as an attribute's arguments are.
    Overrides(Overrides),
    /// Complete.
    Policy(Policy),
}

impl Default for Contract {
    fn default() -> Self {
        Self::new()
    }
}

impl Contract {
    /// No idempotent operations yet; defaults [`Policy::DEFAULT`], errors in the default JSON
    /// envelope, as an application without an `IdempotencyConfig` has.
    pub fn new() -> Self {
        Self {
            defaults: Policy::DEFAULT,
            errors: ErrorFormat::Envelope,
            declared: Vec::new(),
            outside: Vec::new(),
        }
    }

    /// A contract on the application's defaults ([`IdempotencyConfig::with_defaults`]). Its error
    /// renderer cannot be read back: if it is not the default envelope, say which format it
    /// renders with [`with_errors`](Self::with_errors).
    pub fn from_config(config: &IdempotencyConfig) -> Self {
        Self::new().with_defaults(*config.defaults())
    }

    /// The settings every operation starts from; each declaration overrides its own.
    pub fn with_defaults(mut self, policy: Policy) -> Self {
        self.defaults = policy;
        self
    }

    /// The format the application renders the layer's errors in, for operations whose
    /// policy names none (the format of `IdempotencyConfig::with_error_renderer`): the default
    /// envelope ([`ErrorFormat::Envelope`], also for `JsonEnvelope::CODE`), the envelope with
    /// `type` ([`ErrorFormat::EnvelopeType`], `JsonEnvelope::TYPE`), or problem JSON
    /// ([`ErrorFormat::Problem`], `ProblemJson`).
    pub fn with_errors(mut self, format: ErrorFormat) -> Self {
        self.errors = format;
        self
    }

    /// Statuses that middleware outside the layer answers by itself, before a request reaches
    /// it: an authentication's 401, a rate limit's 429. Such an answer is never a replay, so
    /// these statuses are documented without `Idempotent-Replayed`, whatever the policy
    /// records; the layer cannot tell them from its handlers' own. Leave out a status that a
    /// handler also answers, as that answer is recorded and replayed. Each call adds to the
    /// list; ranges (`4XX`) stay marked.
    pub fn answered_outside(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.outside.extend(statuses);
        self
    }

    /// Declares the operation `method` `path` (the path as the document writes it, such as
    /// `/v1/calls/{id}`) idempotent, with the contract's defaults as `configure` overrides
    /// them: the arguments of its `#[idempotent(...)]`.
    pub fn operation(
        mut self,
        method: HttpMethod,
        path: impl Into<String>,
        configure: impl FnOnce(Overrides) -> Overrides,
    ) -> Self {
        self.declared.push(Declared {
            target: Target::Operation {
                method: method_name(&method),
                path: path.into(),
            },
            settings: Settings::Overrides(configure(Overrides::NONE)),
        });
        self
    }

    /// Declares the operation `method` `path` idempotent with `policy` as it is, whatever the
    /// contract's defaults.
    pub fn operation_policy(
        mut self,
        method: HttpMethod,
        path: impl Into<String>,
        policy: Policy,
    ) -> Self {
        self.declared.push(Declared {
            target: Target::Operation {
                method: method_name(&method),
                path: path.into(),
            },
            settings: Settings::Policy(policy),
        });
        self
    }

    /// Declares idempotent the operations an [`Idempotency`](crate::Idempotency) middleware
    /// with its default methods wraps (of those an OpenAPI document has: an extension method
    /// has no place in it): every `POST`, `PUT`, `PATCH` and `DELETE` whose path
    /// lies under `prefix` by whole segments, as a `web::scope(prefix)` the middleware wraps
    /// matches them (`"/v1"` covers `/v1` and `/v1/calls`, not `/v1beta/calls`; `""` covers
    /// the whole document; a prefix ending in `/`, `"/"` included, covers every path that
    /// begins with it), with the contract's defaults as
    /// `configure` overrides them (the closure given to the middleware's `with_overrides`).
    /// Keys per endpoint are described as the middleware keeps them, per method and path: it
    /// runs before the app routes a request, so that another value of a path parameter is
    /// another key (`x-idempotency`'s `per_path`); or per the endpoint name `configure`
    /// gives, one for every operation it covers.
    pub fn middleware(
        mut self,
        prefix: impl Into<String>,
        configure: impl FnOnce(Overrides) -> Overrides,
    ) -> Self {
        self.declared.push(Declared {
            target: Target::Under {
                prefix: prefix.into(),
            },
            settings: Settings::Overrides(configure(Overrides::NONE)),
        });
        self
    }

    /// Writes each declared operation's contract into `doc`, and the error schemas they use
    /// into its components.
    ///
    /// # Errors
    /// [`ContractError`] when a declared operation is not in `doc`, when a middleware's prefix
    /// covers none, when an operation is declared twice (or was described by an earlier
    /// `apply`), when a key header is not a valid header name, or when an operation's
    /// settings are ones the layer refuses whatever its store ([`Overrides::check`], as the
    /// attribute and the middleware check them, then [`Policy::check_settings`]), or when the
    /// defaults are ones [`IdempotencyConfig::with_defaults`] refuses (an endpoint's name,
    /// `Scope::Global`, fingerprint settings beside `OnMismatch::Replay`).
    /// `doc` is left unchanged.
    pub fn apply(&self, doc: &mut OpenApi) -> Result<(), ContractError> {
        let mut work = doc.clone();
        // What references point to; the parameters and responses in it are only read.
        let shared = doc.components.clone().unwrap_or_default();
        let mut seen: Vec<(&'static str, String)> = Vec::new();
        // As the application refuses them (`IdempotencyConfig::with_defaults`).
        check_as_defaults(&self.defaults).map_err(ContractError::Settings)?;
        for declared in &self.declared {
            let policy = match declared.settings {
                Settings::Overrides(overrides) => overrides.apply_to(self.defaults),
                Settings::Policy(policy) => policy,
            };
            if HeaderName::from_bytes(policy.header.as_bytes()).is_err() {
                return Err(ContractError::InvalidHeader(policy.header));
            }
            // As the attribute and the middleware refuse them, then with the defaults.
            if let Settings::Overrides(overrides) = declared.settings {
                overrides.check().map_err(ContractError::Settings)?;
            }
            policy.check_settings().map_err(ContractError::Settings)?;
            let format = policy.error_format.unwrap_or(self.errors);
            for (method, path) in targets(&work, &declared.target)? {
                if seen.iter().any(|(m, p)| *m == method && *p == path) {
                    return Err(ContractError::DescribedTwice { method, path });
                }
                let Some(operation) = operation_mut(&mut work, method, &path) else {
                    return Err(ContractError::UnknownOperation { method, path });
                };
                if operation
                    .extensions
                    .as_ref()
                    .is_some_and(|e| e.contains_key(EXTENSION))
                {
                    return Err(ContractError::DescribedTwice { method, path });
                }
                let by_path = matches!(declared.target, Target::Under { .. });
                describe(operation, &policy, by_path, format, &self.outside, &shared);
                seen.push((method, path));
            }
            let components = work.components.get_or_insert_with(Components::new);
            let (name, schema) = error_schema(format);
            components.schemas.entry(name.to_owned()).or_insert(schema);
        }
        *doc = work;
        Ok(())
    }
}

/// Why a [`Contract`] could not be written into a document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContractError {
    /// A declared operation is not in the document.
    UnknownOperation {
        /// Its method, upper case.
        method: &'static str,
        /// Its path.
        path: String,
    },
    /// A middleware's prefix covers no operation of the document.
    NothingUnder {
        /// The prefix.
        prefix: String,
    },
    /// An operation was declared twice, or described by an earlier `apply`.
    DescribedTwice {
        /// Its method, upper case.
        method: &'static str,
        /// Its path.
        path: String,
    },
    /// A key's header is not a valid header name.
    InvalidHeader(&'static str),
    /// An operation's settings are ones the layer refuses (when the app starts, or on every
    /// keyed request), whatever its store: no endpoint has them.
    Settings(PolicyError),
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOperation { method, path } => write!(
                f,
                "the document has no operation {method} {path}; describe it first, or write its path as the document does (such as /v1/calls/{{id}})"
            ),
            Self::NothingUnder { prefix } => write!(
                f,
                "no POST, PUT, PATCH or DELETE operation of the document is under \"{prefix}\"; describe the wrapped operations first, or fix the prefix"
            ),
            Self::DescribedTwice { method, path } => write!(
                f,
                "{method} {path} is declared idempotent twice; declare each operation once, and apply a contract to a document once"
            ),
            Self::InvalidHeader(name) => write!(
                f,
                "\"{name}\" is not a valid header name; use letters, digits and `-`, such as \"X-Idempotency-Key\""
            ),
            Self::Settings(reason) => {
                write!(f, "the layer would refuse these settings: {reason}")
            }
        }
    }
}

impl std::error::Error for ContractError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Settings(reason) => Some(reason),
            _ => None,
        }
    }
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Head => "HEAD",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Trace => "TRACE",
    }
}

fn slot<'a>(item: &'a mut PathItem, method: &str) -> Option<&'a mut Option<Operation>> {
    Some(match method {
        "GET" => &mut item.get,
        "POST" => &mut item.post,
        "PUT" => &mut item.put,
        "DELETE" => &mut item.delete,
        "OPTIONS" => &mut item.options,
        "HEAD" => &mut item.head,
        "PATCH" => &mut item.patch,
        "TRACE" => &mut item.trace,
        _ => return None,
    })
}

fn operation_mut<'a>(doc: &'a mut OpenApi, method: &str, path: &str) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    slot(item, method)?.as_mut()
}

/// Whether `path` lies under `prefix` by whole segments, as actix matches a scope's path:
/// `/v1` covers `/v1` and `/v1/calls`, never `/v1beta`. A prefix that ends in `/` (or is
/// empty) covers every path that begins with it.
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => {
            prefix.is_empty() || prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
        }
        None => false,
    }
}

/// The (method, path) pairs `target` names in `doc`.
fn targets(doc: &OpenApi, target: &Target) -> Result<Vec<(&'static str, String)>, ContractError> {
    match target {
        Target::Operation { method, path } => Ok(vec![(*method, path.clone())]),
        Target::Under { prefix } => {
            let mut found = Vec::new();
            for (path, item) in &doc.paths.paths {
                if !under(path, prefix) {
                    continue;
                }
                for method in &MIDDLEWARE_METHODS {
                    let described = match method {
                        HttpMethod::Post => item.post.is_some(),
                        HttpMethod::Put => item.put.is_some(),
                        HttpMethod::Patch => item.patch.is_some(),
                        HttpMethod::Delete => item.delete.is_some(),
                        _ => false,
                    };
                    if described {
                        found.push((method_name(method), path.clone()));
                    }
                }
            }
            if found.is_empty() {
                return Err(ContractError::NothingUnder {
                    prefix: prefix.clone(),
                });
            }
            Ok(found)
        }
    }
}

/// Writes `policy` into `operation`; `by_path` when a middleware serves it, whose keys per
/// endpoint are per method and path unless it names the endpoint (see [`in_words`]).
fn describe(
    operation: &mut Operation,
    policy: &Policy,
    by_path: bool,
    format: ErrorFormat,
    outside: &[u16],
    components: &Components,
) {
    add_key_parameter(operation, policy, components);
    mark_replays(operation, policy, outside, components);
    for layer in layer_responses(policy) {
        add_layer_response(operation, &layer, policy, format, components);
    }
    let words = in_words(policy, by_path);
    operation.description = Some(match operation.description.take() {
        Some(text) if !text.trim().is_empty() => format!("{}\n\n{words}", text.trim_end()),
        _ => words,
    });
    operation
        .extensions
        .get_or_insert_with(Extensions::default)
        .insert(EXTENSION.to_owned(), extension(policy, by_path));
}

fn add_key_parameter(operation: &mut Operation, policy: &Policy, components: &Components) {
    // A key read from the body is never read from the header: the operation's description
    // says where it is.
    if matches!(policy.key_source, KeySource::Json(_)) {
        return;
    }
    let max = policy.key_max_len;
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(KEY_PATTERN))
        .build();
    let when_absent = if policy.required {
        format!(
            "Required: a request without it is refused with 400 `{}`.",
            codes::KEY_MISSING
        )
    } else {
        "Optional: without it, the request runs unprotected, as if the operation were not idempotent."
            .to_owned()
    };
    let description = format!(
        "The idempotency key: a unique value per operation (such as a UUID), sent again unchanged \
         with each retry of it. 1 to {max} characters of visible ASCII (0x21 to 0x7E), bare or as \
         a quoted structured-field string (RFC 8941, such as `\"k-1\"`); the length is counted \
         without the quotes. A key that breaks these rules gets 400 `{}`. {when_absent}",
        codes::KEY_INVALID
    );
    let parameter = ParameterBuilder::new()
        .name(policy.header)
        .parameter_in(ParameterIn::Header)
        .required(if policy.required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
        .schema(Some(schema))
        .build();
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    parameters.retain(|existing| {
        let existing = match existing {
            RefOr::T(p) => Some(p),
            RefOr::Ref(r) => r
                .ref_location
                .strip_prefix("#/components/parameters/")
                .and_then(|name| components.parameters.get(name))
                .and_then(|p| match p {
                    RefOr::T(p) => Some(p),
                    RefOr::Ref(_) => None,
                }),
        };
        !existing.is_some_and(|p| {
            p.parameter_in == ParameterIn::Header && p.name.eq_ignore_ascii_case(policy.header)
        })
    });
    parameters.push(RefOr::T(parameter));
}

/// The response `status` of `operation`, inlined if it is a reference to the document's
/// components (so that adding to it changes no other operation).
fn response_mut<'a>(
    operation: &'a mut Operation,
    status: &str,
    components: &Components,
) -> Option<&'a mut Response> {
    let entry = operation.responses.responses.get_mut(status)?;
    if let RefOr::Ref(r) = entry {
        let resolved = r
            .ref_location
            .strip_prefix("#/components/responses/")
            .and_then(|name| components.responses.get(name))
            .and_then(|found| match found {
                RefOr::T(response) => Some(response.clone()),
                RefOr::Ref(_) => None,
            })?;
        *entry = RefOr::T(resolved);
    }
    match entry {
        RefOr::T(response) => Some(response),
        RefOr::Ref(_) => None,
    }
}

/// Whether a response documented under `status` (`201`, `2XX`, `default`) can be recorded,
/// and so replayed. `default` stands for every status that `documented` (the operation's
/// responses) gives no response of its own or of its range.
fn replayable(policy: &Policy, status: &str, documented: &[String]) -> bool {
    let covers = |status: &str, s: u16| match status.as_bytes() {
        [class @ b'1'..=b'5', b'X' | b'x', b'X' | b'x'] => s / 100 == u16::from(class - b'0'),
        _ => status.parse::<u16>() == Ok(s),
    };
    let under = |s: u16| match status {
        "default" => !documented.iter().any(|other| covers(other, s)),
        _ => covers(status, s),
    };
    (100..=999).any(|s| under(s) && policy.cache.caches(s))
}

/// Marks with `Idempotent-Replayed` the responses of `operation` that can be replays: those
/// `policy` records, but for the statuses answered `outside` the layer; and with
/// `X-Request-ID` every response the layer passes on, which it gives the request's id when the
/// request has a key.
fn mark_replays(
    operation: &mut Operation,
    policy: &Policy,
    outside: &[u16],
    components: &Components,
) {
    let before_the_layer = |status: &String| {
        status
            .parse::<u16>()
            .is_ok_and(|status| outside.contains(&status))
    };
    let statuses: Vec<String> = (operation.responses.responses.keys())
        .filter(|status| !before_the_layer(status))
        .cloned()
        .collect();
    let documented: Vec<String> = operation.responses.responses.keys().cloned().collect();
    for status in statuses {
        let replays = replayable(policy, &status, &documented);
        if let Some(response) = response_mut(operation, &status, components) {
            let headers = &mut response.headers;
            (headers.entry("X-Request-ID".to_owned()))
                .or_insert_with(|| RefOr::T(passed_request_id_header()));
            if replays {
                (headers.entry("Idempotent-Replayed".to_owned()))
                    .or_insert_with(|| RefOr::T(replayed_header()));
            }
        }
    }
}

fn passed_request_id_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "On the answer to a request with a key, the request's id: its own valid \
             `X-Request-ID`, else one the server made; a replay carries the retry's own.",
        ))
        .build()
}

fn replayed_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["true"])),
        ))
        .description(Some(
            "`true` when this response is the replay of the first response to the same key; \
             absent on the response of the run itself.",
        ))
        .build()
}

/// One status the layer can answer with, and why.
struct LayerResponse {
    status: u16,
    /// Each code, with when it is given.
    codes: Vec<(&'static str, &'static str)>,
    retry_after: bool,
}

/// The errors `policy` can give, by status.
fn layer_responses(policy: &Policy) -> Vec<LayerResponse> {
    let mut bad_request = Vec::new();
    if policy.required {
        bad_request.push((codes::KEY_MISSING, "no key was sent"));
    }
    bad_request.push((codes::KEY_INVALID, "the key breaks the header's rules"));
    // Every keyed request's body is read whole before its claim: one cut short is refused
    // whatever the endpoint compares; one the layer reads is decoded, and one it reads its
    // key from must be JSON (another body is compared as sent, never refused).
    let key_in_body = matches!(policy.key_source, KeySource::Json(_));
    let decodes = key_in_body || policy.fingerprint != idem_core::BodyForm::Bytes;
    bad_request.push((
        codes::BODY_INVALID,
        if key_in_body {
            "the body is not the JSON the key is read from, its `Content-Encoding` cannot be \
             decoded, or it did not arrive whole"
        } else if decodes {
            "the body's `Content-Encoding` cannot be decoded, or it did not arrive whole"
        } else {
            "the body did not arrive whole (it ended before its `Content-Length`, or its \
             chunked coding was malformed)"
        },
    ));
    if !matches!(policy.scope, Scope::Global) {
        bad_request.push((
            codes::SCOPE_MISSING,
            "a key was sent without what its scope is taken from, or with its header sent more than once",
        ));
    }
    let mismatch = match policy.on_mismatch {
        OnMismatch::Replay => None,
        OnMismatch::Unprocessable => Some(422),
        _ => Some(409),
    };
    let mut conflict = vec![(
        codes::CONFLICT,
        "a request with this key is still running; retry after `Retry-After` seconds",
    )];
    if mismatch == Some(409) {
        conflict.push((
            codes::CONFLICT,
            "the key was used with a different request; send a new key for a new request",
        ));
    }
    conflict.push((
        codes::CONFLICT,
        "the recorded response is in a content coding negotiated for the first request \
         (`Vary: Accept-Encoding`) that this request's `Accept-Encoding` does not accept",
    ));
    conflict.push((
        codes::RESPONSE_TOO_LARGE,
        "the operation ran once, but its response was too large to keep; it will not run again",
    ));
    let mut responses = vec![
        LayerResponse {
            status: 400,
            codes: bad_request,
            retry_after: false,
        },
        LayerResponse {
            status: 409,
            codes: conflict,
            retry_after: true,
        },
        LayerResponse {
            status: 413,
            codes: vec![(
                codes::BODY_TOO_LARGE,
                "a request with a key has a body larger than the operation accepts",
            )],
            retry_after: false,
        },
    ];
    if mismatch == Some(422) {
        responses.push(LayerResponse {
            status: 422,
            codes: vec![(
                codes::CONFLICT,
                "the key was used with a different request; send a new key for a new request",
            )],
            retry_after: false,
        });
    }
    let store_unavailable = match policy.on_store_error {
        // Failing open runs unprotected only when the store cannot be reached.
        OnStoreError::FailOpen => "the idempotency store refused the command, answered with a record it cannot read, could not claim the key for other claims of it at the same moment, or took a claim fewer of its replicas acknowledged than it waits for; nothing ran",
        _ => "the idempotency store cannot be reached, refused the command, answered with a record it cannot read, could not claim the key for other claims of it at the same moment, or took a claim fewer of its replicas acknowledged than it waits for; nothing ran",
    };
    responses.push(LayerResponse {
        status: 503,
        codes: vec![
            (codes::STORE_UNAVAILABLE, store_unavailable),
            (
                codes::OVERLOADED,
                "the server runs as much work for clients that went away as it allows; nothing ran",
            ),
            (
                codes::SHUTTING_DOWN,
                "the server is shutting down and stopped the operation before it answered; a retry runs it",
            ),
        ],
        retry_after: true,
    });
    responses
}

fn add_layer_response(
    operation: &mut Operation,
    layer: &LayerResponse,
    policy: &Policy,
    format: ErrorFormat,
    components: &Components,
) {
    let mut description = String::from(
        "Answered by the idempotency layer (the operation did not run, except where said):",
    );
    for (code, when) in &layer.codes {
        let _ = write!(description, " `{code}`: {when};");
    }
    description.pop();
    description.push('.');
    let (name, _) = error_schema(format);
    let schema: RefOr<Schema> = Ref::from_schema_name(name).into();
    let media = media_type(format);
    let status = layer.status.to_string();
    let mut headers = vec![
        ("X-Request-ID", request_id_header()),
        ("Cache-Control", no_store_header()),
    ];
    if layer.retry_after {
        headers.push(("Retry-After", retry_after_header()));
    }
    // A status of its own overrides the range it falls in (`5XX`), or `default`: where the
    // operation documents one, its response is the start, so that the status still says what
    // the handler answers with it.
    // One under a reference this document cannot resolve is not copied: the layer's
    // answers are documented on their own then.
    let responses = &mut operation.responses.responses;
    if !responses.contains_key(&status) {
        let class = layer.status / 100;
        let own = [
            format!("{class}XX"),
            format!("{class}xx"),
            "default".to_owned(),
        ]
        .iter()
        .find_map(|name| responses.get(name))
        .cloned();
        if let Some(own) = own {
            responses.insert(status.clone(), own);
            match response_mut(operation, &status, components) {
                None => drop(operation.responses.responses.remove(&status)),
                // Marked as a replay for the statuses its range (or `default`) covers: this
                // one is a replay only if a response of it is recorded.
                Some(copy) if !policy.cache.caches(layer.status) => {
                    copy.headers.remove("Idempotent-Replayed");
                }
                Some(_) => {}
            }
        }
    }
    // The operation's own answer under a reference this document cannot resolve (another
    // file's) is kept as it is, for want of a way to add to it.
    let documented = operation.responses.responses.contains_key(&status);
    match response_mut(operation, &status, components) {
        None if documented => {}
        None => {
            let mut response = ResponseBuilder::new()
                .description(description)
                .content(media, ContentBuilder::new().schema(Some(schema)).build());
            for (name, header) in headers {
                response = response.header(name, header);
            }
            operation
                .responses
                .responses
                .insert(status, RefOr::T(response.build()));
        }
        Some(response) => {
            let own = response.description.trim_end();
            response.description = match own.chars().last() {
                None => description,
                Some('.' | '!' | '?') => format!("{own} {description}"),
                Some(_) => format!("{own}. {description}"),
            };
            match response.content.get_mut(media) {
                None => {
                    response.content.insert(
                        media.to_owned(),
                        RefOr::T(ContentBuilder::new().schema(Some(schema)).build()),
                    );
                }
                Some(RefOr::T(content)) => {
                    content.schema = Some(match content.schema.take() {
                        None => schema,
                        Some(existing) if existing == schema => existing,
                        Some(existing) => AnyOfBuilder::new().item(existing).item(schema).into(),
                    });
                }
                // A shared media type object: leave it, and let the description tell.
                Some(RefOr::Ref(_)) => {}
            }
            for (name, header) in headers {
                response
                    .headers
                    .entry(name.to_owned())
                    .or_insert(RefOr::T(header));
            }
        }
    }
}

fn request_id_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "The request's id: its own valid `X-Request-ID`, else one the server made; the \
             error body repeats it.",
        ))
        .build()
}

fn no_store_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "`no-store`: the answer is about this moment or this request, for no cache to keep.",
        ))
        .build()
}

fn retry_after_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        ))
        .description(Some(
            "Seconds to wait before retrying with the same key, when waiting can help (a \
             request still running, the store unreachable, the server overloaded or shutting \
             down).",
        ))
        .build()
}

fn media_type(format: ErrorFormat) -> &'static str {
    match format {
        ErrorFormat::Problem => "application/problem+json",
        _ => "application/json",
    }
}

/// The name under `components/schemas` and the schema of `format`'s errors.
fn error_schema(format: ErrorFormat) -> (&'static str, RefOr<Schema>) {
    let string = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
    };
    let code = string(
        "A stable code, such as `idempotency_conflict`; each status's description lists those it \
         can carry.",
    );
    let message = string("What went wrong and what to do, for people.");
    let request_id = string("The response's `X-Request-ID`.");
    match format {
        ErrorFormat::Problem => (
            "IdempotencyProblem",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "An error of the idempotency layer, as RFC 9457 problem details.",
                ))
                .property("type", string("`urn:idem:error:` and the code."))
                .required("type")
                .property("title", string("A short summary of the problem's type (of its code), the same wherever it is answered."))
                .required("title")
                .property("status", ObjectBuilder::new().schema_type(Type::Integer))
                .required("status")
                .property("detail", message)
                .required("detail")
                .property("code", code)
                .required("code")
                .property("request_id", request_id)
                .required("request_id")
                .into(),
        ),
        _ => {
            let (name, field) = match format {
                ErrorFormat::EnvelopeType => ("IdempotencyErrorType", "type"),
                _ => ("IdempotencyError", "code"),
            };
            let error = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(field, code)
                .required(field)
                .property("message", message)
                .required("message");
            (
                name,
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some("An error of the idempotency layer."))
                    .property("error", error)
                    .required("error")
                    .property("request_id", request_id)
                    .required("request_id")
                    .into(),
            )
        }
    }
}

/// `policy`, as the operation's description says it. `by_path` when a middleware serves the
/// operation: it runs before the app routes a request, so that its keys per endpoint are per
/// method and path rather than per route pattern (another value of a path parameter is
/// another key), unless it names the endpoint.
fn in_words(policy: &Policy, by_path: bool) -> String {
    let send = match policy.key_source {
        KeySource::Json(pointer) => format!(
            "Put a unique key (a string or a number, 1 to {} characters of visible ASCII) at \
             `{pointer}` in the JSON body",
            policy.key_max_len
        ),
        _ => format!("Send `{}` with a unique key", policy.header),
    };
    let mut text = format!(
        "**Idempotent.** {send} to make retries safe: the operation runs once, and a retry \
         with the same key and the same request gets the first response again, with \
         `Idempotent-Replayed: true`."
    );
    let _ = write!(
        text,
        " Retention: a response is kept for replay for {} after it completes; after that, the \
         key is forgotten.",
        duration_in_words(policy.ttl)
    );
    text.push_str(match policy.cache {
        CachePolicy::Success => {
            " Only 2xx responses are kept; after any other, a retry with the key runs again."
        }
        _ => " Every response but a 5xx is kept; after a 5xx, a retry with the key runs again.",
    });
    text.push(' ');
    text.push_str(&scope_in_words(policy.scope));
    match (policy.per_endpoint, policy.endpoint_name, by_path) {
        (true, Some(name), _) => {
            let _ = write!(
                text,
                " Keys are per operation, under the name \"{name}\": the same key on another \
                 operation is another key, but on one under the same name (another value of a \
                 path parameter included) it is the same key, sent with another request."
            );
        }
        (true, None, false) => text
            .push_str(" Keys are per operation: the same key on another operation is another key."),
        (true, None, true) => text.push_str(
            " Keys are per method and path: the same key on another path (another value of a \
             path parameter included) or with another method is another key.",
        ),
        (false, ..) => {}
    }
    match policy.on_in_flight {
        OnInFlight::Wait(bound) => {
            let _ = write!(
                text,
                " A retry while the first request runs waits up to {} for its response, then \
                 gets 409 `{}` with `Retry-After`.",
                duration_in_words(bound),
                codes::CONFLICT
            );
        }
        _ => {
            let _ = write!(
                text,
                " A retry while the first request runs gets 409 `{}` with `Retry-After`.",
                codes::CONFLICT
            );
        }
    }
    match policy.on_mismatch {
        OnMismatch::Replay => text.push_str(
            " A key sent again with a different request gets the first response; the new \
             request is ignored.",
        ),
        OnMismatch::Unprocessable => {
            let _ = write!(
                text,
                " A key sent again with a different request gets 422 `{}`.",
                codes::CONFLICT
            );
        }
        _ => {
            let _ = write!(
                text,
                " A key sent again with a different request gets 409 `{}`.",
                codes::CONFLICT
            );
        }
    }
    if matches!(policy.on_store_error, OnStoreError::FailOpen) {
        text.push_str(
            " When the idempotency store cannot be reached, the request runs unprotected.",
        );
    }
    text
}

fn scope_in_words(scope: Scope) -> String {
    match scope {
        Scope::ApiKey => format!(
            "Keys are per API key (the `Authorization` header, else `X-API-Key`): a key sent \
             without either gets 400 `{}`.",
            codes::SCOPE_MISSING
        ),
        Scope::BasicAuthUser => format!(
            "Keys are per Basic authentication user and password: a key sent without Basic \
             authentication gets 400 `{}`.",
            codes::SCOPE_MISSING
        ),
        Scope::Header(name) => format!(
            "Keys are per value of the `{name}` header: a key sent without it gets 400 `{}`.",
            codes::SCOPE_MISSING
        ),
        Scope::Principal => format!(
            "Keys are per authenticated caller: a key sent by a caller not authenticated gets \
             400 `{}`.",
            codes::SCOPE_MISSING
        ),
        Scope::Global => "Keys are shared by every caller.".to_owned(),
        _ => format!(
            "Keys are per caller: a key sent without what the caller is known by gets 400 `{}`.",
            codes::SCOPE_MISSING
        ),
    }
}

/// `24 hours`, `90 minutes` becomes `1 hour and 30 minutes`, `7 days`, `500 milliseconds`,
/// `1 second and 500 milliseconds`: to the millisecond, as the attribute takes durations.
fn duration_in_words(duration: Duration) -> String {
    const UNITS: [(u64, &str); 5] = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
        (1, "millisecond"),
    ];
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    // Days only from two of them: "24 hours" is how retention is usually said.
    let units = &UNITS[usize::from(millis < 2 * 86_400_000)..];
    let mut rest = millis;
    let mut parts = Vec::new();
    for &(size, unit) in units {
        if rest >= size {
            parts.push(plural(rest / size, unit));
            rest %= size;
        }
    }
    match parts.len() {
        0 => plural(0, "millisecond"),
        1 => parts.remove(0),
        _ => {
            let last = parts.pop().unwrap_or_default();
            format!("{} and {last}", parts.join(", "))
        }
    }
}

fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// The policy for tools: `x-idempotency`. `per_path` says that keys per operation are per
/// method and path, too (a middleware's: see [`in_words`]); `operation_name`, the name they
/// are kept under instead, where the endpoint has one (`null` otherwise).
fn extension(policy: &Policy, by_path: bool) -> serde_json::Value {
    json!({
        "header": policy.header,
        "required": policy.required,
        "key_max_length": policy.key_max_len,
        // Whole seconds as an integer, as a TTL usually is; part of one as a fraction.
        "retention_seconds": match policy.ttl.subsec_nanos() {
            0 => json!(policy.ttl.as_secs()),
            _ => json!(policy.ttl.as_secs_f64()),
        },
        "records": match policy.cache {
            CachePolicy::Success => "2xx",
            _ => "non_5xx",
        },
        "on_mismatch": match policy.on_mismatch {
            OnMismatch::Replay => json!("replay"),
            OnMismatch::Unprocessable => json!(422),
            _ => json!(409),
        },
        "per_operation": policy.per_endpoint,
        "per_path": policy.per_endpoint && by_path && policy.endpoint_name.is_none(),
        "operation_name": policy.endpoint_name.filter(|_| policy.per_endpoint),
        "key_source": match policy.key_source {
            KeySource::Json(pointer) => json!(pointer),
            _ => json!("header"),
        },
    })
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;
    use idem_core::{ClientKey, IdempotencyError};
    use proptest::prelude::*;
    use serde_json::Value;
    use utoipa::openapi::path::OperationBuilder;
    use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder};

    use super::*;
    use crate::render::{ErrorRenderer, JsonEnvelope, ProblemJson};

    fn ok(description: &str) -> Response {
        ResponseBuilder::new().description(description).build()
    }

    fn json_error(description: &str) -> Response {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build()
    }

    /// `POST /v1/calls` (201, and the handler's own 400), `GET /v1/calls`, `PUT /v1/calls/{id}`.
    fn document() -> OpenApi {
        let create = OperationBuilder::new()
            .description(Some("Places a call."))
            .response("201", ok("Placed"))
            .response("400", json_error("The call is not valid"))
            .build();
        let list = OperationBuilder::new().response("200", ok("Calls")).build();
        let update = OperationBuilder::new()
            .response("200", ok("Updated"))
            .build();
        let mut calls = PathItem::new(HttpMethod::Post, create);
        calls.get = Some(list);
        OpenApiBuilder::new()
            .info(InfoBuilder::new().title("calls").version("1").build())
            .paths(
                PathsBuilder::new()
                    .path("/v1/calls", calls)
                    .path("/v1/calls/{id}", PathItem::new(HttpMethod::Put, update)),
            )
            .build()
    }

    fn json(doc: &OpenApi) -> Value {
        serde_json::to_value(doc).unwrap()
    }

    fn applied(contract: Contract) -> Value {
        let mut doc = document();
        contract.apply(&mut doc).unwrap();
        json(&doc)
    }

    #[test]
    fn a_declared_operation_gets_the_key_header_replays_and_the_layers_errors() {
        let doc = applied(Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| p));
        let post = &doc["paths"]["/v1/calls"]["post"];

        let key = &post["parameters"][0];
        assert_eq!(key["name"], "Idempotency-Key");
        assert_eq!(key["in"], "header");
        assert_eq!(key["required"], false);
        assert_eq!(key["schema"]["type"], "string");
        assert_eq!(key["schema"]["minLength"], 1);
        assert_eq!(key["schema"]["maxLength"], 255);
        assert_eq!(key["schema"]["pattern"], KEY_PATTERN);

        assert_eq!(
            post["responses"]["201"]["headers"]["Idempotent-Replayed"]["schema"]["enum"],
            json!(["true"])
        );
        // The layer gives the handler's answers to a keyed request their id too.
        assert!(post["responses"]["201"]["headers"]["X-Request-ID"].is_object());
        for status in ["400", "409", "413", "503"] {
            let response = &post["responses"][status];
            assert!(response.is_object(), "{status} documented");
            let schema = &response["content"]["application/json"]["schema"];
            assert!(
                schema == &json!({"$ref": "#/components/schemas/IdempotencyError"})
                    || schema["anyOf"][1]
                        == json!({"$ref": "#/components/schemas/IdempotencyError"}),
                "{status}: {schema}"
            );
            assert!(response["headers"]["X-Request-ID"].is_object());
            assert!(response["headers"]["Cache-Control"].is_object());
        }
        assert!(post["responses"]["409"]["headers"]["Retry-After"].is_object());
        assert!(post["responses"]["503"]["headers"]["Retry-After"].is_object());
        assert!(post["responses"]["413"]["headers"]["Retry-After"].is_null());
        assert!(
            post["responses"]["422"].is_null(),
            "mismatch is 409 by default"
        );
        // The layer's own errors are never replays.
        assert!(post["responses"]["409"]["headers"]["Idempotent-Replayed"].is_null());
        assert!(doc["components"]["schemas"]["IdempotencyError"].is_object());

        let description = post["description"].as_str().unwrap();
        assert!(
            description.starts_with("Places a call.\n\n**Idempotent.**"),
            "{description}"
        );
        assert!(
            description.contains("for 24 hours after it completes"),
            "{description}"
        );
        assert_eq!(post["x-idempotency"]["retention_seconds"], 86_400);

        // Nothing else was touched.
        assert!(doc["paths"]["/v1/calls"]["get"]["parameters"].is_null());
        assert!(doc["paths"]["/v1/calls/{id}"]["put"]["parameters"].is_null());
    }

    #[test]
    fn a_handlers_own_response_of_a_layer_status_is_kept_beside_the_layers() {
        let doc = applied(Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| p));
        let bad = &doc["paths"]["/v1/calls"]["post"]["responses"]["400"];
        let description = bad["description"].as_str().unwrap();
        assert!(description.starts_with("The call is not valid. Answered by the idempotency layer"));
        assert!(description.contains(codes::KEY_INVALID));
        assert_eq!(
            bad["content"]["application/json"]["schema"]["anyOf"],
            json!([
                {"$ref": "#/components/schemas/ApiError"},
                {"$ref": "#/components/schemas/IdempotencyError"},
            ])
        );
        // The handler's 400 is recorded, so it can be a replay.
        assert!(bad["headers"]["Idempotent-Replayed"].is_object());
    }

    /// A layer status that falls in a range the operation documents (`5XX`), or under its
    /// `default`, is documented from that range's response, with the layer's added: the
    /// status of its own overrides the range, which otherwise no longer said that the handler
    /// answers it too (a carrier's 503 described as the layer's alone).
    #[test]
    fn a_layer_status_in_a_documented_range_keeps_the_range_s_response() {
        let mut doc = document();
        let calls = doc.paths.paths.get_mut("/v1/calls").unwrap();
        let create = calls.post.as_mut().unwrap();
        create
            .responses
            .responses
            .insert("5XX".into(), RefOr::T(json_error("The carrier failed")));
        let update = doc.paths.paths.get_mut("/v1/calls/{id}").unwrap();
        update.put.as_mut().unwrap().responses.responses.insert(
            "default".into(),
            RefOr::T(json_error("Something went wrong")),
        );
        Contract::new()
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .operation(HttpMethod::Put, "/v1/calls/{id}", |p| p)
            .apply(&mut doc)
            .unwrap();
        let doc = json(&doc);
        let both = json!([
            {"$ref": "#/components/schemas/ApiError"},
            {"$ref": "#/components/schemas/IdempotencyError"},
        ]);
        for (path, method, status, own) in [
            ("/v1/calls", "post", "503", "The carrier failed. "),
            ("/v1/calls/{id}", "put", "409", "Something went wrong. "),
            ("/v1/calls/{id}", "put", "503", "Something went wrong. "),
        ] {
            let response = &doc["paths"][path][method]["responses"][status];
            let description = response["description"].as_str().unwrap();
            assert!(
                description.starts_with(own) && description.contains("idempotency layer"),
                "{method} {path} {status}: {description}"
            );
            assert_eq!(
                response["content"]["application/json"]["schema"]["anyOf"], both,
                "{method} {path} {status}"
            );
        }
        // The range itself is left as it was.
        let range = &doc["paths"]["/v1/calls"]["post"]["responses"]["5XX"]["description"];
        assert_eq!(range, "The carrier failed");
    }

    /// `default` documents every status the operation lists no response for, so its response
    /// can be a replay whenever one of those is recorded; not when the statuses recorded are
    /// all documented on their own.
    #[test]
    fn a_default_response_is_marked_a_replay_when_it_covers_a_recorded_status() {
        let with_default = |doc: &mut OpenApi, ranges: &[&str]| {
            let update = doc.paths.paths.get_mut("/v1/calls/{id}").unwrap();
            let responses = &mut update.put.as_mut().unwrap().responses.responses;
            for range in ranges {
                responses.insert((*range).into(), RefOr::T(json_error("Updated")));
            }
            responses.insert("default".into(), RefOr::T(json_error("Something else")));
        };
        let replayed = |doc: &OpenApi| {
            json(doc)["paths"]["/v1/calls/{id}"]["put"]["responses"]["default"]["headers"]
                ["Idempotent-Replayed"]
                .is_object()
        };
        // The handler's 4xx, recorded by default, are documented under `default` here.
        let mut doc = document();
        with_default(&mut doc, &[]);
        Contract::new()
            .operation(HttpMethod::Put, "/v1/calls/{id}", |p| p)
            .apply(&mut doc)
            .unwrap();
        assert!(replayed(&doc));
        // 2xx only, all under `2XX`: nothing `default` covers is recorded.
        let mut doc = document();
        with_default(&mut doc, &["2XX"]);
        Contract::new()
            .operation(HttpMethod::Put, "/v1/calls/{id}", |p| {
                p.cache(CachePolicy::Success)
            })
            .apply(&mut doc)
            .unwrap();
        assert!(!replayed(&doc));
        // 2xx only, but a 201 or a 204 falls under `default`.
        let mut doc = document();
        with_default(&mut doc, &[]);
        Contract::new()
            .operation(HttpMethod::Put, "/v1/calls/{id}", |p| {
                p.cache(CachePolicy::Success)
            })
            .apply(&mut doc)
            .unwrap();
        assert!(replayed(&doc));
    }

    /// A layer status the operation documents only under `default` (or a range) gets that
    /// response as its start; the copy says `Idempotent-Replayed` only where a response of
    /// that status is recorded. A marked `default` made every layer status a replay: 503,
    /// never recorded, and under 2xx-only caching 400, 409 and 413 too.
    #[test]
    fn a_layer_status_copied_from_a_marked_default_is_a_replay_only_where_it_is_recorded() {
        for (cache, replayed_4xx) in [(CachePolicy::Non5xx, true), (CachePolicy::Success, false)] {
            let mut doc = document();
            let update = doc.paths.paths.get_mut("/v1/calls/{id}").unwrap();
            update.put.as_mut().unwrap().responses.responses.insert(
                "default".into(),
                RefOr::T(json_error("Something went wrong")),
            );
            Contract::new()
                .operation(HttpMethod::Put, "/v1/calls/{id}", |p| p.cache(cache))
                .apply(&mut doc)
                .unwrap();
            let responses = &json(&doc)["paths"]["/v1/calls/{id}"]["put"]["responses"];
            let replayed =
                |status: &str| responses[status]["headers"]["Idempotent-Replayed"].is_object();
            assert!(replayed("default"), "{cache:?}");
            assert!(!replayed("503"), "{cache:?}: a 5xx is never recorded");
            for status in ["400", "409", "413"] {
                assert_eq!(replayed(status), replayed_4xx, "{cache:?} {status}");
            }
        }
    }

    /// Failing open runs unprotected only when the store cannot be reached; one that answered
    /// unreadably, or gave up a claim under contention, still fails closed.
    #[test]
    fn a_fail_open_operation_still_documents_the_503_of_a_store_that_answered() {
        let doc = applied(
            Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| {
                p.on_store_error(OnStoreError::FailOpen)
            }),
        );
        let post = &doc["paths"]["/v1/calls"]["post"];
        let unavailable = post["responses"]["503"]["description"].as_str().unwrap();
        assert!(
            unavailable.contains(codes::STORE_UNAVAILABLE),
            "{unavailable}"
        );
        assert!(unavailable.contains("cannot read"), "{unavailable}");
        let words = post["description"].as_str().unwrap();
        assert!(words.contains("runs unprotected"), "{words}");
    }

    #[test]
    fn a_status_answered_outside_the_layer_is_not_documented_as_a_replay() {
        let mut doc = document();
        let paths = &mut doc.paths.paths;
        let post = paths.get_mut("/v1/calls").unwrap().post.as_mut().unwrap();
        let unauthorized = ResponseBuilder::new().description("No token").build();
        post.responses
            .responses
            .insert("401".into(), unauthorized.into());
        Contract::new()
            .answered_outside([401])
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .apply(&mut doc)
            .unwrap();
        let doc = json(&doc);
        let responses = &doc["paths"]["/v1/calls"]["post"]["responses"];
        assert!(responses["401"]["headers"]["Idempotent-Replayed"].is_null());
        assert!(responses["400"]["headers"]["Idempotent-Replayed"].is_object());
        assert!(responses["201"]["headers"]["Idempotent-Replayed"].is_object());
    }

    #[test]
    fn the_endpoints_settings_shape_what_is_documented() {
        let doc = applied(
            Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| {
                p.header("X-Idempotency-Key")
                    .key_max_len(64)
                    .required(true)
                    .on_mismatch(OnMismatch::Unprocessable)
                    .cache(CachePolicy::Success)
                    .ttl(Duration::from_secs(90 * 60))
                    .scope(Scope::Global)
            }),
        );
        let post = &doc["paths"]["/v1/calls"]["post"];
        let key = &post["parameters"][0];
        assert_eq!(key["name"], "X-Idempotency-Key");
        assert_eq!(key["required"], true);
        assert_eq!(key["schema"]["maxLength"], 64);

        let responses = &post["responses"];
        let bad = responses["400"]["description"].as_str().unwrap();
        assert!(bad.contains(codes::KEY_MISSING));
        assert!(
            !bad.contains(codes::SCOPE_MISSING),
            "a global scope is never missing"
        );
        assert!(responses["422"].is_object());
        let conflict = responses["409"]["description"].as_str().unwrap();
        assert!(!conflict.contains("different request"), "{conflict}");
        // A coding negotiated for the first request (a `Compress` inside the layer) can
        // refuse a retry under any settings.
        assert!(conflict.contains("Accept-Encoding"), "{conflict}");
        // 2xx only: the handler's 400 is never recorded, so never a replay.
        assert!(responses["201"]["headers"]["Idempotent-Replayed"].is_object());
        assert!(responses["400"]["headers"]["Idempotent-Replayed"].is_null());

        let description = post["description"].as_str().unwrap();
        assert!(
            description.contains("for 1 hour and 30 minutes after"),
            "{description}"
        );
        assert!(
            description.contains("Only 2xx responses are kept"),
            "{description}"
        );
        assert!(description.contains("gets 422"), "{description}");
    }

    /// Every keyed request's body is read whole before its key is claimed, whatever the
    /// endpoint compares: one that ends before its `Content-Length` gets 400
    /// `idempotency_body_invalid` on an operation comparing bodies byte for byte too
    /// (`a_body_that_ends_early_is_refused_in_the_envelope_and_claims_nothing`, on such an
    /// operation).
    #[test]
    fn an_operation_comparing_bodies_byte_for_byte_documents_body_invalid_too() {
        let doc = applied(Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| p));
        let bad = doc["paths"]["/v1/calls"]["post"]["responses"]["400"]["description"]
            .as_str()
            .unwrap();
        assert!(bad.contains(codes::BODY_INVALID), "{bad}");
        assert!(bad.contains("did not arrive whole"), "{bad}");
    }

    /// With `key_source = "/event_id"` the layer reads the key from the JSON body and never
    /// looks at the header: documenting the header would have clients send a key the server
    /// ignores, and a body without one runs unprotected.
    #[test]
    fn a_key_read_from_the_body_is_not_documented_as_a_header() {
        let doc = applied(
            Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| {
                p.key_source(idem_core::KeySource::Json("/event_id"))
            }),
        );
        let post = &doc["paths"]["/v1/calls"]["post"];
        let parameters = post["parameters"].as_array().cloned().unwrap_or_default();
        assert!(
            parameters.iter().all(|p| p["in"] != "header"),
            "{parameters:?}"
        );
        let words = post["description"].as_str().unwrap();
        assert!(words.contains("`/event_id`"), "{words}");
        assert!(!words.contains("Send `Idempotency-Key`"), "{words}");
        let bad = post["responses"]["400"]["description"].as_str().unwrap();
        assert!(bad.contains(codes::BODY_INVALID), "{bad}");
        assert_eq!(post["x-idempotency"]["key_source"], "/event_id");
    }

    #[test]
    fn errors_are_documented_in_the_configured_format() {
        let doc = applied(
            Contract::new()
                .with_errors(ErrorFormat::Problem)
                .operation(HttpMethod::Post, "/v1/calls", |p| p)
                .operation(HttpMethod::Put, "/v1/calls/{id}", |p| {
                    p.error_format(ErrorFormat::EnvelopeType)
                }),
        );
        let post = &doc["paths"]["/v1/calls"]["post"]["responses"]["409"]["content"];
        assert_eq!(
            post["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/IdempotencyProblem"
        );
        assert!(post["application/json"].is_null());
        let put = &doc["paths"]["/v1/calls/{id}"]["put"]["responses"]["409"]["content"];
        assert_eq!(
            put["application/json"]["schema"]["$ref"],
            "#/components/schemas/IdempotencyErrorType"
        );
        let schemas = &doc["components"]["schemas"];
        assert!(schemas["IdempotencyProblem"].is_object());
        assert!(schemas["IdempotencyErrorType"].is_object());
        assert!(
            schemas["IdempotencyError"].is_null(),
            "only the formats in use"
        );
    }

    /// Whether `value` has what `schema` requires: the properties listed as required, of the
    /// types named, all the way down.
    fn holds(schema: &Value, value: &Value) -> Result<(), String> {
        match schema["type"].as_str() {
            Some("object") => {
                let object = value
                    .as_object()
                    .ok_or(format!("{value} is not an object"))?;
                for name in schema["required"].as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap();
                    let field = object.get(name).ok_or(format!("{value} has no {name}"))?;
                    holds(&schema["properties"][name], field)?;
                }
                Ok(())
            }
            Some("string") if !value.is_string() => Err(format!("{value} is not a string")),
            Some("integer") if !value.is_u64() => Err(format!("{value} is not an integer")),
            _ => Ok(()),
        }
    }

    #[test]
    fn the_documented_error_schemas_hold_what_the_renderers_write() {
        let renderers: [(ErrorFormat, &dyn ErrorRenderer); 3] = [
            (ErrorFormat::Envelope, &JsonEnvelope::CODE),
            (ErrorFormat::EnvelopeType, &JsonEnvelope::TYPE),
            (ErrorFormat::Problem, &ProblemJson),
        ];
        for (format, renderer) in renderers {
            let (_, RefOr::T(schema)) = error_schema(format) else {
                panic!("an inline schema")
            };
            let schema = serde_json::to_value(schema).unwrap();
            let response = renderer.render(&IdempotencyError::InFlight, "req-1");
            let content_type = response.headers().get("content-type").unwrap().clone();
            assert_eq!(content_type, media_type(format));
            let body = response.into_body().try_into_bytes().unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            holds(&schema, &body).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        }
    }

    #[test]
    fn the_middleware_form_covers_its_methods_under_its_prefix() {
        let doc = applied(Contract::new().middleware("/v1", |p| p.ttl(Duration::from_secs(60))));
        let paths = &doc["paths"];
        for operation in [&paths["/v1/calls"]["post"], &paths["/v1/calls/{id}"]["put"]] {
            assert_eq!(operation["parameters"][0]["name"], "Idempotency-Key");
            assert_eq!(operation["x-idempotency"]["retention_seconds"], 60);
        }
        assert!(
            paths["/v1/calls"]["get"]["parameters"].is_null(),
            "GET keys are ignored"
        );

        let err = Contract::new()
            .middleware("/v2", |p| p)
            .apply(&mut document());
        assert_eq!(
            err,
            Err(ContractError::NothingUnder {
                prefix: "/v2".into()
            })
        );
    }

    /// The middleware runs before the app routes a request, so that it keeps keys per endpoint
    /// by method and path, not by route pattern: the same key on another path of one documented
    /// operation (another value of a path parameter) is another key. Its contract says so; an
    /// operation's, whose keys are per route pattern, says per operation.
    #[actix_web::test]
    async fn a_middleware_s_keys_per_endpoint_are_described_per_path_as_it_keeps_them() {
        use actix_web::{test, web, App, HttpResponse};

        let doc = applied(Contract::new().middleware("/v1", |p| p.per_endpoint(true)));
        let put = &doc["paths"]["/v1/calls/{id}"]["put"];
        let words = put["description"].as_str().unwrap();
        assert!(
            words.contains("Keys are per method and path: the same key on another path"),
            "{words}"
        );
        assert!(!words.contains("Keys are per operation"), "{words}");
        assert_eq!(put["x-idempotency"]["per_operation"], true);
        assert_eq!(put["x-idempotency"]["per_path"], true);
        let doc = applied(
            Contract::new().operation(HttpMethod::Put, "/v1/calls/{id}", |p| p.per_endpoint(true)),
        );
        let put = &doc["paths"]["/v1/calls/{id}"]["put"];
        let words = put["description"].as_str().unwrap();
        assert!(words.contains("Keys are per operation"), "{words}");
        assert_eq!(put["x-idempotency"]["per_path"], false);
        assert_eq!(
            put["x-idempotency"]["operation_name"],
            serde_json::Value::Null
        );
        // A named endpoint's keys are per its name, under the middleware too.
        let named = |p: crate::Overrides| p.per_endpoint(true).endpoint_name("calls.update");
        for doc in [
            applied(Contract::new().middleware("/v1", named)),
            applied(Contract::new().operation(HttpMethod::Put, "/v1/calls/{id}", named)),
        ] {
            let put = &doc["paths"]["/v1/calls/{id}"]["put"];
            let words = put["description"].as_str().unwrap();
            assert!(
                words.contains("Keys are per operation, under the name \"calls.update\""),
                "{words}"
            );
            assert_eq!(put["x-idempotency"]["per_path"], false);
            assert_eq!(put["x-idempotency"]["operation_name"], "calls.update");
        }

        // What the middleware does: another path of the operation under the key runs.
        let app = test::init_service(
            App::new()
                .app_data(crate::IdempotencyConfig::new(crate::MokaStore::new()))
                .service(
                    web::scope("/v1")
                        .wrap(crate::Idempotency::new().with_overrides(|p| p.per_endpoint(true)))
                        .route(
                            "/calls/{id}",
                            web::put().to(|| async { HttpResponse::Ok().body("updated") }),
                        ),
                ),
        )
        .await;
        let put = |path: &str, body: &'static str| {
            test::TestRequest::put()
                .uri(path)
                .insert_header(("Authorization", "Bearer t"))
                .insert_header(("Idempotency-Key", "k"))
                .set_payload(body)
                .to_request()
        };
        let status = |res: actix_web::dev::ServiceResponse| {
            let replayed = res.headers().contains_key("idempotent-replayed");
            (res.status().as_u16(), replayed)
        };
        let first = test::call_service(&app, put("/v1/calls/1", "a")).await;
        assert_eq!(status(first), (200, false));
        let other_path = test::call_service(&app, put("/v1/calls/2", "a")).await;
        assert_eq!(status(other_path), (200, false), "another key, run");
        let same_path = test::call_service(&app, put("/v1/calls/1", "b")).await;
        assert_eq!(status(same_path), (409, false), "one key, another request");
    }

    #[test]
    fn the_middleware_form_covers_whole_segments_under_its_prefix() {
        // As actix's `web::scope("/v1")` matches: `/v1` and what lies under `/v1/`, never
        // `/v1beta`.
        let mut doc = document();
        for path in ["/v1beta/calls", "/v10", "/v1"] {
            let create = OperationBuilder::new()
                .response("201", ok("Placed"))
                .build();
            doc.paths
                .paths
                .insert(path.into(), PathItem::new(HttpMethod::Post, create));
        }
        Contract::new()
            .middleware("/v1", |p| p)
            .apply(&mut doc)
            .unwrap();
        let paths = &json(&doc)["paths"];
        for covered in ["/v1/calls", "/v1"] {
            assert!(
                paths[covered]["post"]["x-idempotency"].is_object(),
                "{covered}"
            );
        }
        for outside in ["/v1beta/calls", "/v10"] {
            assert!(
                paths[outside]["post"]["x-idempotency"].is_null(),
                "{outside}"
            );
            assert!(paths[outside]["post"]["parameters"].is_null(), "{outside}");
        }
        let mut slash = document();
        Contract::new()
            .middleware("/v1/", |p| p)
            .apply(&mut slash)
            .unwrap();
        assert!(json(&slash)["paths"]["/v1/calls"]["post"]["x-idempotency"].is_object());
    }

    #[test]
    fn a_mistaken_declaration_is_refused_and_leaves_the_document_as_it_was() {
        let mut doc = document();
        let before = json(&doc);
        let err = Contract::new()
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .operation(HttpMethod::Post, "/v1/call", |p| p)
            .apply(&mut doc)
            .unwrap_err();
        assert_eq!(
            err,
            ContractError::UnknownOperation {
                method: "POST",
                path: "/v1/call".into()
            }
        );
        assert!(err
            .to_string()
            .starts_with("the document has no operation POST /v1/call;"));
        assert_eq!(json(&doc), before);

        let twice = Contract::new()
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .middleware("/v1", |p| p)
            .apply(&mut doc);
        assert!(matches!(twice, Err(ContractError::DescribedTwice { .. })));

        let header = Contract::new()
            .operation(HttpMethod::Post, "/v1/calls", |p| p.header("no spaces"))
            .apply(&mut doc);
        assert_eq!(header, Err(ContractError::InvalidHeader("no spaces")));
        assert_eq!(json(&doc), before);

        // Settings the layer refuses when the app starts (or answers 500 to every keyed
        // request under) describe no endpoint that can exist: refused with the layer's reason,
        // where a contract was written for them.
        type Configure = fn(Overrides) -> Overrides;
        let refused: [(Configure, PolicyError); 7] = [
            (|p| p.key_max_len(0), PolicyError::KeyMaxLenZero),
            (|p| p.endpoint_name(""), PolicyError::EndpointNameEmpty),
            (
                |p| p.per_endpoint(false).endpoint_name("calls.create"),
                PolicyError::EndpointNameUnused("calls.create"),
            ),
            (
                |p| p.ttl(Duration::ZERO),
                PolicyError::TtlTooShort {
                    ttl: Duration::ZERO,
                },
            ),
            (
                |p| p.lease(Duration::from_millis(1)),
                PolicyError::LeaseTooShort {
                    lease: Duration::from_millis(1),
                },
            ),
            (
                |p| p.scope(Scope::Header("Idempotency-Key")),
                PolicyError::ScopeIsKey("Idempotency-Key"),
            ),
            // Refused by the attribute and the middleware: only overrides tell a header
            // named on purpose from the one every policy has.
            (
                |p| p.header("X-Key").key_source(KeySource::Json("/id")),
                PolicyError::HeaderUnread("X-Key"),
            ),
        ];
        for (configure, reason) in refused {
            let applied = Contract::new()
                .operation(HttpMethod::Post, "/v1/calls", configure)
                .apply(&mut doc);
            assert_eq!(applied, Err(ContractError::Settings(reason.clone())));
            let message = applied.unwrap_err().to_string();
            assert!(message.ends_with(&reason.to_string()), "{message}");
            let error = ContractError::Settings(reason.clone());
            let source = std::error::Error::source(&error).map(ToString::to_string);
            assert_eq!(source, Some(reason.to_string()));
            assert_eq!(json(&doc), before);
        }

        // And defaults that name an endpoint, which the application refuses.
        let named = Policy::DEFAULT
            .per_endpoint(true)
            .endpoint_name("calls.create");
        let applied = Contract::new()
            .with_defaults(named)
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .apply(&mut doc);
        let reason = PolicyError::EndpointNameInDefaults("calls.create");
        assert_eq!(applied, Err(ContractError::Settings(reason)));
        assert_eq!(json(&doc), before);

        let contract = Contract::new().operation(HttpMethod::Post, "/v1/calls", |p| p);
        contract.apply(&mut doc).unwrap();
        let once = json(&doc);
        assert!(matches!(
            contract.apply(&mut doc),
            Err(ContractError::DescribedTwice { .. })
        ));
        assert_eq!(json(&doc), once, "a second apply adds nothing");
    }

    #[test]
    fn a_shared_response_is_copied_before_it_is_changed() {
        let mut doc = document();
        doc.components = Some(
            ComponentsBuilder::new()
                .response("Created", ok("Created"))
                .build(),
        );
        let created =
            || OperationBuilder::new().response("201", Ref::from_response_name("Created"));
        doc.paths.paths.insert(
            "/v1/messages".into(),
            PathItem::new(HttpMethod::Post, created().build()),
        );
        doc.paths.paths.insert(
            "/v1/notes".into(),
            PathItem::new(HttpMethod::Post, created().build()),
        );
        Contract::new()
            .operation(HttpMethod::Post, "/v1/messages", |p| p)
            .apply(&mut doc)
            .unwrap();
        let doc = json(&doc);
        let messages = &doc["paths"]["/v1/messages"]["post"]["responses"]["201"];
        assert!(messages["headers"]["Idempotent-Replayed"].is_object());
        assert_eq!(
            doc["paths"]["/v1/notes"]["post"]["responses"]["201"]["$ref"],
            "#/components/responses/Created"
        );
        assert!(doc["components"]["responses"]["Created"]["headers"].is_null());
    }

    /// A response the document names by a reference it cannot resolve (another file's, or a
    /// reference to a reference) is the operation's own: it is kept, not replaced by the
    /// layer's description of that status.
    #[test]
    fn a_response_reference_that_cannot_be_resolved_is_kept() {
        let mut doc = document();
        let external = Ref::new("common.yaml#/responses/BadRequest");
        let operation = operation_mut(&mut doc, "POST", "/v1/calls").unwrap();
        operation
            .responses
            .responses
            .insert("400".into(), RefOr::Ref(external));
        Contract::new()
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .apply(&mut doc)
            .unwrap();
        let doc = json(&doc);
        let bad = &doc["paths"]["/v1/calls"]["post"]["responses"]["400"];
        assert_eq!(bad["$ref"], "common.yaml#/responses/BadRequest", "{bad}");
    }

    #[test]
    fn a_key_header_already_documented_is_replaced_not_doubled() {
        let mut doc = document();
        let operation = operation_mut(&mut doc, "POST", "/v1/calls").unwrap();
        operation.parameters = Some(vec![RefOr::T(
            ParameterBuilder::new()
                .name("idempotency-key")
                .parameter_in(ParameterIn::Header)
                .build(),
        )]);
        Contract::new()
            .operation(HttpMethod::Post, "/v1/calls", |p| p)
            .apply(&mut doc)
            .unwrap();
        let doc = json(&doc);
        let parameters = doc["paths"]["/v1/calls"]["post"]["parameters"]
            .as_array()
            .unwrap();
        assert_eq!(parameters.len(), 1);
        assert_eq!(parameters[0]["name"], "Idempotency-Key");
    }

    #[test]
    fn status_ranges_are_replays_when_any_status_in_them_is_recorded() {
        let all_but_5xx = Policy::DEFAULT;
        let success = Policy::DEFAULT.cache(CachePolicy::Success);
        for (status, non_5xx, only_2xx) in [
            ("201", true, true),
            ("2XX", true, true),
            ("4xx", true, false),
            ("404", true, false),
            ("5XX", false, false),
            ("503", false, false),
            ("default", true, true),
        ] {
            assert_eq!(replayable(&all_but_5xx, status, &[]), non_5xx, "{status}");
            assert_eq!(replayable(&success, status, &[]), only_2xx, "{status}");
        }
        // `default` is what the others leave: with every 2xx and 4xx documented, only the
        // statuses past 599 that the default policy records.
        let documented = ["2XX".to_owned(), "4xx".to_owned(), "default".to_owned()];
        assert!(!replayable(&success, "default", &documented));
        assert!(replayable(&all_but_5xx, "default", &documented));
    }

    #[test]
    fn durations_are_said_in_words() {
        let words = |secs| duration_in_words(Duration::from_secs(secs));
        assert_eq!(words(24 * 3600), "24 hours");
        assert_eq!(words(3600), "1 hour");
        assert_eq!(words(90 * 60), "1 hour and 30 minutes");
        assert_eq!(words(7 * 86_400), "7 days");
        assert_eq!(words(2 * 86_400 + 3600 + 1), "2 days, 1 hour and 1 second");
        assert_eq!(words(45), "45 seconds");
        assert_eq!(
            duration_in_words(Duration::from_millis(500)),
            "500 milliseconds"
        );
        // The attribute takes a TTL or a wait in milliseconds: none of it goes unsaid.
        assert_eq!(
            duration_in_words(Duration::from_millis(1500)),
            "1 second and 500 milliseconds"
        );
        assert_eq!(
            duration_in_words(Duration::from_millis(3_600_001)),
            "1 hour and 1 millisecond"
        );
    }

    /// A retention of part of a second is said as it is, where it was cut to whole seconds
    /// (1 for 1.5 s, 2 for 2.25 s).
    #[test]
    fn a_retention_of_part_of_a_second_is_said_whole() {
        let retention = |ttl| {
            extension(&Policy::DEFAULT.ttl(Duration::from_millis(ttl)), false)["retention_seconds"]
                .clone()
        };
        assert_eq!(retention(2250), json!(2.25));
        assert_eq!(retention(1500), json!(1.5));
        assert_eq!(retention(86_400_000), json!(86_400));
    }

    #[test]
    fn the_contract_starts_from_the_applications_defaults() {
        let config = IdempotencyConfig::new(crate::MokaStore::new())
            .with_defaults(
                Policy::DEFAULT
                    .header("X-Key")
                    .ttl(Duration::from_secs(3600)),
            )
            .unwrap();
        let doc = applied(
            Contract::from_config(&config)
                .operation(HttpMethod::Post, "/v1/calls", |p| p.required(true))
                .operation_policy(HttpMethod::Put, "/v1/calls/{id}", Policy::DEFAULT),
        );
        let post = &doc["paths"]["/v1/calls"]["post"];
        assert_eq!(post["parameters"][0]["name"], "X-Key");
        assert_eq!(post["parameters"][0]["required"], true);
        assert_eq!(post["x-idempotency"]["retention_seconds"], 3600);
        let put = &doc["paths"]["/v1/calls/{id}"]["put"];
        assert_eq!(put["parameters"][0]["name"], "Idempotency-Key");
        assert_eq!(put["x-idempotency"]["retention_seconds"], 86_400);
    }

    fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![b'"', b'\\', b'a', b'#', b'~', b'!', b' ', 0x7f, b'\t']),
            0..10,
        )
    }

    proptest! {
        /// A client that follows the documented pattern is never refused for the key's
        /// syntax, and the pattern leaves out nothing the parser takes.
        #[test]
        fn the_key_pattern_accepts_what_the_key_parser_accepts(raw in key_bytes()) {
            let pattern = regex::Regex::new(KEY_PATTERN).unwrap();
            let matched = std::str::from_utf8(&raw).is_ok_and(|s| pattern.is_match(s));
            let parsed = ClientKey::parse(&raw, 255).is_ok();
            prop_assert_eq!(matched, parsed, "{:?}", String::from_utf8_lossy(&raw));
        }
    }
}
