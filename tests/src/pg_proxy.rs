//! A TCP proxy in front of PostgreSQL that can lose one answer: the statement runs to its end
//! (committed, when it commits), and the connection breaks before its answer reaches the
//! client, as when a network fails between a commit and its answer.
//!
//! It reads the protocol's framing (a type byte and a length per message, after the untyped
//! start-up messages), so the connection must be in plain text (`sslmode=disable`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::proxy::{address_of, authority, listen};

/// The proxy: connections to [`LosingProxy::addr`] go on to the upstream server.
pub struct LosingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The text the next statement whose answer is lost contains, once armed.
    armed: Mutex<Option<Vec<u8>>>,
    lost: AtomicUsize,
}

/// The code of the untyped message asking for TLS before start-up.
const SSL_REQUEST: i32 = 80_877_103;

impl LosingProxy {
    /// A proxy to `upstream` on a free loopback port.
    pub fn start(upstream: SocketAddr) -> Self {
        let shared = Arc::new(Shared::default());
        let addr = listen(upstream, Arc::clone(&shared), requests, answers);
        Self { addr, shared }
    }

    /// A proxy to the server at the PostgreSQL URL `url`, and `url` through it (in plain
    /// text, as the proxy reads the protocol).
    pub fn in_front_of(url: &str) -> (Self, String) {
        let proxy = Self::start(address_of(url, 5432));
        let through = through(url, proxy.addr);
        (proxy, through)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loses the answer of the next statement whose text contains `marker` that runs (its
    /// `Execute`, after the `Parse` that names the text): the statement goes on to Postgres,
    /// which runs it and its implicit commit to the end (its `ReadyForQuery`), and the
    /// connection is then closed with none of that answer passed on.
    pub fn lose_answer_to(&self, marker: &str) {
        *self.shared.armed.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    /// Cancels the loss [`lose_answer_to`](Self::lose_answer_to) armed, if no statement has
    /// met it yet.
    pub fn disarm(&self) {
        *self.shared.armed.lock().unwrap() = None;
    }

    /// How many answers it has lost.
    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

/// `url` through `proxy`, in plain text (the proxy reads the protocol).
fn through(url: &str, proxy: SocketAddr) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let settings: Vec<&str> = query
        .split('&')
        .filter(|s| !s.is_empty() && !s.starts_with("sslmode="))
        .chain(["sslmode=disable"])
        .collect();
    let base = base.replacen(authority(url), &proxy.to_string(), 1);
    format!("{base}?{}", settings.join("&"))
}

/// Client to server, message by message, arming `losing` before the `Execute` of the marked
/// statement goes on.
fn requests(mut client: TcpStream, mut server: TcpStream, shared: &Shared, losing: &AtomicBool) {
    let (mut buf, mut chunk) = (Vec::new(), [0; 8192]);
    let (mut startup, mut marked) = (true, false);
    loop {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(len) = message_len(&buf, startup) {
            let message: Vec<u8> = buf.drain(..len).collect();
            if startup {
                // An SSL request is followed by the start-up message, also untyped.
                startup = len == 8
                    && i32::from_be_bytes(message[4..8].try_into().unwrap()) == SSL_REQUEST;
            } else {
                let mut armed = shared.armed.lock().unwrap();
                match message[0] {
                    b'P' if armed.as_deref().is_some_and(|marker| {
                        message.windows(marker.len()).any(|w| w == marker)
                    }) =>
                    {
                        marked = true;
                    }
                    b'E' if marked => {
                        *armed = None;
                        marked = false;
                        losing.store(true, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            if server.write_all(&message).is_err() {
                return;
            }
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// Server to client; once `losing`, holds the answer back until Postgres is ready for the next
/// query (the statement and its commit have run), then closes both connections.
fn answers(mut server: TcpStream, mut client: TcpStream, shared: &Shared, losing: &AtomicBool) {
    let (mut held, mut chunk) = (Vec::new(), [0; 8192]);
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !losing.load(Ordering::SeqCst) {
            if client.write_all(&chunk[..n]).is_err() {
                break;
            }
            continue;
        }
        held.extend_from_slice(&chunk[..n]);
        while let Some(len) = message_len(&held, false) {
            let message: Vec<u8> = held.drain(..len).collect();
            if message[0] == b'Z' {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// The length of the whole message at the start of `buf`, once all of it is there: an
/// untyped one (`startup`) is its length field, a typed one its type byte and length field.
fn message_len(buf: &[u8], startup: bool) -> Option<usize> {
    let (at, extra) = if startup { (0, 0) } else { (1, 1) };
    let field = buf.get(at..at + 4)?;
    let len = usize::try_from(i32::from_be_bytes(field.try_into().ok()?)).ok()? + extra;
    (buf.len() >= len).then_some(len)
}
