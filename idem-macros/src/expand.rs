//! Code generation: the original handler's body runs inside a generated handler, after a
//! single call into `idem_actix::__private::run`.
//!
//! The body stays in the generated function's own scope (as an `async` block), so `Self`,
//! generic parameters and `impl Trait` return types mean what they meant.

use proc_macro2::{TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType};

use crate::attr::Args;

/// The most arguments a handler can take: actix extracts tuples of up to 16.
const MAX_EXTRACTORS: usize = 16;

/// Checks that `item` is a handler the attribute can wrap.
pub fn check(item: &ItemFn) -> Result<(), syn::Error> {
    let sig = &item.sig;
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    if sig.asyncness.is_none() {
        push(syn::Error::new_spanned(
            sig.fn_token,
            "#[idempotent] handlers must be `async fn`, as actix-web handlers are",
        ));
    }
    if let Some(receiver) = sig.receiver() {
        push(syn::Error::new_spanned(
            receiver,
            "#[idempotent] handlers cannot take `self`; write an associated function and register it with `web::resource(..).route(..)`",
        ));
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(pat) = arg {
            if contains_impl(pat.ty.to_token_stream()) {
                push(syn::Error::new_spanned(
                    &pat.ty,
                    "#[idempotent] handlers name their extractor types; `impl Trait` arguments are not supported",
                ));
            }
        }
    }
    if sig.inputs.len() > MAX_EXTRACTORS {
        push(syn::Error::new_spanned(
            &sig.inputs,
            format!("actix-web handlers take at most {MAX_EXTRACTORS} extractors; group some in a tuple or a custom extractor"),
        ));
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn contains_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => ident == "impl",
        TokenTree::Group(group) => contains_impl(group.stream()),
        _ => false,
    })
}

/// The generated handler.
pub fn expand(args: &Args, item: ItemFn) -> TokenStream {
    let krate = match &args.krate {
        Some(path) => path.to_token_stream(),
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
    let (_, _, where_clause) = sig.generics.split_for_impl();
    let generics = &sig.generics;

    let (patterns, types): (Vec<_>, Vec<_>) = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some((&*pat.pat, &*pat.ty)),
            FnArg::Receiver(_) => None,
        })
        .unzip();
    let names: Vec<_> = (0..types.len())
        .map(|i| format_ident!("__idem_arg{}", i))
        .collect();
    // A named return type guides inference of `?` in the body. An `impl Trait` type cannot be
    // named in a `let`, so the value is checked against its bounds as the signature did.
    let (output, check_output) = match &sig.output {
        ReturnType::Type(_, ty) if !contains_impl(ty.to_token_stream()) => {
            (quote!(: #ty), quote!())
        }
        ReturnType::Type(_, ty) => (
            quote!(),
            quote_spanned! {ty.span()=>
                #[allow(unused_parens)]
                fn __idem_output(_: &(#ty)) {}
                __idem_output(&__idem_out);
            },
        ),
        ReturnType::Default => (quote!(: ()), quote!()),
    };
    let respond_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    let respond = quote_spanned! {respond_span=>
        __idem_p::respond(__idem_req, __idem_out)
    };
    // The function's type names it, so that two functions never share a scope (or, for a
    // function pointer, whose type is shared, the path as written). The type is read from a
    // reference, which asks nothing of the function, so that its signature is checked (and
    // reported) once, where it is called.
    let scope_fn = match &args.scope_fn {
        Some(path) => {
            let call = quote_spanned! {path.span()=> __idem_p::scope(#path, __idem_scope_req) };
            let identity = quote_spanned! {path.span()=> &#path };
            let written = path.to_token_stream().to_string();
            quote! {
                ::core::option::Option::Some(__idem_p::ScopeFunction::new(
                    #identity,
                    ::core::concat!(::core::module_path!(), "::", #written),
                    |__idem_scope_req: &__idem_p::HttpRequest| #call,
                ))
            }
        }
        None => quote!(::core::option::Option::None),
    };
    let overrides = args.overrides();

    quote! {
        #(#attrs)*
        #vis async fn #ident #generics (
            __idem_raw: #krate::__private::Raw,
        ) -> #krate::__private::HttpResponse #where_clause {
            use #krate::__private as __idem_p;

            static __IDEM_ENDPOINT: __idem_p::Endpoint = __idem_p::Endpoint::new(#overrides);

            __idem_p::run(
                &__IDEM_ENDPOINT,
                #scope_fn,
                __idem_raw,
                move |__idem_req: __idem_p::HttpRequest, mut __idem_payload: __idem_p::RawPayload| async move {
                    let (#(#names,)*) = match <(#(#types,)*) as __idem_p::FromRequest>::from_request(
                        &__idem_req,
                        &mut __idem_payload,
                    )
                    .await
                    {
                        ::core::result::Result::Ok(__idem_args) => __idem_args,
                        ::core::result::Result::Err(__idem_err) => {
                            return __idem_p::fail(__idem_req, __idem_err);
                        }
                    };
                    let __idem_out #output = async move {
                        #(let #patterns: #types = #names;)*
                        #block
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
