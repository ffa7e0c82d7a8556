//! Code generation: the original handler nested in a generated one, and a single call into
//! `idem_actix::__private::run`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, ItemFn, ReturnType};

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
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        push(syn::Error::new_spanned(
            &sig.generics,
            "#[idempotent] does not support generic handlers; register a concrete function",
        ));
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

fn is_lint(attr: &Attribute) -> bool {
    ["allow", "expect", "warn", "deny", "forbid"]
        .iter()
        .any(|lint| attr.path().is_ident(lint))
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
    let lint_attrs: Vec<&Attribute> = attrs.iter().filter(|a| is_lint(a)).collect();

    let arg_types: Vec<&syn::Type> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(&*pat.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let arg_names: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("__idem_arg{}", i))
        .collect();
    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    let policy = args.policy();
    let call = quote_spanned! {output_span=>
        __idem_p::respond(&__idem_req, match __idem_args {
            ::core::result::Result::Ok((#(#arg_names,)*)) => {
                ::core::result::Result::Ok(#ident(#(#arg_names),*).await)
            }
            ::core::result::Result::Err(__idem_err) => ::core::result::Result::Err(__idem_err),
        })
    };

    quote! {
        #(#attrs)*
        #vis async fn #ident(
            __idem_req: #krate::__private::HttpRequest,
            __idem_payload: #krate::__private::Payload,
        ) -> #krate::__private::HttpResponse {
            use #krate::__private as __idem_p;

            #(#lint_attrs)*
            #sig #block

            static __IDEM_ENDPOINT: __idem_p::Endpoint = __idem_p::Endpoint::new(#policy);

            __idem_p::run(
                &__IDEM_ENDPOINT,
                __idem_req,
                __idem_payload,
                |__idem_req: __idem_p::HttpRequest, mut __idem_payload: __idem_p::RawPayload| async move {
                    let __idem_args = <(#(#arg_types,)*) as __idem_p::FromRequest>::from_request(
                        &__idem_req,
                        &mut __idem_payload,
                    )
                    .await;
                    #call
                },
            )
            .await
        }
    }
}
