//! Time stamps in the legacy `YYYY-MM-DD HH:MM:SS` shape, without a time zone database.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current UTC time as `YYYY-MM-DD HH:MM:SS`: used for a chat frame that
/// arrives without the sender's `time` (legacy clients print that field).
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_unix(secs)
}

/// The current local time (the machine's time zone, as `TZ` or `/etc/localtime`
/// say) as `YYYY-MM-DD HH:MM:SS`: what a client puts in a chat frame's `time`,
/// as the legacy client did. Falls back to UTC if the C library cannot tell.
pub fn now_local() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let t = secs as libc::time_t;
    // SAFETY: localtime_r only reads `t` and writes the `tm` we own.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return format_unix(secs);
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Formats seconds since the Unix epoch (UTC).
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (the well-known era-based conversion).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_unix(1_798_761_599), "2026-12-31 23:59:59");
        assert_eq!(format_unix(-1), "1969-12-31 23:59:59");
        assert_eq!(now().len(), 19);
        assert_eq!(now_local().len(), 19);
    }
}
