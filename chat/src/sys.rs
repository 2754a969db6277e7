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

/// Starts a thread that, every few seconds, has glibc return the free pages of its
/// heaps to the system (`malloc_trim`). After a burst — a login storm, a backlog
/// flushed to a slow reader — the memory freed inside the heaps is otherwise kept
/// for good (only the free top of a heap is trimmed), so a server that held a peak
/// keeps the peak's RSS while its connections sit idle.
pub fn spawn_memory_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// How often freed heap memory goes back to the system.
        const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        let spawned = std::thread::Builder::new()
            .name("mem-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only releases free memory; it is thread-safe.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            log::warn!("no memory trimmer thread: {e}");
        }
    }
}
