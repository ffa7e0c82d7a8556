//! A Redis over TLS for tests: our own `redis-server` with a TLS port on loopback, its
//! certificate signed by an authority made for the test with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, free_ports, skip_without_redis, wait_for_own};

/// Certificates made for one test: an authority, the server's certificate it signed (for
/// `localhost` and `127.0.0.1`), a client's certificate it signed, and another authority,
/// which signed none of them.
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
/// the store wrote), and the certificates made for it.
pub struct TlsRedis {
    pki: Pki,
    tls_port: u16,
    plain_url: String,
    child: Option<Child>,
}

impl TlsRedis {
    /// Starts one, or `None` (the test should skip) when `redis-server` or `openssl` is
    /// missing, or the `redis-server` takes no TLS. With `IDEM_REQUIRE_REDIS=1`, that panics
    /// instead.
    pub fn start(clients: ClientCertificates) -> Option<Self> {
        Self::start_as(clients, false)
    }

    /// Starts one as a Redis Cluster of one master, which holds every slot, its cluster
    /// over TLS too (`tls-cluster yes`): a cluster client learns its TLS port, and reaches it
    /// by its IP address, which the certificate holds. `None` as [`start`](Self::start) says.
    pub fn start_cluster() -> Option<Self> {
        Self::start_as(ClientCertificates::Optional, true)
    }

    fn start_as(clients: ClientCertificates, cluster: bool) -> Option<Self> {
        // A port picked free may be taken before the server binds it: others are tried.
        let mut failed = String::new();
        for _ in 0..3 {
            match Self::spawn(clients, cluster) {
                Ok(redis) => return Some(redis),
                Err(e) => failed = e,
            }
        }
        skip_without_redis(&format!("no Redis over TLS could be started ({failed})"));
        None
    }

    fn spawn(clients: ClientCertificates, cluster: bool) -> Result<Self, String> {
        let plain = free_port()?;
        // A cluster's bus listens on its TLS port plus 10000.
        let tls_port = free_ports(1, 10_000, 55_535)[0];
        if plain == tls_port || plain == tls_port + 10_000 {
            return Err("the same free port twice".into());
        }
        let dir =
            std::env::temp_dir().join(format!("idem-redis-tls-{}-{tls_port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Made before the certificates, so that dropping it removes the directory whatever
        // fails next.
        let mut redis = Self {
            pki: Pki { dir: dir.clone() },
            tls_port,
            plain_url: format!("redis://127.0.0.1:{plain}/"),
            child: None,
        };
        redis.pki = Pki::make(&dir)?;
        let auth = match clients {
            ClientCertificates::Optional => "no",
            ClientCertificates::Required => "yes",
        };
        let mut command = Command::new("redis-server");
        if cluster {
            command
                .args(["--cluster-enabled", "yes", "--tls-cluster", "yes"])
                .args(["--cluster-config-file", "nodes.conf"]);
        }
        let child = command
            .args(["--port", &plain.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-port", &tls_port.to_string()])
            .arg("--tls-cert-file")
            .arg(redis.pki.path("server.crt"))
            .arg("--tls-key-file")
            .arg(redis.pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(redis.pki.path("ca.crt"))
            .args(["--tls-auth-clients", auth])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let child = redis.child.insert(child);
        wait_for_own(&redis.plain_url, child, Duration::from_secs(10))?;
        if cluster {
            redis.hold_every_slot()?;
        }
        Ok(redis)
    }

    /// Assigns every slot to the one master, and waits until its cluster says it is ok.
    fn hold_every_slot(&self) -> Result<(), String> {
        let client = redis::Client::open(self.plain_url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client.get_connection().map_err(|e| e.to_string())?;
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .exec(&mut conn)
            .map_err(|e| format!("CLUSTER ADDSLOTSRANGE: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut conn)
                .map_err(|e| format!("CLUSTER INFO: {e}"))?;
            if info.contains("cluster_state:ok") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the cluster of one master was not ok within 10 s".into())
    }

    /// The URL of its TLS port, by the name its certificate holds: `rediss://localhost:<port>/`.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}/", self.tls_port)
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

    /// Runs one command on its plain port.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let client = redis::Client::open(self.plain_url.as_str()).expect("plain URL");
        cmd.query(&mut client.get_connection().expect("connect to test Redis"))
            .expect("Redis command")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pki.dir);
    }
}
