//! Money: an exact decimal amount in a credit type's unit.
//!
//! USD amounts are **cents** (Metronome's `USD (cents)` credit type), other fiat currencies are in
//! whole units, custom pricing units in their own unit. Arithmetic is checked and never passes
//! through floats: JSON numbers are read from their exact text (`serde_json`'s
//! `arbitrary_precision`), and a number needing more than 28 significant digits is refused
//! instead of rounded. The single rounding rule of the engine, half-up to the currency's minor
//! unit, lives in [`Money::to_minor_units`] and is applied only where money leaves the engine.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::ids::Id;
use super::rejection::Rejection;

/// An exact amount in some credit type's unit. No `Add` impl on purpose: every operation can
/// overflow and says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Money(Decimal);

/// Numeric order, as `Decimal`'s (through [`fast::cmp`]).
impl PartialOrd for Money {
    #[inline]
    fn partial_cmp(&self, other: &Money) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Money {
    #[inline]
    fn cmp(&self, other: &Money) -> Ordering {
        fast::cmp(self.0, other.0)
    }
}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    pub fn from_decimal(value: Decimal) -> Money {
        Money(value.normalize())
    }

    pub fn from_i64(value: i64) -> Money {
        Money(Decimal::from(value))
    }

    pub fn as_decimal(self) -> Decimal {
        self.0
    }

    /// Parses the exact text of a number (`"0.1"`, `"12"`, `"1.5e3"`).
    ///
    /// # Errors
    /// [`Rejection::InvalidAmount`] for text that is not a number or needs more precision than
    /// 28 significant digits (never silently rounded).
    pub fn parse(text: &str) -> Result<Money, Rejection> {
        parse_exact_decimal(text).map(Money::from_decimal)
    }

    #[inline]
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    #[inline]
    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    #[inline]
    pub fn is_positive(self) -> bool {
        self.0.is_sign_positive() && !self.0.is_zero()
    }

    /// # Errors
    /// [`Rejection::AmountOverflow`] when the sum leaves Decimal's range.
    #[inline(always)]
    pub fn checked_add(self, other: Money) -> Result<Money, Rejection> {
        fast::add_sub(self.0, other.0, false)
            .map(Money)
            .ok_or(Rejection::AmountOverflow)
    }

    /// # Errors
    /// [`Rejection::AmountOverflow`] when the difference leaves Decimal's range.
    #[inline(always)]
    pub fn checked_sub(self, other: Money) -> Result<Money, Rejection> {
        fast::add_sub(self.0, other.0, true)
            .map(Money)
            .ok_or(Rejection::AmountOverflow)
    }

    /// Multiplies by a dimensionless factor (a quantity, a payment fraction).
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] when the product leaves Decimal's range.
    #[inline(always)]
    pub fn checked_mul(self, factor: Decimal) -> Result<Money, Rejection> {
        fast::mul(self.0, factor)
            .map(Money)
            .ok_or(Rejection::AmountOverflow)
    }

    /// `self + other` when the sum is exact, `None` when it overflows or would be rounded.
    ///
    /// `rust_decimal` keeps the larger scale of two non-zero operands and only lowers it (by
    /// rounding) when the exact sum does not fit in 96 bits; a sum with an operand of zero is the
    /// other operand. Running totals kept incrementally use this, so that a cached total is always
    /// the exact sum of its terms (and therefore equal to the same terms summed from scratch).
    #[inline(always)]
    pub fn exact_add(self, other: Money) -> Option<Money> {
        let sum = fast::add_sub(self.0, other.0, false)?;
        exact(self.0, other.0, sum).then_some(Money(sum))
    }

    /// `self - other` when the difference is exact (see [`Money::exact_add`]).
    #[inline(always)]
    pub fn exact_sub(self, other: Money) -> Option<Money> {
        let difference = fast::add_sub(self.0, other.0, true)?;
        exact(self.0, other.0, difference).then_some(Money(difference))
    }

    #[inline]
    pub fn min(self, other: Money) -> Money {
        if self <= other { self } else { other }
    }

    #[inline]
    pub fn max(self, other: Money) -> Money {
        if self >= other { self } else { other }
    }

    /// Floors a negative amount at zero (balances are never shown below zero per segment).
    #[inline]
    pub fn floor_zero(self) -> Money {
        if self.is_negative() {
            Money::ZERO
        } else {
            self
        }
    }

    /// `self - other` floored at zero, and zero when the difference overflows: what remains of
    /// a segment, what a line leaves uncovered.
    #[inline(always)]
    pub fn minus_floor_zero(self, other: Money) -> Money {
        match fast::add_sub(self.0, other.0, true) {
            Some(difference) => Money(difference).floor_zero(),
            None => Money::ZERO,
        }
    }

    /// The engine's one rounding rule: half-up (away from zero on .5) to the minor unit of
    /// `credit_type`, returned as an integer count of minor units. Used only where money leaves
    /// the engine (a payment provider charge).
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] when the amount does not fit in `i64` minor units, and
    /// [`Rejection::UnsupportedCreditType`] for custom pricing units, which have no minor unit.
    pub fn to_minor_units(self, credit_type: &CreditType) -> Result<i64, Rejection> {
        let scale = match credit_type.unit {
            CreditUnit::UsdCents => Decimal::ONE,
            CreditUnit::Fiat { minor_exponent, .. } => Decimal::from(10_i64.pow(minor_exponent)),
            CreditUnit::Custom => return Err(Rejection::UnsupportedCreditType),
        };
        let minor = self
            .0
            .checked_mul(scale)
            .ok_or(Rejection::AmountOverflow)?
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        i64::try_from(minor).map_err(|_| Rejection::AmountOverflow)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Inline fast paths of `rust_decimal`'s checked add, sub, mul and its comparison, for the
/// operands money usually has (mantissas below 2^64 at equal or close scales). Each gives bit for
/// bit what `rust_decimal` gives (value, scale and sign); every other case calls `rust_decimal`.
/// `fast_paths_match_rust_decimal_bit_for_bit` checks this against random operands.
///
/// They exist because `Decimal::checked_add` inlines its whole general algorithm, which makes
/// every caller too large to inline and turns each cent added on the hot path into a call.
pub mod fast {
    use std::cmp::Ordering;

    use rust_decimal::Decimal;

    /// 10^0 ..= 10^19: `rust_decimal` aligns scales in 128 bits up to a difference of 19.
    const POWERS_10: [u128; 20] = {
        let mut powers = [1_u128; 20];
        let mut i = 1;
        while i < 20 {
            powers[i] = powers[i - 1] * 10;
            i += 1;
        }
        powers
    };

    /// Mantissas this large no longer fit in 96 bits.
    const OVERFLOW_96: u128 = 1 << 96;

    /// `a + b` (or `a - b`) as `Decimal::checked_add` (`checked_sub`) computes it.
    #[inline(always)]
    pub fn add_sub(a: Decimal, b: Decimal, subtract: bool) -> Option<Decimal> {
        if a.is_zero() {
            // rust_decimal: 0 + b is b; 0 - b is b with its sign flipped unless b is zero.
            let mut result = b;
            if subtract && !b.is_zero() {
                result.set_sign_negative(b.is_sign_positive());
            }
            return Some(result);
        }
        if b.is_zero() {
            return Some(a);
        }
        let (x, y) = (a.unpack(), b.unpack());
        if x.hi == 0 && y.hi == 0 && x.scale.abs_diff(y.scale) < 20 {
            // Both mantissas below 2^64: rust_decimal aligns the scales in 128 bits and keeps
            // the result if it fits in 96 bits (its 32-bit path agrees whenever it applies).
            let mut ma = u128::from(x.lo) | u128::from(x.mid) << 32;
            let mut mb = u128::from(y.lo) | u128::from(y.mid) << 32;
            let scale = x.scale.max(y.scale);
            ma *= POWERS_10[(scale - x.scale) as usize];
            mb *= POWERS_10[(scale - y.scale) as usize];
            let effective_subtract = subtract ^ (x.negative != y.negative);
            let (magnitude, negative) = if !effective_subtract {
                (ma + mb, x.negative)
            } else if ma >= mb {
                (ma - mb, x.negative)
            } else {
                (mb - ma, !x.negative)
            };
            if magnitude < OVERFLOW_96 {
                return Some(Decimal::from_parts(
                    magnitude as u32,
                    (magnitude >> 32) as u32,
                    (magnitude >> 64) as u32,
                    negative,
                    scale,
                ));
            }
        }
        add_sub_general(a, b, subtract)
    }

    #[inline(never)]
    fn add_sub_general(a: Decimal, b: Decimal, subtract: bool) -> Option<Decimal> {
        if subtract {
            a.checked_sub(b)
        } else {
            a.checked_add(b)
        }
    }

    /// `a * b` as `Decimal::checked_mul` computes it.
    #[inline(always)]
    pub fn mul(a: Decimal, b: Decimal) -> Option<Decimal> {
        if a.is_zero() || b.is_zero() {
            return Some(Decimal::ZERO);
        }
        let (x, y) = (a.unpack(), b.unpack());
        let scale = x.scale + y.scale;
        if x.hi | x.mid | y.hi | y.mid == 0 && scale <= Decimal::MAX_SCALE {
            // Two 32-bit mantissas: rust_decimal multiplies them in 64 bits, exactly.
            let product = u64::from(x.lo) * u64::from(y.lo);
            return Some(Decimal::from_parts(
                product as u32,
                (product >> 32) as u32,
                0,
                x.negative ^ y.negative,
                scale,
            ));
        }
        mul_general(a, b)
    }

    #[inline(never)]
    fn mul_general(a: Decimal, b: Decimal) -> Option<Decimal> {
        a.checked_mul(b)
    }

    /// The numeric order of `Decimal::cmp` (zero equals negative zero).
    #[inline(always)]
    pub fn cmp(a: Decimal, b: Decimal) -> Ordering {
        if a.scale() == b.scale() {
            // Same scale: the signed mantissas order the values.
            a.mantissa().cmp(&b.mantissa())
        } else {
            cmp_general(a, b)
        }
    }

    #[inline(never)]
    fn cmp_general(a: Decimal, b: Decimal) -> Ordering {
        a.cmp(&b)
    }

    /// `Decimal::max`: `b` only when it is greater.
    #[inline(always)]
    pub fn max(a: Decimal, b: Decimal) -> Decimal {
        if cmp(a, b) == Ordering::Less { b } else { a }
    }

    /// `Decimal::min`: `b` only when it is smaller.
    #[inline(always)]
    pub fn min(a: Decimal, b: Decimal) -> Decimal {
        if cmp(a, b) == Ordering::Greater { b } else { a }
    }
}

/// Whether `result` of adding or subtracting `a` and `b` is exact: no rounding lowered its scale.
#[inline]
fn exact(a: Decimal, b: Decimal, result: Decimal) -> bool {
    a.is_zero() || b.is_zero() || result.scale() == a.scale().max(b.scale())
}

/// Parses a decimal number from its exact text, refusing anything that would need rounding.
///
/// # Errors
/// [`Rejection::InvalidAmount`].
pub fn parse_exact_decimal(text: &str) -> Result<Decimal, Rejection> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return Err(Rejection::InvalidAmount);
    }
    let value = if text.contains(['e', 'E']) {
        let value = Decimal::from_scientific(text).map_err(|_| Rejection::InvalidAmount)?;
        // from_scientific can round; prove exactness by comparing significant digits.
        if significant_digits(text) > 28 {
            return Err(Rejection::InvalidAmount);
        }
        value
    } else {
        Decimal::from_str_exact(text).map_err(|_| Rejection::InvalidAmount)?
    };
    Ok(value.normalize())
}

fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let trimmed = digits.trim_start_matches('0').trim_end_matches('0');
    trimmed.len()
}

/// Binary encodings (bincode: checkpoints, the log) store the 16-byte Decimal; human-readable
/// ones (JSON) write an exact JSON number.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let number = serde_json::Number::from_str(&self.0.to_string())
                .map_err(serde::ser::Error::custom)?;
            number.serialize(serializer)
        } else {
            serializer.serialize_bytes(&self.0.serialize())
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(JsonMoneyVisitor)
        } else {
            deserializer.deserialize_bytes(BinaryMoneyVisitor)
        }
    }
}

struct BinaryMoneyVisitor;

impl de::Visitor<'_> for BinaryMoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("16 bytes of a serialized Decimal")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Money, E> {
        let raw: [u8; 16] = bytes
            .try_into()
            .map_err(|_| E::invalid_length(bytes.len(), &self))?;
        Ok(Money(Decimal::deserialize(raw)))
    }
}

struct JsonMoneyVisitor;

impl<'de> de::Visitor<'de> for JsonMoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an exact decimal number (at most 28 significant digits)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
        Ok(Money::from_i64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
        Ok(Money(Decimal::from(v)))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Money, E> {
        // Only reachable without serde_json's arbitrary_precision; refuse rather than guess.
        Err(E::custom(
            "amount arrived as a binary float; it must be read exactly",
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
        Money::parse(v).map_err(|_| E::custom(format!("invalid amount {v:?}: {}", EXACT_HINT)))
    }

    // serde_json with arbitrary_precision hands numbers over as a one-entry map holding the
    // number's exact text.
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Money, A::Error> {
        let Some((_, text)) = map.next_entry::<String, String>()? else {
            return Err(de::Error::custom("empty object is not an amount"));
        };
        Money::parse(&text)
            .map_err(|_| de::Error::custom(format!("invalid amount {text}: {EXACT_HINT}")))
    }
}

const EXACT_HINT: &str = "amounts must be exact decimals with at most 28 significant digits";

/// How a credit type's amounts are denominated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditUnit {
    /// Metronome's default: US dollars counted in cents.
    UsdCents,
    /// Another fiat currency in whole units; `minor_exponent` digits after the point are its
    /// minor unit (2 for EUR, 0 for JPY).
    Fiat { minor_exponent: u32 },
    /// A custom pricing unit (credits, tokens): no minor unit, not payable directly.
    Custom,
}

/// A credit type: the unit an amount is counted in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditType {
    pub id: Id,
    pub name: String,
    /// ISO 4217 code for fiat credit types (`"USD"`), `None` for custom pricing units.
    pub currency: Option<String>,
    pub unit: CreditUnit,
}

/// Metronome's fixed id of the `USD (cents)` credit type.
pub const USD_CENTS_ID: &str = "2714e483-4ff1-48e4-9e25-ac732e8f24f2";

impl CreditType {
    pub fn usd_cents() -> CreditType {
        CreditType {
            id: Id::parse(USD_CENTS_ID).expect("constant is a valid uuid"),
            name: "USD (cents)".to_owned(),
            currency: Some("USD".to_owned()),
            unit: CreditUnit::UsdCents,
        }
    }

    /// A fiat credit type counted in whole units of `currency`.
    pub fn fiat(id: Id, currency: &str, minor_exponent: u32) -> CreditType {
        CreditType {
            id,
            name: currency.to_owned(),
            currency: Some(currency.to_owned()),
            unit: CreditUnit::Fiat { minor_exponent },
        }
    }

    pub fn is_usd_cents(&self) -> bool {
        self.unit == CreditUnit::UsdCents
    }
}

/// How many units of a rate card's fiat credit type one unit of a custom pricing unit is worth
/// (Metronome's `credit_type_conversions[].fiat_per_custom_credit`). A rate card's conversions
/// are added, never modified, so an amount converted once converts the same way forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conversion {
    /// The custom pricing unit.
    pub credit_type_id: Id,
    /// Positive.
    pub fiat_per_unit: Decimal,
}

impl Conversion {
    /// `amount` of the custom pricing unit in the fiat credit type, as exact as every product
    /// the engine computes: within `rust_decimal`'s 28 significant digits (a conversion has at
    /// most 12 decimal places); rounding to the currency's minor unit happens only where money
    /// leaves the engine ([`Money::to_minor_units`]).
    ///
    /// # Errors
    /// [`Rejection::AmountOverflow`] when the product leaves Decimal's range.
    #[inline]
    pub fn to_fiat(&self, amount: Money) -> Result<Money, Rejection> {
        amount
            .checked_mul(self.fiat_per_unit)
            .map(|m| Money::from_decimal(m.as_decimal()))
    }
}

/// `amount`, in the unit of `conversion` (`None`: already fiat), in fiat.
///
/// # Errors
/// [`Rejection::AmountOverflow`].
#[inline]
pub fn in_fiat(conversion: Option<&Conversion>, amount: Money) -> Result<Money, Rejection> {
    match conversion {
        None => Ok(amount),
        Some(conversion) => conversion.to_fiat(amount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    #[test]
    fn decimal_fractions_add_exactly() {
        assert_eq!(m("0.1").checked_add(m("0.2")).unwrap(), m("0.3"));
    }

    #[test]
    fn json_numbers_are_read_without_floats() {
        let values: Vec<Money> = serde_json::from_str("[0.1, 0.2, 0.3, 1e2, 7]").unwrap();
        let sum = values[0].checked_add(values[1]).unwrap();
        assert_eq!(sum, values[2]);
        assert_eq!(values[3], Money::from_i64(100));
        assert_eq!(values[4], Money::from_i64(7));
        // A value a binary float cannot hold exactly survives untouched.
        let exact: Money = serde_json::from_str("0.1234567890123456789012345678").unwrap();
        assert_eq!(exact.to_string(), "0.1234567890123456789012345678");
    }

    #[test]
    fn json_numbers_with_too_many_digits_are_rejected_not_rounded() {
        let err = serde_json::from_str::<Money>("1.00000000000000000000000000001").unwrap_err();
        assert!(err.to_string().contains("28 significant digits"), "{err}");
        assert!(serde_json::from_str::<Money>("123456789012345678901234567890").is_err());
        assert!(serde_json::from_str::<Money>("1.2345678901234567890123456789e5").is_err());
        assert_eq!(
            Money::parse("0.00000000000000000000000000001"),
            Err(Rejection::InvalidAmount)
        );
    }

    #[test]
    fn json_strings_are_accepted_as_amounts() {
        let value: Money = serde_json::from_str("\"12.50\"").unwrap();
        assert_eq!(value, m("12.5"));
        assert!(serde_json::from_str::<Money>("\"twelve\"").is_err());
    }

    #[test]
    fn json_output_is_an_exact_number() {
        assert_eq!(serde_json::to_string(&m("0.30")).unwrap(), "0.3");
        assert_eq!(
            serde_json::to_string(&m("12345678901234567890.123")).unwrap(),
            "12345678901234567890.123"
        );
    }

    #[test]
    fn binary_encoding_roundtrips() {
        let config = bincode::config::standard();
        for text in ["0", "-3.25", "79228162514264337593543950335", "0.000001"] {
            let bytes = bincode::serde::encode_to_vec(m(text), config).unwrap();
            let (back, _): (Money, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(back, m(text));
        }
    }

    #[test]
    fn arithmetic_overflow_is_a_rejection() {
        let max = Money::from_decimal(Decimal::MAX);
        assert_eq!(
            max.checked_add(Money::from_i64(1)),
            Err(Rejection::AmountOverflow)
        );
        assert_eq!(
            Money::from_decimal(Decimal::MIN).checked_sub(Money::from_i64(1)),
            Err(Rejection::AmountOverflow)
        );
        assert_eq!(
            max.checked_mul(Decimal::TWO),
            Err(Rejection::AmountOverflow)
        );
    }

    #[test]
    fn exact_sums_refuse_rounding_that_checked_sums_accept() {
        assert_eq!(m("0.1").exact_add(m("0.25")), Some(m("0.35")));
        assert_eq!(m("0.35").exact_sub(m("0.35")), Some(Money::ZERO));
        assert_eq!(Money::ZERO.exact_sub(m("1.5")), Some(m("-1.5")));
        // 28 digits and a fraction: the exact sum needs 30 digits, so checked_add rounds it.
        let big = m("7922816251426433759354395033.5");
        assert!(big.checked_add(Money::from_i64(1)).is_ok());
        assert_eq!(big.exact_add(Money::from_i64(1)), None);
        assert_eq!(big.exact_sub(m("-1")), None);
        let max = Money::from_decimal(Decimal::MAX);
        assert_eq!(max.exact_add(Money::from_i64(1)), None);
        assert_eq!(max.exact_sub(max), Some(Money::ZERO));
    }

    #[test]
    fn max_is_the_larger_amount_whichever_side_it_is_on() {
        assert_eq!(m("3").max(m("5")), m("5"));
        assert_eq!(m("5").max(m("3")), m("5"));
        assert_eq!(m("-2").max(m("-7")), m("-2"));
        assert_eq!(m("-7").max(m("-2")), m("-2"));
    }

    /// A zero left by a subtraction keeps its scale (0.35 - 0.35 is 0.00), and adding it to
    /// anything is still exact (found by mutation testing).
    #[test]
    fn a_zero_with_a_scale_adds_exactly() {
        let zero = m("0.35").checked_sub(m("0.35")).unwrap();
        assert_eq!(zero.as_decimal().scale(), 2);
        assert_eq!(zero.exact_add(m("1")), Some(m("1")));
        assert_eq!(m("1").exact_add(zero), Some(m("1")));
        assert_eq!(m("1").exact_sub(zero), Some(m("1")));
    }

    /// 0.3543950336 + 7922816251426433759 aligned at scale 10 has the mantissa 2^96, the first
    /// that no longer fits in 96 bits: rust_decimal rounds it to scale 9, and the fast path must
    /// hand it over instead of truncating it (found by mutation testing: random operands never
    /// hit the bound exactly).
    #[test]
    fn a_sum_whose_aligned_mantissa_is_exactly_2_pow_96_is_rounded_like_rust_decimal() {
        let fraction = Decimal::new(3_543_950_336, 10);
        let whole = Decimal::from(7_922_816_251_426_433_759_i64);
        let expected = fraction.checked_add(whole).unwrap();
        assert_eq!(expected.to_string(), "7922816251426433759.354395034");
        let bits = |d: Option<Decimal>| d.map(|d| d.serialize());
        assert_eq!(
            bits(fast::add_sub(fraction, whole, false)),
            bits(Some(expected))
        );
        assert_eq!(
            bits(fast::add_sub(fraction, -whole, true)),
            bits(Some(expected))
        );
        assert_eq!(
            Money(fraction).checked_add(Money(whole)),
            Ok(Money(expected))
        );
    }

    /// The text of an amount is at most 64 characters (after trimming), whatever it holds.
    #[test]
    fn amount_texts_longer_than_64_characters_are_refused() {
        let longest = format!("{}1", "0".repeat(63));
        assert_eq!(longest.len(), 64);
        assert_eq!(Money::parse(&longest), Ok(Money::from_i64(1)));
        assert_eq!(
            Money::parse(&format!(" {longest} ")),
            Ok(Money::from_i64(1))
        );
        assert_eq!(
            Money::parse(&format!("0{longest}")),
            Err(Rejection::InvalidAmount)
        );
        assert_eq!(Money::parse(""), Err(Rejection::InvalidAmount));
        assert_eq!(Money::parse("  "), Err(Rejection::InvalidAmount));
    }

    #[test]
    fn scientific_amounts_keep_up_to_28_significant_digits() {
        let digits_28 = Money::parse("1.234567890123456789012345678e3").unwrap();
        assert_eq!(digits_28.to_string(), "1234.567890123456789012345678");
        assert_eq!(
            Money::parse("1.2345678901234567890123456789e3"),
            Err(Rejection::InvalidAmount)
        );
    }

    /// Other human-readable formats than serde_json (config files, `serde_json::Value` without
    /// arbitrary precision) hand integers over as integers, which are exact, and fractions as
    /// binary floats, which are refused.
    #[test]
    fn integers_of_other_formats_are_exact_and_their_floats_are_refused() {
        use serde::de::value::{Error, F64Deserializer, I64Deserializer, U64Deserializer};
        let negative = Money::deserialize(I64Deserializer::<Error>::new(-7)).unwrap();
        assert_eq!(negative, Money::from_i64(-7));
        let large = Money::deserialize(U64Deserializer::<Error>::new(u64::MAX)).unwrap();
        assert_eq!(large.to_string(), "18446744073709551615");
        let float = Money::deserialize(F64Deserializer::<Error>::new(0.25)).unwrap_err();
        assert!(float.to_string().contains("binary float"), "{float}");
    }

    #[test]
    fn only_the_usd_cents_credit_type_counts_in_cents() {
        assert!(CreditType::usd_cents().is_usd_cents());
        assert!(!CreditType::fiat(Id::from_u128(7), "USD", 2).is_usd_cents());
        let custom = CreditType {
            id: Id::from_u128(9),
            name: "tokens".into(),
            currency: None,
            unit: CreditUnit::Custom,
        };
        assert!(!custom.is_usd_cents());
    }

    /// Operands across the ranges `fast` treats differently: 32-, 64- and 96-bit mantissas,
    /// equal and distant scales, signs, and zeros (negative and scaled ones included).
    fn operand() -> impl proptest::strategy::Strategy<Value = Decimal> {
        use proptest::prelude::*;
        let mantissa = prop_oneof![
            Just(0_u128),
            0_u128..16,
            0_u128..(1 << 32),
            (1_u128 << 32) - 8..(1 << 32) + 8,
            0_u128..(1 << 64),
            (1_u128 << 64) - 8..(1 << 64) + 8,
            0_u128..(1 << 96),
            (1_u128 << 96) - 16..(1 << 96),
        ];
        let scale = prop_oneof![0_u32..4, 0_u32..=28, Just(28_u32)];
        (mantissa, scale, any::<bool>()).prop_map(|(m, scale, negative)| {
            let mut d =
                Decimal::from_parts(m as u32, (m >> 32) as u32, (m >> 64) as u32, false, scale);
            d.set_sign_negative(negative);
            d
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 20_000, ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn fast_paths_match_rust_decimal_bit_for_bit(a in operand(), b in operand()) {
            let bits = |d: Option<Decimal>| d.map(|d| d.serialize());
            proptest::prop_assert_eq!(bits(fast::add_sub(a, b, false)), bits(a.checked_add(b)));
            proptest::prop_assert_eq!(bits(fast::add_sub(a, b, true)), bits(a.checked_sub(b)));
            proptest::prop_assert_eq!(bits(fast::mul(a, b)), bits(a.checked_mul(b)));
            proptest::prop_assert_eq!(fast::cmp(a, b), a.cmp(&b));
            proptest::prop_assert_eq!(fast::max(a, b).serialize(), a.max(b).serialize());
            proptest::prop_assert_eq!(fast::min(a, b).serialize(), a.min(b).serialize());
            let (x, y) = (Money(a), Money(b));
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            let exact = x.exact_add(y);
            if let Some(sum) = exact {
                proptest::prop_assert_eq!(Some(sum.0.serialize()), bits(a.checked_add(b)));
            }
        }
    }

    #[test]
    fn minor_units_round_half_up_once() {
        let usd = CreditType::usd_cents();
        assert_eq!(m("1234.5").to_minor_units(&usd), Ok(1235));
        assert_eq!(m("1234.49999").to_minor_units(&usd), Ok(1234));
        let eur = CreditType::fiat(Id::from_u128(7), "EUR", 2);
        assert_eq!(m("10.005").to_minor_units(&eur), Ok(1001));
        let jpy = CreditType::fiat(Id::from_u128(8), "JPY", 0);
        assert_eq!(m("99.5").to_minor_units(&jpy), Ok(100));
        let custom = CreditType {
            id: Id::from_u128(9),
            name: "tokens".into(),
            currency: None,
            unit: CreditUnit::Custom,
        };
        assert_eq!(
            m("1").to_minor_units(&custom),
            Err(Rejection::UnsupportedCreditType)
        );
    }
}
