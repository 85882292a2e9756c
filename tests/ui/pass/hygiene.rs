//! Generated code names nothing the user's crate could shadow, and every option compiles.
#![deny(warnings)]
#![allow(non_camel_case_types, dead_code)]

mod core {}
mod std {}
struct Result;
struct Ok;
struct Option;
struct Box;

use idem as renamed;

#[derive(::serde::Serialize)]
struct Request {
    amount: u64,
}

#[idem::idempotent(
    key = id,
    fingerprint = Request { amount },
    ttl = "1h 30m",
    lease = "1500ms",
    namespace = "payments-v2",
    on_in_progress = reject,
    record_errors,
    crate = "renamed"
)]
async fn every_option(id: u64, amount: u64) -> ::core::result::Result<u64, Declined> {
    let __idem_call = amount;
    ::core::result::Result::Ok(id + __idem_call)
}

#[derive(::serde::Serialize, ::serde::Deserialize, Debug)]
enum Declined {
    Idem(::std::string::String),
}

impl ::core::convert::From<idem::Error> for Declined {
    fn from(err: idem::Error) -> Self {
        Declined::Idem(::std::string::ToString::to_string(&err))
    }
}

#[idem::idempotent(key = id, on_in_progress = wait)]
async fn shadowed_locals(id: u64) -> ::core::result::Result<u64, idem::Error> {
    ::core::result::Result::Ok(id)
}

fn main() {
    let _ = every_option(1, 2);
    let _ = shadowed_locals(1);
}
