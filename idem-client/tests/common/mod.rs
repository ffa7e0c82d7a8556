//! A server for the client's tests: an app of idempotent endpoints on loopback.

use std::sync::atomic::AtomicU32;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

/// An app of `services` on a server of its own (one worker, a free loopback port), with a
/// count of its handlers' runs as its data: its base URL (`http://127.0.0.1:PORT`), the
/// count, and the handle that stops it.
pub fn serve<F>(services: F) -> (String, web::Data<AtomicU32>, ServerHandle)
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let runs = web::Data::new(AtomicU32::new(0));
    let data = runs.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(services.clone())
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let base = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (base, runs, handle)
}
