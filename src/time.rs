//! Wall-clock time as the logs and the configuration write it: RFC 3339 in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats Unix milliseconds as RFC 3339 UTC, e.g. `2026-11-25T21:06:41.123Z`.
pub fn rfc3339_millis(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let ms = (unix_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(0..=9999).contains(&y) {
        return format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod % 3600) / 60,
            sod % 60
        );
    }
    // Digits written in place: every access-log and audit line carries one of these, and
    // `format!` with seven padded fields cost more than the rest of the conversion.
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, m as u64);
    put(8, 2, d as u64);
    put(11, 2, (sod / 3600) as u64);
    put(14, 2, (sod % 3600 / 60) as u64);
    put(17, 2, (sod % 60) as u64);
    put(20, 3, u64::from(ms));
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A time, as RFC 3339 UTC with milliseconds (the epoch for times before it).
pub fn rfc3339(t: SystemTime) -> String {
    rfc3339_millis(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&mo) || !(1..=month_days).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    // Byte slicing below needs ASCII (a multi-byte character would split).
    if !rest.is_ascii() {
        return None;
    }
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days-from-civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Unix seconds of an HTTP date in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110
/// 5.6.7), as `Retry-After` may carry it. The obsolete RFC 850 and asctime forms are not read.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == mon)? + 1;
    let iso = format!("{year}-{m:02}-{:0>2}T{time}Z", day);
    parse_rfc3339(&iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
        // Every field's digits, against the parser, over a spread of times.
        for k in 0..2_000u128 {
            let t = k * 86_400_000 * 7 + k * 3_723_456;
            let s = rfc3339_millis(t);
            assert_eq!(parse_rfc3339(&s), Some((t / 1000) as i64), "{s}");
            assert_eq!(s[20..23].parse::<u128>().unwrap(), t % 1000, "{s}");
        }
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_641_201_123),
            "2026-11-25T21:13:21.123Z"
        );
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(
            parse_rfc3339("2026-11-25T21:13:21.123Z"),
            Some(1_795_641_201)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T22:13:21+01:00"),
            Some(1_795_641_201)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T20:13:21-01:00"),
            Some(1_795_641_201)
        );
        for bad in [
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-11-25T21:13:21",
            "x026-11-25T21:13:21Z",
            "2026-11-25T21:13:21.Z",
            "2027-02-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2027-01-31T00:00:00+0é00",
            "2027-01-31T00:00:00é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_http_date("Sun, 6 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"),
            None,
            "GMT only"
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("soon"), None);
    }
}
