//! What reading a JSON or form body for its fingerprint costs in memory, counted by this test
//! binary's allocator (a process of its own, one test, so that nothing else allocates
//! meanwhile).

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

    /// The system's own `realloc`, as a process without this counter uses: it shrinks in
    /// place, where the trait's default allocates anew and copies, holding both at once.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            let held = HELD.fetch_add(new_size - old, Ordering::Relaxed) + new_size - old;
            PEAK.fetch_max(held, Ordering::Relaxed);
        } else {
            HELD.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most memory reading and fingerprinting `body` took at once, in bytes, as JSON or as
/// a form.
fn peak_of(body: &[u8], json: bool) -> usize {
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let fingerprint = if json {
        let json = JsonBody::parse(body).unwrap();
        Fingerprint::canonical(
            "POST",
            "/v1/calls",
            "",
            Body::Json {
                body: &json,
                ignore: &[],
            },
            [("content-type", [&b"application/json"[..]])],
        )
    } else {
        Fingerprint::canonical(
            "POST",
            "/v1/calls",
            "",
            Body::Form(body),
            [("content-type", [&b"application/x-www-form-urlencoded"[..]])],
        )
    };
    assert_ne!(fingerprint.as_bytes(), &[0; 32]);
    PEAK.load(Ordering::Relaxed) - before
}

/// `item` repeated, split by `separator`, between `open` and `close`, just under 2 MiB: the
/// default `max_body`.
fn repeated(open: &str, item: &str, separator: u8, close: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 << 20);
    body.extend_from_slice(open.as_bytes());
    while body.len() + 2 * item.len() + close.len() < (2 << 20) - 1 {
        body.extend_from_slice(item.as_bytes());
        body.push(separator);
    }
    body.extend_from_slice(item.as_bytes());
    body.extend_from_slice(close.as_bytes());
    body
}

/// A JSON array of `item` repeated.
fn array_of(item: &str) -> Vec<u8> {
    repeated("[", item, b',', "]")
}

/// A form of `pair` repeated.
fn form_of(pair: &str) -> Vec<u8> {
    repeated("", pair, b'&', "")
}

/// Every dense shape of JSON body (as many values as its size holds: zeros; arrays and
/// objects of one value, side by side or nested as deep as allowed; arrays sized to leave room
/// empty) is read and fingerprinted in at most 28 times its size: a tree of 32-byte values, as
/// serde_json's `Value` is, each array's and object's room no larger than it holds once read.
/// Each array and object kept the room it grew to, at least four entries, so that a body of
/// one-value arrays nested 120 deep took 63 times its size, and 2 MiB of it, 8 KiB gzipped,
/// held 127 MiB; earlier, each number took 80 bytes, and the canonical stream was gathered
/// whole before it was hashed (60 times). A form of one-byte pairs, the most pairs a form's
/// size holds, takes 8 times its size and a slice (16 bytes a pair, sorted in place), where
/// each pair decoded into buffers of its own and a stable sort's room took 40 times.
#[test]
fn bodies_of_every_dense_shape_are_fingerprinted_within_28_times_their_size_as_json_9_as_forms() {
    let nested_arrays = format!("{}0{}", "[".repeat(120), "]".repeat(120));
    let nested_objects = format!("{}0{}", r#"{"":"#.repeat(120), "}".repeat(120));
    let json = [
        ("zeros", array_of("0")),
        ("one-value arrays", array_of("[0]")),
        ("one-member objects", array_of(r#"{"":0}"#)),
        // Past the room for four a `Vec` grows to 8, 16, 32: 11 values are the most room
        // left empty that is not given back.
        (
            "arrays of eleven values",
            array_of("[0,0,0,0,0,0,0,0,0,0,0]"),
        ),
        ("arrays nested 120 deep", array_of(&nested_arrays)),
        ("objects nested 120 deep", array_of(&nested_objects)),
    ]
    .map(|(shape, body)| (shape, body, true, 28));
    let forms = [
        ("a form of names alone", form_of("a")),
        ("a form of escaped names", form_of("+")),
        ("a form of escaped values", form_of("a=%41")),
        ("a form of separators alone", vec![b'&'; 2 << 20]),
        ("a form of empty pairs between names", form_of("&a")),
    ]
    .map(|(shape, body)| (shape, body, false, 9));
    let over: Vec<String> = json
        .into_iter()
        .chain(forms)
        .filter_map(|(shape, body, json, bound)| {
            let peak = peak_of(&body, json);
            (peak > bound * body.len()).then(|| {
                format!(
                    "{shape}: {} KiB for a {} KiB body ({}x)",
                    peak >> 10,
                    body.len() >> 10,
                    peak / body.len()
                )
            })
        })
        .collect();
    assert!(over.is_empty(), "{over:#?}");
}
