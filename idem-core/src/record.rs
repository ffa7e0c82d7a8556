//! What a store holds for a key.

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::digest::Fingerprint;

/// Fast random numbers for tokens and request ids, where uniqueness matters and secrecy does
/// not: a SplitMix64 stream per thread, seeded once from the operating system. A stream never
/// repeats a value within 2^64 draws, and streams start at random points.
pub(crate) fn random_u64() -> u64 {
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
    /// A fresh token: unique, not secret (two draws of a SplitMix64 stream per thread,
    /// seeded once from the operating system).
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

/// A response as recorded: status, headers and body packed in one buffer, so that a record
/// costs one allocation however many headers it has, and a replay shares its bytes instead of
/// copying them.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The status (u16), where the body starts (u32, or [`OMITTED`]), the header count (u16),
    /// each header as name length (u16), name, value length (u32), value; then the body.
    /// Integers are big-endian. A response too large to keep holds, after the status and
    /// `OMITTED`, only its size (u64).
    data: Bytes,
}

const OMITTED: u32 = u32::MAX;
/// Status and body offset come before the header section.
const PREFIX: usize = 6;

impl Response {
    /// A response with `headers` (names in lowercase, as HTTP/2 and actix write them; the
    /// caller leaves out hop-by-hop and per-request ones) and `body`.
    ///
    /// Headers beyond the 65,535th are dropped, as are header names over 64 KiB and values
    /// over 4 GiB, which no HTTP server sends.
    pub fn new<'a, I>(status: u16, headers: I, body: &[u8]) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
    {
        let kept = |headers: I| {
            headers
                .into_iter()
                .filter(|(name, value)| {
                    name.len() <= usize::from(u16::MAX) && u32::try_from(value.len()).is_ok()
                })
                .take(usize::from(u16::MAX))
        };
        // Sized exactly, so that the buffer costs no more than its contents and `Bytes` owns
        // it without another allocation. The headers are read twice: pass something cheap
        // to clone (an array, a reference's iterator), not a `Vec`.
        let section = 2 + kept(headers.clone())
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum::<usize>();
        let mut data = Vec::with_capacity(PREFIX + section + body.len());
        data.extend_from_slice(&status.to_be_bytes());
        let body_at = u32::try_from(PREFIX + section).unwrap_or(OMITTED - 1);
        data.extend_from_slice(&body_at.to_be_bytes());
        data.extend_from_slice(&[0, 0]);
        let mut count: u16 = 0;
        for (name, value) in kept(headers) {
            count += 1;
            data.extend_from_slice(&(name.len() as u16).to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(&(value.len() as u32).to_be_bytes());
            data.extend_from_slice(value);
        }
        data[PREFIX..PREFIX + 2].copy_from_slice(&count.to_be_bytes());
        data.extend_from_slice(body);
        Self {
            data: Bytes::from(data.into_boxed_slice()),
        }
    }

    /// The record of a response too large to keep: its status and size only.
    pub fn omitted(status: u16, size: u64) -> Self {
        let mut data = [0; PREFIX + 8];
        data[..2].copy_from_slice(&status.to_be_bytes());
        data[2..PREFIX].copy_from_slice(&OMITTED.to_be_bytes());
        data[PREFIX..].copy_from_slice(&size.to_be_bytes());
        Self {
            data: Bytes::copy_from_slice(&data),
        }
    }

    /// A response from the packed header section written by [`Response::header_section`] and
    /// a body, as a store reads them back.
    ///
    /// # Errors
    /// What is wrong with a header section that does not parse.
    pub fn from_parts(status: u16, header_section: &[u8], body: &[u8]) -> Result<Self, String> {
        let end = headers_end(header_section)?;
        if end != header_section.len() {
            return Err("trailing bytes after the headers".into());
        }
        let body_at = u32::try_from(PREFIX + end)
            .ok()
            .filter(|&at| at != OMITTED)
            .ok_or("header section too large")?;
        let mut data = Vec::with_capacity(PREFIX + header_section.len() + body.len());
        data.extend_from_slice(&status.to_be_bytes());
        data.extend_from_slice(&body_at.to_be_bytes());
        data.extend_from_slice(header_section);
        data.extend_from_slice(body);
        Ok(Self {
            data: Bytes::from(data.into_boxed_slice()),
        })
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        u16::from_be_bytes([self.data[0], self.data[1]])
    }

    fn body_at(&self) -> u32 {
        u32::from_be_bytes([self.data[2], self.data[3], self.data[4], self.data[5]])
    }

    /// How many headers [`headers`](Self::headers) yields (read from the record, not counted).
    pub fn header_count(&self) -> usize {
        match self.body_at() {
            OMITTED => 0,
            _ => usize::from(u16::from_be_bytes([
                self.data[PREFIX],
                self.data[PREFIX + 1],
            ])),
        }
    }

    /// The headers, in order: name and value.
    pub fn headers(&self) -> Headers<'_> {
        Headers {
            data: self.header_section(),
            at: 2,
        }
    }

    /// The headers, with values that share the record's bytes: a replay copies none.
    pub fn shared_headers(&self) -> impl Iterator<Item = (&str, Bytes)> + '_ {
        self.headers()
            .map(|(name, value)| (name, self.data.slice_ref(value)))
    }

    /// The headers packed (count, then each name and value with their lengths), as a store
    /// writes them.
    pub fn header_section(&self) -> &[u8] {
        match self.body_at() {
            OMITTED => &[0, 0],
            at => &self.data[PREFIX..at as usize],
        }
    }

    /// The body: shares the record's bytes.
    pub fn body(&self) -> Bytes {
        match self.body_at() {
            OMITTED => Bytes::new(),
            at => self.data.slice(at as usize..),
        }
    }

    /// The size of a response that was too large to keep (then it has no headers or body).
    pub fn body_omitted(&self) -> Option<u64> {
        match self.body_at() {
            OMITTED => Some(u64::from_be_bytes(
                self.data[PREFIX..].try_into().unwrap_or_default(),
            )),
            _ => None,
        }
    }

    /// Bytes of response data: each header's name and value with 6 bytes that frame them,
    /// and the body. What a record holds beyond it is the same for every response
    /// ([`held_bytes`](Self::held_bytes) less 8), so a limit on it bounds the record.
    pub fn size(&self) -> usize {
        match self.body_at() {
            OMITTED => 0,
            _ => self.data.len() - PREFIX - 2,
        }
    }

    /// Bytes the record holds for the response, framing included.
    pub fn held_bytes(&self) -> usize {
        self.data.len()
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<_> = self
            .headers()
            .map(|(n, v)| (n, String::from_utf8_lossy(v)))
            .collect();
        f.debug_struct("Response")
            .field("status", &self.status())
            .field("headers", &headers)
            .field("body", &self.body())
            .field("body_omitted", &self.body_omitted())
            .finish()
    }
}

/// Where the headers of a packed section end, checking every length and name on the way.
pub(crate) fn headers_end(data: &[u8]) -> Result<usize, String> {
    let count = data
        .get(..2)
        .ok_or("truncated header count")?
        .try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| "truncated header count")?;
    let mut at = 2;
    for _ in 0..count {
        let (name, _, next) = header_at(data, at).ok_or("truncated header")?;
        std::str::from_utf8(name).map_err(|_| "header name is not UTF-8")?;
        at = next;
    }
    Ok(at)
}

/// The name and value of the header at `at`, and where the next starts.
///
/// Each length is checked against what is left before it is added to a position, so that a
/// corrupt length cannot overflow (a value's `u32` length could, on a 32-bit target).
fn header_at(data: &[u8], at: usize) -> Option<(&[u8], &[u8], usize)> {
    let rest = data.get(at..)?;
    let name_len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let name = rest.get(2..)?.get(..name_len)?;
    let rest = &rest[2 + name_len..];
    let value_len = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    let value = rest.get(4..)?.get(..value_len)?;
    Some((name, value, at + 2 + name_len + 4 + value_len))
}

/// The headers of a [`Response`]: name and value, in order.
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    /// The header section.
    data: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.data.len() {
            return None;
        }
        // Packed by `Response::new` or checked by `from_parts`: a malformed header cannot be
        // met here, and would only end the iteration.
        let (name, value, next) = header_at(self.data, self.at)?;
        self.at = next;
        Some((std::str::from_utf8(name).ok()?, value))
    }
}

/// The recorded outcome of an operation, replayed to every retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The fingerprint of the request that ran.
    pub fingerprint: Fingerprint,
    /// The response, as sent less hop-by-hop and per-request headers; or, when it was larger
    /// than the endpoint keeps, only its status and size, and retries are told it cannot be
    /// replayed.
    pub response: Response,
    /// When the operation completed.
    pub completed_at: Timestamp,
    /// When the record lapses.
    pub expires_at: Timestamp,
}

/// A store's record for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The operation is running.
    InFlight(InFlight),
    /// The operation finished and its response is recorded.
    Completed(Completed),
}

impl Record {
    /// Whether this is the claim `token` holds: a claim sent twice (a client that resends a
    /// command whose answer was lost, as the `redis` crate's cluster client does) finds the
    /// first. Its token is its attempt's alone, so the key is that request's, not another's
    /// still running.
    pub(crate) fn is_claim_of(&self, token: Token) -> bool {
        matches!(self, Record::InFlight(held) if held.token == token)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Response {
        Response::new(
            201,
            [
                ("location", &b"/v1/calls/1"[..]),
                ("set-cookie", b"a=1"),
                ("set-cookie", b""),
            ],
            b"{\"id\":1}",
        )
    }

    #[test]
    fn a_response_keeps_status_headers_in_order_and_body() {
        let r = sample();
        assert_eq!(r.status(), 201);
        let headers: Vec<_> = r.headers().collect();
        assert_eq!(
            headers,
            [
                ("location", &b"/v1/calls/1"[..]),
                ("set-cookie", b"a=1"),
                ("set-cookie", b""),
            ]
        );
        assert_eq!(r.header_count(), headers.len());
        let shared: Vec<_> = r.shared_headers().map(|(n, v)| (n, v.to_vec())).collect();
        assert_eq!(shared[0], ("location", b"/v1/calls/1".to_vec()));
        assert_eq!(&r.body()[..], b"{\"id\":1}");
        assert_eq!(r.body_omitted(), None);
        assert_eq!(r.size(), 8 + 11 + 10 + 3 + 10 + 3 * 6 + 8);
        // One buffer, exactly as large as its contents.
        assert_eq!(r.held_bytes(), 6 + 2 + r.size());
    }

    #[test]
    fn a_response_without_headers_or_body_is_empty_but_for_its_status() {
        let r = Response::new(204, [], b"");
        assert_eq!(
            (r.status(), r.headers().count(), r.body().len()),
            (204, 0, 0)
        );
        assert_eq!(r.size(), 0);
    }

    #[test]
    fn an_omitted_response_holds_only_status_and_size() {
        let r = Response::omitted(201, 5 << 20);
        assert_eq!(r.status(), 201);
        assert_eq!(r.body_omitted(), Some(5 << 20));
        assert_eq!((r.headers().count(), r.body().len(), r.size()), (0, 0, 0));
        assert_eq!(r.header_count(), 0);
        assert_eq!(r.header_section(), [0, 0]);
    }

    #[test]
    fn parts_read_back_are_the_response_written() {
        let r = sample();
        let back = Response::from_parts(201, r.header_section(), &r.body()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn damaged_header_sections_are_refused() {
        let r = sample();
        let section = r.header_section();
        for (bad, why) in [
            (&section[..1], "truncated header count"),
            (&section[..section.len() - 1], "truncated header"),
            (
                &[0, 1, 0, 1, 0xff, 0, 0, 0, 0][..],
                "header name is not UTF-8",
            ),
            (&[0, 0, 9][..], "trailing bytes after the headers"),
        ] {
            assert_eq!(Response::from_parts(200, bad, b"").unwrap_err(), why);
        }
    }
}
