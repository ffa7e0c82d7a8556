//! A `zstd` body the layer decodes itself (to read it as JSON), in a process of its own (its
//! peak memory is the measure).

mod layer_reads;

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
    let bomb = zstd_bomb(256);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let (res, grown) = layer_reads::sent("zstd", bomb).await;
    assert_eq!(res.status, 413, "{}", res.text());
    assert!(
        grown < 24 << 20,
        "the process's peak grew by {} MiB",
        grown >> 20
    );
}
