//! The proposed KVM uAPI for ioregionfd (`KVM_SET_IOREGION`, kernel RFC v3,
//! Feb 2021), which was never merged: registering a guest-physical range
//! so that KVM itself sends command records to a socket, and probing
//! whether the running kernel has it.
//!
//! No mainline kernel implements this. We keep the definitions so a
//! patched kernel can be used and so the probe can tell the two apart; the
//! userspace path in `vmm_end` is what runs everywhere else.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicU64;

use vmm_sys_util::ioctl::ioctl_with_ref;

use super::wire::socket_pair;

/// `KVM_IOREGION_PIO`: the range is in I/O port space rather than MMIO.
pub const KVM_IOREGION_PIO: u32 = 1 << 0;
/// `KVM_IOREGION_POSTED_WRITES`: KVM does not wait for a write's response.
pub const KVM_IOREGION_POSTED_WRITES: u32 = 1 << 1;
/// `KVM_IOREGION_DEASSIGN`: remove the region with this exact address and size.
pub const KVM_IOREGION_DEASSIGN: u32 = 1 << 2;
/// `KVM_IOREGION_POSTED_COUNT` (our kernel/ module only, not in the v3
/// patches): KVM keeps the count of posted writes it wrote to the fd in
/// the u64 at `posted_count`.
pub const KVM_IOREGION_POSTED_COUNT: u32 = 1 << 3;

/// `struct kvm_ioregion` of the v3 patches, with our module's
/// `posted_count` in what was padding there. `read_fd` and `write_fd` are
/// named from KVM's side: it reads responses from one and writes commands
/// to the other.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmIoregion {
    pub guest_paddr: u64,
    pub memory_size: u64,
    pub user_data: u64,
    pub read_fd: i32,
    pub write_fd: i32,
    pub flags: u32,
    pub pad0: u32,
    pub posted_count: u64,
    pub pad: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<KvmIoregion>() == 64);

/// Builds an `_IOW(ty, nr, size)` ioctl number: direction "write" (1) in
/// bits 30-31, argument size in bits 16-29, type in 8-15, number in 0-7.
const fn iow(ty: u32, nr: u32, size: usize) -> u32 {
    const IOC_WRITE: u32 = 1;
    (IOC_WRITE << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

/// The KVM ioctl type byte.
const KVMIO: u32 = 0xAE;

/// `KVM_SET_IOREGION = _IOW(KVMIO, 0x49, struct kvm_ioregion)`. Mainline
/// later gave number 0x49 to `KVM_SET_USER_MEMORY_REGION2`, whose argument
/// is a different size, so the full 32-bit number stays distinct and
/// mainline rejects ours as unknown.
pub const KVM_SET_IOREGION: u32 = iow(KVMIO, 0x49, std::mem::size_of::<KvmIoregion>());

const _: () = assert!(KVM_SET_IOREGION == 0x4040_AE49);

/// Why registering or removing a region failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "region at {guest_paddr:#x} with size {size:#x} runs past the end of the address space"
    )]
    Overflow { guest_paddr: u64, size: u64 },
    #[error("a zero-size region is only allowed with posted writes")]
    ZeroSizeNeedsPostedWrites,
    #[error("KVM_SET_IOREGION ({op}) failed for {guest_paddr:#x}+{size:#x}")]
    Ioctl {
        op: &'static str,
        guest_paddr: u64,
        size: u64,
        #[source]
        source: io::Error,
    },
}

/// One region as the VMM describes it to KVM.
#[derive(Debug, Clone, Copy)]
pub struct KernelRegion {
    pub guest_paddr: u64,
    /// Bytes; 0 is a "sizeless" region that needs `posted_writes`.
    pub size: u64,
    /// Copied into every command's `user_data`.
    pub user_data: u64,
    /// One SOCK_SEQPACKET end, used as both `read_fd` and `write_fd` (as
    /// the QEMU RFC did), so commands and responses share one ordered fd.
    pub fd: RawFd,
    pub pio: bool,
    pub posted_writes: bool,
    /// Where KVM counts the posted writes it writes to `fd`. Every region
    /// on one fd must name the same counter. `'static` because KVM writes
    /// there for as long as a region naming it is assigned, which nothing
    /// in the VMM outlives for sure.
    pub posted_count: Option<&'static AtomicU64>,
}

impl KernelRegion {
    fn to_kvm(self, deassign: bool) -> KvmIoregion {
        let mut flags = 0;
        if self.pio {
            flags |= KVM_IOREGION_PIO;
        }
        if self.posted_writes {
            flags |= KVM_IOREGION_POSTED_WRITES;
        }
        if deassign {
            flags |= KVM_IOREGION_DEASSIGN;
        }
        let mut posted_count = 0;
        if let Some(count) = self.posted_count {
            flags |= KVM_IOREGION_POSTED_COUNT;
            posted_count = count.as_ptr() as u64;
        }
        KvmIoregion {
            guest_paddr: self.guest_paddr,
            memory_size: self.size,
            user_data: self.user_data,
            read_fd: self.fd,
            write_fd: self.fd,
            flags,
            pad0: 0,
            posted_count,
            pad: [0; 16],
        }
    }

    /// The checks the v3 kernel makes, done here for a clearer message.
    fn check(&self) -> Result<(), KernelError> {
        if self.guest_paddr.checked_add(self.size).is_none() {
            return Err(KernelError::Overflow {
                guest_paddr: self.guest_paddr,
                size: self.size,
            });
        }
        if self.size == 0 && !self.posted_writes {
            return Err(KernelError::ZeroSizeNeedsPostedWrites);
        }
        Ok(())
    }
}

fn set_ioregion(
    vm: &impl AsRawFd,
    region: &KernelRegion,
    deassign: bool,
) -> Result<(), KernelError> {
    region.check()?;
    let arg = region.to_kvm(deassign);
    // SAFETY: `vm` is an open fd for the caller's lifetime and `arg` is a
    // fully initialised 64-byte kvm_ioregion that the kernel only reads;
    // kernels without the ioctl reject the number without touching it.
    let ret = unsafe { ioctl_with_ref(vm, libc::c_ulong::from(KVM_SET_IOREGION), &arg) };
    if ret < 0 {
        return Err(KernelError::Ioctl {
            op: if deassign { "deassign" } else { "assign" },
            guest_paddr: region.guest_paddr,
            size: region.size,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Asks KVM to serve `region` by sending records to `region.fd`. KVM holds
/// its own reference to the fd until the region is deassigned.
pub fn assign(vm: &impl AsRawFd, region: &KernelRegion) -> Result<(), KernelError> {
    set_ioregion(vm, region, false)
}

/// Removes the region with exactly `region.guest_paddr` and `region.size`
/// (and the same PIO/MMIO space). Needed before a BAR moves.
pub fn deassign(vm: &impl AsRawFd, region: &KernelRegion) -> Result<(), KernelError> {
    set_ioregion(vm, region, true)
}

/// Assigns every one of `regions`, or none: on a failure the ones
/// already assigned are removed again.
pub fn assign_all(vm: &impl AsRawFd, regions: &[KernelRegion]) -> Result<(), KernelError> {
    for (i, region) in regions.iter().enumerate() {
        if let Err(e) = assign(vm, region) {
            for done in &regions[..i] {
                if let Err(undo) = deassign(vm, done) {
                    log::error!("ioregionfd: cannot take back a region of a failed set: {undo}");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The pieces, as (offset, size), that KVM serves of a range of `size`
/// bytes whose registers `holes` (offset, size; sorted by offset, inside
/// the range; overlapping ones, which only a confused remote names, are
/// taken together) must exit to the VMM on reads. Reads there are answered from the
/// register mirror, which KVM knows nothing of. With posted writes, each
/// hole also gets a zero-size piece at its first byte: a zero-size region
/// takes writes to that address (of any width) and lets reads exit, so
/// the guest's writes to a mirrored register stay posted in the kernel.
pub fn pieces_around(size: u64, holes: &[(u64, u64)], posted: bool) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &(offset, len) in holes {
        match spans.last_mut() {
            Some((_, end)) if offset < *end => *end = (*end).max(offset + len),
            _ => spans.push((offset, offset + len)),
        }
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    for (offset, end) in spans {
        if offset > at {
            pieces.push((at, offset - at));
        }
        if posted {
            pieces.push((offset, 0));
        }
        at = end;
    }
    if at < size {
        pieces.push((at, size - at));
    }
    pieces
}

/// The 8-byte MMIO region a probe registers at `scratch_paddr` and removes
/// again; with a counter, its writes are posted.
fn probe_region(
    fd: RawFd,
    scratch_paddr: u64,
    posted_count: Option<&'static AtomicU64>,
) -> KernelRegion {
    KernelRegion {
        guest_paddr: scratch_paddr,
        size: 8,
        user_data: 0,
        fd,
        pio: false,
        posted_writes: posted_count.is_some(),
        posted_count,
    }
}

/// Whether KVM keeps a posted-write count for us ([`KVM_IOREGION_POSTED_COUNT`]:
/// our kernel/ module does, the v3 patches did not), found out like
/// [`probe`]: by registering a region that names a counter.
pub fn counts_posted_writes(vm: &impl AsRawFd, scratch_paddr: u64) -> bool {
    // Static: should the removal fail, KVM still holds its address.
    static PROBE_COUNT: AtomicU64 = AtomicU64::new(0);
    let Ok((ours, _theirs)) = socket_pair() else {
        return false;
    };
    let region = probe_region(ours.as_raw_fd(), scratch_paddr, Some(&PROBE_COUNT));
    if let Err(e) = assign(vm, &region) {
        log::debug!("ioregionfd: KVM keeps no posted-write count ({e})");
        return false;
    }
    if let Err(e) = deassign(vm, &region) {
        log::error!("ioregionfd: cannot remove the count probe region at {scratch_paddr:#x}: {e}");
    }
    true
}

/// Whether this kernel has `KVM_SET_IOREGION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Available,
    /// The errno of the failed attempt; ENOTTY (or EINVAL) on mainline.
    Unavailable {
        errno: i32,
    },
}

/// Finds out whether KVM can dispatch to ioregionfds by really registering
/// an 8-byte MMIO region at `scratch_paddr` (which must not be RAM, a
/// device, or an ioeventfd) and removing it again.
///
/// KVM_CHECK_EXTENSION cannot answer this: the capability numbers the
/// patch sets used (191, 195, 206) now belong to unrelated mainline
/// capabilities, so a stock kernel would say yes for the wrong reason.
pub fn probe(vm: &impl AsRawFd, scratch_paddr: u64) -> Probe {
    let (ours, _theirs) = match socket_pair() {
        Ok(pair) => pair,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            log::warn!("ioregionfd probe: cannot create a socket pair: {e}");
            return Probe::Unavailable { errno };
        }
    };
    let region = probe_region(ours.as_raw_fd(), scratch_paddr, None);
    if let Err(e) = assign(vm, &region) {
        let errno = match &e {
            KernelError::Ioctl { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EINVAL,
        };
        log::debug!("ioregionfd probe: not available ({e}: errno {errno})");
        return Probe::Unavailable { errno };
    }
    // The kernel has it. Failing to remove the probe region would leave an
    // 8-byte range at `scratch_paddr` that answers nothing (the socket
    // closes when we return); say so, but the answer is still "available".
    if let Err(e) = deassign(vm, &region) {
        log::error!("ioregionfd probe: cannot remove the probe region at {scratch_paddr:#x}: {e}");
    }
    log::info!("ioregionfd: the kernel supports KVM_SET_IOREGION");
    Probe::Available
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    fn assert_v3_layout() {
        assert_eq!(std::mem::size_of::<KvmIoregion>(), 64);
        assert_eq!(offset_of!(KvmIoregion, guest_paddr), 0);
        assert_eq!(offset_of!(KvmIoregion, memory_size), 8);
        assert_eq!(offset_of!(KvmIoregion, user_data), 16);
        assert_eq!(offset_of!(KvmIoregion, read_fd), 24);
        assert_eq!(offset_of!(KvmIoregion, write_fd), 28);
        assert_eq!(offset_of!(KvmIoregion, flags), 32);
        assert_eq!(offset_of!(KvmIoregion, pad0), 36);
        assert_eq!(offset_of!(KvmIoregion, posted_count), 40);
        assert_eq!(offset_of!(KvmIoregion, pad), 48);
        assert_eq!(KVM_SET_IOREGION, 0x4040_AE49);
    }

    #[test]
    fn kvm_ioregion_layout_matches_the_v3_header() {
        assert_v3_layout();
    }

    #[test]
    fn region_flags_and_fds_fill_the_struct() {
        let region = KernelRegion {
            guest_paddr: 0x1000,
            size: 0x100,
            user_data: 2,
            fd: 7,
            pio: true,
            posted_writes: true,
            posted_count: None,
        };
        let k = region.to_kvm(true);
        assert_eq!(
            (k.guest_paddr, k.memory_size, k.user_data),
            (0x1000, 0x100, 2)
        );
        assert_eq!((k.read_fd, k.write_fd), (7, 7));
        assert_eq!((k.flags, k.posted_count), (0b111, 0));
        assert_eq!(region.to_kvm(false).flags, 0b011);
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let counted = KernelRegion {
            posted_count: Some(&COUNT),
            ..region
        };
        let k = counted.to_kvm(false);
        assert_eq!(k.flags, 0b1011);
        assert_eq!(k.posted_count, COUNT.as_ptr() as u64);
    }

    #[test]
    fn pieces_leave_out_the_mirrored_registers() {
        // Waited writes: the register exits whole.
        assert_eq!(
            pieces_around(0x80, &[(0x14, 1)], false),
            [(0, 0x14), (0x15, 0x6b)]
        );
        // Posted writes: a zero-size piece keeps its writes in the kernel.
        assert_eq!(
            pieces_around(0x80, &[(0x14, 1)], true),
            [(0, 0x14), (0x14, 0), (0x15, 0x6b)]
        );
        // At either end, and two holes side by side.
        assert_eq!(pieces_around(0x10, &[(0, 4)], false), [(4, 0xc)]);
        assert_eq!(pieces_around(0x10, &[(0xc, 4)], true), [(0, 0xc), (0xc, 0)]);
        assert_eq!(
            pieces_around(0x10, &[(4, 2), (6, 2)], true),
            [(0, 4), (4, 0), (6, 0), (8, 8)]
        );
        assert_eq!(pieces_around(0x10, &[], true), [(0, 0x10)]);
        // Overlapping registers exit together; KVM never gets a byte of one.
        assert_eq!(
            pieces_around(0x20, &[(4, 4), (5, 1), (6, 8)], true),
            [(0, 4), (4, 0), (0xe, 0x12)]
        );
    }

    #[test]
    fn bad_regions_are_refused_before_the_ioctl() {
        let base = KernelRegion {
            guest_paddr: u64::MAX - 3,
            size: 8,
            user_data: 0,
            fd: -1,
            pio: false,
            posted_writes: false,
            posted_count: None,
        };
        assert!(matches!(base.check(), Err(KernelError::Overflow { .. })));
        let zero = KernelRegion {
            guest_paddr: 0x1000,
            size: 0,
            ..base
        };
        assert!(matches!(
            zero.check(),
            Err(KernelError::ZeroSizeNeedsPostedWrites)
        ));
        let sizeless = KernelRegion {
            posted_writes: true,
            ..zero
        };
        assert!(sizeless.check().is_ok());
    }

    fn open_fd_count() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// On a host without the patches (every mainline kernel) the probe must
    /// say Unavailable and leave no region and no fd behind.
    #[test]
    fn probe_on_a_stock_kernel_is_unavailable_and_clean() {
        assert_v3_layout();
        let vm = match kvm_ioctls::Kvm::new().and_then(|kvm| kvm.create_vm()) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!(
                    "skipping the KVM_SET_IOREGION probe on a VM: cannot create one: {e}; \
                     checking only the layout and that a non-KVM fd answers ENOTTY"
                );
                let not_kvm = std::fs::File::open("/dev/null").unwrap();
                let errno = libc::ENOTTY;
                assert_eq!(probe(&not_kvm, 0x1000), Probe::Unavailable { errno });
                return;
            }
        };
        const SCRATCH: u64 = 0xfeb0_0000;
        let before = open_fd_count();
        let mut last = Probe::Available;
        // Many rounds, so a leak of even one fd per probe stands out over
        // the fds other tests open and close meanwhile.
        for _ in 0..200 {
            last = probe(&vm, SCRATCH);
            match last {
                Probe::Unavailable { errno } => assert!(
                    errno == libc::ENOTTY || errno == libc::EINVAL,
                    "unexpected errno {errno} ({})",
                    io::Error::from_raw_os_error(errno)
                ),
                Probe::Available => {
                    eprintln!("this kernel has KVM_SET_IOREGION; checking cleanliness only");
                }
            }
        }
        let after = open_fd_count();
        assert!(
            after < before + 100,
            "fds leaked: {before} before, {after} after"
        );
        // Nothing may remain registered at the scratch address: KVM refuses
        // an ioeventfd that overlaps an ioregion, so this would fail.
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let addr = kvm_ioctls::IoEventAddress::Mmio(SCRATCH);
        vm.register_ioevent(&evt, &addr, 0u64).unwrap();
        vm.unregister_ioevent(&evt, &addr, 0u64).unwrap();
        // No KVM_SET_IOREGION, no count; with it, the count probe leaves
        // nothing behind either.
        let counts = counts_posted_writes(&vm, SCRATCH);
        if last != Probe::Available {
            assert!(!counts, "a kernel without the ioctl cannot count");
        }
        vm.register_ioevent(&evt, &addr, 0u64).unwrap();
        vm.unregister_ioevent(&evt, &addr, 0u64).unwrap();
        eprintln!("KVM_SET_IOREGION probe: {last:?}, counts posted writes: {counts}");
    }
}
