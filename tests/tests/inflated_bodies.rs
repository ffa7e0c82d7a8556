//! A compressed body the layer hands on to the handler's extractors, in a process of its own
//! (its peak memory is the measure).

use actix_web::{post, web, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{peak_memory, serve, RawRequest};

#[post("/upload")]
#[idempotent]
async fn upload(body: web::Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("{} bytes", body.len()))
}

/// `mib` MiB of zeros in deflate (zlib), made a MiB at a time.
fn inflating_to(mib: usize) -> Vec<u8> {
    use std::io::Write as _;
    let zeros = vec![0u8; 1 << 20];
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..mib {
        zlib.write_all(&zeros).unwrap();
    }
    zlib.finish().unwrap()
}

/// The layer reads the whole body before the handler runs and hands it to the handler's
/// extractors again in pieces no larger than a connection delivers, so that actix's decoder,
/// which inflates each chunk whole before its extractor's limit is checked, inflates no more
/// of a decompression bomb than it would without the layer; where it handed the body on in
/// one chunk, a 256 KiB body inflated to 256 MiB before the extractor's 1 MiB limit refused
/// it.
#[actix_web::test]
async fn a_compressed_body_inflates_in_the_handler_s_extractor_no_further_than_its_pieces() {
    let s = serve(|cfg| {
        cfg.app_data(web::PayloadConfig::new(1 << 20))
            .service(upload);
    });
    let bomb = inflating_to(256);
    assert!(
        bomb.len() > 128 << 10 && bomb.len() < 1 << 20,
        "{}",
        bomb.len()
    );
    let before = peak_memory();
    let res = s
        .send(
            &RawRequest::post("/upload")
                .header("Authorization", "Bearer t")
                .header("Idempotency-Key", "bomb-1")
                .header("Content-Encoding", "deflate")
                .body(bomb),
        )
        .await;
    let grown = peak_memory().saturating_sub(before);
    assert_eq!(res.status, 413, "{}", res.text());
    assert!(
        grown < 64 << 20,
        "the process's peak grew by {} MiB",
        grown >> 20
    );
}
