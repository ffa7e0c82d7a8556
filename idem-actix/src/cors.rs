//! CORS for idempotent endpoints (feature `cors`): browsers may send the key and read what
//! the answer says about it.
//!
//! A script on another origin can send a header only if the server's preflight answer allows
//! it, and can read a response header only if the response exposes it. Without both, a
//! browser client cannot send `Idempotency-Key` at all, and cannot tell a replay
//! (`Idempotent-Replayed`) from a first run, when to retry (`Retry-After`), or which request
//! to report (`X-Request-ID`). [`IdempotencyCors::allow_idempotency_keys`] adds both to an
//! [`actix_cors::Cors`].
//!
//! ```
//! use actix_cors::Cors;
//! use actix_web::http::header;
//! use actix_web::App;
//! use idem_actix::cors::IdempotencyCors;
//!
//! let cors = Cors::default()
//!     .allowed_origin("https://app.example.com")
//!     .allowed_methods(["GET", "POST"])
//!     .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
//!     .allow_idempotency_keys(["Idempotency-Key"]);
//! // Outermost, so that it answers preflights before any other middleware sees them.
//! let app = App::new().wrap(cors);
//! ```
//!
//! actix-cors reads "any header" and "a list of headers" as one setting: listing a header on
//! a `Cors` that allowed (or exposed) any header narrows it to the list. On
//! `Cors::permissive()`, or after `allow_any_header`, call `allow_any_header` and
//! `expose_any_header` again afterwards if any header is still meant.

use actix_cors::Cors;
use actix_web::error::HttpError;
use actix_web::http::header::{HeaderName, RETRY_AFTER};

use crate::{IDEMPOTENT_REPLAYED, REQUEST_ID};

/// The response headers a browser script needs to read about an idempotent request:
/// `Idempotent-Replayed`, `Retry-After` and `X-Request-ID`.
pub const EXPOSED: [HeaderName; 3] = [IDEMPOTENT_REPLAYED, RETRY_AFTER, REQUEST_ID];

/// Idempotency keys through CORS, as a method of [`Cors`].
pub trait IdempotencyCors: Sized {
    /// Allows the key headers `key_headers` in requests (`Idempotency-Key`, and any other an
    /// endpoint names with `header = "..."`), and exposes [`EXPOSED`] in responses.
    ///
    /// A name that is not a header name is reported as actix-cors reports its own
    /// settings' mistakes: the app's middleware fails to start, with the reason logged.
    fn allow_idempotency_keys<I, H>(self, key_headers: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: TryInto<HeaderName>,
        <H as TryInto<HeaderName>>::Error: Into<HttpError>;
}

impl IdempotencyCors for Cors {
    fn allow_idempotency_keys<I, H>(self, key_headers: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: TryInto<HeaderName>,
        <H as TryInto<HeaderName>>::Error: Into<HttpError>,
    {
        self.allowed_headers(key_headers).expose_headers(EXPOSED)
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{self, HeaderValue};
    use actix_web::http::StatusCode;
    use actix_web::{test, web, App, HttpResponse};

    use super::*;
    use crate::{idempotent, IdempotencyConfig, MokaStore};

    const ORIGIN: &str = "http://127.0.0.1:5173";

    #[idempotent(crate = "crate", header = "X-Idempotency-Key")]
    async fn create() -> HttpResponse {
        HttpResponse::Created().body("created")
    }

    fn cors() -> Cors {
        Cors::default()
            .allowed_origin(ORIGIN)
            .allowed_methods(["POST"])
            .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
    }

    fn preflight() -> test::TestRequest {
        test::TestRequest::default()
            .method(actix_web::http::Method::OPTIONS)
            .uri("/v1/things")
            .insert_header((header::ORIGIN, ORIGIN))
            .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "POST"))
            .insert_header((
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type, x-idempotency-key",
            ))
    }

    fn listed(value: Option<&HeaderValue>) -> Vec<String> {
        let mut names: Vec<String> = value
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        names.sort();
        names
    }

    #[actix_web::test]
    async fn a_preflight_for_the_key_header_is_allowed_and_replays_are_readable() {
        let app = test::init_service(
            App::new()
                .wrap(cors().allow_idempotency_keys(["X-Idempotency-Key"]))
                .app_data(IdempotencyConfig::new(MokaStore::new()))
                .route("/v1/things", web::post().to(create)),
        )
        .await;

        let answer = test::call_service(&app, preflight().to_request()).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers();
        assert_eq!(
            headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            ORIGIN
        );
        assert!(listed(headers.get(header::ACCESS_CONTROL_ALLOW_HEADERS))
            .contains(&"x-idempotency-key".to_owned()));

        let post = || {
            test::TestRequest::post()
                .uri("/v1/things")
                .insert_header((header::ORIGIN, ORIGIN))
                .insert_header(("Authorization", "Bearer t"))
                .insert_header(("X-Idempotency-Key", "k-1"))
                .to_request()
        };
        let first = test::call_service(&app, post()).await;
        assert_eq!(first.status(), StatusCode::CREATED);
        assert!(first.headers().get(IDEMPOTENT_REPLAYED).is_none());
        let retry = test::call_service(&app, post()).await;
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert_eq!(retry.headers().get(IDEMPOTENT_REPLAYED).unwrap(), "true");
        assert_eq!(
            listed(retry.headers().get(header::ACCESS_CONTROL_EXPOSE_HEADERS)),
            ["idempotent-replayed", "retry-after", "x-request-id"]
        );
    }

    #[actix_web::test]
    async fn without_it_the_preflight_for_the_key_header_is_refused() {
        let app = test::init_service(
            App::new()
                .wrap(cors())
                .route("/v1/things", web::post().to(create)),
        )
        .await;
        let answer = test::call_service(&app, preflight().to_request()).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        assert!(answer
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
            .is_none());
    }

    #[actix_web::test]
    async fn a_name_that_is_not_a_header_stops_the_app_from_starting() {
        let cors = cors().allow_idempotency_keys(["not a header"]);
        let app = actix_web::dev::Transform::new_transform(&cors, test::ok_service()).await;
        assert!(app.is_err());
    }
}
