//! Payment provider clients used by the `PaymentActor` (through the `PaymentProvider` trait in
//! `src/actors/payment.rs`). Providers turn a charge request into Stripe REST calls and the
//! answers into payment outcomes; they decide nothing about money.

pub mod stripe;
