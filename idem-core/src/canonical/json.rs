//! JSON bodies compared as parsed: the order of an object's members and the whitespace
//! between tokens do not matter, strings compare once unescaped, and numbers compare by value
//! (`1`, `1.0` and `10e-1` are one number), exactly, without going through floating point.
//!
//! A body is parsed into a tree whose strings and numbers borrow from it, each object's
//! members sorted by name; the tree is then written into the fingerprint's hasher as a typed,
//! length-prefixed stream, so that no two different trees write the same bytes. Members that
//! share a name keep their order: whichever of them an application reads, a retry that swaps
//! them is another request.

use std::borrow::Cow;

use super::pointer::Token;
use super::BodyError;
use crate::digest::{field, varint_update, Sink};

/// How deep arrays and objects may nest: deeper bodies are refused rather than risk the
/// stack. serde_json, which a handler's `web::Json` reads with, stops one level sooner (127):
/// a body exactly this deep passes here and is refused by the handler's extractor.
const MAX_DEPTH: usize = 128;

/// A parsed JSON value.
#[derive(Debug, Default)]
pub(crate) enum Value<'a> {
    #[default]
    Null,
    Bool(bool),
    /// A number, as written (valid: see [`decimal`]); its value is worked out as it is
    /// hashed, so that a body of many numbers holds a small tree.
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members sorted by name; members of one name in the order written.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// Parses `body`, a whole JSON document.
///
/// # Errors
/// [`BodyError::NotJson`] naming the first byte that breaks the grammar.
pub(crate) fn parse(body: &[u8]) -> Result<Value<'_>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotJson {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })?;
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    parser.whitespace();
    let value = parser.value()?;
    parser.whitespace();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("unexpected characters after the document"));
    }
    Ok(value)
}

/// How many of an array's values or an object's members [`Items`] holds in place.
const IN_PLACE: usize = 4;

/// An array's values or an object's members as they are read, kept in no more room than a
/// body's bytes bound: up to [`IN_PLACE`] in place, then allocated once, of their number; more
/// in a `Vec` that grows by doubling, its room cut to their number when over half of it would
/// be left empty. A `Vec` grown as it is read keeps room for at least four values, and up to
/// twice its number: a body of one-value arrays, nested or side by side (`[[0]]`, `[0],[0]`),
/// took up to 63 times its size; it takes 16 now, and any body at most 24
/// (`bodies_of_every_dense_shape_are_fingerprinted_within_28_times_their_size_as_json_9_as_forms`).
///
/// Cutting every `Vec` to size instead costs a reallocation per array and object: counted
/// with callgrind, fingerprinting `{"agent_id":..,"phone_number":..}` took 651 instructions
/// more than a `Vec` left as grown (of 4,548 besides SHA-256), the 1 KiB order of the
/// `fingerprint` bench 14,414 more (of 84,881); these take 243 and 1,471 more.
struct Items<T> {
    in_place: [T; IN_PLACE],
    len: usize,
    /// All of them, once there are more than [`IN_PLACE`].
    spilled: Vec<T>,
}

impl<T: Default> Items<T> {
    fn new() -> Self {
        Self {
            in_place: Default::default(),
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        if self.len < IN_PLACE {
            self.in_place[self.len] = item;
        } else {
            if self.len == IN_PLACE {
                self.spilled = Vec::with_capacity(2 * IN_PLACE);
                self.spilled
                    .extend(self.in_place.iter_mut().map(std::mem::take));
            }
            self.spilled.push(item);
        }
        self.len += 1;
    }

    fn finish(mut self) -> Vec<T> {
        if self.len <= IN_PLACE {
            let mut items = Vec::with_capacity(self.len);
            items.extend(self.in_place[..self.len].iter_mut().map(std::mem::take));
            return items;
        }
        if self.spilled.capacity() * 2 > self.spilled.len() * 3 {
            self.spilled.shrink_to_fit();
        }
        self.spilled
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, reason: &'static str) -> BodyError {
        BodyError::NotJson {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), BodyError> {
        if self.peek() != Some(byte) {
            return Err(self.error(reason));
        }
        self.pos += 1;
        Ok(())
    }

    fn value(&mut self) -> Result<Value<'a>, BodyError> {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("unexpected end of the body")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value<'a>) -> Result<Value<'a>, BodyError> {
        if !self.bytes[self.pos..].starts_with(word.as_bytes()) {
            return Err(self.error("expected a value"));
        }
        self.pos += word.len();
        Ok(value)
    }

    fn nest(&mut self) -> Result<(), BodyError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested more than 128 levels deep"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<Value<'a>, BodyError> {
        self.nest()?;
        self.pos += 1;
        let mut items = Items::new();
        self.whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.whitespace();
                items.push(self.value()?);
                self.whitespace();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.error("expected `,` or `]`")),
                }
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items.finish()))
    }

    fn object(&mut self) -> Result<Value<'a>, BodyError> {
        self.nest()?;
        self.pos += 1;
        let mut members = Items::new();
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.whitespace();
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a member's name"));
                }
                let name = self.string()?;
                self.whitespace();
                self.expect(b':', "expected `:`")?;
                self.whitespace();
                let value = self.value()?;
                members.push((name, value));
                self.whitespace();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.error("expected `,` or `}`")),
                }
            }
        }
        self.depth -= 1;
        let mut members = members.finish();
        // Stable: members of one name keep their order.
        members.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
        Ok(Value::Object(members))
    }

    /// A string, unescaped; borrowed when it has no escapes (most have none).
    fn string(&mut self) -> Result<Cow<'a, str>, BodyError> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Borrowed(&self.text[start..self.pos - 1]));
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => self.pos += 1,
                None => return Err(self.error("unterminated string")),
            }
        }
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(0..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => {
                    // Copy up to the next quote or backslash at once; both are ASCII, so the
                    // run ends on a character boundary.
                    let run = self.bytes[self.pos..]
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                        .unwrap_or(self.bytes.len() - self.pos);
                    out.push_str(&self.text[self.pos..self.pos + run]);
                    self.pos += run;
                }
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), BodyError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let first = self.hex4()?;
                let c = match first {
                    0xd800..=0xdbff => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return Err(self.error("unpaired surrogate in a \\u escape"));
                        }
                        self.pos += 2;
                        let second = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&second) {
                            return Err(self.error("unpaired surrogate in a \\u escape"));
                        }
                        0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                    }
                    0xdc00..=0xdfff => return Err(self.error("unpaired surrogate in a \\u escape")),
                    c => c,
                };
                out.push(char::from_u32(c).ok_or_else(|| self.error("invalid \\u escape"))?);
                return Ok(());
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(c);
        self.pos += 1;
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, BodyError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("invalid \\u escape"))?;
        let mut n = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            n = n * 16 + v;
        }
        self.pos += 4;
        Ok(n)
    }

    fn number(&mut self) -> Result<Value<'a>, BodyError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after `.`"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            self.digits();
        }
        let raw = &self.text[start..self.pos];
        match decimal(raw) {
            Ok(_) => Ok(Value::Number(raw)),
            Err(reason) => Err(BodyError::NotJson {
                offset: start,
                reason,
            }),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

/// A number's value, exactly: its sign, its significant digits (no leading or trailing
/// zero; none for zero) and the power of ten they are multiplied by.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decimal<'a> {
    negative: bool,
    /// The digits before the point, then those after it; the significant ones are
    /// `significant` of their concatenation.
    whole: &'a str,
    fraction: &'a str,
    significant: std::ops::Range<usize>,
    exponent: i64,
}

/// The exponent beyond which a number is refused: no request means 10^(10^15).
const MAX_EXPONENT_DIGITS: usize = 15;

fn decimal(raw: &str) -> Result<Decimal<'_>, &'static str> {
    let (negative, rest) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, "0"),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let (exp_negative, exp_digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    let digit = |i: usize| {
        if i < whole.len() {
            whole.as_bytes()[i]
        } else {
            fraction.as_bytes()[i - whole.len()]
        }
    };
    let len = whole.len() + fraction.len();
    let first = (0..len).find(|&i| digit(i) != b'0');
    // A zero is zero whatever its exponent: only another number's is bounded.
    let exp_digits = exp_digits.trim_start_matches('0');
    if first.is_some() && exp_digits.len() > MAX_EXPONENT_DIGITS {
        return Err("a number's exponent is too large");
    }
    let written: i64 = match (first, exp_digits) {
        (None, _) | (_, "") => 0,
        (Some(_), digits) => digits
            .parse()
            .map_err(|_| "a number's exponent is too large")?,
    };
    let written = if exp_negative { -written } else { written };
    let (significant, exponent) = match first {
        None => (0..0, 0),
        Some(first) => {
            let last = (0..len).rev().find(|&i| digit(i) != b'0').unwrap_or(first);
            // The value is digits[first..=last] * 10^(written - (digits after `last`)).
            let after = (len - 1 - last) as i64;
            let exponent = written - fraction.len() as i64 + after;
            (first..last + 1, exponent)
        }
    };
    Ok(Decimal {
        negative: negative && first.is_some(),
        whole,
        fraction,
        significant,
        exponent,
    })
}

/// Writes `value`, less the members `ignore` points at, into `out`.
///
/// Each value starts with a tag byte; strings and numbers are length-prefixed, arrays and
/// objects prefixed by their count. Ignored members are left out entirely, so a body with
/// them and one without fingerprint alike.
pub(crate) fn hash(out: &mut impl Sink, value: &Value<'_>, ignore: &[&[Token<'_>]]) {
    match value {
        Value::Null => out.put(b"n"),
        Value::Bool(false) => out.put(b"f"),
        Value::Bool(true) => out.put(b"t"),
        Value::Number(raw) => {
            let d = decimal(raw).unwrap_or_else(|_| unreachable!("a number parsed is valid"));
            out.put(if d.negative { b"-" } else { b"d" });
            let len = d.significant.len();
            varint_update(out, len as u64);
            let whole_end = d.whole.len();
            let (start, end) = (d.significant.start, d.significant.end);
            if start < whole_end {
                out.put(&d.whole.as_bytes()[start..end.min(whole_end)]);
            }
            if end > whole_end {
                out.put(&d.fraction.as_bytes()[start.max(whole_end) - whole_end..end - whole_end]);
            }
            out.put(&d.exponent.to_le_bytes());
        }
        Value::String(s) => {
            out.put(b"s");
            field(out, s.as_bytes());
        }
        Value::Array(items) => {
            out.put(b"a");
            if ignore.is_empty() {
                varint_update(out, items.len() as u64);
                for item in items {
                    hash(out, item, &[]);
                }
                return;
            }
            let steps: Vec<Vec<&[Token<'_>]>> = (0..items.len())
                .map(|i| below(ignore, |t| t.index == Some(i)))
                .collect();
            let kept = steps.iter().filter(|s| !left_out(s)).count();
            varint_update(out, kept as u64);
            for (item, steps) in items.iter().zip(&steps) {
                if !left_out(steps) {
                    hash(out, item, steps);
                }
            }
        }
        Value::Object(members) => {
            out.put(b"o");
            if ignore.is_empty() {
                varint_update(out, members.len() as u64);
                for (name, value) in members {
                    field(out, name.as_bytes());
                    hash(out, value, &[]);
                }
                return;
            }
            let steps: Vec<Vec<&[Token<'_>]>> = members
                .iter()
                .map(|(name, _)| below(ignore, |t| t.name == *name))
                .collect();
            let kept = steps.iter().filter(|s| !left_out(s)).count();
            varint_update(out, kept as u64);
            for ((name, value), steps) in members.iter().zip(&steps) {
                if !left_out(steps) {
                    field(out, name.as_bytes());
                    hash(out, value, steps);
                }
            }
        }
    }
}

/// The rest of each pointer of `ignore` whose first step `matches` a child.
fn below<'p, 't>(
    ignore: &[&'p [Token<'t>]],
    matches: impl Fn(&Token<'t>) -> bool,
) -> Vec<&'p [Token<'t>]> {
    ignore
        .iter()
        .filter(|p| p.first().is_some_and(&matches))
        .map(|p| &p[1..])
        .collect()
}

/// Whether a pointer ends at this child: it is left out.
fn left_out(steps: &[&[Token<'_>]]) -> bool {
    steps.iter().any(|rest| rest.is_empty())
}

/// The value `pointer` names in `value`: for members of one name, the last, as most parsers
/// read it.
pub(crate) fn find<'v, 'a>(value: &'v Value<'a>, pointer: &[Token<'_>]) -> Option<&'v Value<'a>> {
    let Some((step, rest)) = pointer.split_first() else {
        return Some(value);
    };
    let child = match value {
        Value::Object(members) => members
            .iter()
            .rev()
            .find(|(name, _)| *name == step.name)
            .map(|(_, v)| v),
        Value::Array(items) => step.index.and_then(|i| items.get(i)),
        _ => None,
    }?;
    find(child, rest)
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    fn digest(body: &str, ignore: &[&str]) -> Result<[u8; 32], BodyError> {
        let pointers: Vec<Vec<Token<'_>>> = ignore
            .iter()
            .map(|p| super::super::pointer::parse(p).unwrap())
            .collect();
        let steps: Vec<&[Token<'_>]> = pointers.iter().map(Vec::as_slice).collect();
        let value = parse(body.as_bytes())?;
        let mut out = Vec::new();
        hash(&mut out, &value, &steps);
        Ok(sha2::Sha256::digest(&out).into())
    }

    fn same(a: &str, b: &str) -> bool {
        digest(a, &[]).unwrap() == digest(b, &[]).unwrap()
    }

    /// A zero is zero whatever its exponent, as serde reads it: an exponent too large for any
    /// other number is no reason to refuse one (`0e9999999999999999` was 400 "not JSON").
    /// Another number with such an exponent is still refused.
    #[test]
    fn a_zero_with_any_exponent_is_zero() {
        for zero in [
            r#"{"n":0e9999999999999999}"#,
            r#"{"n":0.0e-99999999999999999999}"#,
            r#"{"n":-0.000E+123456789012345678901234567890}"#,
        ] {
            assert!(same(zero, r#"{"n":0}"#), "{zero}");
        }
        assert!(digest(r#"{"n":1e9999999999999999}"#, &[]).is_err());
    }

    #[test]
    fn member_order_and_whitespace_do_not_matter() {
        assert!(same(
            r#"{"a":1,"b":[true,null]}"#,
            "{ \"b\" : [ true , null ] ,\n\t\"a\" : 1 }"
        ));
        assert!(same(r#"{"x":{"b":1,"a":2}}"#, r#"{"x":{"a":2,"b":1}}"#));
        assert!(
            !same(r#"[1,2]"#, r#"[2,1]"#),
            "an array's order is its meaning"
        );
    }

    #[test]
    fn strings_compare_unescaped() {
        assert!(same(r#"{"k":"A\u00e9\n"}"#, "{\"k\":\"Aé\\n\"}"));
        assert!(same(r#"{"\u0061":1}"#, r#"{"a":1}"#));
        assert!(same(r#""\ud83d\ude00""#, "\"😀\""));
        assert!(same(r#""a\/b""#, r#""a/b""#));
        assert!(!same(r#""a""#, r#""b""#));
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1e0"),
            ("1", "10e-1"),
            ("100", "1e2"),
            ("100", "1E+2"),
            ("0", "-0"),
            ("0", "0.000e5"),
            ("-1.50", "-15e-1"),
            ("0.00120", "1.2e-3"),
        ] {
            assert!(same(a, b), "{a} = {b}");
        }
        for (a, b) in [
            ("1", "2"),
            ("1", "-1"),
            ("0.1", "0.10000000000000000001"),
            ("12345678901234567890", "12345678901234567891"),
            ("1e2", "1e3"),
            ("10", "1"),
        ] {
            assert!(!same(a, b), "{a} != {b}");
        }
        assert!(!same("1", "\"1\""), "a number is not a string");
        assert!(matches!(
            digest("[1e99999999999999999999]", &[]),
            Err(BodyError::NotJson { offset: 1, .. })
        ));
    }

    #[test]
    fn members_of_one_name_keep_their_order() {
        assert!(!same(r#"{"a":1,"a":2}"#, r#"{"a":2,"a":1}"#));
        assert!(same(r#"{"a":1,"b":0,"a":2}"#, r#"{"b":0,"a":1,"a":2}"#));
    }

    #[test]
    fn ignored_members_are_left_out_wherever_they_are() {
        let ignore = ["/sent_at", "/meta/trace", "/items/1"];
        let a = r#"{"id":1,"sent_at":"10:00","meta":{"trace":"x","v":1},"items":[1,2,3]}"#;
        let b = r#"{"meta":{"v":1,"trace":"y"},"items":[1,9,3],"id":1}"#;
        assert_eq!(digest(a, &ignore).unwrap(), digest(b, &ignore).unwrap());
        let c = r#"{"id":1,"meta":{"v":2},"items":[1,2,3]}"#;
        assert_ne!(digest(a, &ignore).unwrap(), digest(c, &ignore).unwrap());
        // Not ignored: the same bodies differ.
        assert_ne!(digest(a, &[]).unwrap(), digest(b, &[]).unwrap());
        // A pointer into something else than an object or array ignores nothing.
        assert_eq!(
            digest(r#"{"id":"x"}"#, &["/id/deeper"]).unwrap(),
            digest(r#"{"id":"x"}"#, &[]).unwrap()
        );
    }

    #[test]
    fn what_is_not_json_is_refused_with_where() {
        for (body, offset) in [
            ("", 0),
            ("{", 1),
            ("{\"a\" 1}", 5),
            ("[1,]", 3),
            ("01", 1),
            ("1.", 2),
            ("\"a", 2),
            ("\"\\x\"", 2),
            ("\"\\ud800\"", 7),
            ("tru", 0),
            ("{} x", 3),
            ("{'a':1}", 1),
            ("\"a\u{1}\"", 2),
        ] {
            match parse(body.as_bytes()) {
                Err(BodyError::NotJson { offset: at, .. }) => assert_eq!(at, offset, "{body:?}"),
                other => panic!("{body:?} parsed: {other:?}"),
            }
        }
        assert!(parse(b"\"\xff\"").is_err());
        let deep = "[".repeat(129) + &"]".repeat(129);
        assert!(parse(deep.as_bytes()).is_err());
        let fine = "[".repeat(128) + &"]".repeat(128);
        assert!(parse(fine.as_bytes()).is_ok());
    }

    #[test]
    fn a_pointer_finds_the_last_member_of_its_name() {
        let value = parse(br#"{"a":{"b":[10,{"c":"x"}]},"d":1,"d":2}"#).unwrap();
        let at = |p: &str| {
            let tokens = super::super::pointer::parse(p).unwrap();
            match find(&value, &tokens) {
                Some(Value::String(s)) => Some(s.to_string()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => Some("other".into()),
                None => None,
            }
        };
        assert_eq!(at("/a/b/1/c").as_deref(), Some("x"));
        assert_eq!(at("/a/b/0").as_deref(), Some("10"));
        assert_eq!(at("/d").as_deref(), Some("2"));
        assert_eq!(at("/a/b/2"), None);
        assert_eq!(at("/a/x"), None);
    }
}
