//! What `--server-pid` reads about the loaded server from /proc: its resident memory
//! and the CPU time all its threads have used, so the report can divide them by
//! connections held and by messages delivered.

/// The process's resident set in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time used so far by every thread of a process, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub user_us: u64,
    pub sys_us: u64,
}

impl CpuTime {
    /// The time used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            sys_us: self.sys_us.saturating_sub(earlier.sys_us),
        }
    }

    pub fn total_us(&self) -> u64 {
        self.user_us + self.sys_us
    }
}

/// `utime` and `stime` (fields 14 and 15 of /proc/PID/stat), which cover all the
/// process's threads. The text after the last ')' is split, since the command name
/// in parentheses may hold spaces.
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, clock_ticks_per_sec())
}

fn parse_stat(stat: &str, ticks_per_sec: u64) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": state is field 3, so utime (14) is the 12th word and stime the 13th.
    let mut words = rest.split_whitespace().skip(11);
    let utime: u64 = words.next()?.parse().ok()?;
    let stime: u64 = words.next()?.parse().ok()?;
    let us = |ticks: u64| ticks * 1_000_000 / ticks_per_sec.max(1);
    Some(CpuTime {
        user_us: us(utime),
        sys_us: us(stime),
    })
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "4242 (Chat Server) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    5 0 1000 0 0";
        let t = parse_stat(stat, 100).unwrap();
        assert_eq!(t.user_us, 2_500_000);
        assert_eq!(t.sys_us, 750_000);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_time(std::process::id()).is_some());
    }
}
