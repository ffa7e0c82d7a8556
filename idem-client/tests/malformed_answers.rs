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

/// A handshake the server refuses after an earlier attempt was sent (a server restarted with a
/// certificate the client does not take, a balancer's node whose TLS is broken) stops the
/// operation, but the first attempt reached the server and may have run: the error keeps the
/// key, where it was a transport error without one ("nothing was sent"), and a caller that
/// sent the operation again under a new key ran it twice.
#[cfg(feature = "rustls")]
#[tokio::test]
async fn a_refused_tls_handshake_after_an_attempt_was_sent_keeps_the_key() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    // A self-signed certificate for 127.0.0.1 (P-256, valid until 2126).
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUcpTeBmemlS0xY1bFZvvm8RhARNEwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNjE1NDQwMVoYDzIxMjYxMTEy
MTU0NDAxWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATEkOggk95bW7KWBsJnEVnbB02bSHB5RkYMBsR8AN0qm1ZkJBadfLmD
JL66alYbJ8tRvodetFlL8qPFmMCylnIYo28wbTAdBgNVHQ4EFgQUUpIYn1DCPD5I
2B0I3cJ7ljlOBlowHwYDVR0jBBgwFoAUUpIYn1DCPD5I2B0I3cJ7ljlOBlowDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSAAwRQIgCKQDfCI7qMBLkGYzQwGJClIdVDIj8pNL+eZUQ+9ghq0CIQC3
WLUkc1Rw2+nf6B8MHjGVXQeefQ17uBZo41hNiIjTOg==
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzgcr8g58EFE/w+8c
6VlgsWXnd5oT1mELtu8KL6q0yCShRANCAATEkOggk95bW7KWBsJnEVnbB02bSHB5
RkYMBsR8AN0qm1ZkJBadfLmDJL66alYbJ8tRvodetFlL8qPFmMCylnIY
-----END PRIVATE KEY-----
";
    #[allow(deprecated)] // ring's provider: no post-quantum key exchange, none needed here
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap(),
            )
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU32::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            if n == 0 {
                // The first connection: a handshake, the whole request read, then closed
                // with no answer. The request reached the server, which may run it.
                let connection = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let (mut got, mut buf) = (Vec::new(), [0; 4096]);
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => got.extend_from_slice(&buf[..read]),
                    }
                }
                if got.starts_with(b"POST /v1/calls") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            } else {
                // Every later connection: a fatal handshake_failure alert.
                let mut first = [0; 4096];
                let _ = stream.read(&mut first);
                let _ = stream.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
            }
        }
    });
    // The caller's own reqwest client, which takes the server's certificate.
    let own = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let client = Client::builder()
        .http_client(own)
        .initial_backoff(Duration::from_millis(1))
        .build()
        .unwrap();
    let err = client
        .post(format!("https://{addr}/v1/calls"))
        .idempotency_key("call-7")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "the first attempt was sent: {err}"
    );
    assert_eq!(
        err.key(),
        Some("call-7"),
        "the operation may have run: {err:?}"
    );
}

/// An `https://` URL given to a reqwest client of the caller's that has no TLS is a URL
/// reqwest cannot send to: nothing is sent, and no retry mends it. It is refused at once as
/// `Error::Transport`, as the same URL is with a client of the crate's own ("https URLs need
/// TLS"), where it was tried `max_attempts` times and given up with a key "to get its
/// outcome" of an operation that never left the process.
#[cfg(not(feature = "rustls"))]
#[tokio::test]
async fn an_https_url_through_a_caller_s_client_without_tls_is_refused_at_once() {
    let (addr, connections) = answering(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let own = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let err = Client::builder()
        .http_client(own)
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(1))
        .build()
        .unwrap()
        .post(format!("https://{addr}/v1/calls"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
    assert!(matches!(err, Error::Transport(_)), "retried: {err}");
    assert!(err.key().is_none(), "nothing was sent: {err}");
}
