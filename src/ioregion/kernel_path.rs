//! A BAR range that KVM serves itself (`KVM_SET_IOREGION`): where KVM
//! holds it, and whether the device process still takes KVM's commands.
//!
//! KVM waits for the device inside `KVM_RUN`, where the VMM cannot see
//! it: our kvm module gives up after `kvm.ioregion_timeout_ms` (10 s) and
//! hands the access to us as an ordinary exit, but a posted write waits
//! for nothing, so a device that stops taking KVM's posted writes would
//! go unnoticed until the guest next reads a register. KVM writes its
//! commands on the VMM's end of the socket, so they stay charged to that
//! end (SIOCOUTQ) until the device takes them, as a vCPU thread's posted
//! writes do: a queue that stands still for the fd's timeout means the
//! device stopped taking them. The watchdog then cuts the device off, and
//! a device cut off for any reason has its ranges taken back from KVM:
//! the module wakes the vCPUs waiting on a range it drops and turns their
//! accesses into ordinary exits, which the range, still on the VMM's bus,
//! answers as a cut-off device does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;

use super::kernel::{KernelError, KernelRegion, assign_all, deassign, pieces_around};
use crate::proxy::watchdog::{Backlog, StallClock};

/// What KVM needs to serve a range itself.
pub struct KernelPath {
    pub vm: Arc<VmFd>,
    /// KVM's own fd to the device: a response names no command, so a vCPU
    /// thread writing on the fd KVM uses could take KVM's answer.
    pub fd: OwnedFd,
    /// How long KVM's commands may sit untaken before the device is cut off.
    pub timeout: Duration,
    /// KVM posts the writes it serves (the range's writes are posted and
    /// the VMM does not post them itself, `proxy::ioregion_setup`).
    pub posts_writes: bool,
    /// Where KVM counts the posted writes it sends on `fd`, when it can.
    pub posted_count: Option<&'static AtomicU64>,
    /// The regions KVM holds, and the BAR address they were made for.
    registered: Mutex<Option<(u64, Vec<KernelRegion>)>>,
    /// How long KVM's commands on `fd` have gone untaken.
    stall: Mutex<StallClock>,
}

impl KernelPath {
    pub fn new(
        vm: Arc<VmFd>,
        fd: OwnedFd,
        timeout: Duration,
        posts_writes: bool,
        posted_count: Option<&'static AtomicU64>,
    ) -> Self {
        KernelPath {
            vm,
            fd,
            timeout,
            posts_writes,
            posted_count,
            registered: Mutex::new(None),
            stall: Mutex::new(StallClock::default()),
        }
    }

    /// The regions KVM serves of a range of `size` bytes at guest address
    /// `paddr`: the range without its mirrored registers (`holes`: offset
    /// and size in the range), whose reads exit to the VMM, and their
    /// writes too unless KVM posts them. A piece's commands carry its
    /// offset in the range added to the range's `user_data`, which is how
    /// the device (`device_end`) tells the pieces on its one fd apart.
    pub fn regions(
        &self,
        paddr: u64,
        size: u64,
        user_data: u64,
        pio: bool,
        holes: &[(u64, u64)],
    ) -> Vec<KernelRegion> {
        pieces_around(size, holes, self.posts_writes)
            .into_iter()
            .map(|(at, size)| KernelRegion {
                guest_paddr: paddr + at,
                size,
                user_data: user_data.wrapping_add(at),
                fd: self.fd.as_raw_fd(),
                pio,
                posted_writes: self.posts_writes,
                posted_count: self.posted_count,
            })
            .collect()
    }

    /// Hands `regions`, made for the BAR at `bar_addr`, to KVM: all or none.
    pub fn register(&self, bar_addr: u64, regions: Vec<KernelRegion>) -> Result<(), KernelError> {
        let mut registered = self.registered.lock().expect("kernel path lock");
        assign_all(self.vm.as_ref(), &regions)?;
        *registered = Some((bar_addr, regions));
        Ok(())
    }

    /// Takes the regions back from KVM if it holds them for the BAR at
    /// `bar_addr` (None: wherever the BAR is); says whether it did.
    pub fn unregister(&self, bar_addr: Option<u64>, label: &str) -> bool {
        let mut registered = self.registered.lock().expect("kernel path lock");
        let Some((_, regions)) =
            registered.take_if(|(at, _)| bar_addr.is_none_or(|addr| addr == *at))
        else {
            return false;
        };
        for region in &regions {
            if let Err(e) = deassign(self.vm.as_ref(), region) {
                log::error!("{label}: KVM could not drop the ioregion: {e}");
            }
        }
        true
    }

    pub fn is_registered(&self) -> bool {
        self.registered.lock().expect("kernel path lock").is_some()
    }

    /// Looks at KVM's commands on the fd at `now`: for how long they have
    /// sat untaken (zero while the device keeps up). Called about once a
    /// second, by the watchdog.
    pub fn stalled_for(&self, now: Instant) -> io::Result<Duration> {
        let backlog = Backlog::look(self.fd.as_fd(), self.posted_count)?;
        Ok(self
            .stall
            .lock()
            .expect("kernel path lock")
            .observe(backlog, now))
    }
}
