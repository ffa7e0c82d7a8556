//! Idempotency keys: made once per operation, or checked when the caller brings one.

use crate::Error;

/// A new key: a random UUID (122 random bits from the operating system), so that keys of
/// different operations, processes and machines do not meet.
pub(crate) fn generate() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks what a key must be to be sent: one or more visible ASCII characters (0x21 to 0x7E),
/// what a header value carries unchanged. A server may refuse more, with nothing run and no
/// retry: a key longer than it takes (255 bytes by default), or, for an idem server, one that
/// starts with `"` and is not a whole quoted string (`"abc"` is the key `abc` there).
pub(crate) fn check(key: &str) -> Result<(), Error> {
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
        assert!(check(&a).is_ok(), "{a}");
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn keys_of_visible_ascii_are_accepted() {
        assert!(check("call-0001").is_ok());
        assert!(check("\"quoted\"").is_ok());
        assert!(check("~!").is_ok());
    }

    #[test]
    fn empty_spaced_and_non_ascii_keys_are_refused() {
        for key in ["", "a b", "tab\t", "line\n", "clé"] {
            let err = check(key).unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{key:?}: {err}");
        }
    }
}
