//! Time expressions of selectors: `_time=[START..END]` where START and END are optional and each
//! is `now()`, `now(-10m)`, `now(+1.5s)` or an RFC 3339 time (`2026-11-22T04:00:00Z`,
//! `2026-11-22T05:00:00.250+01:00`). Durations are [`humantime`]'s: `250ms`, `1.5s`, `10m`,
//! `24h`, `2d`, `1w`, also combined (`1h 30m`); a bare number is seconds. RFC 3339 times are
//! parsed by [`humantime::parse_rfc3339_weak`] once a zone (`Z` or `±HH:MM`) has been checked
//! and applied here (humantime itself reads UTC only), so years start at 1970.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a time expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time expression {text:?}: {why}")]
pub struct TimeError {
    /// The text.
    pub text: String,
    /// What is wrong.
    pub why: &'static str,
}

fn err(text: &str, why: &'static str) -> TimeError {
    TimeError {
        text: text.to_string(),
        why,
    }
}

const RFC3339_SHAPE: &str = "expected YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)";

/// Microseconds since the UNIX epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Parses `10m`, `-1.5s`, `250ms`, `1h 30m`… into signed microseconds (a bare number is
/// seconds; precision below a microsecond is dropped).
pub fn parse_duration_us(text: &str) -> Result<i64, TimeError> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        humantime::parse_duration(&format!("{t}s"))
    } else {
        humantime::parse_duration(t)
    }
    .map_err(|e| {
        use humantime::DurationError as E;
        err(
            text,
            match e {
                E::Empty => "empty duration",
                E::NumberExpected(_) | E::InvalidCharacter(_) => {
                    "expected a number followed by a unit, e.g. 250ms, 1.5s, 10m, 24h"
                }
                E::UnknownUnit { .. } => "unknown unit (use us, ms, s, m, h, d or w)",
                E::NumberOverflow => "duration out of range or finer than a nanosecond",
            },
        )
    })?;
    let us = i64::try_from(d.as_micros()).map_err(|_| err(text, "duration out of range"))?;
    Ok(if neg { -us } else { us })
}

/// A duration like `10m` (for `--retain-age`).
pub fn parse_duration(text: &str) -> Result<Duration, TimeError> {
    let us = parse_duration_us(text)?;
    if us < 0 {
        return Err(err(text, "duration must be positive"));
    }
    Ok(Duration::from_micros(us.unsigned_abs()))
}

/// Splits the zone off an RFC 3339 time: the rest and the offset east of UTC in seconds.
fn split_zone(t: &str) -> Option<(&str, i64)> {
    if let Some(rest) = t.strip_suffix(['Z', 'z']) {
        return Some((rest, 0));
    }
    let at = t.len().checked_sub(6)?;
    let zone = t.get(at..)?.as_bytes();
    let sign = match zone.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digit = |i: usize| -> Option<i64> {
        zone.get(i)
            .filter(|b| b.is_ascii_digit())
            .map(|b| i64::from(b - b'0'))
    };
    if zone.get(3) != Some(&b':') {
        return None;
    }
    let (h, m) = (digit(1)? * 10 + digit(2)?, digit(4)? * 10 + digit(5)?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((t.get(..at)?, sign * (h * 3600 + m * 60)))
}

/// Parses an RFC 3339 time into microseconds since the UNIX epoch.
pub fn parse_rfc3339_us(text: &str) -> Result<i64, TimeError> {
    let t = text.trim();
    let (local, offset_s) = split_zone(t).ok_or_else(|| err(text, RFC3339_SHAPE))?;
    // After the seconds, only a non-empty fraction (humantime would also take a stray zone).
    match local.get(19..) {
        Some("") => {}
        Some(f)
            if f.len() > 1
                && f.starts_with('.')
                && f.bytes().skip(1).all(|b| b.is_ascii_digit()) => {}
        _ => return Err(err(text, RFC3339_SHAPE)),
    }
    // RFC 3339 allows a lowercase `t` (and, as a note, a space) between date and time;
    // humantime takes `T` or a space.
    let mut local = local.to_string();
    if local.as_bytes().get(10) == Some(&b't') {
        local.replace_range(10..11, "T");
    }
    let at = humantime::parse_rfc3339_weak(&local).map_err(|e| {
        use humantime::TimestampError as E;
        err(
            text,
            match e {
                E::OutOfRange => "field out of range (years from 1970)",
                E::InvalidDigit | E::InvalidFormat => RFC3339_SHAPE,
            },
        )
    })?;
    let us = at
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .ok_or_else(|| err(text, "field out of range (years from 1970)"))?;
    Ok(us - offset_s * 1_000_000)
}

/// Parses one bound: `now()`, `now(-10m)`, or RFC 3339.
pub fn parse_instant_us(text: &str, now: i64) -> Result<i64, TimeError> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("now(").and_then(|r| r.strip_suffix(')')) {
        if inner.trim().is_empty() {
            return Ok(now);
        }
        return Ok(now.saturating_add(parse_duration_us(inner)?));
    }
    parse_rfc3339_us(t)
}

/// Parses `[START..END]` into an inclusive range of microseconds since the epoch.
pub fn parse_range(text: &str, now: i64) -> Result<(i64, i64), TimeError> {
    let t = text.trim();
    let inner = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| err(text, "expected [START..END]"))?;
    let (a, b) = inner
        .split_once("..")
        .ok_or_else(|| err(text, "expected [START..END]"))?;
    let start = if a.trim().is_empty() {
        i64::MIN
    } else {
        parse_instant_us(a, now)?
    };
    let end = if b.trim().is_empty() {
        i64::MAX
    } else {
        parse_instant_us(b, now)?
    };
    if start > end {
        return Err(err(text, "START is after END"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("10m").unwrap(), 600_000_000);
        assert_eq!(parse_duration_us("-1.5s").unwrap(), -1_500_000);
        assert_eq!(parse_duration_us("250ms").unwrap(), 250_000);
        assert_eq!(parse_duration_us("2d").unwrap(), 172_800_000_000);
        assert!(parse_duration_us("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_us("2000-03-01T00:00:00Z").unwrap(),
            951_868_800_000_000
        );
        assert_eq!(
            parse_rfc3339_us("2026-11-22T05:00:00.25+01:00").unwrap(),
            parse_rfc3339_us("2026-11-22T04:00:00.250Z").unwrap()
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-22",
            "2026-11-22T04:00:00",
            "yesterday",
        ] {
            assert!(parse_rfc3339_us(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        let now = 1_000_000_000_000;
        assert_eq!(
            parse_range("[now(-10m)..]", now).unwrap(),
            (now - 600_000_000, i64::MAX)
        );
        assert_eq!(parse_range("[..now()]", now).unwrap(), (i64::MIN, now));
        assert_eq!(
            parse_range("[now(-1h)..now(-5m)]", now).unwrap(),
            (now - 3_600_000_000, now - 300_000_000)
        );
        assert_eq!(
            parse_range("[1970-01-01T00:00:01Z..]", now).unwrap().0,
            1_000_000
        );
        assert!(parse_range("now(-1m)..", now).is_err());
        assert!(parse_range("[now()..now(-1m)]", now).is_err());
    }

    #[test]
    fn more_durations() {
        assert_eq!(
            parse_duration_us("10").unwrap(),
            10_000_000,
            "a bare number is seconds"
        );
        assert_eq!(parse_duration_us("1.5").unwrap(), 1_500_000);
        assert_eq!(parse_duration_us("+2s").unwrap(), 2_000_000);
        assert_eq!(parse_duration_us(" 1h 30m ").unwrap(), 5_400_000_000);
        assert_eq!(parse_duration_us("1w").unwrap(), 604_800_000_000);
        assert_eq!(parse_duration_us("750us").unwrap(), 750);
        assert_eq!(parse_duration_us("0").unwrap(), 0);
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
    }

    #[test]
    fn bad_durations_are_clear_errors() {
        for (bad, why) in [
            ("", "empty duration"),
            ("-", "empty duration"),
            (
                "ms",
                "expected a number followed by a unit, e.g. 250ms, 1.5s, 10m, 24h",
            ),
            (
                "1.s",
                "expected a number followed by a unit, e.g. 250ms, 1.5s, 10m, 24h",
            ),
            ("1e3s", "unknown unit (use us, ms, s, m, h, d or w)"),
            ("5 parsecs", "unknown unit (use us, ms, s, m, h, d or w)"),
            ("0.5ns", "duration out of range or finer than a nanosecond"),
            (
                "99999999999999999999h",
                "duration out of range or finer than a nanosecond",
            ),
            (
                "100000000000000w",
                "duration out of range or finer than a nanosecond",
            ),
            (
                "--1s",
                "expected a number followed by a unit, e.g. 250ms, 1.5s, 10m, 24h",
            ),
        ] {
            let e = parse_duration_us(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert_eq!(e.why, why, "{bad:?}");
            assert!(e.to_string().contains("invalid time expression"), "{e}");
        }
        // Microseconds overflow i64 even though the Duration itself fits.
        assert_eq!(
            parse_duration_us("300000000y").unwrap_err().why,
            "duration out of range"
        );
        assert_eq!(
            parse_duration("-1s").unwrap_err().why,
            "duration must be positive"
        );
    }

    #[test]
    fn rfc3339_zones_and_case() {
        let utc = parse_rfc3339_us("2026-11-22T04:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_us("2026-11-22t04:00:00z").unwrap(), utc);
        assert_eq!(parse_rfc3339_us("2026-11-22 04:00:00Z").unwrap(), utc);
        assert_eq!(parse_rfc3339_us("2026-11-22T04:00:00+00:00").unwrap(), utc);
        assert_eq!(parse_rfc3339_us("2026-11-21T23:30:00-04:30").unwrap(), utc);
        assert_eq!(
            parse_rfc3339_us("2026-11-22T04:00:00.123456789Z").unwrap(),
            utc + 123_456
        );
        // An offset may take a time just after the epoch (in its zone) before it.
        assert_eq!(
            parse_rfc3339_us("1970-01-01T00:30:00+01:00").unwrap(),
            -1_800_000_000
        );
    }

    #[test]
    fn bad_rfc3339_is_a_clear_error() {
        for (bad, why) in [
            ("2026-11-22T04:00:00", RFC3339_SHAPE),
            ("2026-11-22T04:00:00+01", RFC3339_SHAPE),
            ("2026-11-22T04:00:00+1:000", RFC3339_SHAPE),
            ("2026-11-22T04:00:00+24:00", RFC3339_SHAPE),
            ("2026-11-22T04:00:00.Z", RFC3339_SHAPE),
            ("2026-11-22T04:00:00ZZ", RFC3339_SHAPE),
            ("2026-11-22T04:00:00.5+00:00Z", RFC3339_SHAPE),
            ("2026-11-22X04:00:00Z", RFC3339_SHAPE),
            ("2026-1a-22T04:00:00Z", RFC3339_SHAPE),
            ("2026-11-22T04:00:00\u{e9}Z", RFC3339_SHAPE),
            ("2026-11-22\u{e9}04:00:00Z", RFC3339_SHAPE),
            (
                "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}Z",
                RFC3339_SHAPE,
            ),
            ("", RFC3339_SHAPE),
            ("Z", RFC3339_SHAPE),
            (
                "2026-02-30T00:00:00Z",
                "field out of range (years from 1970)",
            ),
            (
                "2026-11-22T24:00:00Z",
                "field out of range (years from 1970)",
            ),
            (
                "1969-12-31T23:59:59Z",
                "field out of range (years from 1970)",
            ),
        ] {
            let e = parse_rfc3339_us(bad).unwrap_err();
            assert_eq!((e.text.as_str(), e.why), (bad, why), "{bad:?}");
        }
    }

    #[test]
    fn bad_ranges_are_errors_not_panics() {
        let now = 1_000_000_000_000;
        for bad in [
            "",
            "[",
            "]",
            "[]",
            "[..",
            "..]",
            "[now(..]",
            "[now(-)..]",
            "[now(x)..]",
            "[yesterday..]",
            "[..2026-11-22T04:00:00]",
            "[\u{e9}..\u{e9}]",
            "[now(-10m)...]",
        ] {
            assert!(parse_range(bad, now).is_err(), "{bad:?}");
        }
        let e = parse_range("[now(-5 parsecs)..]", now).unwrap_err();
        assert_eq!(e.text, "-5 parsecs");
    }
}
