//! The typed model of the attribute's arguments: what each one means once read, before any
//! code is generated. [`crate::attr`] builds it, [`crate::valid`] checks it as a whole, and
//! [`crate::expand`] turns it into the endpoint's settings.

use std::time::Duration;

use proc_macro2::Span;
use syn::Ident;

/// An argument's value, with its name as written, on which errors about the argument as a
/// whole are reported (errors about the value itself are reported as it is read).
pub(crate) struct Spanned<T> {
    pub name: Ident,
    pub value: T,
}

impl<T> Spanned<T> {
    /// Where the argument's name was written.
    pub fn span(&self) -> Span {
        self.name.span()
    }
}

/// Every argument, each `None` when not given.
#[derive(Default)]
pub(crate) struct Args {
    pub ttl: Option<Spanned<Duration>>,
    pub scope: Option<Spanned<Scope>>,
    pub header: Option<Spanned<String>>,
    pub key_max_len: Option<Spanned<usize>>,
    pub required: Option<Spanned<bool>>,
    pub mismatch: Option<Spanned<Mismatch>>,
    pub in_flight: Option<Spanned<InFlight>>,
    pub wait_timeout: Option<Spanned<Duration>>,
    pub cache: Option<Spanned<Cache>>,
    pub per_endpoint: Option<Spanned<PerEndpoint>>,
    pub lease: Option<Spanned<Duration>>,
    pub fail_open: Option<Spanned<bool>>,
    pub errors: Option<Spanned<ErrorFormat>>,
    pub max_body: Option<Spanned<usize>>,
    pub max_response: Option<Spanned<usize>>,
    pub replay_set_cookie: Option<Spanned<bool>>,
    pub fingerprint: Option<Spanned<Fingerprint>>,
    pub fingerprint_ignore: Option<Spanned<Vec<String>>>,
    pub fingerprint_headers: Option<Spanned<Vec<String>>>,
    pub replay_headers: Option<Spanned<Vec<String>>>,
    pub replay_drop_headers: Option<Spanned<Vec<String>>>,
    pub on_replay: Option<Spanned<syn::Path>>,
    pub key: Option<Spanned<Key>>,
    pub krate: Option<Spanned<syn::Path>>,
}

/// Whether keys are per endpoint: `per_endpoint` (or `= true`/`false`), or
/// `per_endpoint = "<name>"`, per endpoint under that name.
pub(crate) enum PerEndpoint {
    Flag(bool),
    Named(String),
}

/// Whose key it is.
pub(crate) enum Scope {
    ApiKey,
    BasicAuthUser,
    Principal,
    Global,
    /// `"header:<Name>"`.
    Header(String),
    /// A function, named by its path.
    Function(syn::Path),
}

/// How a body is compared.
pub(crate) enum Fingerprint {
    Form(BodyForm),
    /// A function, named by its path.
    Function(syn::Path),
}

/// A canonical form of bodies: `fingerprint = "json"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyForm {
    Bytes,
    Json,
    Form,
}

impl Choice for BodyForm {
    const WHAT: &'static str = "fingerprint form";
    const OR: Option<&'static str> =
        Some("a function `fn(&HttpRequest, &[u8]) -> Option<Vec<u8>>` named without quotes");
    const OPTIONS: &'static [(&'static str, &'static str, Self)] = &[
        ("bytes", "byte for byte", Self::Bytes),
        ("json", "as parsed JSON", Self::Json),
        ("form", "as form pairs in any order", Self::Form),
    ];
}

/// Where the key is, when not in a header.
pub(crate) enum Key {
    /// `"json:<pointer>"`: the member the pointer names in the JSON body.
    Json(String),
    /// A function, named by its path.
    Function(syn::Path),
}

/// An argument whose value is one of a few strings, each standing for a variant.
pub(crate) trait Choice: Copy + 'static {
    /// What the value is, in the message that refuses an unknown one.
    const WHAT: &'static str;
    /// What else the argument takes, last in that message.
    const OR: Option<&'static str> = None;
    /// Each value: as written, what it means, and what it stands for. The first is the
    /// example in messages.
    const OPTIONS: &'static [(&'static str, &'static str, Self)];
}

/// `mismatch`: the answer to a key reused with another request.
#[derive(Clone, Copy)]
pub(crate) enum Mismatch {
    Conflict,
    Unprocessable,
    Replay,
}

impl Choice for Mismatch {
    const WHAT: &'static str = "mismatch answer";
    const OPTIONS: &'static [(&'static str, &'static str, Self)] = &[
        ("conflict", "409", Self::Conflict),
        ("unprocessable", "422", Self::Unprocessable),
        ("replay", "the first response", Self::Replay),
    ];
}

/// `in_flight`: the answer while the first request runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum InFlight {
    Conflict,
    Wait,
}

impl Choice for InFlight {
    const WHAT: &'static str = "in-flight answer";
    const OPTIONS: &'static [(&'static str, &'static str, Self)] = &[
        ("conflict", "409", Self::Conflict),
        ("wait", "then replay; see wait_timeout", Self::Wait),
    ];
}

/// `cache`: which responses are recorded.
#[derive(Clone, Copy)]
pub(crate) enum Cache {
    Non5xx,
    Success,
}

impl Choice for Cache {
    const WHAT: &'static str = "cache rule";
    const OPTIONS: &'static [(&'static str, &'static str, Self)] = &[
        ("non_5xx", "every status but 5xx", Self::Non5xx),
        ("2xx", "2xx only", Self::Success),
    ];
}

/// `errors`: the body of the layer's own errors.
#[derive(Clone, Copy)]
pub(crate) enum ErrorFormat {
    Envelope,
    Type,
    Problem,
}

impl Choice for ErrorFormat {
    const WHAT: &'static str = "error format";
    const OPTIONS: &'static [(&'static str, &'static str, Self)] = &[
        ("envelope", "error.code", Self::Envelope),
        ("type", "error.type", Self::Type),
        ("problem", "RFC 9457", Self::Problem),
    ];
}
