//! What the test proxies share: a listener on a free loopback port that relays each
//! connection to an upstream server, one thread each way, the two sharing whether the
//! answer under way is to be lost.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;

/// One direction of a relayed connection: from the first stream to the second, with the
/// proxy's `shared` state and the connection's `losing` flag.
pub(crate) type Direction<T> = fn(TcpStream, TcpStream, &T, &AtomicBool);

/// Listens on a free loopback port and relays every connection to `upstream`: `requests`
/// from the client to the server, `answers` back. Its address.
pub(crate) fn listen<T: Send + Sync + 'static>(
    upstream: SocketAddr,
    shared: Arc<T>,
    requests: Direction<T>,
    answers: Direction<T>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("the proxy's address");
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if let Ok(server) = TcpStream::connect(upstream) {
                relay(client, server, Arc::clone(&shared), requests, answers);
            }
        }
    });
    addr
}

/// Relays one connection both ways, on two threads.
fn relay<T: Send + Sync + 'static>(
    client: TcpStream,
    server: TcpStream,
    shared: Arc<T>,
    requests: Direction<T>,
    answers: Direction<T>,
) {
    let losing = Arc::new(AtomicBool::new(false));
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (arming, counting) = (Arc::clone(&losing), Arc::clone(&shared));
    thread::spawn(move || requests(client_in, server_out, &shared, &arming));
    thread::spawn(move || answers(server, client, &counting, &losing));
}

/// The host and port of `url` (`scheme://[user@]host[:port][/path][?query]`).
pub(crate) fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// The address of the server at `url`, on `default_port` when the URL names none.
pub(crate) fn address_of(url: &str, default_port: u16) -> SocketAddr {
    let authority = authority(url);
    let has_port = (authority.rsplit_once(':'))
        .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok());
    let addrs = if has_port {
        authority.to_socket_addrs()
    } else {
        (
            authority.trim_start_matches('[').trim_end_matches(']'),
            default_port,
        )
            .to_socket_addrs()
    };
    (addrs.ok())
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("no address in {url}"))
}

#[cfg(test)]
mod tests {
    use super::address_of;

    #[test]
    fn an_address_without_a_port_takes_the_default_one() {
        assert_eq!(address_of("postgres://u:p@127.0.0.1/db", 5432).port(), 5432);
        assert_eq!(
            address_of("postgres://127.0.0.1:6543/db?x=1", 5432).port(),
            6543
        );
        assert_eq!(address_of("redis://127.0.0.1/", 6379).port(), 6379);
        assert_eq!(address_of("redis://[::1]:7000/", 6379).port(), 7000);
        assert_eq!(address_of("redis://[::1]/", 6379).port(), 6379);
    }
}
