//! Idempotency keys: made once per operation, or read when the caller brings one.

use crate::Error;

/// A new key: a random UUID (122 random bits from the operating system), so that keys of
/// different operations, processes and machines do not meet.
pub(crate) fn generate() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Reads a key given as the header carries it, a bare token or an RFC 8941 string, as an idem
/// server reads it, and returns the one form the operation is known and sent by: `"abc"` is
/// the key `abc`, and both are `abc`. A key that itself starts with `"` can only be sent
/// quoted, and keeps its quoted form (escaping only `"` and `\`).
///
/// A key is one or more visible ASCII characters (0x21 to 0x7E) once unquoted. A server may
/// refuse more, with nothing run and no retry: a key longer than it takes (255 bytes by
/// default).
pub(crate) fn read(given: &str) -> Result<String, Error> {
    let invalid = |reason| Err(Error::InvalidKey { reason });
    let Some(quoted) = given.strip_prefix('"') else {
        visible(given)?;
        return Ok(given.to_owned());
    };
    let mut key = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    loop {
        match chars.next() {
            None => return invalid("it starts with a quote but has no closing quote"),
            Some('"') if chars.as_str().is_empty() => break,
            Some('"') => return invalid("characters follow its closing quote"),
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\')) => key.push(c),
                _ => return invalid("inside quotes, only \\\" and \\\\ are escapes"),
            },
            Some(c) => key.push(c),
        }
    }
    visible(&key)?;
    if !key.starts_with('"') {
        return Ok(key);
    }
    let mut sent = String::with_capacity(key.len() + 4);
    sent.push('"');
    for c in key.chars() {
        if matches!(c, '"' | '\\') {
            sent.push('\\');
        }
        sent.push(c);
    }
    sent.push('"');
    Ok(sent)
}

/// Whether `key`, unquoted, is one or more visible ASCII characters.
fn visible(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "it is empty",
        });
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidKey {
            reason: "it holds a space, a control character or a non-ASCII character",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_valid_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(read(&a).unwrap(), a);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn keys_of_visible_ascii_are_accepted() {
        assert_eq!(read("call-0001").unwrap(), "call-0001");
        assert_eq!(read("\"quoted\"").unwrap(), "quoted");
        assert_eq!(read("~!").unwrap(), "~!");
    }

    proptest::proptest! {
        /// The client reads a key as the server does: it takes exactly the values the
        /// server takes (of any length, which the server bounds by its setting), and the form
        /// it sends is the same key to the server.
        #[test]
        fn the_client_reads_a_key_as_the_server_does(
            given in "(\"|[\x20-\x7e\\\\\"]){0,12}\"?",
        ) {
            let server = idem_core::ClientKey::parse(given.as_bytes(), usize::MAX);
            match read(&given) {
                Ok(sent) => {
                    let server = server.expect("the server takes what the client sends");
                    let again = idem_core::ClientKey::parse(sent.as_bytes(), usize::MAX);
                    proptest::prop_assert_eq!(again.as_ref(), Ok(&server), "{}", sent);
                    let reread = read(&sent);
                    proptest::prop_assert_eq!(reread.as_deref().ok(), Some(sent.as_str()));
                }
                Err(_) => proptest::prop_assert!(server.is_err(), "{:?}", server),
            }
        }
    }

    #[test]
    fn empty_spaced_and_non_ascii_keys_are_refused() {
        for key in ["", "a b", "tab\t", "line\n", "clé", "\"clé\"", "\"\""] {
            let err = read(key).unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{key:?}: {err}");
        }
    }
}
