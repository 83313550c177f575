//! Revenue, exactly: an amount read from an event's properties as decimal
//! text (never through a float) with four decimal places, the scale of the
//! store's `DECIMAL(18,4)` columns.

use super::site::SiteSettings;
use serde_json::{Map, Value};

/// Decimal places kept.
pub const SCALE: u32 = 4;
/// Largest absolute amount in units of 10^-4 (`DECIMAL(18,4)`).
const MAX_UNITS: i128 = 999_999_999_999_999_999;

/// An amount in units of 10^-[`SCALE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount(pub i128);

impl Amount {
    /// Parses decimal text (`199.99`, `-3`, `1e3`, `"12.50"`); digits past
    /// the fourth decimal are rounded half away from zero. `None` for
    /// anything else or out of range.
    pub fn parse(text: &str) -> Option<Amount> {
        let t = text.trim();
        let (negative, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (mantissa, exponent) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
            None => (t, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let digits: String = int.chars().chain(frac.chars()).collect();
        // value = digits × 10^(exponent − len(frac)); we want units of 10^-4.
        let shift = exponent - frac.len() as i32 + SCALE as i32;
        let digits = digits.trim_start_matches('0');
        if digits.len() > 40 || (shift > 0 && digits.len() as i32 + shift > 38) {
            return (digits.is_empty()).then_some(Amount(0));
        }
        let n: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let units = if shift >= 0 {
            n.checked_mul(10i128.checked_pow(shift as u32)?)?
        } else {
            let d = 10i128
                .checked_pow(shift.unsigned_abs())
                .unwrap_or(i128::MAX);
            (n + d / 2) / d
        };
        (units <= MAX_UNITS).then_some(Amount(if negative { -units } else { units }))
    }

    /// The amount of a JSON value: a number, or a string holding one.
    pub fn of_value(v: &Value) -> Option<Amount> {
        match v {
            Value::Number(n) => Amount::parse(&n.to_string()),
            Value::String(s) => Amount::parse(s),
            _ => None,
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scale = 10i128.pow(SCALE);
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.abs();
        write!(f, "{sign}{}.{:04}", abs / scale, abs % scale)
    }
}

/// An event's revenue: an amount and its currency (upper-cased; empty when
/// the event names none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revenue {
    /// The amount.
    pub amount: Amount,
    /// ISO 4217 code as sent, upper-cased, or empty.
    pub currency: String,
}

/// The revenue an event's properties carry under `settings`' rule: the
/// first revenue property present with a number, and `currency`.
pub fn revenue_of(properties: &Map<String, Value>, settings: &SiteSettings) -> Option<Revenue> {
    let amount = settings
        .revenue_properties()
        .iter()
        .find_map(|p| properties.get(*p).and_then(Amount::of_value))?;
    let currency = match properties.get("currency") {
        Some(Value::String(c)) => c.trim().to_uppercase(),
        _ => String::new(),
    };
    Some(Revenue { amount, currency })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<String> {
        Amount::parse(s).map(|a| a.to_string())
    }

    #[test]
    fn parses_decimal_text_exactly() {
        assert_eq!(p("199.99").as_deref(), Some("199.9900"));
        assert_eq!(p("-3").as_deref(), Some("-3.0000"));
        assert_eq!(p("1e3").as_deref(), Some("1000.0000"));
        assert_eq!(p("1.5E-2").as_deref(), Some("0.0150"));
        assert_eq!(p("0.00005").as_deref(), Some("0.0001"));
        assert_eq!(p("0.1").as_deref(), Some("0.1000"));
        assert_eq!(p("00012.5").as_deref(), Some("12.5000"));
        assert_eq!(
            p("99999999999999.9999").as_deref(),
            Some("99999999999999.9999")
        );
        for bad in ["", "abc", "1.2.3", "1e", "--1", "1e999", "100000000000000"] {
            assert_eq!(Amount::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn revenue_follows_the_site_rule() {
        let props: Map<String, Value> =
            serde_json::from_str(r#"{"total":"19.90","value":null,"currency":"eur"}"#).unwrap();
        let r = revenue_of(&props, &SiteSettings::default()).unwrap();
        assert_eq!(
            (r.amount.to_string(), r.currency.as_str()),
            ("19.9000".into(), "EUR")
        );
        let settings = SiteSettings {
            revenue_property: Some("amount".into()),
            ..Default::default()
        };
        assert_eq!(revenue_of(&props, &settings), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused(text in ".{0,60}") {
            let _ = Amount::parse(&text);
        }

        #[test]
        fn decimals_round_trip_exactly(units in -999_999_999_999_999_999i128..=999_999_999_999_999_999) {
            let a = Amount(units);
            proptest::prop_assert_eq!(Amount::parse(&a.to_string()), Some(a));
        }
    }
}
