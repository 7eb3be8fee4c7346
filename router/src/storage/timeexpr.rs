//! Time expressions of selectors: `_time=[START..END]` where START and END are optional and each
//! is `now()`, `now(-10m)`, `now(+1.5s)` or an RFC 3339 time (`2026-11-22T04:00:00Z`,
//! `2026-11-22T05:00:00.250+01:00`). Durations: `ms`, `s`, `m`, `h`, `d`, `w`.

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

/// Microseconds since the UNIX epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Parses `10m`, `-1.5s`, `250ms`… into signed microseconds.
pub fn parse_duration_us(text: &str) -> Result<i64, TimeError> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| err(text, "expected a number followed by a unit"))?;
    let unit_us = match unit {
        "us" | "µs" => 1.0,
        "ms" => 1e3,
        "s" | "" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        "d" => 86_400e6,
        "w" => 7.0 * 86_400e6,
        _ => return Err(err(text, "unknown unit (use ms, s, m, h, d or w)")),
    };
    let us = n * unit_us;
    if !us.is_finite() || us.abs() > 1e17 {
        return Err(err(text, "duration out of range"));
    }
    Ok(if neg { -(us as i64) } else { us as i64 })
}

/// A duration like `10m` (for `--retain-age`).
pub fn parse_duration(text: &str) -> Result<Duration, TimeError> {
    let us = parse_duration_us(text)?;
    if us < 0 {
        return Err(err(text, "duration must be positive"));
    }
    Ok(Duration::from_micros(us as u64))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 time into microseconds since the UNIX epoch.
pub fn parse_rfc3339_us(text: &str) -> Result<i64, TimeError> {
    let t = text.trim();
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
        t.get(r)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(text, "expected YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)"))
    };
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return Err(err(text, "expected YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)"));
    }
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(err(text, "field out of range"));
    }
    let mut i = 19;
    let mut frac_us = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return Err(err(text, "empty fraction"));
        }
        let digits = t.get(start..end.min(start + 6)).unwrap_or("0");
        frac_us = digits.parse::<i64>().unwrap_or(0) * 10i64.pow(6 - digits.len() as u32);
        i = end;
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { v } else { -v }
        }
        _ => return Err(err(text, "expected Z or ±HH:MM at the end")),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset_s;
    Ok(secs * 1_000_000 + frac_us)
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
}
