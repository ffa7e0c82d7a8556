//! Canonical forms of a request's body and query, so that an honest retry fingerprints as
//! its first request did: a client that serialises its JSON again in another key order, or
//! sends its form's pairs in another order, sends the same request.
//!
//! Each form is written into the fingerprint as a typed, length-prefixed stream (see
//! [`crate::Fingerprint::canonical`]); nothing here allocates a canonical copy of a body.

use std::borrow::Cow;

mod form;
pub(crate) mod json;
pub(crate) mod pointer;

pub use self::pointer::PointerError;

/// How an endpoint compares a request's body (and query) with the first request of its key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyForm {
    /// Byte for byte, with the query string as sent (the default).
    #[default]
    Bytes,
    /// As JSON: the order of an object's members and whitespace do not matter, strings
    /// compare unescaped and numbers by value. Query parameters compare in any order. The
    /// actix layer reads only a body that parses and is not sent as another type (its
    /// `Content-Type`) so; another it compares byte for byte, and leaves to the handler's
    /// extractors to answer.
    Json,
    /// As `application/x-www-form-urlencoded` pairs, in any order of their names. Query
    /// parameters compare in any order. The actix layer reads only a body sent as a form
    /// (its `Content-Type`) so; another it compares byte for byte, as a form's decoding reads
    /// bodies alike that are not (`+` is a space in a form, not in JSON).
    Form,
}

/// A request's body as its fingerprint reads it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Body<'a> {
    /// Its bytes, compared as they are.
    Bytes(&'a [u8]),
    /// A JSON body, less the members the pointers of `ignore` name (pointers that are not
    /// valid, see [`check_pointer`], name nothing).
    Json {
        /// The parsed body.
        body: &'a JsonBody<'a>,
        /// JSON Pointers (RFC 6901) to leave out.
        ignore: &'a [&'a str],
    },
    /// A form body.
    Form(&'a [u8]),
    /// What an application's function made of the body: bytes that are equal for bodies
    /// that mean the same.
    Custom(&'a [u8]),
}

/// Why a body cannot be read in its endpoint's form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is to be read as JSON (for its key, say), and is not JSON.
    #[error("the request body is not JSON ({reason} at byte {offset}); this endpoint reads its body as JSON, so send a JSON body")]
    NotJson {
        /// Where the body breaks the grammar, in bytes from its start.
        offset: usize,
        /// The rule broken.
        reason: &'static str,
    },
    /// The endpoint's fingerprint function found nothing it could read in the body.
    #[error("this endpoint cannot read the request body to compare it with the first request of this key; send a body in the form the endpoint expects")]
    Unreadable,
    /// The body is in a content coding the server does not decode.
    #[error("the request body is in Content-Encoding {coding}, which this endpoint does not decode to read it; send it in no coding{}", or_one_of(decodes))]
    Encoded {
        /// The coding, as the request names it.
        coding: String,
        /// The codings the server decodes, in the order to name them (none, where its
        /// actix-web is built without them).
        decodes: Vec<&'static str>,
    },
    /// The body is not valid in the content coding its request names.
    #[error("the request body is not valid {coding}, as its Content-Encoding says it is")]
    Undecodable {
        /// The coding, as the request names it.
        coding: String,
    },
    /// The body did not arrive whole: it ended before its declared length, or its transfer
    /// coding was malformed.
    #[error("the request body did not arrive whole ({reason}); send the request again with its whole body")]
    Incomplete {
        /// What went wrong while it was read.
        reason: String,
    },
}

/// The end of [`BodyError::Encoded`]'s advice: the codings the server decodes, if any.
fn or_one_of(decodes: &[&str]) -> String {
    match decodes {
        [] => String::new(),
        [one] => format!(", or in {one}, which it decodes"),
        [first @ .., last] => format!(", or in {} or {last}, which it decodes", first.join(", ")),
    }
}

/// A JSON body, parsed once for both its key and its fingerprint. An empty body is no
/// document: it has no members, and fingerprints as itself.
#[derive(Debug)]
pub struct JsonBody<'a>(Option<json::Value<'a>>);

impl<'a> JsonBody<'a> {
    pub(crate) fn value(&self) -> Option<&json::Value<'a>> {
        self.0.as_ref()
    }

    /// Parses `body`, a whole JSON document (no byte order mark, nested at most 128 deep),
    /// or nothing.
    ///
    /// # Errors
    /// [`BodyError::NotJson`], naming where and why.
    pub fn parse(body: &'a [u8]) -> Result<Self, BodyError> {
        if body.is_empty() {
            return Ok(Self(None));
        }
        json::parse(body).map(|value| Self(Some(value)))
    }

    /// The text of the string or number `pointer` names: `Ok(None)` when there is none (or
    /// it is `null`, or `pointer` is not a valid pointer), `Err` naming what is there
    /// instead of a string or number.
    ///
    /// ```
    /// use idem_core::JsonBody;
    ///
    /// let body = JsonBody::parse(br#"{"event":{"id":"evt_1"},"n":42}"#).unwrap();
    /// assert_eq!(body.text_at("/event/id").unwrap().as_deref(), Some("evt_1"));
    /// assert_eq!(body.text_at("/n").unwrap().as_deref(), Some("42"));
    /// assert_eq!(body.text_at("/missing").unwrap(), None);
    /// assert_eq!(body.text_at("/event"), Err("an object"));
    /// ```
    ///
    /// # Errors
    /// `"an object"`, `"an array"` or `"a boolean"`.
    pub fn text_at(&self, pointer: &str) -> Result<Option<Cow<'_, str>>, &'static str> {
        let Ok(tokens) = pointer::parse(pointer) else {
            return Ok(None);
        };
        let Some(value) = &self.0 else {
            return Ok(None);
        };
        match json::find(value, &tokens) {
            None | Some(json::Value::Null) => Ok(None),
            Some(json::Value::String(s)) => Ok(Some(Cow::Borrowed(s))),
            Some(json::Value::Number(n)) => Ok(Some(Cow::Borrowed(n))),
            Some(json::Value::Object(_)) => Err("an object"),
            Some(json::Value::Array(_)) => Err("an array"),
            Some(json::Value::Bool(_)) => Err("a boolean"),
        }
    }
}

/// Checks that `pointer` is a JSON Pointer (RFC 6901) naming a part of a body: it starts
/// with `/`, and each `~` is `~0` or `~1`.
///
/// # Errors
/// [`PointerError`], naming the rule broken.
pub fn check_pointer(pointer: &str) -> Result<(), PointerError> {
    pointer::check(pointer)
}

pub(crate) use self::form::hash as hash_pairs;

#[cfg(test)]
mod tests {
    use super::BodyError;

    /// A body in a coding the server does not decode is told which ones it does, those of
    /// its build, where it was told actix-web's defaults, which a build may leave out.
    #[test]
    fn a_coding_not_decoded_is_answered_with_the_codings_the_server_decodes() {
        let refused = |decodes: Vec<&'static str>| {
            let coding = "x-gzip".to_owned();
            BodyError::Encoded { coding, decodes }.to_string()
        };
        let none = refused(vec![]);
        assert!(none.ends_with("send it in no coding"), "{none}");
        let one = refused(vec!["gzip"]);
        assert!(
            one.ends_with("send it in no coding, or in gzip, which it decodes"),
            "{one}"
        );
        let all = refused(vec!["gzip", "deflate", "br", "zstd"]);
        assert!(
            all.ends_with("or in gzip, deflate, br or zstd, which it decodes"),
            "{all}"
        );
    }
}
