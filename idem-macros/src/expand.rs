//! Code generation: the function is re-emitted with its signature untouched and its body moved
//! into a future that `idem::__private::run` drives (claim → execute → record).

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, Type};

use crate::args::{Args, DurationArg, InProgressMode};
use crate::item::Function;
use crate::validate::{validate, Shape};

/// The attribute's entry point, on `proc_macro2` tokens so that tests can call it.
pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: Function = match syn::parse2(item.clone()) {
        Ok(function) => function,
        // Not a function we can read: leave it to rustc, plus our error.
        Err(err) => return with_error(item, err),
    };
    let args: Args = match syn::parse2(args) {
        Ok(args) => args,
        Err(err) => return with_error(function.into_token_stream(), err),
    };
    match validate(&args, &function) {
        Ok(shape) => rewrite(args, function, shape),
        // The function is still emitted as written, so callers see one error, not a cascade.
        Err(err) => with_error(function.into_token_stream(), err),
    }
}

fn with_error(item: TokenStream, err: syn::Error) -> TokenStream {
    let err = err.into_compile_error();
    quote!(#item #err)
}

fn rewrite(args: Args, function: Function, shape: Shape) -> TokenStream {
    let Function {
        attrs,
        vis,
        sig,
        body,
    } = function;
    let (inner_attrs, stmts) = body
        .map(|body| (body.inner_attrs, body.stmts))
        .unwrap_or_default();
    let krate = args
        .krate
        .as_ref()
        .map_or_else(|| quote!(::idem), ToTokens::to_token_stream);
    let private = quote!(#krate::__private);
    let call_var = Ident::new("__idem_call", Span::mixed_site());
    let runtime_var = Ident::new("__idem_runtime", Span::mixed_site());
    let namespace = args
        .namespace
        .as_ref()
        .map_or_else(|| sig.ident.unraw().to_string(), syn::LitStr::value);
    let call = call_expr(&args, &private, &namespace);
    let runtime = match &args.using {
        Some(using) => quote!(#private::runtime(#using)),
        None => quote!(#private::runtime(#private::default_runtime())),
    };
    let run = if args.record_errors {
        quote!(run_recording_errors)
    } else {
        quote!(run)
    };
    let prelude = quote! {
        let #call_var = #call;
        let #runtime_var = #runtime;
    };
    let check = |ret: &Type| {
        let assert = if args.record_errors {
            quote!(assert_recorded_errors_return)
        } else {
            quote!(assert_return)
        };
        quote_spanned!(ret.span()=> #private::#assert::<#ret>();)
    };
    match shape {
        Shape::Async { ret } => {
            let check = check(&ret);
            let stmts = typed_body(&ret, stmts);
            quote! {
                #(#attrs)*
                #vis #sig {
                    #(#inner_attrs)*
                    #check
                    #prelude
                    #private::#run(#runtime_var, #call_var, async move { #stmts }).await
                }
            }
        }
        Shape::AsyncTrait {
            ret,
            leading,
            boxed_stmts,
        } => {
            let check = ret.as_ref().map(check);
            quote! {
                #(#attrs)*
                #vis #sig {
                    #(#inner_attrs)*
                    #(#leading)*
                    ::std::boxed::Box::pin(async move {
                        #check
                        #prelude
                        #private::#run(#runtime_var, #call_var, async move { #(#boxed_stmts)* }).await
                    })
                }
            }
        }
    }
}

/// The original statements, behind a never-taken typed `return` that fixes the async block's
/// output type before the body is checked (so `?` and `return` in the body infer).
fn typed_body(ret: &Type, stmts: TokenStream) -> TokenStream {
    quote! {
        if let ::core::option::Option::Some(__idem_ret) = ::core::option::Option::None::<#ret> {
            #[allow(unreachable_code)]
            return __idem_ret;
        }
        #stmts
    }
}

fn call_expr(args: &Args, private: &TokenStream, namespace: &str) -> TokenStream {
    let key = &args.key;
    let mut call = quote!(#private::Call::new(#namespace, &(#key)));
    if let Some(fingerprint) = &args.fingerprint {
        call.extend(quote!(.fingerprint(&(#fingerprint))));
    }
    if let Some(ttl) = &args.ttl {
        let ttl = duration(ttl);
        call.extend(quote!(.retention(#ttl)));
    }
    if let Some(lease) = &args.lease {
        let lease = duration(lease);
        call.extend(quote!(.lease(#lease)));
    }
    if let Some(mode) = args.on_in_progress {
        let mode = match mode {
            InProgressMode::Wait => quote!(Wait),
            InProgressMode::Reject => quote!(Reject),
        };
        call.extend(quote!(.on_in_progress(#private::OnInProgress::#mode)));
    }
    call
}

fn duration(arg: &DurationArg) -> TokenStream {
    let secs = Literal::u64_suffixed(arg.value.as_secs());
    let nanos = Literal::u32_suffixed(arg.value.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}
