//! Where another process's threads sleep, from /proc, for the log line
//! that cuts off a device process that stopped answering: a thread
//! waiting on a lock (`futex_wait_queue`) tells a deadlock, every thread
//! in `do_epoll_wait` or a receive tells a record that nobody will serve,
//! a thread running tells a busy loop. Without it a hang found once in a
//! CI run is a guess (the hostile guest's lost read on 2026-12-06 took a
//! rerun with these lines added by hand).

use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

/// The pid of the process that made the socket pair `fd` belongs to, or
/// that connected it: for a region fd, the device process.
pub fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let pid = super::peer_credentials(fd)?.pid;
    u32::try_from(pid)
        .ok()
        .filter(|&pid| pid != 0)
        .ok_or_else(|| io::Error::other("the socket names no peer process"))
}

/// Each thread of `pid` as "name state where", sorted, comma-separated:
/// its name, its state letter (R running, S sleeping, D in the disk, T
/// stopped) and the kernel function it sleeps in ("-" when it runs; "?"
/// when /proc does not say, as for another user's process without
/// privilege).
pub fn describe_threads(pid: u32) -> io::Result<String> {
    let mut threads = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        threads.push(describe_thread(&entry?.path()));
    }
    threads.sort();
    Ok(threads.join(", "))
}

fn describe_thread(task: &Path) -> String {
    let read = |name: &str| fs::read_to_string(task.join(name)).ok();
    let name = read("comm").map_or_else(|| "?".into(), |c| c.trim_end().to_string());
    // The state follows the name in parentheses, which may hold anything.
    let state = read("stat")
        .and_then(|s| {
            let (_, after) = s.rsplit_once(')')?;
            after.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let place = match read("wchan").as_deref().map(str::trim) {
        Some("0") | Some("") => "-".to_string(),
        Some(f) => f.to_string(),
        None => "?".to_string(),
    };
    format!("{name} {state} {place}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_peer_of_a_socket_pair_is_the_process_that_made_it() {
        use std::os::fd::AsFd;
        let (a, _b) = crate::sys::seqpacket_pair().unwrap();
        assert_eq!(peer_pid(a.as_fd()).unwrap(), std::process::id());
    }

    #[test]
    fn a_sleeping_thread_is_named_with_its_state() {
        let (tx, rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let sleeper = std::thread::Builder::new()
            .name("hang-sleeper".into())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                let _ = rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        // Its state and place are read one after the other: a spurious
        // wake-up in between shows it asleep nowhere, so look again.
        let line = crate::test_support::wait_for("the sleeper seen asleep somewhere", || {
            let threads = describe_threads(std::process::id()).unwrap();
            let line = threads
                .split(", ")
                .find(|t| t.starts_with("hang-sleeper S "))?
                .to_string();
            let place = line.rsplit(' ').next().unwrap_or_default();
            (!place.is_empty() && place != "-" && place != "?").then_some(line)
        });
        drop(tx);
        sleeper.join().unwrap();
        assert!(line.starts_with("hang-sleeper S "), "{line}");
    }

    #[test]
    fn a_process_that_is_gone_is_an_error() {
        assert!(describe_threads(u32::MAX).is_err());
    }
}
