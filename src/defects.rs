//! Deliberate engine defects, compiled in only with the `defects` cargo feature: the
//! simulation's proof that it catches real bugs (`tests/simulation`, README "Simulation"). A
//! build without the feature has none of them: [`active`] is `false` and folds away.
//!
//! A defect is switched on for the current thread only, so that one test can run a seed with a
//! defect while others run clean; the simulation runs the whole engine on its own thread.

/// The defects the simulation must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// The log treats one transaction id in eight as never seen: a re-sent event counts twice.
    DedupeSkip,
    /// A usage decrease gives nothing back: negative SUM values overcharge.
    NoGiveBack,
    /// A FAILED workflow can still be released by a later `paid`.
    ReleaseAfterFailed,
    /// A failed outbox write is ignored: the input applies without its effects and the engine
    /// goes on instead of stopping.
    EffectsLost,
    /// A STRIPE charge still `processing` is taken for paid: the commit is released before
    /// the money arrived.
    ReleaseOnProcessing,
    /// A finished payment job is dropped without retiring its outbox entry: the charge is
    /// redone after every restart and the outbox never empties.
    PaidChargeNotRetired,
    /// A charge is created without first searching for the workflow's existing one: once
    /// Stripe's 24 h key window has passed, a second PaymentIntent charges again.
    CreateWithoutSearch,
    /// Recovery keeps the alias map that replay built partition by partition instead of
    /// reading it again from the profiles: an alias moved between customers of two partitions
    /// can be left pointing at nobody, or at its old customer.
    AliasMapNotReloaded,
    /// A commit restricted to some products pays for every product's usage.
    RestrictionIgnored,
    /// A rate applies to usage accepted before it was added (a back-dated rate re-prices
    /// history when the log is replayed).
    RatesRewriteHistory,
    /// One mutating call in four runs without its audit record.
    AuditUnwritten,
    /// Recharge safety rails never hold a recharge back.
    RailsIgnored,
    /// A segment's end is recorded but never announced.
    SegmentEndUnannounced,
    /// A customer leaving alarm on an alert is never noticed: it stays `in_alarm`.
    AlertResolutionLost,
    /// A usage decrease gives back to a contract's own segments but not to a customer-level
    /// one: the shared balance stays drawn for usage that went away.
    SharedGiveBackLost,
    /// Archiving a commit leaves the drawdown order as it was: usage keeps drawing from the
    /// archived commit until the state is next rebuilt (a restart).
    ArchivedStillDraws,
    /// A commit or credit pays for usage priced in another credit type, at par (credits pay
    /// for dollars and dollars for credits, one for one).
    UnitIgnored,
}

impl Defect {
    /// Every defect, in the order the simulation's defect test tries them.
    pub const ALL: [Defect; 17] = [
        Defect::CreateWithoutSearch,
        Defect::DedupeSkip,
        Defect::NoGiveBack,
        Defect::ReleaseAfterFailed,
        Defect::EffectsLost,
        Defect::ReleaseOnProcessing,
        Defect::PaidChargeNotRetired,
        Defect::AliasMapNotReloaded,
        Defect::RestrictionIgnored,
        Defect::RatesRewriteHistory,
        Defect::AuditUnwritten,
        Defect::RailsIgnored,
        Defect::SegmentEndUnannounced,
        Defect::AlertResolutionLost,
        Defect::SharedGiveBackLost,
        Defect::ArchivedStillDraws,
        Defect::UnitIgnored,
    ];
}

#[cfg(feature = "defects")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Defect>> = const { std::cell::Cell::new(None) };
}

/// Switches `defect` on (or every defect off) for this thread.
#[cfg(feature = "defects")]
pub fn inject(defect: Option<Defect>) {
    ACTIVE.set(defect);
}

/// Whether `defect` is on for this thread.
#[inline]
pub fn active(defect: Defect) -> bool {
    #[cfg(feature = "defects")]
    {
        ACTIVE.get() == Some(defect)
    }
    #[cfg(not(feature = "defects"))]
    {
        let _ = defect;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Defect;

    /// A new variant breaks this match; its arm's index then has to be in [`Defect::ALL`].
    fn ordinal(defect: Defect) -> usize {
        match defect {
            Defect::CreateWithoutSearch => 0,
            Defect::DedupeSkip => 1,
            Defect::NoGiveBack => 2,
            Defect::ReleaseAfterFailed => 3,
            Defect::EffectsLost => 4,
            Defect::ReleaseOnProcessing => 5,
            Defect::PaidChargeNotRetired => 6,
            Defect::AliasMapNotReloaded => 7,
            Defect::RestrictionIgnored => 8,
            Defect::RatesRewriteHistory => 9,
            Defect::AuditUnwritten => 10,
            Defect::RailsIgnored => 11,
            Defect::SegmentEndUnannounced => 12,
            Defect::AlertResolutionLost => 13,
            Defect::SharedGiveBackLost => 14,
            Defect::ArchivedStillDraws => 15,
            Defect::UnitIgnored => 16,
        }
    }

    #[test]
    fn all_lists_every_defect_once() {
        for (i, defect) in Defect::ALL.into_iter().enumerate() {
            assert_eq!(ordinal(defect), i, "{defect:?}");
        }
    }
}
