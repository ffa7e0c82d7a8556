//! Whose key it is. Keys of different scopes never meet.
//!
//! A scope is only as strong as what it hashes: whoever can present the same scope value
//! reaches the same records. Each scope below says what that value is, and so who can reach a
//! record: the holder of a credential, the caller an authentication layer verified, or anyone
//! who can set a header.

use std::borrow::Cow;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// How the scope of a key is taken from the request.
///
/// A scope is only as strong as what it hashes. The layer resolves the scope, and answers a
/// replay, before the handler's extractors run: a replay goes to whoever presents the same
/// scope value, checked or not. So the value must be something a caller cannot present
/// without holding it (a secret, the whole of a credential), or something an authentication
/// layer verified before the idempotency layer runs ([`Scope::Principal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// The whole `Authorization` header value, else the `X-API-Key` header value (the default).
    /// Only the holder of the credential reaches its records, whether or not it is valid.
    ApiKey,
    /// HTTP Basic authentication (`Authorization: Basic base64(user:pass)`): the user name
    /// together with a SHA-256 digest of the password, for APIs that scope keys per
    /// application id. Two users never share a key, and a wrong password reaches nothing of
    /// the user's. A rotated password starts a new scope: keys sent with the old password are
    /// not found with the new one.
    BasicAuthUser,
    /// The value of the named request header (its name is part of the scope, compared without
    /// regard to case), for example a tenant header set by a gateway. Only as strong as the
    /// header: if clients can set it, any client can reach any other's records by sending
    /// their value, so use it only behind a proxy that sets or strips it.
    Header(&'static str),
    /// The caller an authentication layer verified and handed over with the request (in
    /// `idem-actix`, an `idem_actix::Principal` in the request's extensions). The layer must
    /// run before the idempotency layer; a request without a principal is refused, never
    /// given a shared scope.
    Principal,
    /// One scope for every client. Only for endpoints whose keys are global by design.
    Global,
}

/// The scope of one request: what kind of scope, from which source, and its value.
///
/// A store key hashes the kind, the source (when the kind has one) and the value, each
/// length-prefixed. A kind always has a source or never has one (see [`ScopeValue::source`]),
/// so no two different scopes hash the same bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeValue<'a> {
    /// A stable name of the scope's source, hashed into the store key.
    pub kind: &'static str,
    /// Which source of its kind the value came from, for kinds with more than one: the
    /// lowercase name of a header, the identity of a scope function. `None` for kinds with
    /// one source; a kind that has a source always has one.
    pub source: Option<Cow<'a, str>>,
    /// The scope's value, hashed into the store key and never stored.
    pub value: Cow<'a, [u8]>,
}

/// Shows the kind and the source, and only the value's length: the value is a credential (an
/// `Authorization` header, a Basic password's digest), which a debug log must not show.
impl std::fmt::Debug for ScopeValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeValue")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

impl<'a> ScopeValue<'a> {
    /// A scope value of `kind`, a kind with one source.
    pub fn new(kind: &'static str, value: impl Into<Cow<'a, [u8]>>) -> Self {
        Self {
            kind,
            source: None,
            value: value.into(),
        }
    }

    /// A scope value of `kind` from `source`, one of several sources of its kind.
    pub fn with_source(
        kind: &'static str,
        source: impl Into<Cow<'a, str>>,
        value: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        Self {
            kind,
            source: Some(source.into()),
            value: value.into(),
        }
    }

    /// What a scope function found: `identity` names the function (two functions that return
    /// the same value are two scopes), `value` is what it returned.
    pub fn of_function(identity: &'a str, value: impl Into<Cow<'a, [u8]>>) -> Self {
        Self::with_source("function", identity, value)
    }

    /// The same scope value, owning what it borrowed.
    pub fn into_owned(self) -> ScopeValue<'static> {
        ScopeValue {
            kind: self.kind,
            source: self.source.map(|s| Cow::Owned(s.into_owned())),
            value: Cow::Owned(self.value.into_owned()),
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
    #[error(
        "keys are scoped per Basic auth user; send Authorization: Basic and the base64 (standard alphabet, padded) of user:password, with a user name"
    )]
    NoBasicUser,
    /// The scope header is missing, or empty but for whitespace.
    #[error("keys are scoped by the {0} header; send it")]
    NoHeader(&'static str),
    /// No authentication layer handed over a verified principal.
    #[error(
        "keys are scoped by the authenticated principal and this request has none; an authentication middleware must verify the caller and insert its principal (idem_actix::Principal) before the idempotency layer runs"
    )]
    NoPrincipal,
    /// A custom scope function found no scope.
    #[error("{0}")]
    Custom(Cow<'static, str>),
    /// A header the scope is read from came on more than one line: which one to trust
    /// cannot be told (a proxy may have appended its own line to the client's).
    #[error("keys are scoped by the {0} header, which was sent more than once; send exactly one")]
    Repeated(Cow<'static, str>),
}

impl Scope {
    /// Whether [`resolve`](Self::resolve) reads request header `name` (in any case).
    pub(crate) fn reads(&self, name: &str) -> bool {
        let is = |read: &str| name.eq_ignore_ascii_case(read);
        match *self {
            Scope::ApiKey => is("authorization") || is("x-api-key"),
            Scope::BasicAuthUser => is("authorization"),
            Scope::Header(read) => is(read),
            Scope::Principal | Scope::Global => false,
        }
    }

    /// Finds the scope of a request whose header values `header` returns (the value of a
    /// header, by case-insensitive name; a caller refuses a header sent more than once with
    /// [`ScopeError::Repeated`], as `idem-actix` does, rather than pick one of its lines). [`Scope::Principal`] finds none this way: see
    /// [`Scope::resolve_with_principal`].
    ///
    /// # Errors
    /// [`ScopeError`] when the request does not carry what this scope needs. There is no
    /// fallback to a shared scope.
    pub fn resolve<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<ScopeValue<'a>, ScopeError> {
        self.resolve_with_principal(header, None)
    }

    /// Finds the scope of a request whose header values `header` returns, and whose
    /// `principal` an authentication layer verified (the only scope that reads it is
    /// [`Scope::Principal`]; an empty principal counts as none). A header's value is taken
    /// without the spaces and tabs around it, and one of whitespace alone counts as none.
    ///
    /// # Errors
    /// [`ScopeError`] when the request does not carry what this scope needs. There is no
    /// fallback to a shared scope.
    pub fn resolve_with_principal<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        principal: Option<&'a [u8]>,
    ) -> Result<ScopeValue<'a>, ScopeError> {
        // Without the spaces and tabs around it, which HTTP/1's parser trims and HTTP/2
        // hands on: whitespace alone is no credential, and a credential is the same scope
        // whichever protocol carried it.
        // (`trim_ascii` trims no more than spaces and tabs from a field value, which holds no
        // other control byte.)
        let present = |name| {
            header(name)
                .map(<[u8]>::trim_ascii)
                .filter(|v| !v.is_empty())
        };
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
            // Not the user alone: the layer answers before the handler checks the password,
            // and a user name is no secret.
            Scope::BasicAuthUser => present("authorization")
                .and_then(basic_user_and_password_digest)
                .map(|value| ScopeValue::new("basic_auth", value))
                .ok_or(ScopeError::NoBasicUser),
            Scope::Header(name) => present(name)
                .map(|v| ScopeValue::with_source("named_header", lowercase(name), v))
                .ok_or(ScopeError::NoHeader(name)),
            Scope::Principal => principal
                .filter(|p| !p.is_empty())
                .map(|p| ScopeValue::new("principal", p))
                .ok_or(ScopeError::NoPrincipal),
            Scope::Global => Ok(ScopeValue::new("global", &b""[..])),
        }
    }
}

/// A header name as one spelling of it: `X-Tenant` and `x-tenant` are one header.
fn lowercase(name: &'static str) -> Cow<'static, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The SHA-256 digest of the password (32 bytes), then the user name, from a Basic
/// `Authorization` value. The digest comes first and has a fixed length, so no two
/// (user, password) pairs give the same bytes; the password itself is kept nowhere.
fn basic_user_and_password_digest(auth: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = auth.split_at(auth.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let user_len = decoded.iter().position(|&b| b == b':')?;
    if user_len == 0 {
        return None;
    }
    let (user, password) = (&decoded[..user_len], &decoded[user_len + 1..]);
    let mut value = Vec::with_capacity(32 + user.len());
    value.extend_from_slice(&Sha256::digest(password));
    value.extend_from_slice(user);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_value_s_debug_form_does_not_show_the_credential() {
        let scope = ScopeValue::new("authorization", &b"Bearer sk_live_secret"[..]);
        let shown = format!("{scope:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("authorization") && shown.contains("21 bytes"),
            "{shown}"
        );
    }

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

    /// HTTP/1's parser trims a field value's surrounding spaces and tabs; HTTP/2 hands the value
    /// on as sent. A value of whitespace alone is no credential either way, and one with spaces
    /// around it is the credential within them, whichever protocol carried it.
    #[test]
    fn a_credential_of_whitespace_alone_is_none_whichever_protocol_carried_it() {
        for blank in [" ", "\t", " \t "] {
            assert_eq!(
                Scope::ApiKey.resolve(headers(&[("Authorization", blank)])),
                Err(ScopeError::NoCredentials),
                "{blank:?}"
            );
            let falls_back = [("Authorization", blank), ("X-API-Key", "b")];
            let got = Scope::ApiKey.resolve(headers(&falls_back)).unwrap();
            assert_eq!(got, ScopeValue::new("x-api-key", &b"b"[..]));
            assert_eq!(
                Scope::ApiKey.resolve(headers(&[("X-API-Key", blank)])),
                Err(ScopeError::NoCredentials)
            );
            assert_eq!(
                Scope::Header("X-Tenant").resolve(headers(&[("X-Tenant", blank)])),
                Err(ScopeError::NoHeader("X-Tenant"))
            );
            assert_eq!(
                Scope::BasicAuthUser.resolve(headers(&[("Authorization", blank)])),
                Err(ScopeError::NoBasicUser)
            );
        }
        let padded = [("Authorization", " \tBearer a ")];
        let got = Scope::ApiKey.resolve(headers(&padded)).unwrap();
        assert_eq!(got, ScopeValue::new("authorization", &b"Bearer a"[..]));
        let padded = [("X-Tenant", " t-1\t")];
        let got = Scope::Header("X-Tenant").resolve(headers(&padded)).unwrap();
        assert_eq!(got.value, &b"t-1"[..]);
    }

    #[test]
    fn basic_auth_scope_is_the_user_and_a_digest_of_the_password() {
        // "app_1:secret", "app_1:other", "app_2:secret".
        let secret = [("Authorization", "Basic YXBwXzE6c2VjcmV0")];
        let other = [("Authorization", "basic YXBwXzE6b3RoZXI=")];
        let app_2 = [("Authorization", "Basic YXBwXzI6c2VjcmV0")];
        let s = Scope::BasicAuthUser.resolve(headers(&secret)).unwrap();
        assert_eq!(s.kind, "basic_auth");
        assert_eq!(&s.value[..32], &Sha256::digest(b"secret")[..]);
        assert_eq!(&s.value[32..], b"app_1");
        let o = Scope::BasicAuthUser.resolve(headers(&other)).unwrap();
        assert_ne!(s, o, "a wrong or rotated password is another scope");
        let a2 = Scope::BasicAuthUser.resolve(headers(&app_2)).unwrap();
        assert_ne!(s, a2, "two apps never share a scope");
        // The same credential spelt with other whitespace or scheme case is the same scope.
        let spaced = [("Authorization", "BASIC   YXBwXzE6c2VjcmV0 ")];
        assert_eq!(Scope::BasicAuthUser.resolve(headers(&spaced)).unwrap(), s);
    }

    /// A client whose Basic credential is refused is told the rule it broke: its encoding
    /// (unpadded, or base64url, is none) as well as the user name.
    #[test]
    fn a_refused_basic_credential_is_told_how_to_encode_it() {
        // "a:bc" unpadded, and in base64url with `-` where standard base64 has `+`.
        for value in ["Basic YTpiYw", "Basic Pz4-OnA="] {
            let sent = [("Authorization", value)];
            let message = Scope::BasicAuthUser
                .resolve(headers(&sent))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("base64") && message.contains("padded"),
                "{value}: {message}"
            );
        }
    }

    #[test]
    fn basic_auth_scope_keeps_no_raw_password() {
        // "app_1:hunter2:with:colons": the password runs to the end, colons and all.
        let auth = [(
            "Authorization",
            "Basic YXBwXzE6aHVudGVyMjp3aXRoOmNvbG9ucw==",
        )];
        let s = Scope::BasicAuthUser.resolve(headers(&auth)).unwrap();
        assert_eq!(&s.value[..32], &Sha256::digest(b"hunter2:with:colons")[..]);
        assert!(!s.value.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn basic_auth_pairs_cannot_run_into_each_other() {
        // "ab:c" and "a:bc" hold the same characters.
        let ab_c = [("Authorization", "Basic YWI6Yw==")];
        let a_bc = [("Authorization", "Basic YTpiYw==")];
        assert_ne!(
            Scope::BasicAuthUser.resolve(headers(&ab_c)).unwrap(),
            Scope::BasicAuthUser.resolve(headers(&a_bc)).unwrap()
        );
    }

    #[test]
    fn basic_auth_scope_needs_basic_credentials_with_a_user() {
        let refused = [
            "Bearer YXBwXzE6c2VjcmV0",
            "Basic !!!",
            "Basic",
            "Basic OnNlY3JldA==", // ":secret", no user
            "Basic YXBwXzE=",     // "app_1", no colon
        ];
        for auth in refused {
            let h = [("Authorization", auth)];
            assert_eq!(
                Scope::BasicAuthUser.resolve(headers(&h)),
                Err(ScopeError::NoBasicUser),
                "{auth}"
            );
        }
        // An empty password is a password: the scope is the user and its digest.
        let empty = [("Authorization", "Basic YXBwXzE6")];
        let s = Scope::BasicAuthUser.resolve(headers(&empty)).unwrap();
        assert_eq!(&s.value[..32], &Sha256::digest(b"")[..]);
    }

    #[test]
    fn a_header_scope_names_its_header_whatever_its_case() {
        let h = [("X-Tenant", "acme"), ("X-User", "acme")];
        let tenant = Scope::Header("X-Tenant").resolve(headers(&h)).unwrap();
        assert_eq!(tenant.source.as_deref(), Some("x-tenant"));
        assert_eq!(tenant.value.as_ref(), b"acme");
        let user = Scope::Header("X-User").resolve(headers(&h)).unwrap();
        assert_ne!(tenant, user, "the same value in another header");
        let lower = Scope::Header("x-tenant").resolve(headers(&h)).unwrap();
        assert_eq!(tenant, lower);
        assert!(matches!(lower.source, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn the_principal_scope_reads_only_a_verified_principal() {
        let h = [("Authorization", "Bearer t")];
        assert_eq!(
            Scope::Principal.resolve(headers(&h)),
            Err(ScopeError::NoPrincipal),
            "headers are never a principal"
        );
        assert_eq!(
            Scope::Principal.resolve_with_principal(headers(&h), Some(b"")),
            Err(ScopeError::NoPrincipal)
        );
        let got = Scope::Principal
            .resolve_with_principal(headers(&[]), Some(b"user_42"))
            .unwrap();
        assert_eq!(got, ScopeValue::new("principal", &b"user_42"[..]));
        // Other scopes ignore a principal.
        assert_eq!(
            Scope::ApiKey
                .resolve_with_principal(headers(&h), Some(b"user_42"))
                .unwrap()
                .kind,
            "authorization"
        );
        let message = ScopeError::NoPrincipal.to_string();
        assert!(message.contains("authentication middleware"), "{message}");
        assert!(
            message.contains("before the idempotency layer"),
            "{message}"
        );
    }

    #[test]
    fn scope_functions_are_told_apart_by_identity() {
        let a = ScopeValue::of_function("app::tenant", b"acme".to_vec());
        let b = ScopeValue::of_function("app::user", b"acme".to_vec());
        assert_ne!(a, b);
        assert_eq!(a.clone().into_owned(), a);
    }

    #[test]
    fn global_scope_needs_nothing() {
        assert_eq!(Scope::Global.resolve(headers(&[])).unwrap().kind, "global");
    }
}
