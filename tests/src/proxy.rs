//! What the test proxies share: a listener on a free loopback port that relays each
//! connection to an upstream server, one thread each way, the two sharing whether the
//! answer under way is to be lost.

use std::net::{SocketAddr, TcpListener, TcpStream};
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
