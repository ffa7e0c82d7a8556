//! Every mistake, collected: the user sees all of them at once, each on its own token.

use proc_macro2::Span;
use quote::ToTokens;

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// An error on the tokens of `span`.
    pub fn push(&mut self, span: impl ToTokens, message: impl std::fmt::Display) {
        self.add(syn::Error::new_spanned(span, message));
    }

    /// An error at `span`.
    pub fn push_at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.add(syn::Error::new(span, message));
    }

    /// An error found elsewhere, kept after those found before it.
    pub fn add(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// `value`, unless an error was found.
    pub fn finish<T>(self, value: T) -> Result<T, syn::Error> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}
