//! Per-application settings: the store, the clock and the error renderer.

use std::sync::{Arc, OnceLock};

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest};
use idem_core::clock::Clock;
use idem_core::{Engine, MokaStore, Policy, Store};

use crate::handler::parse_header;
use crate::metrics::StoreMetrics;
use crate::render::{ErrorRenderer, JsonEnvelope};

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
/// Clones share one set of settings: a clone is a reference count, which every keyed request
/// takes once.
#[derive(Clone)]
pub struct IdempotencyConfig(Arc<Settings>);

#[derive(Clone)]
struct Settings {
    engine: Engine,
    renderer: Arc<dyn ErrorRenderer>,
    defaults: Policy,
    header: HeaderName,
}

impl IdempotencyConfig {
    /// Settings with `store`, the system clock as [`Engine::new`] reads it, and the default
    /// JSON error envelope.
    pub fn new(store: impl Store) -> Self {
        Self::from_shared(Arc::new(store))
    }

    /// Settings with a store shared with other code (for example, to inspect it in tests).
    ///
    /// Every store operation is timed and its errors counted through the `metrics` facade, and
    /// so are the records the store evicts before their time to live.
    pub fn from_shared(store: Arc<dyn Store>) -> Self {
        Self(Arc::new(Settings {
            engine: Engine::from_arc(Arc::clone(&store)).with_observer(StoreMetrics::new(store)),
            renderer: Arc::new(JsonEnvelope::CODE),
            defaults: Policy::DEFAULT,
            header: parse_header(Policy::DEFAULT.header),
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
    /// let idem = IdempotencyConfig::new(MokaStore::new()).defaults(
    ///     Policy::DEFAULT
    ///         .ttl(Duration::from_secs(3600))
    ///         .header("X-Idempotency-Key"),
    /// );
    /// assert_eq!(idem.policy().ttl, Duration::from_secs(3600));
    /// ```
    #[must_use]
    pub fn defaults(mut self, policy: Policy) -> Self {
        let settings = self.settings();
        settings.header = parse_header(policy.header);
        settings.defaults = policy;
        self
    }

    /// The application's defaults.
    pub fn policy(&self) -> &Policy {
        &self.0.defaults
    }

    pub(crate) fn header(&self) -> &HeaderName {
        &self.0.header
    }

    /// Uses `clock` for leases and expiry (for tests that move time by hand).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        let settings = self.settings();
        settings.engine = settings.engine.clone().with_clock(clock);
        self
    }

    /// Renders the layer's errors with `renderer`, for endpoints that do not name an
    /// `errors` format themselves.
    #[must_use]
    pub fn error_renderer(mut self, renderer: impl ErrorRenderer) -> Self {
        self.settings().renderer = Arc::new(renderer);
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub(crate) fn renderer(&self) -> &dyn ErrorRenderer {
        &*self.0.renderer
    }

    /// The settings to change, copied first if a clone shares them (changing one clone's
    /// settings never changes another's).
    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.0)
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
        let hourly = base.clone().defaults(
            Policy::DEFAULT
                .ttl(Duration::from_secs(3600))
                .header("X-Key"),
        );
        assert_eq!(hourly.policy().ttl, Duration::from_secs(3600));
        assert_eq!(hourly.header(), "x-key");
        assert_eq!(base.policy().ttl, Policy::DEFAULT.ttl);
        assert_eq!(base.header(), "idempotency-key");
        // The store stays shared: both clones see the same records.
        assert!(Arc::ptr_eq(base.engine().store(), hourly.engine().store()));
    }
}
