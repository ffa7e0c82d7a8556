//! Reading the attribute's arguments into the typed model ([`crate::ast::Args`]). Each value
//! is checked as it is read (a duration parses, a header name is a token); a mistake is
//! reported on its token and reading goes on, so that the user sees every mistake at once.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Lit, LitStr, Token};

use crate::ast::{Args, BodyForm, Choice, Fingerprint, Key, PerEndpoint, Scope, Spanned};
use crate::errors::Errors;
use crate::names::Name;

/// The longest `key_max_len` accepted: keys are header values, and servers cap header sizes.
const KEY_MAX_LEN_LIMIT: u64 = 8192;

/// One argument as written: `name`, `name = "literal"`, `name = ["literal", ...]` or
/// `name = path`.
struct RawArg {
    name: Ident,
    value: Option<Value>,
}

/// What follows an argument's `=`.
enum Value {
    Lit(Lit),
    List(Span, Vec<Lit>),
    Path(syn::Path),
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if !input.peek(Ident::peek_any) {
            return Err(input.error(
                "expected an argument's name; write arguments as `name = value`, such as `ttl = \"24h\"`",
            ));
        }
        let name = Ident::parse_any(input)?;
        let mut value = None;
        if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            if input.is_empty() || input.peek(Token![,]) {
                return Err(input.error(format!(
                    "`{name} =` needs a value: a literal, a list `[...]` or a function's path"
                )));
            }
            let lookahead = input.lookahead1();
            if lookahead.peek(Lit) {
                value = Some(Value::Lit(input.parse()?));
            } else if lookahead.peek(syn::token::Bracket) {
                let items;
                let bracket = syn::bracketed!(items in input);
                let items = Punctuated::<Lit, Token![,]>::parse_terminated(&items)?;
                value = Some(Value::List(
                    bracket.span.join(),
                    items.into_iter().collect(),
                ));
            } else if lookahead.peek(Ident::peek_any) || lookahead.peek(Token![::]) {
                value = Some(Value::Path(input.parse()?));
            } else {
                return Err(lookahead.error());
            }
        }
        if !input.is_empty() && !input.peek(Token![,]) {
            let message = match value {
                None => format!("expected `=` or `,` after `{name}`; write arguments as `name = value`, a flag as its name alone"),
                // A macro (`concat!(...)`, `env!(...)`): the attribute reads its arguments as
                // written, before any macro is expanded.
                Some(Value::Path(_)) if input.peek(Token![!]) => format!(
                    "`{name}` takes a literal, a list `[...]` or a function's path as written: macros are not expanded in the attribute's arguments; write the value itself"
                ),
                Some(_) => "expected `,`: separate the arguments with commas".to_owned(),
            };
            return Err(input.error(message));
        }
        Ok(Self { name, value })
    }
}

struct RawArgs(Punctuated<RawArg, Token![,]>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Punctuated::parse_terminated(input).map(Self)
    }
}

/// Reads `tokens` into the model, adding what is wrong to `errors`. A malformed argument
/// list (not `name = value, ...`) is the one error that stops reading.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Result<Args, syn::Error> {
    let raw: RawArgs = syn::parse2(tokens)?;
    let mut args = Args::default();
    let mut seen: Vec<Ident> = Vec::new();
    for RawArg { name, value } in raw.0 {
        if seen.contains(&name) {
            errors.push(&name, format!("`{name}` is given twice; keep one"));
            continue;
        }
        seen.push(name.clone());
        let Some(known) = Name::of(&name.to_string()) else {
            errors.push(
                &name,
                format!("unknown argument `{name}`; allowed: {}", Name::allowed()),
            );
            continue;
        };
        // A suffix (`300u8`, `"24h"ms`) would be dropped unsaid: its type or unit is not
        // the argument's.
        let literals = match &value {
            Some(Value::Lit(lit)) => std::slice::from_ref(lit),
            Some(Value::List(_, items)) => items.as_slice(),
            _ => &[],
        };
        if let Some(lit) = literals.iter().find(|lit| !lit.suffix().is_empty()) {
            let suffix = lit.suffix();
            // A number written with its unit (`ttl = 24h`, `max_body = 2MiB`): without the
            // unit, it would be hours read as nothing, or mebibytes read as bytes.
            const TYPES: &[&str] = &[
                "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
                "isize", "f32", "f64",
            ];
            let number = matches!(lit, Lit::Int(_) | Lit::Float(_)) && !TYPES.contains(&suffix);
            let message = match known {
                Name::Ttl | Name::Lease | Name::WaitTimeout if number => format!(
                    "`{name}` takes a duration as a string: write `{name} = \"{}\"`",
                    lit.to_token_stream()
                ),
                Name::MaxBody | Name::MaxResponse if number => format!(
                    "`{name}` takes a number of bytes, with no unit (`{suffix}`): `{name} = 2097152` is 2 MiB"
                ),
                _ => format!("`{name}` takes no literal suffix (`{suffix}`); remove it"),
            };
            errors.push(lit, message);
            continue;
        }
        match value {
            Some(Value::Path(path)) => function(known, name, path, &mut args, errors),
            Some(Value::List(span, items)) => list(known, &name, span, &items, &mut args, errors),
            Some(Value::Lit(lit)) => literal(known, &name, Some(&lit), &mut args, errors),
            None => literal(known, &name, None, &mut args, errors),
        }
    }
    Ok(args)
}

/// Reads an argument given a function, named by its path.
fn function(known: Name, name: Ident, path: syn::Path, args: &mut Args, errors: &mut Errors) {
    if let Some(builtin) = builtin_unquoted(known, &path) {
        errors.push(
            &path,
            format!(
                "`{builtin}` without quotes names a function; the built-in {name} is written `{name} = \"{builtin}\"`, and a function of that name `{name} = self::{builtin}`"
            ),
        );
        return;
    }
    match known {
        Name::Scope => set(&mut args.scope, name, Scope::Function(path)),
        Name::Fingerprint => set(&mut args.fingerprint, name, Fingerprint::Function(path)),
        Name::Key => set(&mut args.key, name, Key::Function(path)),
        Name::OnReplay => set(&mut args.on_replay, name, path),
        _ => {
            let functions = Name::taking_functions();
            let verb = if functions.contains(" and ") {
                "take"
            } else {
                "takes"
            };
            let takes = match known.values() {
                "flag" => format!("is a flag: write `{name}` or `{name} = true`"),
                values => format!("takes {values}"),
            };
            errors.push(
                &path,
                format!("`{name}` {takes}, not a path; only {functions} also {verb} a function"),
            );
        }
    }
}

/// The built-in value a path spells as one bare name, such as `scope = api_key`: a value
/// meant in quotes, which rustc would otherwise report as an unknown function.
fn builtin_unquoted(known: Name, path: &syn::Path) -> Option<&Ident> {
    let ident = path.get_ident()?;
    let builtin = match known {
        Name::Scope => scope_word(&ident.to_string()).is_some(),
        Name::Fingerprint => BodyForm::OPTIONS.iter().any(|(s, _, _)| ident == s),
        _ => false,
    };
    builtin.then_some(ident)
}

/// Reads an argument given a literal, or nothing (a flag).
fn literal(known: Name, name: &Ident, value: Option<&Lit>, args: &mut Args, errors: &mut Errors) {
    match known {
        Name::Ttl => put(&mut args.ttl, name, duration(name, value, ONE_S, errors)),
        Name::Lease => put(&mut args.lease, name, lease(name, value, errors)),
        Name::WaitTimeout => {
            let wait_timeout = duration(name, value, ONE_MS, errors);
            put(&mut args.wait_timeout, name, wait_timeout)
        }
        Name::Scope => put(&mut args.scope, name, scope(name, value, errors)),
        Name::Header => put(&mut args.header, name, header(name, value, errors)),
        Name::KeyMaxLen => put(
            &mut args.key_max_len,
            name,
            integer(name, value, 1, KEY_MAX_LEN_LIMIT, errors),
        ),
        Name::MaxBody => put(
            &mut args.max_body,
            name,
            integer(name, value, 1, u64::from(u32::MAX), errors),
        ),
        // 0 keeps no response: a stream of events goes out as it comes.
        Name::MaxResponse => put(
            &mut args.max_response,
            name,
            integer(name, value, 0, u64::from(u32::MAX), errors),
        ),
        Name::Required => put(&mut args.required, name, flag(name, value, errors)),
        Name::PerEndpoint => put(&mut args.per_endpoint, name, per_endpoint(name, value, errors)),
        Name::FailOpen => put(&mut args.fail_open, name, flag(name, value, errors)),
        Name::ReplaySetCookie => put(&mut args.replay_set_cookie, name, flag(name, value, errors)),
        Name::Mismatch => put(&mut args.mismatch, name, choice(name, value, errors)),
        Name::InFlight => put(&mut args.in_flight, name, choice(name, value, errors)),
        Name::Cache => put(&mut args.cache, name, choice(name, value, errors)),
        Name::Errors => put(&mut args.errors, name, choice(name, value, errors)),
        Name::Crate => put(&mut args.krate, name, krate(name, value, errors)),
        Name::Fingerprint => put(
            &mut args.fingerprint,
            name,
            choice(name, value, errors).map(Fingerprint::Form),
        ),
        Name::Key => put(&mut args.key, name, key(name, value, errors)),
        Name::OnReplay => errors.push(
            value.map_or_else(|| name.to_token_stream(), ToTokens::to_token_stream),
            format!("`{name}` takes a function `fn(&HttpRequest, &mut HttpResponse)`, named without quotes, such as `{name} = count_replay`"),
        ),
        Name::FingerprintIgnore
        | Name::FingerprintHeaders
        | Name::ReplayHeaders
        | Name::ReplayDropHeaders => {
            let example = list_example(known);
            match value {
                Some(other) => errors.push(
                    other,
                    format!("`{name}` takes a list, such as `{name} = {example}`"),
                ),
                None => errors.push(
                    name,
                    format!("`{name}` needs a list, such as `{name} = {example}`"),
                ),
            }
        }
    }
}

/// An example of a list argument's value.
fn list_example(known: Name) -> &'static str {
    match known {
        Name::FingerprintIgnore => r#"["/client_sent_at"]"#,
        Name::FingerprintHeaders => r#"["Content-Type"]"#,
        _ => r#"["Location"]"#,
    }
}

/// Reads an argument given a list, `[...]`.
fn list(
    known: Name,
    name: &Ident,
    span: Span,
    items: &[Lit],
    args: &mut Args,
    errors: &mut Errors,
) {
    let slot = match known {
        Name::FingerprintIgnore => &mut args.fingerprint_ignore,
        Name::FingerprintHeaders => &mut args.fingerprint_headers,
        Name::ReplayHeaders => &mut args.replay_headers,
        Name::ReplayDropHeaders => &mut args.replay_drop_headers,
        _ => {
            errors.push_at(span, format!("`{name}` takes one value, not a list"));
            return;
        }
    };
    let example = list_example(known);
    let mut values: Vec<String> = Vec::new();
    let mut ok = true;
    for item in items {
        let Lit::Str(s) = item else {
            errors.push(
                item,
                format!("`{name}` lists strings, such as `{name} = {example}`"),
            );
            ok = false;
            continue;
        };
        let value = s.value();
        let problem = match known {
            Name::FingerprintIgnore => pointer_problem(&value, "/client_sent_at"),
            _ if !is_header_name(&value) => Some(format!(
                "\"{value}\" is not a valid header name; use letters, digits and `-`, such as \"X-Trace-Id\""
            )),
            Name::ReplayHeaders | Name::ReplayDropHeaders
                if value.eq_ignore_ascii_case("set-cookie") =>
            {
                Some("`Set-Cookie` is replayed only with `replay_set_cookie`, which decides it alone; remove it from the list".to_owned())
            }
            Name::ReplayHeaders | Name::ReplayDropHeaders if per_request(&value) => {
                Some(format!("`{value}` describes one transfer or one request and is never replayed, listed or not; remove it from the list"))
            }
            Name::FingerprintHeaders if per_request(&value) => {
                Some(format!("`{value}` describes one transfer or one request and differs between a request and its retry; remove it from the list"))
            }
            Name::ReplayDropHeaders if value.eq_ignore_ascii_case("content-encoding") => Some(
                "`Content-Encoding` is always replayed: a recorded body is in its coding; remove it from the list".to_owned(),
            ),
            _ => None,
        };
        let repeated = || {
            values.iter().any(|v| match known {
                Name::FingerprintIgnore => *v == value,
                _ => v.eq_ignore_ascii_case(&value),
            })
        };
        match problem {
            Some(problem) => {
                errors.push(s, problem);
                ok = false;
            }
            None if repeated() => {
                errors.push(s, format!("\"{value}\" is listed twice; keep one"));
                ok = false;
            }
            None => values.push(value),
        }
    }
    if ok {
        *slot = Some(Spanned {
            name: name.clone(),
            value: values,
        });
    }
}

/// Whether the header `name` describes one transfer or one request (one of
/// [`NEVER_REPLAYED`]): never replayed, and different between a request and its retry.
fn per_request(name: &str) -> bool {
    NEVER_REPLAYED
        .iter()
        .any(|never| never.eq_ignore_ascii_case(name))
}

/// The headers no replay repeats, as `ReplayHeaders::NEVER` lists them (this crate does not
/// depend on idem-core; a test holds the two alike).
pub(crate) const NEVER_REPLAYED: &[&str] = &[
    "Connection",
    "Content-Length",
    "Date",
    "Idempotent-Replayed",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "X-Request-ID",
];

/// What is wrong with `pointer` as a JSON Pointer (RFC 6901), if anything; `member` is an
/// example of one that points at a member, for the argument it is given to.
fn pointer_problem(pointer: &str, member: &str) -> Option<String> {
    if pointer.is_empty() {
        return Some(format!(
            "the empty pointer names the whole body; point at a member, such as \"{member}\""
        ));
    }
    if !pointer.starts_with('/') {
        return Some(format!(
            "\"{pointer}\" is not a JSON Pointer: it starts with `/`, such as \"/{pointer}\""
        ));
    }
    let bytes = pointer.as_bytes();
    let bad = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')));
    bad.map(|(i, _)| {
        format!(
            "\"{pointer}\" is not a JSON Pointer: `~` at byte {i} must be `~0` (for `~`) or `~1` (for `/`)"
        )
    })
}

/// `"json:<pointer>"`.
fn key(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<Key> {
    let s = string(name, value, "\"json:/event_id\"", errors)?;
    let v = s.value();
    let Some(pointer) = v.strip_prefix("json:") else {
        errors.push(s, format!(
            "unknown key source \"{v}\"; expected \"json:<pointer>\", such as \"json:/event_id\", or a function `fn(&HttpRequest, &[u8]) -> Option<String>` named without quotes"
        ));
        return None;
    };
    if let Some(problem) = pointer_problem(pointer, "json:/event_id") {
        errors.push(s, problem);
        return None;
    }
    Some(Key::Json(pointer.to_owned()))
}

fn set<T>(slot: &mut Option<Spanned<T>>, name: Ident, value: T) {
    *slot = Some(Spanned { name, value });
}

fn put<T>(slot: &mut Option<Spanned<T>>, name: &Ident, value: Option<T>) {
    if let Some(value) = value {
        set(slot, name.clone(), value);
    }
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

/// One of `T`'s values, by its string.
fn choice<T: Choice>(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<T> {
    let example = format!("\"{}\"", T::OPTIONS[0].0);
    let s = string(name, value, &example, errors)?;
    let v = s.value();
    if let Some(&(_, _, chosen)) = T::OPTIONS.iter().find(|(option, _, _)| *option == v) {
        return Some(chosen);
    }
    let listed: Vec<String> = T::OPTIONS
        .iter()
        .map(|(option, meaning, _)| format!("\"{option}\" ({meaning})"))
        .collect();
    let expected = match T::OR {
        Some(or) => format!("{}, or {or}", listed.join(", ")),
        None => {
            let (last, rest) = listed.split_last().expect("options are not empty");
            format!("{} or {last}", rest.join(", "))
        }
    };
    errors.push(
        s,
        format!("unknown {} \"{v}\"; expected {expected}", T::WHAT),
    );
    None
}

fn scope(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<Scope> {
    let s = string(name, value, "\"api_key\"", errors)?;
    let v = s.value();
    if let Some(word) = scope_word(&v) {
        return Some(word);
    }
    match v.strip_prefix("header:") {
        Some(h) if is_header_name(h) && per_request(h) => {
            errors.push(s, format!(
                "`{h}` describes one transfer or one request and differs between a request and its retry, so that each retry would be in a scope of its own and run again; scope keys by a header that names their owner, such as \"header:X-Tenant-Id\""
            ));
            None
        }
        Some(h) if is_header_name(h) => Some(Scope::Header(h.to_owned())),
        Some(_) => {
            errors.push(s, format!(
                "`{v}` does not name a valid header; write \"header:<Name>\", such as \"header:X-Tenant-Id\""
            ));
            None
        }
        None => {
            errors.push(s, format!(
                "unknown scope \"{v}\"; expected \"api_key\", \"basic_auth_user\", \"principal\", \"global\", \"header:<Name>\", or a function `fn(&HttpRequest) -> Option<String>` named without quotes"
            ));
            None
        }
    }
}

/// The scopes named by a word alone (`"header:<Name>"` is the other built-in).
fn scope_word(v: &str) -> Option<Scope> {
    match v {
        "api_key" => Some(Scope::ApiKey),
        "global" => Some(Scope::Global),
        "basic_auth_user" => Some(Scope::BasicAuthUser),
        "principal" => Some(Scope::Principal),
        _ => None,
    }
}

fn header(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<String> {
    let s = string(name, value, "\"Idempotency-Key\"", errors)?;
    let h = s.value();
    if is_header_name(&h) {
        return Some(h);
    }
    errors.push(
        s,
        format!(
            "\"{h}\" is not a valid header name; use letters, digits and `-`, such as \"X-Idempotency-Key\""
        ),
    );
    None
}

fn krate(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<syn::Path> {
    let s = string(name, value, "\"idem_actix\"", errors)?;
    match s.parse::<syn::Path>() {
        Ok(path) => Some(path),
        Err(_) => {
            errors.push(
                s,
                format!(
                    "\"{}\" is not a path; name the crate as you depend on it, such as \"idem\"",
                    s.value()
                ),
            );
            None
        }
    }
}

/// A lease: a duration of 100ms at least (`Policy::MIN_LEASE`).
fn lease(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<Duration> {
    const LEAST: Least = (
        Duration::from_millis(100),
        ": a running request renews its claim every third of its lease, and a shorter one could lapse between renewals and let a duplicate run",
    );
    duration(name, value, LEAST, errors)
}

/// The shortest value of a duration argument, and why, for its error.
type Least = (Duration, &'static str);

/// The shortest of most durations: the millisecond they are counted in.
const ONE_MS: Least = (Duration::from_millis(1), "");

/// The shortest TTL (`Policy::MIN_TTL`).
const ONE_S: Least = (
    Duration::from_secs(1),
    ": a record kept for less serves no retry, and a duplicate waiting for the first request could find it gone and run again; give the time a retry may come in, such as \"24h\"",
);

/// A duration of whole milliseconds, `least` at least and ten years at most.
fn duration(
    name: &Ident,
    value: Option<&Lit>,
    (least, why): Least,
    errors: &mut Errors,
) -> Option<Duration> {
    const FORMS: &str = "write a number and a unit, such as \"30s\", \"15m\", \"24h\" or \"7d\"";
    let s = string(name, value, "\"24h\"", errors)?;
    // humantime reads `M` as months, next to `m` for minutes: one case apart.
    let units = s.value();
    if units
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|unit| unit == "M")
    {
        errors.push(
            s,
            "`M` is months, not minutes; write minutes as \"15m\", or months in days (\"30d\")",
        );
        return None;
    }
    match humantime::parse_duration(&s.value()) {
        Ok(d) if d < least && why.is_empty() => {
            errors.push(s, format!("`{name}` must be at least {least:?}; {FORMS}"));
            None
        }
        Ok(d) if d < least => {
            errors.push(s, format!("`{name}` must be at least {least:?}{why}"));
            None
        }
        // The policy counts milliseconds: a fraction of one would be cut off, unsaid.
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            let cut = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            errors.push(
                s,
                format!(
                    "`{name}` counts whole milliseconds, and \"{}\" is not a whole number of them (it would be cut to {cut:?}); {FORMS}",
                    s.value()
                ),
            );
            None
        }
        // Ten years of 365.25 days, as humantime reads "10y".
        Ok(d) if d > Duration::from_secs(10 * 36_525 * 24 * 36) => {
            errors.push(s, format!("`{name}` must be at most 10 years; {FORMS}"));
            None
        }
        Ok(d) => Some(d),
        // humantime's error for it blames the number's size.
        Err(humantime::DurationError::NumberOverflow) if fraction_of_a_long_unit(&units) => {
            errors.push(
                s,
                format!("invalid duration \"{units}\": a fraction of an hour, day, week, month or year is read only where it comes to whole seconds (as in \"1.5h\"); write the rest in a smaller unit, such as \"1h 3m\" for \"1.05h\""),
            );
            None
        }
        Err(e) => {
            errors.push(
                s,
                format!("invalid duration \"{}\" ({e}); {FORMS}", s.value()),
            );
            None
        }
    }
}

/// Whether `duration` has a number with a fraction in hours, days, weeks, months or years,
/// which humantime reads only where the fraction comes to whole seconds.
fn fraction_of_a_long_unit(duration: &str) -> bool {
    // humantime's names of them.
    const LONG: [&str; 20] = [
        "h", "hr", "hrs", "hour", "hours", "d", "day", "days", "w", "wk", "wks", "week", "weeks",
        "month", "months", "y", "yr", "yrs", "year", "years",
    ];
    let mut rest = duration;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let number = &rest[start..];
        let end = number
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(number.len());
        let unit = number[end..].trim_start();
        let unit = &unit[..unit
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(unit.len())];
        if number[..end].contains('.') && LONG.contains(&unit) {
            return true;
        }
        rest = &number[end..];
    }
    false
}

fn integer(
    name: &Ident,
    value: Option<&Lit>,
    min: u64,
    max: u64,
    errors: &mut Errors,
) -> Option<usize> {
    match value {
        Some(Lit::Int(i)) => match i.base10_parse::<u64>() {
            // At most `u32::MAX`, so it fits a `usize` on every target actix runs on.
            Ok(n) if (min..=max).contains(&n) => usize::try_from(n).ok(),
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

/// `per_endpoint`: a flag, or the name the endpoint's keys are kept under.
fn per_endpoint(name: &Ident, value: Option<&Lit>, errors: &mut Errors) -> Option<PerEndpoint> {
    match value {
        Some(Lit::Str(s)) if s.value().is_empty() => {
            errors.push(
                s,
                format!("`{name}` names the endpoint its keys are kept under: give a name, such as `{name} = \"calls.create\"`, or write `{name}` to key by method and route"),
            );
            None
        }
        Some(Lit::Str(s)) => Some(PerEndpoint::Named(s.value())),
        None | Some(Lit::Bool(_)) => flag(name, value, errors).map(PerEndpoint::Flag),
        Some(other) => {
            errors.push_at(
                other.span(),
                format!("`{name}` is a flag, or the endpoint's name: write `{name}`, `{name} = true`/`false`, or `{name} = \"calls.create\"`"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists the attribute checks at compile time are the policy's, which the
    /// middleware and the application's defaults are checked against at start-up.
    #[test]
    fn the_lists_of_refused_headers_are_the_policy_s() {
        assert_eq!(NEVER_REPLAYED, idem::ReplayHeaders::NEVER);
        assert_eq!(crate::valid::NOT_KEYS, idem::Policy::NOT_KEYS);
    }

    #[test]
    fn the_arguments_that_take_a_function_are_those_of_the_table() {
        for &name in Name::ALL {
            let tokens: TokenStream = format!("{name} = some::function").parse().unwrap();
            let mut errors = Errors::default();
            parse(tokens, &mut errors).unwrap();
            assert_eq!(errors.finish(()).is_ok(), name.takes_function(), "{name}");
        }
    }

    /// The fractions humantime refuses unless they come to whole seconds are told from the
    /// others, which either parse or fail for another reason.
    #[test]
    fn fractions_of_long_units_are_told_apart() {
        for long in ["1.001h", "2.5 days", "1h 0.0001wk", "0.3yr", "1.1 months"] {
            assert!(fraction_of_a_long_unit(long), "{long}");
        }
        for other in [
            "1.5ns",
            "1h 0.5s",
            "1.001m",
            "10h",
            "1.2.3",
            "99999999999999999999h",
        ] {
            assert!(!fraction_of_a_long_unit(other), "{other}");
        }
    }
}
