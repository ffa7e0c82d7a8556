//! `calls-api`: an in-memory outbound-calling API. Every request but `GET` or `HEAD` of
//! `/healthz`, `/openapi.json` and the binary's `/metrics` needs `Authorization: Bearer <token>`,
//! spelled exactly so; the token is the tenant (its calls and messages are kept by a digest of it).
//!
//! Demo knobs of the fake carrier are headers, so that they are not part of the fingerprint:
//! `X-Simulate-Delay-Ms: N` makes the handler sleep N ms (at most 30000; more is refused), and
//! `X-Simulate-Status: 5xx` makes it fail with that status and create nothing.
//!
//! Calls and messages are kept in memory, or, on a database ([`CallsState::on_database`]), as
//! rows of Postgres written in the transaction that records the request's idempotency key: a
//! call is there exactly when the answer that created it is recorded. Each of the API's own
//! statements there is bounded ([`STATEMENT_TIMEOUT`]).

use std::collections::HashMap;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{get, post, route, web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use idem_actix::{idempotent, IdempotencyKey, PostgresStore, RequestId, Transaction};
use idem_core::warnings::Warnings;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row};

pub mod cors;
pub mod openapi;

/// Writes `line` to standard error, as `eprintln!` does, but never panics: a log pipe whose
/// reader went away is no failure of the server (`eprintln!` panicked, in the task that waits
/// for signals too, which then never stopped the server).
pub fn log_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The longest simulated delay.
pub const MAX_SIMULATED_DELAY_MS: u64 = 30_000;

/// How long one of the API's own statements on a database (a row it writes, a list it reads)
/// may run before Postgres cancels it, and the request is answered 503 `database_unavailable`:
/// a table an administrator locked holds a request no longer than this, where it held it until
/// the lock went. Set per transaction (`SET LOCAL`), not on the pool's connections, which the
/// store's statements share: those keep their own, shorter, timeout (a second), which a keyed
/// call's completion, in the same transaction, meets first.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The API's data: calls and messages per tenant, oldest first, in memory (the default) or
/// in Postgres.
#[derive(Default)]
pub struct CallsState {
    calls: PerTenant<Call>,
    messages: PerTenant<Message>,
    /// In memory, the order of the next call or message made: the order of their requests,
    /// as Postgres's `seq` (its row written before the carrier is called).
    made: std::sync::atomic::AtomicU64,
    database: Option<PgPool>,
}

/// The tables of calls and messages on a database, created at start-up. The strings a client
/// sends are kept as `bytea`: a JSON string may hold U+0000, which `text` refuses.
const TABLES: &str = "SELECT pg_advisory_xact_lock(hashtext('calls-api tables'));
CREATE TABLE IF NOT EXISTS calls (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    tenant       text NOT NULL,
    agent_id     bytea NOT NULL,
    phone_number text NOT NULL,
    status       text NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_tenant ON calls (tenant, seq);
CREATE TABLE IF NOT EXISTS messages (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    tenant       text NOT NULL,
    recipient    bytea NOT NULL,
    text         bytea NOT NULL,
    status       text NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_tenant ON messages (tenant, seq);";

impl CallsState {
    /// Calls and messages as rows of Postgres, on `pool` (the idempotency store's, so that
    /// their writes and the store's records share one database). Create the tables with
    /// [`create_tables`](Self::create_tables).
    pub fn on_database(pool: PgPool) -> Self {
        Self {
            database: Some(pool),
            ..Self::default()
        }
    }

    /// Creates the tables of calls and messages if they do not exist; nothing to do in
    /// memory. Safe to run from several processes at once.
    ///
    /// # Errors
    /// Postgres's, when it cannot be reached or refuses.
    pub async fn create_tables(&self) -> Result<(), sqlx::Error> {
        if let Some(pool) = &self.database {
            sqlx::raw_sql(TABLES).execute(pool).await?;
        }
        Ok(())
    }

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
    status: String,
}

/// A message as the API shows it.
#[derive(Debug, Serialize)]
pub struct Message {
    id: String,
    to: String,
    text: String,
    status: String,
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
    /// Seconds for `Retry-After`, where retrying later can succeed.
    retry_after: Option<u32>,
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
            retry_after: None,
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
        let mut res = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            res.insert_header((actix_web::http::header::RETRY_AFTER, seconds));
        }
        res.insert_header((idem_actix::REQUEST_ID, self.request_id.as_str()))
            .json(json!({
                "error": {"code": self.code, "message": self.message},
                "request_id": self.request_id.as_str(),
            }))
    }
}

/// The tenant: a digest of the bearer token (SHA-256, in hex), by which its calls and
/// messages are kept, so that the API's rows keep no credential, and a token of any length
/// fits their index (Postgres refuses an index entry over about 2.7 kB).
pub struct Tenant(String);

impl Tenant {
    fn of(token: &str) -> Self {
        use std::fmt::Write as _;
        let digest = Sha256::digest(token.as_bytes());
        Self(
            digest
                .iter()
                .fold(String::with_capacity(64), |mut hex, byte| {
                    let _ = write!(hex, "{byte:02x}");
                    hex
                }),
        )
    }
}

/// The token of `Authorization: Bearer <token>`, spelled exactly so: `Bearer`, one space, and
/// a token of RFC 6750's characters (letters, digits, `-._~+/`, then any `=`). The layer
/// scopes a tenant's idempotency keys by the whole header value (`scope = "api_key"`), so
/// each tenant has one spelling: another (`bearer`, two spaces) would be another scope, in
/// which a key the tenant already used places its call again.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?;
    let body = token.trim_end_matches('=');
    let b64 = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    (!body.is_empty() && body.chars().all(b64)).then_some(token)
}

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match bearer(req) {
            Some(token) => Ok(Tenant::of(token)),
            None => Err(unauthorized(RequestId::of(req))),
        })
    }
}

fn unauthorized(request_id: RequestId) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <token>, spelled so: one space, a token of letters, digits and -._~+/ (then any =)",
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
            Some(Ok(ms @ ..=MAX_SIMULATED_DELAY_MS)) => ms,
            Some(_) => {
                return ready(bad(
                    "X-Simulate-Delay-Ms takes a whole number of milliseconds, at most 30000",
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
    ledger: Ledger,
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
    let call = Call {
        id: unique_id("call"),
        agent_id,
        phone_number,
        status: "queued".into(),
    };
    let location = format!("/v1/calls/{}", call.id);
    let response = created(location, &call);
    // The client's agent id escaped (a line break as `\n`), so that it cannot print a line
    // that reads as another call placed.
    let placed = format!(
        "placed {} for agent {}",
        call.id,
        call.agent_id.escape_debug()
    );
    ledger.keep(tenant, call, simulate.carrier()).await?;
    // One line per call placed: the side effect a retry must not repeat, for operators (and
    // the soak test's audit, on the embedded store) to count. On Postgres the call is written
    // in its key's transaction, which commits after this handler returns: a commit that then
    // fails leaves a line for a call that is not there (the rows are the record). Written
    // whatever becomes of the line: a panic here (`println!` on a closed pipe) released the
    // key of a call already placed, so that its retry placed it again.
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "{placed}");
    }
    Ok(response)
}

#[get("/v1/calls")]
async fn list_calls(
    state: web::Data<CallsState>,
    tenant: Tenant,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    listed::<Call>(&state, &tenant, request_id).await
}

#[post("/v1/messages")]
#[idempotent(
    header = "X-Idempotency-Key",
    cache = "2xx",
    mismatch = "unprocessable"
)]
async fn create_message(
    ledger: Ledger,
    tenant: Tenant,
    simulate: Simulate,
    body: web::Json<NewMessage>,
) -> Result<HttpResponse, ApiError> {
    let NewMessage { to, text } = body.into_inner();
    let message = Message {
        id: unique_id("msg"),
        to,
        text,
        status: "queued".into(),
    };
    let location = format!("/v1/messages/{}", message.id);
    let response = created(location, &message);
    ledger.keep(tenant, message, simulate.carrier()).await?;
    Ok(response)
}

#[get("/v1/messages")]
async fn list_messages(
    state: web::Data<CallsState>,
    tenant: Tenant,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    listed::<Message>(&state, &tenant, request_id).await
}

/// Each tenant's items, oldest first, each with when its request made it.
type PerTenant<T> = Mutex<HashMap<String, Vec<(u64, T)>>>;

/// 201 with `item` and its `Location`.
fn created<T: Serialize>(location: String, item: &T) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("Location", location))
        .json(json!({ "data": item }))
}

/// The tenant's list, oldest first.
async fn listed<T: Item>(
    state: &CallsState,
    tenant: &Tenant,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let Some(pool) = &state.database else {
        let list = lock(T::list(state));
        let items: Vec<&T> = (list.get(&tenant.0).into_iter().flatten())
            .map(|(_, item)| item)
            .collect();
        return Ok(HttpResponse::Ok().json(json!({ "data": items })));
    };
    // In a transaction of its own, which bounds it; dropped, it rolls back as its connection
    // goes back to the pool, off the request's path.
    let select = |pool| async move {
        let mut tx = begin(pool).await?;
        sqlx::query(T::SELECT)
            .bind(&tenant.0)
            .try_map(|row: PgRow| T::from_row(&row))
            .fetch_all(&mut *tx)
            .await
    };
    let items = on_a_live_connection(pool, select)
        .await
        .map_err(|e| database_unavailable(e, request_id))?;
    Ok(HttpResponse::Ok().json(json!({ "data": items })))
}

/// What the API creates: kept in a list in memory, or as a row of its table.
trait Item: Serialize + Sized + Send + Unpin + 'static {
    /// Its row for a tenant: `$1` the tenant, then [`bind`](Self::bind)'s values.
    const INSERT: &'static str;
    /// A tenant's rows (`$1`), oldest first.
    const SELECT: &'static str;
    fn list(state: &CallsState) -> &PerTenant<Self>;
    fn bind(self, query: Insert) -> Insert;
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error>;
}

type Insert = sqlx::query::Query<'static, Postgres, PgArguments>;

/// A string the client sent, from its `bytea` column: any JSON string, U+0000 included,
/// which a `text` column refuses.
fn text(row: &PgRow, column: &str) -> Result<String, sqlx::Error> {
    let bytes: Vec<u8> = row.try_get(column)?;
    String::from_utf8(bytes).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl Item for Call {
    const INSERT: &'static str = "INSERT INTO calls (tenant, id, agent_id, phone_number, status) VALUES ($1, $2, $3, $4, $5)";
    const SELECT: &'static str =
        "SELECT id, agent_id, phone_number, status FROM calls WHERE tenant = $1 ORDER BY seq";

    fn list(state: &CallsState) -> &PerTenant<Self> {
        &state.calls
    }

    fn bind(self, query: Insert) -> Insert {
        query
            .bind(self.id)
            .bind(self.agent_id.into_bytes())
            .bind(self.phone_number)
            .bind(self.status)
    }

    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            agent_id: text(row, "agent_id")?,
            phone_number: row.try_get("phone_number")?,
            status: row.try_get("status")?,
        })
    }
}

impl Item for Message {
    const INSERT: &'static str =
        "INSERT INTO messages (tenant, id, recipient, text, status) VALUES ($1, $2, $3, $4, $5)";
    const SELECT: &'static str =
        "SELECT id, recipient, text, status FROM messages WHERE tenant = $1 ORDER BY seq";

    fn list(state: &CallsState) -> &PerTenant<Self> {
        &state.messages
    }

    fn bind(self, query: Insert) -> Insert {
        query
            .bind(self.id)
            .bind(self.to.into_bytes())
            .bind(self.text.into_bytes())
            .bind(self.status)
    }

    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            to: text(row, "recipient")?,
            text: text(row, "text")?,
            status: row.try_get("status")?,
        })
    }
}

/// Where a create handler keeps what it creates, as an extractor.
pub enum Ledger {
    /// In this process's memory.
    Memory(web::Data<CallsState>),
    /// In Postgres, in the transaction that records the request's idempotency key.
    Keyed(Transaction, RequestId),
    /// In Postgres, in a transaction of its own: the request has no key.
    Unkeyed(PgPool, RequestId),
}

impl FromRequest for Ledger {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<CallsState>>().cloned() else {
            return Box::pin(ready(Err(actix_web::error::ErrorInternalServerError(
                "register CallsState with the app",
            ))));
        };
        let request_id = RequestId::of(req);
        let Some(pool) = state.database.clone() else {
            return Box::pin(ready(Ok(Ledger::Memory(state))));
        };
        let keyed = IdempotencyKey::extract(req).into_inner().is_ok();
        if !keyed {
            return Box::pin(ready(Ok(Ledger::Unkeyed(pool, request_id))));
        }
        let tx = Transaction::from_request(req, payload);
        Box::pin(async move { Ok(Ledger::Keyed(tx.await?, request_id)) })
    }
}

impl Ledger {
    /// Keeps `item` for `tenant` if `carrier` succeeds. In Postgres, its row is written
    /// first and commits only if the carrier succeeds (the idempotency layer commits it with
    /// the key's record); in memory, it is kept once the carrier has answered.
    async fn keep<T: Item>(
        self,
        tenant: Tenant,
        item: T,
        carrier: impl Future<Output = Result<(), ApiError>>,
    ) -> Result<(), ApiError> {
        let (pool, request_id) = match self {
            Ledger::Memory(state) => {
                // Listed by when its request made it, not when its carrier answered: a call
                // whose carrier takes a while comes before a later one placed sooner.
                let made = (state.made).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                carrier.await?;
                let mut lists = lock(T::list(&state));
                let list = lists.entry(tenant.0).or_default();
                let at = list.partition_point(|(before, _)| *before < made);
                list.insert(at, (made, item));
                return Ok(());
            }
            Ledger::Keyed(mut tx, request_id) => {
                // The key's transaction is the store's to begin: its bound is set here, one
                // round trip more. A write it cancels fails the request, which releases the
                // key and rolls the row back with it.
                let written = async {
                    sqlx::raw_sql(&bounded()).execute(&mut *tx).await?;
                    insert(tenant, item, &mut tx).await
                };
                written
                    .await
                    .map_err(|e| database_unavailable(e, request_id))?;
                return carrier.await;
            }
            Ledger::Unkeyed(pool, request_id) => (pool, request_id),
        };
        let failed = |e| database_unavailable(e, request_id.clone());
        let mut tx = on_a_live_connection(&pool, begin).await.map_err(failed)?;
        insert(tenant, item, &mut tx).await.map_err(failed)?;
        carrier.await?;
        tx.commit().await.map_err(failed)
    }
}

/// Runs `statement` on `pool`, and again while the connection it got was one Postgres closed
/// since the pool opened it (a restart, `pg_terminate_backend`): the pool lends connections
/// without testing them first (the store's choice: one round trip per operation), and drops
/// each closed one as a statement finds it. Without this, each such connection answered one
/// request 503. (A keyed call's statements run in its key's transaction, which the store
/// opens on a live connection the same way.)
async fn on_a_live_connection<'p, T, F, Fut>(
    pool: &'p PgPool,
    statement: F,
) -> Result<T, sqlx::Error>
where
    F: Fn(&'p PgPool) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    // Once per connection the pool keeps, as the store's own statements: the pool closes a
    // connection a statement found closed as it comes back.
    let mut left = pool.options().get_max_connections() + 1;
    loop {
        match statement(pool).await {
            Err(e) if left > 1 && PostgresStore::connection_closed(&e) => left -= 1,
            result => return result,
        }
    }
}

/// `SET LOCAL statement_timeout` to [`STATEMENT_TIMEOUT`]: the bound of the statements that
/// follow in the transaction.
fn bounded() -> String {
    format!(
        "SET LOCAL statement_timeout = {}",
        STATEMENT_TIMEOUT.as_millis()
    )
}

/// A transaction on `pool` whose statements are bounded by [`STATEMENT_TIMEOUT`], set in the
/// round trip of its `BEGIN`.
async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(format!("BEGIN; {}", bounded())).await
}

/// Writes `item`'s row for `tenant` on `conn`.
async fn insert<T: Item>(
    tenant: Tenant,
    item: T,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    let query = item.bind(sqlx::query(T::INSERT).bind(tenant.0));
    query.execute(conn).await.map(drop)
}

/// 503 `database_unavailable`, with `Retry-After`: Postgres failed, or cancelled a statement
/// past [`STATEMENT_TIMEOUT`], and nothing was kept.
fn database_unavailable(error: sqlx::Error, request_id: RequestId) -> ApiError {
    // The database's own words go to the server's log: they are not the client's business.
    if let Some(held) = DATABASE_FAILED.due() {
        log_line(format_args!(
            "calls-api: the database failed (request {request_id}): {error} ({held} more failed since the last such line)"
        ));
    }
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the database is unavailable; nothing was created, retry later",
        request_id,
    );
    error.retry_after = Some(1);
    error
}

/// The database's failures, logged when they start, then at most once a minute: while the
/// database is down every request fails alike, and a line for each would bury the log (and
/// let any client add lines to it).
static DATABASE_FAILED: Warnings = Warnings::new();

/// `GET`, and `HEAD` as `GET` (a load balancer's health check may send either).
#[route("/healthz", method = "GET", method = "HEAD")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The API's routes (all but `/healthz` and `/openapi.json`) need a bearer token: 401 before
/// anything else runs.
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

/// Registers the API: `/healthz`, `/openapi.json`, and every other path behind the bearer
/// token check.
pub fn configure(state: web::Data<CallsState>) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.app_data(state.clone())
            .app_data(json_config())
            .service(healthz)
            .service(openapi::openapi_json)
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
