//! Parsing and validating the attribute's arguments. Every mistake is collected, so the user
//! sees all of them at once, each spanned on the offending token.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Lit, LitStr, Token};

/// The arguments, by name, with what each accepts.
const ALLOWED: &str = "ttl, scope, header, key_max_len, required, mismatch, in_flight, \
                       wait_timeout, cache, per_endpoint, lease, fail_open, errors, max_body, max_response, crate";

/// The longest `key_max_len` accepted: keys are header values, and servers cap header sizes.
const KEY_MAX_LEN_LIMIT: u64 = 8192;

/// One `name`, `name = "literal"` or `name = path`.
struct RawArg {
    name: Ident,
    value: Option<Lit>,
    path: Option<syn::Path>,
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name = Ident::parse_any(input)?;
        let (mut value, mut path) = (None, None);
        if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let lookahead = input.lookahead1();
            if lookahead.peek(Lit) {
                value = Some(input.parse()?);
            } else if lookahead.peek(Ident::peek_any) || lookahead.peek(Token![::]) {
                path = Some(input.parse()?);
            } else {
                return Err(lookahead.error());
            }
        }
        Ok(Self { name, value, path })
    }
}

struct RawArgs(Punctuated<RawArg, Token![,]>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Punctuated::parse_terminated(input).map(Self)
    }
}

/// The validated arguments: each set one becomes a const `Policy` setter call.
#[derive(Default)]
pub struct Args {
    pub krate: Option<syn::Path>,
    /// `scope = some::function`: the request's scope comes from a user function.
    pub scope_fn: Option<syn::Path>,
    setters: Vec<TokenStream>,
}

impl Args {
    /// The endpoint's overrides of the application's policy, as a const expression. It names
    /// the support module `__idem_p`, which the expansion brings into scope, since
    /// `crate = "..."` may come after the other arguments.
    pub fn overrides(&self) -> TokenStream {
        let setters = &self.setters;
        quote!(__idem_p::Overrides::NONE #(.#setters)*)
    }
}

#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: impl ToTokens, message: impl std::fmt::Display) {
        let error = syn::Error::new_spanned(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn push_at(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }
}

/// Parses and validates `tokens`.
pub fn parse(tokens: TokenStream) -> Result<Args, syn::Error> {
    let raw: RawArgs = syn::parse2(tokens)?;
    let mut errors = Errors::default();
    let mut seen: Vec<Ident> = Vec::new();
    let mut args = Args::default();
    let mut in_flight_wait: Option<Ident> = None;
    let mut wait_timeout: Option<(Ident, Duration)> = None;

    for RawArg { name, value, path } in raw.0 {
        let key = name.to_string();
        if seen.contains(&name) {
            errors.push(&name, format!("`{key}` is given twice; keep one"));
            continue;
        }
        seen.push(name.clone());
        if let Some(path) = path {
            if key == "scope" {
                args.scope_fn = Some(path);
            } else if ALLOWED.split(", ").any(|a| a == key) {
                errors.push(
                    &path,
                    format!(
                    "`{key}` takes a literal value, not a path; only `scope` also takes a function"
                ),
                );
            } else {
                errors.push(
                    &name,
                    format!("unknown argument `{key}`; allowed: {ALLOWED}"),
                );
            }
            continue;
        }
        let mut out = |setter: TokenStream| args.setters.push(setter);
        match key.as_str() {
            "ttl" | "lease" => {
                if let Some(d) = duration(&name, value.as_ref(), &mut errors) {
                    let ms = millis(d);
                    let setter = Ident::new(&key, name.span());
                    out(quote!(#setter(__idem_p::Duration::from_millis(#ms))));
                }
            }
            "wait_timeout" => {
                if let Some(d) = duration(&name, value.as_ref(), &mut errors) {
                    wait_timeout = Some((name.clone(), d));
                }
            }
            "scope" => {
                if let Some(s) = string(&name, value.as_ref(), "\"api_key\"", &mut errors) {
                    let v = s.value();
                    match v.as_str() {
                        "api_key" => out(quote!(scope(__idem_p::Scope::ApiKey))),
                        "global" => out(quote!(scope(__idem_p::Scope::Global))),
                        "basic_auth_user" => out(quote!(scope(__idem_p::Scope::BasicAuthUser))),
                        "principal" => out(quote!(scope(__idem_p::Scope::Principal))),
                        _ => match v.strip_prefix("header:") {
                            Some(h) if is_header_name(h) => {
                                out(quote!(scope(__idem_p::Scope::Header(#h))))
                            }
                            Some(_) => errors.push(s, format!(
                                "`{v}` does not name a valid header; write \"header:<Name>\", such as \"header:X-Tenant-Id\""
                            )),
                            None => errors.push(s, format!(
                                "unknown scope \"{v}\"; expected \"api_key\", \"basic_auth_user\", \"principal\", \"global\", \"header:<Name>\", or a function `fn(&HttpRequest) -> Option<String>` named without quotes"
                            )),
                        },
                    }
                }
            }
            "header" => {
                if let Some(s) = string(&name, value.as_ref(), "\"Idempotency-Key\"", &mut errors) {
                    let h = s.value();
                    if is_header_name(&h) {
                        out(quote!(header(#h)));
                    } else {
                        errors.push(s, format!(
                            "\"{h}\" is not a valid header name; use letters, digits and `-`, such as \"X-Idempotency-Key\""
                        ));
                    }
                }
            }
            "key_max_len" | "max_body" | "max_response" => {
                let (min, max) = match key.as_str() {
                    "key_max_len" => (1, KEY_MAX_LEN_LIMIT),
                    _ => (1, u64::from(u32::MAX)),
                };
                if let Some(n) = integer(&name, value.as_ref(), min, max, &mut errors) {
                    let n = n as usize;
                    let setter = Ident::new(&key, name.span());
                    out(quote!(#setter(#n)));
                }
            }
            "required" | "per_endpoint" => {
                if let Some(b) = flag(&name, value.as_ref(), &mut errors) {
                    let setter = Ident::new(&key, name.span());
                    out(quote!(#setter(#b)));
                }
            }
            "fail_open" => {
                if let Some(b) = flag(&name, value.as_ref(), &mut errors) {
                    if b {
                        out(quote!(on_store_error(__idem_p::OnStoreError::FailOpen)));
                    }
                }
            }
            "mismatch" => {
                let options = [
                    ("conflict", "409", quote!(Conflict)),
                    ("unprocessable", "422", quote!(Unprocessable)),
                    ("replay", "the first response", quote!(Replay)),
                ];
                if let Some(v) = choice(
                    &name,
                    value.as_ref(),
                    "mismatch answer",
                    &options,
                    &mut errors,
                ) {
                    out(quote!(on_mismatch(__idem_p::OnMismatch::#v)));
                }
            }
            "in_flight" => {
                let options = [
                    ("conflict", "409", Some(quote!(Conflict))),
                    ("wait", "then replay; see wait_timeout", None),
                ];
                match choice(
                    &name,
                    value.as_ref(),
                    "in-flight answer",
                    &options,
                    &mut errors,
                ) {
                    Some(Some(v)) => out(quote!(on_in_flight(__idem_p::OnInFlight::#v))),
                    Some(None) => in_flight_wait = Some(name.clone()),
                    None => {}
                }
            }
            "cache" => {
                let options = [
                    ("non_5xx", "every status but 5xx", quote!(Non5xx)),
                    ("2xx", "2xx only", quote!(Success)),
                ];
                if let Some(v) = choice(&name, value.as_ref(), "cache rule", &options, &mut errors)
                {
                    out(quote!(cache(__idem_p::CachePolicy::#v)));
                }
            }
            "errors" => {
                let options = [
                    ("envelope", "error.code", quote!(Envelope)),
                    ("type", "error.type", quote!(EnvelopeType)),
                    ("problem", "RFC 9457", quote!(Problem)),
                ];
                if let Some(v) =
                    choice(&name, value.as_ref(), "error format", &options, &mut errors)
                {
                    out(quote!(error_format(__idem_p::ErrorFormat::#v)));
                }
            }
            "crate" => {
                if let Some(s) = string(&name, value.as_ref(), "\"idem_actix\"", &mut errors) {
                    match s.parse::<syn::Path>() {
                        Ok(path) => args.krate = Some(path),
                        Err(_) => errors.push(s, format!(
                            "\"{}\" is not a path; name the crate as you depend on it, such as \"idem\"",
                            s.value()
                        )),
                    }
                }
            }
            _ => errors.push(
                &name,
                format!("unknown argument `{key}`; allowed: {ALLOWED}"),
            ),
        }
    }

    match (&in_flight_wait, &wait_timeout) {
        (Some(_), Some((_, bound))) => {
            let ms = millis(*bound);
            args.setters.push(quote!(on_in_flight(__idem_p::OnInFlight::Wait(
                __idem_p::Duration::from_millis(#ms)
            ))));
        }
        (Some(_), None) => args.setters.push(quote!(on_in_flight(__idem_p::OnInFlight::Wait(
            __idem_p::Duration::from_secs(10)
        )))),
        (None, Some((name, _))) => errors.push(
            name,
            "`wait_timeout` only applies with `in_flight = \"wait\"`; add it, or remove `wait_timeout`",
        ),
        (None, None) => {}
    }

    match errors.0 {
        Some(e) => Err(e),
        None => Ok(args),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn string<'a>(
    name: &Ident,
    value: Option<&'a Lit>,
    example: &str,
    errors: &mut Errors,
) -> Option<&'a LitStr> {
    match value {
        Some(Lit::Str(s)) => Some(s),
        Some(other) => {
            errors.push(
                other,
                format!("`{name}` takes a string, such as `{name} = {example}`"),
            );
            None
        }
        None => {
            errors.push(
                name,
                format!("`{name}` needs a value, such as `{name} = {example}`"),
            );
            None
        }
    }
}

/// One of `options` (value, what it means, what it stands for), by its string.
fn choice<T: Clone>(
    name: &Ident,
    value: Option<&Lit>,
    what: &str,
    options: &[(&str, &str, T)],
    errors: &mut Errors,
) -> Option<T> {
    let example = format!("\"{}\"", options[0].0);
    let s = string(name, value, &example, errors)?;
    let v = s.value();
    if let Some((_, _, tokens)) = options.iter().find(|(option, _, _)| *option == v) {
        return Some(tokens.clone());
    }
    let listed: Vec<String> = options
        .iter()
        .map(|(option, meaning, _)| format!("\"{option}\" ({meaning})"))
        .collect();
    let (last, rest) = listed.split_last().expect("options are not empty");
    errors.push(
        s,
        format!(
            "unknown {what} \"{v}\"; expected {} or {last}",
            rest.join(", ")
        ),
    );
    None
}

fn duration(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<Duration> {
    const FORMS: &str = "write a number and a unit, such as \"30s\", \"15m\", \"24h\" or \"7d\"";
    let s = string(name, value, "\"24h\"", errors)?;
    match humantime::parse_duration(&s.value()) {
        Ok(d) if d < Duration::from_millis(1) => {
            errors.push(s, format!("`{name}` must be at least 1ms; {FORMS}"));
            None
        }
        Ok(d) if d > Duration::from_secs(10 * 365 * 24 * 3600) => {
            errors.push(s, format!("`{name}` must be at most 10 years; {FORMS}"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                s,
                format!("invalid duration \"{}\" ({e}); {FORMS}", s.value()),
            );
            None
        }
    }
}

fn integer(
    name: &Ident,
    value: Option<&Lit>,
    min: u64,
    max: u64,
    errors: &mut Errors,
) -> Option<u64> {
    match value {
        Some(Lit::Int(i)) => match i.base10_parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                errors.push(
                    i,
                    format!("`{name}` must be a whole number from {min} to {max}"),
                );
                None
            }
        },
        Some(other) => {
            errors.push(
                other,
                format!("`{name}` takes a whole number, such as `{name} = 255`"),
            );
            None
        }
        None => {
            errors.push(
                name,
                format!("`{name}` needs a whole number, such as `{name} = 255`"),
            );
            None
        }
    }
}

fn flag(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<bool> {
    match value {
        None => Some(true),
        Some(Lit::Bool(b)) => Some(b.value),
        Some(other) => {
            errors.push_at(
                other.span(),
                format!("`{name}` is a flag: write `{name}` or `{name} = true`/`false`"),
            );
            None
        }
    }
}

/// RFC 9110 token characters, which header names are made of.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
