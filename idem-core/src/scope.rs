//! Whose key it is. Keys of different scopes never meet.

use std::borrow::Cow;

use base64::Engine as _;

/// How the scope of a key is taken from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// The whole `Authorization` header value, else the `X-API-Key` header value (the default).
    ApiKey,
    /// The user name of HTTP Basic authentication (`Authorization: Basic base64(user:pass)`),
    /// for APIs that scope keys per application id rather than per secret.
    BasicAuthUser,
    /// The value of the named request header, for example a tenant header set by a gateway.
    Header(&'static str),
    /// One scope for every client. Only for endpoints whose keys are global by design.
    Global,
}

/// The scope of one request: what kind of scope, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeValue<'a> {
    /// A stable name of the scope's source, hashed into the store key.
    pub kind: &'static str,
    /// The scope's value, hashed into the store key and never stored.
    pub value: Cow<'a, [u8]>,
}

impl<'a> ScopeValue<'a> {
    /// A scope value of `kind`.
    pub fn new(kind: &'static str, value: impl Into<Cow<'a, [u8]>>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

/// Why the scope of a request could not be determined.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// Neither `Authorization` nor `X-API-Key` was sent.
    #[error("keys are scoped per API key; send an Authorization or X-API-Key header")]
    NoCredentials,
    /// `Authorization` is not valid Basic authentication.
    #[error("keys are scoped per Basic auth user; send Authorization: Basic with a user name")]
    NoBasicUser,
    /// The scope header is missing or empty.
    #[error("keys are scoped by the {0} header; send it")]
    NoHeader(&'static str),
    /// A custom scope function found no scope.
    #[error("{0}")]
    Custom(Cow<'static, str>),
}

impl Scope {
    /// Finds the scope of a request whose header values `header` returns (the first value of a
    /// header, by case-insensitive name).
    ///
    /// # Errors
    /// [`ScopeError`] when the request does not carry what this scope needs. There is no
    /// fallback to a shared scope.
    pub fn resolve<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<ScopeValue<'a>, ScopeError> {
        let present = |name| header(name).filter(|v| !v.is_empty());
        match *self {
            Scope::ApiKey => {
                if let Some(auth) = present("authorization") {
                    Ok(ScopeValue::new("authorization", auth))
                } else if let Some(key) = present("x-api-key") {
                    Ok(ScopeValue::new("x-api-key", key))
                } else {
                    Err(ScopeError::NoCredentials)
                }
            }
            Scope::BasicAuthUser => present("authorization")
                .and_then(basic_user)
                .map(|user| ScopeValue::new("basic_user", user))
                .ok_or(ScopeError::NoBasicUser),
            Scope::Header(name) => present(name)
                .map(|v| ScopeValue::new("header", v))
                .ok_or(ScopeError::NoHeader(name)),
            Scope::Global => Ok(ScopeValue::new("global", &b""[..])),
        }
    }
}

fn basic_user(auth: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = auth.split_at(auth.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let user_len = decoded.iter().position(|&b| b == b':')?;
    (user_len > 0).then(|| {
        let mut user = decoded;
        user.truncate(user_len);
        user
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn api_key_prefers_authorization_and_falls_back_to_x_api_key() {
        let both = [("Authorization", "Bearer a"), ("X-API-Key", "b")];
        let got = Scope::ApiKey.resolve(headers(&both)).unwrap();
        assert_eq!(got, ScopeValue::new("authorization", &b"Bearer a"[..]));
        let only_key = [("x-api-key", "b")];
        let got = Scope::ApiKey.resolve(headers(&only_key)).unwrap();
        assert_eq!(got, ScopeValue::new("x-api-key", &b"b"[..]));
    }

    #[test]
    fn missing_credentials_never_fall_back_to_a_shared_scope() {
        assert_eq!(
            Scope::ApiKey.resolve(headers(&[])),
            Err(ScopeError::NoCredentials)
        );
        assert_eq!(
            Scope::ApiKey.resolve(headers(&[("Authorization", "")])),
            Err(ScopeError::NoCredentials)
        );
        assert_eq!(
            Scope::Header("X-Tenant").resolve(headers(&[])),
            Err(ScopeError::NoHeader("X-Tenant"))
        );
    }

    #[test]
    fn basic_auth_scope_is_the_user_not_the_password() {
        // "app_1:secret" and "app_1:other"
        let a = [("Authorization", "Basic YXBwXzE6c2VjcmV0")];
        let b = [("Authorization", "basic YXBwXzE6b3RoZXI=")];
        let sa = Scope::BasicAuthUser.resolve(headers(&a)).unwrap();
        let sb = Scope::BasicAuthUser.resolve(headers(&b)).unwrap();
        assert_eq!(sa.value.as_ref(), b"app_1");
        assert_eq!(sa, sb);
        let bearer = [("Authorization", "Bearer YXBwXzE6c2VjcmV0")];
        assert_eq!(
            Scope::BasicAuthUser.resolve(headers(&bearer)),
            Err(ScopeError::NoBasicUser)
        );
        let garbage = [("Authorization", "Basic !!!")];
        assert_eq!(
            Scope::BasicAuthUser.resolve(headers(&garbage)),
            Err(ScopeError::NoBasicUser)
        );
    }

    #[test]
    fn global_scope_needs_nothing() {
        assert_eq!(Scope::Global.resolve(headers(&[])).unwrap().kind, "global");
    }
}
