//! The largest values the engine accepts, chosen so that no sum it keeps can overflow.
//!
//! Assumption: at most [`EVENTS_PER_PERIOD_ASSUMED`] usage events per customer and billing
//! period. A usage line's charge is at most events x quantity x price = 10^9 x 10^9 x 10^9 =
//! 10^27, below `rust_decimal`'s maximum of about 7.9 x 10^28; balances and commits are sums of
//! amounts of at most 10^15 each. Values beyond these are refused at the edge with a 400 naming
//! the field (SPEC 2.1), so an acknowledged event is never refused later inside the engine; a
//! sum that overflows anyway quarantines its input (see `actors::quarantine`).

use rust_decimal::Decimal;

use super::money::Money;
use super::rejection::Rejection;

/// Usage events per customer and billing period the bounds are sized for.
pub const EVENTS_PER_PERIOD_ASSUMED: i128 = 1_000_000_000;
/// Largest magnitude of one event's quantity (a SUM or MAX property value).
pub const QUANTITY_MAX: i64 = 1_000_000_000;
/// Largest price per unit of a rate or tier, in the credit type's unit (cents: $10M a unit).
pub const PRICE_MAX: i64 = 1_000_000_000;
/// Largest amount of a commit, credit, invoice item or threshold (cents: $10 trillion).
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;
/// Largest tier size: a period's whole quantity at the assumed event count.
pub const TIER_SIZE_MAX: i128 = EVENTS_PER_PERIOD_ASSUMED * QUANTITY_MAX as i128;

/// `rust_decimal`'s largest value, rounded down to a power of ten.
const DECIMAL_SAFE_MAX: i128 = 10_i128.pow(28);

const _: () = assert!(
    EVENTS_PER_PERIOD_ASSUMED * QUANTITY_MAX as i128 * PRICE_MAX as i128 <= DECIMAL_SAFE_MAX / 10,
    "a period's charge must stay well inside Decimal's range"
);
const _: () = assert!(
    AMOUNT_MAX as i128 * EVENTS_PER_PERIOD_ASSUMED <= DECIMAL_SAFE_MAX / 10,
    "a billion commits of the largest amount must still sum"
);

/// Whether `quantity` may be one event's contribution.
pub fn quantity_in_bounds(quantity: Decimal) -> bool {
    quantity.abs() <= Decimal::from(QUANTITY_MAX)
}

/// Refuses a negative amount or one over [`AMOUNT_MAX`], naming `field`.
///
/// # Errors
/// [`Rejection::InvalidField`].
pub fn check_amount(field: &str, amount: Money) -> Result<(), Rejection> {
    check_money(field, amount, AMOUNT_MAX)
}

/// Refuses a negative price or one over [`PRICE_MAX`], naming `field`.
///
/// # Errors
/// [`Rejection::InvalidField`].
pub fn check_price(field: &str, price: Money) -> Result<(), Rejection> {
    check_money(field, price, PRICE_MAX)
}

/// Refuses a negative quantity or one over [`QUANTITY_MAX`], naming `field`.
///
/// # Errors
/// [`Rejection::InvalidField`].
pub fn check_quantity(field: &str, quantity: Decimal) -> Result<(), Rejection> {
    if quantity.is_sign_negative() && !quantity.is_zero() {
        return Err(Rejection::invalid(field, "must not be negative"));
    }
    if quantity > Decimal::from(QUANTITY_MAX) {
        return Err(Rejection::invalid(
            field,
            &format!("must be at most {QUANTITY_MAX}"),
        ));
    }
    Ok(())
}

fn check_money(field: &str, value: Money, max: i64) -> Result<(), Rejection> {
    if value.is_negative() {
        return Err(Rejection::invalid(field, "must not be negative"));
    }
    if value.as_decimal() > Decimal::from(max) {
        return Err(Rejection::invalid(field, &format!("must be at most {max}")));
    }
    Ok(())
}

/// A resource's `uniqueness_key` (contracts, edits, alerts): 1 to 128 characters.
///
/// # Errors
/// [`Rejection::InvalidField`] naming `uniqueness_key`.
pub fn check_uniqueness_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.chars().count() > 128 {
        return Err(Rejection::invalid(
            "uniqueness_key",
            "must be 1 to 128 characters",
        ));
    }
    Ok(())
}

/// At most this many custom fields on one commit or credit, and this many filters in all in one
/// configuration's `threshold_balance_specifiers` (Tollgate's bounds; Metronome states none).
pub const CUSTOM_FIELDS_MAX: usize = 50;
/// A custom field's key and value: 1 to 128 and at most 1,000 characters.
pub const CUSTOM_FIELD_KEY_MAX: usize = 128;
pub const CUSTOM_FIELD_VALUE_MAX: usize = 1_000;

/// Refuses more than [`CUSTOM_FIELDS_MAX`] fields, an empty or long key, a long value.
///
/// # Errors
/// [`Rejection::InvalidField`] naming `field`.
pub fn check_custom_fields(field: &str, fields: &[(String, String)]) -> Result<(), Rejection> {
    if fields.len() > CUSTOM_FIELDS_MAX {
        return Err(Rejection::invalid(
            field,
            &format!("at most {CUSTOM_FIELDS_MAX} custom fields"),
        ));
    }
    for (key, value) in fields {
        check_field_text(field, key, value)?;
    }
    Ok(())
}

fn check_field_text(field: &str, key: &str, value: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.chars().count() > CUSTOM_FIELD_KEY_MAX {
        return Err(Rejection::invalid(
            field,
            &format!("a key must be 1 to {CUSTOM_FIELD_KEY_MAX} characters"),
        ));
    }
    if value.chars().count() > CUSTOM_FIELD_VALUE_MAX {
        return Err(Rejection::invalid(
            field,
            &format!("a value must be at most {CUSTOM_FIELD_VALUE_MAX} characters"),
        ));
    }
    Ok(())
}

/// Refuses an `exclude` without filters (it would leave out nothing, or everything: neither
/// is what a caller means) and more than [`CUSTOM_FIELDS_MAX`] filters in all.
///
/// # Errors
/// [`Rejection::InvalidField`] naming `threshold_balance_specifiers`.
pub fn check_balance_specifiers(
    specifiers: &crate::domain::contract::BalanceSpecifiers,
) -> Result<(), Rejection> {
    const FIELD: &str = "prepaid_balance_threshold_configuration.threshold_balance_specifiers";
    let entries = specifiers.len() + specifiers.iter().map(Vec::len).sum::<usize>();
    if entries > CUSTOM_FIELDS_MAX {
        return Err(Rejection::invalid(
            FIELD,
            &format!("at most {CUSTOM_FIELDS_MAX} specifiers and excludes in all"),
        ));
    }
    let mut filters = 0usize;
    for exclusion in specifiers.iter().flatten() {
        if exclusion.is_empty() {
            return Err(Rejection::invalid(
                FIELD,
                "an exclude needs at least one custom_field_filters entry",
            ));
        }
        filters += exclusion.len();
        for filter in exclusion {
            check_field_text(FIELD, &filter.key, &filter.value)?;
        }
    }
    if filters > CUSTOM_FIELDS_MAX {
        return Err(Rejection::invalid(
            FIELD,
            &format!("at most {CUSTOM_FIELDS_MAX} custom field filters in all"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_the_bounds_pass_and_beyond_them_are_refused_by_name() {
        assert!(check_amount("amount", Money::from_i64(AMOUNT_MAX)).is_ok());
        let over = check_amount("credits[0].amount", Money::from_i64(AMOUNT_MAX + 1));
        assert!(over.unwrap_err().to_string().contains("credits[0].amount"));
        assert!(check_amount("a", Money::from_i64(-1)).is_err());
        assert!(check_price("price", Money::from_i64(PRICE_MAX)).is_ok());
        assert!(check_price("price", Money::from_i64(PRICE_MAX + 1)).is_err());
        assert!(quantity_in_bounds(Decimal::from(-QUANTITY_MAX)));
        assert!(!quantity_in_bounds(
            Decimal::from(QUANTITY_MAX) + Decimal::ONE
        ));
        assert!(check_quantity("q", Decimal::from(QUANTITY_MAX + 1)).is_err());
    }

    #[test]
    fn a_quantity_may_be_zero_or_up_to_the_bound_and_never_negative() {
        assert!(check_quantity("q", Decimal::ZERO).is_ok());
        assert!(
            check_quantity("q", -Decimal::ZERO).is_ok(),
            "negative zero is zero"
        );
        assert!(check_quantity("q", Decimal::from(QUANTITY_MAX)).is_ok());
        let negative = check_quantity("items[0].quantity", Decimal::NEGATIVE_ONE).unwrap_err();
        assert!(negative.to_string().contains("items[0].quantity"));
        assert!(check_quantity("q", Decimal::new(-1, 9)).is_err());
    }

    #[test]
    fn a_period_of_the_largest_events_at_the_largest_price_does_not_overflow() {
        let charge = Money::from_i64(PRICE_MAX)
            .checked_mul(Decimal::from(QUANTITY_MAX))
            .unwrap();
        let period = charge
            .checked_mul(Decimal::from(EVENTS_PER_PERIOD_ASSUMED as i64))
            .unwrap();
        assert!(period.checked_add(period).is_ok());
    }
}
