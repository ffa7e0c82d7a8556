//! What a new key costs the embedded store, and how much of that is moka's own: a claim and a
//! completion through [`MokaStore`], against one insert into a bare moka cache built the same
//! way (LRU, weighed, per-entry expiry), into the plainest moka cache (no bound, no expiry: what
//! no configuration of moka can go below), and into a `HashMap` for scale. Then the same into
//! structures already full, where every record written evicts another: a claim and a
//! completion through [`MokaStore`], and an insert into the bare moka cache without and with an
//! eviction listener (which counts evictions exactly, but makes moka lock each key it writes:
//! the store counts them otherwise). Each round fills fresh structures with the same 100,000
//! prepared records, the seven in turn; the median of the rounds is printed.
//!
//! Then, when a `redis-server` can be started (or `IDEM_TEST_REDIS_URL` names one), a
//! criterion group: the replay of a completed record by [`RedisStore`] alone (one round
//! trip), and through a [`ReplayCache`] in front of it (none).
//!
//! Then, with criterion, a new key (claim and completion) and a replay (a claim that finds
//! the completed record) through each store: the embedded one, Redis (a `redis-server` the
//! bench starts, or `IDEM_TEST_REDIS_URL`), and Postgres at `IDEM_TEST_DATABASE_URL` (skipped
//! with a message without it: a server started here would run without `fsync`, which is not
//! what a durable store costs). A new key is two round trips to Redis or Postgres, a replay
//! one, as the workspace's `round_trips` tests count them on the wire; with Postgres, sqlx
//! also tests each connection as it comes back to the pool (one more round trip per
//! operation, after it answered). The Postgres rows live a minute, in the table `idem_bench`, and the store purges them
//! later by itself.
//!
//! `cargo bench -p idem-examples --bench store`
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::Criterion;
use idem_core::clock::{Clock, SystemClock, Timestamp};
use idem_core::store::{Claim, PostgresStore, RedisStore, ReplayCache, RECORD_OVERHEAD};
use idem_core::{
    Completed, Fingerprint, InFlight, MokaStore, Record, Response, Store, StoreKey, Token,
};
use idem_examples::bench::{echo_claim, echo_record, fresh_key};
use idem_tests::TestRedis;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);
const DAY: Duration = Duration::from_secs(86_400);
const RECORDS: usize = 100_000;
const ROUNDS: usize = 7;
/// The records the full store has room for: a tenth of those written into it.
const FULL_ROOM: usize = RECORDS / 10;

/// Awaits a store future that is ready at once, as the embedded store's are.
fn now<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the embedded store answers at once"),
    }
}

struct DayExpiry;

impl moka::Expiry<u128, Completed> for DayExpiry {
    fn expire_after_create(&self, _: &u128, _: &Completed, _: Instant) -> Option<Duration> {
        Some(DAY)
    }
}

/// A bare moka cache built as the store's is, holding `max_bytes`, counting its evictions
/// through a listener when given a counter.
fn bare(max_bytes: u64, evictions: Option<Arc<AtomicU64>>) -> Cache<u128, Completed> {
    let builder = Cache::builder()
        .eviction_policy(EvictionPolicy::lru())
        .max_capacity(max_bytes)
        .weigher(|_, r: &Completed| (RECORD_OVERHEAD + r.response.held_bytes()) as u32)
        .expire_after(DayExpiry);
    match evictions {
        Some(count) => builder
            .eviction_listener(move |_, _, _| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .build(),
        None => builder.build(),
    }
}

/// Inserts each of `records` into `cache`.
fn insert(cache: &Cache<u128, Completed>, records: &[(StoreKey, InFlight, Completed)]) {
    for (key, _, record) in records {
        cache.insert(key.first_128(), record.clone());
    }
}

/// Nanoseconds per record of `fill` over `records`.
fn per_record(
    records: &[(StoreKey, InFlight, Completed)],
    fill: impl FnOnce(&[(StoreKey, InFlight, Completed)]),
) -> f64 {
    let start = Instant::now();
    fill(records);
    start.elapsed().as_nanos() as f64 / records.len() as f64
}

/// Claims and completes each of `records` in `store`.
fn write(store: &MokaStore, records: &[(StoreKey, InFlight, Completed)]) {
    for (key, claim, record) in records {
        let claimed = now(store.claim(key, *claim, NOW)).unwrap();
        assert_eq!(claimed, Claim::Claimed);
        assert!(now(store.complete(key, claim.token, record.clone(), NOW)).unwrap());
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let body = br#"{"id":"call_1","agent_id":"agent_1","phone_number":"+15555550123"}"#;
    let response = Response::new(201, [("content-type", &b"application/json"[..])], body);
    let fingerprint = Fingerprint::new("POST", "/idem/echo", "", b"{}");
    let mut samples: [Vec<f64>; 7] = Default::default();
    for round in 0..ROUNDS {
        let prepare = |i: usize, filler: bool| {
            let mut key = [0; 32];
            let n = (round * RECORDS + i) as u64;
            key[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            key[8] = u8::from(filler);
            let claim = InFlight {
                fingerprint,
                lease_until: NOW.saturating_add(Duration::from_secs(30)),
                token: Token::random(),
            };
            let record = Completed {
                fingerprint,
                response: response.clone(),
                completed_at: NOW,
                expires_at: NOW.saturating_add(DAY),
            };
            (StoreKey::from_bytes(key), claim, record)
        };
        let records: Vec<_> = (0..RECORDS).map(|i| prepare(i, false)).collect();
        let fillers: Vec<_> = (0..FULL_ROOM).map(|i| prepare(i, true)).collect();
        let store = MokaStore::new();
        samples[0].push(per_record(&records, |records| write(&store, records)));
        let cache = bare(256 << 20, None);
        samples[1].push(per_record(&records, |records| insert(&cache, records)));
        let plain: Cache<u128, Completed> = Cache::builder().build();
        samples[2].push(per_record(&records, |records| {
            for (key, _, record) in records {
                plain.insert(key.first_128(), record.clone());
            }
        }));
        let mut map = HashMap::new();
        samples[3].push(per_record(&records, |records| {
            for (key, _, record) in records {
                map.insert(key.first_128(), record.clone());
            }
        }));
        let weight = RECORD_OVERHEAD + response.held_bytes();
        let room = (FULL_ROOM * weight) as u64;
        let full = MokaStore::builder().max_bytes(room).build();
        write(&full, &fillers);
        assert!(now(full.weighted_size()) >= room - weight as u64);
        samples[4].push(per_record(&records, |records| write(&full, records)));
        let full = bare(room, None);
        insert(&full, &fillers);
        samples[5].push(per_record(&records, |records| insert(&full, records)));
        let evictions = Arc::new(AtomicU64::new(0));
        let full = bare(room, Some(Arc::clone(&evictions)));
        insert(&full, &fillers);
        samples[6].push(per_record(&records, |records| insert(&full, records)));
        assert!(evictions.load(Ordering::Relaxed) > 0, "the listener counts");
    }
    println!("| {RECORDS} new keys into an empty structure, unless said | per record (median of {ROUNDS} rounds) |\n|---|---|");
    for (name, mut times) in [
        "MokaStore claim + complete",
        "moka insert alone",
        "moka insert, no bound and no expiry",
        "HashMap insert",
        "MokaStore claim + complete, into a full store",
        "moka insert alone, into a full cache",
        "moka insert into a full cache, with an eviction listener",
    ]
    .into_iter()
    .zip(samples)
    {
        times.sort_by(f64::total_cmp);
        println!("| {name} | {:.0} ns |", times[times.len() / 2]);
    }
    redis_replays(&response, fingerprint);
    let mut criterion = Criterion::default().configure_from_args();
    through_each_store(&mut criterion);
    criterion.final_summary();
}

/// A new key: a claim and a completion of a fresh key, at the engine's clock. Returns the key.
async fn new_key(store: &dyn Store, ttl: Duration) -> StoreKey {
    let now = SystemClock.now();
    let claim = echo_claim(now);
    let key = fresh_key();
    assert_eq!(store.claim(&key, claim, now).await.unwrap(), Claim::Claimed);
    let record = echo_record(&claim, now, ttl);
    assert!(store
        .complete(&key, claim.token, record, now)
        .await
        .unwrap());
    key
}

/// New keys and replays through the embedded store, Redis and Postgres, where they can be had.
fn through_each_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _entered = rt.enter();
    let redis = TestRedis::start();
    let mut stores: Vec<(&str, Box<dyn Store>, Duration)> =
        vec![("moka", Box::new(MokaStore::new()), DAY)];
    if let Some(redis) = &redis {
        let store = RedisStore::builder(redis.url())
            .prefix("idem-bench:")
            .build()
            .expect("Redis URL");
        stores.push(("redis", Box::new(store), Duration::from_secs(60)));
    }
    match std::env::var("IDEM_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let store = PostgresStore::builder(url)
                .table("idem_bench")
                .build()
                .expect("a Postgres URL");
            rt.block_on(store.migrate()).expect("create the bench table");
            stores.push(("postgres", Box::new(store), Duration::from_secs(60)));
        }
        _ => eprintln!(
            "postgres skipped: set IDEM_TEST_DATABASE_URL=postgres://user@127.0.0.1:5432/db to bench the Postgres store"
        ),
    }
    let mut group = c.benchmark_group("store");
    for (name, store, ttl) in &stores {
        let store = &**store;
        group.bench_function(format!("{name}/new key"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        new_key(store, *ttl).await;
                    }
                    start.elapsed()
                })
            })
        });
        let key = rt.block_on(new_key(store, *ttl));
        group.bench_function(format!("{name}/replay"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let now = SystemClock.now();
                        let found = store.claim(&key, echo_claim(now), now).await.unwrap();
                        assert!(matches!(found, Claim::Existing(Record::Completed(_))));
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// Replays of one completed record on Redis, with and without the replay cache.
fn redis_replays(response: &Response, fingerprint: Fingerprint) {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The store's connection is driven by the runtime it is built in.
    let _entered = runtime.enter();
    let redis_store = RedisStore::builder(redis.url())
        .prefix("bench-replay:")
        .build()
        .expect("a Redis URL");
    let cached = ReplayCache::new(
        redis_store.clone(),
        ReplayCache::<RedisStore>::DEFAULT_MAX_BYTES,
    );
    let now = Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64,
    );
    let key = StoreKey::from_bytes([7; 32]);
    let claim = InFlight {
        fingerprint,
        lease_until: now.saturating_add(Duration::from_secs(30)),
        token: Token::random(),
    };
    let record = Completed {
        fingerprint,
        response: response.clone(),
        completed_at: now,
        expires_at: now.saturating_add(DAY),
    };
    runtime.block_on(async {
        // Through the cache, so that both Redis and the cache hold the record.
        let claimed = cached.claim(&key, claim, now).await.expect("Redis answers");
        assert_eq!(claimed, Claim::Claimed, "a fresh Redis");
        assert!(cached
            .complete(&key, claim.token, record.clone(), now)
            .await
            .unwrap());
    });
    // Both answer the replay.
    let replayed = Claim::Existing(Record::Completed(record));
    for store in [&redis_store as &dyn Store, &cached] {
        let answer = runtime.block_on(store.claim(&key, claim, now));
        assert_eq!(answer.unwrap(), replayed);
    }
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("replay of a completed record");
    group.bench_function("RedisStore claim", |b| {
        b.iter(|| std::hint::black_box(runtime.block_on(redis_store.claim(&key, claim, now))));
    });
    group.bench_function("ReplayCache over RedisStore claim", |b| {
        b.iter(|| std::hint::black_box(runtime.block_on(cached.claim(&key, claim, now))));
    });
    group.finish();
    criterion.final_summary();
}
