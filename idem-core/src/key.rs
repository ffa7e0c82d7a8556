//! The `Idempotency-Key` value: validation and parsing.
//!
//! A key is sent as a bare token (`Idempotency-Key: 4c7f0a78-...`) or as a structured-field
//! string (`Idempotency-Key: "4c7f0a78-..."`, RFC 8941 section 3.3.3), the form the IETF draft
//! uses. After unquoting it must be 1 to `max_len` bytes of visible ASCII (0x21 to 0x7E).

use std::fmt;

/// The default longest key, in bytes (Stripe's limit, and the IETF draft's examples fit).
pub const DEFAULT_KEY_MAX_LEN: usize = 255;

/// A validated idempotency key, as the client meant it (quotes and escapes removed). Handlers
/// take it through the `idem_actix::IdempotencyKey` extractor.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(Box<str>);

impl ClientKey {
    /// Parses one header value.
    ///
    /// # Errors
    /// A [`KeyError`] naming the rule the value breaks.
    ///
    /// ```
    /// use idem_core::{ClientKey, KeyError};
    ///
    /// let key = ClientKey::parse(br#""order-42""#, 255).unwrap();
    /// assert_eq!(key.as_str(), "order-42");
    /// assert_eq!(ClientKey::parse(b"", 255), Err(KeyError::Empty));
    /// ```
    pub fn parse(raw: &[u8], max_len: usize) -> Result<Self, KeyError> {
        let key = match raw.first() {
            Some(b'"') => unquote(raw)?,
            _ => {
                check_visible(raw, 0)?;
                // Checked above: every byte is ASCII.
                String::from_utf8_lossy(raw).into_owned()
            }
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > max_len {
            return Err(KeyError::TooLong {
                len: key.len(),
                max: max_len,
            });
        }
        Ok(Self(key.into_boxed_str()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientKey").field(&self.0).finish()
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_visible(bytes: &[u8], offset: usize) -> Result<(), KeyError> {
    match bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        Some(index) => Err(KeyError::InvalidByte {
            byte: bytes[index],
            index: index + offset,
        }),
        None => Ok(()),
    }
}

/// Reads an sf-string: `"` ... `"`, where `\"` and `\\` are the only escapes.
fn unquote(raw: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(raw.len().saturating_sub(2));
    let mut i = 1;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                if i + 1 != raw.len() {
                    return Err(KeyError::TrailingCharacters { index: i + 1 });
                }
                return Ok(out);
            }
            b'\\' => match raw.get(i + 1) {
                Some(&c @ (b'"' | b'\\')) => {
                    out.push(char::from(c));
                    i += 2;
                }
                _ => return Err(KeyError::InvalidEscape { index: i }),
            },
            c => {
                check_visible(&[c], i)?;
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    Err(KeyError::UnterminatedQuote)
}

/// Why a key was refused. Every variant maps to `idempotency_key_invalid`, except that
/// the engine reports a missing key as `idempotency_key_missing`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The header was sent more than once.
    #[error("the header was sent more than once; send exactly one")]
    Multiple,
    /// The key (after unquoting) is empty.
    #[error("the key is empty; send 1 or more visible ASCII characters")]
    Empty,
    /// The key is longer than the endpoint allows.
    #[error("the key is {len} bytes long; the most this endpoint accepts is {max}")]
    TooLong {
        /// The key's length in bytes.
        len: usize,
        /// The longest key accepted.
        max: usize,
    },
    /// A byte outside visible ASCII (0x21 to 0x7E).
    #[error("byte 0x{byte:02x} at position {index} is not visible ASCII; keys use characters 0x21 to 0x7e")]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its position in the header value.
        index: usize,
    },
    /// A quoted key without its closing quote.
    #[error("the quoted key has no closing quote")]
    UnterminatedQuote,
    /// A backslash not followed by `"` or `\`.
    #[error("invalid escape at position {index}; inside quotes only \\\" and \\\\ are allowed")]
    InvalidEscape {
        /// Position of the backslash.
        index: usize,
    },
    /// A key read from a JSON body is not a string or a number.
    #[error("the key is {found}; send a string")]
    NotText {
        /// What is there instead: "an object", "an array" or "a boolean".
        found: &'static str,
    },
    /// Something after the closing quote, such as structured-field parameters.
    #[error("unexpected characters after the closing quote at position {index}; send the quoted key alone")]
    TrailingCharacters {
        /// Position of the first extra byte.
        index: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<String, KeyError> {
        ClientKey::parse(raw, DEFAULT_KEY_MAX_LEN).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn bare_and_quoted_keys_mean_the_same() {
        let uuid = "4c7f0a78-0a61-42b4-8b8a-60b307b18f0c";
        assert_eq!(parse(uuid.as_bytes()).unwrap(), uuid);
        assert_eq!(parse(format!("\"{uuid}\"").as_bytes()).unwrap(), uuid);
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(parse(br#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
    }

    #[test]
    fn length_is_counted_after_unquoting() {
        let max = "k".repeat(255);
        assert!(parse(max.as_bytes()).is_ok());
        assert!(parse(format!("\"{max}\"").as_bytes()).is_ok());
        let over = "k".repeat(256);
        assert_eq!(
            parse(over.as_bytes()),
            Err(KeyError::TooLong { len: 256, max: 255 })
        );
        assert_eq!(
            ClientKey::parse(b"abcd", 3),
            Err(KeyError::TooLong { len: 4, max: 3 })
        );
    }

    #[test]
    fn every_malformed_class_is_refused() {
        assert_eq!(parse(b""), Err(KeyError::Empty));
        assert_eq!(parse(b"\"\""), Err(KeyError::Empty));
        assert_eq!(
            parse(b"a b"),
            Err(KeyError::InvalidByte {
                byte: b' ',
                index: 1
            })
        );
        assert_eq!(
            parse(b"a\tb"),
            Err(KeyError::InvalidByte {
                byte: b'\t',
                index: 1
            })
        );
        assert_eq!(
            parse("clé".as_bytes()),
            Err(KeyError::InvalidByte {
                byte: 0xc3,
                index: 2
            })
        );
        assert_eq!(
            parse(b"\"a b\""),
            Err(KeyError::InvalidByte {
                byte: b' ',
                index: 2
            })
        );
        assert_eq!(parse(b"\"abc"), Err(KeyError::UnterminatedQuote));
        assert_eq!(parse(b"\"a\\"), Err(KeyError::InvalidEscape { index: 2 }));
        assert_eq!(
            parse(b"\"a\\nb\""),
            Err(KeyError::InvalidEscape { index: 2 })
        );
        assert_eq!(
            parse(b"\"abc\";p=1"),
            Err(KeyError::TrailingCharacters { index: 5 })
        );
        assert_eq!(
            parse(b"\x7f"),
            Err(KeyError::InvalidByte {
                byte: 0x7f,
                index: 0
            })
        );
    }

    #[test]
    fn messages_name_the_rule() {
        let msg = KeyError::TooLong { len: 300, max: 255 }.to_string();
        assert!(msg.contains("300") && msg.contains("255"), "{msg}");
        assert!(KeyError::Multiple.to_string().contains("exactly one"));
    }
}
