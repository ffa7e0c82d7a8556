//! Fingerprints of requests and the keys records are stored under, both SHA-256.
//!
//! Every field is length-prefixed, so that no two different field lists hash the same bytes
//! (`("ab", "c")` and `("a", "bc")` differ). Lengths are LEB128 varints (one byte below 128),
//! and the domain tags are short, so that typical requests hash in as few 64-byte blocks as
//! can be: a fingerprint of a small JSON request takes two, a store key one or two.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::canonical::{json, pointer, Body};
use crate::key::ClientKey;
use crate::scope::ScopeValue;

/// Where a digest's input is written: the hasher itself, or a buffer hashed at once (many
/// small writes, as a canonical form makes, cost a hasher far more than one long one).
pub(crate) trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// SHA-256 of a stream written in many small pieces, gathered in a buffer of at most
/// [`Buffered::MAX`] bytes and hashed a buffer at a time: one call for a small stream, and
/// memory bounded for a large one (a JSON body's canonical stream is several times its size).
struct Buffered {
    buffer: Vec<u8>,
    hasher: Sha256,
}

impl Buffered {
    const MAX: usize = 16 * 1024;

    /// A buffer for a stream of about `expected` bytes.
    fn new(expected: usize) -> Self {
        Self {
            buffer: Vec::with_capacity(expected.min(Self::MAX)),
            hasher: Sha256::new(),
        }
    }

    fn finish(mut self) -> [u8; 32] {
        self.hasher.update(&self.buffer);
        self.hasher.finalize().into()
    }
}

impl Sink for Buffered {
    fn put(&mut self, bytes: &[u8]) {
        if self.buffer.len() + bytes.len() > Self::MAX {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
            if bytes.len() > Self::MAX {
                return self.hasher.update(bytes);
            }
        }
        self.buffer.extend_from_slice(bytes);
    }
}

/// Writes `bytes` behind their length.
pub(crate) fn field(out: &mut impl Sink, bytes: &[u8]) {
    varint_update(out, bytes.len() as u64);
    out.put(bytes);
}

/// Writes `n` as a varint.
#[inline]
pub(crate) fn varint_update(out: &mut impl Sink, n: u64) {
    // Most lengths are below 128: their one byte, written as one, costs far less than the
    // general case's copy of a slice of unknown length (311 instructions less per new key,
    // `scripts/bench-instructions`).
    if n < 0x80 {
        return out.put(&[n as u8]);
    }
    let (bytes, len) = varint(n);
    out.put(&bytes[..len]);
}

/// `n` as an LEB128 varint: the bytes, and how many of them are used.
fn varint(mut n: u64) -> ([u8; 10], usize) {
    let mut out = [0; 10];
    let mut len = 0;
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out[len] = low;
            return (out, len + 1);
        }
        out[len] = low | 0x80;
        len += 1;
    }
}

fn hex(bytes: &[u8; 32], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    // One write of the whole digest: a remote store names every record by it, and a
    // `write!` per byte cost a Redis operation about a microsecond.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    f.write_str(std::str::from_utf8(&out).expect("hex digits are ASCII"))
}

/// What identifies a request's content: method, concrete path, query and body.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of one request. The body is hashed where it lies, not copied.
    pub fn new(method: &str, path: &str, query: &str, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"idem:F2");
        for part in [method.as_bytes(), path.as_bytes(), query.as_bytes(), body] {
            field(&mut hasher, part);
        }
        Self(hasher.finalize().into())
    }

    /// The fingerprint of a request whose body is read in a canonical form, or whose
    /// headers count: in every form but [`Body::Bytes`], query parameters compare in any
    /// order of their names; `headers` are the (name, values) of the headers that count, in
    /// the endpoint's order, each name's values in the request's order.
    ///
    /// A body of bytes with no headers fingerprints as [`Fingerprint::new`] does, so that
    /// naming the default form changes nothing. Other fingerprints are tagged with their
    /// form, so no two forms ever give one fingerprint.
    ///
    /// ```
    /// use idem_core::{Body, Fingerprint, JsonBody};
    ///
    /// let fingerprint = |body: &[u8], query: &str| {
    ///     let json = JsonBody::parse(body).unwrap();
    ///     let body = Body::Json { body: &json, ignore: &["/sent_at"] };
    ///     Fingerprint::canonical("POST", "/v1/calls", query, body, [("content-type", [&b"application/json"[..]])])
    /// };
    /// assert_eq!(
    ///     fingerprint(br#"{"to":"+15555550123","sent_at":1}"#, "a=1&b=2"),
    ///     fingerprint(br#"{ "sent_at": 2, "to": "+15555550123" }"#, "b=2&a=1"),
    /// );
    /// ```
    pub fn canonical<'h, H, V>(
        method: &str,
        path: &str,
        query: &str,
        body: Body<'_>,
        headers: H,
    ) -> Self
    where
        H: IntoIterator<Item = (&'h str, V)>,
        V: IntoIterator<Item = &'h [u8]>,
    {
        let mut headers = headers.into_iter().peekable();
        if let (Body::Bytes(bytes), None) = (body, headers.peek()) {
            return Self::new(method, path, query, bytes);
        }
        // The canonical stream is gathered in a buffer, hashed each time it fills.
        let mut out = Buffered::new(
            match body {
                Body::Bytes(bytes) | Body::Form(bytes) | Body::Custom(bytes) => bytes.len(),
                Body::Json { .. } => 1024,
            } + query.len()
                + 64,
        );
        out.put(b"idem:F3");
        out.put(match body {
            Body::Bytes(_) => b"b",
            Body::Json { .. } => b"j",
            Body::Form(_) => b"f",
            Body::Custom(_) => b"c",
        });
        field(&mut out, method.as_bytes());
        field(&mut out, path.as_bytes());
        match body {
            Body::Bytes(bytes) => {
                field(&mut out, query.as_bytes());
                field(&mut out, bytes);
            }
            Body::Json { body, ignore } => {
                crate::canonical::hash_pairs(&mut out, query.as_bytes());
                let pointers: Vec<Vec<pointer::Token<'_>>> = ignore
                    .iter()
                    .filter_map(|p| pointer::parse(p).ok())
                    .collect();
                let steps: Vec<&[pointer::Token<'_>]> =
                    pointers.iter().map(Vec::as_slice).collect();
                match body.value() {
                    Some(value) => json::hash(&mut out, value, &steps),
                    // No document: a tag no value starts with.
                    None => out.put(b"e"),
                }
            }
            Body::Form(bytes) => {
                crate::canonical::hash_pairs(&mut out, query.as_bytes());
                crate::canonical::hash_pairs(&mut out, bytes);
            }
            Body::Custom(bytes) => {
                crate::canonical::hash_pairs(&mut out, query.as_bytes());
                field(&mut out, bytes);
            }
        }
        // After the body, a count of headers, then each name (lowercase, as header names
        // are case-insensitive) and its values, each behind a 1, the list closed by a 0.
        let headers: Vec<(&str, V)> = headers.collect();
        varint_update(&mut out, headers.len() as u64);
        for (name, values) in headers {
            field(&mut out, name.to_ascii_lowercase().as_bytes());
            for value in values {
                out.put(&[1]);
                field(&mut out, value);
            }
            out.put(&[0]);
        }
        Self(out.finish())
    }

    /// A fingerprint from its bytes, as a store reads it back.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(")?;
        hex(&self.0, f)?;
        f.write_str(")")
    }
}

/// The key a record is stored under: a hash of scope, optional endpoint and key, so that
/// neither raw keys nor credentials ever reach a store.
///
/// The scope is hashed as its kind, its source when its kind has one (a header's name, a scope
/// function's identity), and its value. Scopes with one source hash as they always have, so
/// records written by an earlier release under them are still found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl std::hash::Hash for StoreKey {
    /// Hashes the [`first 128 bits`](StoreKey::first_128): the key is a digest already, and a
    /// hasher that reads one `u128` can spread it with a single multiply.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.first_128());
    }
}

impl StoreKey {
    /// The store key of `key` in `scope`; `endpoint` is given when keys are per endpoint.
    pub fn new(scope: &ScopeValue<'_>, endpoint: Option<&str>, key: &ClientKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"idem:K2");
        field(&mut hasher, scope.kind.as_bytes());
        // Whether a source follows is fixed by the kind, so no marker is needed to tell
        // (kind, source, value) from (kind, value).
        if let Some(source) = &scope.source {
            field(&mut hasher, source.as_bytes());
        }
        field(&mut hasher, &scope.value);
        match endpoint {
            Some(endpoint) => {
                hasher.update([1]);
                field(&mut hasher, endpoint.as_bytes());
            }
            None => hasher.update([0]),
        }
        field(&mut hasher, key.as_str().as_bytes());
        Self(hasher.finalize().into())
    }

    /// A store key from its bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest's first 128 bits (big-endian): as unlikely to collide as a random UUID, and
    /// what the embedded store holds a record under.
    pub fn first_128(&self) -> u128 {
        let mut first = [0; 16];
        first.copy_from_slice(&self.0[..16]);
        u128::from_be_bytes(first)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(")?;
        hex(&self.0, f)?;
        f.write_str(")")
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::JsonBody;
    use crate::scope::Scope;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |name| {
            (pairs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))).map(|(_, v)| v.as_bytes())
        }
    }

    fn key(k: &str) -> ClientKey {
        ClientKey::parse(k.as_bytes(), 255).unwrap()
    }

    #[test]
    fn fingerprint_fields_cannot_run_into_each_other() {
        assert_ne!(
            Fingerprint::new("POST", "/ab", "", b"c"),
            Fingerprint::new("POST", "/a", "", b"bc")
        );
        assert_ne!(
            Fingerprint::new("POST", "/a", "x=1", b""),
            Fingerprint::new("POST", "/a", "", b"x=1")
        );
        assert_eq!(
            Fingerprint::new("POST", "/a", "", b"{}"),
            Fingerprint::new("POST", "/a", "", b"{}")
        );
        assert_ne!(
            Fingerprint::new("POST", "/a", "", b"{}"),
            Fingerprint::new("PUT", "/a", "", b"{}")
        );
    }

    type NoHeaders = [(&'static str, [&'static [u8]; 0]); 0];

    fn canonical(query: &str, body: Body<'_>) -> Fingerprint {
        Fingerprint::canonical("POST", "/a", query, body, NoHeaders::default())
    }

    #[test]
    fn the_bytes_form_without_headers_is_the_plain_fingerprint() {
        assert_eq!(
            canonical("b=2&a=1", Body::Bytes(b"{}")),
            Fingerprint::new("POST", "/a", "b=2&a=1", b"{}")
        );
        assert_ne!(
            canonical("b=2&a=1", Body::Bytes(b"{}")),
            canonical("a=1&b=2", Body::Bytes(b"{}")),
            "bytes keep the query as sent"
        );
    }

    #[test]
    fn canonical_forms_read_the_query_in_any_order() {
        let json = JsonBody::parse(b"{}").unwrap();
        let as_json = |query| {
            canonical(
                query,
                Body::Json {
                    body: &json,
                    ignore: &[],
                },
            )
        };
        assert_eq!(as_json("b=2&a=1"), as_json("a=1&b=2"));
        assert_ne!(as_json("a=1"), as_json("a=2"));
        assert_eq!(
            canonical("x=1&y", Body::Form(b"b=2&a=1")),
            canonical("y=&x=%31", Body::Form(b"a=1&b=2"))
        );
        assert_eq!(
            canonical("b&a", Body::Custom(b"c")),
            canonical("a&b", Body::Custom(b"c"))
        );
    }

    #[test]
    fn no_two_forms_share_a_fingerprint() {
        let json = JsonBody::parse(b"{}").unwrap();
        let prints = [
            canonical("", Body::Bytes(b"{}")),
            canonical(
                "",
                Body::Json {
                    body: &json,
                    ignore: &[],
                },
            ),
            canonical("", Body::Form(b"{}")),
            canonical("", Body::Custom(b"{}")),
            Fingerprint::canonical("POST", "/a", "", Body::Bytes(b"{}"), [("x", [])]),
        ];
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn headers_count_by_name_in_any_case_and_by_every_value() {
        let with = |headers: &[(&'static str, &[&'static [u8]])]| {
            Fingerprint::canonical(
                "POST",
                "/a",
                "",
                Body::Bytes(b"{}"),
                headers.iter().map(|(n, v)| (*n, v.iter().copied())),
            )
        };
        let json: &[&[u8]] = &[b"application/json"];
        assert_eq!(
            with(&[("Content-Type", json)]),
            with(&[("content-type", json)])
        );
        assert_ne!(
            with(&[("content-type", json)]),
            with(&[("content-type", &[b"text/plain"])])
        );
        assert_ne!(
            with(&[("x-a", &[])]),
            with(&[("x-a", &[b""])]),
            "absent is not empty"
        );
        assert_ne!(
            with(&[("x-a", &[b"1", b"2"])]),
            with(&[("x-a", &[b"2", b"1"])])
        );
        assert_ne!(
            with(&[("x-a", &[b"1"]), ("x-b", &[])]),
            with(&[("x-a", &[]), ("x-b", &[b"1"])])
        );
    }

    #[test]
    fn length_prefixes_are_varints_that_never_collide() {
        assert_eq!(varint(0), ([0; 10], 1));
        let (b, n) = varint(127);
        assert_eq!(&b[..n], &[0x7f]);
        let (b, n) = varint(128);
        assert_eq!(&b[..n], &[0x80, 0x01]);
        let (b, n) = varint(300);
        assert_eq!(&b[..n], &[0xac, 0x02]);
        let (b, n) = varint(u64::MAX);
        assert_eq!(n, 10);
        assert_eq!(b[9], 0x01);
        // The one-byte case is written apart: the same bytes.
        for n in [0, 1, 127, 128, 300, u64::MAX] {
            let mut written = Vec::new();
            varint_update(&mut written, n);
            let (b, len) = varint(n);
            assert_eq!(written, &b[..len]);
        }
        // Around the one-byte boundary, a shorter body moved into the query differs.
        let long = [b'a'; 200];
        assert_ne!(
            Fingerprint::new(
                "POST",
                "/a",
                std::str::from_utf8(&long[..127]).unwrap(),
                &long[127..]
            ),
            Fingerprint::new(
                "POST",
                "/a",
                std::str::from_utf8(&long[..128]).unwrap(),
                &long[128..]
            )
        );
    }

    #[test]
    fn store_keys_separate_scopes_and_endpoints() {
        let tenant_a = ScopeValue::new("authorization", &b"Bearer a"[..]);
        let tenant_b = ScopeValue::new("authorization", &b"Bearer b"[..]);
        let k = key("k1");
        assert_ne!(
            StoreKey::new(&tenant_a, None, &k),
            StoreKey::new(&tenant_b, None, &k)
        );
        assert_ne!(
            StoreKey::new(&tenant_a, None, &k),
            StoreKey::new(&tenant_a, Some("POST /v1/calls"), &k)
        );
        assert_ne!(
            StoreKey::new(&tenant_a, Some("POST /a"), &k),
            StoreKey::new(&tenant_a, Some("POST /b"), &k)
        );
        let header = ScopeValue::new("x-api-key", &b"Bearer a"[..]);
        assert_ne!(
            StoreKey::new(&tenant_a, None, &k),
            StoreKey::new(&header, None, &k)
        );
    }

    #[test]
    fn the_source_of_a_scope_is_part_of_its_store_key() {
        let k = key("k1");
        let tenant = ScopeValue::with_source("named_header", "x-tenant", &b"acme"[..]);
        let user = ScopeValue::with_source("named_header", "x-user", &b"acme"[..]);
        assert_ne!(
            StoreKey::new(&tenant, None, &k),
            StoreKey::new(&user, None, &k)
        );
        let f = ScopeValue::of_function("app::tenant", &b"acme"[..]);
        let g = ScopeValue::of_function("app::user", &b"acme"[..]);
        assert_ne!(StoreKey::new(&f, None, &k), StoreKey::new(&g, None, &k));
        // Source and value are length-prefixed apart: moving bytes from one to the other is
        // another scope.
        let split_a = ScopeValue::with_source("named_header", "x-ab", &b"c"[..]);
        let split_b = ScopeValue::with_source("named_header", "x-a", &b"bc"[..]);
        assert_ne!(
            StoreKey::new(&split_a, None, &k),
            StoreKey::new(&split_b, None, &k)
        );
        // A source cannot pose as a value of a one-source kind, nor as another kind.
        let as_value = ScopeValue::new("named_header", &b"\x08x-tenant\x04acme"[..]);
        assert_ne!(
            StoreKey::new(&tenant, None, &k),
            StoreKey::new(&as_value, None, &k)
        );
    }

    /// Records written before the sources of scopes were hashed stay reachable under the
    /// scopes that have none: the expected digests are SHA-256 over the layout written out by
    /// hand (`idem:K2`, then each field as a one-byte length and its bytes, the endpoint
    /// behind a 0 or 1 marker).
    #[test]
    fn store_keys_of_one_source_scopes_are_unchanged() {
        let k = key("k1");
        let cases = [
            (
                StoreKey::new(
                    &ScopeValue::new("authorization", &b"Bearer a"[..]),
                    None,
                    &k,
                ),
                "4ce7db943a028b394b14d5098b83a468235045563522c0b72c5591f7eac0b5d3",
            ),
            (
                StoreKey::new(
                    &ScopeValue::new("x-api-key", &b"key_1"[..]),
                    Some("POST /v1/calls"),
                    &k,
                ),
                "943ee5b0136d55205fd3a6696f9931b9f617eb98dc7d19baf2aad7069d2e5369",
            ),
            (
                StoreKey::new(&ScopeValue::new("global", &b""[..]), None, &k),
                "92256a3fbfc6966226bb1519ffb186566c9fb057f7d72b71e2dd91062f884fdd",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.to_string(), want);
        }
    }

    /// Fingerprints of stored records keep matching their retries across releases: the
    /// expected digest is SHA-256 over the layout written out by hand (`idem:F2`, then each of
    /// method, path, query and body as a one-byte length and its bytes).
    #[test]
    fn fingerprints_are_unchanged() {
        let mut layout = b"idem:F2".to_vec();
        for part in [
            &b"POST"[..],
            b"/v1/calls",
            b"a=1",
            br#"{"to":"+15555550123"}"#,
        ] {
            layout.push(part.len() as u8);
            layout.extend_from_slice(part);
        }
        assert_eq!(
            Fingerprint::new("POST", "/v1/calls", "a=1", br#"{"to":"+15555550123"}"#),
            Fingerprint::from_bytes(Sha256::digest(&layout).into())
        );
    }

    /// Every other store key and fingerprint a record is kept under, pinned: a retry that
    /// spans an upgrade must find its record, and match it. Unlike the layouts above, these
    /// digests are the ones this layout gave when pinned (the JSON and form canonical forms are
    /// too long to write out by hand): one that changes fails here, and a change made on
    /// purpose is a breaking change of the release that makes it.
    #[test]
    fn digests_are_stable_across_releases() {
        let k = key("k1");
        let basic = [("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")];
        let tenant = [("X-Tenant", "acme")];
        let scopes = [
            Scope::BasicAuthUser.resolve(headers(&basic)).unwrap(),
            Scope::Header("X-Tenant").resolve(headers(&tenant)).unwrap(),
            Scope::Principal
                .resolve_with_principal(headers(&[]), Some(&b"user_42"[..]))
                .unwrap(),
            ScopeValue::of_function("app::tenant", &b"acme"[..]),
        ];
        let keys: Vec<String> = scopes
            .iter()
            .map(|scope| StoreKey::new(scope, Some("POST /v1/calls/{id}"), &k).to_string())
            .collect();
        let json = JsonBody::parse(br#"{"to":"+1555","n":1.50,"meta":{"sent_at":1}}"#).unwrap();
        let fingerprint = |body, headers: &[(&str, &[u8])]| {
            let headers = headers.iter().map(|&(name, value)| (name, [value]));
            let fingerprint = Fingerprint::canonical("POST", "/v1/calls", "b=2&a=1", body, headers);
            (fingerprint.as_bytes().iter())
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let ignore = ["/meta/sent_at"];
        let fingerprints = [
            fingerprint(
                Body::Json {
                    body: &json,
                    ignore: &[],
                },
                &[],
            ),
            fingerprint(
                Body::Json {
                    body: &json,
                    ignore: &ignore,
                },
                &[],
            ),
            fingerprint(Body::Form(b"to=%2B1555&n=1"), &[]),
            fingerprint(Body::Custom(b"custom"), &[]),
            fingerprint(
                Body::Bytes(b"{}"),
                &[
                    ("X-Account", b"acct_1"),
                    ("Content-Type", b"application/json"),
                ],
            ),
        ];
        let got: Vec<&str> = keys
            .iter()
            .chain(&fingerprints)
            .map(String::as_str)
            .collect();
        let pinned = [
            // Store keys: Basic user, named header, principal, scope function.
            "5154ea918104c51df50bb3864365fa6749da7a6befcab54b051aa3f12d900ae2",
            "edf54f16dc6da26ff3702bc537f7b6bfb0cd90d46d6af8c950d93736101d2bbf",
            "47703504a15ed5ea64e48806810fe56fef659fe9f42beb3bfa60169181c47057",
            "ba02448c51979195c6960d7131dd30f2725ccb033fee09bd8966f18c27f7d8c9",
            // Fingerprints: JSON, JSON less a member, form, a function's, bytes with headers.
            "46442f310096ea287efbb610c993e79d2877d7128ad8e569b5c2e23c86343611",
            "04350c81bc61e9036fa041ca95a0b6766063b845172e8e4441256ca70a44da9d",
            "c44a43303cec5f9c36f8028c8a29ac36f884b00e6677e669dfa9f4aa3d67721e",
            "78f6a8c96d4ab67f0b4251d143333d048fa9c574cbcb5406633432e995cab806",
            "17d9f15f9fe997041af69f372b8827f3050d65f6d1d354911d8793c59a82f865",
        ];
        assert_eq!(got, pinned);
    }

    #[test]
    fn store_key_does_not_contain_the_raw_key_or_credential() {
        let scope = ScopeValue::new("authorization", &b"Bearer sk_live_secret"[..]);
        let sk = StoreKey::new(&scope, None, &key("order-42"));
        let text = sk.to_string();
        assert_eq!(text.len(), 64);
        assert!(!text.contains("secret") && !text.contains("order"));
    }
}
