//! A loopback TCP proxy that counts round trips, whatever the protocol: put it between a
//! client (a store's connection pool) and its server (Postgres, Redis), and it reports how
//! many times the client spoke and then waited for an answer.
//!
//! A turn is the bytes a client sends before the server answers, with the answer: on each
//! connection, a turn begins with the client's first bytes and with every client bytes that
//! follow server bytes. Bytes are counted as the proxy reads them, so a reply the server
//! sends in several packets, or a request written in several writes, is still one turn;
//! requests the client pipelines before any answer comes back count as one turn too, which
//! is what a round trip is.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One turn: what the client sent, and how many bytes the server answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// The connection it took place on, numbered from 0 in the order they were accepted.
    pub connection: usize,
    /// The client's bytes.
    pub sent: Vec<u8>,
    /// How many bytes the server answered.
    pub answered: usize,
}

/// The proxy, on a free port of 127.0.0.1; it stops when dropped.
pub struct RoundTrips {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    seen: Arc<Mutex<Seen>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    turns: Vec<Turn>,
    /// Per connection: whether the last bytes went from server to client (or none yet).
    answered: Vec<bool>,
    /// The open turn of each connection, as an index into `turns`, if it was not reset.
    open: Vec<Option<usize>>,
    last: Option<Instant>,
}

impl Seen {
    fn client(&mut self, connection: usize, bytes: &[u8]) {
        self.last = Some(Instant::now());
        let open = match self.open[connection] {
            Some(turn) if !self.answered[connection] => Some(turn),
            _ => None,
        };
        match open {
            Some(turn) => self.turns[turn].sent.extend_from_slice(bytes),
            None => {
                self.open[connection] = Some(self.turns.len());
                self.turns.push(Turn {
                    connection,
                    sent: bytes.to_vec(),
                    answered: 0,
                });
            }
        }
        self.answered[connection] = false;
    }

    fn server(&mut self, connection: usize, bytes: usize) {
        self.last = Some(Instant::now());
        self.answered[connection] = true;
        if let Some(turn) = self.open[connection] {
            self.turns[turn].answered += bytes;
        }
    }
}

impl RoundTrips {
    /// A proxy to `upstream` (a server on 127.0.0.1), on a thread of its own, so that it
    /// serves clients on any runtime.
    ///
    /// # Panics
    /// When no loopback port is free.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let addr = listener.local_addr().expect("the proxy's address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&seen);
        let upstream = Arc::new(Mutex::new(upstream));
        let target = Arc::clone(&upstream);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("a tokio listener");
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let connection = {
                            let mut seen = shared.lock().unwrap();
                            seen.answered.push(false);
                            seen.open.push(None);
                            seen.answered.len() - 1
                        };
                        let upstream = *target.lock().unwrap();
                        tokio::spawn(forward(client, upstream, connection, Arc::clone(&shared)));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            upstream,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends the connections opened from now on to `upstream`, and leaves those open where
    /// they go: an address that moves to another server, as a DNS name or a virtual IP that a
    /// failover gives to the new primary.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// The turns since the start or the last [`reset`](Self::reset).
    pub fn turns(&self) -> Vec<Turn> {
        self.seen.lock().unwrap().turns.clone()
    }

    /// How many round trips since the start or the last reset.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().turns.len()
    }

    /// Forgets the turns seen so far. Call it while the wire is quiet (after
    /// [`settle`](Self::settle)): the answer to a turn under way is not counted, and what its
    /// client still sends before that answer counts as a turn of its own.
    pub fn reset(&self) {
        let mut seen = self.seen.lock().unwrap();
        seen.turns.clear();
        seen.open.iter_mut().for_each(|open| *open = None);
        // A connection mid-turn keeps its direction: its next client bytes after an answer
        // begin a counted turn, and the rest of the current one is not counted.
        seen.answered
            .iter_mut()
            .for_each(|answered| *answered = true);
    }

    /// How many connections clients have opened through the proxy.
    pub fn connections(&self) -> usize {
        self.seen.lock().unwrap().answered.len()
    }

    /// Waits until no byte has gone through for `quiet` (work a client does after it
    /// answered its caller, such as testing a connection it returns to its pool, has then
    /// happened), at most 5 s.
    pub async fn settle(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let last = self.seen.lock().unwrap().last;
            let idle = last.map_or(quiet, |at| at.elapsed());
            if idle >= quiet || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(quiet - idle).await;
        }
    }
}

impl Drop for RoundTrips {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies both ways between `client` and `upstream` until either side closes, telling
/// `seen` of every read.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    connection: usize,
    seen: Arc<Mutex<Seen>>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let up = async {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.lock().unwrap().client(connection, &buf[..n]);
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.lock().unwrap().server(connection, n);
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server that answers each line with the line, in two writes.
    fn echo() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { return };
                        let _ = out.write_all(line.as_bytes());
                        std::thread::sleep(Duration::from_millis(5));
                        let _ = out.write_all(b"\n");
                    }
                });
            }
        });
        addr
    }

    async fn ask(conn: &mut TcpStream, lines: &[&str]) {
        let expected: usize = lines.iter().map(|l| l.len() + 1).sum();
        // One write, so that the server sees every line before it answers any.
        let request: String = lines.iter().map(|l| format!("{l}\n")).collect();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut got = 0;
        let mut buf = [0; 256];
        while got < expected {
            got += conn.read(&mut buf).await.unwrap();
        }
    }

    #[tokio::test]
    async fn each_question_answered_is_one_turn_and_pipelined_questions_are_one() {
        let proxy = RoundTrips::start(echo());
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        ask(&mut conn, &["a"]).await;
        ask(&mut conn, &["b"]).await;
        assert_eq!(proxy.count(), 2);
        // Two requests written before any answer is read: one round trip.
        ask(&mut conn, &["c", "d"]).await;
        proxy.settle(Duration::from_millis(50)).await;
        assert_eq!(proxy.count(), 3);
        assert_eq!(proxy.turns()[2].sent, b"c\nd\n");
        assert_eq!(proxy.turns()[2].answered, 4);
    }

    #[tokio::test]
    async fn a_reset_forgets_what_was_seen_and_connections_are_told_apart() {
        let proxy = RoundTrips::start(echo());
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        ask(&mut first, &["a"]).await;
        proxy.reset();
        assert_eq!(proxy.count(), 0);
        ask(&mut second, &["b"]).await;
        ask(&mut first, &["c"]).await;
        let turns = proxy.turns();
        assert_eq!(turns.len(), 2);
        assert_eq!((turns[0].connection, &turns[0].sent[..]), (1, &b"b\n"[..]));
        assert_eq!((turns[1].connection, &turns[1].sent[..]), (0, &b"c\n"[..]));
        assert_eq!(proxy.connections(), 2);
    }
}
