//! New keys sent through the idempotent echo route, through the store-alone reference, or
//! through the least a layer adds to it (`floor`), on a full embedded store: a driver for
//! counting the instructions a request executes
//! (`scripts/bench-instructions` runs it under valgrind). Counts do not drift with the
//! machine's speed as times do, so they tell apart changes too small for a timed run.
//!
//! `new-keys idem|alone|floor N`: fills a 16 MiB store (and the reference's) with 60,000 records,
//! sends 20,000 new keys to warm up, then N more.
#![forbid(unsafe_code)]

use actix_web::dev::Service;
use actix_web::{test, web, App};
use idem_actix::{IdempotencyConfig, MokaStore};
use idem_examples::bench::{
    echo_request, floor_route, idem_route, prefill, set_store_alone, store_alone_route,
};

const WARM_UP: u64 = 20_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let (route, path): (fn(&mut web::ServiceConfig), _) = match args.next().as_deref() {
        Some("idem") => (idem_route, "/idem/echo"),
        Some("alone") => (store_alone_route, "/store-alone/echo"),
        Some("floor") => (floor_route, "/floor/echo"),
        _ => usage(),
    };
    let Some(requests) = args.next().and_then(|n| n.parse::<u64>().ok()) else {
        usage()
    };
    actix_web::rt::System::new().block_on(async {
        let full = || MokaStore::builder().max_bytes(16 << 20).build();
        let (layer, alone) = (full(), full());
        prefill(&layer, 60_000).await;
        prefill(&alone, 60_000).await;
        set_store_alone(alone);
        let config = IdempotencyConfig::new(layer);
        let app = test::init_service(App::new().app_data(config).configure(route)).await;
        for n in 0..WARM_UP + requests {
            let key = format!("new-{n}");
            let res = app.call(echo_request(path, Some(&key)).to_request()).await;
            assert_eq!(res.map(|res| res.status().as_u16()).ok(), Some(201));
        }
    });
}

fn usage() -> ! {
    eprintln!("usage: new-keys idem|alone|floor REQUESTS");
    std::process::exit(2)
}
