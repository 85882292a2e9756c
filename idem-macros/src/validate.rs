//! Checks the function and the options, collecting every error so that one expansion reports
//! them all, each at the user's own tokens.

use proc_macro2::Span;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Block, Expr, GenericArgument, PathArguments, ReturnType, Stmt, Type, TypeParamBound};

use crate::args::Args;
use crate::item::Function;

/// What kind of function is being rewritten.
pub(crate) enum Shape {
    /// `async fn ... -> R { body }`.
    Async { ret: Type },
    /// A method already rewritten by `#[async_trait]`: `fn ... -> Pin<Box<dyn Future<Output = R>
    /// + Send + '_>> { Box::pin(async move { stmts }) }`. `ret` is R when it can be read off.
    AsyncTrait {
        ret: Option<Type>,
        leading: Vec<Stmt>,
        boxed_stmts: Vec<Stmt>,
    },
}

impl Shape {
    /// The function's return type `R`, when it can be read off.
    pub(crate) fn ret(&self) -> Option<&Type> {
        match self {
            Self::Async { ret } => Some(ret),
            Self::AsyncTrait { ret, .. } => ret.as_ref(),
        }
    }
}

const RETURN_HELP: &str = "an #[idempotent] function must return `Result<T, E>` where \
    `T: Serialize + DeserializeOwned` (the recorded value) and `E: From<idem::Error>`";

pub(crate) fn validate(args: &Args, function: &Function) -> syn::Result<Shape> {
    let missing_key = args.key.is_none().then(|| {
        syn::Error::new(
            Span::call_site(),
            "missing `key = ...`: the idempotency key, e.g. `#[idempotent(key = request.id)]`",
        )
    });
    let shape = shape(function);
    let transaction = args
        .transaction
        .as_ref()
        .and_then(|argument| check_transaction(argument, function, shape.as_ref().ok()));
    let mut errors = [missing_key, shape.as_ref().err().cloned(), transaction]
        .into_iter()
        .flatten();
    match errors.next() {
        None => shape,
        Some(mut first) => {
            errors.for_each(|err| first.combine(err));
            Err(first)
        }
    }
}

/// `transaction = conn` must name an argument of an `async fn`.
fn check_transaction(
    argument: &syn::Ident,
    function: &Function,
    shape: Option<&Shape>,
) -> Option<syn::Error> {
    let named = function.sig.inputs.iter().any(|input| match input {
        syn::FnArg::Typed(typed) => {
            matches!(&*typed.pat, syn::Pat::Ident(pat) if pat.ident == *argument)
        }
        syn::FnArg::Receiver(_) => false,
    });
    if !named {
        return Some(syn::Error::new(
            argument.span(),
            format!(
                "`transaction = {argument}` names no argument of this function; name the \
                 `&mut PgConnection` argument whose transaction the record joins"
            ),
        ));
    }
    match shape {
        Some(Shape::AsyncTrait { .. }) => Some(syn::Error::new(
            argument.span(),
            "`transaction = ...` works on an `async fn`, not on an `#[async_trait]` method",
        )),
        _ => None,
    }
}

fn shape(function: &Function) -> syn::Result<Shape> {
    let sig = &function.sig;
    let Some(body) = &function.body else {
        return Err(syn::Error::new(
            sig.ident.span(),
            "#[idempotent] needs a function body; put it on the implementation, not the declaration",
        ));
    };
    if sig.asyncness.is_some() {
        let ret = match &sig.output {
            ReturnType::Type(_, ty) => check_return_type(ty)?,
            ReturnType::Default => {
                return Err(syn::Error::new(sig.paren_token.span.close(), RETURN_HELP))
            }
        };
        return Ok(Shape::Async { ret });
    }
    let stmts = &body.stmts;
    if let Ok(block) = syn::parse2::<Block>(quote!({ #stmts })) {
        if let Some((leading, boxed_stmts)) = async_trait_body(block) {
            let ret = match &sig.output {
                ReturnType::Type(_, ty) => boxed_future_output(ty),
                ReturnType::Default => None,
            };
            return Ok(Shape::AsyncTrait {
                ret,
                leading,
                boxed_stmts,
            });
        }
    }
    Err(syn::Error::new(
        sig.fn_token.span,
        "the `async` keyword is missing from the function declaration: #[idempotent] works on \
         `async fn` (and on methods of an `#[async_trait]` impl)",
    ))
}

/// The return type must at least look like a (possibly aliased) `Result`; the trait bounds
/// are checked by the compiler with a message of our own.
fn check_return_type(ty: &Type) -> syn::Result<Type> {
    match ty {
        Type::Path(_) => Ok(ty.clone()),
        Type::Paren(inner) => check_return_type(&inner.elem),
        _ => Err(syn::Error::new(ty.span(), RETURN_HELP)),
    }
}

/// Recognises async-trait's `Box::pin(async move { ... })` as the last statement.
fn async_trait_body(mut block: Block) -> Option<(Vec<Stmt>, Vec<Stmt>)> {
    let Some(Stmt::Expr(Expr::Call(call), None)) = block.stmts.pop() else {
        return None;
    };
    let Expr::Path(func) = &*call.func else {
        return None;
    };
    let segments: Vec<String> = func
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if !segments.ends_with(&["Box".to_owned(), "pin".to_owned()]) || call.args.len() != 1 {
        return None;
    }
    match call.args.into_iter().next() {
        Some(Expr::Async(async_block)) if async_block.capture.is_some() => {
            Some((block.stmts, async_block.block.stmts))
        }
        _ => None,
    }
}

/// `Pin<Box<dyn Future<Output = R> + ...>>` → `R`.
fn boxed_future_output(ty: &Type) -> Option<Type> {
    let pin = last_generic(ty, "Pin")?;
    let boxed = last_generic(pin, "Box")?;
    let Type::TraitObject(object) = boxed else {
        return None;
    };
    object.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let segment = bound.path.segments.last()?;
        let PathArguments::AngleBracketed(args) = &segment.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(assoc.ty.clone()),
            _ => None,
        })
    })
}

/// The single type argument of `Name<T>` where the path's last segment is `name`.
fn last_generic<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let segment = path.path.segments.last()?;
    if segment.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    }
}
