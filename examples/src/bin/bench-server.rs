//! The benchmark server: a trivial JSON handler, bare and idempotent, over loopback.
//!
//! ```text
//! bench-server [--addr 127.0.0.1:8090] [--workers 1] [--redis-url redis://127.0.0.1:6379]
//!              [--routes bare,idem,idem-redis,store-alone,floor]
//!              [--store-bytes BYTES] [--prefill RECORDS]
//! ```
//! `POST /bare/echo` and `POST /idem/echo` (`#[idempotent(scope = "global")]`, embedded
//! store); `POST /idem-redis/echo` with `--redis-url`; `POST /store-alone/echo` (the bare
//! handler plus the embedded store's own work for a new key) and `POST /floor/echo` (that,
//! and the least a layer adds to it) when listed. `--routes` serves
//! only the routes listed, in that order (actix tries routes in order, so a route listed
//! later pays a failed match per route before it). `--store-bytes` sizes the embedded store,
//! the layer's and the store-alone reference's (which the floor shares) alike (default 256 MiB); `--prefill` writes
//! that many records of the echo's size into each before serving, so that a store given more
//! than it holds starts full and every new key evicts one. `scripts/bench-http` drives it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use actix_web::{App, HttpServer};
use idem_actix::{IdempotencyConfig, MokaStore, RedisStore};
use idem_examples::bench::Route;

const USAGE: &str = "usage: bench-server [--addr HOST:PORT] [--workers N] [--redis-url URL] [--routes bare,idem,idem-redis,store-alone,floor] [--store-bytes BYTES] [--prefill RECORDS]";

fn main() -> ExitCode {
    let mut addr = "127.0.0.1:8090".to_owned();
    let mut workers = 1;
    let mut redis_url = None;
    let mut routes = vec![Route::Bare, Route::Idem, Route::IdemRedis];
    let mut store_bytes = None;
    let mut prefill = 0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--addr", Some(v)) => addr = v,
            // actix-web panics on more than 512.
            ("--workers", Some(v)) if v.parse::<usize>().is_ok_and(|n| (1..=512).contains(&n)) => {
                workers = v.parse().unwrap_or(1)
            }
            ("--redis-url", Some(v)) => redis_url = Some(v),
            ("--store-bytes", Some(v)) if v.parse::<u64>().is_ok_and(|n| n > 0) => {
                store_bytes = v.parse().ok()
            }
            ("--prefill", Some(v)) if v.parse::<usize>().is_ok() => {
                prefill = v.parse().unwrap_or(0)
            }
            ("--routes", Some(v)) => match v.split(',').map(str::parse).collect() {
                Ok(list) => routes = list,
                Err(e) => {
                    eprintln!("bench-server: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let result = actix_web::rt::System::new().block_on(async move {
        let redis = match redis_url.as_deref().map(RedisStore::new) {
            Some(Ok(store)) => Some(IdempotencyConfig::new(store)),
            Some(Err(e)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    e.to_string(),
                ))
            }
            None => None,
        };
        let embedded = || match store_bytes {
            Some(bytes) => MokaStore::builder().max_bytes(bytes).build(),
            None => MokaStore::new(),
        };
        let (layer_store, alone_store) = (embedded(), embedded());
        idem_examples::bench::prefill(&layer_store, prefill).await;
        idem_examples::bench::prefill(&alone_store, prefill).await;
        idem_examples::bench::set_store_alone(alone_store);
        let moka = IdempotencyConfig::new(layer_store);
        let routes = idem_examples::bench::configure(routes, redis);
        let server =
            HttpServer::new(move || App::new().app_data(moka.clone()).configure(routes.clone()))
                .workers(workers)
                .bind(&addr)?;
        eprintln!("bench-server listening on http://{addr} ({workers} worker(s))");
        server.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-server: {e}");
            ExitCode::FAILURE
        }
    }
}
