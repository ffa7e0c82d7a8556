//! The Redis store: one key per record, shared by every server process that points at it,
//! on one Redis server or on a Redis Cluster.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, RedisFuture, ServerErrorKind, Value};

use super::codec::{self, token_hex};
use super::{redacted_url, Claim, Store, StoreError, StoreFuture, LAPSED_CLAIM_GRACE};
use crate::clock::Timestamp;
use crate::digest::StoreKey;
use crate::record::{Completed, InFlight, Record, Response, Token};
use crate::warnings::Warnings;

/// Claims a lapsed key, or returns the live record: the second round trip of a claim that
/// found a record. A free key is claimed by the plain `SET NX GET` before it, which costs
/// Redis less than a script.
/// KEYS[1] the record; ARGV: now (ms), the claim, its PX.
const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local lapses_at = tonumber(string.match(current, '^%d+:%a:(%d+):'))
  if lapses_at == nil or lapses_at > tonumber(ARGV[1]) then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
";

/// A record's value and its time left (`PTTL`), read in one step. KEYS[1] the record.
const KEPT: &str = r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

/// Acts on a claim only if `token` still holds it: one round trip.
/// KEYS[1] the record; ARGV: token, op (`extend`, `complete`, `release`), the new lease end
/// (extend) or record (complete), PX.
///
/// `allow-oom`: a Redis at its `maxmemory` refuses new claims (the plain `SET` and [`CLAIM`]),
/// but not the renewal or the record of an operation already running, which would then lapse
/// unrecorded and run again on a retry. Such writes are bounded by the claims running.
const FENCED: &str = r"#!lua flags=allow-oom
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
local version, kind, lapses_at, token = string.match(current, '^(%d+):(%a):(%d+):(%x+):')
if kind ~= 'F' or token ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
elseif ARGV[2] == 'complete' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  local header = version .. ':F:' .. lapses_at .. ':' .. token .. ':'
  local rest = string.sub(current, #header + 1)
  redis.call('SET', KEYS[1], version .. ':F:' .. ARGV[3] .. ':' .. token .. ':' .. rest, 'PX', ARGV[4])
end
return 1
";

/// A store on Redis (or Valkey), for several server processes behind a load balancer: one
/// server ([`RedisStore::new`], [`RedisStore::builder`]) or a Redis Cluster
/// ([`RedisStore::cluster`]).
///
/// Each record is one Redis key, `<prefix><hex of the store key>`, and every command and
/// script touches that key alone, so on a cluster each operation runs on the master that
/// holds the key's slot. Every operation is one round trip: a claim is one `SET NX PX GET`
/// (Redis 7.0 or later); extend, complete and release are Lua scripts that act only while the
/// record is still the claim of the caller's fencing token (they check its kind and token on
/// the server). Only the takeover of a lapsed claim that Redis still keeps costs a second
/// round trip, a script that checks the lapse on the server. Counted on the wire (the
/// workspace's `round_trips` tests, one server): a new key is two round trips, a replay one.
/// Records expire in Redis itself (the TTL for completed records, the lease plus a grace for
/// running ones). The connection is multiplexed and reconnects by itself; on one server, it
/// also connects anew when the server answers that it takes no writes (a primary a failover
/// demoted), so that it follows an address that moved to the new primary; at most once per
/// half second, so that an address still leading to a replica gets no storm of connections,
/// and its writes answer 503 meanwhile. Each command has a timeout, past which the request
/// answers 503 `idempotency_store_unavailable` (or runs unprotected, with
/// [`RedisStoreBuilder::fail_open`]). On a cluster, a master that is down
/// makes only its own keys answer 503, and a slot that migrates makes none: the store follows
/// the `ASK` and `MOVED` redirects its cluster client gives up on. A Redis older than 7.0
/// refuses every claim, with an error that says so.
///
/// Redis must keep the store's keys until they expire: run it with `maxmemory-policy
/// noeviction`, under which a full Redis refuses new claims (503) rather than deleting a
/// running claim or a record, which lets an operation run twice; operations already running
/// still renew their claims and record their responses there. The store's first claim reads
/// the policy (`INFO memory`) and logs an error when Redis may evict. Its Redis user needs
/// `GET`, `SET`, `DEL`, `PTTL`, `EVALSHA` and `EVAL` (and `WAIT`, waiting for replicas, with
/// `EXISTS` on a cluster; `ASKING`, on a cluster whose slots migrate) on its keys: the first claim of a free key also writes its lease again through the store's
/// script, and a Redis that refuses scripts has that claim withdrawn and refused before its
/// handler runs.
///
/// Over TLS, with the `redis-tls` feature (rustls, on ring): a `rediss://` URL, checked against
/// the system's root certificates, or the authorities given to
/// `RedisStoreBuilder::tls_root_certificates`; `rediss://host:port/#insecure` checks no
/// certificate (for a test Redis only). `RedisStoreBuilder::tls_client_certificate` presents a
/// client certificate to a Redis that asks for one. A server whose certificate is not
/// trusted, or that refuses the store's, fails closed as wrong credentials do (503
/// `idempotency_store_unavailable`, also with [`RedisStoreBuilder::fail_open`]: Redis is there,
/// and a retry would meet the same certificate), the error naming the certificate's fault. Without
/// the feature, a `rediss://` URL is refused when the store is built. Building a store on a
/// `rediss://` URL installs ring's crypto provider as the process's default (rustls's
/// `CryptoProvider::install_default`), unless the process has one already: an application that
/// wants another, such as aws-lc-rs's for post-quantum key exchange, installs it first.
///
/// Redis replicates asynchronously: a failover to a replica that a claim or a record had not
/// reached yet forgets it, so that a retry can run the operation again.
/// [`RedisStoreBuilder::wait_for_replicas`] narrows that window, at the cost of a round trip
/// and the replicas' acknowledgement on every claim and completion.
///
/// Clones share the connections. On one server, each thread that sends commands (each actix
/// worker) gets a connection of its own, made on its first command: a connection's I/O runs on
/// the runtime of the thread that made it, so that a handler that blocks its worker's thread
/// holds up no other worker's commands. A process therefore holds one connection per worker
/// (and, with [`wait_for_replicas`](RedisStoreBuilder::wait_for_replicas), the connections
/// its waiting writes are lent, per worker too).
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    prefix: Arc<str>,
    timeout: Duration,
    max_record_bytes: usize,
    fail_open: bool,
    replicas: Option<Replicas>,
    /// On one server, when writes wait for replicas: the connections they wait on.
    waiters: Option<Arc<Lenders>>,
    claim: Arc<Script>,
    fenced: Arc<Script>,
    kept: Arc<Script>,
    /// What the store's first claims checked of its Redis, shared by its clones.
    checked: Arc<Checked>,
    /// Warnings of claims and records fewer replicas than asked acknowledged: while replicas
    /// lag or are missing, every write falls short alike.
    short: Arc<Warnings>,
}

/// What a store checks of its Redis on its first claim of a free key, once it has an answer:
/// that Redis runs the store's scripts, and whether Redis may evict its keys.
#[derive(Default)]
struct Checked {
    scripts: std::sync::atomic::AtomicBool,
    eviction: std::sync::atomic::AtomicBool,
}

/// How many replicas must acknowledge a claim or a completion, and how long to wait for
/// them (`WAIT`).
#[derive(Clone, Copy, Debug)]
struct Replicas {
    count: u32,
    timeout: Duration,
}

/// A claim that fewer replicas than asked acknowledged in time
/// ([`RedisStoreBuilder::wait_for_replicas`]), or whose `WAIT` failed once Redis had taken it
/// (timed out behind other commands, or its connection lost): a failover could lose it, so it
/// was released, and the store answers [`StoreError::Unavailable`]; or, by a store that fails
/// open, kept, and logged.
#[derive(Debug)]
struct NotReplicated {
    /// How many replicas acknowledged it, or why that is unknown.
    acknowledged: Result<i64, StoreError>,
    replicas: Replicas,
    /// Kept anyway, by a store that fails open.
    kept: bool,
}

impl std::fmt::Display for NotReplicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.acknowledged {
            Ok(acknowledged) => write!(
                f,
                "the claim reached {acknowledged} of the {} Redis replicas it waits for within {} ms",
                self.replicas.count,
                self.replicas.timeout.as_millis(),
            )?,
            Err(error) => write!(
                f,
                "Redis took the claim, but waiting for its {} replicas failed ({error})",
                self.replicas.count,
            )?,
        }
        let fate = if self.kept {
            "it was kept, failing open"
        } else {
            "it was released"
        };
        write!(f, ", so a failover could lose it; {fate}")
    }
}

impl std::error::Error for NotReplicated {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.acknowledged
            .as_ref()
            .err()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

/// Whether `error` is a claim that fewer replicas than asked acknowledged.
pub(crate) fn not_replicated(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    error.is::<NotReplicated>()
}

/// A Lua script, run by its hash and sent whole only to a server that does not have it yet.
struct Script {
    body: &'static str,
    hash: String,
}

impl Script {
    fn new(body: &'static str) -> Self {
        Self {
            body,
            hash: redis::Script::new(body).get_hash().to_owned(),
        }
    }
}

/// The connection: to one server, or to the masters of a cluster, each command routed to the
/// master of its key, and redirects the cluster client gave up on followed by the store (see
/// [`Asked`]).
#[derive(Clone)]
enum Connection {
    Single(Arc<Single>),
    Cluster(ClusterConnection, Arc<Seeds>, Arc<Asked>),
}

/// How many more times, at most, the store sends a command on a cluster that the cluster
/// client answered with a redirect (`ASK` or `MOVED`) after its own retries: its last send
/// was not run (a node answers `ASK` or `MOVED` instead of running it), and an earlier one,
/// whose connection dropped, may have been, which the client's own retries allow already
/// (every command of the store's may be sent twice; see [`Asked::asking`]); the command
/// timeout bounds them all.
const STORE_REDIRECTS: usize = 4;

/// Connections of the store's own, on a cluster, to the nodes that `ASK` redirects name, each
/// command sent there right behind its `ASKING`, in one write.
///
/// A node importing a slot runs a command on a key of that slot only right after `ASKING`
/// on the same connection, and the `redis` crate's cluster client follows an `ASK` by
/// sending `ASKING`, waiting for its answer, then sending the command: on the connection to
/// that node that every request of the process shares, so that under load another request's
/// command (often its own `ASKING`'s command) comes between and takes the `ASKING`, and the
/// importing node answers `MOVED` back to the node migrating the slot, which answers `ASK`
/// again. After its retries the client gives up with that `ASK` (or `MOVED`): a command Redis
/// never ran, which the store answered 503; and for each `MOVED`, the client rebuilt its map
/// of the slots, holding up every request. The store follows such an `ASK` itself: `ASKING`
/// and the command are sent as one pipeline, which the connection writes whole, so nothing
/// comes between them; to the node the `ASK` named, which the node migrating the slot named
/// because it does not hold the key (and it creates no key of a migrating slot). Nothing
/// else is sent after `ASKING`, and nothing follows a redirect answered on these connections:
/// it is returned, as an error, to be followed through the cluster client again or answered
/// 503 once the store gives up.
struct Asked {
    /// A seed's connection settings (credentials, TLS, protocol), whose address is replaced by
    /// the one an `ASK` names.
    info: redis::ConnectionInfo,
    config: redis::AsyncConnectionConfig,
    /// Each thread's connections (see [`PerThread`]), by the address an `ASK` named.
    by_thread: PerThread<std::sync::Mutex<HashMap<String, MultiplexedConnection>>>,
}

impl Asked {
    /// Sends `ASKING` and `cmd` in one write to the node at `addr` (`host:port`, as an `ASK`
    /// names it), and returns `cmd`'s answer.
    ///
    /// A kept connection found dropped (the node restarted, or closed it idle) is replaced,
    /// and `cmd` sent again once on the new one, as the cluster client does on its own
    /// connections: it may then be sent twice, which every command of the store's allows (a
    /// claim that finds its own claim takes it as made, see `found`; the scripts act only
    /// while the record is the caller's claim).
    async fn asking(&self, addr: &str, cmd: &Cmd) -> redis::RedisResult<Value> {
        let mut answers = self.asking_all(addr, &[cmd]).await?;
        match (answers.pop(), answers.is_empty()) {
            (Some(Value::ServerError(error)), true) => Err(error.into()),
            (Some(value), true) => Ok(value),
            _ => Err(redis::RedisError::from((
                ErrorKind::Client,
                "ASKING and one command answered with other than one value",
            ))),
        }
    }

    /// As [`asking`](Self::asking), with `ASKING` and all of `cmds` in one write (only the
    /// first runs as asked; the others touch no key, as a `WAIT`): their answers, an error
    /// among them as Redis gave it.
    async fn asking_all(&self, addr: &str, cmds: &[&Cmd]) -> redis::RedisResult<Vec<Value>> {
        let conns = self
            .by_thread
            .get(|| Ok::<_, std::convert::Infallible>(std::sync::Mutex::default()))
            .unwrap_or_else(|never| match never {});
        let kept = conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(addr)
            .cloned();
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING");
        for cmd in cmds {
            pipe.add_command((*cmd).clone());
        }
        if let Some(mut conn) = kept {
            let answer = asked_on(&mut conn, &pipe).await;
            if !answer
                .as_ref()
                .is_err_and(redis::RedisError::is_connection_dropped)
            {
                return answer;
            }
            conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(addr);
        }
        let mut conn = self.connect(addr).await?;
        let answer = asked_on(&mut conn, &pipe).await;
        // A connection that failed at once is not kept: the next `ASK` makes another.
        if !answer.as_ref().is_err_and(|e| e.kind() == ErrorKind::Io) {
            let mut conns = conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.insert(addr.to_owned(), conn);
        }
        answer
    }

    /// A connection to the node at `addr`, with the seeds' settings.
    async fn connect(&self, addr: &str) -> redis::RedisResult<MultiplexedConnection> {
        let unusable = || {
            redis::RedisError::from((
                ErrorKind::Client,
                "an ASK redirect named an address the store cannot connect to",
                addr.to_owned(),
            ))
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(unusable)?;
        let port: u16 = port.parse().map_err(|_| unusable())?;
        let host = host.to_owned();
        let to = match self.info.addr() {
            redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host, port),
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            // A cluster's nodes are reached over TCP: one named by a socket path takes no ASK.
            _ => return Err(unusable()),
        };
        let client = redis::Client::open(self.info.clone().set_addr(to))?;
        client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }
}

/// `ASKING` and the commands after it, `pipe`, sent on `conn` in one write: the commands'
/// answers (the `ASKING`'s `OK` skipped).
async fn asked_on(
    conn: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> redis::RedisResult<Vec<Value>> {
    let commands = pipe.len() - 1;
    let values = conn.req_packed_commands(pipe, 1, commands).await?;
    if values.len() != commands {
        return Err(redis::RedisError::from((
            ErrorKind::Client,
            "ASKING and its commands answered with another count of values",
            format!("{values:?}"),
        )));
    }
    Ok(values)
}

/// Sends `cmd` through the cluster client, and follows the redirects it gave up on (see
/// [`Redirect`]), at most [`STORE_REDIRECTS`] times.
async fn redirected(
    conn: &mut ClusterConnection,
    asked: &Asked,
    cmd: &Cmd,
) -> redis::RedisResult<Value> {
    let mut answer = conn.req_packed_command(cmd).await;
    for _ in 0..STORE_REDIRECTS {
        let Some(redirect) = answer.as_ref().err().and_then(Redirect::of) else {
            break;
        };
        answer = match redirect {
            Redirect::Ask(addr) => asked.asking(&addr, cmd).await,
            Redirect::Moved => conn.req_packed_command(cmd).await,
        };
    }
    answer
}

/// `exists` and `wait` sent as one pipeline through the cluster client, to the primary of
/// `redis_key`'s slot in its map, and the redirect of the `EXISTS` it gave up on (an `ASK`
/// taken by another request's command, see [`Asked`]) followed as [`redirected`] follows a
/// single command's. The pipeline's answers, or the error, which a redirect may still be when
/// the store gave up.
async fn acknowledged_on(
    conn: &mut ClusterConnection,
    asked: &Asked,
    exists: &Cmd,
    wait: &Cmd,
    redis_key: &str,
) -> redis::RedisResult<Vec<Value>> {
    let pipe = || {
        let mut pipe = redis::pipe();
        pipe.add_command(exists.clone()).add_command(wait.clone());
        pipe
    };
    let mut answers = (conn.route_pipeline(pipe(), 0, 2, primary_of(redis_key))).await;
    for _ in 0..STORE_REDIRECTS {
        // The client's error, or the first command's answer.
        let redirect = match &answers {
            Err(error) => Redirect::of(error),
            Ok(values) => match &values[..] {
                [Value::ServerError(error), _] => Redirect::of(&error.clone().into()),
                _ => None,
            },
        };
        let Some(redirect) = redirect else {
            break;
        };
        answers = match redirect {
            Redirect::Ask(addr) => asked.asking_all(&addr, &[exists, wait]).await,
            Redirect::Moved => (conn.route_pipeline(pipe(), 0, 2, primary_of(redis_key))).await,
        };
    }
    answers
}

/// A redirect the cluster client gave up on, which the store follows (see [`Asked`]): an
/// `ASK`, to the node it names, right behind `ASKING`; a `MOVED`, through the client again,
/// which rebuilt its map of the slots on it.
enum Redirect {
    /// To the node at this address (`host:port`).
    Ask(String),
    Moved,
}

impl Redirect {
    /// The redirect `error` is, if it is one the store follows.
    fn of(error: &redis::RedisError) -> Option<Self> {
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Ask) => {
                let (addr, _) = error.redirect_node()?;
                Some(Self::Ask(addr.to_owned()))
            }
            ErrorKind::Server(ServerErrorKind::Moved) => Some(Self::Moved),
            _ => None,
        }
    }
}

/// The most threads (and runtimes) [`PerThread`] keeps a value for: past them (threads that
/// came and went, each with its own runtime), it forgets them all, and each thread makes its
/// own again.
const MOST_THREADS: usize = 1024;

/// One `T` for each thread that asks for one, made on it, such as a connection: a connection's
/// driver runs on the runtime of the thread that first uses it (each actix worker runs a
/// runtime of its own thread), so that on one shared by every worker, a handler that blocked
/// its worker's thread (a blocking call, a long computation) held up every worker's commands,
/// their claims and their leases' renewals, and a worker that stopped first broke it for the
/// others. Each worker's own holds up only that worker.
///
/// One per thread and runtime, in fact: a thread may run one runtime, then another (tests
/// that start one each), and a connection made on the first went down with it, so that the
/// thread's first command on the next failed. Tokio may give a new runtime the id of one that
/// ended; its ids come from a counter today.
struct PerThread<T> {
    made: std::sync::RwLock<HashMap<ThreadAndRuntime, Arc<T>>>,
}

/// A thread, and the runtime it runs (if any) when it asks [`PerThread`].
type ThreadAndRuntime = (std::thread::ThreadId, Option<tokio::runtime::Id>);

impl<T> PerThread<T> {
    fn new() -> Self {
        Self {
            made: std::sync::RwLock::default(),
        }
    }

    /// This thread's (and its runtime's), made by `make` if it has none yet.
    fn get<E>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let thread = (std::thread::current().id(), runtime.map(|r| r.id()));
        let made = self.made.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(mine) = made.get(&thread) {
            return Ok(Arc::clone(mine));
        }
        drop(made);
        let mine = Arc::new(make()?);
        let mut made = self.made.write().unwrap_or_else(PoisonError::into_inner);
        if made.len() >= MOST_THREADS {
            made.clear();
        }
        Ok(Arc::clone(made.entry(thread).or_insert(mine)))
    }
}

/// One server, through a [`Server`] (a connection) of each thread's own (see [`PerThread`]).
struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    servers: PerThread<Server>,
}

impl Single {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> redis::RedisResult<Self> {
        let single = Self {
            client,
            config,
            servers: PerThread::new(),
        };
        // The settings are checked here, where a mistake in them is the builder's.
        single.server()?;
        Ok(single)
    }

    /// This thread's connection.
    fn server(&self) -> redis::RedisResult<Arc<Server>> {
        self.servers
            .get(|| Server::new(self.client.clone(), self.config.clone()))
    }
}

/// How often, at most, a store on a cluster asks its seed nodes why it has no connection.
const SEEDS_ASKED_INTERVAL: Duration = Duration::from_secs(1);

/// The nodes a cluster store was built with, asked directly why the cluster client has no
/// connection: it answers alike for nodes it cannot reach, an outage, and for nodes that
/// refuse its credentials or its commands, a fault to fix. Asked at most once per
/// [`SEEDS_ASKED_INTERVAL`], and only when a command found no connection.
struct Seeds {
    clients: Vec<redis::Client>,
    /// When they were last asked, and what they said.
    told: tokio::sync::Mutex<Option<(Instant, Told)>>,
}

/// What a seed node made of the store's connection.
enum Seed {
    Took,
    Refused(String),
    /// It failed as an outage does, saying why.
    Failed(String),
    /// It did not answer within the timeout.
    Silent,
}

/// What the seed nodes said, together.
#[derive(Clone)]
enum Told {
    /// One took the store's connection (a seed that refuses while others take it is a fault of
    /// its own, not of the cluster's nodes), or none answered.
    Nothing,
    /// One refused it, and none took it: a fault to fix.
    Refused(String),
    /// None took or refused it, and one failed as an outage does, saying why (a certificate
    /// the store does not trust, a connection refused): what the cluster client's "no
    /// connection" does not say.
    Failed(String),
}

impl Seeds {
    /// What the seed nodes make of the store's connection.
    async fn told(&self, timeout: Duration) -> Told {
        let mut told = self.told.lock().await;
        if let Some((at, said)) = &*told {
            if at.elapsed() < SEEDS_ASKED_INTERVAL {
                return said.clone();
            }
        }
        let config = connection_config(timeout);
        let asked = self.clients.iter().map(|client| {
            let config = config.clone();
            async move {
                let connected = client.get_multiplexed_async_connection_with_config(&config);
                match tokio::time::timeout(timeout, connected).await {
                    Ok(Ok(_)) => Seed::Took,
                    Ok(Err(error)) => match failed(error) {
                        StoreError::Refused(error) => Seed::Refused(error.to_string()),
                        StoreError::Unavailable(error) => Seed::Failed(error.to_string()),
                        error => Seed::Failed(error.to_string()),
                    },
                    Err(_) => Seed::Silent,
                }
            }
        });
        let seeds = futures_util::future::join_all(asked).await;
        let said = if seeds.iter().any(|seed| matches!(seed, Seed::Took)) {
            Told::Nothing
        } else if let Some(refusal) = seeds.iter().find_map(|seed| match seed {
            Seed::Refused(refusal) => Some(refusal),
            _ => None,
        }) {
            Told::Refused(refusal.clone())
        } else {
            seeds
                .into_iter()
                .find_map(|seed| match seed {
                    Seed::Failed(why) => Some(Told::Failed(why)),
                    _ => None,
                })
                .unwrap_or(Told::Nothing)
        };
        *told = Some((Instant::now(), said.clone()));
        said
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(single) => {
                Box::pin(async move { single.server()?.command(cmd).await })
            }
            Connection::Cluster(conn, _, asked) => {
                Box::pin(async move { redirected(conn, asked, cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(single) => Box::pin(async move {
                let (_, mut conn) = single.server()?.current();
                conn.req_packed_commands(pipeline, offset, count).await
            }),
            Connection::Cluster(conn, ..) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(single) => single.client.get_connection_info().redis_settings().db(),
            Connection::Cluster(conn, ..) => conn.get_db(),
        }
    }
}

/// Connections of their own, one at a time to each write that waits for its replicas, on one
/// server. `WAIT` blocks the connection it is sent on until the replicas acknowledge or its
/// timeout passes, so that on the shared connection every other command of the process
/// queued behind it (and, with a replica down, timed out); and it counts only the writes sent
/// on its own connection, so that it must follow its write there, never on a connection that
/// carried none. (On a cluster, the cluster client's connection to the key's primary carries
/// both; while the key's slot migrates, the connection to the node holding it: see
/// `RedisStore::acknowledged`.)
struct Waiters {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    pool: std::sync::Mutex<Pool>,
}

/// The connections of [`Waiters`].
#[derive(Default)]
struct Pool {
    /// Idle connections, the last given back last, each with when it was.
    idle: Vec<(MultiplexedConnection, Instant)>,
    /// Moved on when the idle connections are dropped (one failed, or answered `READONLY`):
    /// those lent before are not taken back either.
    generation: u64,
    /// When the connections were last dropped for a `READONLY`.
    read_only_at: Option<Instant>,
    /// Until when no new connection is made: a connection made since the last `READONLY`
    /// answered it again, so the address still leads to a node that takes no writes. As for
    /// the shared connection, connections are made anew at once after a first `READONLY`,
    /// then at most once per [`READ_ONLY_RECONNECT_INTERVAL`].
    refuse_until: Option<Instant>,
}

/// How many idle connections [`Waiters`] keeps for the next writes; more are made while more
/// writes wait at once, and closed after.
const IDLE_WAITERS: usize = 16;

/// How many connections a store lends at once by default, across its threads
/// ([`RedisStoreBuilder::max_waiting_writes`]): each write that waits for its replicas holds
/// one until its `WAIT` ends, so that, unbounded, a burst of new keys with replicas behind
/// would open as many, up to Redis's `maxclients`, past which every process sharing that
/// Redis is refused. A write past them waits for a place within the command timeout, then is
/// refused.
const MAX_LENT: usize = 64;

/// How long an idle connection of [`Waiters`] is kept: a proxy, or the server's own
/// `timeout`, may close one left idle longer without a word, and the next write on it would
/// fail.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// The [`Waiters`] of each thread (see [`PerThread`]): a connection lent to a write is one
/// its own thread made.
struct Lenders {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    by_thread: PerThread<Waiters>,
    /// The places of writes that wait for their replicas, one per connection lent
    /// ([`RedisStoreBuilder::max_waiting_writes`]), shared by the threads' [`Waiters`].
    lendable: Arc<tokio::sync::Semaphore>,
    /// How many places `lendable` has.
    places: usize,
}

impl Lenders {
    fn this_thread(&self) -> Arc<Waiters> {
        let made = self.by_thread.get(|| {
            Ok::<_, std::convert::Infallible>(Waiters {
                client: self.client.clone(),
                config: self.config.clone(),
                pool: std::sync::Mutex::default(),
            })
        });
        made.unwrap_or_else(|never| match never {})
    }
}

impl Waiters {
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for one write and its `WAIT`, in the write's `place` among those lent:
    /// an idle one, else a new one.
    async fn lend(
        self: &Arc<Self>,
        place: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Lent, StoreError> {
        let (idle, generation) = {
            let mut pool = self.pool();
            let now = Instant::now();
            pool.idle
                .retain(|(_, since)| now.duration_since(*since) < IDLE_FOR);
            let idle = pool.idle.pop().map(|(conn, _)| conn);
            if idle.is_none() && pool.refuse_until.is_some_and(|until| now < until) {
                return Err(StoreError::Unavailable(
                    "the Redis server answered READONLY (a failover under way?); a new connection is tried shortly".into(),
                ));
            }
            (idle, pool.generation)
        };
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let connected = self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await;
                connected.map_err(failed)?
            }
        };
        Ok(Lent {
            conn,
            waiters: Arc::clone(self),
            generation,
            sound: true,
            _place: place,
        })
    }

    /// Drops the idle connections, and those lent now as they are given back, when one of
    /// `generation` failed (a server restarted, a proxy that closed them) or answered
    /// `READONLY` (`read_only`: the server was demoted, and they all lead there).
    fn drop_all(&self, generation: u64, read_only: bool) {
        let mut pool = self.pool();
        if generation != pool.generation {
            // Made before the last drop: dropped with it already.
            return;
        }
        pool.idle.clear();
        pool.generation += 1;
        if read_only {
            let now = Instant::now();
            if pool
                .read_only_at
                .is_some_and(|at| now.duration_since(at) < READ_ONLY_RECONNECT_INTERVAL)
            {
                pool.refuse_until = Some(now + READ_ONLY_RECONNECT_INTERVAL);
            }
            pool.read_only_at = Some(now);
        }
    }
}

/// A connection lent by [`Waiters`]: given back when dropped, unless a command on it failed
/// to get an answer (a `WAIT` dropped unanswered may still block it) or was answered
/// `READONLY`, or the connections were dropped since it was lent.
struct Lent {
    conn: MultiplexedConnection,
    waiters: Arc<Waiters>,
    generation: u64,
    sound: bool,
    /// Its place among the connections lent, given back with it.
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut pool = self.waiters.pool();
        if self.sound && self.generation == pool.generation && pool.idle.len() < IDLE_WAITERS {
            pool.idle.push((self.conn.clone(), Instant::now()));
        }
    }
}

impl ConnectionLike for Lent {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.sound = false;
            let answer = self.conn.req_packed_command(cmd).await;
            let read_only = read_only(&answer);
            let failed = matches!(&answer, Err(e) if e.kind() == ErrorKind::Io);
            if read_only || failed {
                self.waiters.drop_all(self.generation, read_only);
            }
            self.sound = !read_only && !failed;
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // Not sent by the store; counted unsound, so as not to judge its answers.
        self.sound = false;
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// The connection one operation's commands go out on: the store's own, or, for a write that
/// waits for replicas on one server, one lent to it alone (see [`Waiters`]).
enum Link {
    Shared(Connection),
    Lent(Lent),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Shared(conn) => conn.req_packed_command(cmd),
            Link::Lent(lent) => lent.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Shared(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Lent(lent) => lent.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Shared(conn) => conn.get_db(),
            Link::Lent(lent) => lent.get_db(),
        }
    }
}

/// Whether `answer` is `READONLY`: the server takes no writes (a primary a failover demoted).
fn read_only(answer: &redis::RedisResult<Value>) -> bool {
    match answer {
        Ok(Value::ServerError(error)) => error.kind() == Some(ServerErrorKind::ReadOnly),
        Err(error) => error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly),
        Ok(_) => false,
    }
}

/// The settings of a connection made by hand (not by a connection manager): `timeout` to
/// connect, and for each answer.
fn connection_config(timeout: Duration) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// The connection to one server, replaced by a new one when the server answers that it takes
/// no writes (`READONLY`). A primary that a failover demoted keeps the connections made to it
/// open, and answers `READONLY` on them for as long as they live, while the store's address
/// (a DNS name, a virtual IP) may lead to the new primary already: only a new connection
/// follows it. While the address still leads to a node that takes no writes, new connections
/// answer `READONLY` too, so they are made at most once per [`READ_ONLY_RECONNECT_INTERVAL`].
/// (The cluster client follows a failover by the cluster's own map of its slots.)
struct Server {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: std::sync::Mutex<Current>,
}

/// How often, at most, a store connects anew to a server that keeps answering `READONLY`: a
/// failover under load then costs the node behind the address two connections a second per
/// process, where connecting anew at every answer would cost one per batch of commands. Half
/// the `Retry-After` of the 503 that commands answer meanwhile, so that a client that waits
/// as told finds the store on the new primary once the address leads there; and the longest
/// wait between the connection's own attempts to reach a server that is down.
const READ_ONLY_RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// The connection commands go out on.
struct Current {
    /// Numbered so that the `READONLY` answers of many commands sent on it replace it once.
    number: u64,
    conn: ConnectionManager,
    /// When it replaced one that answered `READONLY`; `None` for the first.
    since: Option<Instant>,
    /// Whether it answered `READONLY` too soon after `since` to be replaced at once: the first
    /// command after the interval replaces it before it goes out. Only a connection that
    /// answered `READONLY` reads the clock.
    read_only: bool,
}

impl Server {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> redis::RedisResult<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            client,
            config,
            current: std::sync::Mutex::new(Current {
                number: 0,
                conn,
                since: None,
                read_only: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let mut current = self.lock();
        if current.read_only {
            self.replace_when_due(&mut current);
        }
        (current.number, current.conn.clone())
    }

    async fn command(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        let (number, mut conn) = self.current();
        let answer = conn.req_packed_command(cmd).await;
        if read_only(&answer) {
            let mut current = self.lock();
            if current.number == number {
                current.read_only = true;
                self.replace_when_due(&mut current);
            }
        }
        answer
    }

    /// Replaces the connection, which answered `READONLY`, by a new one, unless it replaced
    /// one less than [`READ_ONLY_RECONNECT_INTERVAL`] ago. The new one connects on its first
    /// command.
    fn replace_when_due(&self, current: &mut Current) {
        let now = Instant::now();
        if current
            .since
            .is_some_and(|since| now.duration_since(since) < READ_ONLY_RECONNECT_INTERVAL)
        {
            return;
        }
        if let Ok(conn) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            *current = Current {
                number: current.number + 1,
                conn,
                since: Some(now),
                read_only: false,
            };
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("fail_open", &self.fail_open)
            .field("replicas", &self.replicas)
            .field("cluster", &matches!(self.conn, Connection::Cluster(..)))
            .finish_non_exhaustive()
    }
}

/// Where a [`RedisStoreBuilder`] connects.
#[derive(Clone)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
}

/// Its URLs without their credentials.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(url) => f.debug_tuple("Single").field(&redacted_url(url)).finish(),
            Target::Cluster(urls) => {
                let urls: Vec<_> = urls.iter().map(|url| redacted_url(url)).collect();
                f.debug_tuple("Cluster").field(&urls).finish()
            }
        }
    }
}

/// Builds a [`RedisStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    timeout: Duration,
    max_record_bytes: usize,
    fail_open: bool,
    replicas: Option<Replicas>,
    /// The most connections lent at once to writes that wait for their replicas.
    max_waiting_writes: usize,
    #[cfg(feature = "redis-tls")]
    tls: super::redis_tls::Certificates,
}

/// The answer of `$send` (a block sending on `&mut $link`, named `$on` in it), for a command
/// safe to send twice (a claim's, a read): sent again once on a connection found dropped
/// ([`dropped`]: a Redis that restarted closed it and its worker learns of it only now, a
/// network broke it, another command's answer was lost on it), rather than answered 503 while
/// Redis answers. On a new link (lent for `WAIT` when `$waits`): a connection lent and found
/// dropped is not lent again. (A macro: an async closure's future, borrowing the link it is
/// given, is not known to be `Send` for every such borrow.)
macro_rules! resent {
    ($store:expr, $link:ident, $waits:expr, |$on:ident| $send:block) => {{
        let first = {
            let $on = &mut $link;
            $send
        };
        match first {
            Err(error) if dropped(&$store.conn, &error) => match {
                // The dropped link goes first: a lent one gives its place back before this
                // write waits for another.
                drop(std::mem::replace(
                    &mut $link,
                    Link::Shared($store.conn.clone()),
                ));
                $store.link($waits).await
            } {
                Ok(new) => {
                    $link = new;
                    let $on = &mut $link;
                    $send
                }
                Err(error) => Err(error),
            },
            answer => answer,
        }
    }};
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`, or `rediss://` over TLS with the
    /// `redis-tls` feature) with default settings.
    ///
    /// # Errors
    /// As [`RedisStoreBuilder::build`].
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A builder for a store on the Redis at `url`.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Single(url.into()))
    }

    /// A builder for a store on a Redis Cluster, reached first through the nodes at `urls`
    /// (`redis://host:port`; one live node is enough, the others are learned from it).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), idem_core::store::StoreError> {
    /// use idem_core::store::RedisStore; // in an app: idem_actix::RedisStore
    ///
    /// let store = RedisStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .prefix("payments:")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn cluster<I>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisStoreBuilder::new(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    /// The connection for a write, and for its `WAIT` when it `waits`: one lent to it alone
    /// on one server when it waits (see [`Waiters`]), the store's own otherwise.
    async fn link(&self, waits: bool) -> Result<Link, StoreError> {
        match &self.waiters {
            Some(lenders) if waits => {
                let started = Instant::now();
                let places = Arc::clone(&lenders.lendable);
                let place = tokio::time::timeout(self.timeout, places.acquire_owned()).await;
                // Refused, not timed out: Redis answers, and may hold the key, so that the
                // write must not run unprotected where it fails open, nor its claim, never
                // sent, be released in the background.
                let Ok(Ok(place)) = place else {
                    return Err(StoreError::Refused(format!(
                        "{} writes of this store already wait for their replicas, and none ended within the command timeout; raise max_waiting_writes, or look at the replicas",
                        lenders.places
                    ).into()));
                };
                let waiters = lenders.this_thread();
                let left = self.timeout.saturating_sub(started.elapsed());
                let lent = tokio::time::timeout(left, waiters.lend(place)).await;
                Ok(Link::Lent(lent.map_err(|_| StoreError::Timeout)??))
            }
            _ => Ok(Link::Shared(self.conn.clone())),
        }
    }

    /// The Redis key of a record.
    fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn run<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.run_as(command, failed).await
    }

    /// As [`run`](Self::run), with `failed` telling what a Redis error is.
    async fn run_as<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
        failed: fn(redis::RedisError) -> StoreError,
    ) -> Result<T, StoreError> {
        let error = match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => return Err(StoreError::Timeout),
        };
        match (&self.conn, error.kind()) {
            // One server answers MOVED (or ASK) only as a node of a cluster: the key's slot is
            // another node's, for good.
            (
                Connection::Single(_),
                ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask),
            ) => Err(StoreError::Refused(Box::new(NotACluster(error)))),
            (
                Connection::Cluster(_, seeds, _),
                ErrorKind::ClusterConnectionNotFound | ErrorKind::Io,
            ) => match seeds.told(self.timeout).await {
                Told::Refused(refusal) => Err(StoreError::Refused(
                    format!("the Redis Cluster's nodes refused the store's connection: {refusal}")
                        .into(),
                )),
                Told::Failed(why) if error.kind() == ErrorKind::ClusterConnectionNotFound => {
                    Err(StoreError::Unavailable(
                        format!("no node of the Redis Cluster took the store's connection: {why}")
                            .into(),
                    ))
                }
                _ => Err(failed(error)),
            },
            _ => Err(failed(error)),
        }
    }

    fn encode(&self, record: &Record, token: Token) -> Result<Vec<u8>, StoreError> {
        let bytes = codec::encode(record, token)?;
        if bytes.len() > self.max_record_bytes {
            return Err(StoreError::TooLarge {
                size: bytes.len(),
                max: self.max_record_bytes,
            });
        }
        Ok(bytes)
    }

    async fn fenced(
        &self,
        link: &mut Link,
        key: &StoreKey,
        token: Token,
        op: &str,
        value: &[u8],
        keep_for: Duration,
    ) -> Result<bool, StoreError> {
        let token = token_hex(token);
        let px = px(keep_for).to_string();
        let args: [&[u8]; 4] = [token.as_bytes(), op.as_bytes(), value, px.as_bytes()];
        let held: i64 = self
            .run(self.eval(link, &self.fenced, &self.redis_key(key), &args))
            .await?;
        Ok(held == 1)
    }

    /// Claims `key` by `claim`, once `replicas` (if any) acknowledged it.
    async fn claimed(
        &self,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
        replicas: Option<Replicas>,
    ) -> Result<Claim, StoreError> {
        let value = self.encode(&Record::InFlight(claim), claim.token)?;
        let keep_for = px(claim.lease_until.since(now) + LAPSED_CLAIM_GRACE);
        let redis_key = self.redis_key(key);
        let mut link = self.link(replicas.is_some()).await?;
        // A free key (the common case) is claimed, and a live record read, by one plain
        // command (Redis 7.0 or later; an older one refuses it, and the error says so).
        let mut set = redis::cmd("SET");
        set.arg(&redis_key)
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(keep_for)
            .arg("GET");
        // The claim may be sent twice, as its first answer may have been lost (see `found`).
        let waits = replicas.is_some();
        let existing: Option<Vec<u8>> = resent!(self, link, waits, |link| {
            self.run_as(set.query_async(link), claim_failed).await
        })?;
        let Some(bytes) = existing else {
            self.first_claim(&mut link, &redis_key, key, claim, keep_for)
                .await?;
            return (self.replicated_claim(&mut link, &redis_key, key, claim.token, replicas))
                .await;
        };
        if let Some(record) = codec::live(&bytes, now)? {
            return self
                .found(
                    &mut link, &redis_key, key, claim, keep_for, replicas, record,
                )
                .await;
        }
        // A lapsed record Redis still keeps (a claim in its grace), readable or not: displace it, unless
        // another request did first. Run twice, the second finds the first's claim, this
        // request's own (see `found`).
        let (now_ms, keep_for_ms) = (now.as_millis().to_string(), keep_for.to_string());
        let args: [&[u8]; 3] = [now_ms.as_bytes(), &value, keep_for_ms.as_bytes()];
        let existing: Option<Vec<u8>> = resent!(self, link, waits, |link| {
            self.run(self.eval(link, &self.claim, &redis_key, &args))
                .await
        })?;
        match existing {
            None => {
                (self.replicated_claim(&mut link, &redis_key, key, claim.token, replicas)).await
            }
            Some(bytes) => {
                let record = codec::decode(&bytes)?;
                (self.found(
                    &mut link, &redis_key, key, claim, keep_for, replicas, record,
                ))
                .await
            }
        }
    }

    /// Writes `claim`'s lease (kept `keep_for` ms in Redis) again by the fenced script, a write
    /// that changes nothing while the claim holds `key`; `false` when it no longer does.
    async fn lease_again(
        &self,
        link: &mut Link,
        key: &StoreKey,
        claim: InFlight,
        keep_for: u64,
    ) -> Result<bool, StoreError> {
        let until = claim.lease_until.as_millis().to_string();
        let keep_for = Duration::from_millis(keep_for);
        (self.fenced(link, key, claim.token, "extend", until.as_bytes(), keep_for)).await
    }

    /// What the store's first claim of a free key checks, before its handler runs (each once
    /// it has an answer, so that later claims cost nothing more):
    ///
    /// - that Redis runs the store's scripts, by which every completion, renewal and release
    ///   is made, where the claim itself is a plain `SET`: an ACL without `EVALSHA` or `EVAL`
    ///   (or a server that renamed them away) let a handler run whose response could then not
    ///   be recorded, nor its claim released, and whose retry ran it again once the claim
    ///   lapsed. The claim's lease is written again by the fenced script, which changes
    ///   nothing; if Redis refuses it, the claim is deleted and the request refused (503,
    ///   failing closed) before its handler runs. A claim gone by then was taken from under
    ///   it, and fails closed too ([`StoreError::Contended`]).
    /// - whether Redis may evict the store's keys (a `maxmemory-policy` other than
    ///   `noeviction`, under a `maxmemory`): a Redis that deletes a running claim or a record
    ///   before it expires lets a retry run the operation again, so it is logged as an error,
    ///   once.
    ///
    /// A check that gets no answer in time (an outage) is made on a later claim instead.
    async fn first_claim(
        &self,
        link: &mut Link,
        redis_key: &str,
        key: &StoreKey,
        claim: InFlight,
        keep_for: u64,
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.checked.scripts.load(Relaxed) {
            match self.lease_again(link, key, claim, keep_for).await {
                Ok(true) => self.checked.scripts.store(true, Relaxed),
                Ok(false) => return Err(StoreError::Contended),
                Err(StoreError::Refused(error)) => {
                    let mut del = redis::cmd("DEL");
                    del.arg(redis_key);
                    let deleted: Result<i64, _> = self.run(del.query_async(link)).await;
                    if let Err(error) = deleted {
                        tracing::warn!(%key, %error, "deleting a claim whose scripts Redis refused failed; it lapses with its lease");
                    }
                    return Err(StoreError::Refused(Box::new(ScriptsRefused(error))));
                }
                // Not answered for now: the claim stands, and the next claim checks again.
                Err(_) => {}
            }
        }
        if !self.checked.eviction.load(Relaxed) {
            if let Some(answered) = self.evicts(link, redis_key).await {
                self.checked.eviction.store(true, Relaxed);
                if let Err(policy) = answered {
                    tracing::error!(
                        "Redis's maxmemory-policy is {policy}: once it holds its maxmemory, Redis deletes keys before they expire, the idempotency store's running claims and records among them, and an operation whose claim or record it deleted runs twice; set maxmemory-policy to noeviction (a full Redis then refuses new claims, answered 503) and give Redis the memory the records need"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the Redis that holds `redis_key` may evict keys, from its `INFO memory`:
    /// `Some(Err(policy))` when it may, `Some(Ok(()))` when it may not, or when it does not
    /// tell (an ACL without `INFO`, which is then logged as a warning), `None` when it did
    /// not answer in time.
    async fn evicts(&self, link: &mut Link, redis_key: &str) -> Option<Result<(), String>> {
        let mut info = redis::cmd("INFO");
        info.arg("memory");
        let answer: Result<String, StoreError> = self
            .run(async {
                match on_primary(link, redis_key, info).await? {
                    Value::ServerError(error) => Err(error.into()),
                    answer => redis::FromRedisValue::from_redis_value(answer)
                        .map_err(redis::RedisError::from),
                }
            })
            .await;
        let text = match answer {
            Ok(text) => text,
            Err(StoreError::Refused(error)) => {
                tracing::warn!(%error, "Redis did not say its maxmemory-policy (INFO memory); unless it is noeviction, Redis may delete the idempotency store's claims and records before they expire, and an operation then runs twice");
                return Some(Ok(()));
            }
            Err(_) => return None,
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let bounded = field("maxmemory").is_some_and(|max| max != "0");
        Some(match field("maxmemory_policy") {
            Some(policy) if bounded && policy != "noeviction" => Err(policy.to_owned()),
            _ => Ok(()),
        })
    }

    /// A claim's answer when Redis holds a live `record` for the key: the record, unless it is
    /// this claim itself, written by an earlier send of the same command whose answer was lost
    /// (sent again by the store on a connection found dropped, or by the `redis` crate's
    /// cluster client). That write is this
    /// request's claim, and holds the key once the replicas asked for acknowledged it, as its
    /// first answer would have. `WAIT` counts the writes sent on its own connection, and this
    /// one may have carried none (the first send went out on another, before a reconnection),
    /// so the claim's lease is written again here first, by the fenced script, while the
    /// claim still holds the key: the replicas that acknowledge that write hold the claim,
    /// which Redis replicated before it. A claim no longer there (released, or expired in
    /// Redis, and maybe another request's claim in its place) is [`StoreError::Contended`], which fails
    /// closed: a plain `PEXPIRE` kept whatever held the key by then, and the request ran
    /// beside the one that held it.
    #[allow(clippy::too_many_arguments)]
    async fn found(
        &self,
        link: &mut Link,
        redis_key: &str,
        key: &StoreKey,
        claim: InFlight,
        keep_for: u64,
        replicas: Option<Replicas>,
        record: Record,
    ) -> Result<Claim, StoreError> {
        let token = claim.token;
        if !record.is_claim_of(token) {
            return Ok(Claim::Existing(record));
        }
        if let Some(replicas) = replicas {
            match self.lease_again(link, key, claim, keep_for).await {
                Ok(true) => {}
                // Gone since it was read (released, or expired), and maybe claimed by another.
                Ok(false) => return Err(StoreError::Contended),
                Err(error) => return self.unreplicated(key, token, Err(error), replicas).await,
            }
        }
        self.replicated_claim(link, redis_key, key, token, replicas)
            .await
    }

    /// `claim`, claimed on `redis_key` by `token`, once the replicas asked for acknowledged
    /// it; or, if fewer did in time, released, and unavailable.
    async fn replicated_claim(
        &self,
        link: &mut Link,
        redis_key: &str,
        key: &StoreKey,
        token: Token,
        replicas: Option<Replicas>,
    ) -> Result<Claim, StoreError> {
        let Some(replicas) = replicas else {
            return Ok(Claim::Claimed);
        };
        let acknowledged = self.acknowledged(link, redis_key, replicas).await;
        if matches!(acknowledged, Ok(count) if count >= i64::from(replicas.count)) {
            return Ok(Claim::Claimed);
        }
        self.unreplicated(key, token, acknowledged, replicas).await
    }

    /// A claim Redis took, that `acknowledged` says fewer replicas than asked acknowledged, or
    /// whose wait for them failed (a `WAIT` that timed out behind other commands, or a
    /// connection lost): released, and unavailable; or kept, by a store that fails open. A
    /// failed wait leaves the count unknown, but not that Redis holds the claim, so it is
    /// never judged as a store that could not be reached, which an endpoint failing open
    /// would run unprotected, beside the next request the released key lets in.
    async fn unreplicated(
        &self,
        key: &StoreKey,
        token: Token,
        acknowledged: Result<i64, StoreError>,
        replicas: Replicas,
    ) -> Result<Claim, StoreError> {
        let short = NotReplicated {
            acknowledged,
            replicas,
            kept: self.fail_open,
        };
        // Failing open, the claim Redis holds is kept: the request runs as it would without
        // waiting for replicas, and a duplicate meanwhile is still turned away, where a
        // released claim left it to run beside this one.
        if short.kept {
            crate::warn_when_due!(self.short, short, %key);
            return Ok(Claim::Claimed);
        }
        if let Err(error) = self.release(key, token).await {
            tracing::warn!(%key, %error, "releasing a claim its replicas did not acknowledge failed; it lapses with its lease");
        }
        Err(StoreError::Unavailable(Box::new(short)))
    }

    /// How many replicas of `redis_key`'s primary acknowledged the writes sent to it before
    /// on `link`, within `replicas.timeout`.
    ///
    /// On a cluster, the `WAIT` goes right behind an `EXISTS` of the key, in one pipeline
    /// routed to the primary of the key's slot in the cluster client's map. While the slot
    /// migrates, a new claim is written on the importing node (its `ASK` followed), and the
    /// node migrating the slot answers `ASK` to the `EXISTS` too: the client takes the
    /// pipeline to the importing node, where Redis 7.0 counts the `WAIT` from the
    /// connection's last command, the `EXISTS`, after the claim's write, so that the replicas
    /// counted are those of the node holding the claim, where a `WAIT` sent alone counted
    /// those of the node migrating the slot. (From Redis 7.2 on, a `WAIT` counts from the
    /// connection's last write, which the `EXISTS` does not move: a claim written there
    /// through another connection may be counted early; see the threat model.) A redirect the client gave up on (another request's command
    /// took its `ASKING`) is followed by the store, as a single command's is (see [`Asked`]).
    /// A key that the node answering does not hold (the store gave up its redirects, or the
    /// claim is gone) is unacknowledged: released and refused 503 (or kept, failing open).
    async fn acknowledged(
        &self,
        link: &mut Link,
        redis_key: &str,
        replicas: Replicas,
    ) -> Result<i64, StoreError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas.count).arg(px(replicas.timeout));
        let answer = match link {
            Link::Shared(Connection::Cluster(conn, _, asked)) => {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(redis_key);
                let answers = self.run(acknowledged_on(conn, asked, &exists, &wait, redis_key));
                match &answers.await?[..] {
                    [Value::Int(1), wait] => wait.clone(),
                    // Refused, as `NOPERM` for a user not allowed `EXISTS`; or a redirect
                    // still, once the store gave up following them (unavailable, as `failed`
                    // tells).
                    [Value::ServerError(error), _] => return Err(failed(error.clone().into())),
                    [held, _] => {
                        return Err(StoreError::Unavailable(Box::new(HeldElsewhere(format!(
                            "{held:?}"
                        )))))
                    }
                    other => {
                        return Err(StoreError::Refused(
                            format!("Redis answered EXISTS and WAIT with {other:?}").into(),
                        ))
                    }
                }
            }
            link => self.run(on_primary(link, redis_key, wait)).await?,
        };
        match answer {
            Value::Int(acknowledged) => Ok(acknowledged),
            Value::ServerError(error) => Err(failed(error.into())),
            other => Err(StoreError::Refused(
                format!("Redis answered WAIT with {other:?}, not a count of replicas").into(),
            )),
        }
    }

    /// Runs `script` on `key` by its hash, and sends it whole only when the server answers
    /// that it does not have it (a server restarted, or a master new to the cluster): that
    /// loads it on the one server that holds the key, where `SCRIPT LOAD` would go to every
    /// master and fail while any one is down.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        conn: &mut Link,
        script: &Script,
        key: &str,
        args: &[&[u8]],
    ) -> redis::RedisResult<T> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(1).arg(key);
            for arg in args {
                cmd.arg(*arg);
            }
            cmd
        };
        match call("EVALSHA", &script.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                call("EVAL", script.body).query_async(conn).await
            }
            result => result,
        }
    }
}

/// Sends `cmd`, a command that names no key (`WAIT`, `INFO`), to the primary that holds
/// `redis_key`, on `link`: on a cluster, to that node alone, where the cluster client would
/// send it to every primary.
async fn on_primary(link: &mut Link, redis_key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
    match link {
        Link::Shared(Connection::Cluster(conn, ..)) => {
            let routing = RoutingInfo::SingleNode(primary_of(redis_key));
            conn.clone().route_command(cmd, routing).await
        }
        link => link.req_packed_command(&cmd).await,
    }
}

/// The primary of `redis_key`'s slot in the cluster client's map, as a route.
fn primary_of(redis_key: &str) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::with_key(redis_key, SlotAddr::Master))
}

/// `error` as the engine needs to tell it: [`StoreError::Unavailable`] when Redis was not
/// reached, or cannot answer for the key for now (loading its data, busy with another
/// client's long script, a cluster without the key's master, a failover under way), so that a
/// store that fails open may run the request; [`StoreError::Refused`] when it answered and
/// refused (out of memory, wrong credentials, no permission, any other error of its own): it
/// may hold the key, and that fails closed.
fn failed(error: redis::RedisError) -> StoreError {
    use ServerErrorKind::{Ask, BusyLoading, ClusterDown, MasterDown, Moved, ReadOnly, TryAgain};
    #[cfg(feature = "redis-tls")]
    if super::redis_tls::certificate_refused(&error) {
        return StoreError::Refused(Box::new(error));
    }
    match error.kind() {
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            BusyLoading | ClusterDown | MasterDown | TryAgain | ReadOnly | Moved | Ask,
        ) => StoreError::Unavailable(Box::new(error)),
        // `BUSY`, which the crate knows by its code only: the command was not run.
        _ if error.code() == Some("BUSY") => StoreError::Unavailable(Box::new(error)),
        _ => StoreError::Refused(Box::new(error)),
    }
}

/// Whether `error`, from `conn`, is a connection to one server found dropped (a Redis that
/// restarted, or a network that reset it): the `redis` crate makes a new connection for the
/// next command, so that a command safe to send twice (a claim, a read) is sent again once
/// rather than answered 503 while Redis answers. It cannot tell a command it never sent from
/// one whose answer was lost. The cluster client resends on its own connections itself.
fn dropped(conn: &Connection, error: &StoreError) -> bool {
    matches!(conn, Connection::Single(_))
        && matches!(error, StoreError::Unavailable(error)
            if error.downcast_ref::<redis::RedisError>().is_some_and(redis::RedisError::is_connection_dropped))
}

/// As [`failed`], for the claim's `SET key value NX PX ms GET`, which Redis takes from 7.0 on:
/// an older one refuses it as it refuses any command it cannot parse (6.2 takes `GET`, but not
/// beside `NX`; older ones take no `GET`, and those before 2.6.12 no `NX` either), and the
/// error says so, with what the server answered.
fn claim_failed(error: redis::RedisError) -> StoreError {
    let unparsed = error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && error.detail().is_some_and(|detail| {
            let detail = detail.to_ascii_lowercase();
            detail.contains("syntax error") || detail.contains("wrong number of arguments")
        });
    if unparsed {
        StoreError::Refused(Box::new(BeforeRedis7(error)))
    } else {
        failed(error)
    }
}

/// A Redis that refused the store's scripts on its first claim (see
/// [`RedisStore::first_claim`]).
#[derive(Debug)]
struct ScriptsRefused(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for ScriptsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this Redis refused the store's script (EVALSHA, then EVAL), by which every completion, renewal and release is made, so the claim was withdrawn before its handler ran: the store's Redis user needs GET, SET, DEL, PTTL, EVALSHA and EVAL (and WAIT, waiting for replicas) on its keys (the server answered: {})",
            self.0
        )
    }
}

impl std::error::Error for ScriptsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A key that the node a `WAIT` went to does not hold (its slot migrating, and the cluster
/// client's redirects given up, or the claim gone): its replicas cannot be counted there.
/// What the node answered for the key is given.
#[derive(Debug)]
struct HeldElsewhere(String);

impl std::fmt::Display for HeldElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the node the wait for replicas went to does not hold the claim (its slot migrating, or the claim gone), so its replicas cannot be counted (the node answered {})",
            self.0
        )
    }
}

impl std::error::Error for HeldElsewhere {}

/// A server that answered `MOVED` (or `ASK`) to a store built for one server: a node of a
/// cluster, whose other nodes hold some keys.
#[derive(Debug)]
struct NotACluster(redis::RedisError);

impl std::fmt::Display for NotACluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "this Redis is a node of a cluster, which holds the key on another node ({}); build the store with RedisStore::cluster", self.0)
    }
}

impl std::error::Error for NotACluster {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A server that refused the claim's `SET NX PX GET`: a Redis older than 7.0.
#[derive(Debug)]
struct BeforeRedis7(redis::RedisError);

impl std::fmt::Display for BeforeRedis7 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this Redis refused SET with NX and GET together, the one command that claims a key: the Redis store needs Redis 7.0 or later (the server answered: ")?;
        match (self.0.code(), self.0.detail()) {
            (Some(code), Some(detail)) => write!(f, "{code} {detail})"),
            _ => write!(f, "{})", self.0),
        }
    }
}

impl std::error::Error for BeforeRedis7 {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether `url` is one of a Redis reached over TLS.
fn tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// Whether the seed nodes of a cluster, reached over TLS, check the certificates of the nodes
/// (`#insecure` on none of them) or check none (on all), or the settings' error when they
/// disagree.
#[cfg(feature = "redis-tls")]
fn tls_mode(seeds: &[redis::Client]) -> Result<redis::TlsMode, StoreError> {
    let insecure = |seed: &redis::Client| {
        matches!(
            seed.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { insecure: true, .. }
        )
    };
    let unchecked = seeds.first().is_some_and(insecure);
    if seeds.iter().any(|seed| insecure(seed) != unchecked) {
        return Err(StoreError::Config(
            "the Redis Cluster's nodes cannot be one cluster's (#insecure on some of their URLs, not on others): put #insecure on all of their URLs or on none".into(),
        ));
    }
    Ok(match unchecked {
        true => redis::TlsMode::Insecure,
        false => redis::TlsMode::Secure,
    })
}

/// The settings' error of `url`, which the client refused: named without its credentials.
fn invalid(url: &str, error: redis::RedisError) -> StoreError {
    StoreError::Config(format!(
        "{} is not a Redis URL the store can use ({error}); write it as \
         redis://[user:password@]host[:port][/db], rediss:// for TLS (feature redis-tls), \
         or redis+unix:///path",
        redacted_url(url)
    ))
}

/// The smallest bound on records that lets the store record every request: a completion
/// kept without its response, at its widest (the engine writes no smaller record for a
/// request that ran, and a claim takes fewer bytes).
fn least_record_bytes() -> usize {
    Response::omitted(0, 0).held_bytes() + codec::MAX_OVERHEAD
}

/// The largest [`RedisStoreBuilder::max_record_bytes`]: Redis takes no value over 512 MiB
/// (its default `proto-max-bulk-len`), and refuses a larger one as a protocol error.
const MAX_RECORD_BYTES: usize = 512 << 20;

/// The longest expiry Redis takes: its clock's milliseconds plus `PX` must fit an `i64`, or
/// it refuses the write. Half that range leaves its clock some 146 million years; a record
/// kept that long still lapses by its own times.
const MAX_PX: u64 = i64::MAX as u64 / 2;

/// A PX argument: at least 1 ms, at most [`MAX_PX`].
fn px(keep_for: Duration) -> u64 {
    u64::try_from(keep_for.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_PX)
}

impl RedisStoreBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            prefix: "idem:".into(),
            timeout: Duration::from_millis(500),
            max_record_bytes: 8 * 1024 * 1024,
            fail_open: false,
            replicas: None,
            max_waiting_writes: MAX_LENT,
            #[cfg(feature = "redis-tls")]
            tls: Default::default(),
        }
    }

    /// A client of the Redis at `url`, with the builder's certificates, or the settings'
    /// error naming it.
    fn client_of(&self, url: &str) -> Result<redis::Client, StoreError> {
        #[cfg(not(feature = "redis-tls"))]
        if tls_url(url) {
            return Err(StoreError::Config(format!(
                "{} is a Redis URL over TLS, and this build has none: enable the redis-tls feature of idem-actix (or idem-core)",
                redacted_url(url)
            )));
        }
        #[cfg(feature = "redis-tls")]
        if tls_url(url) {
            super::redis_tls::ensure_provider();
        }
        #[cfg(feature = "redis-tls")]
        if let Some(certificates) = self.tls.to_redis()? {
            if !tls_url(url) {
                return Err(StoreError::Config(format!(
                    "{} is not a Redis URL over TLS, but the store was given TLS certificates (tls_root_certificates, tls_client_certificate); write it as rediss://",
                    redacted_url(url)
                )));
            }
            // Parsed first, so that a URL that is not one is refused as such.
            let parsed = redis::Client::open(url).map_err(|e| invalid(url, e))?;
            let info = parsed.get_connection_info().clone();
            return redis::Client::build_with_tls(info, certificates).map_err(|e| {
                StoreError::Config(format!(
                    "the TLS certificates given for {} cannot be used ({e}); give tls_root_certificates PEM certificates, and tls_client_certificate a PEM certificate chain and its PEM private key",
                    redacted_url(url)
                ))
            });
        }
        redis::Client::open(url).map_err(|e| invalid(url, e))
    }

    /// The prefix of every key this store writes. Default `idem:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one command may take before the store counts as unavailable. Default 500 ms;
    /// [`build`](Self::build) refuses zero.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest record stored, in bytes as Redis holds them: the response (headers and
    /// body, with their framing) plus up to 99 bytes. Default 8 MiB. At least 113, what a
    /// record kept without its response takes: [`build`](Self::build) refuses less, under
    /// which no request could ever be recorded; at most 512 MiB, the largest value Redis
    /// takes by default.
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// Runs requests unprotected when Redis cannot be reached, does not answer in time, or
    /// cannot answer for its data for now (loading, or a node that takes no writes in a
    /// failover: `READONLY`), instead of answering 503 (see [`StoreError`]). Default off.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Waits, after each claim and each completion, until `replicas` replicas of the key's
    /// primary acknowledged it (`WAIT`), for up to `timeout`. Default: no wait.
    ///
    /// Redis replicates asynchronously, so a failover to a replica that a claim had not
    /// reached forgets it, and a duplicate then runs beside the first run; one that a record
    /// had not reached lets a retry run the operation again. With this setting, a handler
    /// runs only once its claim is on `replicas` replicas: a claim that fewer acknowledged in
    /// time is released, and answers as an unavailable store (503
    /// `idempotency_store_unavailable`), even on an endpoint that fails open: Redis answered,
    /// and a request run unprotected would leave no record, so that each retry ran it again.
    /// Under this store's own [`fail_open`](Self::fail_open) it is kept instead, and logged: the request runs under it, as it would without this setting, and
    /// a duplicate meanwhile is still turned away (released, the duplicate would run beside
    /// it unprotected while Redis answers). A completion that fewer acknowledged is kept, and
    /// logged: the operation ran and its answer goes out. This narrows the window, it does
    /// not close it: an acknowledged write can still be lost when the replicas that took it
    /// are not the one promoted, and a primary that restarts without persistence loses
    /// everything. Each claim and completion costs one more round trip, and the replicas'
    /// delay.
    ///
    /// `WAIT` blocks the connection it is sent on, and counts the writes sent on it. On one
    /// server, each claim and completion therefore goes out, with its `WAIT`, on a connection
    /// of its own, so that waiting holds up no other command: up to 16 idle ones are kept for
    /// 30 s for the next by each worker thread, and beyond that each write that waits opens
    /// (and closes) one, [`max_waiting_writes`](Self::max_waiting_writes) (64) at most at
    /// once for the store: a write past them waits for a place within the
    /// [`command_timeout`](Self::command_timeout), then is refused (so that a burst of new
    /// keys with replicas behind cannot take Redis to its `maxclients`, past which every
    /// process sharing it is refused). On a
    /// cluster, both go on the cluster client's connection to the key's primary, which the
    /// process's other commands to that node share: they wait behind it. While a slot
    /// migrates, a new claim of one of its keys is written on the importing node: the `WAIT`
    /// goes there too, behind an `EXISTS` of the key that the cluster client takes to the node
    /// holding it, so that the replicas counted are that node's.
    ///
    /// [`build`](Self::build) refuses 0 replicas (no wait: leave this unset), and a `timeout`
    /// under 1 ms (`WAIT` would then block for as long as it takes) or not under the
    /// [`command_timeout`](Self::command_timeout), which bounds it.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = Some(Replicas {
            count: replicas,
            timeout,
        });
        self
    }

    /// With [`wait_for_replicas`](Self::wait_for_replicas) on one server: how many writes
    /// may wait for their replicas at once, each on a connection of its own. Default 64.
    /// A write past them waits for one of them to end, within the
    /// [`command_timeout`](Self::command_timeout); then it is refused
    /// ([`StoreError::Refused`]: 503, never run unprotected, as Redis may hold the key), as a
    /// full pool is. Size Redis's `maxclients` for this many per process, and the 16 idle
    /// connections each worker thread keeps for the next writes. [`build`](Self::build)
    /// refuses 0.
    pub fn max_waiting_writes(mut self, writes: usize) -> Self {
        self.max_waiting_writes = writes;
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more certificates in PEM), and
    /// only them, for the certificate of a Redis reached over TLS (`rediss://`): a private
    /// authority's, as a self-managed Redis's or Redis Cloud's. Default: the system's root
    /// certificates, as `rustls-native-certs` finds them (`/etc/ssl/certs` on Debian, or the
    /// file and directory that `SSL_CERT_FILE` and `SSL_CERT_DIR` name). Needs the
    /// `redis-tls` feature. The `redis` crate still reads the system's root certificates for
    /// each new connection, and fails it when `SSL_CERT_FILE` or `SSL_CERT_DIR` names what
    /// it cannot read.
    ///
    /// [`build`](Self::build) refuses it on a URL that is not `rediss://`, and a `pem` that
    /// holds no certificate.
    #[cfg(feature = "redis-tls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots = Some(pem.into());
        self
    }

    /// Presents the certificate chain `chain_pem` and its private key `key_pem` (both PEM)
    /// to a Redis that asks clients for a certificate (`tls-auth-clients yes`): mutual TLS.
    /// Default: none. Needs the `redis-tls` feature.
    ///
    /// [`build`](Self::build) refuses it on a URL that is not `rediss://`, a chain or key
    /// that does not parse, and a key that is not the private key of the chain's first
    /// certificate.
    #[cfg(feature = "redis-tls")]
    pub fn tls_client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((chain_pem.into(), key_pem.into()));
        self
    }

    /// The store. It connects on first use, so it can be built while Redis is down; it
    /// reconnects by itself when Redis comes back (on a cluster: to each master, and it
    /// follows the slots when they move).
    ///
    /// # Errors
    /// [`StoreError::Config`] for a URL that is not a Redis URL (or a `rediss://` one without
    /// the `redis-tls` feature), TLS certificates the store cannot use, a cluster named by no
    /// URL or by nodes that disagree (password, TLS, database), a
    /// [`max_record_bytes`](Self::max_record_bytes) under 113 or over 512 MiB, a
    /// [`wait_for_replicas`](Self::wait_for_replicas) it refuses, or when called outside a
    /// Tokio runtime.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        if self.timeout.is_zero() {
            return Err(StoreError::Config(
                "command_timeout must be longer than zero: zero would time every command out"
                    .into(),
            ));
        }
        if self.max_waiting_writes == 0 {
            return Err(StoreError::Config(
                "max_waiting_writes is 0, so no write could wait for its replicas; give how many may wait at once, such as 64".into(),
            ));
        }
        if let Some(replicas) = self.replicas {
            let refusal = if replicas.count == 0 {
                Some("wait_for_replicas(0, ..) waits for no replica; leave it unset".to_owned())
            } else if replicas.timeout < Duration::from_millis(1) {
                Some(format!(
                    "wait_for_replicas waits {:?}, but WAIT counts whole milliseconds and waits without end for 0; wait at least 1 ms",
                    replicas.timeout
                ))
            } else if replicas.timeout >= self.timeout {
                Some(format!(
                    "wait_for_replicas waits up to {:?}, but each command gives up after the command timeout, {:?}; wait less than it, or raise the command timeout",
                    replicas.timeout, self.timeout
                ))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                return Err(StoreError::Config(refusal));
            }
        }
        if self.max_record_bytes > MAX_RECORD_BYTES {
            return Err(StoreError::Config(format!(
                "max_record_bytes is {}, but Redis takes no value over 512 MiB (its default proto-max-bulk-len); the largest record kept must be at most {MAX_RECORD_BYTES} bytes",
                self.max_record_bytes
            )));
        }
        let least = least_record_bytes();
        if self.max_record_bytes < least {
            return Err(StoreError::Config(format!(
                "max_record_bytes is {}, but a record kept without its response takes up to {least} bytes in Redis, so no request could be recorded; raise it to at least {least}",
                self.max_record_bytes
            )));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::Config(
                "build the Redis store inside a Tokio runtime (for example in actix's main)".into(),
            ));
        }
        let mut waiters = None;
        let conn = match &self.target {
            Target::Single(url) => {
                let client = self.client_of(url)?;
                if self.replicas.is_some() {
                    waiters = Some(Arc::new(Lenders {
                        client: client.clone(),
                        config: connection_config(self.timeout),
                        by_thread: PerThread::new(),
                        lendable: Arc::new(tokio::sync::Semaphore::new(self.max_waiting_writes)),
                        places: self.max_waiting_writes,
                    }));
                }
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(500));
                let single = Single::new(client, config).map_err(|e| invalid(url, e))?;
                Connection::Single(Arc::new(single))
            }
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(StoreError::Config(
                        "name at least one node of the Redis Cluster".into(),
                    ));
                }
                // Each node's URL on its own first, so that the error names the one that is not
                // a Redis URL.
                let clients: Vec<redis::Client> = (urls.iter())
                    .map(|url| self.client_of(url))
                    .collect::<Result<_, _>>()?;
                // Few quick retries: a command that cannot reach its master within the timeout
                // answers 503 anyway, and retries queued past it only delay the recovery.
                let client = ClusterClient::builder(urls.iter().map(String::as_str));
                // Given certificates alone, the cluster client checks every node's certificate
                // whatever the URLs say, and no longer checks that they agree: the seeds' mode
                // (`#insecure` or not) is set first, once they agree on it.
                #[cfg(feature = "redis-tls")]
                let client = match self.tls.to_redis()? {
                    Some(certificates) => client.tls(tls_mode(&clients)?).certs(certificates),
                    None => client,
                };
                let client = client
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|e| {
                        StoreError::Config(format!(
                            "the Redis Cluster's nodes cannot be one cluster's ({e}): give them the same password, TLS and database"
                        ))
                    })?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout);
                let asked = Asked {
                    info: clients[0].get_connection_info().clone(),
                    config: connection_config(self.timeout),
                    by_thread: PerThread::new(),
                };
                let seeds = Seeds {
                    clients,
                    told: tokio::sync::Mutex::new(None),
                };
                let conn = client.get_pending_async_connection_with_config(config);
                Connection::Cluster(conn, Arc::new(seeds), Arc::new(asked))
            }
        };
        Ok(RedisStore {
            conn,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            max_record_bytes: self.max_record_bytes,
            fail_open: self.fail_open,
            replicas: self.replicas,
            waiters,
            claim: Arc::new(Script::new(CLAIM)),
            fenced: Arc::new(Script::new(FENCED)),
            kept: Arc::new(Script::new(KEPT)),
            checked: Arc::default(),
            short: Arc::default(),
        })
    }
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        StoreFuture::new(self.claimed(key, claim, now, self.replicas))
    }

    fn reclaim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        // Nothing runs on this claim, and the completion that follows waits for the replicas
        // itself (and is kept whatever they answer): a claim released for want of them would
        // leave an operation that ran without its record.
        StoreFuture::new(self.claimed(key, claim, now, None))
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        StoreFuture::new(async move {
            let mut link = Link::Shared(self.conn.clone());
            let cmd = redis::cmd("GET").arg(self.redis_key(key)).to_owned();
            let bytes: Option<Vec<u8>> = resent!(self, link, false, |link| {
                self.run(cmd.query_async(link)).await
            })?;
            match bytes {
                None => Ok(None),
                Some(bytes) => codec::live(&bytes, now),
            }
        })
    }

    fn kept_for<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a Completed,
    ) -> StoreFuture<'a, Option<Duration>> {
        StoreFuture::new(async move {
            let mut link = Link::Shared(self.conn.clone());
            // The value and its time left in one step: a key whose record expired and was
            // claimed anew since `record` was read holds another value, whose time says
            // nothing of `record`'s.
            let (value, ms): (Option<Vec<u8>>, i64) = self
                .run(self.eval(&mut link, &self.kept, &self.redis_key(key), &[]))
                .await?;
            let held = value.and_then(|bytes| codec::decode(&bytes).ok());
            let same = matches!(held, Some(Record::Completed(held)) if held == *record);
            // PTTL -1: a key without an expiry, which the store never writes.
            Ok(match (same, ms) {
                (false, _) => Some(Duration::ZERO),
                (true, -1) => None,
                (true, ms) => Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            })
        })
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::new(async move {
            let keep_for = lease_until.since(now) + LAPSED_CLAIM_GRACE;
            let until = lease_until.as_millis().to_string();
            let mut link = Link::Shared(self.conn.clone());
            (self.fenced(&mut link, key, token, "extend", until.as_bytes(), keep_for)).await
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::new(async move {
            let keep_for = record.expires_at.since(now);
            let value = self.encode(&Record::Completed(record), token)?;
            let mut link = self.link(self.replicas.is_some()).await?;
            let completed = self
                .fenced(&mut link, key, token, "complete", &value, keep_for)
                .await?;
            if let (true, Some(replicas)) = (completed, self.replicas) {
                match (self.acknowledged(&mut link, &self.redis_key(key), replicas)).await {
                    Ok(acknowledged) if acknowledged >= i64::from(replicas.count) => {}
                    Ok(acknowledged) => {
                        let message = "an idempotency record reached fewer Redis replicas than asked in time; a failover before it does could lose it, and a retry would run again";
                        crate::warn_when_due!(self.short, message, %key, acknowledged, replicas = replicas.count);
                    }
                    Err(error) => {
                        let message = "waiting for Redis replicas to acknowledge an idempotency record failed; a failover before they do could lose it";
                        crate::warn_when_due!(self.short, message, %key, %error);
                    }
                }
            }
            Ok(completed)
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        StoreFuture::new(async move {
            let mut link = Link::Shared(self.conn.clone());
            (self.fenced(
                &mut link,
                key,
                token,
                "release",
                b"",
                Duration::from_millis(1),
            ))
            .await
        })
    }

    fn fails_open(&self) -> bool {
        self.fail_open
    }

    fn max_record_bytes(&self) -> Option<usize> {
        // In the bytes the engine counts, a response's held bytes: Redis takes up to
        // `MAX_OVERHEAD` more for each record.
        Some(self.max_record_bytes.saturating_sub(codec::MAX_OVERHEAD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers `RedisStoreBuilder::max_record_bytes` states.
    /// Redis takes no value over 512 MiB (its `proto-max-bulk-len`), and refuses a larger one
    /// as a protocol error, not as a record too large: the store refuses a limit it could not
    /// keep, where such records failed their completion and were never recorded.
    #[test]
    fn a_record_limit_beyond_what_redis_takes_is_refused() {
        let limit = |max| {
            RedisStore::builder("redis://127.0.0.1:1/")
                .max_record_bytes(max)
                .build()
        };
        let err = limit((512 << 20) + 1).unwrap_err().to_string();
        assert!(err.contains("at most 536870912 bytes"), "{err}");
        assert!(limit(usize::MAX).is_err());
    }

    /// Zero would time every command out: each an outage, run unprotected when failing open.
    #[test]
    fn a_zero_command_timeout_is_refused() {
        let built = RedisStore::builder("redis://127.0.0.1:1/")
            .command_timeout(Duration::ZERO)
            .build();
        let err = built.unwrap_err().to_string();
        assert!(err.contains("command_timeout"), "{err}");
    }

    /// Without TLS in the build, a `rediss://` URL cannot be reached: it is refused when the
    /// store is built, naming the feature that adds TLS, where the refusal said to write
    /// `rediss://` for TLS, the very URL it refused.
    #[cfg(not(feature = "redis-tls"))]
    #[tokio::test]
    async fn without_tls_a_rediss_url_is_refused_naming_the_feature_that_adds_it() {
        let single = RedisStore::new("rediss://default:hunter2@cache.example:6380/0").err();
        let cluster = RedisStore::cluster(["rediss://cache.example:6380"])
            .build()
            .err();
        for err in [single, cluster] {
            let err = err.expect("refused");
            let text = err.to_string();
            assert!(matches!(err, StoreError::Config(_)), "{err:?}");
            assert!(
                text.contains("rediss://cache.example:6380") && text.contains("redis-tls"),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    /// The `redis` crate's rustls takes the process's default crypto provider as it
    /// connects, and rustls has none to pick by itself where an application builds a second
    /// provider in (every TLS connection then panicked): building a store on a `rediss://`
    /// URL installs ring's when the process has none.
    #[cfg(feature = "redis-tls")]
    #[tokio::test]
    async fn a_store_over_tls_installs_a_crypto_provider_for_the_process() {
        RedisStore::new("rediss://cache.example:6380").unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    /// Certificates the store cannot use are refused when it is built, naming the setting,
    /// rather than failing each connection later: on a URL without TLS, an authority list
    /// holding no certificate, a client key that is not one.
    #[cfg(feature = "redis-tls")]
    #[tokio::test]
    async fn tls_certificates_the_store_cannot_use_are_refused_naming_the_setting() {
        let refused = |builder: RedisStoreBuilder, says: &str| {
            let err = builder.build().expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, StoreError::Config(_)), "{err:?}");
            assert!(text.contains(says), "{says}: {text}");
        };
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        refused(
            RedisStore::builder("redis://cache.example:6379").tls_root_certificates(cert),
            "rediss://",
        );
        refused(
            RedisStore::cluster(["redis://cache.example:6379"]).tls_root_certificates(cert),
            "rediss://",
        );
        refused(
            RedisStore::builder("rediss://cache.example:6380").tls_root_certificates("none"),
            "tls_root_certificates holds no PEM certificate",
        );
        refused(
            RedisStore::builder("rediss://cache.example:6380")
                .tls_client_certificate(cert, "not a key"),
            "tls_client_certificate cannot be used (no items found)",
        );
    }

    /// A self-signed certificate of no one, which parses as an authority.
    #[cfg(feature = "redis-tls")]
    const AUTHORITY: &str = concat!(
        "-----BEGIN CERTIFICATE-----\n",
        "MIIBiTCCAS+gAwIBAgIULYQjbM6Z6GnV/4u9B86Q70xd+W8wCgYIKoZIzj0EAwIw\n",
        "GTEXMBUGA1UEAwwOaWRlbSB1bml0IHRlc3QwIBcNMjYxMjA3MDAwMDE5WhgPMjEy\n",
        "NjExMTMwMDAwMTlaMBkxFzAVBgNVBAMMDmlkZW0gdW5pdCB0ZXN0MFkwEwYHKoZI\n",
        "zj0CAQYIKoZIzj0DAQcDQgAETcJ68MEM1nXKfHK+CpOoAOrUCs3nSVQ1qw0nvwVA\n",
        "cRObgOKv2zXYCyEyuxU/iudzpUGlhN1Cje/8NphwlBb5mKNTMFEwHQYDVR0OBBYE\n",
        "FLoLw2zmKzC3d9tWyEPp+QAVpv+oMB8GA1UdIwQYMBaAFLoLw2zmKzC3d9tWyEPp\n",
        "+QAVpv+oMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAMU3fJ+X\n",
        "Aj2Iz6hhdmX9ZPztrMgF0osAnu0MlbYLI5M+AiBWjOCs1rgrkvmZjBAxBC7zulHF\n",
        "CfPhxdt+L36cz0et/A==\n",
        "-----END CERTIFICATE-----\n",
    );

    /// A URL that is not one, given with certificates, is refused as such, naming it, where
    /// the error blamed the certificates.
    #[cfg(feature = "redis-tls")]
    #[tokio::test]
    async fn a_url_that_is_not_one_is_refused_as_such_also_with_certificates_given() {
        for builder in [
            RedisStore::builder("rediss://cache.example:port/"),
            RedisStore::cluster(["rediss://cache.example:port/"]),
        ] {
            let err = builder
                .tls_root_certificates(AUTHORITY)
                .build()
                .expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("is not a Redis URL"), "{text}");
            assert!(!text.contains("certificates given"), "{text}");
        }
    }

    /// A cluster's seed nodes that disagree on checking certificates (`#insecure` on one,
    /// not on another) are refused when the store is built, as nodes that disagree on TLS
    /// are, also when the store is given certificates: the cluster client then took one mode
    /// for every node, whatever the URLs said.
    #[cfg(feature = "redis-tls")]
    #[tokio::test]
    async fn cluster_nodes_that_disagree_on_checking_certificates_are_refused_when_built() {
        let urls = [
            "rediss://a.example:6380/#insecure",
            "rediss://b.example:6380/",
        ];
        let bare = RedisStore::cluster(urls).build().expect_err("refused");
        let given = RedisStore::cluster(urls)
            .tls_root_certificates(AUTHORITY)
            .build()
            .expect_err("refused");
        for err in [bare, given] {
            assert!(matches!(err, StoreError::Config(_)), "{err:?}");
            assert!(err.to_string().contains("cannot be one cluster's"), "{err}");
        }
    }

    #[test]
    fn the_least_bound_is_a_record_without_its_response_at_its_widest() {
        assert_eq!(codec::MAX_OVERHEAD, 99);
        assert_eq!(least_record_bytes(), 113);
    }
}
