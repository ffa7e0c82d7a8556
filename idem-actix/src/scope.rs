//! Whose key a request's key is: the request-to-scope resolution of both forms, the
//! [`Principal`] an authentication middleware hands over, and the scope functions of
//! `#[idempotent(scope = function)]`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use actix_web::http::header::{HeaderMap, HeaderValue};
use actix_web::http::Version;
use actix_web::{HttpMessage as _, HttpRequest};
use idem_core::{Scope, ScopeError, ScopeValue};

/// The caller an authentication middleware verified, for `scope = "principal"`
/// ([`Scope::Principal`]): keys are then per caller, whatever credential it used this time
/// (a rotated token, another session of the same user).
///
/// The middleware inserts it into the request's extensions once it has checked the
/// credential, and must run before the idempotency layer: with `#[idempotent]`, any
/// middleware around the handler does; with the [`Idempotency`](crate::Idempotency) middleware,
/// the authentication middleware must wrap it, that is be registered with `wrap` *after* it
/// (actix runs the last one registered first). A request that reaches the layer without a
/// principal gets 400 `idempotency_scope_missing`, never a shared scope.
///
/// The id is the whole scope: give callers of different kinds ids that cannot be equal
/// (`"user:42"`, `"app:42"`). An empty id counts as none.
///
/// ```
/// use actix_web::body::MessageBody;
/// use actix_web::dev::{ServiceRequest, ServiceResponse};
/// use actix_web::middleware::{from_fn, Next};
/// use actix_web::{error, post, test, App, HttpMessage, HttpResponse};
/// use idem_actix::{idempotent, Principal};
///
/// /// Verifies the bearer token and hands its user over to the idempotency layer.
/// async fn authenticate(
///     req: ServiceRequest,
///     next: Next<impl MessageBody>,
/// ) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
///     let user = match req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
///         Some("Bearer token-of-ada") => "user:ada",
///         _ => return Err(error::ErrorUnauthorized("sign in")),
///     };
///     req.extensions_mut().insert(Principal::new(user));
///     next.call(req).await
/// }
///
/// #[post("/v1/calls")]
/// #[idempotent(scope = "principal")]
/// async fn create_call() -> HttpResponse {
///     HttpResponse::Created().finish()
/// }
///
/// # actix_web::rt::System::new().block_on(async {
/// let app = test::init_service(App::new().wrap(from_fn(authenticate)).service(create_call)).await;
/// let call = || {
///     test::TestRequest::post()
///         .uri("/v1/calls")
///         .insert_header(("Authorization", "Bearer token-of-ada"))
///         .insert_header(("Idempotency-Key", "k"))
///         .to_request()
/// };
/// assert!(test::call_service(&app, call()).await.headers().get("idempotent-replayed").is_none());
/// assert!(test::call_service(&app, call()).await.headers().get("idempotent-replayed").is_some());
/// # });
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(Box<str>);

impl Principal {
    /// The principal whose id is `id`: a user id, an application id, a token's subject.
    pub fn new(id: impl Into<Box<str>>) -> Self {
        Self(id.into())
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.0
    }
}

impl From<String> for Principal {
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

impl From<&str> for Principal {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

/// The scope function of `#[idempotent(scope = function)]`, with its identity: two functions
/// that return the same value are two scopes.
///
/// The identity of a function item is its type name, its full path: one function is one scope
/// however its path is written. A function pointer (a `static` or `const` of type
/// `fn(&HttpRequest) -> Option<String>`) has the type name of every other such pointer, so its
/// identity is the path written in the attribute, qualified by the module it is written in.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct ScopeFunction {
    identity: &'static str,
    find: fn(&HttpRequest) -> Option<String>,
}

impl ScopeFunction {
    /// The scope function `function`, written as `written` (the module and the path written),
    /// called through `find` (the attribute passes a closure that calls it, and checks its
    /// signature there).
    pub fn new<F>(
        function: &F,
        written: &'static str,
        find: fn(&HttpRequest) -> Option<String>,
    ) -> Self {
        let _ = function;
        // Every function item has a type of its own, and a zero-sized one; a function
        // pointer's type is shared, and has a size.
        let identity = if std::mem::size_of::<F>() == 0 {
            std::any::type_name::<F>()
        } else {
            written
        };
        Self { identity, find }
    }
}

impl ScopeFunction {
    /// The scope function `find`, known by `name` (the middleware's, which has no path).
    pub(crate) const fn named(
        name: &'static str,
        find: fn(&HttpRequest) -> Option<String>,
    ) -> Self {
        Self {
            identity: name,
            find,
        }
    }
}

impl fmt::Debug for ScopeFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ScopeFunction")
            .field(&self.identity)
            .finish()
    }
}

/// The scope of `req`: what `function` finds when the endpoint has one, else what `scope`
/// takes from the request's headers, or from the [`Principal`] in its extensions.
///
/// # Errors
/// [`ScopeError`] when the request does not carry what the scope needs; there is no fallback
/// to a shared scope.
pub(crate) fn resolve(
    req: &HttpRequest,
    scope: Scope,
    function: Option<ScopeFunction>,
) -> Result<ScopeValue<'_>, ScopeError> {
    let headers = req.headers();
    if let Some(function) = function {
        // An empty scope is none, as an empty header or principal is for the built-in
        // scopes: callers without one must not share it.
        return (function.find)(req)
            .filter(|value| !value.is_empty())
            .map(|value| ScopeValue::of_function(function.identity, value.into_bytes()))
            .ok_or_else(|| {
                ScopeError::Custom(
                    "this endpoint's scope function found none for this request; send the credentials it reads".into(),
                )
            });
    }
    if let Scope::Header(name) = scope {
        if name.eq_ignore_ascii_case("cookie") && req.version() >= Version::HTTP_2 {
            return joined_cookies(headers)
                .map(|value| ScopeValue::with_source("named_header", "cookie", value))
                .ok_or(ScopeError::NoHeader(name));
        }
    }
    // A header the scope reads that came on more than one line is noted, and refused below.
    let repeated = Cell::new(None);
    let found = if scope != Scope::Principal {
        scope.resolve(|name| one_line(headers, name, &repeated))
    } else {
        // Copied out: the extensions are borrowed only while they are read, so that nothing
        // holds them while the handler runs.
        let extensions = req.extensions();
        let principal = extensions.get::<Principal>().map(|p| p.id().as_bytes());
        scope
            .resolve_with_principal(|name| one_line(headers, name, &repeated), principal)
            .map(ScopeValue::into_owned)
    };
    match repeated.take() {
        Some(name) => Err(ScopeError::Repeated(name.into())),
        None => found,
    }
}

/// The cookies of an HTTP/2 request, whose client may send them as several `cookie` fields,
/// which a server joins with `; ` (RFC 9113, section 8.2.3) where actix hands them on as they
/// came: the one `Cookie` header they stand for, so that a scope read from it is the same
/// however the client split them, each without the whitespace around it. `None` when there
/// are none (a field of whitespace alone is none).
fn joined_cookies(headers: &HeaderMap) -> Option<Cow<'_, [u8]>> {
    let mut fields = headers
        .get_all("cookie")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty());
    let first = fields.next()?;
    let Some(second) = fields.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = first.to_vec();
    for field in std::iter::once(second).chain(fields) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(field);
    }
    Some(Cow::Owned(joined))
}

/// The value of the header `name`, noting in `repeated` a header sent on more than one line.
fn one_line<'h>(
    headers: &'h HeaderMap,
    name: &str,
    repeated: &Cell<Option<String>>,
) -> Option<&'h [u8]> {
    let mut lines = headers.get_all(name);
    let first = lines.next();
    if lines.next().is_some() {
        repeated.set(Some(name.to_owned()));
    }
    first.map(HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use idem_core::{ClientKey, StoreKey};

    use super::*;

    fn tenant(req: &HttpRequest) -> Option<String> {
        Some(req.headers().get("x-tenant")?.to_str().ok()?.to_owned())
    }

    fn org(req: &HttpRequest) -> Option<String> {
        Some(req.headers().get("x-org")?.to_str().ok()?.to_owned())
    }

    type Find = fn(&HttpRequest) -> Option<String>;

    fn function<F>(f: &F, find: Find) -> ScopeFunction {
        ScopeFunction::new(f, "app::written", find)
    }

    fn other_pointer() -> ScopeValue<'static> {
        let req = TestRequest::post().to_http_request();
        let pointer: Find = |_| Some("acme".to_owned());
        resolve(&req, Scope::ApiKey, Some(function(&pointer, pointer)))
            .unwrap()
            .into_owned()
    }

    fn store_key(scope: &ScopeValue<'_>) -> StoreKey {
        StoreKey::new(scope, None, &ClientKey::parse(b"k", 255).unwrap())
    }

    #[test]
    fn a_principal_is_read_from_the_extensions_only() {
        let req = TestRequest::post()
            .insert_header(("Authorization", "Bearer t"))
            .to_http_request();
        assert_eq!(
            resolve(&req, Scope::Principal, None),
            Err(ScopeError::NoPrincipal)
        );
        req.extensions_mut().insert(Principal::new("user:ada"));
        let got = resolve(&req, Scope::Principal, None).unwrap();
        assert_eq!(got, ScopeValue::new("principal", b"user:ada".to_vec()));
        // Nothing stays borrowed: a middleware further in can still write the extensions.
        req.extensions_mut().insert(1_u8);
        req.extensions_mut().insert(Principal::new(""));
        assert_eq!(
            resolve(&req, Scope::Principal, None),
            Err(ScopeError::NoPrincipal),
            "an empty principal is none"
        );
    }

    #[test]
    fn a_scope_function_that_finds_an_empty_tenant_finds_none() {
        // As the built-in scopes read an empty header or principal: two callers without a
        // tenant must not share one.
        let req = TestRequest::post()
            .insert_header(("X-Tenant", ""))
            .to_http_request();
        let found = resolve(&req, Scope::ApiKey, Some(function(&tenant, tenant)));
        assert!(matches!(found, Err(ScopeError::Custom(_))), "{found:?}");
    }

    #[test]
    fn a_scope_function_is_scoped_by_its_identity() {
        let req = TestRequest::post()
            .insert_header(("X-Tenant", "acme"))
            .insert_header(("X-Org", "acme"))
            .to_http_request();
        let by_tenant = resolve(&req, Scope::ApiKey, Some(function(&tenant, tenant))).unwrap();
        let by_org = resolve(&req, Scope::ApiKey, Some(function(&org, org))).unwrap();
        assert_eq!(by_tenant.value.as_ref(), b"acme");
        assert!(by_tenant
            .source
            .as_deref()
            .unwrap()
            .ends_with("tests::tenant"));
        assert_ne!(store_key(&by_tenant), store_key(&by_org));
        // Written with another path, one function item is the same scope.
        let again = ScopeFunction::new(&tenant, "elsewhere::tenant", tenant);
        assert_eq!(
            resolve(&req, Scope::ApiKey, Some(again)),
            Ok(by_tenant.clone())
        );
        // Function pointers share a type: the written path tells them apart.
        let (a, b): (Find, Find) = (tenant, org);
        let by_a = resolve(
            &req,
            Scope::ApiKey,
            Some(ScopeFunction::new(&a, "app::A", a)),
        );
        let by_b = resolve(
            &req,
            Scope::ApiKey,
            Some(ScopeFunction::new(&b, "app::B", b)),
        );
        assert_eq!(by_a.as_ref().unwrap().source.as_deref(), Some("app::A"));
        assert_ne!(store_key(&by_a.unwrap()), store_key(&by_b.unwrap()));
        assert_ne!(store_key(&by_tenant), store_key(&other_pointer()));
        let none = TestRequest::post().to_http_request();
        assert!(matches!(
            resolve(&none, Scope::ApiKey, Some(function(&tenant, tenant))),
            Err(ScopeError::Custom(_))
        ));
    }

    /// A header sent twice is refused, not read from its first line: a proxy that appends
    /// its own line instead of replacing the client's would otherwise leave the scope to
    /// whichever line comes first, and the layer cannot know which one to trust.
    fn refused_as_repeated(req: &HttpRequest, scope: Scope) {
        let found = resolve(req, scope, None);
        let message = match &found {
            Err(error) => error.to_string(),
            Ok(value) => panic!("{scope:?} read {value:?} from a header sent twice"),
        };
        assert!(message.contains("more than once"), "{message}");
    }

    #[test]
    fn a_scope_header_sent_twice_is_refused_not_read_first() {
        let req = TestRequest::post()
            .append_header(("X-Tenant", "acme"))
            .append_header(("X-Tenant", "evil-co"))
            .to_http_request();
        refused_as_repeated(&req, Scope::Header("X-Tenant"));
    }

    #[test]
    fn two_authorization_lines_are_refused_by_the_scopes_that_read_it() {
        let req = TestRequest::post()
            .append_header(("Authorization", "Basic YTpi"))
            .append_header(("Authorization", "Basic Yzpk"))
            .to_http_request();
        refused_as_repeated(&req, Scope::ApiKey);
        refused_as_repeated(&req, Scope::BasicAuthUser);
        let keys = TestRequest::post()
            .append_header(("X-API-Key", "a"))
            .append_header(("X-API-Key", "b"))
            .to_http_request();
        refused_as_repeated(&keys, Scope::ApiKey);
        // A header the scope does not read may come twice: with one Authorization line,
        // the API key scope never looks at X-API-Key.
        let unread = TestRequest::post()
            .insert_header(("Authorization", "Bearer t"))
            .append_header(("X-API-Key", "a"))
            .append_header(("X-API-Key", "b"))
            .to_http_request();
        assert_eq!(
            resolve(&unread, Scope::ApiKey, None),
            Ok(ScopeValue::new("authorization", &b"Bearer t"[..]))
        );
    }

    #[test]
    fn without_a_function_the_policys_scope_reads_the_headers() {
        let req = TestRequest::post()
            .insert_header(("X-Tenant", "acme"))
            .to_http_request();
        let got = resolve(&req, Scope::Header("X-Tenant"), None).unwrap();
        assert_eq!(
            got,
            ScopeValue::with_source("named_header", "x-tenant", &b"acme"[..])
        );
        assert_eq!(
            resolve(&req, Scope::ApiKey, None),
            Err(ScopeError::NoCredentials)
        );
    }
}
