//! A TCP proxy in front of Redis that can lose one answer: the command runs, and the
//! connection breaks before its answer reaches the client, as when a network fails between
//! them.
//!
//! It reads RESP's framing of commands (an array of bulk strings, as clients send them), so
//! the connection must be in plain text.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::proxy::{address_of, listen};

/// The proxy: connections to [`LosingRedisProxy::url`] go on to the upstream server.
pub struct LosingRedisProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Which command's answer to lose, by its arguments (its name first).
type Marked = Box<dyn Fn(&[&[u8]]) -> bool + Send>;

#[derive(Default)]
struct Shared {
    /// The next command whose answer is lost, once armed.
    armed: Mutex<Option<Marked>>,
    lost: AtomicUsize,
}

impl LosingRedisProxy {
    /// A proxy to the Redis at `url` (`redis://host[:port]/`, without a password: the
    /// proxy's own [`url`](Self::url) carries none).
    pub fn in_front_of(url: &str) -> Self {
        Self::start(address_of(url, 6379))
    }

    /// A proxy to the Redis at `upstream` on a free loopback port.
    pub fn start(upstream: SocketAddr) -> Self {
        let shared = Arc::new(Shared::default());
        let addr = listen(upstream, Arc::clone(&shared), requests, answers);
        Self { addr, shared }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A `redis://` URL through it.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Loses the answer to the next command whose arguments (its name first) `marked` says:
    /// the command goes on to Redis, which runs it, and the connection is closed once its
    /// answer comes back, with none of it passed on.
    pub fn lose_answer_to(&self, marked: impl Fn(&[&[u8]]) -> bool + Send + 'static) {
        *self.shared.armed.lock().unwrap() = Some(Box::new(marked));
    }

    /// Cancels the loss [`lose_answer_to`](Self::lose_answer_to) armed, if no command has met
    /// it yet.
    pub fn disarm(&self) {
        *self.shared.armed.lock().unwrap() = None;
    }

    /// How many answers it has lost.
    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

/// Arms every proxy of `proxies` (one per master of a cluster) to lose one answer among them
/// all: that to the first command `marked` says that any of them meets. (A command a
/// cluster client sends again after a lost answer may go to another master first, which
/// redirects it.)
pub fn lose_answer_among(
    proxies: &[LosingRedisProxy],
    marked: impl Fn(&[&[u8]]) -> bool + Send + Sync + 'static,
) {
    let (marked, spent) = (Arc::new(marked), Arc::new(AtomicBool::new(false)));
    for proxy in proxies {
        let (marked, spent) = (Arc::clone(&marked), Arc::clone(&spent));
        proxy.lose_answer_to(move |arguments| {
            marked(arguments) && !spent.swap(true, Ordering::SeqCst)
        });
    }
}

/// Client to server, command by command, arming `losing` before the marked command goes on.
fn requests(mut client: TcpStream, mut server: TcpStream, shared: &Shared, losing: &AtomicBool) {
    let (mut buf, mut chunk) = (Vec::new(), [0; 8192]);
    loop {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some((len, arguments)) = command(&buf) {
            let mut armed = shared.armed.lock().unwrap();
            if armed.as_ref().is_some_and(|marked| marked(&arguments)) {
                *armed = None;
                losing.store(true, Ordering::SeqCst);
            }
            drop(armed);
            let message: Vec<u8> = buf.drain(..len).collect();
            if server.write_all(&message).is_err() {
                return;
            }
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// Server to client; once `losing`, drops the next answer and closes both connections.
fn answers(mut server: TcpStream, mut client: TcpStream, shared: &Shared, losing: &AtomicBool) {
    let mut chunk = [0; 8192];
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if losing.load(Ordering::SeqCst) {
            shared.lost.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        if client.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// The length of the whole command at the start of `buf` (`*<n>\r\n`, then `n` times
/// `$<len>\r\n<bytes>\r\n`) and its arguments, once all of it is there.
fn command(buf: &[u8]) -> Option<(usize, Vec<&[u8]>)> {
    let (count, mut at) = number(buf, b'*')?;
    let mut arguments = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, start) = number(&buf[at..], b'$')?;
        let start = at + start;
        let end = start + len;
        arguments.push(buf.get(start..end)?);
        if buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        at = end + 2;
    }
    Some((at, arguments))
}

/// The number after `tag` on the line at the start of `buf`, and where the line ends.
fn number(buf: &[u8], tag: u8) -> Option<(usize, usize)> {
    if *buf.first()? != tag {
        return None;
    }
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&buf[1..end]).ok()?.parse().ok()?;
    Some((n, end + 2))
}
