//! The `#[idempotent]` attribute of [idem](https://docs.rs/idem). Use it through the `idem`
//! crate, which documents it; this crate only rewrites the function into calls of the runtime
//! (`idem::Idempotency::run` and its flavours, or the transaction steps), where all the logic
//! lives.

mod args;
mod expand;
mod item;
mod validate;

use proc_macro::TokenStream;

/// Makes an async function's effect happen once per key. See the `idem` crate's documentation.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
