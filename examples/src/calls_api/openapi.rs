//! `GET /openapi.json`: the API's OpenAPI document, with what each idempotent operation
//! promises written in by [`idem_actix::openapi::Contract`].

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::{route, HttpResponse};
use idem_actix::openapi::Contract;
use idem_actix::{CachePolicy, OnMismatch, Scope};
use serde_json::json;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::OpenApi;

/// The idempotent operations, with the settings their `#[idempotent(...)]` arguments give
/// them, restated by hand: the tests send the documented keys and check the documented
/// answers (key header and length, mismatch status, what is stored, one key from two
/// tenants), so that those cannot drift apart unnoticed; the TTL, a day, no test waits out.
fn contract() -> Contract {
    Contract::new()
        // The bearer check answers 401 before the layer sees the request.
        .answered_outside([401])
        .operation(HttpMethod::Post, "/v1/calls", |p| {
            p.ttl(Duration::from_secs(24 * 60 * 60))
                .scope(Scope::ApiKey)
                .fingerprint(idem_actix::BodyForm::Json)
        })
        .operation(HttpMethod::Post, "/v1/messages", |p| {
            p.header("X-Idempotency-Key")
                .cache(CachePolicy::Success)
                .on_mismatch(OnMismatch::Unprocessable)
        })
}

/// The document: the routes as the API serves them, then the idempotency contract.
///
/// # Errors
/// A message saying what in the document or the contract is wrong.
pub fn document() -> Result<OpenApi, String> {
    let mut doc: OpenApi =
        serde_json::from_value(routes()).map_err(|e| format!("the routes' document: {e}"))?;
    contract().apply(&mut doc).map_err(|e| e.to_string())?;
    Ok(doc)
}

/// Serves [`document`], built once, to `GET` and `HEAD`. No token needed.
#[route("/openapi.json", method = "GET", method = "HEAD")]
pub async fn openapi_json() -> HttpResponse {
    static DOCUMENT: OnceLock<Result<String, String>> = OnceLock::new();
    let built = DOCUMENT.get_or_init(|| {
        document().and_then(|doc| serde_json::to_string(&doc).map_err(|e| e.to_string()))
    });
    match built {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/json")
            .body(text.clone()),
        Err(reason) => HttpResponse::InternalServerError().json(json!({
            "error": {"code": "openapi_unavailable", "message": reason},
        })),
    }
}

/// The demo knobs, said in words: as parameters, a schema-driven client would send them.
const SIMULATION: &str = "Demo knobs of the fake carrier (headers, so that they are not part \
    of the fingerprint): `X-Simulate-Delay-Ms: N` makes the handler sleep N ms (at most \
    30000; more is refused, 400 `invalid_simulation`); `X-Simulate-Status: 5xx` makes it fail \
    with that status and create nothing.";

/// Every route, as the handlers answer.
fn routes() -> serde_json::Value {
    let error = json!({"$ref": "#/components/schemas/ApiError"});
    let string = json!({"type": "string"});
    let request_id = json!({
        "description": "The request's id: its own valid `X-Request-ID`, else one the server made; the error body repeats it.",
        "schema": string,
    });
    let unauthorized = json!({
        "description": "No bearer token, or one not spelled `Bearer <token>` with one space and a token of letters, digits and `-._~+/` (then any `=`): `unauthorized`.",
        "headers": {"X-Request-ID": request_id},
        "content": {"application/json": {"schema": error}},
    });
    // Under `--database-url` only: the embedded store's API keeps its data in memory.
    let database = format!(
        "Under `--database-url`, a database that fails, or a statement of the API's that runs \
         past {} s (such as on a table an administrator locked), answers 503 \
         `database_unavailable`, with `Retry-After`: nothing was kept, and the request may be \
         sent again.",
        super::STATEMENT_TIMEOUT.as_secs()
    );
    let retry_after = json!({
        "description": "Seconds to wait before sending the request again.",
        "schema": {"type": "integer", "minimum": 0},
    });
    let database_unavailable = json!({
        "description": database,
        "headers": {"Retry-After": retry_after, "X-Request-ID": request_id},
        "content": {"application/json": {"schema": error}},
    });
    let bad_request = |codes: &str| {
        json!({
            "description": format!("The request is not valid: {codes}."),
            "content": {"application/json": {"schema": error}},
        })
    };
    let created = |schema: &str, what: &str| {
        json!({
            "description": format!("The {what} was created."),
            "headers": {"Location": {
                "description": format!("Where the {what} is."),
                "schema": {"type": "string"},
            }},
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"$ref": format!("#/components/schemas/{schema}")}},
            }}},
        })
    };
    let listed = |schema: &str, what: &str| {
        json!({
            "description": format!("This tenant's {what}, oldest first."),
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {
                    "type": "array",
                    "items": {"$ref": format!("#/components/schemas/{schema}")},
                }},
            }}},
        })
    };
    let carrier_failed = json!({
        "description": format!("The fake carrier failed, as `X-Simulate-Status` asked: \
            `carrier_unavailable`. Nothing was created, and the key is free again. {database}"),
        // The carrier's failure sends none: only the database's does.
        "headers": {"Retry-After": {
            "description": "With `database_unavailable`: seconds to wait before sending the \
                request again.",
            "schema": {"type": "integer", "minimum": 0},
        }},
        "content": {"application/json": {"schema": error}},
    });
    let bearer = json!([{"bearer": []}]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "calls-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An in-memory outbound-calling API whose create operations are \
                idempotent. Every `/v1` request needs `Authorization: Bearer <token>`; the \
                token is the tenant.",
        },
        "paths": {
            "/v1/calls": {
                "post": {
                    "operationId": "createCall",
                    "summary": "Place a call",
                    "description": SIMULATION,
                    "security": bearer,
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewCall"}}},
                    },
                    "responses": {
                        "201": created("Call", "call"),
                        "400": bad_request("`invalid_json`, `invalid_phone_number` or `invalid_simulation`"),
                        "401": unauthorized,
                        "5XX": carrier_failed,
                    },
                },
                "get": {
                    "operationId": "listCalls",
                    "summary": "List calls",
                    "security": bearer,
                    "responses": {
                        "200": listed("Call", "calls"),
                        "401": unauthorized,
                        "503": database_unavailable,
                    },
                },
            },
            "/v1/messages": {
                "post": {
                    "operationId": "createMessage",
                    "summary": "Send a message",
                    "description": SIMULATION,
                    "security": bearer,
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewMessage"}}},
                    },
                    "responses": {
                        "201": created("Message", "message"),
                        "400": bad_request("`invalid_json` or `invalid_simulation`"),
                        "401": unauthorized,
                        "5XX": carrier_failed,
                    },
                },
                "get": {
                    "operationId": "listMessages",
                    "summary": "List messages",
                    "security": bearer,
                    "responses": {
                        "200": listed("Message", "messages"),
                        "401": unauthorized,
                        "503": database_unavailable,
                    },
                },
            },
            "/healthz": {"get": {
                "operationId": "health",
                "summary": "Liveness",
                "responses": {"200": {
                    "description": "The server is up.",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"type": "string", "enum": ["ok"]}},
                    }}},
                }},
            }},
            "/metrics": {"get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {"200": {
                    "description": "The metrics, in Prometheus' text format.",
                    "content": {"text/plain": {"schema": string}},
                }},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Any token of RFC 6750's characters, after `Bearer` and one space: the token is the tenant, and the whole header value scopes its idempotency keys.",
            }},
            "schemas": {
                "ApiError": {
                    "type": "object",
                    "required": ["error", "request_id"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": string, "message": string},
                        },
                        "request_id": string,
                    },
                },
                "NewCall": {
                    "type": "object",
                    "required": ["agent_id", "phone_number"],
                    "properties": {
                        "agent_id": string,
                        "phone_number": {
                            "type": "string",
                            "pattern": "^\\+[0-9]{8,15}$",
                            "description": "E.164: `+` and 8 to 15 digits; anything else gets 400 `invalid_phone_number`.",
                        },
                    },
                },
                "Call": {
                    "type": "object",
                    "required": ["id", "agent_id", "phone_number", "status"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^call_"},
                        "agent_id": string,
                        "phone_number": string,
                        "status": {"type": "string", "enum": ["queued"]},
                    },
                },
                "NewMessage": {
                    "type": "object",
                    "required": ["to", "text"],
                    "properties": {"to": string, "text": string},
                },
                "Message": {
                    "type": "object",
                    "required": ["id", "to", "text", "status"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^msg_"},
                        "to": string,
                        "text": string,
                        "status": {"type": "string", "enum": ["queued"]},
                    },
                },
            },
        },
    })
}
