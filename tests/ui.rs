//! Compile tests of `#[idempotent]`: every supported signature shape compiles (`pass/`), and
//! every misuse gives one precise error (`fail/`, with the expected `.stderr`).
//!
//! After an intended change to a message, regenerate with `TRYBUILD=overwrite cargo test
//! --all-features --test ui` and review the diff. The expected output is that of the README's
//! test command, `--all-features`: some notes say more when the `axum` feature is on.

use std::fs;
use std::path::Path;

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
    // Handlers returning axum's own `Json` (the feature brings axum in).
    #[cfg(feature = "axum")]
    {
        cases.pass("tests/ui/axum/pass/*.rs");
        cases.compile_fail("tests/ui/axum/fail/*.rs");
    }
}

/// A misuse costs one error: each `fail/` case has exactly as many errors in its expected output
/// as it has misused attributes (or as a `// errors: N` line says, with why rustc insists), so a
/// change that makes rustc report a bound twice (at two spans, or once per serde trait) fails
/// here even after `TRYBUILD=overwrite`. (trybuild builds without incremental compilation; an
/// incremental build may print an error twice, identical.)
#[test]
fn each_misuse_is_one_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("tests/ui/fail")];
    if cfg!(feature = "axum") {
        dirs.push(root.join("tests/ui/axum/fail"));
    }
    let mut checked = 0;
    let entries = dirs
        .iter()
        .flat_map(|dir| fs::read_dir(dir).expect("a fail directory is readable"));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = fs::read_to_string(&path).expect("a case is readable");
        let stderr_path = path.with_extension("stderr");
        let stderr = fs::read_to_string(&stderr_path)
            .unwrap_or_else(|err| panic!("{}: {err}", stderr_path.display()));
        let misuses = source
            .lines()
            .find_map(|line| line.strip_prefix("// errors: "))
            .and_then(|rest| rest.split(['.', ' ']).next()?.parse().ok())
            .unwrap_or_else(|| source.matches("#[idem::idempotent").count());
        let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(
            errors,
            misuses,
            "{}: {misuses} misused attribute(s) but {errors} error(s)",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases found in {dirs:?}");
}
