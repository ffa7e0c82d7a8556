//! Fingerprints of requests and the keys records are stored under, both SHA-256.
//!
//! Every field is length-prefixed, so that no two different field lists hash the same bytes
//! (`("ab", "c")` and `("a", "bc")` differ). Lengths are LEB128 varints (one byte below 128),
//! and the domain tags are short, so that typical requests hash in as few 64-byte blocks as
//! can be: a fingerprint of a small JSON request takes two, a store key one or two.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::key::IdempotencyKey;
use crate::scope::ScopeValue;

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    let (prefix, len) = varint(bytes.len() as u64);
    hasher.update(&prefix[..len]);
    hasher.update(bytes);
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
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
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
    pub fn new(scope: &ScopeValue<'_>, endpoint: Option<&str>, key: &IdempotencyKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"idem:K2");
        field(&mut hasher, scope.kind.as_bytes());
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

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::parse(k.as_bytes(), 255).unwrap()
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
    fn store_key_does_not_contain_the_raw_key_or_credential() {
        let scope = ScopeValue::new("authorization", &b"Bearer sk_live_secret"[..]);
        let sk = StoreKey::new(&scope, None, &key("order-42"));
        let text = sk.to_string();
        assert_eq!(text.len(), 64);
        assert!(!text.contains("secret") && !text.contains("order"));
    }
}
