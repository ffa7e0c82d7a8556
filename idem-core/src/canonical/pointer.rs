//! JSON Pointers (RFC 6901): `/meta/trace_id` names the member `trace_id` of the member
//! `meta`; `~1` stands for `/` and `~0` for `~` in a name; a name of digits also names an
//! array's element.

use std::borrow::Cow;

/// One step of a pointer: a member's name, which is also an element's index when it is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub name: Cow<'a, str>,
    /// The array index the name spells (`0`, or digits without a leading zero), if any.
    pub index: Option<usize>,
}

/// Why a pointer is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PointerError {
    /// The empty pointer names the whole document, which no setting here can mean.
    #[error("the empty pointer names the whole body; point at a member, such as \"/event_id\"")]
    Whole,
    /// A pointer starts with `/`.
    #[error("a JSON Pointer starts with `/`, such as \"/event_id\"")]
    NoLeadingSlash,
    /// `~` is followed by something else than `0` or `1`.
    #[error("`~` at byte {0} is not `~0` (for `~`) or `~1` (for `/`)")]
    BadEscape(usize),
}

/// The steps of `pointer`.
///
/// # Errors
/// [`PointerError`] when `pointer` is empty, does not start with `/`, or escapes badly.
pub(crate) fn parse(pointer: &str) -> Result<Vec<Token<'_>>, PointerError> {
    if pointer.is_empty() {
        return Err(PointerError::Whole);
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PointerError::NoLeadingSlash);
    };
    let mut offset = 1;
    let mut tokens = Vec::new();
    for raw in rest.split('/') {
        tokens.push(token(raw, offset)?);
        offset += raw.len() + 1;
    }
    Ok(tokens)
}

/// Checks `pointer`'s syntax.
///
/// # Errors
/// As [`parse`].
pub(crate) fn check(pointer: &str) -> Result<(), PointerError> {
    parse(pointer).map(drop)
}

fn token(raw: &str, offset: usize) -> Result<Token<'_>, PointerError> {
    let name = if raw.contains('~') {
        let mut name = String::with_capacity(raw.len());
        let mut chars = raw.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '~' {
                name.push(c);
                continue;
            }
            match chars.next() {
                Some((_, '0')) => name.push('~'),
                Some((_, '1')) => name.push('/'),
                _ => return Err(PointerError::BadEscape(offset + i)),
            }
        }
        Cow::Owned(name)
    } else {
        Cow::Borrowed(raw)
    };
    let is_index = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name.len() == 1 || !name.starts_with('0'));
    let index = if is_index { name.parse().ok() } else { None };
    Ok(Token { name, index })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pointer: &str) -> Vec<String> {
        parse(pointer)
            .unwrap()
            .into_iter()
            .map(|t| t.name.into_owned())
            .collect()
    }

    #[test]
    fn pointers_unescape_their_tokens() {
        assert_eq!(names("/a/b"), ["a", "b"]);
        assert_eq!(names("/a~1b/c~0d"), ["a/b", "c~d"]);
        assert_eq!(names("/~01"), ["~1"], "~0 is read first, then the 1 stays");
        assert_eq!(names("/"), [""], "the member with the empty name");
        assert_eq!(names("/a//b"), ["a", "", "b"]);
    }

    #[test]
    fn array_indices_have_no_leading_zero() {
        let tokens = parse("/0/10/01/-/x").unwrap();
        let indices: Vec<_> = tokens.iter().map(|t| t.index).collect();
        assert_eq!(indices, [Some(0), Some(10), None, None, None]);
    }

    #[test]
    fn malformed_pointers_are_refused() {
        assert_eq!(check(""), Err(PointerError::Whole));
        assert_eq!(check("a/b"), Err(PointerError::NoLeadingSlash));
        assert_eq!(check("/a~2"), Err(PointerError::BadEscape(2)));
        assert_eq!(check("/ab/c~"), Err(PointerError::BadEscape(5)));
        assert_eq!(check("/a/b"), Ok(()));
    }
}
