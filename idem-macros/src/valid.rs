//! Rules that no single argument breaks alone: arguments that make no sense together, and a
//! handler the attribute cannot wrap.

use proc_macro2::{Ident, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{FnArg, ItemFn};

use crate::ast::{Args, BodyForm, Fingerprint, InFlight, Key, Mismatch, Scope, Spanned};
use crate::errors::Errors;

/// The most arguments a handler can take: actix extracts tuples of up to 16.
const MAX_EXTRACTORS: usize = 16;

/// Checks the arguments together.
pub(crate) fn args(args: &Args, errors: &mut Errors) {
    let waits = args
        .in_flight
        .as_ref()
        .is_some_and(|a| a.value == InFlight::Wait);
    if let (Some(timeout), false) = (&args.wait_timeout, waits) {
        errors.push(
            &timeout.name,
            "`wait_timeout` only applies with `in_flight = \"wait\"`; add it, or remove `wait_timeout`",
        );
    }
    if let Some(ignore) = &args.fingerprint_ignore {
        let reads = match args.fingerprint.as_ref().map(|f| &f.value) {
            Some(Fingerprint::Form(BodyForm::Json)) => None,
            Some(Fingerprint::Form(BodyForm::Bytes)) => {
                Some("`fingerprint = \"bytes\"` compares bodies byte for byte")
            }
            Some(Fingerprint::Form(BodyForm::Form)) => {
                Some("`fingerprint = \"form\"` reads bodies as forms")
            }
            Some(Fingerprint::Function(_)) => {
                Some("a fingerprint function reads bodies its own way")
            }
            None => Some("this attribute does not say that bodies are compared as JSON (the built-in default compares them byte for byte, and an attribute cannot see the application's defaults)"),
        };
        if let Some(reads) = reads {
            errors.push(
                &ignore.name,
                format!("`fingerprint_ignore` leaves members of a JSON body out, but {reads}; add `fingerprint = \"json\"`, or remove `fingerprint_ignore`"),
            );
        }
    }
    if args
        .mismatch
        .as_ref()
        .is_some_and(|m| matches!(m.value, Mismatch::Replay))
    {
        // Each named as written, which is the setting's name.
        let unread = [&args.fingerprint_headers, &args.fingerprint_ignore];
        for name in unread.into_iter().flatten().map(|a| &a.name) {
            errors.push(name, format!("`mismatch = \"replay\"` answers a reused key with the first response whatever the request, so `{name}` would change no answer; remove `{name}`, or answer mismatches with `mismatch = \"conflict\"` (409) or `\"unprocessable\"` (422)"));
        }
    }
    if let (Some(_), Some(drop)) = (&args.replay_headers, &args.replay_drop_headers) {
        errors.push(
            &drop.name,
            "give `replay_headers` (the headers a replay keeps) or `replay_drop_headers` (the headers it drops), not both",
        );
    }
    if let (
        Some(Spanned {
            name,
            value: Scope::Header(scoped),
        }),
        Some(header),
    ) = (&args.scope, &args.header)
    {
        if scoped.eq_ignore_ascii_case(&header.value) {
            errors.push(
                name,
                format!("the scope is read from `{scoped}`, the key's own header, so that every key is its own scope and any caller who sends a key reaches its record; scope keys by who sends them (such as \"api_key\"), or say `scope = \"global\"` if callers share keys"),
            );
        }
    }
    if let Some(header) = &args.header {
        // The headers a built-in scope reads the caller's credential from. Without a scope of
        // its own, the attribute's is the application's, which it cannot see: judged then on
        // keyed requests (500 `idempotency_misconfigured`, and logged).
        let (scope, credentials): (_, &[&str]) = match args.scope.as_ref().map(|s| &s.value) {
            Some(Scope::ApiKey) => ("the scope \"api_key\"", &["authorization", "x-api-key"]),
            Some(Scope::BasicAuthUser) => ("the scope \"basic_auth_user\"", &["authorization"]),
            _ => ("", &[]),
        };
        if credentials
            .iter()
            .any(|name| name.eq_ignore_ascii_case(&header.value))
        {
            errors.push(
                &header.name,
                format!("keys are read from `{}`, which {scope} reads the caller's credential from, so that every request with that credential would carry the same key (and one whose credential holds a space, as `Bearer <token>` does, would be refused); read keys from a header of their own, such as \"Idempotency-Key\"", header.value),
            );
        } else if args.key.is_none()
            && NOT_KEYS
                .iter()
                .any(|name| name.eq_ignore_ascii_case(&header.value))
        {
            errors.push(
                &header.name,
                format!("keys are read from `{}`, which clients send for another purpose (a credential, a cookie, or a description of the request), so that every request carrying the same value would share one key; read keys from a header of their own, such as \"Idempotency-Key\"", header.value),
            );
        }
    }
    if let (Some(key), Some(header)) = (&args.key, &args.header) {
        let what = match key.value {
            Key::Json(_) => "from the JSON body",
            Key::Function(_) => "with a function",
        };
        errors.push(
            &header.name,
            format!("`header` names the key's header, but `key` reads the key {what}; keep one"),
        );
    }
    if let (
        Some(Spanned {
            name,
            value: Key::Json(_),
        }),
        Some(Spanned {
            value: Fingerprint::Form(BodyForm::Form),
            ..
        }),
    ) = (&args.key, &args.fingerprint)
    {
        errors.push(
            name,
            "`key = \"json:...\"` reads a JSON body, but `fingerprint = \"form\"` says bodies are forms; read the key with a function, or compare bodies as JSON",
        );
    }
}

/// Checks that `item` is a handler the attribute can wrap.
pub(crate) fn handler(item: &ItemFn, errors: &mut Errors) {
    let again = item.attrs.iter().find(|attr| {
        attr.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "idempotent")
    });
    if let Some(again) = again {
        errors.push(
            again,
            "#[idempotent] is given twice; give one, with all the arguments",
        );
    }
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token,
            "#[idempotent] handlers must be `async fn`, as actix-web handlers are",
        );
    }
    // Qualifiers no actix-web handler has: the generated handler, a plain `async fn`, would
    // drop them unseen (and with them what `unsafe` asks of callers).
    if let Some(constness) = sig.constness {
        errors.push(
            constness,
            "#[idempotent] handlers cannot be `const`; remove `const`",
        );
    }
    if let syn::Safety::Unsafe(unsafety) = sig.safety {
        errors.push(
            unsafety,
            "#[idempotent] handlers cannot be `unsafe`, as actix-web handlers cannot; remove `unsafe` and call unsafe code in an `unsafe` block",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.push(
            abi,
            "#[idempotent] handlers cannot name an ABI (`extern`), as actix-web handlers are Rust functions; remove it",
        );
    }
    if let Some(receiver) = sig.receiver() {
        errors.push(
            receiver,
            "#[idempotent] handlers cannot take `self`; write an associated function and register it with `web::resource(..).route(..)`",
        );
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(pat) = arg {
            if contains_impl(pat.ty.to_token_stream()) {
                errors.push(
                    &pat.ty,
                    "#[idempotent] handlers name their extractor types; `impl Trait` arguments are not supported",
                );
            }
        }
    }
    // The expansion extracts the arguments without `#[cfg]` as one tuple, which actix-web's
    // `FromRequest` takes up to 16 long, and each under `#[cfg]` on its own (it may be
    // configured out, which only the compiler knows): only the tuple is bounded.
    let always = sig.inputs.iter().filter(|arg| match arg {
        FnArg::Typed(pat) => !pat.attrs.iter().any(|a| a.path().is_ident("cfg")),
        FnArg::Receiver(_) => true,
    });
    if always.count() > MAX_EXTRACTORS {
        errors.push(
            &sig.inputs,
            format!("actix-web handlers take at most {MAX_EXTRACTORS} extractors; group some in a tuple or a custom extractor"),
        );
    }
}

/// Whether `tokens` hold an `impl Trait` type, which cannot be named in generated code.
pub(crate) fn contains_impl(tokens: TokenStream) -> bool {
    mentions(tokens, &|ident| ident == "impl")
}

/// Whether `tokens` hold an identifier `named` picks, at any depth.
pub(crate) fn mentions(tokens: TokenStream, named: &dyn Fn(&Ident) -> bool) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => named(&ident),
        TokenTree::Group(group) => mentions(group.stream(), named),
        _ => false,
    })
}

/// Headers that are never a key's, as `Policy::NOT_KEYS` lists them (this crate does not
/// depend on idem-core; a test holds the two alike): clients send them for another purpose,
/// the same value on many requests.
pub(crate) const NOT_KEYS: &[&str] = &[
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Authorization",
    "Cache-Control",
    "Connection",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "Cookie",
    "Date",
    "Expect",
    "Forwarded",
    "Host",
    "If-Match",
    "If-Modified-Since",
    "If-None-Match",
    "If-Range",
    "If-Unmodified-Since",
    "Keep-Alive",
    "Origin",
    "Pragma",
    "Proxy-Authorization",
    "Proxy-Connection",
    "Range",
    "Referer",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "User-Agent",
    "Via",
    "X-API-Key",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
];
