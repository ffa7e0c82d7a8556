//! A `zstd` body the layer decodes itself (to read it as JSON), in a process of its own (its
//! peak memory is the measure).

use actix_web::{post, web, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{serve, RawRequest};

#[post("/events")]
#[idempotent(fingerprint = "json")]
async fn event(body: web::Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("{} bytes", body.len()))
}

/// The process's peak resident memory, in bytes.
fn peak_memory() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<usize>().ok())
        .expect("VmHWM in kB");
    kib << 10
}

/// `mib` MiB of spaces (JSON whitespace) in zstd, a MiB at a time.
fn zstd_bomb(mib: usize) -> Vec<u8> {
    use std::io::Write as _;
    let spaces = vec![b' '; 1 << 20];
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    for _ in 0..mib {
        encoder.write_all(&spaces).unwrap();
    }
    encoder.finish().unwrap()
}

/// zstd inflates 4 bytes to a block of 128 KiB of one byte: the layer hands a `zstd` body to
/// actix's decoder 64 bytes at a time, so that a bomb is refused (413, past `max_body`)
/// having inflated about 2 MiB past the limit, where, handed over in pieces of 2 KiB, it
/// inflated by 64 MiB a piece.
#[actix_web::test]
async fn a_zstd_bomb_the_layer_reads_inflates_no_further_than_past_the_limit() {
    let s = serve(|cfg| {
        cfg.service(event);
    });
    let bomb = zstd_bomb(256);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let before = peak_memory();
    let res = s
        .send(
            &RawRequest::post("/events")
                .header("Authorization", "Bearer t")
                .header("Idempotency-Key", "bomb-1")
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "zstd")
                .body(bomb),
        )
        .await;
    let grown = peak_memory().saturating_sub(before);
    assert_eq!(res.status, 413, "{}", res.text());
    assert!(
        grown < 24 << 20,
        "the process's peak grew by {} MiB",
        grown >> 20
    );
}
