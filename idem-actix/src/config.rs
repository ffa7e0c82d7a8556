//! Per-application settings: the store, the clock and the error renderer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest, HttpResponse};
use idem_core::clock::Clock;
use idem_core::{Engine, MokaStore, Policy, PolicyError, Store};

use crate::functions::ReplayFunction;
use crate::handler::TASKS;
use crate::metrics::StoreMetrics;
use crate::outage::Outage;
use crate::render::{ErrorRenderer, JsonEnvelope};

/// The key's header name from a policy. The attribute checks names at compile time; one set
/// at run time (application defaults, the middleware's overrides) is refused when it is not a
/// header name, never replaced by another.
pub(crate) fn parse_header(name: &'static str) -> Result<HeaderName, PolicyError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| PolicyError::InvalidHeader(name))
}

/// What only an application's defaults must meet, beside [`Policy::check`]: no endpoint's
/// name, which would name every endpoint alike; no global scope, which would share keys
/// between callers on every endpoint that names no scope; and no setting of the fingerprint that
/// replayed mismatches leave unread ([`Policy::check_fingerprint_read`]). Checked by
/// [`IdempotencyConfig::with_defaults`], and by a contract's defaults as the application
/// would check them.
pub(crate) fn check_as_defaults(policy: &Policy) -> Result<(), PolicyError> {
    if let Some(name) = policy.endpoint_name {
        return Err(PolicyError::EndpointNameInDefaults(name));
    }
    // Keys shared between callers are written on the endpoint that shares them.
    if policy.scope == idem_core::Scope::Global {
        return Err(PolicyError::GlobalScopeInDefaults);
    }
    policy.check_fingerprint_read()
}

/// The store and error rendering of an application, registered with `App::app_data`.
///
/// Without one, every `#[idempotent]` handler of the process shares an embedded
/// [`MokaStore`] with default capacity.
///
/// Build it once, outside the `HttpServer::new` closure, and clone it into each worker's app:
/// the closure runs once per worker, and a store built inside it would give each worker its
/// own records, so a duplicate could run once per worker.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use idem_actix::{IdempotencyConfig, MokaStore};
///
/// # async fn serve() -> std::io::Result<()> {
/// let idem = IdempotencyConfig::new(MokaStore::builder().max_bytes(64 << 20).build());
/// HttpServer::new(move || App::new().app_data(idem.clone()))
///     .bind(("127.0.0.1", 8080))?
///     .run()
///     .await
/// # }
/// ```
///
/// A scope or resource may register its own: the innermost one a request is served under
/// applies. One registered as `web::Data<IdempotencyConfig>` is read only where no plain
/// `IdempotencyConfig` is registered at any level (actix finds each type apart, and does not
/// say which is inner); an endpoint that sees both logs an error on its first request.
///
/// Clones share one set of settings: a clone is a reference count, which every keyed request
/// takes once. Each `with_*` method returns the settings with one of them changed;
/// [`defaults`](Self::defaults) and [`engine`](Self::engine) read them.
#[derive(Clone)]
pub struct IdempotencyConfig(Arc<Settings>);

#[derive(Clone)]
struct Settings {
    engine: Engine,
    renderer: Arc<dyn ErrorRenderer>,
    /// Whether the application registered its own renderer.
    custom_renderer: bool,
    defaults: Policy,
    header: HeaderName,
    max_detached: usize,
    /// The store that lends handlers their `Transaction`.
    #[cfg(feature = "postgres")]
    transactions: Option<idem_core::store::PostgresStore>,
    on_replay: Option<ReplayFunction>,
    /// The warnings of its store's failures.
    outage: Arc<Outage>,
}

impl Settings {
    /// Warns that the application's own renderer renders nothing, when its defaults name an
    /// error format, which every endpoint without one of its own then takes.
    fn warn_if_renderer_unused(&self) {
        if let (true, Some(format)) = (self.custom_renderer, self.defaults.error_format) {
            tracing::warn!(
                ?format,
                "the error renderer given to with_error_renderer renders no endpoint's \
                 errors: the application's defaults name an error format, which comes first; \
                 leave error_format out of the defaults to use the renderer"
            );
        }
    }
}

/// How long a drain that cancelled operations waits for their claims to be released, and for
/// the records left to the background.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// The default bound on runs a worker finishes for clients that went away.
const DEFAULT_MAX_DETACHED: usize = 1024;

impl IdempotencyConfig {
    /// Settings with `store`, the system clock as [`Engine::new`] reads it, and the default
    /// JSON error envelope.
    ///
    /// On a `PostgresStore` (feature `postgres`), handlers can also take the `Transaction`
    /// in which their key's record is written, and write their side effects in it.
    pub fn new(store: impl Store) -> Self {
        #[cfg(feature = "postgres")]
        let transactions = (&store as &dyn std::any::Any)
            .downcast_ref::<idem_core::store::PostgresStore>()
            .cloned();
        #[allow(unused_mut, reason = "changed with the postgres feature only")]
        let mut config = Self::from_shared(Arc::new(store));
        #[cfg(feature = "postgres")]
        if transactions.is_some() {
            config.settings().transactions = transactions;
        }
        config
    }

    /// Settings with a store shared with other code (for example, to inspect it in tests).
    /// A store passed this way lends handlers no `Transaction`, even a Postgres one: its type
    /// is no longer known; give it to [`new`](Self::new).
    ///
    /// Every store operation is timed and its errors counted through the `metrics` facade, and
    /// so are the records the store evicts before their time to live.
    pub fn from_shared(store: Arc<dyn Store>) -> Self {
        Self(Arc::new(Settings {
            engine: Engine::from_arc(Arc::clone(&store)).with_observer(StoreMetrics::new(store)),
            renderer: Arc::new(JsonEnvelope::CODE),
            custom_renderer: false,
            defaults: Policy::DEFAULT,
            header: HeaderName::from_static("idempotency-key"),
            max_detached: DEFAULT_MAX_DETACHED,
            #[cfg(feature = "postgres")]
            transactions: None,
            on_replay: None,
            outage: Arc::default(),
        }))
    }

    /// The application's defaults for every endpoint: each `#[idempotent(...)]` argument (or
    /// [`Idempotency`](crate::Idempotency) setting) overrides its own field, and the rest come
    /// from here. Without this, [`Policy::DEFAULT`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use idem_actix::{IdempotencyConfig, MokaStore, Policy};
    ///
    /// let idem = IdempotencyConfig::new(MokaStore::new()).with_defaults(
    ///     Policy::DEFAULT
    ///         .ttl(Duration::from_secs(3600))
    ///         .header("X-Idempotency-Key"),
    /// )?;
    /// assert_eq!(idem.defaults().ttl, Duration::from_secs(3600));
    /// # Ok::<(), idem_actix::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// [`PolicyError`] for settings the store contradicts (a `max_response` larger than the
    /// records it keeps, or a store too small to keep any record) or a header name that is not
    /// one, or for settings that contradict each other (see [`Policy::check`]);
    /// [`PolicyError::EndpointNameInDefaults`] for an endpoint's name, which names one
    /// endpoint and is given with its other settings;
    /// [`PolicyError::GlobalScopeInDefaults`] for `Scope::Global`, which shares keys between
    /// callers and is written on the endpoints that do; [`PolicyError::UnreadUnderReplay`] for
    /// fingerprint headers or members ignored beside `OnMismatch::Replay`. An endpoint's
    /// own overrides (the attribute's, checked at compile time; the middleware's, checked on
    /// their own when it starts, see [`Overrides::check`](crate::Overrides::check)) are
    /// checked with these defaults and the store on its first keyed request, and a
    /// contradiction is logged; the layer never loses a record to one.
    pub fn with_defaults(mut self, policy: Policy) -> Result<Self, PolicyError> {
        check_as_defaults(&policy)?;
        policy.check(&**self.engine().store())?;
        let header = parse_header(policy.header)?;
        let settings = self.settings();
        settings.header = header;
        settings.defaults = policy;
        settings.warn_if_renderer_unused();
        Ok(self)
    }

    /// These settings, checked to lend handlers their `Transaction` (feature `postgres`): for
    /// an application whose handlers take one, to fail at start-up rather than at the first
    /// request of such a handler.
    ///
    /// Neither the compiler nor actix-web can match a handler that takes a `Transaction` with
    /// the store of the app that serves it: actix-web looks an app's data up per request, and
    /// registers a route (`#[post]`, `Resource::to`) without running anything of the
    /// handler's before its first request. So the app that has such handlers says so, here;
    /// a handler that takes one on an app that did not check still gets its 500
    /// `idempotency_transaction_unavailable`, with the reason in the log.
    ///
    /// ```no_run
    /// use actix_web::{App, HttpServer};
    /// use idem_actix::{IdempotencyConfig, PostgresStore};
    ///
    /// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PostgresStore::new("postgres://app@127.0.0.1:5432/app")?;
    /// store.migrate().await?;
    /// let idem = IdempotencyConfig::new(store).require_transactions()?;
    /// HttpServer::new(move || App::new().app_data(idem.clone()))
    ///     .bind(("127.0.0.1", 8080))?
    ///     .run()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PolicyError::NoTransactions`] when the store is not a `PostgresStore` given to
    /// [`new`](Self::new) (a store given to [`from_shared`](Self::from_shared), or wrapped in
    /// another store, lends none).
    #[cfg(feature = "postgres")]
    pub fn require_transactions(self) -> Result<Self, PolicyError> {
        match self.transactions() {
            Some(_) => Ok(self),
            None => Err(PolicyError::NoTransactions),
        }
    }

    /// The application's defaults, as [`with_defaults`](Self::with_defaults) set them.
    pub fn defaults(&self) -> &Policy {
        &self.0.defaults
    }

    pub(crate) fn header(&self) -> &HeaderName {
        &self.0.header
    }

    /// The most operations each worker keeps running for clients that went away (they
    /// finish and are recorded, so that the retry gets the replay). Past it, a keyed request
    /// gets 503 `idempotency_overloaded` with `Retry-After`, and nothing runs: a client that
    /// resets every request cannot make a server pile up work nobody waits for. A keyed
    /// request is refused while its worker keeps `per_worker` such operations, so `0`
    /// refuses every keyed request. The bound is on what a worker admits: runs already in
    /// progress when their clients go all go on, so that a worker can keep up to `per_worker`
    /// more than it, as many as it had keyed runs in progress at once whose clients all went
    /// (bounded in turn by its connections, actix's `HttpServer::max_connections`). Counting
    /// those too would bound every worker's keyed runs in progress, of which a store that
    /// must be waited for (Redis) has one per request it serves. Over HTTP/2, actix never drops
    /// a request whose client reset its stream or lost its connection, nor tells that it went,
    /// and a connection's streams are bounded only while they are open: every keyed request
    /// over HTTP/2 counts toward the bound while its claim and run are in progress, and a
    /// streamed answer's body while actix holds it (actix reads a reset only when it sends).
    /// Default 1024.
    #[must_use]
    pub fn with_max_detached(mut self, per_worker: usize) -> Self {
        self.settings().max_detached = per_worker;
        self
    }

    /// Lets the keyed operations in progress finish, for a graceful shutdown, and waits at most
    /// `timeout` for them (those of every application of this process), whether their clients
    /// still wait or went away. Then the runs still in progress are cancelled and their keys
    /// released, so that a retry runs them again rather than finding them in flight until
    /// their leases lapse (a client still waiting gets 503
    /// `idempotency_shutting_down` with `Retry-After`); those whose
    /// handlers had answered and whose records were on their way to the store are recorded
    /// instead, since their operations ran, and a client still waiting for one gets its
    /// handler's answer (the drain waits up to 2 s more for those releases and records, for
    /// a stream's record whose end it let go, and, even with nothing running, for the
    /// releases of claims whose writes failed and may have landed; a record or release the store has not taken
    /// by then is lost as the server stops, as when a process is killed: its key stays in
    /// flight until its lease lapses, and then a retry runs the operation again). A keyed
    /// stream whose client still reads it is left to the server's
    /// graceful stop, which sends it on and records it; so is a run that first waits after the
    /// drain's time ran out, which, still going when the stop's own time runs out, is dropped
    /// as its worker's runtime stops, too late to release its key (it stays in flight until
    /// its lease lapses). Resolves to the number of operations cancelled, a stream's end let go without its record
    /// among them (0 when all finished).
    ///
    /// actix-web's graceful shutdown waits for open connections, not for work whose client
    /// went away, and each worker's runtime stops (dropping such work) as soon as its
    /// connections are done. So drain while the workers still run: stop accepting
    /// (`ServerHandle::pause`), drain, then stop the server. Its own signal handling does not
    /// know to do this: disable it and listen for the signal yourself. (With actix-web 4.11
    /// or later, a future that awaits the signal and then drains can also be the server's
    /// `HttpServer::shutdown_signal`, which its graceful stop follows; the server then keeps
    /// accepting while it drains.)
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use actix_web::{App, HttpServer};
    /// use idem_actix::{IdempotencyConfig, MokaStore};
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let idem = IdempotencyConfig::new(MokaStore::new());
    /// let app_idem = idem.clone();
    /// let server = HttpServer::new(move || App::new().app_data(app_idem.clone()))
    ///     .disable_signals()
    ///     .bind(("127.0.0.1", 8080))?
    ///     .run();
    /// let handle = server.handle();
    /// actix_web::rt::spawn(async move {
    ///     # let sigterm = std::future::pending::<()>();
    ///     sigterm.await; // for example with tokio::signal::unix
    ///     handle.pause().await;
    ///     idem.drain(Duration::from_secs(25)).await;
    ///     handle.stop(true).await;
    /// });
    /// server.await
    /// # }
    /// ```
    pub async fn drain(&self, timeout: Duration) -> usize {
        if tokio::time::timeout(timeout, TASKS.idle()).await.is_ok() {
            // Nothing runs, but releases may still be under way in the background (a claim
            // whose write failed and may have landed, a release the store failed, retried):
            // the runtimes that run them stop when the server does.
            let released = Engine::every_abandoned_released();
            if tokio::time::timeout(RELEASE_GRACE, released).await.is_err() {
                tracing::warn!("some idempotency claims were not released at shutdown; they lapse with their leases");
            }
            return 0;
        }
        let cancelled = TASKS.cancel();
        // Each cancelled run drops on its worker and releases its claim through the store:
        // wait for those releases (the runtimes that run them stop when the server does), the
        // runs of every application of the process, as it cancelled them all. Then for what
        // is still in progress: a stream's record (or its release, when it failed) whose end
        // was let go, which its client, having the whole answer, no longer waits for (its
        // connection closes, and its worker's runtime stops with the last one).
        let released = async {
            TASKS.cancelled_idle().await;
            TASKS.orphans_idle().await;
            Engine::every_abandoned_released().await;
            TASKS.finishing_idle().await;
        };
        if tokio::time::timeout(RELEASE_GRACE, released).await.is_err() {
            tracing::warn!("some idempotency claims were not released at shutdown; they lapse with their leases");
        }
        cancelled
    }

    /// Calls `hook` on every replay of every endpoint that has no hook of its own, with the
    /// request and the replayed response: to log or count replays, or to add a header to
    /// them.
    ///
    /// ```
    /// use actix_web::{HttpRequest, HttpResponse};
    /// use idem_actix::{IdempotencyConfig, MokaStore};
    ///
    /// fn count(_: &HttpRequest, _: &mut HttpResponse) {
    ///     metrics::counter!("api_replays_total").increment(1);
    /// }
    ///
    /// let idem = IdempotencyConfig::new(MokaStore::new()).on_replay(count);
    /// # let _ = idem;
    /// ```
    #[must_use]
    pub fn on_replay(mut self, hook: fn(&HttpRequest, &mut HttpResponse)) -> Self {
        self.settings().on_replay = Some(hook);
        self
    }

    /// The application's replay hook.
    pub(crate) fn replay_hook(&self) -> Option<ReplayFunction> {
        self.0.on_replay
    }

    /// The bound set by [`max_detached`](Self::with_max_detached).
    pub(crate) fn detached_limit(&self) -> usize {
        self.0.max_detached
    }

    /// Uses `clock` for leases and expiry (for tests that move time by hand).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        let settings = self.settings();
        settings.engine = settings.engine.clone().with_clock(clock);
        self
    }

    /// Renders the layer's errors with `renderer`, for endpoints that do not name an
    /// `errors` format themselves. An error it panics on is answered in the default envelope
    /// ([`JsonEnvelope`]) instead, and the panic logged at error level.
    ///
    /// A format named by the [defaults](Self::with_defaults) (`Policy::error_format`) is an
    /// endpoint's format too, and comes before the renderer: an application whose defaults
    /// name one renders none of its errors with `renderer`, and a warning says so when the
    /// two are set, in either order.
    #[must_use]
    pub fn with_error_renderer(mut self, renderer: impl ErrorRenderer) -> Self {
        let settings = self.settings();
        settings.renderer = Arc::new(renderer);
        settings.custom_renderer = true;
        settings.warn_if_renderer_unused();
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// The warnings of its store's failures.
    pub(crate) fn outage(&self) -> &Outage {
        &self.0.outage
    }

    pub(crate) fn renderer(&self) -> &dyn ErrorRenderer {
        &*self.0.renderer
    }

    /// Whether the store lends handlers transactions (see [`transactions`](Self::transactions)).
    pub(crate) fn lends_transactions(&self) -> bool {
        #[cfg(feature = "postgres")]
        {
            self.transactions().is_some()
        }
        #[cfg(not(feature = "postgres"))]
        {
            false
        }
    }

    /// The store that lends handlers their transactions, if it can.
    #[cfg(feature = "postgres")]
    pub(crate) fn transactions(&self) -> Option<&idem_core::store::PostgresStore> {
        self.0.transactions.as_ref()
    }

    /// The settings to change, copied first if a clone shares them (changing one clone's
    /// settings never changes another's).
    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.0)
    }

    /// Whether the app serving `req` registered settings of its own.
    #[cfg(feature = "postgres")]
    pub(crate) fn registered(req: &HttpRequest) -> bool {
        req.app_data::<IdempotencyConfig>().is_some()
            || req.app_data::<web::Data<IdempotencyConfig>>().is_some()
    }

    /// What tells these settings from others registered apart (clones share it).
    pub(crate) fn identity(&self) -> *const () {
        Arc::as_ptr(&self.0).cast()
    }

    /// The settings of the app serving `req`, or the process-wide default.
    pub(crate) fn of(req: &HttpRequest) -> &IdempotencyConfig {
        req.app_data::<IdempotencyConfig>()
            .or_else(|| {
                req.app_data::<web::Data<IdempotencyConfig>>()
                    .map(|data| data.get_ref())
            })
            .unwrap_or_else(|| {
                static DEFAULT: OnceLock<IdempotencyConfig> = OnceLock::new();
                DEFAULT.get_or_init(|| IdempotencyConfig::new(MokaStore::new()))
            })
    }
}

impl std::fmt::Debug for IdempotencyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyConfig").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_clone_changed_leaves_the_original_as_it_was() {
        let base = IdempotencyConfig::new(MokaStore::new());
        let hourly = base
            .clone()
            .with_defaults(
                Policy::DEFAULT
                    .ttl(Duration::from_secs(3600))
                    .header("X-Key"),
            )
            .unwrap();
        assert_eq!(hourly.defaults().ttl, Duration::from_secs(3600));
        assert_eq!(hourly.header(), "x-key");
        assert_eq!(base.defaults().ttl, Policy::DEFAULT.ttl);
        assert_eq!(base.header(), "idempotency-key");
        // The store stays shared: both clones see the same records.
        assert!(Arc::ptr_eq(base.engine().store(), hourly.engine().store()));
    }

    #[test]
    fn defaults_the_store_contradicts_are_refused() {
        let small = IdempotencyConfig::new(MokaStore::builder().max_bytes(64 * 1024).build());
        let err = small.clone().with_defaults(Policy::DEFAULT).unwrap_err();
        assert!(matches!(err, PolicyError::ResponseLargerThanStore { .. }));
        assert!(small
            .with_defaults(Policy::DEFAULT.max_response(32 * 1024))
            .is_ok());
        // A store that cannot keep even a record without its response never records.
        let tiny = IdempotencyConfig::new(MokaStore::builder().max_bytes(500).build());
        let err = tiny
            .with_defaults(Policy::DEFAULT.max_response(0))
            .unwrap_err();
        assert!(matches!(err, PolicyError::StoreTooSmall { .. }), "{err:?}");
        let err = IdempotencyConfig::new(MokaStore::new())
            .with_defaults(Policy::DEFAULT.header("no spaces"))
            .unwrap_err();
        assert_eq!(err, PolicyError::InvalidHeader("no spaces"));
    }
}
