//! The annotated function, with its body kept as opaque tokens: if the body does not parse,
//! the function is still re-emitted so that rustc reports the real error and IDEs keep working.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{braced, Attribute, Signature, Token, Visibility};

pub(crate) struct Function {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) body: Option<Body>,
}

pub(crate) struct Body {
    pub(crate) inner_attrs: Vec<Attribute>,
    pub(crate) stmts: TokenStream,
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body = if input.peek(Token![;]) {
            input.parse::<Token![;]>()?;
            None
        } else {
            let content;
            braced!(content in input);
            Some(Body {
                inner_attrs: content.call(Attribute::parse_inner)?,
                stmts: content.parse()?,
            })
        };
        Ok(Self {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

impl ToTokens for Function {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let Self {
            attrs,
            vis,
            sig,
            body,
        } = self;
        quote::quote!(#(#attrs)* #vis #sig).to_tokens(tokens);
        match body {
            Some(Body { inner_attrs, stmts }) => {
                quote::quote!({ #(#inner_attrs)* #stmts }).to_tokens(tokens)
            }
            None => quote::quote!(;).to_tokens(tokens),
        }
    }
}
