//! What the layer adds to a request on Redis, against one round trip to the same server in
//! the same run: a replay (one round trip: the claim that finds the record) and a new key
//! (two: the claim, then the completion).
//!
//! Every round times, in turn, a batch of each case: one round trip (a plain blocking client
//! reading the replayed record: nothing but the wire, the kernel and Redis), the same read
//! through the `redis` crate's connection, a new key's two writes through the blocking client
//! (the floor of any new key: a claim set if absent, then the record as a plain `SET`, with
//! no fencing script), the store alone (a replay; a claim and completion), the bare handler,
//! and the handler under the layer on Redis (a replay; a new key). The layer's cases are
//! reported as the time they add to the bare handler in the same round, and every case as a
//! multiple of the round trip of its round; the medians over rounds are printed and written
//! to `target/bench/redis.md`. `redis-benchmark -c 1`'s own figure is printed beside them
//! when it is installed.
//!
//! A round trip's time depends on the machine's state more than on anything measured here: on
//! an idle virtual machine each wake-up of a sleeping process costs tens of microseconds,
//! under load a few. Compare ratios from one run, never times from two.
//!
//! Needs a `redis-server` (started here) or `IDEM_TEST_REDIS_URL`:
//! `cargo bench -p idem-examples --bench redis`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceResponse};
use actix_web::rt::SystemRunner;
use actix_web::{test, App};
use idem_actix::clock::{Clock, SystemClock};
use idem_actix::store::{Claim, Token};
use idem_actix::{IdempotencyConfig, MokaStore, RedisStore, Store};
use idem_examples::bench::{
    bare_route, echo_claim, echo_record, echo_request, fresh_key, redis_route,
};
use idem_tests::TestRedis;

const ROUNDS: usize = 15;
const BATCH: usize = 2_000;

/// One connection that sends a command and reads its whole reply, blocking: one round trip
/// per call.
struct RoundTrip {
    stream: TcpStream,
    reply: Vec<u8>,
}

impl RoundTrip {
    fn new(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to Redis");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self {
            stream,
            reply: Vec::new(),
        }
    }

    /// Sends `command` (see [`command`]) and reads its reply: a status, an integer, or a bulk
    /// string.
    fn call(&mut self, command: &[u8]) -> &[u8] {
        self.stream.write_all(command).expect("send");
        self.reply.clear();
        let mut chunk = [0; 4096];
        while !reply_complete(&self.reply) {
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "Redis closed the connection");
            self.reply.extend_from_slice(&chunk[..n]);
        }
        &self.reply
    }
}

/// A command in RESP: an array of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Whether `reply` holds a whole RESP reply: a line, or a bulk string (or nil).
fn reply_complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply[0] != b'$' {
        return true;
    }
    match std::str::from_utf8(&reply[1..end]).map(str::parse::<i64>) {
        Ok(Ok(len)) if len >= 0 => reply.len() >= end + 2 + len as usize + 2,
        _ => true,
    }
}

/// `redis-benchmark -c 1`'s mean latency of a GET, in microseconds, when it is installed.
fn redis_benchmark(host: &str, port: &str) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h", host, "-p", port, "-c", "1", "-n", "20000", "-t", "get", "--csv",
        ])
        .output()
        .ok()?;
    let csv = String::from_utf8(out.stdout).ok()?;
    // "test","rps","avg_latency_ms",...
    let line = csv.lines().find(|l| l.starts_with("\"GET\""))?;
    let field = line.split(',').nth(2)?.trim_matches('"');
    Some(field.parse::<f64>().ok()? * 1000.0)
}

/// The time per request of a batch that started at `start`, in microseconds.
fn per_request(start: Instant) -> f64 {
    start.elapsed().as_nanos() as f64 / BATCH as f64 / 1000.0
}

/// The time per request `app` takes to answer `requests`, each with 201.
fn served<S>(rt: &SystemRunner, app: &S, requests: Vec<actix_http::Request>) -> f64
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    rt.block_on(async {
        let start = Instant::now();
        for req in requests {
            let res = app.call(req).await.expect("an answer");
            assert_eq!(res.status(), 201);
        }
        per_request(start)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some(redis) = TestRedis::start() else {
        println!("redis bench skipped: no redis-server and no IDEM_TEST_REDIS_URL");
        return;
    };
    let rt = actix_web::rt::System::new();
    let prefix = format!("bench-redis:{:x}:", Token::random().as_u128());
    let (bare, app, store) = rt.block_on(async {
        // The store's connection is driven by the runtime it is built in, as in actix's main.
        let store = RedisStore::builder(redis.url())
            .prefix(prefix.clone())
            .build()
            .expect("a Redis URL");
        let config = IdempotencyConfig::new(store.clone());
        let moka = IdempotencyConfig::new(MokaStore::new());
        let bare = test::init_service(App::new().app_data(moka).configure(bare_route)).await;
        let app =
            test::init_service(App::new().configure(move |cfg| redis_route(cfg, config.clone())))
                .await;
        let first = app
            .call(echo_request("/idem-redis/echo", Some("replayed")).to_request())
            .await;
        assert!(first.expect("an answer").status().is_success());
        (bare, app, store)
    });
    // The replayed record's Redis key: the one key under this run's prefix.
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg(format!("{prefix}*")));
    assert_eq!(keys.len(), 1, "one record under {prefix}");
    let addr = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let mut round_trip = RoundTrip::new(addr);
    let get = command(&[b"GET", keys[0].as_bytes()]);
    let mut client = rt.block_on(async {
        let client = redis::Client::open(redis.url()).expect("a Redis URL");
        client.get_connection_manager().await.expect("connect")
    });
    let replay_key = rt.block_on(async {
        let now = SystemClock.now();
        let (key, claim) = (fresh_key(), echo_claim(now));
        assert_eq!(store.claim(&key, claim, now).await.unwrap(), Claim::Claimed);
        assert!(store
            .complete(
                &key,
                claim.token,
                echo_record(&claim, now, Duration::from_secs(600)),
                now
            )
            .await
            .unwrap());
        key
    });

    let names = [
        "one round trip (blocking client)",
        "GET through the redis crate",
        "a new key's two writes, blocking client",
        "store alone: replay",
        "store alone: new key",
        "bare handler",
        "layer on Redis: replay (added to bare)",
        "layer on Redis: new key (added to bare)",
    ];
    let mut per_rt: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut fresh = 0u64;
    // A new key's two writes with nothing around them: a claim's size of value set if absent
    // (`SET NX PX GET`, as the store's claim), then the replayed record's bytes over it (a plain
    // `SET PX`, where the store's completion runs its fencing script).
    let claim_value = {
        let mut value = format!("1:F:{}:{:032x}:", u64::MAX / 2, 1).into_bytes();
        value.extend_from_slice(&[7; 32]);
        value
    };
    let record_value: Vec<u8> = redis.query(redis::cmd("GET").arg(&keys[0]));
    let mut floor_key = 0u64;
    for round in 0..=ROUNDS {
        let mut t = [0f64; 8];
        let start = Instant::now();
        for _ in 0..BATCH {
            let reply = round_trip.call(&get);
            assert!(reply.starts_with(b"$"), "a bulk reply");
        }
        t[0] = per_request(start);
        t[1] = rt.block_on(async {
            let start = Instant::now();
            for _ in 0..BATCH {
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&keys[0])
                    .query_async(&mut client)
                    .await
                    .expect("GET");
            }
            per_request(start)
        });
        let start = Instant::now();
        for _ in 0..BATCH {
            floor_key += 1;
            let key = format!("{prefix}floor:{floor_key}");
            let claimed = round_trip.call(&command(&[
                b"SET",
                key.as_bytes(),
                &claim_value,
                b"NX",
                b"PX",
                b"600000",
                b"GET",
            ]));
            assert!(claimed.starts_with(b"$-1"), "a free key");
            let completed = round_trip.call(&command(&[
                b"SET",
                key.as_bytes(),
                &record_value,
                b"PX",
                b"600000",
            ]));
            assert!(completed.starts_with(b"+OK"));
        }
        t[2] = per_request(start);
        t[3] = rt.block_on(async {
            let start = Instant::now();
            for _ in 0..BATCH {
                let now = SystemClock.now();
                let found = store
                    .claim(&replay_key, echo_claim(now), now)
                    .await
                    .unwrap();
                assert!(matches!(found, Claim::Existing(_)));
            }
            per_request(start)
        });
        t[4] = rt.block_on(async {
            let start = Instant::now();
            for _ in 0..BATCH {
                let (now, key) = (SystemClock.now(), fresh_key());
                let claim = echo_claim(now);
                assert_eq!(store.claim(&key, claim, now).await.unwrap(), Claim::Claimed);
                let record = echo_record(&claim, now, Duration::from_secs(600));
                assert!(store
                    .complete(&key, claim.token, record, now)
                    .await
                    .unwrap());
            }
            per_request(start)
        });
        let requests: Vec<_> = (0..BATCH)
            .map(|_| echo_request("/bare/echo", None).to_request())
            .collect();
        t[5] = served(&rt, &bare, requests);
        let requests: Vec<_> = (0..BATCH)
            .map(|_| echo_request("/idem-redis/echo", Some("replayed")).to_request())
            .collect();
        t[6] = served(&rt, &app, requests) - t[5];
        let requests: Vec<_> = (0..BATCH)
            .map(|_| {
                fresh += 1;
                echo_request("/idem-redis/echo", Some(&format!("new-{fresh}"))).to_request()
            })
            .collect();
        t[7] = served(&rt, &app, requests) - t[5];
        // Round 0 warms every path up and is not counted.
        if round > 0 {
            for (i, time) in t.iter().enumerate() {
                times[i].push(*time);
                per_rt[i].push(time / t[0]);
            }
        }
    }

    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let benchmark = redis_benchmark(host, port);
    let targets = ["", "", "", "", "", "", "<= 1.5", "<= 2.5"];
    let mut table = String::from(
        "| case | median per request | round trips | as redis-benchmark's | target |\n|---|---|---|---|---|\n",
    );
    for (i, name) in names.iter().enumerate() {
        let time = median(times[i].clone());
        let (rts, theirs) = match (i, benchmark) {
            (5, _) => (String::new(), String::new()),
            (_, Some(us)) => (
                format!("{:.2}", median(per_rt[i].clone())),
                format!("{:.2}", time / us),
            ),
            (_, None) => (format!("{:.2}", median(per_rt[i].clone())), String::new()),
        };
        table += &format!(
            "| {name} | {time:.1} us | {rts} | {theirs} | {} |\n",
            targets[i]
        );
    }
    if let Some(us) = benchmark {
        table += &format!(
            "\n`redis-benchmark -c 1 -t get`, after the rounds: {us:.1} us per request; \"as redis-benchmark's\" divides each median by it.\n"
        );
    }
    table += &format!(
        "\nMedians over {ROUNDS} rounds of {BATCH} requests per case; \"round trips\" divides each case's time by the blocking client's round trip in the same round.\n"
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("redis.md"), table);
}
