//! The only module with `unsafe`: thin safe wrappers over the few libc calls the harness needs.
//!
//! Invariants: every pointer handed to libc points at a live, correctly sized local; every file
//! descriptor passed in is borrowed from an owner that outlives the call (`AsFd`), and the only
//! descriptors created here are returned as `OwnedFd` straight away, so none leaks or is closed
//! twice.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// CPU time in seconds of process `pid` (all threads, exited ones included), from the kernel's
/// per-process CPU clock; `None` if the clock cannot be read.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: both out-pointers are valid locals; the calls fail cleanly for a bad pid.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0 && libc::clock_gettime(clock, &mut ts) == 0
    };
    ok.then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// Clock ticks per second, the unit of /proc/PID/stat CPU times.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Lowers the calling thread's scheduling priority to nice `nice` (Linux keeps the nice value
/// per thread; threads it starts afterwards inherit it).
pub fn nice_this_thread(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes no pointers; `who` 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fixes the socket's send buffer at `size` bytes (the kernel doubles it for its bookkeeping),
/// which also turns off its autotuning.
pub fn set_send_buffer(sock: &impl AsFd, size: u32) -> io::Result<()> {
    let value = size as libc::c_int;
    // SAFETY: `value` is a live c_int and its size is passed with it; the descriptor is
    // borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGTERM to `pid`, which must be our own child not yet reaped (so the pid is not reused).
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) takes no pointers; the caller guarantees `pid` is still its child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
}

/// A pipe, read end then write end, with its capacity raised to `size` bytes where allowed.
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ takes an integer; failure (size above the limit) is harmless.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok((r, w))
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel, one of which must be a pipe;
/// returns the bytes moved, 0 at end of input.
pub fn splice(from: &impl AsFd, to: &impl AsFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are borrowed open fds; null offsets mean "current position".
        let n = unsafe {
            libc::splice(
                from.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                to.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                len,
                // No SPLICE_F_MORE: it corks the socket and cost a third of the throughput.
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Raises this process's limit on open files to `want` and returns the soft limit now in
/// force; children started afterwards inherit it. The hard limit is raised too where we may
/// (CAP_SYS_RESOURCE); otherwise the soft limit goes as high as the hard one allows.
/// (`rlim_t` is `u64` on the 64-bit Linux targets the harness runs on.)
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid local for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let set = |cur: u64, max: u64| {
        let new = libc::rlimit { rlim_cur: cur, rlim_max: max };
        // SAFETY: `new` is a valid local; the kernel checks the privilege a raise needs.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 }
    };
    if want > lim.rlim_max && set(want, want) {
        return Ok(want);
    }
    let soft = want.min(lim.rlim_max);
    if !set(soft, lim.rlim_max) {
        return Err(io::Error::last_os_error());
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    /// The nice value field of /proc/thread-self/stat (the 19th, after the command name).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn nice_applies_to_the_calling_thread_and_the_threads_it_starts() {
        let before = own_nice();
        let (mine, childs) = std::thread::spawn(|| {
            super::nice_this_thread(7).unwrap();
            (own_nice(), std::thread::spawn(own_nice).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!((mine, childs), (7, 7));
        assert_eq!(own_nice(), before, "the caller's own priority changed");
    }
}
