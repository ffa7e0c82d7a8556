//! The promise of JSON fingerprints, over generated documents: however an object's members
//! are ordered and whatever whitespace and escapes a client writes, the fingerprint is the
//! same; change any value that is not ignored, and it differs.

use idem_core::{Body, Fingerprint, JsonBody};
use proptest::prelude::*;
use proptest::sample::Index;

/// A JSON document, with unique names in each object.
#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    /// A whole number of up to 30 digits: more than a float holds exactly.
    Big(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// One step of a path into a document.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Member(String),
    Element(usize),
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::Int),
        "[1-9][0-9]{15,29}".prop_map(Json::Big),
        "[a-z \"\\\\/é\u{1F600}\n]{0,6}".prop_map(Json::Str),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Arr),
            // Names with `/` and `~`, which pointers escape, and the empty name.
            prop::collection::btree_map("[ab/~é]{0,3}", inner, 0..5)
                .prop_map(|members| Json::Obj(members.into_iter().collect())),
        ]
    })
}

/// A little deterministic generator, so that one seed writes one document one way.
struct Writer {
    state: u64,
    out: String,
}

impl Writer {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn space(&mut self) {
        let spaces = [" ", "", "\n\t", "  ", "\r\n"];
        let pick = (self.next() % spaces.len() as u64) as usize;
        self.out.push_str(spaces[pick]);
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                // Escaped or not, as a client may write it.
                c if self.next().is_multiple_of(3) => {
                    let mut units = [0; 2];
                    for unit in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn number(&mut self, digits: &str) {
        // The same value, written one of several ways.
        match self.next() % 4 {
            0 => self.out.push_str(digits),
            1 => self.out.push_str(&format!("{digits}.0")),
            2 => self.out.push_str(&format!("{digits}e0")),
            _ => self.out.push_str(&format!("{digits}0E-1")),
        }
    }

    fn write(&mut self, value: &Json) {
        self.space();
        match value {
            Json::Null => self.out.push_str("null"),
            Json::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => self.number(&n.to_string()),
            Json::Big(digits) => self.number(digits),
            Json::Str(s) => self.string(s),
            Json::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.write(item);
                }
                self.space();
                self.out.push(']');
            }
            Json::Obj(members) => {
                // Members in an order of this writer's choosing.
                let mut order: Vec<usize> = (0..members.len()).collect();
                for i in (1..order.len()).rev() {
                    let j = (self.next() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                self.out.push('{');
                for (n, &i) in order.iter().enumerate() {
                    if n > 0 {
                        self.out.push(',');
                    }
                    self.space();
                    self.string(&members[i].0);
                    self.space();
                    self.out.push(':');
                    self.write(&members[i].1);
                }
                self.space();
                self.out.push('}');
            }
        }
        self.space();
    }
}

fn written(value: &Json, seed: u64) -> String {
    let mut writer = Writer {
        state: seed | 1,
        out: String::new(),
    };
    writer.write(value);
    writer.out
}

fn fingerprint(body: &str, ignore: &[&str]) -> Fingerprint {
    let json = JsonBody::parse(body.as_bytes()).expect("a generated document parses");
    let body = Body::Json {
        body: &json,
        ignore,
    };
    Fingerprint::canonical("POST", "/v1/calls", "", body, [("x", [&b"1"[..]])])
}

/// The paths of every scalar (what a change below replaces).
fn scalars(value: &Json, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Json::Arr(items) => {
            for (i, item) in items.iter().enumerate() {
                at.push(Step::Element(i));
                scalars(item, at, out);
                at.pop();
            }
        }
        Json::Obj(members) => {
            for (name, item) in members {
                at.push(Step::Member(name.clone()));
                scalars(item, at, out);
                at.pop();
            }
        }
        _ => out.push(at.clone()),
    }
}

/// Every path, to containers too (what may be ignored).
fn paths(value: &Json, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    if !at.is_empty() {
        out.push(at.clone());
    }
    match value {
        Json::Arr(items) => {
            for (i, item) in items.iter().enumerate() {
                at.push(Step::Element(i));
                paths(item, at, out);
                at.pop();
            }
        }
        Json::Obj(members) => {
            for (name, item) in members {
                at.push(Step::Member(name.clone()));
                paths(item, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn pointer(path: &[Step]) -> String {
    path.iter()
        .map(|step| match step {
            Step::Member(name) => format!("/{}", name.replace('~', "~0").replace('/', "~1")),
            Step::Element(i) => format!("/{i}"),
        })
        .collect()
}

/// `value` with the scalar at `path` replaced by a different one.
fn changed(value: &Json, path: &[Step]) -> Json {
    let Some((step, rest)) = path.split_first() else {
        return match value {
            Json::Null => Json::Bool(false),
            Json::Bool(b) => Json::Bool(!b),
            Json::Int(n) => Json::Int(n.wrapping_add(1)),
            Json::Big(digits) => Json::Big(format!("{digits}1")),
            Json::Str(s) => Json::Str(format!("{s}x")),
            Json::Arr(_) | Json::Obj(_) => unreachable!("only scalars change"),
        };
    };
    match (value, step) {
        (Json::Arr(items), Step::Element(i)) => {
            let mut items = items.clone();
            items[*i] = changed(&items[*i], rest);
            Json::Arr(items)
        }
        (Json::Obj(members), Step::Member(name)) => Json::Obj(
            members
                .iter()
                .map(|(n, v)| {
                    let v = if n == name {
                        changed(v, rest)
                    } else {
                        v.clone()
                    };
                    (n.clone(), v)
                })
                .collect(),
        ),
        _ => unreachable!("the path was taken from this document"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_order_whitespace_or_escaping_fingerprints_the_same(
        value in json(),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let (a, b) = (written(&value, seeds.0), written(&value, seeds.1));
        prop_assert_eq!(fingerprint(&a, &[]), fingerprint(&b, &[]), "{} vs {}", a, b);
    }

    #[test]
    fn a_changed_value_fingerprints_differently_unless_it_is_ignored(
        value in json(),
        change in any::<Index>(),
        ignored in prop::collection::vec(any::<Index>(), 0..3),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let mut leaves = Vec::new();
        scalars(&value, &mut Vec::new(), &mut leaves);
        prop_assume!(!leaves.is_empty());
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let target = change.get(&leaves).clone();
        let ignored: Vec<Vec<Step>> = if all.is_empty() {
            Vec::new()
        } else {
            ignored.iter().map(|i| i.get(&all).clone()).collect()
        };
        let pointers: Vec<String> = ignored.iter().map(|p| pointer(p)).collect();
        let pointers: Vec<&str> = pointers.iter().map(String::as_str).collect();

        let before = fingerprint(&written(&value, seeds.0), &pointers);
        let after = fingerprint(&written(&changed(&value, &target), seeds.1), &pointers);
        let is_ignored = ignored.iter().any(|p| target.starts_with(p));
        if is_ignored {
            prop_assert_eq!(before, after, "{:?} is ignored by {:?}", target, pointers);
        } else {
            prop_assert_ne!(before, after, "{:?} changed, ignoring {:?}", target, pointers);
        }
    }
}

proptest! {
    #[test]
    fn a_damaged_document_is_read_or_refused_never_a_panic(
        value in json(),
        seed in any::<u64>(),
        damage in prop::collection::vec((any::<Index>(), any::<u8>(), 0..3_u8), 1..4),
        pointer in "(/[a-z0-9~/]{0,3}){0,3}",
    ) {
        let mut body = written(&value, seed).into_bytes();
        for (at, byte, how) in damage {
            let i = if body.is_empty() { 0 } else { at.index(body.len()) };
            match how {
                0 if !body.is_empty() => body[i] = byte,
                1 => body.insert(i, byte),
                _ if !body.is_empty() => {
                    body.remove(i);
                }
                _ => body.push(byte),
            }
        }
        match JsonBody::parse(&body) {
            Ok(json) => {
                let _ = json.text_at(&pointer);
                let _ = Fingerprint::canonical(
                    "POST",
                    "/",
                    "",
                    Body::Json { body: &json, ignore: &[pointer.as_str()] },
                    [("x", [&b"1"[..]])],
                );
            }
            Err(idem_core::BodyError::NotJson { offset, .. }) => prop_assert!(offset <= body.len()),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}
