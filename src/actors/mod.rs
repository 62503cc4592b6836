//! The engine: actors that own state and concurrency, behind the [`Engine`] facade.
//!
//! ```text
//! Engine::ingest / apply ─► partition submitter ─► storage group commit (log, dedupe)
//!                                                      │ durable, in seq order
//!                         partition worker ◄───────────┘
//!                           └─► CustomerActor (domain::apply) ─► outbox ─► WebhookActor
//!                                                                     └──► PaymentActor
//! ```
//! actix stays inside this module: `src/http/` sees only [`Engine`], [`EngineError`] and domain
//! types.

pub mod backlog;
pub mod cancel;
pub mod clock;
pub mod customer;
pub mod deliveries;
pub mod engine;
pub mod entry;
pub mod error;
pub mod handles;
pub mod health;
pub mod metrics;
pub mod outbox;
pub mod partition;
pub mod payment;
pub mod quarantine;
pub mod registry;
pub mod shared;
pub mod staged_index;
pub mod wakes;
pub mod webhook;

pub use engine::{Disk, Engine, EngineConfig, EngineError, IngestEvent, IngestReceipt, Seams};
pub use handles::Placement;
pub use shared::EngineSettings;
