//! `application/x-www-form-urlencoded` pairs, as form bodies and query strings carry them,
//! compared without regard to the order of their names.
//!
//! Pairs are split on `&` (empty ones skipped), then on the first `=`; `+` stands for a
//! space and `%XY` for a byte, and a `%` without two hex digits stands for itself, as
//! browsers and `serde_urlencoded` read them, so every string reads as pairs. The pairs are
//! then sorted by name; pairs of one name keep their order (`tag=a&tag=b` is a list whose
//! order an application may keep).

use std::cmp::Ordering;

use crate::digest::{field, varint_update, Sink};

/// Writes the pairs of `input` into `out`: their count, then each name and value, decoded, in
/// the order of their names.
///
/// The pairs are sorted as they stand in `input`, each decoded as it is compared and written,
/// never into a buffer of its own: a form costs one slice a pair (16 bytes), 8 times the size
/// of the densest form (`a&a&...`), where decoded pairs and a stable sort's room cost 40 times.
/// Two pairs of one name compare by their place in `input`, so that an unstable sort, which
/// takes no room, keeps their order.
pub(crate) fn hash(out: &mut impl Sink, input: &[u8]) {
    let found = || input.split(|&b| b == b'&').filter(|pair| !pair.is_empty());
    // Room for the pairs there are, and none for a form without any (no query, most often).
    let mut pairs: Vec<&[u8]> = Vec::with_capacity(found().count());
    pairs.extend(found());
    pairs.sort_unstable_by(|a, b| {
        compare(name(a), name(b)).then_with(|| a.as_ptr().cmp(&b.as_ptr()))
    });
    varint_update(out, pairs.len() as u64);
    for pair in pairs {
        let (name, value) = split(pair);
        write(out, name);
        write(out, value);
    }
}

/// A pair's name and value, undecoded: split on its first `=`.
fn split(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|&b| b == b'=') {
        Some(eq) => (&pair[..eq], &pair[eq + 1..]),
        None => (pair, b""),
    }
}

fn name(pair: &[u8]) -> &[u8] {
    split(pair).0
}

/// Whether `raw` reads as itself, with no `+` or `%` to decode.
fn plain(raw: &[u8]) -> bool {
    !raw.iter().any(|&b| b == b'%' || b == b'+')
}

/// Two undecoded names, compared as decoded.
fn compare(a: &[u8], b: &[u8]) -> Ordering {
    if plain(a) && plain(b) {
        return a.cmp(b);
    }
    Decoded(a).cmp(Decoded(b))
}

/// `raw`, decoded, as a field of `out`: its length, then its bytes.
fn write(out: &mut impl Sink, raw: &[u8]) {
    if plain(raw) {
        return field(out, raw);
    }
    varint_update(out, Decoded(raw).count() as u64);
    let mut chunk = [0; 256];
    let mut len = 0;
    for b in Decoded(raw) {
        if len == chunk.len() {
            out.put(&chunk);
            len = 0;
        }
        chunk[len] = b;
        len += 1;
    }
    out.put(&chunk[..len]);
}

/// The bytes `raw` stands for: `+` for a space, `%XY` for a byte, and a `%` without two hex
/// digits for itself.
#[derive(Clone)]
struct Decoded<'a>(&'a [u8]);

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(match first {
            b'+' => b' ',
            b'%' => match (rest.first().and_then(hex), rest.get(1).and_then(hex)) {
                (Some(high), Some(low)) => {
                    self.0 = &rest[2..];
                    high << 4 | low
                }
                _ => b'%',
            },
            b => b,
        })
    }
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The pairs [`hash`] writes for `input`, read back from what it wrote.
    fn read(input: &str) -> Vec<(String, String)> {
        let mut written = Vec::new();
        hash(&mut written, input.as_bytes());
        let mut rest = &written[..];
        let count = number(&mut rest);
        let mut text = || {
            let len = number(&mut rest);
            let bytes = rest[..len].to_vec();
            rest = &rest[len..];
            String::from_utf8(bytes).unwrap()
        };
        (0..count).map(|_| (text(), text())).collect()
    }

    /// The varint at the start of `rest`, which moves past it.
    fn number(rest: &mut &[u8]) -> usize {
        let (mut n, mut shift) = (0, 0);
        loop {
            let (&b, tail) = rest.split_first().unwrap();
            *rest = tail;
            n |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                return n;
            }
        }
    }

    fn pair(n: &str, v: &str) -> (String, String) {
        (n.to_owned(), v.to_owned())
    }

    #[test]
    fn pairs_are_decoded_and_sorted_by_name() {
        assert_eq!(read("b=2&a=1"), [pair("a", "1"), pair("b", "2")]);
        assert_eq!(read("name=Ada+L%C3%B6we"), [pair("name", "Ada Löwe")]);
        assert_eq!(read("a%3Db=c%26d"), [pair("a=b", "c&d")]);
        assert_eq!(read("&&a&b=&"), [pair("a", ""), pair("b", "")]);
        assert_eq!(read("x=1=2"), [pair("x", "1=2")]);
        assert_eq!(
            read("p=100%&q=%zz%4"),
            [pair("p", "100%"), pair("q", "%zz%4")]
        );
        // Sorted as decoded: `%41` is `A`, before `B`; `+` a space, before `a`.
        assert_eq!(read("B=1&%41=2"), [pair("A", "2"), pair("B", "1")]);
        assert_eq!(read("a=1&+=2"), [pair(" ", "2"), pair("a", "1")]);
    }

    #[test]
    fn values_of_one_name_keep_their_order() {
        assert_eq!(
            read("tag=b&id=1&tag=a"),
            [pair("id", "1"), pair("tag", "b"), pair("tag", "a")]
        );
        // Spelled differently, one name.
        assert_eq!(
            read("t%61g=1&tag=2&ta%67=3"),
            [pair("tag", "1"), pair("tag", "2"), pair("tag", "3")]
        );
    }

    /// What [`hash`] wrote before it sorted pairs in place: each pair decoded into a buffer of
    /// its own, then a stable sort by name.
    fn written_by_decoding_first(input: &[u8]) -> Vec<u8> {
        let decode = |raw: &[u8]| {
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'+' => out.push(b' '),
                    b'%' => match (raw.get(i + 1).and_then(hex), raw.get(i + 2).and_then(hex)) {
                        (Some(high), Some(low)) => {
                            out.push(high << 4 | low);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    },
                    b => out.push(b),
                }
                i += 1;
            }
            out
        };
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = input
            .split(|&b| b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = split(pair);
                (decode(name), decode(value))
            })
            .collect();
        pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
        let mut out = Vec::new();
        varint_update(&mut out, pairs.len() as u64);
        for (name, value) in &pairs {
            field(&mut out, name);
            field(&mut out, value);
        }
        out
    }

    /// Past the few pairs an insertion sort (stable by itself) orders, pairs of one name,
    /// spelled in several ways, still keep their order.
    #[test]
    fn many_pairs_of_a_few_names_keep_their_order() {
        let spellings = ["tag", "t%61g", "ta%67", "id", "%69d", "a+b", "a%20b"];
        let input: Vec<String> = (0..300)
            .map(|n| format!("{}={n}", spellings[n * 7 % spellings.len()]))
            .collect();
        let input = input.join("&");
        let mut written = Vec::new();
        hash(&mut written, input.as_bytes());
        assert_eq!(written, written_by_decoding_first(input.as_bytes()));
        let tags: Vec<usize> = (read(&input).into_iter())
            .filter(|(name, _)| name == "tag")
            .map(|(_, value)| value.parse().unwrap())
            .collect();
        assert!(
            tags.len() > 100 && tags.windows(2).all(|w| w[0] < w[1]),
            "{tags:?}"
        );
    }

    proptest! {
        /// Fingerprints are kept across the change: any form is written as it was.
        #[test]
        fn every_form_is_written_as_when_pairs_were_decoded_first(
            input in proptest::collection::vec(
                proptest::sample::select(&b"ab=&&&+%0F4zA"[..]), 0..400),
            long in proptest::collection::vec(proptest::sample::select(&b"a%+"[..]), 250..600),
        ) {
            let mut written = Vec::new();
            hash(&mut written, &input);
            prop_assert_eq!(written, written_by_decoding_first(&input));
            // A name longer than the chunk it is written in.
            let mut long_name = long.clone();
            long_name.extend_from_slice(b"=1&a=2");
            let mut written = Vec::new();
            hash(&mut written, &long_name);
            prop_assert_eq!(written, written_by_decoding_first(&long_name));
        }
    }
}
