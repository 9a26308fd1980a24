//! The proxy's side of ioregionfd: asking the remote which BAR ranges it
//! serves over region fds (one fd per vCPU per range), checking what it
//! claims, and dispatching guest accesses there without the proxy's lock
//! or its control socket.
//!
//! Each range becomes a [`BarFastPath`]: the PCI root maps it on the bus
//! wherever the guest puts the BAR. On the kernel path it registers the
//! range with KVM_SET_IOREGION instead, and the vCPU never leaves the
//! kernel for it; on the userspace path the vCPU thread that took the exit
//! writes the record to its own fd.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;

use super::cut_off::{CUT_OFF_NOTE, CUT_OFF_REGISTERS, FailFlag};
use super::stats::{DeviceStats, bump};
use super::watchdog::{PostedWriteWatchdog, PostedWrites};
use crate::bus::SharedBusDevice;
use crate::bus::current_vcpu;
use crate::ioregion::{self, KernelRegion, RegionFd, StallClock, WriteKind};
use crate::mirror::reader::{BarMirror, MirrorError, RangeMirror, check_registers, map_page};
use crate::pci::{BarFastPath, BarKind, ConfigSpace};
use crate::protocol::channel::{Channel, ChannelError};
use crate::protocol::extensions::{SUB_REGION_POSTED_WRITES, SubRegion};
use crate::protocol::mpqemu::Message;

/// Where ioregion accesses are dispatched, decided once per VM.
#[derive(Clone)]
pub enum Dispatch {
    /// KVM_SET_IOREGION works: KVM writes the records.
    Kernel(Arc<VmFd>),
    /// vCPU threads write the records.
    Userspace,
}

#[derive(Debug, thiserror::Error)]
pub enum IoRegionError {
    #[error("asking about BAR{bar}'s ioregion fds: {source}")]
    Channel {
        bar: usize,
        #[source]
        source: ChannelError,
    },
    #[error("BAR{bar}: expected a region-fd reply, got command {cmd}")]
    UnexpectedReply { bar: usize, cmd: i32 },
    #[error("BAR{bar}: claims ioregion {offset:#x}+{size:#x}, which {why}")]
    BadRegion {
        bar: usize,
        offset: u64,
        size: u64,
        why: &'static str,
    },
    #[error("BAR{bar}: vCPU {vcpu} was offered other ranges than vCPU 0")]
    Inconsistent { bar: usize, vcpu: usize },
    #[error("BAR{bar}: a region fd is not a SOCK_SEQPACKET socket")]
    NotSeqpacket { bar: usize },
    #[error("BAR{bar}: expected a register-mirror reply, got command {cmd}")]
    UnexpectedMirrorReply { bar: usize, cmd: i32 },
    #[error("BAR{bar}: {source}")]
    Mirror {
        bar: usize,
        #[source]
        source: MirrorError,
    },
}

/// One BAR range served over ioregion fds.
pub struct IoRegionPath {
    label: String,
    offset: u64,
    size: u64,
    pio: bool,
    posted: bool,
    user_data: u64,
    /// Indexed by vCPU.
    fds: Vec<RegionFd>,
    kernel: Option<Arc<VmFd>>,
    /// Guest addresses KVM holds this range at (kernel path).
    in_kernel: Mutex<Option<u64>>,
    stats: Arc<DeviceStats>,
    failed: FailFlag,
    /// One per fd: how long its posted writes have gone untaken.
    stalls: Mutex<Vec<StallClock>>,
    /// Registers whose reads the remote's mirror page answers.
    mirror: Option<RangeMirror>,
}

impl IoRegionPath {
    /// Whether this range's writes are posted and served from vCPU
    /// threads, the case where a stalled device goes unseen by the vCPUs.
    pub fn posts_writes_from_userspace(&self) -> bool {
        self.posted && self.in_kernel.lock().expect("ioregion lock").is_none()
    }

    fn fd(&self) -> &RegionFd {
        &self.fds[current_vcpu() % self.fds.len()]
    }

    fn fault(&self, e: ioregion::DispatchError) {
        bump(&self.stats.errors);
        if self.failed.fail() {
            log::error!("{}: {e}; {CUT_OFF_NOTE}", self.label);
        }
    }

    fn kernel_region(&self, bar_addr: u64) -> KernelRegion {
        KernelRegion {
            guest_paddr: bar_addr + self.offset,
            size: self.size,
            user_data: self.user_data,
            fd: self.fds[0].as_fd().as_raw_fd(),
            pio: self.pio,
            posted_writes: self.posted,
        }
    }
}

impl PostedWrites for IoRegionPath {
    /// Cuts the device off if one of its fds has had posted writes queued
    /// and untaken for the fd's timeout. Called about once a second.
    fn check_posted_writes(&self, now: Instant) {
        if !self.posts_writes_from_userspace() || self.failed.is_failed() {
            return;
        }
        let mut stalls = self.stalls.lock().expect("ioregion lock");
        for (fd, clock) in self.fds.iter().zip(stalls.iter_mut()) {
            let backlog = match fd.backlog() {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("{}: cannot look at the posted-write queue: {e}", self.label);
                    return;
                }
            };
            if clock.observe(backlog, now) >= fd.timeout() {
                self.fault(ioregion::DispatchError::PostedStalled(fd.timeout()));
                return;
            }
        }
    }
}

impl SharedBusDevice for IoRegionPath {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if self.failed.is_failed() {
            data.fill(CUT_OFF_REGISTERS);
            return;
        }
        if let Some(mirror) = &self.mirror
            && mirror.read(offset, data)
        {
            bump(&self.stats.mirror_reads);
            return;
        }
        match self.fd().read(offset, data) {
            Ok(()) => bump(&self.stats.ioregion_reads),
            Err(e) => {
                data.fill(CUT_OFF_REGISTERS);
                self.fault(e);
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if self.failed.is_failed() {
            return;
        }
        match self.fd().write(offset, data) {
            Ok(kind) => {
                bump(&self.stats.ioregion_writes);
                if kind == WriteKind::Posted {
                    bump(&self.stats.posted_writes);
                }
            }
            Err(e) => self.fault(e),
        }
    }
}

impl BarFastPath for IoRegionPath {
    fn range(&self) -> (u64, u64) {
        (self.offset, self.size)
    }

    fn attach(self: Arc<Self>, bar_addr: u64) -> Option<Arc<dyn SharedBusDevice>> {
        if let Some(vm) = &self.kernel {
            match ioregion::assign(vm.as_ref(), &self.kernel_region(bar_addr)) {
                Ok(()) => {
                    *self.in_kernel.lock().expect("ioregion lock") = Some(bar_addr);
                    return None;
                }
                Err(e) => log::error!(
                    "{}: KVM refused the ioregion ({e}); serving it from vCPU threads",
                    self.label
                ),
            }
        }
        Some(self)
    }

    fn detach(&self, bar_addr: u64) {
        let mut in_kernel = self.in_kernel.lock().expect("ioregion lock");
        if *in_kernel != Some(bar_addr) {
            return;
        }
        *in_kernel = None;
        if let Some(vm) = &self.kernel
            && let Err(e) = ioregion::deassign(vm.as_ref(), &self.kernel_region(bar_addr))
        {
            log::error!("{}: KVM could not drop the ioregion: {e}", self.label);
        }
    }
}

fn is_seqpacket(fd: &OwnedFd) -> bool {
    crate::sys::socket_type(fd.as_fd()).is_ok_and(|kind| kind == libc::SOCK_SEQPACKET)
}

/// Everything `negotiate` needs besides the channel.
pub struct Negotiation<'a> {
    pub name: &'a str,
    pub config: &'a ConfigSpace,
    pub vcpus: usize,
    pub dispatch: &'a Dispatch,
    pub stats: &'a Arc<DeviceStats>,
    pub failed: &'a FailFlag,
    /// Looks after the ranges with posted writes.
    pub watchdog: Option<&'a PostedWriteWatchdog>,
    /// Ask for the remote's register mirror.
    pub register_mirror: bool,
}

/// Asks the remote for each BAR's ioregion ranges, one fd per vCPU, and
/// checks its claims: ranges inside the BAR, disjoint, the same for every
/// vCPU, each with a SOCK_SEQPACKET fd of its own.
pub fn negotiate(
    channel: &mut Channel,
    n: &Negotiation<'_>,
) -> Result<HashMap<usize, Vec<Arc<IoRegionPath>>>, IoRegionError> {
    let mut paths = HashMap::new();
    for (bar, spec) in n.config.bar_specs() {
        let mut layout: Option<Vec<SubRegion>> = None;
        let mut fds_by_region: Vec<Vec<RegionFd>> = Vec::new();
        for vcpu in 0..n.vcpus.max(1) {
            let reply = channel
                .exchange(&Message::RegionIoFdsQuery {
                    bar: bar as u32,
                    vcpu: vcpu as u32,
                })
                .map_err(|source| IoRegionError::Channel { bar, source })?;
            let (mut regions, fds) = match reply {
                Message::RegionIoFds { regions, fds } => (regions, fds),
                other => {
                    return Err(IoRegionError::UnexpectedReply {
                        bar,
                        cmd: other.command(),
                    });
                }
            };
            regions.sort_by_key(|r| r.offset);
            check_layout(bar, spec.size, &regions, &fds)?;
            match &layout {
                None => {
                    fds_by_region = regions.iter().map(|_| Vec::new()).collect();
                    layout = Some(regions.clone());
                }
                Some(first) if *first == regions => {}
                Some(_) => return Err(IoRegionError::Inconsistent { bar, vcpu }),
            }
            let mut fds: Vec<Option<File>> = fds.into_iter().map(Some).collect();
            for (i, r) in regions.iter().enumerate() {
                let fd = OwnedFd::from(fds[r.fd_index as usize].take().expect("checked unique"));
                if !is_seqpacket(&fd) {
                    return Err(IoRegionError::NotSeqpacket { bar });
                }
                let posted = r.flags & SUB_REGION_POSTED_WRITES != 0;
                fds_by_region[i].push(RegionFd::new(fd, r.user_data, posted));
            }
        }
        let Some(layout) = layout else { continue };
        let mirror = match n.dispatch {
            Dispatch::Userspace if n.register_mirror => {
                ask_for_mirror(channel, n.name, bar, &layout)?
            }
            Dispatch::Userspace => None,
            // KVM serves the ranges itself; no read reaches us.
            Dispatch::Kernel(_) => None,
        };
        let mut bar_paths = Vec::new();
        for (r, fds) in layout.iter().zip(fds_by_region) {
            let kernel = match n.dispatch {
                Dispatch::Kernel(vm) => {
                    bump(&n.stats.kernel_regions);
                    Some(vm.clone())
                }
                Dispatch::Userspace => None,
            };
            log::info!(
                "remote {}: BAR{bar} {:#x}..{:#x} over ioregion fds ({} path, {} fds{})",
                n.name,
                r.offset,
                r.offset + r.size,
                if kernel.is_some() {
                    "kernel"
                } else {
                    "userspace"
                },
                fds.len(),
                if r.flags & SUB_REGION_POSTED_WRITES != 0 {
                    ", posted writes"
                } else {
                    ""
                }
            );
            let stalls = fds.iter().map(|_| StallClock::default()).collect();
            let path = Arc::new(IoRegionPath {
                label: format!("remote {} BAR{bar}+{:#x}", n.name, r.offset),
                offset: r.offset,
                size: r.size,
                pio: spec.kind == BarKind::Io,
                posted: r.flags & SUB_REGION_POSTED_WRITES != 0,
                user_data: r.user_data,
                fds,
                kernel,
                in_kernel: Mutex::new(None),
                stats: n.stats.clone(),
                failed: n.failed.clone(),
                stalls: Mutex::new(stalls),
                mirror: mirror.as_ref().and_then(|m| m.range(r.offset, r.size)),
            });
            if path.posted
                && let Some(watchdog) = n.watchdog
            {
                watchdog.watch(&path);
            }
            bar_paths.push(path);
        }
        let covered: u64 = layout.iter().map(|r| r.size).sum();
        if covered < spec.size {
            log::info!(
                "remote {}: the other {:#x} bytes of BAR{bar} stay on the message path",
                n.name,
                spec.size - covered
            );
        }
        if !bar_paths.is_empty() {
            paths.insert(bar, bar_paths);
        }
    }
    Ok(paths)
}

/// Asks which registers of BAR `bar` the remote mirrors, and maps its page
/// if it names any. They must lie in `layout`'s ranges with waited writes.
fn ask_for_mirror(
    channel: &mut Channel,
    name: &str,
    bar: usize,
    layout: &[SubRegion],
) -> Result<Option<BarMirror>, IoRegionError> {
    let reply = channel
        .exchange(&Message::RegisterMirrorQuery { bar: bar as u32 })
        .map_err(|source| IoRegionError::Channel { bar, source })?;
    let (registers, fds) = match reply {
        Message::RegisterMirror { registers, fds } => (registers, fds),
        other => {
            return Err(IoRegionError::UnexpectedMirrorReply {
                bar,
                cmd: other.command(),
            });
        }
    };
    let Some(file) = fds.first() else {
        return Ok(None);
    };
    let mirror_err = |source| IoRegionError::Mirror { bar, source };
    let ranges: Vec<(u64, u64, bool)> = layout
        .iter()
        .map(|r| (r.offset, r.size, r.flags & SUB_REGION_POSTED_WRITES != 0))
        .collect();
    check_registers(&registers, &ranges).map_err(mirror_err)?;
    let page = map_page(file).map_err(mirror_err)?;
    let named: Vec<String> = registers
        .iter()
        .map(|r| format!("{:#x} ({} bytes)", r.offset, r.size))
        .collect();
    log::info!(
        "remote {name}: reads of BAR{bar} {} are answered from its register mirror",
        named.join(", ")
    );
    Ok(Some(BarMirror {
        page: Arc::new(page),
        registers,
    }))
}

/// Sorted `regions` must lie inside a BAR of `bar_size` bytes, not overlap,
/// and each name a distinct fd.
fn check_layout(
    bar: usize,
    bar_size: u64,
    regions: &[SubRegion],
    fds: &[File],
) -> Result<(), IoRegionError> {
    let bad = |r: &SubRegion, why| IoRegionError::BadRegion {
        bar,
        offset: r.offset,
        size: r.size,
        why,
    };
    let mut end = 0u64;
    let mut used = vec![false; fds.len()];
    for r in regions {
        if !crate::bus::fits(r.offset, r.size, bar_size) {
            return Err(bad(r, "does not fit in the BAR"));
        }
        if r.offset < end {
            return Err(bad(r, "overlaps another range"));
        }
        match used.get_mut(r.fd_index as usize) {
            Some(u) if !*u => *u = true,
            _ => return Err(bad(r, "shares or lacks its fd")),
        }
        end = r.offset + r.size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(offset: u64, size: u64, fd_index: u32) -> SubRegion {
        SubRegion {
            offset,
            size,
            fd_index,
            flags: 0,
            user_data: 0,
        }
    }

    fn files(n: usize) -> Vec<File> {
        (0..n).map(|_| File::open("/dev/null").unwrap()).collect()
    }

    #[test]
    fn lying_layouts_are_refused() {
        let ok = [region(0, 0x80, 1), region(0x100, 0x100, 0)];
        assert!(check_layout(1, 0x400, &ok, &files(2)).is_ok());
        let outside = [region(0x380, 0x100, 0)];
        assert!(check_layout(1, 0x400, &outside, &files(1)).is_err());
        let wraps = [region(u64::MAX, 2, 0)];
        assert!(check_layout(1, 0x400, &wraps, &files(1)).is_err());
        let overlap = [region(0, 0x80, 0), region(0x40, 0x80, 1)];
        assert!(check_layout(1, 0x400, &overlap, &files(2)).is_err());
        let shared_fd = [region(0, 0x80, 0), region(0x80, 0x80, 0)];
        assert!(check_layout(1, 0x400, &shared_fd, &files(2)).is_err());
    }
}
