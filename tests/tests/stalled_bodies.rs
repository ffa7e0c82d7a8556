//! Clients that send a keyed request's head and then stall on its body: the layer holds no
//! claim meanwhile, and holds no more memory for it than the body has brought. A binary of its
//! own, as it counts the process's live heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use actix_web::{post, web, HttpResponse};
use bytes::Bytes;
use idem_actix::idempotent;
use idem_tests::{serve, Counter, RawRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a count is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[post("/plain")]
#[idempotent]
async fn plain(runs: web::Data<Counter>, body: Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("run {} {} bytes", runs.bump(), body.len()))
}

/// A client declares a body of `max_body` (2 MiB by default), sends two bytes of it in two
/// pieces, and stalls. Sixteen such clients must not make the server hold 32 MiB: what a
/// stalled body costs is bounded by what it sent (and a buffer), not by what it declared.
#[actix_web::test]
async fn a_stalled_body_holds_no_more_memory_than_it_sent() {
    const CLIENTS: usize = 16;
    let s = serve(|cfg| {
        cfg.service(plain);
    });
    let addr = s.server.addr;
    // Warm the server (its worker, its store) before counting.
    let warm = RawRequest::post("/plain")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "warm")
        .body("x");
    assert_eq!(warm.send(addr).await.status, 201);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = LIVE.load(Ordering::Relaxed);

    let mut stalled = Vec::new();
    for n in 0..CLIENTS {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /plain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
             Idempotency-Key: stall-{n}\r\nContent-Length: {}\r\n\r\na",
            2 * 1024 * 1024
        );
        c.write_all(head.as_bytes()).await.unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in &mut stalled {
        c.write_all(b"b").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        grown < (CLIENTS * 512 * 1024) as isize,
        "{CLIENTS} clients that sent 2 bytes of body each made the server hold {grown} more bytes"
    );

    // Nothing was claimed meanwhile: the same keys, sent whole, run.
    let whole = RawRequest::post("/plain")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "stall-0")
        .body("ab");
    let res = whole.send(addr).await;
    assert_eq!((res.status, res.text()), (201, "run 2 2 bytes".to_owned()));
    drop(stalled);
}
