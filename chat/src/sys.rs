//! Process settings the binaries share.

/// Raises this process's descriptor limit as far as it may go — every connection
/// is a descriptor. As root the hard limit itself is raised (up to the kernel's
/// `fs.nr_open`); otherwise the soft limit goes up to the hard one. Returns the soft
/// limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = (nr_open as libc::rlim_t).max(lim.rlim_max);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        lim.rlim_cur
    }
}

/// Makes glibc's allocator return large blocks (256 KiB and up) to the system when
/// they are freed. By default glibc raises that threshold to the size of the
/// largest block freed so far, so after the first password hash (an argon2 block
/// of 19 MiB) every worker thread's arena keeps its own 19 MiB forever; with this,
/// the server's memory returns to what its connections use once logins are done.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called once at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
