//! The `#[idempotent]` attribute for actix-web handlers. Use it through `idem-actix`, which
//! re-exports it as `idem_actix::idempotent` and holds the runtime it calls.

use proc_macro::TokenStream;

mod attr;
mod expand;

/// Makes an actix-web handler idempotent: a request retried with the same `Idempotency-Key`
/// runs the handler once, and every retry gets the first response.
///
/// ```text
/// #[post("/v1/calls")]
/// #[idempotent(ttl = "24h", scope = "api_key")]
/// async fn create_call(body: web::Json<NewCall>) -> impl Responder { ... }
/// ```
///
/// The attribute goes above or below a route attribute (`#[post]`, `#[route]`), or on a plain
/// `async fn` registered with `web::resource(..).route(..)`. The handler takes any extractors
/// (up to 16) and returns any `Responder`, `Result<T, E: ResponseError>` included.
///
/// # Arguments
/// Every argument is optional; with none, the defaults below apply. A bad value is a compile
/// error on that value, naming the accepted forms.
///
/// | argument | values | default |
/// |---|---|---|
/// | `ttl` | a duration: `"30s"`, `"15m"`, `"24h"`, `"7d"` | `"24h"` |
/// | `scope` | `"api_key"` (`Authorization`, else `X-API-Key`), `"basic_auth_user"`, `"global"`, `"header:<Name>"` | `"api_key"` |
/// | `header` | a header name | `"Idempotency-Key"` |
/// | `key_max_len` | 1 to 8192 | `255` |
/// | `required` | flag: a request without a key gets 400 `idempotency_key_missing` | off |
/// | `mismatch` | `"conflict"` (409), `"unprocessable"` (422), `"replay"` (the first response) | `"conflict"` |
/// | `in_flight` | `"conflict"` (409 with `Retry-After`), `"wait"` (then replay) | `"conflict"` |
/// | `wait_timeout` | a duration; only with `in_flight = "wait"` | `"10s"` |
/// | `cache` | `"non_5xx"`, `"2xx"`: which responses are recorded; others release the key | `"non_5xx"` |
/// | `per_endpoint` | flag: keys are per method and route, not only per scope | off |
/// | `lease` | a duration: how long a claim holds unless the running handler renews it | `"60s"` |
/// | `fail_open` | flag: run unprotected when the store is down, instead of 503 | off |
/// | `errors` | `"envelope"` (`error.code`), `"type"` (`error.type`), `"problem"` (RFC 9457) | the app's renderer |
/// | `max_body` | bytes of request body buffered for the fingerprint; more gets 413 | `2097152` |
/// | `crate` | the path of `idem_actix` when renamed in `Cargo.toml` | `"idem_actix"` |
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.into();
    let func = match syn::parse2::<syn::ItemFn>(item2.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[idempotent] goes on an `async fn` handler",
            );
            let mut out = error.to_compile_error();
            out.extend(item2);
            return out.into();
        }
    };
    let parsed = attr::parse(args.into());
    let checked = expand::check(&func);
    match (parsed, checked) {
        (Ok(args), Ok(())) => expand::expand(&args, func).into(),
        (parsed, checked) => {
            // Emit the handler untouched beside the errors, so nothing else fails to resolve.
            let mut errors = None::<syn::Error>;
            for e in [parsed.err(), checked.err()].into_iter().flatten() {
                match &mut errors {
                    Some(all) => all.combine(e),
                    None => errors = Some(e),
                }
            }
            let mut out = errors.map(|e| e.to_compile_error()).unwrap_or_default();
            out.extend(quote::quote!(#func));
            out.into()
        }
    }
}
