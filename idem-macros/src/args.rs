//! The attribute's options: `key = ..., using = ..., fingerprint = ..., ttl = "24h", ...`.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(using);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(fingerprint);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(namespace);
    syn::custom_keyword!(on_in_progress);
    syn::custom_keyword!(record_errors);
    syn::custom_keyword!(on_error);
    syn::custom_keyword!(transaction);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(reject);
}

/// The list shown when an option is unknown.
const OPTIONS: &str =
    "`key = EXPR`, `scope = EXPR`, `using = EXPR`, `fingerprint = EXPR`, `ttl = \"24h\"`, \
    `lease = \"30s\"`, `namespace = \"...\"`, `on_in_progress = wait | reject`, `record_errors`, \
    `on_error = EXPR`, `transaction = ARGUMENT`, \
    `crate = \"path\"`";

/// A duration written as a literal, with its span for errors.
pub(crate) struct DurationArg {
    pub(crate) value: Duration,
    pub(crate) span: Span,
}

/// What `on_in_progress` asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum InProgressMode {
    Wait,
    Reject,
}

/// The parsed options. `key` is optional here so that a missing key is reported by validation
/// at the attribute, after every other option was checked.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) key: Option<Expr>,
    /// The caller the key belongs to.
    pub(crate) scope: Option<Expr>,
    pub(crate) using: Option<Expr>,
    pub(crate) fingerprint: Option<Expr>,
    pub(crate) ttl: Option<DurationArg>,
    pub(crate) lease: Option<DurationArg>,
    pub(crate) namespace: Option<LitStr>,
    pub(crate) on_in_progress: Option<InProgressMode>,
    pub(crate) record_errors: bool,
    pub(crate) on_error: Option<Expr>,
    /// The connection argument whose transaction the claim and record join.
    pub(crate) transaction: Option<Ident>,
    pub(crate) krate: Option<Path>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Self::default();
        while !input.is_empty() {
            args.parse_one(input)?;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    }
}

impl Args {
    fn parse_one(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::key) {
            let token = input.parse::<kw::key>()?;
            set(&mut self.key, token.span, "key", expr_value(input)?)
        } else if lookahead.peek(kw::scope) {
            let token = input.parse::<kw::scope>()?;
            set(&mut self.scope, token.span, "scope", expr_value(input)?)
        } else if lookahead.peek(kw::using) {
            let token = input.parse::<kw::using>()?;
            set(&mut self.using, token.span, "using", expr_value(input)?)
        } else if lookahead.peek(kw::fingerprint) {
            let token = input.parse::<kw::fingerprint>()?;
            set(
                &mut self.fingerprint,
                token.span,
                "fingerprint",
                expr_value(input)?,
            )
        } else if lookahead.peek(kw::ttl) {
            let token = input.parse::<kw::ttl>()?;
            set(&mut self.ttl, token.span, "ttl", duration_value(input)?)
        } else if lookahead.peek(kw::lease) {
            let token = input.parse::<kw::lease>()?;
            let lease = duration_value(input)?;
            // The runtime's `MIN_LEASE`, refused here rather than on every call.
            if lease.value < Duration::from_millis(250) {
                return Err(syn::Error::new(
                    lease.span,
                    "a lease must be at least 250ms (`idem::MIN_LEASE`)",
                ));
            }
            set(&mut self.lease, token.span, "lease", lease)
        } else if lookahead.peek(kw::namespace) {
            let token = input.parse::<kw::namespace>()?;
            input.parse::<Token![=]>()?;
            let literal: LitStr = input.parse()?;
            check_namespace(&literal)?;
            set(&mut self.namespace, token.span, "namespace", literal)
        } else if lookahead.peek(kw::on_in_progress) {
            let token = input.parse::<kw::on_in_progress>()?;
            input.parse::<Token![=]>()?;
            let mode = if input.peek(kw::wait) {
                input.parse::<kw::wait>()?;
                InProgressMode::Wait
            } else if input.peek(kw::reject) {
                input.parse::<kw::reject>()?;
                InProgressMode::Reject
            } else {
                return Err(input.error("expected `wait` or `reject`"));
            };
            set(&mut self.on_in_progress, token.span, "on_in_progress", mode)
        } else if lookahead.peek(kw::on_error) {
            let token = input.parse::<kw::on_error>()?;
            set(
                &mut self.on_error,
                token.span,
                "on_error",
                expr_value(input)?,
            )
        } else if lookahead.peek(kw::transaction) {
            let token = input.parse::<kw::transaction>()?;
            input.parse::<Token![=]>()?;
            let argument: Ident = input.parse().map_err(|err| {
                syn::Error::new(
                    err.span(),
                    "expected the name of the connection argument, e.g. `transaction = conn`",
                )
            })?;
            set(&mut self.transaction, token.span, "transaction", argument)
        } else if lookahead.peek(kw::record_errors) {
            let token = input.parse::<kw::record_errors>()?;
            if self.record_errors {
                return Err(duplicate(token.span, "record_errors"));
            }
            self.record_errors = true;
            Ok(())
        } else if lookahead.peek(Token![crate]) {
            let token = input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            let literal: LitStr = input.parse()?;
            let path = literal.parse::<Path>().map_err(|_| {
                syn::Error::new(literal.span(), "expected a path such as `\"::idem\"`")
            })?;
            set(&mut self.krate, token.span, "crate", path)
        } else if input.peek(Ident) {
            let ident: Ident = input.parse()?;
            Err(syn::Error::new(
                ident.span(),
                format!("unknown option `{ident}`; the options are {OPTIONS}"),
            ))
        } else {
            Err(lookahead.error())
        }
    }
}

fn expr_value(input: ParseStream<'_>) -> syn::Result<Expr> {
    input.parse::<Token![=]>()?;
    input.parse()
}

fn duration_value(input: ParseStream<'_>) -> syn::Result<DurationArg> {
    input.parse::<Token![=]>()?;
    let literal: LitStr = input.parse()?;
    let text = literal.value();
    let value = humantime::parse_duration(&text).map_err(|err| {
        syn::Error::new(
            literal.span(),
            format!("invalid duration `{text}` ({err}); write for example \"30s\", \"500ms\", \"24h\" or \"1h 30m\""),
        )
    })?;
    if value.is_zero() {
        return Err(syn::Error::new(
            literal.span(),
            "the duration must be greater than zero",
        ));
    }
    Ok(DurationArg {
        value,
        span: literal.span(),
    })
}

/// Namespaces become part of store keys, where `:` and `#` are separators (and `{`, `}` a Redis
/// hash tag): the same grammar as `idem_core::key::check_namespace`, checked at compile time.
fn check_namespace(literal: &LitStr) -> syn::Result<()> {
    let value = literal.value();
    let bad = |c: char| ":#{}".contains(c) || c.is_control() || (c.is_whitespace() && c != ' ');
    if value.is_empty() || value.chars().any(bad) {
        return Err(syn::Error::new(
            literal.span(),
            "a namespace must be non-empty and contain no `:`, `#`, `{`, `}`, control characters \
             or whitespace other than spaces",
        ));
    }
    Ok(())
}

fn set<T>(slot: &mut Option<T>, span: Span, name: &str, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(duplicate(span, name));
    }
    *slot = Some(value);
    Ok(())
}

fn duplicate(span: Span, name: &str) -> syn::Error {
    syn::Error::new(span, format!("`{name}` is given more than once"))
}
