//! The remote's sandbox, applied once everything it needs is open (disk
//! images, the control socket, its disk worker threads) and before it
//! serves anything: an optional drop to an unprivileged user,
//! no_new_privs, and a seccomp filter that allows only the system calls
//! serving needs.
//!
//! The filter is built with rust-vmm's seccompiler (Firecracker's), not
//! hand-written BPF. A call outside it raises SIGSYS (SECCOMP_RET_TRAP),
//! whose handler prints the call's number and exits with status 31, so the
//! VMM's log shows which call it was instead of a bare "killed".
//!
//! What stays out: opening files (open, openat, ...), creating sockets
//! other than AF_UNIX pairs, exec, fork (clone is allowed with CLONE_THREAD
//! only), ptrace, kill (tgkill only within this process), executable
//! mappings, and everything else not listed in [`allowed`].

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::user::{Credentials, UserError, UserSpec, drop_to};

/// The exit status of a remote stopped by the filter: SIGSYS's number.
pub const BLOCKED_EXIT: i32 = 31;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    User(#[from] UserError),
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot install the SIGSYS handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
}

/// What the sandbox does; from `vmm remote lsi` options.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Become this user (the remote must run as root).
    pub user: Option<UserSpec>,
    /// Skip no_new_privs and seccomp (`--no-sandbox`), for debugging.
    pub disabled: bool,
}

/// A sandbox ready to apply: users resolved and filters compiled up
/// front, so that applying it needs no file and no allocation.
pub struct Sandbox {
    user: Option<Credentials>,
    /// Filters that turn clone3 into ENOSYS and openat into EACCES, then
    /// the allow-list (in that order: installing a filter calls prctl,
    /// which the allow-list refuses).
    filters: Option<[BpfProgram; 3]>,
    syscalls: usize,
    /// glibc's malloc, past 8 arenas, reads how many CPUs are online
    /// from /sys to set its limit; setting the limit ourselves spares it
    /// that open.
    malloc_arenas: libc::c_int,
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, SandboxError> {
    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(SandboxError::Build)?;
    SeccompRule::new(vec![c]).map_err(SandboxError::Build)
}

/// Allowed when argument `arg` equals `value`.
fn arg_eq(arg: u8, value: u64) -> Result<Vec<SeccompRule>, SandboxError> {
    Ok(vec![cond(arg, SeccompCmpOp::Eq, value)?])
}

/// Allowed when every bit of `bits` in argument `arg` is set / clear.
fn arg_bits(arg: u8, bits: u64, set: bool) -> Result<Vec<SeccompRule>, SandboxError> {
    let value = if set { bits } else { 0 };
    Ok(vec![cond(arg, SeccompCmpOp::MaskedEq(bits), value)?])
}

/// The system calls the remote makes once sandboxed, found by running the
/// LSI end-to-end tests (guest driver, fio, file systems, two vCPUs,
/// ioregion fds) under the filter, and the remote under strace with a
/// scripted VMM. A few more cover rare but legitimate paths (abort on a
/// double panic, realloc of large blocks). Everything else traps.
fn allowed() -> Result<Rules, SandboxError> {
    let any = Vec::new;
    let prot_exec = libc::PROT_EXEC as u64;
    // A new thread shares everything with us; any other clone is a fork.
    let thread = (libc::CLONE_THREAD | libc::CLONE_VM) as u64;
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    Ok([
        // Control socket, ioregion fds, eventfds, irqfds, log lines.
        (libc::SYS_read, any()),
        (libc::SYS_write, any()),
        (libc::SYS_recvfrom, any()),
        (libc::SYS_sendto, any()),
        (libc::SYS_recvmsg, any()),
        (libc::SYS_sendmsg, any()),
        (libc::SYS_poll, any()),
        (libc::SYS_ppoll, any()),
        // The interrupt line's set of acknowledgements to wait for, and the
        // set of posted-write region fds (glibc waits with epoll_wait here,
        // epoll_pwait where the kernel lacks the first).
        (libc::SYS_epoll_create1, any()),
        (libc::SYS_epoll_ctl, any()),
        (libc::SYS_epoll_wait, any()),
        (libc::SYS_epoll_pwait, any()),
        (libc::SYS_close, any()),
        // The logger asks whether stderr is a terminal (isatty) per line.
        (libc::SYS_ioctl, arg_eq(1, libc::TCGETS)?),
        // A copy of the register mirror's memfd for the VMM (a dup grants
        // nothing new).
        // Debug builds of std also check that an fd is open before they
        // close it (F_GETFD): harmless, and without it a debug remote dies
        // at its first close.
        (
            libc::SYS_fcntl,
            vec![
                cond(1, SeccompCmpOp::Eq, libc::F_DUPFD_CLOEXEC as u64)?,
                cond(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?,
            ],
        ),
        // New ioregion fds; only pairs, never a socket to elsewhere.
        (libc::SYS_socketpair, arg_eq(0, libc::AF_UNIX as u64)?),
        // Disk I/O.
        (libc::SYS_pread64, any()),
        (libc::SYS_pwrite64, any()),
        // qcow2 (imago) reads and writes through iovecs, and grows the
        // image file with ftruncate when it allocates clusters (a remote
        // that may write the image may as well size it).
        (libc::SYS_preadv, any()),
        (libc::SYS_pwritev, any()),
        // A read served at once if the page cache holds it (RWF_NOWAIT).
        (libc::SYS_preadv2, any()),
        (libc::SYS_ftruncate, any()),
        (libc::SYS_fdatasync, any()),
        // UNMAP: holes in the image, and nothing else fallocate does.
        (
            libc::SYS_fallocate,
            arg_eq(
                1,
                (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            )?,
        ),
        // Sizes an fd it was handed (guest RAM) before mapping it.
        (libc::SYS_fstat, any()),
        (libc::SYS_fsync, any()),
        // Memory: the allocator, thread stacks, guest RAM (SYNC_SYSMEM
        // maps memfds shared); never executable.
        (libc::SYS_brk, any()),
        (libc::SYS_mmap, arg_bits(2, prot_exec, false)?),
        (libc::SYS_mprotect, arg_bits(2, prot_exec, false)?),
        (libc::SYS_munmap, any()),
        (libc::SYS_mremap, any()),
        (libc::SYS_madvise, any()),
        // Threads: one per ioregion fd, started on demand.
        (libc::SYS_clone, arg_bits(0, thread, true)?),
        (libc::SYS_clone3, any()), // ENOSYS, see `Sandbox::new`
        (libc::SYS_openat, any()), // EACCES, see `Sandbox::new`
        (libc::SYS_set_robust_list, any()),
        (libc::SYS_rseq, any()),
        (libc::SYS_sched_getaffinity, any()),
        (libc::SYS_prctl, arg_eq(0, libc::PR_SET_NAME as u64)?),
        (libc::SYS_futex, any()),
        (libc::SYS_sched_yield, any()),
        (libc::SYS_exit, any()),
        (libc::SYS_exit_group, any()),
        // Signals: stack-overflow handlers, abort on a double panic.
        (libc::SYS_rt_sigreturn, any()),
        (libc::SYS_rt_sigprocmask, any()),
        (libc::SYS_rt_sigaction, any()),
        (libc::SYS_sigaltstack, any()),
        (libc::SYS_getpid, any()),
        (libc::SYS_gettid, any()),
        (libc::SYS_tgkill, arg_eq(0, pid)?),
        // Time (where the vDSO is missing) and randomness (hash maps).
        (libc::SYS_clock_gettime, any()),
        (libc::SYS_getrandom, any()),
    ]
    .into_iter()
    .collect())
}

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(SandboxError::Build)?;
    SeccompFilter::new(rules, mismatch, on_match, arch)
        .and_then(BpfProgram::try_from)
        .map_err(SandboxError::Build)
}

impl Sandbox {
    pub fn new(options: &SandboxOptions) -> Result<Self, SandboxError> {
        let user = options.user.as_ref().map(UserSpec::resolve).transpose()?;
        if options.disabled {
            return Ok(Sandbox {
                user,
                filters: None,
                syscalls: 0,
                malloc_arenas: 0,
            });
        }
        let rules = allowed()?;
        let syscalls = rules.len();
        let main = compile(rules, SeccompAction::Trap, SeccompAction::Allow)?;
        // glibc starts threads with clone3 and falls back to clone on
        // ENOSYS. clone3's flags sit in memory the filter cannot read, so
        // it is refused here (the main filter allows it, and of two
        // filters' verdicts the kernel takes ERRNO over ALLOW) and threads
        // come from the clone checked above.
        let clone3 = compile(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?;
        // Opening files fails with EACCES rather than ending the remote:
        // glibc's malloc, the first time it shrinks a thread's heap, reads
        // /proc/sys/vm/overcommit_memory, and copes when it cannot. Any
        // other open fails the same way. (Found by fuzzing's sibling: a
        // guest writing 1 MiB blocks to a full disk.)
        let openat = compile(
            [(libc::SYS_openat, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?;
        Ok(Sandbox {
            user,
            filters: Some([clone3, openat, main]),
            syscalls,
            // glibc's own default: 8 per CPU.
            malloc_arenas: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_mul(8)
                .try_into()
                .unwrap_or(libc::c_int::MAX),
        })
    }

    /// How many system calls the filter allows.
    pub fn syscalls(&self) -> usize {
        self.syscalls
    }

    /// Drops the user, then confines every thread of the process. Logs
    /// once what was done.
    pub fn apply(&self) -> Result<(), SandboxError> {
        let uid = match self.user {
            Some(creds) => {
                drop_to(creds)?;
                format!(", uid {} gid {}", creds.uid, creds.gid)
            }
            None => {
                // SAFETY: geteuid cannot fail.
                if unsafe { libc::geteuid() } == 0 {
                    log::info!("remote runs as root; --user NAME|UID[:GID] drops to another user");
                }
                String::new()
            }
        };
        if self.filters.is_none() {
            log::warn!("remote not sandboxed (--no-sandbox / sandbox=off){uid}");
            return Ok(());
        }
        self.confine(true)?;
        log::info!(
            "remote sandboxed: seccomp ({} syscalls), no_new_privs{uid}",
            self.syscalls
        );
        Ok(())
    }

    /// Sets no_new_privs, installs the SIGSYS handler and the filters, on
    /// every thread (`all_threads`) or the calling one. Allocates nothing,
    /// so it is also safe in a child forked from a threaded process.
    pub fn confine(&self, all_threads: bool) -> Result<(), SandboxError> {
        let Some(filters) = &self.filters else {
            return Ok(());
        };
        // SAFETY: mallopt only sets a malloc tunable.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, self.malloc_arenas) };
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
        }
        install_sigsys_handler()?;
        for filter in filters {
            let applied = if all_threads {
                seccompiler::apply_filter_all_threads(filter)
            } else {
                seccompiler::apply_filter(filter)
            };
            applied.map_err(SandboxError::Install)?;
        }
        Ok(())
    }
}

/// `siginfo_t` as the kernel fills it for SIGSYS (`_sigsys` in the union);
/// the libc crate has no accessor for these fields.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Formats "vmm-remote: seccomp: blocked syscall N ..." into `buf` with
/// no allocation; returns the length used.
/// Where the executable is loaded (static PIE): `offset` in the blocked
/// message is the call site relative to it, for `addr2line -e vmm OFFSET`.
static IMAGE_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn record_image_base() {
    // SAFETY: getauxval only reads the auxiliary vector.
    let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
    // The program headers follow the 64-byte ELF header.
    IMAGE_BASE.store(
        phdr.saturating_sub(64),
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn blocked_message(syscall: i32, call_addr: usize, buf: &mut [u8; 160]) -> usize {
    const HEAD: &[u8] = b"vmm-remote: seccomp: blocked syscall ";
    const TAIL: &[u8] =
        b"; exiting (--no-sandbox or sandbox=off runs the remote without seccomp)\n";
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(HEAD);
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut n = i64::from(syscall).unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if syscall < 0 {
        i -= 1;
        digits[i] = b'-';
    }
    put(&digits[i..]);
    let base = IMAGE_BASE.load(std::sync::atomic::Ordering::Relaxed);
    if call_addr != 0 && base != 0 && call_addr > base {
        put(b" at offset 0x");
        let mut hex = [0u8; 16];
        let mut v = call_addr - base;
        let mut j = hex.len();
        loop {
            j -= 1;
            hex[j] = b"0123456789abcdef"[v & 0xf];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        put(&hex[j..]);
    }
    put(TAIL);
    len
}

extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler,
    // and for a seccomp SIGSYS its union holds `_sigsys`.
    let (syscall, call_addr) = unsafe {
        let info = &*info.cast::<SigsysInfo>();
        (info.syscall, info.call_addr as usize)
    };
    let mut buf = [0u8; 160];
    let len = blocked_message(syscall, call_addr, &mut buf);
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by
    // the filter; `buf[..len]` is initialised.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(BLOCKED_EXIT);
    }
}

fn install_sigsys_handler() -> Result<(), SandboxError> {
    record_image_base();
    // SAFETY: a zeroed sigaction is a valid starting point; we fill it in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `action` is initialised and the handler only makes
    // async-signal-safe calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(SandboxError::Signal(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn the_message_names_the_call() {
        let mut buf = [0u8; 160];
        let len = blocked_message(257, 0, &mut buf);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("vmm-remote: seccomp: blocked syscall 257; exiting"));
        assert!(text.ends_with("without seccomp)\n"));
        let len = blocked_message(0, 0, &mut buf);
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .contains("syscall 0;")
        );
        let len = blocked_message(-1, 0, &mut buf);
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .contains("syscall -1;")
        );
    }

    /// How a forked child ended, and what it wrote to its stderr.
    struct Ended {
        status: libc::c_int,
        stderr: String,
    }

    /// Runs `body` in a forked child whose stderr is a pipe; the child
    /// exits 0 if `body` returns. The test process itself is never
    /// sandboxed. `body` must stick to plain system calls: the child of a
    /// threaded process may not take locks other threads held.
    fn in_child(body: impl FnOnce()) -> Ended {
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two ends.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fork; the child only runs `body` and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain fd calls; the child never returns from here.
            unsafe {
                libc::dup2(fds[1], libc::STDERR_FILENO);
                body();
                libc::_exit(0);
            }
        }
        // SAFETY: our own end of the pipe, closed once.
        unsafe { libc::close(fds[1]) };
        // SAFETY: the read end is ours alone from here on.
        let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child, writing only `status`.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the sandboxed child hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let stderr = std::io::read_to_string(std::fs::File::from(read_end)).unwrap();
        Ended { status, stderr }
    }

    /// Writes `text` to stderr with write(2) alone.
    fn say(text: &[u8]) {
        // SAFETY: the pointer and length describe `text`.
        unsafe { libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len()) };
    }

    fn sandbox() -> Sandbox {
        Sandbox::new(&SandboxOptions::default()).unwrap()
    }

    fn exited(e: &Ended) -> Option<i32> {
        libc::WIFEXITED(e.status).then(|| libc::WEXITSTATUS(e.status))
    }

    #[test]
    fn allowed_calls_work_opens_fail_and_others_are_stopped_with_their_number() {
        let sandbox = sandbox();
        assert!(sandbox.syscalls() > 30);
        let path = c"/etc/hostname";
        let ended = in_child(|| {
            sandbox.confine(false).expect("confine");
            let mut pfd = libc::pollfd {
                fd: libc::STDERR_FILENO,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd; getpid cannot fail.
            let ok = unsafe { libc::poll(&mut pfd, 1, 0) == 1 && libc::getpid() > 0 };
            say(if ok {
                b"allowed ok\n"
            } else {
                b"allowed FAILED\n"
            });
            // SAFETY: a plain open; the filter answers it with EACCES.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            say(if fd < 0 && errno == Some(libc::EACCES) {
                b"open refused\n"
            } else {
                b"open NOT refused\n"
            });
            let mut buf = [0u8; 64];
            // SAFETY: getcwd writes at most 64 bytes into `buf`.
            unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
            say(b"getcwd was not stopped\n");
        });
        assert_eq!(exited(&ended), Some(BLOCKED_EXIT), "{}", ended.stderr);
        assert!(
            ended.stderr.starts_with("allowed ok\nopen refused\n"),
            "{}",
            ended.stderr
        );
        assert!(
            ended.stderr.contains(&format!(
                "vmm-remote: seccomp: blocked syscall {}",
                libc::SYS_getcwd
            )),
            "{}",
            ended.stderr
        );
    }

    /// The remote gets its irqfd and resamplefd once confined, and its
    /// interrupt line then keeps an epoll set of acknowledgements.
    #[test]
    fn an_interrupt_line_can_be_wired_once_confined() {
        use crate::device_model::InterruptLine;
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let sandbox = sandbox();
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(EFD_NONBLOCK).unwrap();
        let file = |e: &EventFd| crate::sys::eventfd_file(e).unwrap();
        let (irq_file, resample_file) = (file(&irqfd), file(&resample));
        let ended = in_child(move || {
            sandbox.confine(false).expect("confine");
            let mut line = InterruptLine::new(irq_file, resample_file);
            line.set_level(true);
            resample.write(1).expect("acknowledge");
            let mut fds = [crate::sys::pollin(line.resample_fd())];
            let woke = crate::sys::poll(&mut fds, 0).expect("poll") == 1;
            line.resample();
            say(if woke && irqfd.read().expect("raised") == 2 {
                b"line ok\n"
            } else {
                b"line FAILED\n"
            });
        });
        assert_eq!(exited(&ended), Some(0), "{}", ended.stderr);
        assert_eq!(ended.stderr, "line ok\n");
    }

    /// The posted-write region fds are waited for with epoll
    /// (`ioregion::device_end`), which must stay allowed.
    #[test]
    fn an_epoll_set_can_be_waited_for_once_confined() {
        use std::os::fd::AsRawFd;
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let sandbox = sandbox();
        let ready = EventFd::new(EFD_NONBLOCK).unwrap();
        let ended = in_child(move || {
            sandbox.confine(false).expect("confine");
            let set = Epoll::new().expect("epoll_create1");
            let fd = ready.as_raw_fd();
            set.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
            .expect("epoll_ctl");
            ready.write(1).expect("eventfd write");
            let mut events = [EpollEvent::default(); 2];
            let n = set.wait(1000, &mut events).expect("epoll_wait");
            say(if n == 1 && events[0].fd() == fd {
                b"epoll ok\n"
            } else {
                b"epoll FAILED\n"
            });
        });
        assert_eq!(exited(&ended), Some(0), "{}", ended.stderr);
        assert_eq!(ended.stderr, "epoll ok\n");
    }

    /// Debug builds of std look at an fd (F_GETFD) before closing it; any
    /// other fcntl but the dup is still stopped.
    #[test]
    fn fcntl_allows_only_getfd_and_the_dup() {
        let sandbox = sandbox();
        let ended = in_child(|| {
            sandbox.confine(false).expect("confine");
            // SAFETY: fcntl on stderr, which is open.
            let getfd = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_GETFD) };
            say(if getfd >= 0 {
                b"getfd ok\n"
            } else {
                b"getfd FAILED\n"
            });
            // SAFETY: as above; the filter stops it.
            unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_SETFD, libc::FD_CLOEXEC) };
            say(b"setfd was not stopped\n");
        });
        assert_eq!(exited(&ended), Some(BLOCKED_EXIT), "{}", ended.stderr);
        assert!(ended.stderr.starts_with("getfd ok\n"), "{}", ended.stderr);
        assert!(
            ended.stderr.contains(&format!(
                "vmm-remote: seccomp: blocked syscall {}",
                libc::SYS_fcntl
            )),
            "{}",
            ended.stderr
        );
    }

    #[test]
    fn exec_fork_and_inet_sockets_are_stopped() {
        let sandbox = sandbox();
        let blocked = |call: libc::c_long| format!("vmm-remote: seccomp: blocked syscall {call}");
        let exec = in_child(|| {
            sandbox.confine(false).expect("confine");
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: a null-terminated argv of static strings.
            unsafe { libc::execv(argv[0], argv.as_ptr()) };
        });
        assert_eq!(exited(&exec), Some(BLOCKED_EXIT));
        assert!(
            exec.stderr.contains(&blocked(libc::SYS_execve)),
            "{}",
            exec.stderr
        );
        let fork = in_child(|| {
            sandbox.confine(false).expect("confine");
            // SAFETY: raw clone(SIGCHLD) is a fork; the filter refuses it.
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        });
        assert_eq!(exited(&fork), Some(BLOCKED_EXIT));
        assert!(
            fork.stderr.contains(&blocked(libc::SYS_clone)),
            "{}",
            fork.stderr
        );
        let socket = in_child(|| {
            sandbox.confine(false).expect("confine");
            let mut pair = [-1; 2];
            // SAFETY: socketpair fills `pair`; socket takes integers.
            unsafe {
                if libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, pair.as_mut_ptr()) == 0
                {
                    say(b"pair ok\n");
                }
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
        });
        assert_eq!(exited(&socket), Some(BLOCKED_EXIT));
        assert!(socket.stderr.starts_with("pair ok\n"), "{}", socket.stderr);
        assert!(
            socket.stderr.contains(&blocked(libc::SYS_socket)),
            "{}",
            socket.stderr
        );
    }

    /// Waits for `total` jobs of `pool` to complete; returns how many
    /// failed.
    fn wait_for_jobs(pool: &crate::scsi::pool::IoPool, total: usize) -> usize {
        let (mut done, mut failed) = (0, 0);
        while done < total {
            for c in pool.take_completions() {
                failed += usize::from(c.result.is_err());
                done += 1;
            }
            let _ = crate::sys::poll(&mut [crate::sys::pollin(Some(pool.completion_fd()))], 100);
        }
        failed
    }

    /// The disk path as the remote runs it, inside the filter: large
    /// writes on worker threads, one of them failing with ENOSPC.
    #[test]
    fn disk_io_and_its_errors_stay_inside_the_filter() {
        use crate::scsi::ScsiDisk;
        use crate::scsi::pool::{IoPool, Job};
        let sandbox = sandbox();
        let full = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let disk = Arc::new(ScsiDisk::from_file(
            full,
            1 << 16,
            crate::scsi::DiskOptions::new("S"),
        ));
        // A file on the temporary directory's file system: the read
        // asks the page cache first (preadv2), where it can.
        let cached_path =
            std::env::temp_dir().join(format!("vmm-sandbox-{}.img", std::process::id()));
        std::fs::write(&cached_path, [0x77u8; 4096]).unwrap();
        let cached = ScsiDisk::open(&cached_path, crate::scsi::DiskOptions::new("C")).unwrap();
        std::fs::remove_file(&cached_path).unwrap();
        // A WRITE straight from guest RAM and a READ straight into it.
        let ram = crate::memory::GuestRam::new(64 << 20).unwrap();
        let memory = crate::device_model::DeviceMemory::map(
            &ram.sysmem_regions(),
            vec![ram.memfd.try_clone().unwrap()],
        )
        .unwrap();
        memory.write(0x1000, &[0x3c; 4096]).unwrap();
        let image = crate::sys::memfd(c"vmm-sandbox-image", false).unwrap();
        let ended = in_child(|| {
            let pool = IoPool::new(4).expect("pool");
            // Every thread, the pool's workers included, as the remote
            // confines itself: a filter for the calling thread alone let
            // the workers' preadv pass here while the remote died of it.
            sandbox.confine(true).expect("confine");
            for token in 0..32u64 {
                let blocks: u16 = 2048; // 1 MiB
                let mut cdb = vec![0x2a, 0, 0, 0, 0, 0, 0];
                cdb.extend_from_slice(&blocks.to_be_bytes());
                cdb.push(0);
                pool.submit(Job {
                    token,
                    disk: disk.clone(),
                    lun: 0,
                    cdb,
                    data_out: vec![0x5a; 1 << 20].into(),
                });
            }
            // Some fail (ENOSPC): that is the point, not a test failure.
            let _ = wait_for_jobs(&pool, 32);
            let read10 = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
            let read = crate::scsi::Command::parse(&read10).expect("READ(10)");
            if let Some(Ok(data)) = cached.execute_now(0, read, &Default::default()) {
                assert_eq!(data, vec![0x77; 512]);
            }
            memory
                .write_to_file(&[(0x1000, 4096)], &image, 0)
                .expect("pwritev");
            memory
                .read_from_file(&image, 0, 0x3000, 4096)
                .expect("preadv");
            let mut back = [0u8; 4096];
            memory.read(0x3000, &mut back).unwrap();
            assert_eq!(back, [0x3c; 4096]);
            say(b"all done\n");
            // The remote never tears its pool down; the test does not either.
            std::mem::forget(pool);
        });
        assert_eq!(exited(&ended), Some(0), "{}", ended.stderr);
        assert!(ended.stderr.contains("all done"));
    }

    /// UNMAP and WRITE SAME punch holes from inside the filter, on a
    /// real file: the filter lets that fallocate through, and the hole is
    /// there afterwards.
    #[test]
    fn discard_punches_holes_inside_the_filter() {
        use crate::scsi::{DiskOptions, ScsiDisk};
        let sandbox = sandbox();
        let path =
            std::env::temp_dir().join(format!("vmm-sandbox-unmap-{}.img", std::process::id()));
        std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
        let disk = ScsiDisk::open(&path, DiskOptions::new("S")).unwrap();
        let ended = in_child(|| {
            sandbox.confine(false).expect("confine");
            // UNMAP of blocks 0..256 (the first 128 KiB).
            let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
            list.extend_from_slice(&0u64.to_be_bytes());
            list.extend_from_slice(&256u32.to_be_bytes());
            list.extend_from_slice(&[0; 4]);
            let unmap = disk.execute(0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list);
            // WRITE SAME(10) with UNMAP, a zero block, over blocks 512..1024.
            let ws = disk.execute(0, &[0x41, 0x08, 0, 0, 0x02, 0, 0, 0x02, 0, 0], &[0; 512]);
            if unmap.is_ok() && ws.is_ok() {
                say(b"discarded\n");
            }
        });
        assert_eq!(exited(&ended), Some(0), "{}", ended.stderr);
        assert!(ended.stderr.contains("discarded"), "{}", ended.stderr);
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(crate::sys::next_hole(&file, 0).unwrap(), 0, "a hole at 0");
        let raw = std::fs::read(&path).unwrap();
        assert!(raw[..128 << 10].iter().all(|&b| b == 0));
        assert!(raw[128 << 10..256 << 10].iter().all(|&b| b == 0x5a));
        assert!(raw[256 << 10..512 << 10].iter().all(|&b| b == 0));
        assert!(raw[512 << 10..].iter().all(|&b| b == 0x5a));
        std::fs::remove_file(path).unwrap();
    }

    /// A qcow2 disk from inside the filter: cluster allocation, reads,
    /// WRITE SAME of zeros and of data, UNMAP and flushes, on pool threads.
    #[test]
    fn qcow2_io_stays_inside_the_filter() {
        use crate::scsi::pool::{IoPool, Job};
        use crate::scsi::{DiskOptions, ScsiDisk};
        let sandbox = sandbox();
        let path = crate::scsi::qcow2::tests::make_qcow2(64 << 20, None);
        let disk = Arc::new(ScsiDisk::open(&path, DiskOptions::new("S")).unwrap());
        let ended = in_child(|| {
            let pool = IoPool::new(4).expect("pool");
            // Every thread, the pool's workers included, as the remote
            // confines itself: a filter for the calling thread alone let
            // the workers' preadv pass here while the remote died of it.
            sandbox.confine(true).expect("confine");
            let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
            list.extend_from_slice(&1000u64.to_be_bytes());
            list.extend_from_slice(&3000u32.to_be_bytes());
            list.extend_from_slice(&[0; 4]);
            let mut jobs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for i in 0..16u32 {
                let mut cdb = vec![0x2a, 0];
                cdb.extend_from_slice(&(i * 4096).to_be_bytes());
                cdb.extend_from_slice(&[0, 0x08, 0, 0]); // 2048 blocks
                jobs.push((cdb, vec![i as u8 + 1; 1 << 20]));
            }
            jobs.push((vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], list));
            jobs.push((vec![0x41, 0x08, 0, 0, 0x80, 0, 0, 0x10, 0, 0], vec![0; 512]));
            jobs.push((vec![0x41, 0, 0, 0, 0x90, 0, 0, 0x10, 0, 0], vec![7; 512]));
            jobs.push((vec![0x28, 0, 0, 0, 0, 0, 0, 0x08, 0, 0], Vec::new()));
            jobs.push((vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], Vec::new()));
            let total = jobs.len();
            for (token, (cdb, data_out)) in jobs.into_iter().enumerate() {
                pool.submit(Job {
                    token: token as u64,
                    disk: disk.clone(),
                    lun: 0,
                    cdb,
                    data_out: data_out.into(),
                });
            }
            if wait_for_jobs(&pool, total) == 0 {
                say(b"qcow2 all done\n");
            }
            std::mem::forget(pool);
        });
        assert_eq!(exited(&ended), Some(0), "{}", ended.stderr);
        assert!(ended.stderr.contains("qcow2 all done"), "{}", ended.stderr);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn threads_still_start_and_mappings_cannot_be_executable() {
        let sandbox = sandbox();
        let ended = in_child(|| {
            sandbox.confine(false).expect("confine");
            // SAFETY: clone3 with no arguments; the second filter answers ENOSYS.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if r == -1 && errno == Some(libc::ENOSYS) {
                say(b"clone3 ENOSYS\n");
            }
            // Named, as the ioregion threads are (prctl PR_SET_NAME), and
            // enough of them at once for malloc to want more than 8 arenas.
            let all = std::sync::Arc::new(std::sync::Barrier::new(12));
            let threads: Vec<_> = (0..12)
                .filter_map(|i| {
                    let all = all.clone();
                    std::thread::Builder::new()
                        .name(format!("sandboxed-{i}"))
                        .spawn(move || {
                            let block = vec![1u8; 4096];
                            all.wait();
                            block.len()
                        })
                        .ok()
                })
                .collect();
            let sizes: usize = threads.into_iter().filter_map(|t| t.join().ok()).sum();
            if sizes == 12 * 4096 {
                say(b"12 threads ran\n");
            }
            // SAFETY: an anonymous executable mapping; the filter stops it.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        });
        assert_eq!(exited(&ended), Some(BLOCKED_EXIT), "{}", ended.stderr);
        assert!(
            ended.stderr.starts_with("clone3 ENOSYS\n12 threads ran\n"),
            "{}",
            ended.stderr
        );
        assert!(
            ended
                .stderr
                .contains(&format!("blocked syscall {}", libc::SYS_mmap))
        );
    }

    #[test]
    fn a_root_remote_drops_to_the_user_it_is_given() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: user drop not tested");
            return;
        }
        let options = SandboxOptions {
            user: Some("65534:65534".parse().unwrap()),
            disabled: false,
        };
        let sandbox = Sandbox::new(&options).unwrap();
        let ended = in_child(|| {
            let creds = sandbox.user.expect("a user");
            drop_to(creds).expect("drop");
            // SAFETY: id queries cannot fail; getgroups(0) only counts.
            let ok = unsafe {
                libc::getuid() == 65534
                    && libc::geteuid() == 65534
                    && libc::getgid() == 65534
                    && libc::getgroups(0, std::ptr::null_mut()) == 0
            };
            say(if ok {
                b"dropped\n"
            } else {
                b"still privileged\n"
            });
            sandbox.confine(false).expect("confine");
            say(b"confined\n");
        });
        assert_eq!(exited(&ended), Some(0), "{}", ended.stderr);
        assert_eq!(ended.stderr, "dropped\nconfined\n");
    }
}
