//! What reading a JSON body costs in memory, counted by this test binary's allocator (a
//! process of its own, one test, so that nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use idem_core::{Body, Fingerprint, JsonBody};

/// The system allocator, counting the bytes held and their peak.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A body of small values (a 2 MiB array of zeros, the most values a body of that size
/// holds) is read and fingerprinted in at most 28 times its size: a tree of 32-byte values,
/// as serde_json's `Value` is, with its array's room growing by doubling (24 times here).
/// Each number took 80 bytes, and the canonical stream was gathered whole before it was
/// hashed: 60 times, so that a few requests at the default `max_body` held gigabytes.
#[test]
fn a_json_body_of_small_values_is_fingerprinted_within_28_times_its_size() {
    let mut body = Vec::with_capacity(2 << 20);
    body.push(b'[');
    while body.len() < (2 << 20) - 2 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]");
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let json = JsonBody::parse(&body).unwrap();
    let fingerprint = Fingerprint::canonical(
        "POST",
        "/v1/calls",
        "",
        Body::Json {
            body: &json,
            ignore: &[],
        },
        [("content-type", [&b"application/json"[..]])],
    );
    drop(json);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_ne!(fingerprint.as_bytes(), &[0; 32]);
    assert!(
        peak <= 28 * body.len(),
        "{} MiB for a {} MiB body",
        peak >> 20,
        body.len() >> 20
    );
}
