//! Tollgate: usage-based threshold billing and auto-recharge with payment-gated commits.
//!
//! Layering (see `../shared/DESIGN.md`): `domain` is the pure rules, `storage` is the only place
//! bytes reach disk, `actors` owns state and concurrency behind the `Engine` facade, `http` is
//! the only place status codes exist.
pub mod actors;
pub mod bench;
pub mod config;
pub mod defects;
pub mod domain;
pub mod histogram;
pub mod http;
pub mod payments;
pub mod secret;
pub mod startup;
pub mod storage;
