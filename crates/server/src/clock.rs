//! The wall clock as text: RFC 3339 in UTC, as responses and log lines write it. The part
//! up to the second is made once a second per thread, not by calendar arithmetic and
//! chrono's formatting on every request; only the fraction is written each time.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// `2026-12-06T00:45:37`, and the second since the epoch it was made for.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Digits after the second's decimal point.
#[derive(Debug, Clone, Copy)]
pub enum Fraction {
    Millis,
    Micros,
}

/// Appends the current time, e.g. `2026-12-06T00:45:37.123Z` (`Millis`) or
/// `2026-12-06T00:45:37.123456Z` (`Micros`); the fraction is truncated, not rounded.
pub fn push_now(text: &mut String, fraction: Fraction) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(made_for, second)| {
        if *made_for != seconds {
            let time = chrono::DateTime::<chrono::Utc>::from(UNIX_EPOCH + since_epoch);
            second.clear();
            let _ = write!(second, "{}", time.format("%Y-%m-%dT%H:%M:%S"));
            *made_for = seconds;
        }
        text.push_str(second);
    });
    let _ = match fraction {
        Fraction::Millis => write!(text, ".{:03}Z", since_epoch.subsec_millis()),
        Fraction::Micros => write!(text, ".{:06}Z", since_epoch.subsec_micros()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(fraction: Fraction) -> chrono::DateTime<chrono::FixedOffset> {
        let mut text = String::new();
        push_now(&mut text, fraction);
        let expected_len = match fraction {
            Fraction::Millis => "2026-12-06T00:45:37.123Z".len(),
            Fraction::Micros => "2026-12-06T00:45:37.123456Z".len(),
        };
        assert_eq!(text.len(), expected_len, "{text}");
        chrono::DateTime::parse_from_rfc3339(&text).unwrap()
    }

    #[test]
    fn the_time_is_utc_now_truncated_to_its_fraction() {
        for (fraction, unit) in [
            (Fraction::Millis, chrono::Duration::milliseconds(1)),
            (Fraction::Micros, chrono::Duration::microseconds(1)),
        ] {
            let before = chrono::Utc::now();
            let first = now(fraction);
            // The second kept from the first call is still the right one for the next.
            let second = now(fraction);
            let after = chrono::Utc::now();
            assert!(first >= before - unit, "{first} before {before}");
            assert!(
                first <= second && second <= after,
                "{first} {second} {after}"
            );
        }
    }

    #[test]
    fn a_new_second_is_written_anew() {
        let first = now(Fraction::Millis);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let later = now(Fraction::Millis);
        assert!(
            later - first >= chrono::Duration::milliseconds(1100),
            "{first} {later}"
        );
    }
}
