//! In-process cost of the idempotency layer, against the bare handler in the same run:
//! no key, a new key every request, and a replay, on the embedded store and on Redis (when a
//! `redis-server` can be started); and, for reference, the embedded store's own work for a
//! new key with nothing of the layer's (`idem_examples::bench::store_alone`), and the least a
//! layer adds to it (`idem_examples::bench::floor`). Requests are
//! built before timing. Each route is served by an app of its own, so that every case's route
//! is matched first, as the bare handler's is.
//!
//! `cargo bench -p idem-examples --bench overhead`; the added time per request is printed and
//! written to `target/bench/inprocess.md`. The added time of the embedded-store cases comes
//! from interleaved rounds (see [`paired`]), since this kind of machine drifts over a run.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceResponse};
use actix_web::rt::SystemRunner;
use actix_web::web::ServiceConfig;
use actix_web::{test, App};
use criterion::{criterion_group, Criterion};
use idem_actix::{IdempotencyConfig, MokaStore, RedisStore};
use idem_examples::bench::{
    bare_route, echo_request, floor_route, idem_route, redis_route, store_alone_route,
};
use idem_tests::TestRedis;

fn request(path: &str, key: Option<&str>) -> actix_http::Request {
    echo_request(path, key).to_request()
}

thread_local! {
    static NEXT_KEY: Cell<u64> = const { Cell::new(0) };
}

fn fresh_key() -> String {
    NEXT_KEY.with(|n| {
        n.set(n.get() + 1);
        format!("bench-{}", n.get())
    })
}

/// A benchmark: its name, its app (an index into the apps), its path, and the key of each
/// request.
type Case = (&'static str, usize, &'static str, fn() -> Option<String>);

/// The apps' indices: the bare handler, the embedded store, the store-alone reference, the
/// least a layer adds to it, Redis.
const BARE: usize = 0;
const MOKA: usize = 1;
const ALONE: usize = 2;
const FLOOR: usize = 3;
const REDIS: usize = 4;

/// An app serving only the routes `routes` registers, on the embedded store by default.
async fn app(
    moka: IdempotencyConfig,
    routes: &dyn Fn(&mut ServiceConfig),
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    test::init_service(App::new().app_data(moka).configure(|cfg| routes(cfg))).await
}

fn overhead(c: &mut Criterion) {
    let rt = actix_web::rt::System::new();
    let redis = TestRedis::start();
    let apps = rt.block_on(async {
        // With IDEM_BENCH_FULL=1 the embedded store (the layer's, and the store-alone
        // reference's alike) is small and filled before the run, so every new key evicts.
        let store = match std::env::var_os("IDEM_BENCH_FULL") {
            Some(_) => {
                let full = || MokaStore::builder().max_bytes(16 << 20).build();
                let (layer, alone) = (full(), full());
                idem_examples::bench::prefill(&layer, 60_000).await;
                idem_examples::bench::prefill(&alone, 60_000).await;
                idem_examples::bench::set_store_alone(alone);
                layer
            }
            None => MokaStore::new(),
        };
        let moka = IdempotencyConfig::new(store);
        let mut apps = vec![
            app(moka.clone(), &bare_route).await,
            app(moka.clone(), &idem_route).await,
            app(moka.clone(), &store_alone_route).await,
            app(moka.clone(), &floor_route).await,
        ];
        if let Some(redis) = &redis {
            let config = IdempotencyConfig::new(RedisStore::new(redis.url()).expect("Redis URL"));
            apps.push(app(moka, &move |cfg| redis_route(cfg, config.clone())).await);
        }
        apps
    });
    // Replays need a completed key.
    for (app, path) in [(MOKA, "/idem/echo"), (REDIS, "/idem-redis/echo")] {
        if let Some(app) = apps.get(app) {
            rt.block_on(app.call(request(path, Some("replayed")))).ok();
        }
    }

    let mut cases: Vec<Case> = vec![
        ("bare", BARE, "/bare/echo", || None),
        ("moka/no key", MOKA, "/idem/echo", || None),
        ("moka/new key", MOKA, "/idem/echo", || Some(fresh_key())),
        ("moka/replay", MOKA, "/idem/echo", || {
            Some("replayed".into())
        }),
        (
            "moka store alone/new key",
            ALONE,
            "/store-alone/echo",
            || Some(fresh_key()),
        ),
        ("moka floor/new key", FLOOR, "/floor/echo", || {
            Some(fresh_key())
        }),
    ];
    if redis.is_some() {
        cases.push(("redis/new key", REDIS, "/idem-redis/echo", || {
            Some(fresh_key())
        }));
        cases.push(("redis/replay", REDIS, "/idem-redis/echo", || {
            Some("replayed".into())
        }));
    }
    // Untimed warm-up of every path, so that the first case measured (bare) is not the one
    // paying for cold caches and a growing allocator.
    rt.block_on(async {
        for _ in 0..20_000 {
            for &(_, app, path, key) in &cases {
                apps[app].call(request(path, key().as_deref())).await.ok();
            }
        }
    });
    // Added time, from interleaved rounds of the embedded-store cases (Redis's round trips
    // dwarf any drift).
    let added = paired(&rt, &apps, &cases[..6]);
    let mut group = c.benchmark_group("request");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for case in &cases {
        group.bench_function(case.0, |b| b.iter_custom(|n| timed(&rt, &apps, case, n)));
    }
    group.finish();
    summary(&added);
}

/// The time `n` requests of `case` take, built before timing.
fn timed<S>(rt: &SystemRunner, apps: &[S], &(name, app, path, key): &Case, n: u64) -> Duration
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let app = &apps[app];
    let requests: Vec<_> = (0..n).map(|_| request(path, key().as_deref())).collect();
    rt.block_on(async {
        let start = Instant::now();
        for req in requests {
            let res = app.call(req).await.expect("answer");
            assert!(res.status().is_success(), "{name}: {}", res.status());
        }
        start.elapsed()
    })
}

/// Rounds of [`paired`], and requests per case in each round.
const ROUNDS: usize = 40;
const BATCH: usize = 2_000;

/// The added time per request of each case, in nanoseconds (first quartile, median, third
/// quartile): every round times one batch of each case in turn, and a case's added time is
/// taken, over rounds, from its time minus the bare handler's in the same round. This
/// machine's speed drifts over a run by more than the differences measured; cases timed one
/// after another would compare different speeds.
fn paired<S>(rt: &SystemRunner, apps: &[S], cases: &[Case]) -> Vec<(&'static str, [f64; 3])>
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut samples = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for _ in 0..ROUNDS {
        let times: Vec<f64> = cases
            .iter()
            .map(|case| timed(rt, apps, case, BATCH as u64).as_nanos() as f64 / BATCH as f64)
            .collect();
        for (i, t) in times.iter().enumerate() {
            samples[i].push(t - times[0]);
        }
    }
    cases
        .iter()
        .zip(samples)
        .skip(1)
        .map(|(&(name, ..), mut diffs)| {
            diffs.sort_by(f64::total_cmp);
            let at = |q: usize| diffs[(diffs.len() - 1) * q / 4];
            (name, [at(1), at(2), at(3)])
        })
        .collect()
}

/// The table of this run: criterion's estimates, and the `added` times of [`paired`].
fn summary(added: &[(&'static str, [f64; 3])]) {
    let dir = idem_examples::bench::criterion_dir();
    let estimate = |name: &str| -> Option<f64> {
        let path = dir
            .join("request")
            .join(name.replace('/', "_"))
            .join("new/estimates.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    let Some(bare) = estimate("bare") else { return };
    let mut table =
        String::from("| case | median per request | added vs bare | target |\n|---|---|---|---|\n");
    table += &format!("| bare handler | {:.2} us | | |\n", bare / 1000.0);
    for (name, target) in [
        ("moka/no key", "<= 0.1 us"),
        ("moka/replay", "<= 1 us"),
        ("moka/new key", "<= 1.5 us"),
        ("moka store alone/new key", ""),
        ("moka floor/new key", ""),
        ("redis/replay", ""),
        ("redis/new key", ""),
    ] {
        if let Some(t) = estimate(name) {
            // Paired rounds where there are some; otherwise criterion's medians.
            let plus = match added.iter().find(|(case, _)| *case == name) {
                Some((_, [q1, median, q3])) => format!(
                    "{:+.2} us ({:+.2} to {:+.2})",
                    median / 1000.0,
                    q1 / 1000.0,
                    q3 / 1000.0
                ),
                None => format!("{:+.2} us", (t - bare) / 1000.0),
            };
            table += &format!("| {name} | {:.2} us | {plus} | {target} |\n", t / 1000.0);
        }
    }
    table += &format!(
        "\nAdded time of the moka cases: median (and quartiles) over {ROUNDS} rounds of {BATCH} requests per case, each round timing every case in turn, of the case's time minus the bare handler's in the same round. Other columns: criterion's medians, cases timed one after another.\n"
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("inprocess.md"), table);
}

criterion_group!(benches, overhead);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
