//! Which CPUs a process may run on: the `cpus=` list a user gives a
//! device process, and the affinity the VMM reads to tell whether a
//! device can answer while a vCPU thread waits on another CPU.

use std::fmt;
use std::io;
use std::str::FromStr;

/// The kernel's `cpu_set_t` holds this many CPUs.
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// A non-empty set of CPU numbers, written as a list such as `1`, `0-3`
/// or `0,2-3` (the form of `taskset -c` and `/sys/devices/system/cpu/online`);
/// `:` separates too (`0:2-3`), for option strings whose items are
/// separated by commas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("an empty CPU list")]
    Empty,
    #[error("'{0}' is not a CPU number or a range such as 2-3")]
    NotANumber(String),
    #[error("the range {0}-{1} runs backwards")]
    Backwards(usize, usize),
    #[error("CPU {0} is beyond the {MAX_CPUS} a CPU set holds")]
    TooHigh(usize),
}

impl CpuList {
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Whether this is one CPU.
    pub fn single(&self) -> Option<usize> {
        match self.0[..] {
            [cpu] => Some(cpu),
            _ => None,
        }
    }

    fn from_cpus(mut cpus: Vec<usize>) -> Result<Self, CpuListError> {
        cpus.sort_unstable();
        cpus.dedup();
        match cpus.last() {
            None => Err(CpuListError::Empty),
            Some(&top) if top >= MAX_CPUS => Err(CpuListError::TooHigh(top)),
            Some(_) => Ok(CpuList(cpus)),
        }
    }
}

impl FromStr for CpuList {
    type Err = CpuListError;

    fn from_str(text: &str) -> Result<Self, CpuListError> {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| CpuListError::NotANumber(s.to_string()))
        };
        let mut cpus = Vec::new();
        for item in text.split([',', ':']).filter(|s| !s.trim().is_empty()) {
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(item)?, number(item)?),
            };
            if last < first {
                return Err(CpuListError::Backwards(first, last));
            }
            if last >= MAX_CPUS {
                return Err(CpuListError::TooHigh(last));
            }
            cpus.extend(first..=last);
        }
        CpuList::from_cpus(cpus)
    }
}

impl fmt::Display for CpuList {
    /// Ranges where the numbers run on: `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            while i + 1 < self.0.len() && self.0[i + 1] == self.0[i] + 1 {
                i += 1;
            }
            parts.push(if self.0[i] == start {
                start.to_string()
            } else {
                format!("{start}-{}", self.0[i])
            });
            i += 1;
        }
        write!(f, "{}", parts.join(","))
    }
}

/// The CPUs the calling thread may run on (threads it starts inherit them).
pub fn this_thread_cpus() -> io::Result<CpuList> {
    cpus_of(0)
}

/// The CPUs the main thread of process `pid` may run on (the threads it
/// starts inherit them).
pub fn process_cpus(pid: u32) -> io::Result<CpuList> {
    match libc::pid_t::try_from(pid) {
        Ok(pid) if pid > 0 => cpus_of(pid),
        _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
    }
}

/// sched_getaffinity(2) of thread `tid` (0: the calling thread).
fn cpus_of(tid: libc::pid_t) -> io::Result<CpuList> {
    // SAFETY: cpu_set_t is plain bits; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity(2) writes at most the size we pass into
    // the set, which lives on this stack.
    if unsafe { libc::sched_getaffinity(tid, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set; every index is below its size.
    let cpus = (0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    CpuList::from_cpus(cpus.collect()).map_err(io::Error::other)
}

/// Keeps the calling thread, and the threads it starts from now on, to
/// `cpus`. Fails (EINVAL) when none of them is online.
pub fn pin_this_thread(cpus: &CpuList) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.cpus() {
        // SAFETY: CPU_SET writes one bit of the set; `CpuList` keeps every
        // number below the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: sched_setaffinity(2) reads the set, which lives on this
    // stack for the call; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_process_cpus_are_read_and_a_missing_one_is_an_error() {
        let mut child = std::process::Command::new("taskset")
            .args(["-c", "0", "sleep", "5"])
            .spawn()
            .unwrap();
        let mut cpus = None;
        for _ in 0..100 {
            cpus = process_cpus(child.id())
                .ok()
                .filter(|c| c.single() == Some(0));
            if cpus.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(cpus.is_some(), "taskset -c 0 reads as CPU 0 alone");
        assert!(process_cpus(0).is_err(), "pid 0 is nobody");
        assert!(process_cpus(u32::MAX).is_err());
    }

    #[test]
    fn lists_read_as_taskset_writes_them() {
        let l: CpuList = "0,2-4,3".parse().unwrap();
        assert_eq!(l.cpus(), [0, 2, 3, 4]);
        assert_eq!(l.to_string(), "0,2-4");
        assert_eq!("0:2-4".parse::<CpuList>().unwrap(), l);
        assert_eq!("1".parse::<CpuList>().unwrap().single(), Some(1));
        assert_eq!("0-1".parse::<CpuList>().unwrap().single(), None);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert_eq!("".parse::<CpuList>(), Err(CpuListError::Empty));
        assert_eq!(
            "a".parse::<CpuList>(),
            Err(CpuListError::NotANumber("a".into()))
        );
        assert_eq!("3-1".parse::<CpuList>(), Err(CpuListError::Backwards(3, 1)));
        assert_eq!(
            "0-5000".parse::<CpuList>(),
            Err(CpuListError::TooHigh(5000))
        );
        assert_eq!(
            "1-".parse::<CpuList>(),
            Err(CpuListError::NotANumber("".into()))
        );
    }

    #[test]
    fn a_thread_pinned_to_its_own_first_cpu_reads_it_back() {
        std::thread::spawn(|| {
            let all = this_thread_cpus().unwrap();
            let first: CpuList = all.cpus()[0].to_string().parse().unwrap();
            pin_this_thread(&first).unwrap();
            assert_eq!(this_thread_cpus().unwrap(), first);
            let err = pin_this_thread(&"1023".parse().unwrap());
            // No machine here has 1024 CPUs online.
            assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        })
        .join()
        .unwrap();
    }
}
