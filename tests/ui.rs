//! Compile tests of `#[idempotent]`: every supported signature shape compiles (`pass/`), and
//! every misuse gives one precise error (`fail/`, with the expected `.stderr`).
//!
//! After an intended change to a message, regenerate with `TRYBUILD=overwrite cargo test --test ui`
//! and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
