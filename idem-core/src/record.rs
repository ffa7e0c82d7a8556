//! What a store holds for a key.

use std::sync::Arc;

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::digest::Fingerprint;

/// Fast random numbers for tokens and request ids, where uniqueness matters and secrecy does
/// not: a SplitMix64 stream per thread, seeded once from the operating system. A stream never
/// repeats a value within 2^64 draws, and streams start at random points.
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A fencing token: proof of one claim. Completion, release and lease extension name the
/// token they hold, so that a holder whose lease expired cannot touch a newer claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(u128);

impl Token {
    /// A fresh token: unique, not secret (see [`random_u64`]).
    pub fn random() -> Self {
        Self((u128::from(random_u64()) << 64) | u128::from(random_u64()))
    }

    /// A token from its value, as a store reads it back.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

/// A claim on a key whose operation is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The fingerprint of the request that claimed the key.
    pub fingerprint: Fingerprint,
    /// When the claim lapses unless extended.
    pub lease_until: Timestamp,
    /// The holder's fencing token.
    pub token: Token,
}

/// The recorded outcome of an operation, replayed to every retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The fingerprint of the request that ran.
    pub fingerprint: Fingerprint,
    /// The response status code.
    pub status: u16,
    /// The response headers as sent, less hop-by-hop and per-request ones, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The response body bytes.
    pub body: Bytes,
    /// The body's length when it was larger than the endpoint keeps: then only the status is
    /// kept (no headers, no body), and retries are told the response cannot be replayed.
    pub body_omitted: Option<u64>,
    /// When the operation completed.
    pub completed_at: Timestamp,
    /// When the record lapses.
    pub expires_at: Timestamp,
}

impl Completed {
    /// Bytes of response data the record holds (body, header names and values).
    pub fn response_size(&self) -> usize {
        response_size(&self.headers, &self.body)
    }
}

/// Bytes of response data: body, header names and values.
pub(crate) fn response_size(headers: &[(String, Bytes)], body: &[u8]) -> usize {
    body.len()
        + headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

/// A store's record for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The operation is running.
    InFlight(InFlight),
    /// The operation finished and its response is recorded.
    Completed(Arc<Completed>),
}

impl Record {
    /// The fingerprint of the request the record belongs to.
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Record::InFlight(f) => f.fingerprint,
            Record::Completed(c) => c.fingerprint,
        }
    }

    /// When the record stops counting: the end of the lease, or the expiry.
    pub fn lapses_at(&self) -> Timestamp {
        match self {
            Record::InFlight(f) => f.lease_until,
            Record::Completed(c) => c.expires_at,
        }
    }

    /// Whether the record still counts at `now`. A lapsed record is as good as absent.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.lapses_at() > now
    }
}
