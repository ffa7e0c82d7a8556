//! A short, deterministic run of the fuzz checks (see `fuzz/` for the coverage-guided runs):
//! random and hand-picked inputs through key parsing and the whole request path.

use idem_tests::fuzz::{self, Rng};

#[test]
fn key_parsing_keeps_its_promises_on_random_input() {
    for edge in [
        &b""[..],
        b"\"",
        b"\"\"",
        b"\"\\",
        b"\xff\xfe",
        b"\x00a",
        b"a\"b",
        b"\"a\\\"\"",
    ] {
        fuzz::key(edge);
    }
    let mut rng = Rng::new(0x1de0);
    for _ in 0..50_000 {
        fuzz::key(&rng.bytes(300));
    }
}

#[test]
fn the_request_path_never_fails_without_a_stable_code() {
    let edges: [&[u8]; 6] = [
        b"",
        b"\x00\x00\xffk\xffBearer t",
        b"\x00\x01\xffk\xffBearer t\xfftenant\xffrid\xfftext/plain\xffbody",
        b"\x00\x02\xff\"k\"\xffBasic YTpi\xff\xff\xffapplication/json\xff{\"a\":1}",
        b"\x00\x04\xffk\xffBearer t\xff\xff\xff\xffbody",
        b"\x04\x00\xffk\xffBearer t",
    ];
    for edge in edges {
        fuzz::request(edge);
    }
    let mut rng = Rng::new(0x5eed);
    for _ in 0..3_000 {
        let mut input = rng.bytes(4);
        for _ in 0..(rng.next_u64() % 7) {
            input.push(0xff);
            // Small alphabets make repeated keys, so replays and conflicts happen too.
            let part = rng.bytes(12);
            input.extend(part.iter().map(|b| {
                if rng.next_u64().is_multiple_of(2) {
                    b'a' + b % 4
                } else {
                    *b
                }
            }));
        }
        fuzz::request(&input);
    }
}
