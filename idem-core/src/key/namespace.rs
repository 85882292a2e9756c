//! Default namespaces: the path of the function a call is made from, registered process-wide so
//! that no two functions share one. The macro declares a marker type in the function's body;
//! its `type_name` names the crate, module, `Self` type (and trait) and function.

use std::any::{type_name, TypeId};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use super::FORBIDDEN_IN_NAMESPACE;
use crate::Error;

/// The default namespace of a function, from the path the compiler gives a marker item declared
/// in its body (`std::any::type_name` of the `struct __IdemNamespace` the macro declares), for
/// example
/// `my_app::billing::<my_app::billing::Refunds as my_app::Handler>::handle::{{closure}}::__IdemNamespace`:
/// the marker's own name and every `{{...}}` segment are dropped and `::` becomes `.`, giving
/// `my_app.billing.<my_app.billing.Refunds as my_app.Handler>.handle`. It names the crate, the
/// module, the `Self` type (and trait) of a method, and the function, so no two functions of a
/// program share it.
pub(crate) fn function_namespace(marker_path: &str) -> String {
    let mut segments = named_segments(marker_path);
    segments.pop(); // the marker itself
    usable(&segments.join("."))
}

/// A type's or item's path as namespace text: `::` as `.`, without `{{closure}}`-like segments.
fn path_text(path: &str) -> String {
    usable(&named_segments(path).join("."))
}

/// The segments of a path but the compiler's `{{closure}}`, `{{constant}}`, ... ones.
fn named_segments(path: &str) -> Vec<Cow<'_, str>> {
    split_path(path)
        .into_iter()
        .filter(|segment| !segment.starts_with("{{"))
        .collect()
}

/// `text` with whatever the namespace grammar refuses (`{{closure}}` inside a generic type's
/// arguments, say) replaced, so a default namespace is always usable.
fn usable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if FORBIDDEN_IN_NAMESPACE.contains(&c) || c.is_control() => '_',
            c if c.is_whitespace() => ' ',
            c => c,
        })
        .collect()
}

/// Splits a path at the `::` that are not inside `<...>`: the segments of `a::<b::C as d::E>::f`
/// are `a`, `<b::C as d::E>` and `f`, and a qualified segment is then rewritten recursively.
fn split_path(path: &str) -> Vec<Cow<'_, str>> {
    let mut segments = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                segments.push(Cow::Borrowed(&path[start..i]));
                start = i + 2;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    segments.push(Cow::Borrowed(&path[start..]));
    segments
        .into_iter()
        .map(|segment| {
            if segment.contains("::") {
                Cow::Owned(segment.replace("::", "."))
            } else {
                segment
            }
        })
        .collect()
}

/// The default namespace of one `#[idempotent]` function, computed on its first call and kept:
/// generated code declares one per function as a `static`, and a marker type in the function's
/// body whose path names it.
///
/// Two things the path alone cannot tell apart are handled here:
/// * a method's `Self` type, when the path does not name it (a provided trait method, shared by
///   every implementor, or a method of a generic impl): it is appended, `…handle[app.Charges]`;
/// * two functions whose paths print alike (same-named functions in two blocks of one function,
///   in `const _: () = { … }` blocks, or in a closure): every namespace is registered with its
///   marker, and a second function claiming a namespace already taken gets
///   [`Error::InvalidOption`] on every call instead of sharing the first one's records.
#[doc(hidden)]
#[derive(Debug)]
pub struct FunctionNamespace {
    /// The path of the marker, and for a method the first `Self` type and its namespace.
    resolved: OnceLock<Resolved>,
}

#[derive(Debug)]
struct Resolved {
    marker: TypeId,
    base: String,
    /// The namespace of the first `Self` type seen (of the function itself when it has no
    /// `Self`), or why it cannot be used.
    first: Registered,
    first_self: Option<TypeId>,
}

/// Who owns a registered namespace: a function's marker, and for a method its `Self` type.
type Owner = (TypeId, Option<TypeId>);

impl FunctionNamespace {
    /// An empty cell, for a `static`.
    #[allow(
        clippy::new_without_default,
        reason = "a const fn for a static; Default is not const"
    )]
    pub const fn new() -> Self {
        Self {
            resolved: OnceLock::new(),
        }
    }

    /// The namespace of the function (without `Self`) whose body declares `marker`.
    pub fn get<F: 'static>(&'static self, _marker: F) -> Result<&'static str, Error> {
        // Only the marker's names are generic: the rest is compiled once, not per function.
        self.resolve(type_name::<F>(), TypeId::of::<F>())
    }

    fn resolve(&'static self, marker_name: &str, marker: TypeId) -> Result<&'static str, Error> {
        let resolved = self.resolved.get_or_init(|| {
            let base = function_namespace(marker_name);
            let first = unambiguous(&base).and_then(|()| register(&base, (marker, None)));
            Resolved {
                marker,
                base,
                first,
                first_self: None,
            }
        });
        resolved.first.clone().map_err(Error::invalid_option)
    }

    /// The namespace of the method or associated function with `Self` type `S` whose body
    /// declares `marker`.
    pub fn get_for<S: ?Sized, F: 'static>(
        &'static self,
        _marker: F,
    ) -> Result<&'static str, Error> {
        self.resolve_for(
            type_name::<F>(),
            TypeId::of::<F>(),
            typeid::of::<S>(),
            type_name::<S>(),
        )
    }

    fn resolve_for(
        &'static self,
        marker_name: &str,
        marker: TypeId,
        self_type: TypeId,
        self_name: &str,
    ) -> Result<&'static str, Error> {
        let resolved = self.resolved.get_or_init(|| {
            let base = function_namespace(marker_name);
            let namespace = with_self(&base, self_name);
            let first =
                unambiguous(&base).and_then(|()| register(&namespace, (marker, Some(self_type))));
            Resolved {
                marker,
                base,
                first,
                first_self: Some(self_type),
            }
        });
        if resolved.first_self == Some(self_type) {
            return resolved.first.clone().map_err(Error::invalid_option);
        }
        // Another `Self` (a provided trait method, or a generic impl): one namespace each.
        static BY_SELF: OnceLock<Mutex<HashMap<Owner, Registered>>> = OnceLock::new();
        let mut by_self = BY_SELF
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let owner = (resolved.marker, Some(self_type));
        by_self
            .entry(owner)
            .or_insert_with(|| {
                unambiguous(&resolved.base)
                    .and_then(|()| register(&with_self(&resolved.base, self_name), owner))
            })
            .clone()
            .map_err(Error::invalid_option)
    }
}

/// A function's marker, registered at link time by the code `#[idempotent]` generates: with all
/// of them, the runtime knows which default namespaces print alike before any is used.
#[doc(hidden)]
#[derive(Debug)]
pub struct Marker {
    /// The marker type's identity and path.
    pub of: fn() -> (TypeId, &'static str),
    /// Where the function is written (`file!()`, `line!()`, `column!()`): one function compiled
    /// into a program twice (a module of both a binary and its library) is still one function.
    pub at: (&'static str, u32, u32),
}

inventory::collect!(Marker);

/// The identity and path of a marker type, for [`Marker`].
#[doc(hidden)]
pub fn marker_of<T: 'static>() -> (TypeId, &'static str) {
    (TypeId::of::<T>(), type_name::<T>())
}

/// The default namespaces that more than one function of the program prints.
fn printed_alike() -> &'static HashMap<String, usize> {
    static ALIKE: OnceLock<HashMap<String, usize>> = OnceLock::new();
    ALIKE.get_or_init(|| {
        alike(
            inventory::iter::<Marker>
                .into_iter()
                .map(|marker| ((marker.of)().1, marker.at)),
        )
    })
}

/// The namespaces printed by functions written in more than one place, with how many places.
fn alike<'a>(
    markers: impl Iterator<Item = (&'a str, (&'static str, u32, u32))>,
) -> HashMap<String, usize> {
    let mut places: HashMap<String, HashSet<(&'static str, u32, u32)>> = HashMap::new();
    for (path, at) in markers {
        places
            .entry(function_namespace(path))
            .or_default()
            .insert(at);
    }
    places
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(namespace, at)| (namespace, at.len()))
        .collect()
}

/// Refuses a default namespace that several functions of the program print.
fn unambiguous(base: &str) -> Result<(), String> {
    match printed_alike().get(base) {
        Some(count) => Err(format!(
            "the default namespace `{base}` is the path of {count} functions of this program \
             (functions of the same name in two blocks, `const _` items or closures of one \
             scope print the same path), so none of them may use it; give each \
             `namespace = \"...\"` so their records stay apart"
        )),
        None => Ok(()),
    }
}

/// A namespace as registered: kept for the program's lifetime, or why it cannot be used.
type Registered = Result<&'static str, String>;

/// `base`, or `base[Self]` when `base` does not name the `Self` type as one of its segments.
fn with_self(base: &str, self_name: &str) -> String {
    let self_path = path_text(self_name);
    let names_self = base.match_indices(self_path.as_str()).any(|(at, _)| {
        let before = base[..at].chars().next_back();
        let after = base[at + self_path.len()..].chars().next();
        matches!(before, None | Some('.' | '<' | ' '))
            && matches!(after, None | Some('.' | '>' | ' '))
    });
    if names_self {
        base.to_owned()
    } else {
        format!("{base}[{self_path}]")
    }
}

/// Records that `namespace` is the default namespace of `owner` (a function, and for a method
/// its `Self` type); a namespace is never shared by two owners. Returns it for the program's
/// lifetime.
fn register(namespace: &str, owner: Owner) -> Registered {
    static TAKEN: OnceLock<Mutex<HashMap<String, (Owner, &'static str)>>> = OnceLock::new();
    let mut taken = TAKEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match taken.get(namespace) {
        Some((taken_by, leaked)) if *taken_by == owner => Ok(leaked),
        Some(_) => Err(format!(
            "the default namespace `{namespace}` belongs to another function of this program \
             too (functions, or `Self` types, of the same name in two blocks, `const _` items or \
             closures of one scope print the same path); give this function \
             `namespace = \"...\"` so their records stay apart"
        )),
        None => {
            // One string per function (and `Self` type) of the program, kept for its lifetime.
            let leaked: &'static str = Box::leak(namespace.to_owned().into_boxed_str());
            taken.insert(namespace.to_owned(), (owner, leaked));
            Ok(leaked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::check_namespace;

    #[test]
    fn function_namespaces_name_module_type_trait_and_function() {
        assert_eq!(
            function_namespace("app::billing::handle::{{closure}}::__idem_namespace"),
            "app.billing.handle"
        );
        assert_eq!(
            function_namespace(
                "app::billing::<app::billing::Refunds as app::Handler>::handle::{{closure}}::{{closure}}::m"
            ),
            "app.billing.<app.billing.Refunds as app.Handler>.handle"
        );
        assert_eq!(
            function_namespace("app::Generic<_>::run::m"),
            "app.Generic<_>.run"
        );
        for path in ["", "m", "a::{weird}::f::m", "a::\u{0}::m"] {
            let namespace = function_namespace(path);
            if !namespace.is_empty() {
                check_namespace(&namespace).unwrap();
            }
        }
    }

    fn marker() {}

    #[test]
    fn the_namespace_of_a_real_function() {
        static NAMESPACE: FunctionNamespace = FunctionNamespace::new();
        assert_eq!(
            NAMESPACE.get(marker).unwrap(),
            "idem_core.key.namespace.tests",
            "the marker's own name is dropped"
        );
    }

    #[test]
    fn a_methods_self_type_is_added_when_its_path_does_not_name_it() {
        assert_eq!(
            with_self("app.<app.A as app.H>.handle", "app::A"),
            "app.<app.A as app.H>.handle"
        );
        assert_eq!(with_self("app.A.run", "app::A"), "app.A.run");
        assert_eq!(
            with_self("app.H.handle", "app::Charges"),
            "app.H.handle[app.Charges]"
        );
        assert_eq!(
            with_self("app.W<_>.run", "app::W<u8>"),
            "app.W<_>.run[app.W<u8>]"
        );
        // A prefix of a segment is not the segment.
        assert_eq!(with_self("app.AB.handle", "app::A"), "app.AB.handle[app.A]");
        // Types local to an async fn or a closure print compiler segments: left out, or made
        // usable inside generic arguments.
        let local = with_self("app.run.Local.m", "app::run::{{closure}}::Local");
        assert_eq!(local, "app.run.Local.m");
        let closure = with_self("app.Retry<_>.run", "app::Retry<app::main::{{closure}}>");
        check_namespace(&closure).unwrap();
    }

    /// Regression (third review): a function compiled into the program twice (a module of
    /// both a binary and its library) counted as two functions printing one path, and was
    /// refused on every call.
    #[test]
    fn one_place_compiled_twice_is_one_function_two_places_are_not() {
        let here = ("src/handlers.rs", 3, 1);
        let there = ("src/other.rs", 9, 5);
        let twice = [
            ("app::handlers::handle::M", here),
            ("app::handlers::handle::M", here),
        ];
        assert!(alike(twice.into_iter()).is_empty());
        let two = [
            ("app::f::{{closure}}::step::M", here),
            ("app::f::{{closure}}::step::M", there),
        ];
        assert_eq!(alike(two.into_iter()).get("app.f.step"), Some(&2));
    }

    #[test]
    fn two_functions_never_share_a_registered_namespace() {
        struct First;
        struct Second;
        let name = "idem_core.key.tests.registered";
        let first = (TypeId::of::<First>(), None);
        assert_eq!(register(name, first).unwrap(), name);
        assert_eq!(register(name, first).unwrap(), name);
        let err = register(name, (TypeId::of::<Second>(), None)).unwrap_err();
        assert!(err.contains("namespace = "), "{err}");
    }
}
