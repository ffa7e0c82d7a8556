//! The `calls-api` example server.
//!
//! ```text
//! calls-api [--addr 127.0.0.1:8080] [--workers N]
//!           [--redis-url redis://127.0.0.1:6379 | --redis-cluster URL[,URL...]]
//!           [--replay-cache-bytes N] [--cors-origin ORIGIN]...
//!           [--database-url postgres://user@127.0.0.1:5432/calls] [--log LEVEL]
//! ```
//! Each flag can also come from the environment: `IDEM_ADDR`, `IDEM_WORKERS`,
//! `IDEM_REDIS_URL`, `IDEM_REDIS_CLUSTER`, `IDEM_REPLAY_CACHE_BYTES`, `IDEM_CORS_ORIGINS`
//! (comma-separated), `IDEM_DATABASE_URL`, `IDEM_LOG`. Flags win; a store named by a flag
//! replaces any store the environment names.
//!
//! The log (the idempotency layer's warnings and errors among it: a store that fails, a
//! claim lost, records evicted early) goes to standard error, from `warn` up by default.
//!
//! With a database, calls and messages are rows of Postgres, written in the transaction that
//! records their idempotency key, and the idempotency store is Postgres too; the tables are
//! created at start-up.
//!
//! On SIGTERM (or Ctrl-C) it stops accepting, lets calls in progress finish and record their
//! responses (up to 32 s, even those whose clients went away: a call's carrier may take 30 s),
//! cancels those still running and releases their keys (up to 2 s; a client still waiting
//! for one gets 503 `idempotency_shutting_down`, and its retry runs it), then waits for open
//! connections (up to 10 s): it stops within 44 s.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use std::time::Duration;

use actix_web::middleware::Condition;
use actix_web::{guard, web, App, HttpResponse, HttpServer};
use idem_actix::{IdempotencyConfig, MokaStore, PostgresStore, RedisStore};
use idem_core::store::{redacted_url, ReplayCache};
use idem_examples::calls_api::{configure, cors, log_line, CallsState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::filter::LevelFilter;

const USAGE: &str = "usage: calls-api [--addr HOST:PORT] [--workers N]
                 [--redis-url URL | --redis-cluster URL[,URL...]]
                 [--replay-cache-bytes N] [--cors-origin ORIGIN]... [--database-url URL]
                 [--log LEVEL]

  --addr           address to listen on (env IDEM_ADDR; default 127.0.0.1:8080;
                   port 0 picks a free port, printed once listening)
  --workers        actix worker threads, 1 to 512 (env IDEM_WORKERS; default: one per core)
  --redis-url      use the Redis store at this URL, shared by several processes, such
                   as redis://127.0.0.1:6379 (env IDEM_REDIS_URL); without it or
                   --redis-cluster, the embedded store of this process; rediss://
                   for TLS when built with --features redis-tls, trusting the
                   system's root certificates (SSL_CERT_FILE names others)
  --redis-cluster  use the Redis store on the Redis Cluster reached through these
                   nodes, comma-separated; one live node is enough to find the others
                   (env IDEM_REDIS_CLUSTER); rediss:// as for --redis-url
  --replay-cache-bytes
                   with a Redis store, keep up to N bytes of completed records in this
                   process, so that replays need no round trip to Redis; 0 turns it off
                   (env IDEM_REPLAY_CACHE_BYTES; default 16777216, 16 MiB)
  --cors-origin    let browser pages of this origin (scheme://host[:port], or * for
                   any) call the API: send the key headers, read Idempotent-Replayed,
                   Retry-After and X-Request-ID; repeatable (env IDEM_CORS_ORIGINS,
                   comma-separated; default: no CORS)
  --database-url   keep calls and messages in the Postgres at this URL, such as
                   postgres://user:password@127.0.0.1:5432/calls, each written in the
                   transaction that records its idempotency key, and use Postgres as
                   the idempotency store; creates the tables it needs
                   (env IDEM_DATABASE_URL)
  --log            what the log on standard error shows: off, error, warn, info,
                   debug or trace, each with those before it (env IDEM_LOG;
                   default warn: the idempotency layer logs nothing at info)";

struct Options {
    addr: String,
    workers: Option<usize>,
    redis: Option<Redis>,
    replay_cache_bytes: u64,
    cors_origins: Vec<String>,
    database_url: Option<Given>,
    log: LevelFilter,
}

/// Where the Redis store is, and the flag or variable that said so.
enum Redis {
    Server(Given),
    Cluster { urls: Vec<String>, from: String },
}

/// A setting as given: its value, and where it came from (the flag or the variable), which
/// an error about the value names.
struct Given {
    value: String,
    from: String,
}

/// The variable `name`, as a setting: `None` when unset or set to nothing (a compose file
/// passing `${IDEM_WORKERS}` through unset), an error when it is not UTF-8.
fn var(name: &str) -> Result<Option<Given>, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(Some(Given {
            value,
            from: name.to_owned(),
        })),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

fn options() -> Result<Options, String> {
    let mut addr = var("IDEM_ADDR")?;
    let mut workers = var("IDEM_WORKERS")?;
    // The store's settings come from the flags, or, when no flag names a store, from the
    // environment (below).
    let mut redis_url = None;
    let mut redis_cluster = None;
    let mut replay_cache_bytes = var("IDEM_REPLAY_CACHE_BYTES")?;
    let mut cors_origins: Vec<String> = Vec::new();
    let mut database_url = None;
    let mut log = var("IDEM_LOG")?;
    let mut args = std::env::args_os().skip(1).map(|arg| {
        arg.into_string()
            .map_err(|arg| format!("argument {arg:?} is not valid UTF-8"))
    });
    while let Some(arg) = args.next() {
        let arg = arg?;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--cors-origin" => None,
            "--addr" => Some(&mut addr),
            "--workers" => Some(&mut workers),
            "--redis-url" => Some(&mut redis_url),
            "--redis-cluster" => Some(&mut redis_cluster),
            "--replay-cache-bytes" => Some(&mut replay_cache_bytes),
            "--database-url" => Some(&mut database_url),
            "--log" => Some(&mut log),
            "-h" | "--help" => {
                // Into a pipe its reader closed (`| head`), the usage is simply not read.
                let _ = writeln!(std::io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        };
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .transpose()?
                .ok_or_else(|| format!("`{flag}` needs a value"))?,
        };
        match slot {
            Some(slot) => *slot = Some(Given { value, from: flag }),
            None => {
                cors_origins.push(cors::origin(&value).map_err(|e| format!("--cors-origin: {e}"))?)
            }
        }
    }
    // A store named by a flag replaces whatever store the environment names, under
    // whichever variable: the flag wins, and the environment is not "both".
    if redis_url.is_none() && redis_cluster.is_none() && database_url.is_none() {
        redis_url = var("IDEM_REDIS_URL")?;
        redis_cluster = var("IDEM_REDIS_CLUSTER")?;
        database_url = var("IDEM_DATABASE_URL")?;
    }
    let addr = match addr {
        None => "127.0.0.1:8080".to_owned(),
        Some(Given { value, from }) => {
            // HOST:PORT, checked here so that a mistake is a usage error; whether the host
            // resolves and the port is free, binding says.
            let port = value.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(format!(
                    "{from} takes HOST:PORT (a port from 0 to 65535), not `{value}`"
                ));
            }
            value
        }
    };
    let log = match log {
        None => LevelFilter::WARN,
        Some(Given { value, from }) => match value.to_ascii_lowercase().as_str() {
            "off" => LevelFilter::OFF,
            "error" => LevelFilter::ERROR,
            "warn" => LevelFilter::WARN,
            "info" => LevelFilter::INFO,
            "debug" => LevelFilter::DEBUG,
            "trace" => LevelFilter::TRACE,
            _ => {
                return Err(format!(
                    "{from} takes off, error, warn, info, debug or trace, not `{value}`"
                ))
            }
        },
    };
    let workers = match workers {
        None => None,
        Some(Given { value, from }) => match value.parse::<usize>() {
            // actix-web panics on more than 512.
            Ok(n @ 1..=512) => Some(n),
            _ => {
                return Err(format!(
                    "{from} takes a whole number from 1 to 512, not `{value}`"
                ))
            }
        },
    };
    let redis = match (redis_url, redis_cluster) {
        (Some(_), Some(_)) => {
            return Err("give --redis-url or --redis-cluster, not both".to_owned())
        }
        (Some(url), None) => Some(Redis::Server(url)),
        (None, Some(Given { value, from })) => {
            let urls: Vec<String> = value.split(',').map(|u| u.trim().to_owned()).collect();
            if urls.iter().any(String::is_empty) {
                return Err(format!(
                    "{from} takes node URLs separated by commas, none empty"
                ));
            }
            Some(Redis::Cluster { urls, from })
        }
        (None, None) => None,
    };
    if redis.is_some() && database_url.is_some() {
        return Err("give one store: a Redis or a database, not both".to_owned());
    }
    let replay_cache_bytes = match replay_cache_bytes {
        None => ReplayCache::<RedisStore>::DEFAULT_MAX_BYTES,
        Some(Given { value, from }) => value.parse::<u64>().map_err(|_| {
            format!("{from} takes a whole number of bytes (0 turns it off), not `{value}`")
        })?,
    };
    if cors_origins.is_empty() {
        if let Some(list) = var("IDEM_CORS_ORIGINS")? {
            for value in list.value.split(',').filter(|v| !v.trim().is_empty()) {
                cors_origins
                    .push(cors::origin(value).map_err(|e| format!("IDEM_CORS_ORIGINS: {e}"))?);
            }
        }
    }
    Ok(Options {
        addr,
        workers,
        redis,
        replay_cache_bytes,
        cors_origins,
        database_url,
        log,
    })
}

/// The idempotency settings and the store's name for the log: the Redis store (behind the
/// replay cache unless it is off), or the embedded one.
fn idempotency(options: &Options) -> Result<(IdempotencyConfig, String), String> {
    let (store, name) = match &options.redis {
        None => {
            let config = IdempotencyConfig::new(MokaStore::new());
            return Ok((config, "embedded moka".to_owned()));
        }
        Some(Redis::Server(Given { value, from })) => (
            RedisStore::new(value.as_str()).map_err(|e| format!("{from}: {e}"))?,
            format!("redis at {}", redacted_url(value)),
        ),
        Some(Redis::Cluster { urls, from }) => (
            RedisStore::cluster(urls)
                .build()
                .map_err(|e| format!("{from}: {e}"))?,
            format!(
                "redis cluster at {}",
                urls.iter()
                    .map(|url| redacted_url(url))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    };
    Ok(match options.replay_cache_bytes {
        0 => (IdempotencyConfig::new(store), name),
        bytes => (
            IdempotencyConfig::new(ReplayCache::new(store, bytes)),
            format!("{name}, replays cached in up to {bytes} bytes"),
        ),
    })
}

/// The idempotency settings, the API's data and the store's name for the log, on the
/// Postgres at `url`: its record table and the API's tables are created if missing.
async fn on_database(url: &Given) -> Result<(IdempotencyConfig, CallsState, String), Failure> {
    let Given { value: url, from } = url;
    // Building the store only reads its URL (it connects when first used).
    let store =
        PostgresStore::new(url.as_str()).map_err(|e| Failure::Usage(format!("{from}: {e}")))?;
    let failed = |e: String| Failure::Run(std::io::Error::other(format!("{from}: {e}")));
    store
        .migrate()
        .await
        .map_err(|e| failed(format!("cannot create the idempotency table: {e}")))?;
    let state = CallsState::on_database(store.pool().clone());
    state
        .create_tables()
        .await
        .map_err(|e| failed(format!("cannot create the tables: {e}")))?;
    // The create handlers write in their key's transaction: a store that cannot lend one
    // stops the start-up here rather than failing their requests.
    let idem = IdempotencyConfig::new(store)
        .require_transactions()
        .map_err(|e| failed(e.to_string()))?;
    Ok((idem, state, format!("postgres at {}", redacted_url(url))))
}

/// Says why a setting is refused, with the usage: exit 2.
fn usage_error(why: &str) -> ExitCode {
    log_line(format_args!("calls-api: {why}\n\n{USAGE}"));
    ExitCode::from(2)
}

/// Why calls-api does not serve: a setting it refuses (exit 2, with the usage), or a failure
/// to start or to go on serving (exit 1).
enum Failure {
    Usage(String),
    Run(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Run(e)
    }
}

/// How long a graceful stop waits for calls in progress, before it cancels them (a client
/// still waiting gets 503): the longest a call's carrier may take (`X-Simulate-Delay-Ms`, 30 s),
/// and then some, so that every call that dialled is recorded. With the drain's wait for the
/// keys it releases (up to 2 s) and the connections' grace, a stop takes at most 44 s: give a
/// container at least 45 s between SIGTERM and SIGKILL (Kubernetes'
/// `terminationGracePeriodSeconds` is 30 unless set).
const DRAIN: Duration = Duration::from_secs(32);

/// How long it then waits for open connections.
const CONNECTIONS_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is made: made before
/// calls-api says it listens, so that a stop sent as soon as it does is not the default
/// action, which ends the process with no drain.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The first of them to come, named.
    async fn first(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// `GET`, or `HEAD`, which actix answers as `GET` without the body.
fn get_or_head() -> impl guard::Guard {
    guard::Any(guard::Get()).or(guard::Head())
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => return usage_error(&e),
    };
    // Without a subscriber, every event of the library (a store that fails, a claim lost)
    // would be dropped unseen. A log nobody reads any more (standard error closed) is not
    // reported on standard error, which would panic.
    tracing_subscriber::fmt()
        .with_max_level(options.log)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    // The store's timings as a histogram, which Prometheus can sum over instances (the
    // exporter's default is a summary per process): from 50 us (the embedded store) to 1 s.
    let store_timings = Matcher::Full("idem_store_duration_seconds".into());
    let buckets = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0,
    ];
    let metrics = PrometheusBuilder::new().set_buckets_for_metric(store_timings, &buckets);
    let metrics = match metrics.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(e) => {
            log_line(format_args!("calls-api: metrics: {e}"));
            return ExitCode::FAILURE;
        }
    };
    idem_actix::describe_metrics();
    let result = actix_web::rt::System::new().block_on(async move {
        // Histograms are kept in windows that need trimming now and then.
        let upkeep = metrics.clone();
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        // The Redis connection and the Postgres pool are driven by this (the main) runtime,
        // shared by all workers.
        let (idem, state, store) = match &options.database_url {
            Some(url) => on_database(url).await?,
            None => {
                // Building a store only reads its settings (it connects when first used).
                let (idem, store) = idempotency(&options).map_err(Failure::Usage)?;
                (idem, CallsState::default(), store)
            }
        };
        let routes = configure(web::Data::new(state));
        let app_idem = idem.clone();
        let cors_origins = options.cors_origins.clone();
        let mut server = HttpServer::new(move || {
            let metrics = metrics.clone();
            App::new()
                .app_data(app_idem.clone())
                // Before the API's routes, which need a bearer token: scrapers send none.
                .route(
                    "/metrics",
                    web::route().guard(get_or_head()).to(move || {
                        let text = metrics.render();
                        async move {
                            HttpResponse::Ok()
                                .content_type("text/plain; version=0.0.4")
                                .body(text)
                        }
                    }),
                )
                .configure(routes.clone())
                // The last `wrap`, so the outermost: it answers preflights, which carry no
                // token, before anything asks for one.
                .wrap(Condition::new(
                    !cors_origins.is_empty(),
                    cors::cors(&cors_origins),
                ))
        });
        if let Some(workers) = options.workers {
            server = server.workers(workers);
        }
        let stop = StopSignals::listen()?;
        let server = server.bind(&options.addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", options.addr))
        })?;
        // The addresses bound, not the one asked for: with port 0 the system picks the port.
        let listening = server
            .addrs()
            .iter()
            .map(|addr| format!("http://{addr}"))
            .collect::<Vec<_>>()
            .join(", ");
        log_line(format_args!(
            "calls-api listening on {listening} (store: {store})"
        ));
        // actix's own signal handling would stop each worker's runtime as soon as its
        // connections are done, dropping calls whose clients went away: stop by hand.
        let server = server
            .disable_signals()
            .shutdown_timeout(CONNECTIONS_GRACE.as_secs())
            .run();
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            let signal = stop.first().await;
            log_line(format_args!(
                "calls-api: {signal}; finishing calls in progress"
            ));
            handle.pause().await;
            let cancelled = idem.drain(DRAIN).await;
            if cancelled > 0 {
                log_line(format_args!(
                    "calls-api: {cancelled} calls did not finish in time: cancelled and their keys released, or, those whose carrier had answered, recorded in the background"
                ));
            }
            handle.stop(true).await;
        });
        Ok(server.await?)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => usage_error(&e),
        Err(Failure::Run(e)) => {
            log_line(format_args!("calls-api: {e}"));
            ExitCode::FAILURE
        }
    }
}
