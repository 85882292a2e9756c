//! Default namespaces: two functions of the same name never share records, whether they live in
//! different modules or are methods of different types; `namespace = "..."` pins one.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, Ordering};

use idem::{idempotent, Error, Idempotency, MemoryStore};

static BILLING_RUNS: AtomicU32 = AtomicU32::new(0);
static EMAIL_RUNS: AtomicU32 = AtomicU32::new(0);

mod billing {
    use super::*;

    #[idempotent(key = id, using = idem)]
    pub async fn handle(idem: &Idempotency, id: u32) -> Result<String, Error> {
        BILLING_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(format!("billed {id}"))
    }
}

mod email {
    use super::*;

    #[idempotent(key = id, using = idem)]
    pub async fn handle(idem: &Idempotency, id: u32) -> Result<u64, Error> {
        EMAIL_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(u64::from(id) * 2)
    }
}

#[tokio::test]
async fn functions_of_the_same_name_in_different_modules_do_not_share_records() {
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(billing::handle(&idem, 17).await.unwrap(), "billed 17");
    assert_eq!(email::handle(&idem, 17).await.unwrap(), 34);
    assert_eq!(billing::handle(&idem, 17).await.unwrap(), "billed 17");
    assert_eq!(email::handle(&idem, 17).await.unwrap(), 34);
    assert_eq!(BILLING_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(EMAIL_RUNS.load(Ordering::SeqCst), 1);
}

trait Handler {
    async fn handle(&self, id: u32) -> Result<String, Error>;
}

struct Refunds {
    idem: Idempotency,
    runs: AtomicU32,
}

struct Receipts {
    idem: Idempotency,
    runs: AtomicU32,
}

impl Handler for Refunds {
    #[idempotent(key = id, using = &self.idem)]
    async fn handle(&self, id: u32) -> Result<String, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(format!("refund {id}"))
    }
}

impl Handler for Receipts {
    #[idempotent(key = id, using = &self.idem)]
    async fn handle(&self, id: u32) -> Result<String, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(format!("receipt {id}"))
    }
}

impl Refunds {
    /// An associated function without a receiver, named like the trait method.
    #[idempotent(key = id, using = idem)]
    async fn audit(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

impl Receipts {
    #[idempotent(key = id, using = idem)]
    async fn audit(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id + 1000)
    }
}

#[tokio::test]
async fn methods_of_different_types_do_not_share_records() {
    let idem = Idempotency::new(MemoryStore::new());
    let refunds = Refunds {
        idem: idem.clone(),
        runs: AtomicU32::new(0),
    };
    let receipts = Receipts {
        idem: idem.clone(),
        runs: AtomicU32::new(0),
    };
    for _ in 0..2 {
        assert_eq!(refunds.handle(5).await.unwrap(), "refund 5");
        assert_eq!(receipts.handle(5).await.unwrap(), "receipt 5");
    }
    assert_eq!(refunds.runs.load(Ordering::SeqCst), 1);
    assert_eq!(receipts.runs.load(Ordering::SeqCst), 1);

    let (refund_audits, receipt_audits) = (AtomicU32::new(0), AtomicU32::new(0));
    for _ in 0..2 {
        assert_eq!(Refunds::audit(&idem, 9, &refund_audits).await.unwrap(), 9);
        assert_eq!(
            Receipts::audit(&idem, 9, &receipt_audits).await.unwrap(),
            1009
        );
    }
    assert_eq!(refund_audits.load(Ordering::SeqCst), 1);
    assert_eq!(receipt_audits.load(Ordering::SeqCst), 1);
}

mod before_the_move {
    use super::*;

    #[idempotent(key = id, using = idem, namespace = "charge")]
    pub async fn charge(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

mod after_the_move {
    use super::*;

    #[idempotent(key = id, using = idem, namespace = "charge")]
    pub async fn charge_order(idem: &Idempotency, id: u32, runs: &AtomicU32) -> Result<u32, Error> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(id + 1)
    }
}

#[tokio::test]
async fn a_pinned_namespace_keeps_records_across_a_move_or_rename() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    assert_eq!(before_the_move::charge(&idem, 3, &runs).await.unwrap(), 3);
    // The same function, moved and renamed: its pinned namespace finds the old record.
    assert_eq!(
        after_the_move::charge_order(&idem, 3, &runs).await.unwrap(),
        3
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        idem.store_key("charge", "3").unwrap(),
        "idem:charge:3",
        "a pinned namespace is used as written"
    );
}

// Regressions from review: functions whose paths print alike.

trait Provided {
    fn idem(&self) -> &Idempotency;
    fn runs(&self) -> &AtomicU32;

    /// A provided method: one function, but each implementor is its own handler.
    #[idempotent(key = id, using = self.idem())]
    async fn provided(&self, id: u32) -> Result<u32, Error> {
        self.runs().fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

impl Provided for Refunds {
    fn idem(&self) -> &Idempotency {
        &self.idem
    }
    fn runs(&self) -> &AtomicU32 {
        &self.runs
    }
}

impl Provided for Receipts {
    fn idem(&self) -> &Idempotency {
        &self.idem
    }
    fn runs(&self) -> &AtomicU32 {
        &self.runs
    }
}

struct Wrapper<T>(T, Idempotency, AtomicU32);

impl<T: Send + Sync> Wrapper<T> {
    #[idempotent(key = id, using = &self.1)]
    async fn generic(&self, id: u32) -> Result<u32, Error> {
        self.2.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

#[tokio::test]
async fn a_provided_or_generic_method_has_a_namespace_per_self_type() {
    let idem = Idempotency::new(MemoryStore::new());
    let refunds = Refunds {
        idem: idem.clone(),
        runs: AtomicU32::new(0),
    };
    let receipts = Receipts {
        idem: idem.clone(),
        runs: AtomicU32::new(0),
    };
    for _ in 0..2 {
        refunds.provided(7).await.unwrap();
        receipts.provided(7).await.unwrap();
    }
    assert_eq!(refunds.runs.load(Ordering::SeqCst), 1);
    assert_eq!(receipts.runs.load(Ordering::SeqCst), 1);

    let bytes = Wrapper(0u8, idem.clone(), AtomicU32::new(0));
    let words = Wrapper(0u16, idem.clone(), AtomicU32::new(0));
    for _ in 0..2 {
        bytes.generic(3).await.unwrap();
        words.generic(3).await.unwrap();
    }
    assert_eq!(bytes.2.load(Ordering::SeqCst), 1);
    assert_eq!(words.2.load(Ordering::SeqCst), 1);
}

static FIRST_BLOCK: AtomicU32 = AtomicU32::new(0);
static SECOND_BLOCK: AtomicU32 = AtomicU32::new(0);

async fn two_blocks(idem: &Idempotency) -> (Result<u32, Error>, Result<u32, Error>) {
    let first = {
        #[idempotent(key = id, using = idem)]
        async fn step(idem: &Idempotency, id: u32) -> Result<u32, Error> {
            FIRST_BLOCK.fetch_add(1, Ordering::SeqCst);
            Ok(id)
        }
        step(idem, 1).await
    };
    let second = {
        #[idempotent(key = id, using = idem)]
        async fn step(idem: &Idempotency, id: u32) -> Result<u32, Error> {
            SECOND_BLOCK.fetch_add(1, Ordering::SeqCst);
            Ok(id + 100)
        }
        step(idem, 1).await
    };
    (first, second)
}

/// Two functions whose paths print alike cannot be told apart by name: every marker is
/// registered at link time, so both refuse to run (every call, before the body), in every
/// process, whichever is called first, rather than share records.
#[tokio::test]
async fn functions_whose_paths_print_alike_do_not_share_records() {
    let idem = Idempotency::new(MemoryStore::new());
    for _ in 0..2 {
        let (first, second) = two_blocks(&idem).await;
        for result in [first, second] {
            match result {
                Err(err @ Error::InvalidOption { .. }) => {
                    assert!(err.to_string().contains("namespace = "), "{err}");
                }
                other => panic!("functions that print alike must not run: {other:?}"),
            }
        }
    }
    assert_eq!(FIRST_BLOCK.load(Ordering::SeqCst), 0);
    assert_eq!(SECOND_BLOCK.load(Ordering::SeqCst), 0);
}

// Regressions from the second review.

static EMAIL_JOBS: AtomicU32 = AtomicU32::new(0);
static REFUND_JOBS: AtomicU32 = AtomicU32::new(0);

trait Job {
    fn runs() -> &'static AtomicU32;

    /// A provided associated function without receiver that depends on `Self`.
    #[idempotent(key = id, using = idem)]
    async fn run_job(idem: &Idempotency, id: u32) -> Result<u32, Error> {
        Self::runs().fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

struct EmailJob;
struct RefundJob;

impl Job for EmailJob {
    fn runs() -> &'static AtomicU32 {
        &EMAIL_JOBS
    }
}

impl Job for RefundJob {
    fn runs() -> &'static AtomicU32 {
        &REFUND_JOBS
    }
}

#[tokio::test]
async fn a_provided_function_without_receiver_has_a_namespace_per_self_type() {
    let idem = Idempotency::new(MemoryStore::new());
    for _ in 0..2 {
        EmailJob::run_job(&idem, 9).await.unwrap();
        RefundJob::run_job(&idem, 9).await.unwrap();
    }
    assert_eq!(EMAIL_JOBS.load(Ordering::SeqCst), 1);
    assert_eq!(REFUND_JOBS.load(Ordering::SeqCst), 1, "the refund ran");
}

struct Tagged<T>(T, Idempotency, &'static AtomicU32);

impl<T: Send + Sync> Tagged<T> {
    #[idempotent(key = id, using = &self.1)]
    async fn go(&self, id: u32) -> Result<u32, Error> {
        self.2.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
}

static LOCAL_A: AtomicU32 = AtomicU32::new(0);
static LOCAL_B: AtomicU32 = AtomicU32::new(0);

/// Regression: a method whose `Self` type is local to an async fn (or a closure) printed
/// `{{closure}}` into its namespace, and every call failed with `InvalidKey`; and two local
/// `Self` types that print alike shared records.
#[tokio::test]
async fn methods_of_local_types_work_and_local_types_that_print_alike_do_not_share() {
    struct Local;
    impl Local {
        #[idempotent(key = id, using = idem)]
        async fn method(&self, idem: &Idempotency, id: u32) -> Result<u32, Error> {
            Ok(id)
        }
    }
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(Local.method(&idem, 4).await.unwrap(), 4);
    let by_closure = Tagged(|| 1, idem.clone(), &LOCAL_A);
    assert_eq!(by_closure.go(1).await.unwrap(), 1);

    let first = {
        struct Alike;
        Tagged(Alike, idem.clone(), &LOCAL_A).go(5).await
    };
    let second = {
        struct Alike;
        Tagged(Alike, idem.clone(), &LOCAL_B).go(5).await
    };
    assert_eq!(first.unwrap(), 5);
    assert!(
        matches!(second, Err(Error::InvalidOption { .. })),
        "the second local type must not replay the first's record: {second:?}"
    );
    assert_eq!(LOCAL_B.load(Ordering::SeqCst), 0);
}

// Regressions from the third review.

static LOADS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id, using = idem)]
async fn load<T: Default + serde::Serialize + serde::de::DeserializeOwned + Send>(
    idem: &Idempotency,
    id: u32,
) -> Result<T, Error> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(T::default())
}

/// Different instantiations of a generic function are different handlers: `load::<u8>` and
/// `load::<String>` with one key do not replay each other's records.
#[tokio::test]
async fn instantiations_of_a_generic_function_do_not_share_records() {
    let idem = Idempotency::new(MemoryStore::new());
    for _ in 0..2 {
        assert_eq!(load::<u8>(&idem, 1).await.unwrap(), 0);
        assert_eq!(load::<String>(&idem, 1).await.unwrap(), "");
    }
    assert_eq!(LOADS.load(Ordering::SeqCst), 2);
}

/// A free function whose body holds an item with a `Self` of its own compiles (`Self` there
/// is not the function's).
#[idempotent(key = id, using = idem)]
async fn with_a_local_item(idem: &Idempotency, id: u32) -> Result<u32, Error> {
    struct Counter(u32);
    impl Counter {
        fn new(start: u32) -> Self {
            Self(start)
        }
    }
    Ok(Counter::new(id).0)
}

#[tokio::test]
async fn a_local_items_self_is_not_the_functions() {
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(with_a_local_item(&idem, 3).await.unwrap(), 3);
}

// Regression from the fourth review.

struct Repo<T>(std::marker::PhantomData<T>);

impl<T: Send + Sync> Repo<T> {
    /// `Self` named in the signature after an `impl Trait` argument.
    #[idempotent(key = id, using = idem)]
    async fn kind(
        idem: &Idempotency,
        id: impl std::fmt::Display + Send,
        _this: Option<&Self>,
    ) -> Result<String, Error> {
        Ok(std::any::type_name::<T>().to_owned())
    }
}

#[tokio::test]
async fn self_named_after_an_impl_trait_argument_counts() {
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(Repo::<u8>::kind(&idem, 1, None).await.unwrap(), "u8");
    assert_eq!(Repo::<u16>::kind(&idem, 1, None).await.unwrap(), "u16");
}
