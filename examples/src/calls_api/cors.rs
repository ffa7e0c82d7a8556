//! CORS for browsers on the origins given with `--cors-origin`: they may send the API's
//! headers (both key headers among them) and read the idempotency headers of its answers.

use actix_cors::Cors;
use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use actix_web::http::Uri;
use idem_actix::cors::IdempotencyCors;

/// How long a browser may reuse a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: usize = 600;

/// An origin as browsers send it (`scheme://host[:port]`, nothing after), or `*` for any.
///
/// # Errors
/// A message saying what an origin looks like.
pub fn origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value == "*" {
        return Ok(value.to_owned());
    }
    let uri: Uri = value.parse().map_err(|_| not_an_origin(value))?;
    // The parser gives `http://a.b` the path `/`: a path written out shows as a trailing `/`.
    let bare = uri.scheme().is_some()
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
        && !value.ends_with('/');
    if !bare {
        return Err(not_an_origin(value));
    }
    Ok(value.to_owned())
}

fn not_an_origin(value: &str) -> String {
    format!(
        "`{value}` is not an origin; give scheme://host[:port] with nothing after, such as http://127.0.0.1:5173, or * for any"
    )
}

/// The CORS middleware for `origins` (checked by [`origin`]). Wrap it around the whole app,
/// outermost, so that preflights are answered before the bearer token is asked for.
pub fn cors(origins: &[String]) -> Cors {
    let cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([AUTHORIZATION, CONTENT_TYPE])
        .allowed_headers(["X-Request-ID", "X-Simulate-Delay-Ms", "X-Simulate-Status"])
        .allow_idempotency_keys(["Idempotency-Key", "X-Idempotency-Key"])
        .expose_headers([LOCATION])
        .max_age(PREFLIGHT_MAX_AGE);
    // `*` takes in every origin named with it; actix-cors would have an origin named after
    // it replace it.
    if origins.iter().any(|origin| origin == "*") {
        return cors.allow_any_origin();
    }
    origins
        .iter()
        .fold(cors, |cors, origin| cors.allowed_origin(origin))
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for good in [
            "http://127.0.0.1:5173",
            "https://app.example.com",
            "*",
            " http://a.b ",
        ] {
            assert!(origin(good).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:5173",
            "http://127.0.0.1:5173/",
            "http://a.b/app",
            "http://a.b?x=1",
            "http://user@a.b",
            "",
            "not an origin",
        ] {
            let err = origin(bad).unwrap_err();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
    }
}
