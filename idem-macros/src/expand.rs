//! Code generation: the original handler's body runs inside a generated handler, after a
//! single call into `idem_actix::__private::run`.
//!
//! The body stays in the generated function's own scope (as an `async` block), so `Self`,
//! generic parameters and `impl Trait` return types mean what they meant.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::visit_mut::{self, VisitMut};
use syn::{Attribute, FnArg, GenericParam, Ident, ItemFn, PatType, ReturnType, Type};

use crate::ast::{
    Args, BodyForm, Cache, ErrorFormat, Fingerprint, InFlight, Key, Mismatch, PerEndpoint, Scope,
    Spanned,
};
use crate::valid::{contains_impl, mentions};

/// The endpoint's overrides of the application's policy, as a const expression: one setter
/// call per argument given. It names the support module `__idem_p`, which the expansion
/// brings into scope.
fn overrides(args: &Args) -> TokenStream {
    let mut setters: Vec<TokenStream> = Vec::new();
    // `in_flight = "wait"` without a bound: a setter without a value.
    let mut waits = None;
    let mut set = |name: &str, span: Span, value: TokenStream| {
        let setter = Ident::new(name, span);
        setters.push(quote!(#setter(#value)));
    };
    if let Some(ttl) = &args.ttl {
        set("ttl", ttl.span(), duration(ttl.value));
    }
    if let Some(scope) = &args.scope {
        let value = match &scope.value {
            Scope::ApiKey => Some(quote!(__idem_p::Scope::ApiKey)),
            Scope::Global => Some(quote!(__idem_p::Scope::Global)),
            Scope::BasicAuthUser => Some(quote!(__idem_p::Scope::BasicAuthUser)),
            Scope::Principal => Some(quote!(__idem_p::Scope::Principal)),
            Scope::Header(h) => Some(quote!(__idem_p::Scope::Header(#h))),
            // A function is handed to the run itself (see `scope_function`).
            Scope::Function(_) => None,
        };
        if let Some(value) = value {
            set("scope", scope.span(), value);
        }
    }
    if let Some(header) = &args.header {
        let h = &header.value;
        set("header", header.span(), quote!(#h));
    }
    for (name, arg) in [
        ("key_max_len", &args.key_max_len),
        ("max_body", &args.max_body),
        ("max_response", &args.max_response),
    ] {
        if let Some(arg) = arg {
            let n = arg.value;
            set(name, arg.span(), quote!(#n));
        }
    }
    if let Some(per_endpoint) = &args.per_endpoint {
        match &per_endpoint.value {
            PerEndpoint::Flag(b) => set("per_endpoint", per_endpoint.span(), quote!(#b)),
            PerEndpoint::Named(name) => {
                set("per_endpoint", per_endpoint.span(), quote!(true));
                set("endpoint_name", per_endpoint.span(), quote!(#name));
            }
        }
    }
    for (name, arg) in [
        ("required", &args.required),
        ("replay_set_cookie", &args.replay_set_cookie),
    ] {
        if let Some(arg) = arg {
            let b = arg.value;
            set(name, arg.span(), quote!(#b));
        }
    }
    if let Some(mismatch) = &args.mismatch {
        let v = match mismatch.value {
            Mismatch::Conflict => quote!(Conflict),
            Mismatch::Unprocessable => quote!(Unprocessable),
            Mismatch::Replay => quote!(Replay),
        };
        set(
            "on_mismatch",
            mismatch.span(),
            quote!(__idem_p::OnMismatch::#v),
        );
    }
    if let Some(in_flight) = &args.in_flight {
        let v = match (&in_flight.value, &args.wait_timeout) {
            (InFlight::Conflict, _) => Some(quote!(Conflict)),
            (InFlight::Wait, Some(bound)) => {
                let bound = duration(bound.value);
                Some(quote!(Wait(#bound)))
            }
            // The application's bound where its defaults wait, else the built-in one.
            (InFlight::Wait, None) => None,
        };
        match v {
            Some(v) => set(
                "on_in_flight",
                in_flight.span(),
                quote!(__idem_p::OnInFlight::#v),
            ),
            None => {
                let setter = Ident::new("wait_in_flight", in_flight.span());
                waits = Some(quote!(#setter()));
            }
        }
    }
    if let Some(cache) = &args.cache {
        let v = match cache.value {
            Cache::Non5xx => quote!(Non5xx),
            Cache::Success => quote!(Success),
        };
        set("cache", cache.span(), quote!(__idem_p::CachePolicy::#v));
    }
    if let Some(lease) = &args.lease {
        set("lease", lease.span(), duration(lease.value));
    }
    if let Some(fail_open) = &args.fail_open {
        // `false` is set too: it fails closed where the application's defaults fail open.
        let v = match fail_open.value {
            true => quote!(FailOpen),
            false => quote!(FailClosed),
        };
        set(
            "on_store_error",
            fail_open.span(),
            quote!(__idem_p::OnStoreError::#v),
        );
    }
    if let Some(errors) = &args.errors {
        let v = match errors.value {
            ErrorFormat::Envelope => quote!(Envelope),
            ErrorFormat::Type => quote!(EnvelopeType),
            ErrorFormat::Problem => quote!(Problem),
        };
        set(
            "error_format",
            errors.span(),
            quote!(__idem_p::ErrorFormat::#v),
        );
    }
    if let Some(Spanned {
        name,
        value: Fingerprint::Form(form),
    }) = &args.fingerprint
    {
        let v = match form {
            BodyForm::Bytes => quote!(Bytes),
            BodyForm::Json => quote!(Json),
            BodyForm::Form => quote!(Form),
        };
        set("fingerprint", name.span(), quote!(__idem_p::BodyForm::#v));
    }
    // Members the application's defaults leave out of JSON bodies mean nothing to an
    // endpoint that reads its bodies otherwise: `Overrides::apply_to` leaves them behind.
    for (name, arg) in [
        ("fingerprint_ignore", &args.fingerprint_ignore),
        ("fingerprint_headers", &args.fingerprint_headers),
    ] {
        if let Some(arg) = arg {
            let items = &arg.value;
            set(name, arg.span(), quote!(&[#(#items),*]));
        }
    }
    for (variant, arg) in [
        (quote!(Only), &args.replay_headers),
        (quote!(Except), &args.replay_drop_headers),
    ] {
        if let Some(arg) = arg {
            let items = &arg.value;
            set(
                "replay_headers",
                arg.span(),
                quote!(__idem_p::ReplayHeaders::#variant(&[#(#items),*])),
            );
        }
    }
    if let Some(Spanned {
        name,
        value: Key::Json(pointer),
    }) = &args.key
    {
        set(
            "key_source",
            name.span(),
            quote!(__idem_p::KeySource::Json(#pointer)),
        );
    }
    setters.extend(waits);
    quote!(__idem_p::Overrides::NONE #(.#setters)*)
}

/// `d` as a const expression, to the millisecond.
fn duration(d: Duration) -> TokenStream {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    quote!(__idem_p::Duration::from_millis(#ms))
}

/// The endpoint's functions, handed to the run: built in the handler's body rather than in
/// its `static`, so that they can name `Self` and the handler's generic parameters. Each is
/// called through a function of the support module whose bound checks its signature, on the
/// path as written, so that a mistake is reported there, once.
fn functions(args: &Args) -> TokenStream {
    let mut setters: Vec<TokenStream> = Vec::new();
    if let Some(Spanned {
        value: Scope::Function(path),
        ..
    }) = &args.scope
    {
        // The function's type names it, so that two functions never share a scope (or, for
        // a function pointer, whose type is shared, the path as written). The type is read
        // from a reference, which asks nothing of the function.
        let req = local("__idem_scope_req", path.span());
        let call = quote_spanned! {path.span()=> __idem_p::scope(#path, #req) };
        let identity = quote_spanned! {path.span()=> &#path };
        let written = path.to_token_stream().to_string();
        setters.push(quote! {
            scope(__idem_p::ScopeFunction::new(
                #identity,
                ::core::concat!(::core::module_path!(), "::", #written),
                |__idem_scope_req: &__idem_p::HttpRequest| #call,
            ))
        });
    }
    if let Some(Spanned {
        value: Fingerprint::Function(path),
        ..
    }) = &args.fingerprint
    {
        let (req, body) = (
            local("__idem_fn_req", path.span()),
            local("__idem_fn_body", path.span()),
        );
        let call = quote_spanned! {path.span()=> __idem_p::fingerprint(#path, #req, #body) };
        setters.push(quote! {
            fingerprint(|__idem_fn_req: &__idem_p::HttpRequest, __idem_fn_body: &[u8]| #call)
        });
    }
    if let Some(Spanned {
        value: Key::Function(path),
        ..
    }) = &args.key
    {
        let (req, body) = (
            local("__idem_fn_req", path.span()),
            local("__idem_fn_body", path.span()),
        );
        let call = quote_spanned! {path.span()=> __idem_p::key(#path, #req, #body) };
        setters.push(quote! {
            key(|__idem_fn_req: &__idem_p::HttpRequest, __idem_fn_body: &[u8]| #call)
        });
    }
    if let Some(Spanned { value: path, .. }) = &args.on_replay {
        let (req, res) = (
            local("__idem_fn_req", path.span()),
            local("__idem_fn_res", path.span()),
        );
        let call = quote_spanned! {path.span()=> __idem_p::on_replay(#path, #req, #res) };
        setters.push(quote! {
            on_replay(
                |__idem_fn_req: &__idem_p::HttpRequest, __idem_fn_res: &mut __idem_p::HttpResponse| #call
            )
        });
    }
    quote!(__idem_p::Functions::NONE #(.#setters)*)
}

/// The declared return type `ty`, each `impl Trait` in it made `_`: a type the body's value
/// can be given, to coerce to, even where the signature's cannot be named.
struct Inferred;

impl VisitMut for Inferred {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(opaque) = ty {
            *ty = syn::parse_quote_spanned!(opaque.impl_token.span=> _);
            return;
        }
        visit_mut::visit_type_mut(self, ty);
    }
}

/// Whether `generics`' `where` clause bounds the type parameter `param` itself.
fn bounded_in_where(generics: &syn::Generics, param: &Ident) -> bool {
    generics.where_clause.iter().flat_map(|w| &w.predicates).any(|p| {
        matches!(p, syn::WherePredicate::Type(p)
            if matches!(&p.bounded_ty, Type::Path(t) if t.qself.is_none() && t.path.is_ident(param)))
    })
}

/// A local variable of the expansion's, used among the user's tokens at `at`: located there,
/// so that an error points at them, but resolved where the attribute is written, as the
/// variable's binding is; a name spanned from the user's tokens would not see that binding
/// when the two come from different macros (a handler written by `macro_rules!`).
fn local(name: &str, at: Span) -> Ident {
    Ident::new(name, Span::call_site().located_at(at))
}

/// A local variable of the expansion's that the handler's arguments are bound beside, located
/// at `at`: resolved where the macro is defined (mixed-site), so that an argument of the same
/// name (`__idem_req`) neither shadows it nor is taken for it.
fn hidden(name: &str, at: Span) -> Ident {
    Ident::new(name, Span::mixed_site().located_at(at))
}

/// A statement that gives the `async` block the body runs in the declared return type `ty`
/// (with `_` for each `impl Trait`), by a `return` of it that never runs: a block's output is
/// otherwise the type of its first `return` (or its tail), so that a later value would not
/// coerce as it does in the handler (`return Err(Box::new(e))` where the handler returns
/// `Result<_, Box<dyn Error>>`, in a `macro_rules!` macro or not, or the same as the tail).
fn declared_output(ty: &Type) -> TokenStream {
    let mut ty = ty.clone();
    Inferred.visit_type_mut(&mut ty);
    quote_spanned! {ty.span()=>
        if false {
            return __idem_p::declared::<#ty>();
        }
    }
}

/// Checks `__idem_out` against a return type `ty` that holds an `impl Trait`, as the
/// signature did: by a nested function that takes `&ty`, so that each `impl Trait` in it is
/// an argument's. The parts of `ty` that hold no `impl Trait` are the function's own type
/// parameters, inferred from the value ([`Opaque`]): a nested function cannot name an `impl`
/// block's parameters (`S::Error`), which the expansion cannot see either. When an
/// `impl Trait`'s bounds name the handler's type or const parameters, the function has those
/// (and their bounds) as its own, given explicitly. Nor can a nested function name `Self`:
/// bounds that do are left to the `Responder` bound of what the handler returns.
fn output_check(ty: &Type, generics: &syn::Generics) -> TokenStream {
    let span = ty.span();
    let params: Vec<&Ident> = generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(param) => Some(&param.ident),
            GenericParam::Const(param) => Some(&param.ident),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    let mut ty = ty.clone();
    let mut opaque = Opaque {
        own: &params,
        params: Vec::new(),
        unsure: false,
    };
    opaque.visit_type_mut(&mut ty);
    let fresh = opaque.params;
    let ty_tokens = ty.to_token_stream();
    if opaque.unsure || mentions(ty_tokens.clone(), &|ident| ident == "Self") {
        return quote!();
    }
    // The handler's lifetimes, which an `impl Trait`'s bounds may name (`+ 'a`).
    let lifetimes = generics.lifetimes().map(|param| &param.lifetime);
    // Only bounds that name the handler's own parameters need them; theirs may name an `impl`
    // block's parameters, which the nested function could not.
    let out = local("__idem_out", span);
    if !mentions(ty_tokens, &|ident| params.contains(&ident)) {
        return quote_spanned! {span=>
            #[allow(unused_parens, non_camel_case_types)]
            fn __idem_output<#(#lifetimes,)* #(#fresh),*>(_: &(#ty)) {}
            __idem_output(&#out);
        };
    }
    // Bounds that name `Self` (or, unseen here, an `impl` block's parameters) cannot be
    // repeated on a nested function: the check is left to `Responder`.
    if mentions(generics.to_token_stream(), &|ident| ident == "Self")
        || mentions(generics.where_clause.to_token_stream(), &|ident| {
            ident == "Self"
        })
    {
        return quote!();
    }
    let mut own = generics.clone();
    own.params.extend(
        fresh
            .iter()
            .map(|param| -> GenericParam { syn::parse_quote!(#param) }),
    );
    let where_clause = &own.where_clause;
    let inferred = fresh.iter().map(|_| quote!(_));
    quote_spanned! {span=>
        #[allow(unused_parens, non_camel_case_types, clippy::extra_unused_type_parameters)]
        fn __idem_output #own (_: &(#ty)) #where_clause {}
        __idem_output::<#(#params,)* #(#inferred),*>(&#out);
    }
}

/// The return type as [`output_check`] checks it: each part that holds no `impl Trait` made a
/// type parameter of the check's own (`Result<impl Responder, S::Error>` is checked as
/// `Result<impl Responder, __IdemT0>`), and `use<..>` bounds left out, which an argument's
/// `impl Trait` cannot have. A lone name may be a const (`MAX`, the handler's `N`) as well as
/// a type: one of the handler's own parameters stays (the check has it too), and another
/// written as a const is (`MAX`, an `impl` block's `S`) leaves the check to the `Responder`
/// bound (`unsure`).
struct Opaque<'a> {
    params: Vec<Ident>,
    /// The handler's type and const parameters, which the check can have too.
    own: &'a [&'a Ident],
    /// Whether a lone name might be a const.
    unsure: bool,
}

impl VisitMut for Opaque<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(opaque) = ty {
            let bounds = std::mem::take(&mut opaque.bounds);
            opaque.bounds = bounds
                .into_iter()
                .filter(|bound| !matches!(bound, syn::TypeParamBound::PreciseCapture(_)))
                .collect();
            return;
        }
        if let Type::Path(path) = ty {
            if let (None, Some(name)) = (&path.qself, path.path.get_ident()) {
                if self.own.contains(&name) {
                    return;
                }
                let shouting = name.to_string().chars().all(|c| !c.is_ascii_lowercase());
                if shouting {
                    self.unsure = true;
                    return;
                }
            }
        }
        if !contains_impl(ty.to_token_stream()) {
            let param = Ident::new(&format!("__IdemT{}", self.params.len()), ty.span());
            *ty = syn::parse_quote!(#param);
            self.params.push(param);
            return;
        }
        visit_mut::visit_type_mut(self, ty);
    }
}

/// An argument's attributes that decide whether it is there at all (`#[cfg]`, and
/// `#[cfg_attr]`, which may be one).
fn conditions(arg: &PatType) -> Vec<&Attribute> {
    arg.attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr"))
        .collect()
}

/// The arguments' extraction, into `names`: as a tuple of all of them, as actix-web extracts
/// a handler's arguments; an argument with conditions (see `conditions`) is extracted on its
/// own, in its place and under them, since a tuple's element cannot be configured out.
fn extraction(
    arguments: &[&PatType],
    names: &[Ident],
    req: &Ident,
    payload: &Ident,
) -> TokenStream {
    let mut groups: Vec<(Vec<&Attribute>, Vec<usize>)> = Vec::new();
    for (i, arg) in arguments.iter().enumerate() {
        let conditions = conditions(arg);
        match groups.last_mut() {
            Some((last, members)) if last.is_empty() && conditions.is_empty() => members.push(i),
            _ => groups.push((conditions, vec![i])),
        }
    }
    if groups.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    let groups = groups.iter().map(|(conditions, members)| {
        let names = members.iter().map(|&i| &names[i]);
        let types = members.iter().map(|&i| &arguments[i].ty);
        quote! {
            #(#conditions)*
            let (#(#names,)*) = match <(#(#types,)*) as __idem_p::FromRequest>::from_request(
                &#req,
                &mut #payload,
            )
            .await
            {
                ::core::result::Result::Ok(__idem_args) => __idem_args,
                ::core::result::Result::Err(__idem_err) => {
                    return __idem_p::fail(#req, __idem_err);
                }
            };
        }
    });
    quote!(#(#groups)*)
}

/// The generated handler.
pub(crate) fn expand(args: &Args, item: ItemFn) -> TokenStream {
    let krate = match &args.krate {
        Some(path) => path.value.to_token_stream(),
        None => quote!(::idem_actix),
    };
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = item;
    let ident = &sig.ident;
    // A lint expected of the handler (`#[expect(clippy::too_many_arguments)]`) may be one of
    // its signature, which the generated function does not have: allowed there instead of
    // expected, so that it is not reported unfulfilled (an expectation of a lint that never
    // fires in the body then goes unreported too).
    let attrs = attrs.into_iter().map(|mut attr| {
        if let syn::Meta::List(list) = &mut attr.meta {
            if list.path.is_ident("expect") {
                list.path = Ident::new("allow", list.path.span()).into();
            }
        }
        attr
    });
    // Each type parameter `'static`, as the handler's run (a task that may outlive the
    // request) asks; actix asks it of a handler anyway where it is registered, so a trait
    // that does not say so is no reason to refuse it here. The bound goes where the
    // parameter's others are (a `where` clause, or beside the parameter), as two places
    // would be linted on the user's parameter.
    let mut generics = sig.generics.clone();
    let in_where: Vec<Ident> = generics
        .type_params()
        .filter(|param| bounded_in_where(&generics, &param.ident))
        .map(|param| param.ident.clone())
        .collect();
    for param in generics.type_params_mut() {
        if !in_where.contains(&param.ident) {
            param.bounds.push(syn::parse_quote!('static));
        }
    }
    for param in &in_where {
        let clause = generics.make_where_clause();
        clause.predicates.push(syn::parse_quote!(#param: 'static));
    }
    // Each lifetime parameter `'static` too, which actix makes it where it registers the
    // handler.
    for param in generics.lifetimes_mut() {
        param.bounds.push(syn::parse_quote!('static));
    }
    let where_clause = &generics.where_clause;
    let generics = &generics;

    let arguments: Vec<&PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(pat),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let types: Vec<&Type> = arguments.iter().map(|arg| &*arg.ty).collect();
    let names: Vec<_> = (0..types.len())
        .map(|i| hidden(&format!("__idem_arg{i}"), Span::call_site()))
        .collect();
    // Each argument bound as the handler bound it, with its attributes: one configured out
    // (`#[cfg]`) is not bound, and a lint level (`#[allow]`) holds for its binding.
    let bindings = arguments.iter().zip(&names).map(|(arg, name)| {
        let PatType { attrs, pat, ty, .. } = arg;
        quote! {
            #(#attrs)*
            #[allow(clippy::no_effect_underscore_binding)]
            let #pat: #ty = #name;
        }
    });
    let (req_binding, payload) = (
        hidden("__idem_req", Span::call_site()),
        hidden("__idem_payload", Span::call_site()),
    );
    let extraction = extraction(&arguments, &names, &req_binding, &payload);
    // The body's `async` block is given the declared return type first (see
    // `declared_output`), so that every value it hands back coerces to it and `?` infers as
    // in the handler. An `impl Trait` type cannot be named in a `let`, so the value is checked
    // against its bounds as the signature did, by a function of its own, generic over the
    // handler's own parameters (see `output_check`).
    let (output, check_output, declared) = match &sig.output {
        ReturnType::Type(_, ty) if !contains_impl(ty.to_token_stream()) => {
            (quote!(: #ty), quote!(), declared_output(ty))
        }
        ReturnType::Type(_, ty) => (
            quote!(),
            output_check(ty, &sig.generics),
            declared_output(ty),
        ),
        ReturnType::Default => (quote!(: ()), quote!(), quote!()),
    };
    let respond_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    let (req, out) = (
        hidden("__idem_req", respond_span),
        local("__idem_out", respond_span),
    );
    let respond = quote_spanned! {respond_span=> __idem_p::respond(#req, #out) };
    let stmts = &block.stmts;
    let functions = functions(args);
    let overrides = overrides(args);
    // Each argument is an extractor, checked on its own type, so that one that is not is
    // reported there first (the tuple of all of them is reported on the attribute).
    let extractors = arguments.iter().map(|arg| {
        let (conditions, ty) = (conditions(arg), &arg.ty);
        quote_spanned! {ty.span()=> #(#conditions)* __idem_p::extractor::<#ty>(); }
    });

    quote! {
        #(#attrs)*
        #vis async fn #ident #generics (
            __idem_raw: #krate::__private::Raw,
        ) -> #krate::__private::HttpResponse #where_clause {
            use #krate::__private as __idem_p;

            static __IDEM_ENDPOINT: __idem_p::Endpoint = __idem_p::Endpoint::new(#overrides);
            #(#extractors)*

            __idem_p::run(
                &__IDEM_ENDPOINT,
                #functions,
                __idem_raw,
                move |#req_binding: __idem_p::HttpRequest, mut #payload: __idem_p::RawPayload| async move {
                    #extraction
                    // The arguments outside the body's scope, so that its items (a `use`, a
                    // `struct`) do not change what their types name; the body's statements,
                    // not its block, which alone in this one would be linted as needless
                    // braces on the handler's own lines.
                    #(#bindings)*
                    let __idem_out #output = async move {
                        #declared
                        // The body's own items (a `use`, a `type`) in a scope of their own,
                        // so that they do not change what the declared type names.
                        { #(#stmts)* }
                    }
                    .await;
                    #check_output
                    #respond
                },
            )
            .await
        }
    }
}
