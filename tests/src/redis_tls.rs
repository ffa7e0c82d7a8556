//! A Redis over TLS for tests: our own `redis-server` with a TLS port on loopback, its
//! certificate signed by an authority made for the test with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, free_ports, skip_without_redis, wait_for_own, wait_until_whole};

/// Certificates made for one test: an authority, the server's certificate it signed (for
/// `localhost` and `127.0.0.1`; and one for `localhost` alone, for servers known by name), a
/// client's certificate it signed, and another authority, which signed none of them.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Result<Self, String> {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    &ec[..],
                    &[
                        "-x509",
                        "-days",
                        "2",
                        "-subj",
                        &format!("/CN=idem test {ca}"),
                    ],
                ],
                ca,
                &[
                    "basicConstraints=critical,CA:TRUE",
                    "keyUsage=critical,keyCertSign",
                ],
            )?;
        }
        let signed = ["-x509", "-days", "2", "-CA", "ca.crt", "-CAkey", "ca.key"];
        openssl(
            dir,
            &[&ec[..], &signed, &["-subj", "/CN=localhost"]],
            "server",
            &[
                "basicConstraints=critical,CA:FALSE",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
        )?;
        openssl(
            dir,
            &[&ec[..], &signed, &["-subj", "/CN=localhost"]],
            "named-server",
            &[
                "basicConstraints=critical,CA:FALSE",
                "subjectAltName=DNS:localhost",
            ],
        )?;
        openssl(
            dir,
            &[&ec[..], &signed, &["-subj", "/CN=idem test client"]],
            "client",
            &[
                "basicConstraints=critical,CA:FALSE",
                "extendedKeyUsage=clientAuth",
            ],
        )?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }
}

/// `openssl req` in `dir` with `args`, writing `<name>.key` and `<name>.crt`, the
/// certificate with the extensions `ext`.
fn openssl(dir: &Path, args: &[&[&str]], name: &str, ext: &[&str]) -> Result<(), String> {
    let mut command = Command::new("openssl");
    command.current_dir(dir).arg("req").args(args.concat());
    command.args([
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.crt"),
    ]);
    for ext in ext {
        command.args(["-addext", ext]);
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "openssl req for {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Whether a [`TlsRedis`] asks its clients for a certificate (`tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertificates {
    /// It takes clients without one.
    Optional,
    /// It refuses a client without one its authority signed.
    Required,
}

/// Our own `redis-server` on loopback, with a TLS port and a plain one (for looking at what
/// the store wrote), and the certificates made for it; or several, the masters of one Redis
/// Cluster over TLS. Replicas added later are nodes too, numbered after them.
pub struct TlsRedis {
    pki: Pki,
    nodes: Vec<Node>,
    /// The servers' certificate (`server`, or `named-server` for servers known by name).
    certificate: &'static str,
}

/// One `redis-server` of a [`TlsRedis`].
struct Node {
    tls_port: u16,
    plain_url: String,
    child: Option<Child>,
}

impl TlsRedis {
    /// Starts one, or `None` (the test should skip) when `redis-server` or `openssl` is
    /// missing, or the `redis-server` takes no TLS. With `IDEM_REQUIRE_REDIS=1`, that panics
    /// instead.
    pub fn start(clients: ClientCertificates) -> Option<Self> {
        Self::start_as(clients, None, false)
    }

    /// Starts one as a Redis Cluster of one master, which holds every slot, its cluster
    /// over TLS too (`tls-cluster yes`): a cluster client learns its TLS port, and reaches it
    /// by its IP address, which the certificate holds. `None` as [`start`](Self::start) says.
    pub fn start_cluster() -> Option<Self> {
        Self::start_cluster_of(1)
    }

    /// Starts a Redis Cluster of `masters` masters (no replicas), each holding its share of
    /// the slots, joined over TLS (`tls-cluster yes`: their bus, and the ports they announce
    /// and redirect to, are TLS ones). `None` as [`start`](Self::start) says.
    pub fn start_cluster_of(masters: usize) -> Option<Self> {
        Self::start_cluster_asking(masters, ClientCertificates::Optional)
    }

    /// Starts a Redis Cluster as [`start_cluster_of`](Self::start_cluster_of) does, whose
    /// masters ask clients for a certificate as `clients` says.
    pub fn start_cluster_asking(masters: usize, clients: ClientCertificates) -> Option<Self> {
        Self::start_as(clients, Some(masters), false)
    }

    /// Starts a Redis Cluster as [`start_cluster_of`](Self::start_cluster_of) does, whose
    /// masters tell clients their host name (`localhost`, which the certificate holds) rather
    /// than their address (`cluster-preferred-endpoint-type hostname`), as managed clusters
    /// do: a cluster client reaches each master it learns by that name, and checks its
    /// certificate against it (a certificate for `localhost` alone, which an address does not
    /// match).
    pub fn start_cluster_named(masters: usize) -> Option<Self> {
        Self::start_as(ClientCertificates::Optional, Some(masters), true)
    }

    fn start_as(clients: ClientCertificates, cluster: Option<usize>, named: bool) -> Option<Self> {
        // A port picked free may be taken before the server binds it: others are tried.
        let mut failed = String::new();
        for _ in 0..3 {
            match Self::spawn(clients, cluster, named) {
                Ok(redis) => return Some(redis),
                Err(e) => failed = e,
            }
        }
        skip_without_redis(&format!("no Redis over TLS could be started ({failed}; it needs openssl 3.0 or later, and a redis-server built with TLS)"));
        None
    }

    fn spawn(
        clients: ClientCertificates,
        cluster: Option<usize>,
        named: bool,
    ) -> Result<Self, String> {
        let count = cluster.unwrap_or(1);
        // A cluster's bus listens on its TLS port plus 10000.
        let tls_ports = free_ports(count, 10_000, 55_535);
        let dir = std::env::temp_dir().join(format!(
            "idem-redis-tls-{}-{}",
            std::process::id(),
            tls_ports[0]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Made before the certificates, so that dropping it removes the directory whatever
        // fails next.
        let mut redis = Self {
            pki: Pki { dir: dir.clone() },
            nodes: Vec::new(),
            certificate: if named { "named-server" } else { "server" },
        };
        redis.pki = Pki::make(&dir)?;
        let mut taken: Vec<u16> = tls_ports.iter().flat_map(|&p| [p, p + 10_000]).collect();
        for tls_port in tls_ports {
            let plain = free_port()?;
            if taken.contains(&plain) {
                return Err("the same free port twice".into());
            }
            taken.push(plain);
            let mut command = Command::new("redis-server");
            if cluster.is_some() {
                cluster_node(&mut command);
            }
            if named {
                command
                    .args(["--cluster-announce-hostname", "localhost"])
                    .args(["--cluster-preferred-endpoint-type", "hostname"]);
            }
            redis.spawn_node(command, clients, tls_port, plain)?;
        }
        if cluster.is_some() {
            redis.join()?;
        }
        Ok(redis)
    }

    /// Starts `command`, a `redis-server`, with the TLS port `tls_port` and the plain one
    /// `plain`, the server's certificate, and the authority for the certificates of its
    /// clients (`clients` says whether it asks for one) and of its master, and waits until it
    /// answers.
    fn spawn_node(
        &mut self,
        mut command: Command,
        clients: ClientCertificates,
        tls_port: u16,
        plain: u16,
    ) -> Result<(), String> {
        let auth = match clients {
            ClientCertificates::Optional => "no",
            ClientCertificates::Required => "yes",
        };
        let dir = self.pki.path(&tls_port.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let child = command
            .args(["--port", &plain.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-port", &tls_port.to_string()])
            .arg("--tls-cert-file")
            .arg(self.pki.path(&format!("{}.crt", self.certificate)))
            .arg("--tls-key-file")
            .arg(self.pki.path(&format!("{}.key", self.certificate)))
            .arg("--tls-ca-cert-file")
            .arg(self.pki.path("ca.crt"))
            .args(["--tls-auth-clients", auth])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.nodes.push(Node {
            tls_port,
            plain_url: format!("redis://127.0.0.1:{plain}/"),
            child: Some(child),
        });
        let node = self.nodes.last_mut().expect("pushed");
        let child = node.child.as_mut().expect("spawned");
        let started = wait_for_own(&node.plain_url, child, Duration::from_secs(10));
        if started.is_err() {
            // Not kept, so that a caller that tries another port numbers its nodes as if this
            // one had never been.
            if let Some(mut failed) = self.nodes.pop().and_then(|node| node.child) {
                let _ = failed.kill();
                let _ = failed.wait();
            }
        }
        started
    }

    /// Starts one more node, `command` (a `redis-server` with its role's arguments), on ports
    /// picked free, with the server's certificate: its number. A port picked free may be taken
    /// before the server binds it, so others are tried, three times in all. A cluster node
    /// (`bus`) has its bus on its TLS port plus 10000, which must be free too.
    ///
    /// # Panics
    /// When none of the three starts.
    fn add_node(&mut self, what: &str, bus: bool, command: impl Fn() -> Command) -> usize {
        let mut failed = String::new();
        for _ in 0..3 {
            let tls_port = match bus {
                true => free_ports(1, 10_000, 55_535)[0],
                false => free_port().expect("a free port"),
            };
            let plain = free_port().expect("a free port");
            let taken = |port| self.nodes.iter().any(|n| n.tls_port == port);
            let on_bus = bus && plain == tls_port + 10_000;
            if tls_port == plain || on_bus || taken(tls_port) || taken(plain) {
                continue;
            }
            match self.spawn_node(command(), ClientCertificates::Optional, tls_port, plain) {
                Ok(()) => return self.nodes.len() - 1,
                Err(e) => failed = e,
            }
        }
        panic!("start {what}: {failed}")
    }

    /// Starts a replica of the first server, which it reaches over TLS (`tls-replication
    /// yes`), and waits until it is in sync: node `n` of [`query_on`](Self::query_on), `n` the
    /// number returned.
    ///
    /// # Panics
    /// When it does not start or sync within 10 s.
    pub fn add_replica(&mut self) -> usize {
        let master = self.nodes[0].tls_port.to_string();
        let replica = self.add_node("a replica", false, || {
            let mut command = Command::new("redis-server");
            (command.args(["--tls-replication", "yes"])).args([
                "--replicaof",
                "127.0.0.1",
                &master,
            ]);
            command
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = self.query_on(replica, redis::cmd("INFO").arg("replication"));
            if info.contains("master_link_status:up") {
                return replica;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replica syncs over TLS: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a replica of the cluster's master `master`, which joins the cluster over TLS as
    /// the masters did (`tls-cluster yes`) and syncs from it over TLS (`tls-replication yes`),
    /// and waits until it holds the master's data and every other node knows it as the
    /// master's replica (so that a failover can vote it in): node `n` of
    /// [`query_on`](Self::query_on), `n` the number returned.
    ///
    /// # Panics
    /// When it does not start, join or sync within 30 s, or a node added before it was
    /// stopped.
    pub fn add_cluster_replica(&mut self, master: usize) -> usize {
        let others = self.nodes.len();
        let replica = self.add_node("a cluster replica", true, || {
            let mut command = Command::new("redis-server");
            cluster_node(&mut command).args(["--tls-replication", "yes"]);
            command
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let within = |what: &str, state: &str| {
            assert!(std::time::Instant::now() < deadline, "{what}: {state}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut meet = redis::cmd("CLUSTER");
        meet.arg("MEET")
            .arg("127.0.0.1")
            .arg(self.nodes[master].tls_port);
        self.query_on::<()>(replica, &mut meet);
        let master_id = self.node_id(master);
        loop {
            let nodes: String = self.query_on(replica, redis::cmd("CLUSTER").arg("NODES"));
            if nodes.contains(&master_id) {
                break;
            }
            within("the replica meets its master over TLS", &nodes);
        }
        let mut replicate = redis::cmd("CLUSTER");
        replicate.arg("REPLICATE").arg(&master_id);
        self.query_on::<()>(replica, &mut replicate);
        let replica_id = self.node_id(replica);
        loop {
            let info: String = self.query_on(replica, redis::cmd("INFO").arg("replication"));
            let known = (0..others).all(|node| {
                let nodes: String = self.query_on(node, redis::cmd("CLUSTER").arg("NODES"));
                (nodes.lines()).any(|l| l.starts_with(&replica_id) && l.contains(&master_id))
            });
            if known && info.contains("master_link_status:up") {
                return replica;
            }
            within("the replica syncs over TLS, known to every node", &info);
        }
    }

    /// Stops node `node`, as a crash would.
    pub fn stop(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Joins the masters over TLS (`CLUSTER MEET` on their TLS ports, whose bus is theirs
    /// plus 10000), gives each its share of the slots, and waits until every master says the
    /// cluster is ok and knows every other.
    fn join(&self) -> Result<(), String> {
        let masters = self.nodes.len();
        let mut conns = Vec::new();
        for node in &self.nodes {
            let client = redis::Client::open(node.plain_url.as_str()).map_err(|e| e.to_string())?;
            conns.push(client.get_connection().map_err(|e| e.to_string())?);
        }
        for node in &self.nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.tls_port)
                .exec(&mut conns[0])
                .map_err(|e| format!("CLUSTER MEET: {e}"))?;
        }
        let share = 16384 / masters;
        for (node, conn) in conns.iter_mut().enumerate() {
            let first = node * share;
            let last = if node + 1 == masters {
                16383
            } else {
                first + share - 1
            };
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .exec(conn)
                .map_err(|e| format!("CLUSTER ADDSLOTSRANGE: {e}"))?;
        }
        let urls: Vec<String> = self.nodes.iter().map(|n| n.plain_url.clone()).collect();
        wait_until_whole(&urls)
    }

    /// The URL of its TLS port, by the name its certificate holds: `rediss://localhost:<port>/`
    /// (a cluster's first master's).
    pub fn url(&self) -> String {
        self.url_of(0)
    }

    /// The URL of node `node`'s TLS port, as [`url`](Self::url) names it.
    pub fn url_of(&self, node: usize) -> String {
        format!("rediss://localhost:{}/", self.nodes[node].tls_port)
    }

    /// The TLS port of node `node`, the one its cluster announces and redirects to.
    pub fn tls_port(&self, node: usize) -> u16 {
        self.nodes[node].tls_port
    }

    /// The certificate of the authority that signed the server's and the client's (PEM).
    pub fn authority(&self) -> Vec<u8> {
        self.pki.read("ca.crt")
    }

    /// The certificate of an authority that signed neither (PEM).
    pub fn other_authority(&self) -> Vec<u8> {
        self.pki.read("other-ca.crt")
    }

    /// A client certificate the authority signed, and its private key (PEM).
    pub fn client_certificate(&self) -> (Vec<u8>, Vec<u8>) {
        (self.pki.read("client.crt"), self.pki.read("client.key"))
    }

    /// The server's certificate and its private key (PEM).
    pub fn server_certificate(&self) -> (Vec<u8>, Vec<u8>) {
        (self.pki.read("server.crt"), self.pki.read("server.key"))
    }

    /// Runs one command on its plain port (a cluster's first master's).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        self.query_on(0, cmd)
    }

    /// Runs one command on node `node`'s plain port.
    pub fn query_on<T: redis::FromRedisValue>(&self, node: usize, cmd: &mut redis::Cmd) -> T {
        let client = redis::Client::open(self.nodes[node].plain_url.as_str()).expect("plain URL");
        cmd.query(&mut client.get_connection().expect("connect to test Redis"))
            .expect("Redis command")
    }

    /// The cluster node id of node `node`.
    pub fn node_id(&self, node: usize) -> String {
        self.query_on(node, redis::cmd("CLUSTER").arg("MYID"))
    }
}

/// `command`, a `redis-server`, as a node of a cluster joined over TLS (`tls-cluster yes`: its
/// bus, and the ports it announces and redirects to, are TLS ones), which takes a node that
/// answers nothing for a second for down.
fn cluster_node(command: &mut Command) -> &mut Command {
    command
        .args(["--cluster-enabled", "yes", "--tls-cluster", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", "1000"])
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.pki.dir);
    }
}
