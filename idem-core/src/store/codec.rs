//! A compact, versioned byte encoding of records, for stores outside the process.
//!
//! ```text
//! <version>:<kind>:<lapses_at ms>:<token, 32 hex digits>:<binary>
//! ```
//! The ASCII header lets a store's server-side script judge a record (has it lapsed, which
//! token holds it) without decoding the rest. `kind` is `F` (in flight) or `C` (completed).
//! The binary part is the 32-byte fingerprint, then for a completed record: status (u16),
//! completed_at (u64), header count (u16), each header as name length (u16), name, value
//! length (u32), value, and last either `0`, the body length (u32) and body, or `1` and the
//! size (u64) of a response too large to keep, as `max_response` counts it (see
//! [`Response::size`]), for a record kept without its headers and body. Integers are
//! big-endian.

use super::StoreError;
use crate::clock::Timestamp;
use crate::digest::Fingerprint;
use crate::record::{headers_end, Completed, InFlight, Record, Response, Token};

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// The most bytes an encoded completed record takes beyond its response's
/// [`held_bytes`](Response::held_bytes): the header with the widest time (20 digits), the
/// fingerprint, status and completion time, and the body's tag and length, less the status
/// and body offset the response holds itself. A claim takes fewer.
pub const MAX_OVERHEAD: usize = HEADER_MAX + 32 + 2 + 8 + 1 + 4 - 6;

/// `<version>:<kind>:<lapses_at>:<token>:` at its widest.
const HEADER_MAX: usize = 1 + 1 + 1 + 1 + 20 + 1 + 32 + 1;

/// The token as it appears in a record's header.
pub fn token_hex(token: Token) -> String {
    format!("{:032x}", token.as_u128())
}

/// Encodes `record`.
///
/// # Errors
/// [`StoreError::TooLarge`] when a header or the body does not fit the format's length
/// fields; [`StoreError::Refused`] for a status outside 100 to 999.
pub fn encode(record: &Record, token: Token) -> Result<Vec<u8>, StoreError> {
    let (kind, lapses_at) = match record {
        Record::InFlight(f) => ('F', f.lease_until),
        Record::Completed(c) => ('C', c.expires_at),
    };
    let mut out = format!(
        "{VERSION}:{kind}:{}:{}:",
        lapses_at.as_millis(),
        token_hex(token)
    )
    .into_bytes();
    out.extend_from_slice(record.fingerprint().as_bytes());
    if let Record::Completed(c) = record {
        let response = &c.response;
        super::check_status(response)?;
        // The header section is already in this format: count, then lengths and bytes.
        let headers = response.header_section();
        let body = response.body();
        out.reserve(16 + headers.len() + body.len());
        out.extend_from_slice(&response.status().to_be_bytes());
        out.extend_from_slice(&c.completed_at.as_millis().to_be_bytes());
        out.extend_from_slice(headers);
        match response.body_omitted() {
            None => {
                out.push(0);
                out.extend_from_slice(&len::<u32>(body.len())?.to_be_bytes());
                out.extend_from_slice(&body);
            }
            Some(size) => {
                out.push(1);
                out.extend_from_slice(&size.to_be_bytes());
            }
        }
    }
    Ok(out)
}

fn len<T: TryFrom<usize>>(n: usize) -> Result<T, StoreError> {
    T::try_from(n).map_err(|_| StoreError::TooLarge {
        size: n,
        max: u32::MAX as usize,
    })
}

/// The record in `bytes` if it is live at `now`; `None` if it has lapsed, whether this build
/// can read it or not (see [`lapsed`]).
///
/// # Errors
/// [`decode`]'s, for a record this build cannot read that has not lapsed.
pub fn live(bytes: &[u8], now: Timestamp) -> Result<Option<Record>, StoreError> {
    match decode(bytes) {
        Ok(record) => Ok(Some(record).filter(|r| r.is_live(now))),
        Err(_) if lapsed(bytes, now) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether `bytes` begin as a record's header whose time has passed at `now`
/// (`<version>:<kind>:<lapses_at>:`, whatever the version), as the Redis scripts judge a
/// record: a record this build cannot decode (a later release's, or one damaged past its
/// header) that has lapsed is taken over as any lapsed record is, rather than refused.
fn lapsed(bytes: &[u8], now: Timestamp) -> bool {
    let mut fields = bytes.splitn(4, |&b| b == b':');
    let (Some(version), Some(kind), Some(lapses_at), Some(_)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    // The version as the scripts' `%d+` takes it, of any length; the time as `ascii_number`
    // reads it (digits, within a u64).
    let digits = !version.is_empty() && version.iter().all(u8::is_ascii_digit);
    let letter = matches!(kind, [k] if k.is_ascii_alphabetic());
    digits && letter && ascii_number(lapses_at).is_ok_and(|at| at <= now.as_millis())
}

/// Decodes a record written by [`encode`].
///
/// # Errors
/// [`StoreError::Corrupt`] for bytes that are not a record of a version this build reads.
pub fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
    let mut fields = bytes.splitn(5, |&b| b == b':');
    let mut field = || fields.next().ok_or_else(|| corrupt("truncated header"));
    let version = ascii_number(field()?)?;
    if version != u64::from(VERSION) {
        return Err(StoreError::Corrupt(format!(
            "record format version {version} is not readable by this idem (it reads version {VERSION}); \
             every process sharing a store must run an idem that reads what any of them writes"
        )));
    }
    let kind = field()?;
    let lapses_at = Timestamp::from_millis(ascii_number(field()?)?);
    // Exactly as `token_hex` writes it: the Redis scripts compare tokens as text.
    let token = Some(field()?)
        .filter(|hex| hex.len() == 32 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|hex| u128::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
        .map(Token::from_u128)
        .ok_or_else(|| corrupt("bad token"))?;
    let mut reader = Reader(field()?);
    let fingerprint = Fingerprint::from_bytes(reader.array()?);
    let record = match kind {
        b"F" => Record::InFlight(InFlight {
            fingerprint,
            lease_until: lapses_at,
            token,
        }),
        b"C" => {
            let status = u16::from_be_bytes(reader.array()?);
            if !super::is_http_status(status) {
                return Err(corrupt(&format!("status {status} is no HTTP status")));
            }
            let completed_at = Timestamp::from_millis(u64::from_be_bytes(reader.array()?));
            // The header section is in the record's own packed form; it ends where it says.
            let section = headers_end(reader.0).map_err(|what| corrupt(&what))?;
            let headers = reader.take(section)?;
            let response = match reader.array::<1>()? {
                [0] => {
                    let body_len = u32::from_be_bytes(reader.array()?);
                    let body = reader.take(body_len as usize)?;
                    Response::from_parts(status, headers, body).map_err(|what| corrupt(&what))?
                }
                // Kept without its body, a response keeps no headers either.
                [1] if headers == [0, 0] => {
                    Response::omitted(status, u64::from_be_bytes(reader.array()?))
                }
                [1] => return Err(corrupt("headers of a response kept without its body")),
                _ => return Err(corrupt("unknown body tag")),
            };
            Record::Completed(Completed {
                fingerprint,
                response,
                completed_at,
                expires_at: lapses_at,
            })
        }
        _ => return Err(corrupt("unknown record kind")),
    };
    if !reader.0.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(record)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unreadable record: {what}"))
}

/// A number as the Redis scripts read it (`%d+`): decimal digits alone, without a sign.
fn ascii_number(field: &[u8]) -> Result<u64, StoreError> {
    Some(field)
        .filter(|digits| digits.iter().all(u8::is_ascii_digit))
        .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
        .ok_or_else(|| corrupt("bad number in header"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed() -> Record {
        Record::Completed(Completed {
            fingerprint: Fingerprint::new("POST", "/a", "q=1", b"{}"),
            response: Response::new(
                201,
                [
                    ("location", &b"/a/1"[..]),
                    ("set-cookie", b"a=1"),
                    ("set-cookie", b"b=\xff:2"),
                ],
                b"binary:\x00\x01 body",
            ),
            completed_at: Timestamp::from_millis(1_700_000_000_000),
            expires_at: Timestamp::from_millis(1_700_086_400_000),
        })
    }

    /// A record is judged lapsed by its header alone, whatever follows it, as the Redis
    /// scripts' pattern (`^%d+:%a:(%d+):`) judges it; anything else is not lapsed.
    #[test]
    fn lapsed_reads_the_header_alone_as_the_scripts_do() {
        let now = Timestamp::from_millis(1_000);
        for lapsed_one in [&b"1:C:1000:x:"[..], b"7:F:999:anything", b"12:Z:0::"] {
            assert!(lapsed(lapsed_one, now), "{lapsed_one:?}");
        }
        for other in [
            &b"1:C:1001:x:"[..],
            b"1:C:1000",
            b"1:CC:5:x:",
            b":C:5:x:",
            b"v1:C:5:x:",
            b"1:C:-5:x:",
            b"1:C:99999999999999999999999:x:",
            b"",
        ] {
            assert!(!lapsed(other, now), "{other:?}");
        }
    }

    /// What the Redis scripts read of a record's header as text (its lapse time, its token)
    /// is read here only as `encode` writes it: a value another spelling of which decoded
    /// here, but not there, would be judged by the two differently.
    #[test]
    fn decode_accepts_only_what_encode_writes() {
        let token = Token::from_u128(0xabc);
        let claim = Record::InFlight(InFlight {
            fingerprint: Fingerprint::new("POST", "/a", "", b""),
            lease_until: Timestamp::from_millis(5),
            token,
        });
        let good = encode(&claim, token).unwrap();
        assert!(decode(&good).is_ok());
        let text = String::from_utf8_lossy(&good[..good.len() - 32]).into_owned();
        let binary = &good[good.len() - 32..];
        let respelled = [
            text.replace(&token_hex(token), "abc"),
            text.replace(&token_hex(token), &token_hex(token).to_uppercase()),
            text.replace(&token_hex(token), &format!("+{}", &token_hex(token)[1..])),
            text.replace(":5:", ":+5:"),
            text.replace(":5:", "::"),
            text.replacen("1:", "+1:", 1),
        ];
        for header in respelled {
            assert_ne!(header, text);
            let bytes = [header.as_bytes(), binary].concat();
            assert!(
                matches!(decode(&bytes), Err(StoreError::Corrupt(_))),
                "{header}"
            );
        }
        // A response kept without its body keeps no headers either.
        let Record::Completed(mut done) = completed() else {
            unreachable!()
        };
        done.response = Response::omitted(201, 10);
        let omitted = encode(&Record::Completed(done), token).unwrap();
        assert!(decode(&omitted).is_ok());
        let fixed = omitted.len() - (1 + 8 + 2);
        let mut with_headers = omitted[..fixed].to_vec();
        with_headers.extend_from_slice(&[0, 1, 0, 1, b'a', 0, 0, 0, 1, b'b', 1]);
        with_headers.extend_from_slice(&10u64.to_be_bytes());
        assert!(matches!(decode(&with_headers), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn records_round_trip() {
        let token = Token::random();
        for record in [
            completed(),
            Record::InFlight(InFlight {
                fingerprint: Fingerprint::new("PUT", "/b", "", b""),
                lease_until: Timestamp::from_millis(42),
                token,
            }),
        ] {
            let bytes = encode(&record, token).unwrap();
            assert_eq!(decode(&bytes).unwrap(), record);
        }
    }

    #[test]
    fn an_omitted_body_round_trips() {
        let Record::Completed(c) = completed() else {
            unreachable!()
        };
        let omitted = Record::Completed(Completed {
            response: Response::omitted(201, 5 << 20),
            ..c
        });
        let token = Token::random();
        assert_eq!(decode(&encode(&omitted, token).unwrap()).unwrap(), omitted);
    }

    #[test]
    fn the_header_is_readable_by_a_script() {
        let token = Token::from_u128(0xabc);
        let bytes = encode(&completed(), token).unwrap();
        let header = format!("1:C:1700086400000:{:032x}:", 0xabc);
        assert!(bytes.starts_with(header.as_bytes()));
    }

    #[test]
    fn a_completed_record_is_compact() {
        let bytes = encode(&completed(), Token::random()).unwrap();
        let Record::Completed(c) = completed() else {
            unreachable!()
        };
        // Header (~55 bytes) + fingerprint + fixed fields, beyond the response itself.
        assert!(bytes.len() - c.response.size() < 140, "{}", bytes.len());
    }

    /// The bound holds for the widest times, for a body kept or left out and for a claim, and
    /// is reached by a kept body at the widest time.
    #[test]
    fn the_overhead_beyond_the_response_is_at_most_max_overhead() {
        let fingerprint = Fingerprint::new("POST", "/a", "", b"");
        let widest = Timestamp::from_millis(u64::MAX);
        let responses = [
            Response::new(201, [], b""),
            Response::new(200, [("location", &b"/a/1"[..])], b"body"),
            Response::omitted(201, u64::MAX),
        ];
        let mut most = 0;
        for response in responses {
            for at in [Timestamp::from_millis(1_700_000_000_000), widest] {
                let held = response.held_bytes();
                let record = Record::Completed(Completed {
                    fingerprint,
                    response: response.clone(),
                    completed_at: at,
                    expires_at: at,
                });
                let overhead = encode(&record, Token::random()).unwrap().len() - held;
                assert!(overhead <= MAX_OVERHEAD, "{overhead}");
                most = most.max(overhead);
            }
        }
        assert_eq!(most, MAX_OVERHEAD, "the bound is tight");
        let claim = Record::InFlight(InFlight {
            fingerprint,
            lease_until: widest,
            token: Token::random(),
        });
        assert!(encode(&claim, Token::random()).unwrap().len() <= MAX_OVERHEAD);
    }

    #[test]
    fn other_versions_and_garbage_are_refused_with_a_clear_error() {
        let mut bytes = encode(&completed(), Token::random()).unwrap();
        bytes[0] = b'2';
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("version 2") && err.contains("reads version 1"),
            "{err}"
        );
        for garbage in [&b""[..], b"1:C:", b"1:X:1:00:", b"hello"] {
            assert!(matches!(decode(garbage), Err(StoreError::Corrupt(_))));
        }
        let good = encode(&completed(), Token::random()).unwrap();
        assert!(decode(&good[..good.len() - 1]).is_err(), "truncated body");
    }

    /// A status no HTTP response has (a foreign writer's, or bytes gone bad) is a corrupt
    /// record, refused as one, where it was replayed, and actix answered the replay 500.
    #[test]
    fn a_record_whose_status_is_no_http_status_is_corrupt() {
        let Record::Completed(c) = completed() else {
            unreachable!()
        };
        for status in [0, 42, 1000, u16::MAX] {
            // `encode` refuses such a status: encode a 201, then change it in the bytes.
            for response in [Response::new(201, [], b"body"), Response::omitted(201, 5)] {
                let record = Record::Completed(Completed {
                    response,
                    ..c.clone()
                });
                let mut bytes = encode(&record, Token::random()).unwrap();
                let (fourth_colon, _) = bytes
                    .iter()
                    .enumerate()
                    .filter(|&(_, &b)| b == b':')
                    .nth(3)
                    .unwrap();
                let at = fourth_colon + 1 + c.fingerprint.as_bytes().len();
                assert_eq!(bytes[at..at + 2], 201u16.to_be_bytes());
                bytes[at..at + 2].copy_from_slice(&status.to_be_bytes());
                let err = decode(&bytes).unwrap_err();
                assert!(
                    matches!(&err, StoreError::Corrupt(what) if what.contains("status")),
                    "{status}: {err:?}"
                );
            }
        }
    }

    proptest::proptest! {
        /// Bytes a store hands back may be anything (a truncated write, another program's
        /// value under the key, a bit flipped): decoding them never panics, and what decodes
        /// encodes again to a record that decodes the same.
        #[test]
        fn damaged_records_decode_to_an_error_or_to_a_record_that_round_trips(
            which in 0..3usize,
            edits in proptest::collection::vec((0..4u8, proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
        ) {
            let Record::Completed(done) = completed() else { unreachable!() };
            let omitted = Record::Completed(Completed { response: Response::omitted(201, 10), ..done });
            let claim = Record::InFlight(InFlight {
                fingerprint: Fingerprint::new("POST", "/a", "", b""),
                lease_until: Timestamp::from_millis(5),
                token: Token::from_u128(7),
            });
            let record = vec![completed(), omitted, claim].swap_remove(which);
            let mut bytes = encode(&record, Token::from_u128(7)).unwrap();
            for (edit, at, byte) in edits {
                let at = at % (bytes.len() + 1);
                match edit {
                    0 => bytes.truncate(at),
                    1 => bytes.insert(at, byte),
                    2 if at < bytes.len() => bytes[at] ^= byte.max(1),
                    _ if at < bytes.len() => { bytes.remove(at); }
                    _ => {}
                }
            }
            if let Ok(decoded) = decode(&bytes) {
                let token = std::str::from_utf8(bytes.split(|&b| b == b':').nth(3).unwrap())
                    .ok()
                    .and_then(|hex| u128::from_str_radix(hex, 16).ok())
                    .map(Token::from_u128)
                    .unwrap();
                let again = encode(&decoded, token).expect("a decoded record encodes");
                proptest::prop_assert_eq!(decode(&again).unwrap(), decoded);
            }
        }
    }
}
