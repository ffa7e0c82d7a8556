//! `application/x-www-form-urlencoded` pairs, as form bodies and query strings carry them,
//! compared without regard to the order of their names.
//!
//! Pairs are split on `&` (empty ones skipped), then on the first `=`; `+` stands for a
//! space and `%XY` for a byte, and a `%` without two hex digits stands for itself, as
//! browsers and `serde_urlencoded` read them, so every string reads as pairs. The pairs are
//! then sorted by name; pairs of one name keep their order (`tag=a&tag=b` is a list whose
//! order an application may keep).

use std::borrow::Cow;

use crate::digest::{field, varint_update, Sink};

/// A name and its value, decoded.
type Pair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The pairs of `input`, decoded, sorted by name.
pub(crate) fn pairs(input: &[u8]) -> Vec<Pair<'_>> {
    let mut pairs: Vec<_> = input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), Cow::Borrowed(&b""[..])),
        })
        .collect();
    // Stable: values of one name keep their order.
    pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
    pairs
}

/// Writes the pairs of `input` into `out`: their count, then each name and value.
pub(crate) fn hash(out: &mut impl Sink, input: &[u8]) {
    let pairs = pairs(input);
    varint_update(out, pairs.len() as u64);
    for (name, value) in &pairs {
        field(out, name);
        field(out, value);
    }
}

fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
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
    Cow::Owned(out)
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str) -> Vec<(String, String)> {
        pairs(input.as_bytes())
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.into_owned()).unwrap(),
                    String::from_utf8(v.into_owned()).unwrap(),
                )
            })
            .collect()
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
    }

    #[test]
    fn values_of_one_name_keep_their_order() {
        assert_eq!(
            read("tag=b&id=1&tag=a"),
            [pair("id", "1"), pair("tag", "b"), pair("tag", "a")]
        );
    }
}
