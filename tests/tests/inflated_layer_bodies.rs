//! A `br` body the layer decodes itself (to read it as JSON), in a process of its own (its
//! peak memory is the measure).

mod layer_reads;

/// 256 MiB of spaces (JSON whitespace) in brotli (quality 5, a 16 MiB window): 203 bytes.
const BROTLI_BOMB: &str =
    "cfffff7f002440e2b14072effff9ffff0f8004401c1680eefd3fffffff01900088c302d0bdffe7ffff3f0012\
    00715800baf7fffcffff074002200e0b40f7fe9fffffff004800c46101e8defff3ffff1f000980382c00ddfb\
    7ffeffff032001108705a07bffcfffff7f002400e2b00074effff9ffff0f8004401c1680eefd3fffffff0190\
    0088c302d0bdffe7ffff3f001200715800baf7fffcffff074002200e0b40f7fe9fffffff004800c46101e8de\
    fff3ffff1f000980382c00ddfb7ffeffff032001108705a07bff3f";

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect()
}

/// actix's decoder inflates each piece of a body it is handed whole before the limit is
/// checked, and brotli inflates a few bytes to a meta-block of up to 16 MiB: the layer hands
/// a `br` body over 16 bytes at a time, so that a bomb of 203 bytes is refused (413, past
/// `max_body`) having inflated about a meta-block past the limit, where, handed over in pieces
/// of 2 KiB, it inflated whole, to 256 MiB, on the worker's thread.
#[actix_web::test]
async fn a_brotli_bomb_the_layer_reads_inflates_no_further_than_past_the_limit() {
    let bomb = unhex(BROTLI_BOMB);
    assert_eq!(bomb.len(), 203);
    let (res, grown) = layer_reads::sent("br", bomb).await;
    assert_eq!(res.status, 413, "{}", res.text());
    assert!(
        grown < 64 << 20,
        "the process's peak grew by {} MiB",
        grown >> 20
    );
}
