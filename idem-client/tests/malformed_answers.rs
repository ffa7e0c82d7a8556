//! Answers no retry mends: a server whose answer is not HTTP, one that switches protocols
//! unasked, and one that refuses the TLS handshake. Each stops at once.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem_client::{Client, Error};

/// A server on a free loopback port that answers every connection with `answer` once it has
/// read what the client sent first: its address, and a count of its connections.
fn answering(answer: &'static [u8]) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicU32::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let mut first = [0; 4096];
            let _ = stream.read(&mut first);
            let _ = stream.write_all(answer);
        }
    });
    (addr, connections)
}

/// The error of one operation sent to `url` by a client that would retry it four times.
async fn failure(url: String) -> Error {
    Client::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(1))
        .build()
        .unwrap()
        .post(url)
        .body("{}")
        .send()
        .await
        .unwrap_err()
}

/// The request was sent and may have run, but what came back is not HTTP (a status line no
/// parser reads): the same server answers a retry alike, so the client stops with the key.
#[tokio::test]
async fn an_answer_that_is_not_http_stops_with_the_key() {
    let (addr, connections) = answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
    let err = failure(format!("http://{addr}/v1/calls")).await;
    assert!(matches!(err, Error::InvalidAnswer { .. }), "{err}");
    assert!(err.key().is_some(), "the operation may have run: {err}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "retried: {err}");
}

/// A `101 Switching Protocols` to a POST that asked for no upgrade leaves HTTP on that
/// connection: it is no answer of the operation, which may have run, and the same server
/// answers a retry alike. The client stops with the key, where it handed the 101 back as the
/// operation's answer.
#[tokio::test]
async fn switching_protocols_unasked_is_no_answer_and_stops_with_the_key() {
    let (addr, connections) = answering(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let err = failure(format!("http://{addr}/v1/calls")).await;
    assert!(matches!(err, Error::Informational { .. }), "{err}");
    assert!(err.key().is_some(), "the operation may have run: {err}");
    assert!(err.to_string().contains("101"), "{err}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "retried: {err}");
}

/// A server that refuses the TLS handshake (here with a fatal `handshake_failure` alert) was
/// sent nothing, and refuses a retry alike: the client stops at once, keyless.
#[cfg(feature = "rustls")]
#[tokio::test]
async fn a_refused_tls_handshake_stops_at_once() {
    let (addr, connections) = answering(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    let err = failure(format!("https://{addr}/v1/calls")).await;
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(err.key().is_none(), "nothing was sent: {err}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "retried: {err}");
}
