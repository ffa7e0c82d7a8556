//! `calls-api`: an in-memory outbound-calling API. Every request but `GET /healthz` needs
//! `Authorization: Bearer <token>`; the token is the tenant.
//!
//! Demo knobs of the fake carrier are headers, so that they are not part of the fingerprint:
//! `X-Simulate-Delay-Ms: N` makes the handler sleep N ms (at most 30000), and
//! `X-Simulate-Status: 5xx` makes it fail with that status and create nothing.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{get, post, web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use idem_actix::{idempotent, RequestId};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The longest simulated delay.
pub const MAX_SIMULATED_DELAY_MS: u64 = 30_000;

/// The API's data: calls and messages per tenant, oldest first.
#[derive(Default)]
pub struct CallsState {
    calls: PerTenant<Call>,
    messages: PerTenant<Message>,
}

impl CallsState {
    /// How many calls were created, over all tenants.
    pub fn call_count(&self) -> usize {
        self.calls
            .lock()
            .map(|c| c.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// How many messages were created, over all tenants.
    pub fn message_count(&self) -> usize {
        self.messages
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// A call as the API shows it.
#[derive(Debug, Serialize)]
pub struct Call {
    id: String,
    agent_id: String,
    phone_number: String,
    status: &'static str,
}

/// A message as the API shows it.
#[derive(Debug, Serialize)]
pub struct Message {
    id: String,
    to: String,
    text: String,
    status: &'static str,
}

/// The body of `POST /v1/calls`.
#[derive(Deserialize)]
pub struct NewCall {
    agent_id: String,
    phone_number: String,
}

/// The body of `POST /v1/messages`.
#[derive(Deserialize)]
pub struct NewMessage {
    to: String,
    text: String,
}

/// An error in the API's envelope.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    request_id: RequestId,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        request_id: RequestId,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            request_id,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .insert_header((idem_actix::REQUEST_ID, self.request_id.as_str()))
            .json(json!({
                "error": {"code": self.code, "message": self.message},
                "request_id": self.request_id.as_str(),
            }))
    }
}

/// The tenant: the bearer token.
pub struct Tenant(String);

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match bearer(req) {
            Some(token) => Ok(Tenant(token.to_owned())),
            None => Err(unauthorized(RequestId::of(req))),
        })
    }
}

fn unauthorized(request_id: RequestId) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <token>",
        request_id,
    )
}

/// The fake carrier's knobs, read from headers.
pub struct Simulate {
    delay: Duration,
    status: Option<StatusCode>,
    request_id: RequestId,
}

impl FromRequest for Simulate {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request_id = RequestId::of(req);
        let header = |name| req.headers().get(name).map(|v| v.to_str().unwrap_or(""));
        let bad = |message: &str| {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_simulation",
                message,
                request_id.clone(),
            ))
        };
        let delay = match header("x-simulate-delay-ms").map(str::parse::<u64>) {
            None => 0,
            Some(Ok(ms)) => ms.min(MAX_SIMULATED_DELAY_MS),
            Some(Err(_)) => {
                return ready(bad(
                    "X-Simulate-Delay-Ms takes a whole number of milliseconds",
                ))
            }
        };
        let status = match header("x-simulate-status").map(str::parse::<u16>) {
            None => None,
            Some(Ok(code @ 500..=599)) => StatusCode::from_u16(code).ok(),
            Some(_) => return ready(bad("X-Simulate-Status takes a 5xx status, such as 503")),
        };
        ready(Ok(Simulate {
            delay: Duration::from_millis(delay),
            status,
            request_id,
        }))
    }
}

impl Simulate {
    /// Sleeps, then fails if told to.
    async fn carrier(&self) -> Result<(), ApiError> {
        if !self.delay.is_zero() {
            actix_web::rt::time::sleep(self.delay).await;
        }
        match self.status {
            Some(status) => Err(ApiError::new(
                status,
                "carrier_unavailable",
                "the carrier failed (simulated); nothing was created, retry with the same key",
                self.request_id.clone(),
            )),
            None => Ok(()),
        }
    }
}

/// E.164: `+` and 8 to 15 digits.
fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

fn unique_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[post("/v1/calls")]
#[idempotent(ttl = "24h", scope = "api_key", fingerprint = "json")]
async fn create_call(
    state: web::Data<CallsState>,
    tenant: Tenant,
    simulate: Simulate,
    body: web::Json<NewCall>,
) -> Result<HttpResponse, ApiError> {
    let NewCall {
        agent_id,
        phone_number,
    } = body.into_inner();
    if !is_e164(&phone_number) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_phone_number",
            "phone_number must be E.164: + and 8 to 15 digits, such as +15555550123",
            simulate.request_id,
        ));
    }
    simulate.carrier().await?;
    let call = Call {
        id: unique_id("call"),
        agent_id,
        phone_number,
        status: "queued",
    };
    let location = format!("/v1/calls/{}", call.id);
    Ok(created(&state.calls, tenant, location, call))
}

#[get("/v1/calls")]
async fn list_calls(state: web::Data<CallsState>, tenant: Tenant) -> HttpResponse {
    listed(&state.calls, &tenant)
}

#[post("/v1/messages")]
#[idempotent(
    header = "X-Idempotency-Key",
    cache = "2xx",
    mismatch = "unprocessable"
)]
async fn create_message(
    state: web::Data<CallsState>,
    tenant: Tenant,
    simulate: Simulate,
    body: web::Json<NewMessage>,
) -> Result<HttpResponse, ApiError> {
    let NewMessage { to, text } = body.into_inner();
    simulate.carrier().await?;
    let message = Message {
        id: unique_id("msg"),
        to,
        text,
        status: "queued",
    };
    let location = format!("/v1/messages/{}", message.id);
    Ok(created(&state.messages, tenant, location, message))
}

#[get("/v1/messages")]
async fn list_messages(state: web::Data<CallsState>, tenant: Tenant) -> HttpResponse {
    listed(&state.messages, &tenant)
}

type PerTenant<T> = Mutex<HashMap<String, Vec<T>>>;

/// Keeps `item` in the tenant's list and answers 201 with it and its `Location`.
fn created<T: Serialize>(
    list: &PerTenant<T>,
    tenant: Tenant,
    location: String,
    item: T,
) -> HttpResponse {
    let response = HttpResponse::Created()
        .insert_header(("Location", location))
        .json(json!({ "data": &item }));
    lock(list).entry(tenant.0).or_default().push(item);
    response
}

/// The tenant's list, oldest first.
fn listed<T: Serialize>(list: &PerTenant<T>, tenant: &Tenant) -> HttpResponse {
    let list = lock(list);
    let items: &[T] = list.get(&tenant.0).map_or(&[], Vec::as_slice);
    HttpResponse::Ok().json(json!({ "data": items }))
}

#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every route but `/healthz` needs a bearer token: 401 before anything else runs.
async fn require_bearer(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if bearer(req.request()).is_none() {
        let error = unauthorized(RequestId::of(req.request()));
        return Ok(req
            .into_response(error.error_response())
            .map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// JSON bodies that do not parse get the API's envelope.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|err, req| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not the expected JSON: {err}"),
            RequestId::of(req),
        )
        .into()
    })
}

/// Registers the API: `/healthz`, and every other path behind the bearer token check.
pub fn configure(state: web::Data<CallsState>) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.app_data(state.clone())
            .app_data(json_config())
            .service(healthz)
            .service(
                web::scope("")
                    .wrap(from_fn(require_bearer))
                    .service(create_call)
                    .service(list_calls)
                    .service(create_message)
                    .service(list_messages),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::is_e164;

    #[test]
    fn e164_is_plus_and_8_to_15_digits() {
        assert!(is_e164("+15555550123"));
        assert!(is_e164("+12345678"));
        assert!(is_e164("+123456789012345"));
        assert!(!is_e164("+1234567"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("15555550123"));
        assert!(!is_e164("+1555555012a"));
        assert!(!is_e164("+"));
    }
}
