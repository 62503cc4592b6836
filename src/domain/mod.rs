//! The billing rules: pure, deterministic, no I/O.
//!
//! Everything that decides about money lives here: exact money and credit types, the catalog
//! and rating, commits and drawdown, both thresholds, the payment gate workflow and the effects
//! it asks for. The core imports std, serde, rust_decimal and pure data crates (uuid for ids,
//! serde_json only for exact JSON numbers and webhook bodies); never actix, tokio, rocksdb,
//! reqwest or a clock. Time and the ids of edge-created objects arrive with each input, so the
//! same inputs always give the same state, the same effects and the same ids.

pub mod alerts;
pub mod bounds;
pub mod catalog;
pub mod contract;
pub mod customer;
pub mod effects;
pub mod fixtures;
pub mod gate;
pub mod ids;
pub mod money;
pub mod rejection;
pub mod usage;

/// Appends `item`, allocating room for exactly one element when `list` has none yet (later
/// growth is `Vec`'s usual doubling). Most lists of a customer's state hold one element for
/// life (its contract, a commit's segment, a period's usage line), and `Vec` reserves four on
/// its first push: that slack was half of a resident customer's memory (BENCHMARKS.md, P6).
pub(crate) fn push_first_exact<T>(list: &mut Vec<T>, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(item);
}

/// [`push_first_exact`] for an insertion at `at`.
pub(crate) fn insert_first_exact<T>(list: &mut Vec<T>, at: usize, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.insert(at, item);
}

pub use catalog::Catalog;
pub use contract::Limits;
pub use customer::{Applied, Ctx, Customer, Input};
pub use effects::Effect;
pub use ids::{Id, Timestamp};
pub use money::Money;
pub use rejection::Rejection;

#[cfg(test)]
mod rules_tests;

#[cfg(test)]
mod proptests;
