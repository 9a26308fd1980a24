//! System calls that the standard library does not wrap (memfds, seals,
//! poll, sockets and their options, a child's setup before exec, signals),
//! each behind a safe function, so that their `unsafe` lives here and not
//! at every call site. KVM's own ioctls stay with the code that drives KVM.

pub mod cpus;
pub mod signal;
pub mod threads;

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// A new memfd, close-on-exec; `sealable` allows `add_seals` on it later.
pub fn memfd(name: &CStr, sealable: bool) -> io::Result<File> {
    let flags = libc::MFD_CLOEXEC | if sealable { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: `name` is NUL-terminated and outlives the call; no other
    // memory is handed to the kernel.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Adds `seals` (`libc::F_SEAL_*`) to a memfd created sealable.
pub fn add_seals(file: &File, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on an fd that `file` keeps open, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The seals on `file`; an error for a file that takes none (not a memfd).
pub fn seals(file: &File) -> io::Result<libc::c_int> {
    // SAFETY: fcntl on an fd that `file` keeps open, with no argument.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals)
}

/// A pollfd waiting for input on `fd`, or an entry poll ignores (`None`).
pub fn pollin(fd: Option<libc::c_int>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// poll(2): how many entries have events; EINTR comes back as an error of
/// kind `Interrupted` for the caller to decide.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfds for the
    // whole call, and its length is passed with it.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether `fd` becomes readable within `timeout_ms`.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut fds = [pollin(Some(fd.as_raw_fd()))];
    Ok(poll(&mut fds, timeout_ms)? == 1 && fds[0].revents & libc::POLLIN != 0)
}

/// The socket's type (`libc::SOCK_STREAM`, `SOCK_SEQPACKET`, ...).
pub fn socket_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    socket_option(fd, libc::SO_TYPE, 0)
}

/// The credentials the socket's peer had when the socket was made or
/// connected (for a socket pair, its maker's).
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let none = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    socket_option(fd, libc::SO_PEERCRED, none)
}

/// A SOL_SOCKET option whose value is a plain C value of type `T`,
/// starting from `value`.
fn socket_option<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int, mut value: T) -> io::Result<T> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes, the size of `value`,
    // into `value`, which lives across the call; the options asked for
    // here are plain C values, valid whatever bytes they hold.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Bounds every blocking recv on the socket by `timeout` (SO_RCVTIMEO).
pub fn set_recv_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads one timeval from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Shuts a socket down both ways: the peer reads end of file.
pub fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown(2) on an open fd; no memory is involved.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to process `pid`. The caller makes sure the pid is still
/// the process it means (not reaped, so not reused).
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the calling thread under SCHED_BATCH (threads it starts later
/// inherit it): when it wakes, it does not preempt the thread running on
/// its CPU. Needs no privilege.
pub fn set_batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) reads the param struct, which lives on
    // this stack for the call; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A second handle on an eventfd, as a File (to hand to another process or
/// to read and write with std's traits).
pub fn eventfd_file(event: &EventFd) -> io::Result<File> {
    let clone = event.try_clone()?;
    // SAFETY: the clone's fd is ours alone and the File takes it over.
    Ok(unsafe { File::from_raw_fd(clone.into_raw_fd()) })
}

/// Takes an eventfd's count without waiting, whatever the fd's own flags
/// (they belong to whoever made the fd): Some(count), or None when it was
/// zero. One preadv2 with RWF_NOWAIT at the file position (-1), where
/// poll + read would be two system calls. Kernels before 5.12 (no
/// RWF_NOWAIT on eventfds) answer EOPNOTSUPP.
pub fn eventfd_take(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut count = 0u64;
    let iov = libc::iovec {
        iov_base: (&mut count as *mut u64).cast(),
        iov_len: std::mem::size_of::<u64>(),
    };
    // SAFETY: the one iovec points at `count`, valid for writes of its 8
    // bytes for the whole call.
    let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    match n {
        8 => Ok(Some(count)),
        n if n < 0 => match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            e => Err(e),
        },
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an eventfd read gave {n} bytes, not 8"),
        )),
    }
}

/// A connected SOCK_SEQPACKET pair, close-on-exec so the ends do not leak
/// into processes we spawn.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// send(2): how many bytes of `buf` went out. One call, EINTR included.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// recv(2): the length it returns, which with MSG_TRUNC can exceed
/// `buf.len()` (the kernel still writes at most `buf.len()` bytes). One
/// call, EINTR included.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The bytes queued on socket `fd` that its peer has not read yet
/// (SIOCOUTQ).
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through a valid pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as usize)
}

/// Whether `file` is a regular file (a memfd is one), and its length: the
/// fstat system call itself, the one the remote's seccomp filter allows
/// for it (std's metadata() uses statx, glibc's fstat newfstatat, which
/// also takes paths).
pub fn regular_file_len(file: &File) -> io::Result<Option<u64>> {
    let st = fstat(file)?;
    Ok((st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(st.st_size as u64))
}

/// Which file `file` is (its device and inode), by fstat as above: two
/// fds of one memfd give the same.
pub fn file_identity(file: &File) -> io::Result<(u64, u64)> {
    let st = fstat(file)?;
    Ok((st.st_dev, st.st_ino))
}

fn fstat(file: &File) -> io::Result<libc::stat> {
    // SAFETY: fstat only writes into `st`, which lives across the call.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let st_ptr: *mut libc::stat = &mut st;
        if libc::syscall(libc::SYS_fstat, file.as_raw_fd(), st_ptr) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Reads up to `len` bytes at `offset` into a new buffer, which is never
/// zeroed first: the kernel's copy is the only one (a zeroed buffer cost a
/// pass over every byte read, 1.65% of the rig's CPU on 128 KiB reads).
/// Short at the end of the file. With `cached_only` (preadv2 with
/// RWF_NOWAIT) it reads only what the page cache holds: EAGAIN when none
/// of it is there, short when part is; EOPNOTSUPP where the file system
/// cannot say.
pub fn read_new(file: &File, len: usize, offset: u64, cached_only: bool) -> io::Result<Vec<u8>> {
    let flags = if cached_only { libc::RWF_NOWAIT } else { 0 };
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset
            .checked_add(buf.len() as u64)
            .and_then(|at| libc::off_t::try_from(at).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let want = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: the one iovec points at the buffer's spare capacity,
        // valid for writes of its length while `buf` is not touched.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if !buf.is_empty() => break,
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel wrote the first `n` bytes of the spare
        // capacity, and `n` is at most its length.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Ok(buf)
}

/// Whether `file` lives in memory (tmpfs, ramfs): reading or writing it
/// never waits for a device.
pub fn in_memory_file_system(file: &File) -> io::Result<bool> {
    // SAFETY: fstatfs only writes into `st`, which lives across the call.
    let st = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(file.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    // ramfs's magic number is not in libc.
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    Ok(matches!(st.f_type, libc::TMPFS_MAGIC | RAMFS_MAGIC))
}

/// Deallocates `len` bytes of `file` at `offset`, keeping its size: the
/// range reads back as zeros. Fails with EOPNOTSUPP where the file system
/// cannot.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate takes no pointers; a bad range or fd only fails.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where the first hole at or after `offset` in `file` starts (its end
/// when there is none): SEEK_HOLE.
pub fn next_hole(file: &File, offset: u64) -> io::Result<u64> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek takes no pointers; a bad fd or offset only fails.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_HOLE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// Whether fd number `fd` is open and a socket.
pub fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat only writes into `st`; a bad fd just fails.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// Takes over socket `fd`, which this process was handed (inherited, or
/// named on its command line) for that purpose; None if it is not an open
/// socket. The caller names each such fd once.
pub fn adopt_socket(fd: RawFd) -> Option<UnixStream> {
    if !is_socket(fd) {
        return None;
    }
    // SAFETY: an open socket that the process was given for this use, and
    // that nothing else in it owns (the caller's contract).
    Some(unsafe { UnixStream::from_raw_fd(fd) })
}

/// Receives into `buf` from a stream socket, with up to `max_fds` fds
/// that came alongside (SCM_RIGHTS); they are the caller's from here on.
/// 0 bytes means the peer closed.
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<File>)> {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut raw_fds = vec![-1 as RawFd; max_fds];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, which lives for this call.
    let (got, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: recvmsg handed us these fds and nothing else owns them.
    let fds = raw_fds[..nfds]
        .iter()
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    Ok((got, fds))
}

/// Sends all of `bytes` on a stream socket, the fds with the first chunk.
pub fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use std::io::Write;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut sock = sock;
    if fds.is_empty() {
        return sock.write_all(bytes);
    }
    let sent = sock
        .send_with_fds(&[bytes], fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    sock.write_all(&bytes[sent..])
}

/// Sets `cmd` up so the child keeps `socket` as fd `as_fd` and no other
/// inherited fd, starts with no blocked signals, leads a process group of
/// its own (terminal signals go to its parent, which stops it itself), and
/// dies with the thread that spawns it (PR_SET_PDEATHSIG).
pub fn prepare_child(cmd: &mut Command, socket: RawFd, as_fd: RawFd) {
    // SAFETY: runs between fork and exec and only makes async-signal-safe
    // system calls on integers it owns.
    unsafe {
        cmd.pre_exec(move || {
            if socket != as_fd && libc::dup2(socket, as_fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(as_fd, libc::F_GETFD);
            libc::fcntl(as_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            libc::syscall(libc::SYS_close_range, as_fd + 1, u32::MAX, 0);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// The calling thread's scheduling policy (`libc::SCHED_*`).
    fn scheduling_policy() -> io::Result<libc::c_int> {
        // SAFETY: sched_getscheduler(2) takes a plain pid (0: this thread).
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(policy)
    }

    #[test]
    fn two_fds_of_one_memfd_are_one_file() {
        let a = memfd(c"a", false).unwrap();
        let b = memfd(c"b", false).unwrap();
        let again = a.try_clone().unwrap();
        assert_eq!(file_identity(&a).unwrap(), file_identity(&again).unwrap());
        assert_ne!(file_identity(&a).unwrap(), file_identity(&b).unwrap());
    }

    #[test]
    fn batch_scheduling_holds_for_the_thread_and_those_it_starts() {
        // In a thread of its own: the policy is per thread, and the test
        // harness's threads keep theirs.
        let policies = std::thread::spawn(|| {
            let before = scheduling_policy().unwrap();
            set_batch_scheduling().unwrap();
            let own = scheduling_policy().unwrap();
            let child = std::thread::spawn(|| scheduling_policy().unwrap())
                .join()
                .unwrap();
            (before, own, child)
        })
        .join()
        .unwrap();
        assert_eq!(
            policies,
            (libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_BATCH)
        );
        assert_eq!(scheduling_policy().unwrap(), libc::SCHED_OTHER);
    }

    #[test]
    fn a_sealed_memfd_cannot_shrink() {
        let mut file = memfd(c"sys-test", true).unwrap();
        file.write_all(&[1; 4096]).unwrap();
        add_seals(&file, libc::F_SEAL_SHRINK).unwrap();
        assert!(file.set_len(100).is_err());
        assert_eq!(
            seals(&file).unwrap() & libc::F_SEAL_SHRINK,
            libc::F_SEAL_SHRINK
        );
        let plain = memfd(c"sys-test-plain", false).unwrap();
        assert!(add_seals(&plain, libc::F_SEAL_SHRINK).is_err());
    }

    #[test]
    fn poll_sees_input_and_times_out_without_it() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!wait_readable(b.as_fd(), 0).unwrap());
        a.write_all(b"x").unwrap();
        assert!(wait_readable(b.as_fd(), 1000).unwrap());
        let mut fds = [pollin(None), pollin(Some(b.as_raw_fd()))];
        assert_eq!(poll(&mut fds, 0).unwrap(), 1);
        assert_eq!(fds[0].revents, 0, "a negative fd is ignored");
        assert_eq!(socket_type(b.as_fd()).unwrap(), libc::SOCK_STREAM);
        shutdown(a.as_fd()).unwrap();
        set_recv_timeout(b.as_fd(), Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn an_eventfd_is_taken_without_waiting_even_if_its_fd_blocks() {
        let event = EventFd::new(0).unwrap(); // blocking
        let file = eventfd_file(&event).unwrap();
        assert_eq!(eventfd_take(file.as_fd()).unwrap(), None, "zero: no wait");
        event.write(2).unwrap();
        event.write(3).unwrap();
        assert_eq!(eventfd_take(file.as_fd()).unwrap(), Some(5));
        assert_eq!(eventfd_take(file.as_fd()).unwrap(), None, "taken");
        let not_eventfd = File::open("/dev/null").unwrap();
        assert!(eventfd_take(not_eventfd.as_fd()).is_err(), "end of file");
    }

    #[test]
    fn an_eventfd_file_shares_the_counter_and_kill_checks_the_pid() {
        use std::io::Read;
        let event = EventFd::new(0).unwrap();
        let mut file = eventfd_file(&event).unwrap();
        event.write(3).unwrap();
        let mut count = [0u8; 8];
        file.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_ne_bytes(count), 3);
        kill(std::process::id(), 0).unwrap();
        assert!(kill(u32::MAX, 0).is_err());
    }

    #[test]
    fn seqpacket_records_and_their_backlog() {
        let (a, b) = seqpacket_pair().unwrap();
        assert_eq!(socket_type(a.as_fd()).unwrap(), libc::SOCK_SEQPACKET);
        assert!(is_socket(a.as_raw_fd()) && !is_socket(-1));
        assert_eq!(send(a.as_fd(), &[7; 32], 0).unwrap(), 32);
        assert!(unread_bytes(a.as_fd()).unwrap() >= 32);
        let mut small = [0u8; 8];
        assert_eq!(recv(b.as_fd(), &mut small, libc::MSG_TRUNC).unwrap(), 32);
        assert_eq!(small, [7; 8]);
        assert_eq!(unread_bytes(a.as_fd()).unwrap(), 0);
        let err = recv(b.as_fd(), &mut small, libc::MSG_DONTWAIT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let file = File::open("/dev/null").unwrap();
        assert!(!is_socket(file.as_raw_fd()));
    }
}
