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
    // `{"a":1}` in gzip.
    const GZIP: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xab\x56\x4a\x54\xb2\x32\xac\x05\x00\xaf\xac\x1b\x56\x07\x00\x00\x00";
    let coded = |selector: &[u8], coding: &[u8], body: &[u8]| {
        let mut input = selector.to_vec();
        input.extend_from_slice(b"\xffk\xffBasic YTpi\xfftenant\xff\xffapplication/json\xff");
        input.extend_from_slice(body);
        input.push(0xff);
        input.extend_from_slice(coding);
        input
    };
    let mut edges: Vec<Vec<u8>> = [
        &b""[..],
        b"\x00\x00\xffk\xffBearer t",
        b"\x00\x01\xffk\xffBearer t\xfftenant\xffrid\xfftext/plain\xffbody",
        b"\x00\x02\xff\"k\"\xffBasic YTpi\xff\xff\xffapplication/json\xff{\"a\":1}",
        b"\x00\x04\xffk\xffBearer t\xff\xff\xff\xffbody",
        b"\x04\x00\xffk\xffBearer t",
    ]
    .map(<[u8]>::to_vec)
    .into();
    // Every route, with a body in a coding that decodes, one that does not, one the layer
    // refuses to read, and none.
    for path in 0..5 {
        for (coding, body) in [
            (&b"gzip"[..], GZIP),
            (b"gzip", b"{\"a\":1}"),
            (b"deflate", GZIP),
            (b"x-gzip", GZIP),
            (b"br", b"{\"a\":1}"),
            (b"gzip, identity", GZIP),
            (b"identity", b"{\"a\":1}"),
            (b"", b"{\"a\":1}"),
        ] {
            edges.push(coded(&[0, path], coding, body));
        }
    }
    for edge in edges {
        fuzz::request(&edge);
    }
    // Read as the handler's extractor reads it: `/json/1` takes the JSON that gzip holds, and
    // refuses the same bytes sent as they are.
    assert_eq!(fuzz::request(&coded(&[0, 2], b"gzip", GZIP)), 201);
    assert_eq!(fuzz::request(&coded(&[0, 2], b"identity", GZIP)), 400);
    let mut rng = Rng::new(0x5eed);
    for _ in 0..3_000 {
        let mut input = rng.bytes(4);
        for _ in 0..(rng.next_u64() % 8) {
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
