//! Code generation: the function is re-emitted with its signature untouched and its body moved
//! into a future that the runtime drives (claim → execute → record): through one of the
//! `idem::__private` return traits (`IdempotentReturn::run_idempotent` and its flavours), the
//! `begin_in_transaction*` steps for `transaction = conn`, or the `Json` pick for axum handlers.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
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
    let plan = Plan::new(&args, &sig, &stmts, &shape);
    let prelude = &plan.prelude;
    let block = match shape {
        Shape::Async { ret } => match &args.transaction {
            Some(connection) => transaction_block(&plan, &sig, connection, &ret, stmts),
            None => {
                let run = run(&plan, Some(&ret), typed_body(&ret, stmts));
                quote!(#prelude #run)
            }
        },
        // `transaction = ...` is refused on these (validate).
        Shape::AsyncTrait {
            ret,
            leading,
            boxed_stmts,
        } => {
            let run = run(&plan, ret.as_ref(), quote!(#(#boxed_stmts)*));
            quote! {
                #(#leading)*
                ::std::boxed::Box::pin(async move {
                    #prelude
                    #run
                })
            }
        }
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #block
        }
    }
}

/// What every form of the expansion is made from, decided once from the options and the
/// signature.
struct Plan<'a> {
    args: &'a Args,
    /// `#krate::__private`, where generated code reaches the runtime.
    private: TokenStream,
    /// `let __idem_call = ...; let __idem_runtime = ...;`: the call and its runtime, before the
    /// body.
    prelude: TokenStream,
    /// A handler's `Json` response: recorded as its data (and status) by the facade's `axum`
    /// feature, whose traits have the same methods as the plain ones.
    json: bool,
}

impl<'a> Plan<'a> {
    fn new(args: &'a Args, sig: &syn::Signature, stmts: &TokenStream, shape: &Shape) -> Self {
        // A function that can tell its `Self` apart (a receiver, or `Self` named anywhere) gets
        // a namespace per `Self` type; one that cannot behaves alike for every implementor.
        let per_self = sig.receiver().is_some()
            || names_self(sig.inputs.to_token_stream())
            || names_self(sig.output.to_token_stream())
            || names_self(sig.generics.to_token_stream())
            || names_self(sig.generics.where_clause.to_token_stream())
            || mentions_self(stmts.clone());
        // What tells this function's instances apart: its `Self` type and its type parameters.
        let type_params: Vec<&Ident> = sig.generics.type_params().map(|p| &p.ident).collect();
        let instance = match (per_self, type_params.is_empty()) {
            (false, true) => None,
            (true, true) => Some(quote!(Self)),
            (per_self, false) => {
                let this = per_self.then(|| quote!(fn(&Self),));
                Some(quote!((#this #(fn(&#type_params),)*)))
            }
        };
        let krate = args
            .krate
            .as_ref()
            .map_or_else(|| quote!(::idem), ToTokens::to_token_stream);
        let private = quote!(#krate::__private);
        let (call_var, runtime_var) = vars();
        let call = call_expr(args, &private, instance.as_ref());
        let runtime = match &args.using {
            Some(using) => quote!(#private::runtime(#using)),
            None => quote!(#private::runtime(#private::default_runtime())),
        };
        Plan {
            args,
            prelude: quote! {
                let #call_var = #call;
                let #runtime_var = #runtime;
            },
            private,
            json: shape.ret().is_some_and(returns_json) && !args.record_errors,
        }
    }

    /// The runner's method (spanned on `span`) and the `on_error` argument after the body. The
    /// body comes before `on_error`, so that `Self` is inferred from it and a mismatched
    /// `on_error` is reported at its own tokens.
    fn run_fn(&self, span: Span) -> (Ident, TokenStream) {
        match &self.args.on_error {
            Some(on_error) => (Ident::new("run_idempotent_with", span), quote!(, #on_error)),
            None => (Ident::new("run_idempotent", span), quote!()),
        }
    }
}

/// The call of `body` and its `.await`, spanned on the return type's first token, so that an
/// unsuitable one is reported there, once: `Self` is inferred from the body's output (which
/// `typed_body` fixes), since naming the type (`<#ret as ...>`) would report it a second time,
/// at another span.
fn run(plan: &Plan<'_>, ret: Option<&Type>, body: TokenStream) -> TokenStream {
    let span = ret.map_or_else(Span::call_site, Spanned::span);
    if plan.json {
        run_json(plan, span, body)
    } else {
        run_plain(plan, span, body)
    }
}

/// Through the return trait of the options (plain, `record_errors`, `on_error`, both).
fn run_plain(plan: &Plan<'_>, span: Span, body: TokenStream) -> TokenStream {
    let private = &plan.private;
    let return_trait = match (plan.args.record_errors, plan.args.on_error.is_some()) {
        (false, false) => quote!(#private::IdempotentReturn),
        (true, false) => quote!(#private::RecordedErrorsReturn),
        (false, true) => quote!(#private::ClassifiedReturn),
        (true, true) => quote!(#private::ClassifiedRecordedReturn),
    };
    let return_trait = respanned(return_trait, span);
    let (run_fn, on_error) = plan.run_fn(span);
    let (call_var, runtime_var) = vars();
    quote_spanned! {span=>
    #return_trait::#run_fn(#runtime_var, #call_var, async move { #body } #on_error).await
    }
}

/// Axum's `Json` responses, or another crate's `Json` as a plain value: picked by method
/// resolution, since the macro cannot tell the two apart by name.
fn run_json(plan: &Plan<'_>, span: Span, body: TokenStream) -> TokenStream {
    let private = &plan.private;
    let (run_fn, on_error) = plan.run_fn(span);
    let (call_var, runtime_var) = vars();
    let body_var = Ident::new("__idem_body", Span::mixed_site());
    let returns_of = respanned(quote!(#private::returns_of), span);
    let picks = respanned(quote!(#private::{PickJson as _, PickValue as _}), span);
    quote_spanned! {span=>
    {
        // One of the two is picked; the other is unused.
        #[allow(unused_imports)]
        use #picks;
        let #body_var = async move { #body };
        (&#returns_of(&#body_var)).__idem_pick().#run_fn(#runtime_var, #call_var, #body_var #on_error).await
    }
    }
}

/// The call's and the runtime's variables, which the prelude declares.
fn vars() -> (Ident, Ident) {
    (
        Ident::new("__idem_call", Span::mixed_site()),
        Ident::new("__idem_runtime", Span::mixed_site()),
    )
}

/// `transaction = connection` on an `async fn`: see [`in_transaction`].
fn transaction_block(
    plan: &Plan<'_>,
    sig: &syn::Signature,
    connection: &Ident,
    ret: &Type,
    stmts: TokenStream,
) -> TokenStream {
    let argument = sig.inputs.iter().find_map(|input| match input {
        syn::FnArg::Typed(typed) => match &*typed.pat {
            syn::Pat::Ident(pat) if pat.ident == *connection => Some(&*typed.ty),
            _ => None,
        },
        syn::FnArg::Receiver(_) => None,
    });
    let argument_type = argument.map_or_else(|| connection.span(), Spanned::span);
    // A borrowed connection is reborrowed; an owned one (an extractor) is lent through a trait
    // that knows which owned types hold a connection of their own.
    let owned = argument.is_some_and(|ty| !matches!(ty, Type::Reference(_)));
    let body = typed_body(ret, stmts);
    let handler = plan.json.then_some(ret);
    in_transaction(
        plan.args,
        &plan.private,
        connection,
        (argument_type, owned),
        handler,
        plan.prelude.clone(),
        body,
    )
}

/// `transaction = connection`: the claim in a transaction on the function's connection argument,
/// the body on the claim's connection (under the argument's own name), then the record and the
/// commit. The body is ordinary code between the two steps, so the function's future is `Send`
/// whenever the body's is. The generated steps are spanned on the argument's type, so that an
/// argument that cannot carry a transaction is reported there, once.
///
/// On a handler (`handler` is its return type, which reads as `Result<Json<T>, E>` or
/// `Result<(StatusCode, Json<T>), E>`), the runner is picked by that type, as outside a
/// transaction: axum's `Json` is recorded as its data and status, another crate's as a value.
/// The argument is passed as `&mut *conn`, so that it may be `&mut PgConnection` or an owned
/// connection (an extractor) that dereferences to one.
fn in_transaction(
    args: &Args,
    private: &TokenStream,
    connection: &Ident,
    (argument_type, owned): (Span, bool),
    handler: Option<&Type>,
    prelude: TokenStream,
    body: TokenStream,
) -> TokenStream {
    let span = argument_type;
    // The argument under its own name, on the type's span: both are the user's tokens.
    let connection = Ident::new(&connection.to_string(), span);
    let lent = if owned {
        let owned_connection = respanned(quote!(#private::owned_connection), span);
        quote_spanned!(span=> #owned_connection(&mut #connection))
    } else {
        quote_spanned!(span=> &mut *#connection)
    };
    let (begin, on_error) = match (&args.on_error, args.record_errors) {
        (Some(on_error), true) => (
            quote!(#private::begin_in_transaction_recording_errors_with),
            quote!(, #on_error),
        ),
        // Every error recorded: none can hold its key, so the caller's own transaction is fine.
        (None, true) => (
            quote!(#private::begin_in_transaction_recording_errors),
            quote!(),
        ),
        (Some(on_error), false) => (
            quote!(#private::begin_in_transaction_with),
            quote!(, #on_error),
        ),
        // Every error rolls back: no savepoint before the body.
        (None, false) => (quote!(#private::begin_in_transaction), quote!()),
    };
    let (call_var, runtime_var) = vars();
    let claim = Ident::new("__idem_claim", span);
    let result = Ident::new("__idem_result", span);
    let context = Ident::new("__idem_context", span);
    let begin = respanned(begin, span);
    let begun = respanned(quote!(#private::TransactionBegun), span);
    let with_context = respanned(quote!(#private::with_context), span);
    let finish = respanned(quote!(#claim.finish(#result).await), span);
    let begin_claim = |pick: Option<&Ident>| match (handler, pick) {
        (Some(_), Some(pick)) => {
            let method = match &args.on_error {
                Some(_) => Ident::new("begin_in_transaction_with", span),
                None => Ident::new("begin_in_transaction", span),
            };
            let begun = respanned(quote!(#private::TxBegun), span);
            quote_spanned! {span=>
                let mut #claim = match #pick
                    .#method(&#runtime_var, #call_var, #lent #on_error)
                    .await
                {
                    #begun::Done(#result) => return #result,
                    #begun::Claimed(#claim) => #claim,
                };
            }
        }
        _ => quote_spanned! {span=>
            let mut #claim = match #begin(&#runtime_var, #call_var, #lent #on_error).await {
                #begun::Done(#result) => return #result,
                #begun::Claimed(#claim) => #claim,
            };
        },
    };
    let (Some(ret), false) = (handler, args.record_errors) else {
        let begin_claim = begin_claim(None);
        return quote_spanned! {span=>
            #prelude
            #begin_claim
            let #context = #claim.context();
            let #result = {
                let #connection = #claim.connection();
                #with_context(#context, async move { #body }).await
            };
            #finish
        };
    };
    // Picked by the return type, as outside a transaction: axum's `Json` is a handler's, which
    // runs to its end on a task of its own (as behind the HTTP layer) with its panic caught so
    // that the claim settles it as an unknown outcome; another crate's `Json` is a value, run in
    // place.
    let pick = Ident::new("__idem_pick", Span::mixed_site());
    let picks = respanned(quote!(#private::{PickJson as _, PickValue as _}), span);
    let returns = respanned(quote!(#private::Returns), span);
    let begin_claim = begin_claim(Some(&pick));
    quote_spanned! {span=>
        let #pick = {
            // One of the two is picked; the other is unused.
            #[allow(unused_imports)]
            use #picks;
            (&#returns::<#ret>::new()).__idem_pick()
        };
        #pick.to_completion(async move {
            #prelude
            #begin_claim
            let #context = #claim.context();
            let #result = {
                let #connection = #claim.connection();
                #pick.catch_panic(#with_context(#context, async move { #body })).await
            };
            #finish
        })
        .await
    }
}

/// Whether `ret` is `Result<Json<T>, E>` or `Result<(StatusCode, Json<T>), E>`, by the last
/// segment of each path (so `axum::Json` and `axum::http::StatusCode` count too).
fn returns_json(ret: &Type) -> bool {
    fn last_segment<'a>(ty: &'a Type, name: &str) -> Option<&'a syn::PathSegment> {
        match ty {
            Type::Path(path) if path.qself.is_none() => path
                .path
                .segments
                .last()
                .filter(|segment| segment.ident == name),
            Type::Group(group) => last_segment(&group.elem, name),
            _ => None,
        }
    }
    fn first_argument(segment: &syn::PathSegment) -> Option<&Type> {
        match &segment.arguments {
            syn::PathArguments::AngleBracketed(args) => match args.args.first()? {
                syn::GenericArgument::Type(ty) => Some(ty),
                _ => None,
            },
            _ => None,
        }
    }
    let Some(ok) = last_segment(ret, "Result").and_then(first_argument) else {
        return false;
    };
    let is_json = |ty: &Type| last_segment(ty, "Json").is_some();
    match ok {
        Type::Tuple(tuple) if tuple.elems.len() == 2 => {
            last_segment(&tuple.elems[0], "StatusCode").is_some() && is_json(&tuple.elems[1])
        }
        ok => is_json(ok),
    }
}

/// `tokens` with every span set to `span`: a path whose parts had other spans would have the
/// compiler report a failed bound at each of them.
fn respanned(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respanned(group.stream(), span));
                inner.set_span(span);
                token = proc_macro2::TokenTree::Group(inner);
            }
            token.set_span(span);
            token
        })
        .collect()
}

/// The original statements, behind a never-taken typed `return` that fixes the async block's
/// output type before the body is checked (so `?` and `return` in the body infer).
fn typed_body(ret: &Type, stmts: TokenStream) -> TokenStream {
    let ret_var = Ident::new("__idem_ret", Span::mixed_site());
    quote! {
        if let ::core::option::Option::Some(#ret_var) = ::core::option::Option::None::<#ret> {
            #[allow(unreachable_code)]
            return #ret_var;
        }
        #stmts
    }
}

/// Whether `tokens` (a signature's parts: types, bounds) name `Self` anywhere.
fn names_self(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|token| match token {
        proc_macro2::TokenTree::Ident(ident) => ident == "Self",
        proc_macro2::TokenTree::Group(group) => names_self(group.stream()),
        _ => false,
    })
}

/// Whether `tokens` (a body) name `Self`, outside items nested in them (an `impl`, `trait`, `fn`,
/// `struct`, `enum`, `union` or `mod` inside the body has a `Self` of its own, or none).
fn mentions_self(tokens: TokenStream) -> bool {
    let mut tokens = tokens.into_iter();
    while let Some(token) = tokens.next() {
        match token {
            proc_macro2::TokenTree::Ident(ident) if ident == "Self" => return true,
            proc_macro2::TokenTree::Ident(ident)
                if ["impl", "trait", "fn", "struct", "enum", "union", "mod"]
                    .iter()
                    .any(|item| ident == item) =>
            {
                // Skip the nested item up to its body (or its `;`).
                for token in tokens.by_ref() {
                    match token {
                        proc_macro2::TokenTree::Group(group)
                            if group.delimiter() == proc_macro2::Delimiter::Brace =>
                        {
                            break
                        }
                        proc_macro2::TokenTree::Punct(punct) if punct.as_char() == ';' => break,
                        _ => {}
                    }
                }
            }
            proc_macro2::TokenTree::Group(group) if mentions_self(group.stream()) => return true,
            _ => {}
        }
    }
    false
}

/// The function's own path as the compiler names it (crate, module, `Self` type and trait of a
/// method, name): the path of a marker type declared in the body (and registered at link time),
/// computed once per function; `instance` (its `Self` type and type parameters) is added where
/// the path does not name it (see `FunctionNamespace`).
fn default_namespace(private: &TokenStream, instance: Option<&TokenStream>) -> TokenStream {
    let get = match instance {
        Some(instance) => quote!(get_for::<#instance, _>),
        None => quote!(get),
    };
    quote! {{
        struct __IdemNamespace;
        #private::inventory::submit! {
            #private::Marker {
                of: #private::marker_of::<__IdemNamespace>,
                at: (::core::file!(), ::core::line!(), ::core::column!()),
            }
        }
        static __IDEM_NAMESPACE: #private::FunctionNamespace = #private::FunctionNamespace::new();
        __IDEM_NAMESPACE.#get(__IdemNamespace)
    }}
}

fn call_expr(args: &Args, private: &TokenStream, instance: Option<&TokenStream>) -> TokenStream {
    let key = &args.key;
    let mut call = match &args.namespace {
        Some(namespace) => quote!(#private::Call::new(#namespace, &(#key))),
        None => {
            let namespace = default_namespace(private, instance);
            quote!(#private::Call::in_function(#namespace, &(#key)))
        }
    };
    if let Some(scope) = &args.scope {
        call.extend(quote!(.scope(&(#scope))));
    }
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

#[cfg(test)]
mod tests {
    use super::idempotent;
    use quote::quote;

    /// Compares the pretty-printed expansion with `snapshots/NAME.rs`, so that every change to
    /// generated code shows in review. `IDEM_UPDATE_SNAPSHOTS=1` rewrites the files.
    fn assert_snapshot(name: &str, args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) {
        let path = format!("{}/snapshots/{name}.rs", env!("CARGO_MANIFEST_DIR"));
        assert_expansion(&path, args, item);
    }

    fn assert_expansion(
        path: &str,
        args: proc_macro2::TokenStream,
        item: proc_macro2::TokenStream,
    ) {
        let expanded = idempotent(args, item);
        let file: syn::File = syn::parse2(expanded).expect("the expansion parses as items");
        let pretty = prettyplease::unparse(&file);
        if std::env::var_os("IDEM_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, &pretty).expect("write snapshot");
        }
        let expected = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            pretty, expected,
            "expansion in {path} changed; review and rerun with IDEM_UPDATE_SNAPSHOTS=1"
        );
    }

    #[test]
    fn handlers_returning_json_are_told_apart_by_their_return_type() {
        let reads =
            |ty: proc_macro2::TokenStream| super::returns_json(&syn::parse2(ty).expect("a type"));
        assert!(reads(quote!(Result<Json<Receipt>, ApiError>)));
        assert!(reads(quote!(Result<axum::Json<Receipt>, ApiError>)));
        assert!(reads(quote!(Result<(StatusCode, Json<Receipt>), ApiError>)));
        assert!(reads(quote!(
            std::result::Result<(axum::http::StatusCode, axum::Json<Vec<u8>>), E>
        )));
        assert!(!reads(quote!(Result<Receipt, ApiError>)));
        assert!(!reads(quote!(Result<(u16, Json<Receipt>), ApiError>)));
        assert!(!reads(quote!(
            Result<(StatusCode, Json<Receipt>, Extra), ApiError>
        )));
        assert!(!reads(quote!(Option<Json<Receipt>>)));
        assert!(!reads(quote!(Result<Vec<Json<Receipt>>, E>)));
    }

    /// The expansion of the method the `idem` crate's "Explanation" section shows.
    #[test]
    fn documented_expansion() {
        let path = format!("{}/snapshots/plain_method.rs", env!("CARGO_MANIFEST_DIR"));
        assert_expansion(
            &path,
            quote!(key = order.id, using = &self.idem),
            quote! {
                async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
                    self.gateway.charge(order).await
                }
            },
        );
    }

    #[test]
    fn method_with_every_option() {
        assert_snapshot(
            "method_with_every_option",
            quote!(
                key = order.id,
                using = &self.idem,
                fingerprint = order,
                ttl = "1h",
                lease = "10s",
                namespace = "charge-v2",
                on_in_progress = reject,
                record_errors,
                on_error = PayError::means
            ),
            quote! {
                pub async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
                    #![allow(unused_variables)]
                    self.gateway.charge(order).await
                }
            },
        );
    }

    #[test]
    fn in_a_transaction() {
        assert_snapshot(
            "in_a_transaction",
            quote!(key = order.id, using = &self.idem, transaction = conn),
            quote! {
                async fn charge(&self, conn: &mut PgConnection, order: &Order) -> Result<Receipt, PayError> {
                    insert_charge(conn, order).await
                }
            },
        );
    }

    #[test]
    fn a_handler_in_a_transaction() {
        assert_snapshot(
            "a_handler_in_a_transaction",
            quote!(
                key = key,
                scope = user.id,
                using = &app.idem,
                fingerprint = order,
                transaction = conn
            ),
            quote! {
                async fn create(
                    State(app): State<App>,
                    user: User,
                    key: IdempotencyKey,
                    mut conn: Connection,
                    Json(order): Json<Order>,
                ) -> Result<(StatusCode, Json<Receipt>), Problem> {
                    Ok((StatusCode::CREATED, Json(insert(&mut *conn, &order).await?)))
                }
            },
        );
    }

    #[test]
    fn async_trait_method() {
        assert_snapshot(
            "async_trait_method",
            quote!(key = id),
            quote! {
                fn post<'life0, 'async_trait>(&'life0 self, id: u64)
                    -> ::core::pin::Pin<Box<dyn ::core::future::Future<Output = Result<u64, Error>> + ::core::marker::Send + 'async_trait>>
                {
                    Box::pin(async move {
                        let __self = self;
                        let __ret: Result<u64, Error> = { Ok(id) };
                        __ret
                    })
                }
            },
        );
    }

    #[test]
    fn errors_keep_the_function() {
        let expanded = idempotent(
            quote!(ttl = "1h"),
            quote!(
                async fn f() -> Result<u8, E> {
                    Ok(1)
                }
            ),
        );
        let text = expanded.to_string();
        assert!(text.contains("async fn f"), "{text}");
        assert!(text.contains("compile_error"), "{text}");
    }
}
