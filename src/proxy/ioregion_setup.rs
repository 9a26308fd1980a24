//! Setting up a proxy device's ioregion fds: asking the remote which BAR
//! ranges it serves over region fds (one fd per vCPU per range, and on the
//! kernel path one more for KVM) and which
//! registers it mirrors, and checking what it claims before any guest
//! access goes there. Each checked range becomes an
//! [`IoRegionPath`](crate::ioregion::IoRegionPath), which the PCI root maps
//! on the bus wherever the guest puts the BAR.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use kvm_ioctls::VmFd;

use super::cut_off::FailFlag;
use super::stats::{DeviceStats, bump};
use super::watchdog::StallWatchdog;
use crate::ioregion::kernel_path::KernelPath;
use crate::ioregion::{IoRegionPath, RegionFd};
use crate::mirror::doorbell::{DoorbellMode, Doorbells};
use crate::mirror::posted::PostedSent;
use crate::mirror::reader::{BarMirror, MirrorError, check_registers, map_page};
use crate::pci::{BarKind, BarSpec, ConfigSpace};
use crate::protocol::extensions::{MirrorLayout, SUB_REGION_POSTED_WRITES, SubRegion};
use crate::proxy::link::{LinkError, RemoteLink};

/// Where ioregion accesses are dispatched, decided once per VM.
#[derive(Clone)]
pub enum Dispatch {
    /// KVM_SET_IOREGION works: KVM writes the records.
    Kernel {
        vm: Arc<VmFd>,
        /// KVM counts the posted writes it sends (our kernel/ module), so
        /// the mirrored registers can be left out of its ranges.
        counts_posted_writes: bool,
    },
    /// vCPU threads write the records.
    Userspace,
}

#[derive(Debug, thiserror::Error)]
pub enum IoRegionError {
    #[error("asking about BAR{bar}'s ioregion fds: {source}")]
    Link {
        bar: usize,
        #[source]
        source: LinkError,
    },
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
    #[error("BAR{bar}: {source}")]
    Mirror {
        bar: usize,
        #[source]
        source: MirrorError,
    },
}

fn is_seqpacket(fd: &OwnedFd) -> bool {
    crate::sys::socket_type(fd.as_fd()).is_ok_and(|kind| kind == libc::SOCK_SEQPACKET)
}

/// Everything `negotiate` needs besides the link.
pub struct Negotiation<'a> {
    pub name: &'a str,
    pub config: &'a ConfigSpace,
    pub vcpus: usize,
    pub dispatch: &'a Dispatch,
    pub stats: &'a Arc<DeviceStats>,
    pub failed: &'a FailFlag,
    /// Looks after the ranges with posted writes or served by KVM.
    pub watchdog: Option<&'a StallWatchdog>,
    /// Ask for the remote's register mirror.
    pub register_mirror: bool,
    /// How doorbells on ranges with posted writes are sent.
    pub doorbells: DoorbellMode,
    /// How long a vCPU thread polls for an answer before it sleeps.
    pub reply_poll: std::time::Duration,
}

/// What the remote offered for one BAR: its ranges, each range's fds (on
/// the kernel path KVM's first), and its register mirror.
struct BarOffer {
    bar: usize,
    spec: BarSpec,
    layout: Vec<SubRegion>,
    fds_by_region: Vec<Vec<RegionFd>>,
    mirror: Option<BarMirror>,
}

/// Asks the remote for each BAR's ioregion ranges, one fd per vCPU, and
/// checks its claims: ranges inside the BAR, disjoint, the same for every
/// vCPU, each with a SOCK_SEQPACKET fd of its own.
pub fn negotiate(
    link: &mut dyn RemoteLink,
    n: &Negotiation<'_>,
) -> Result<HashMap<usize, Vec<Arc<IoRegionPath>>>, IoRegionError> {
    // Every posted write to the device, whatever its range, is counted
    // here and in the remote's mirror page.
    let posted_sent = Arc::new(PostedSent::default());
    let doorbells = Arc::new(Doorbells::new(n.doorbells));
    let mut offers = Vec::new();
    for (bar, spec) in n.config.bar_specs() {
        // A remote without region fds: every access goes over messages.
        let Some(offer) = ask_for_bar(link, n, bar, spec, &posted_sent, &doorbells)? else {
            return Ok(HashMap::new());
        };
        offers.extend(offer);
    }
    // KVM posts writes only where the VMM cannot do better: when the
    // device counts posted writes in its mirror page, the VMM posts them
    // itself (through the page's ring, pacing doorbells, answering a read
    // behind known writes from the page), which it cannot while KVM posts
    // writes it does not see. KVM then serves reads and waited writes.
    let kvm_posts = !offers
        .iter()
        .any(|o| o.mirror.as_ref().is_some_and(|m| m.posted_sent.is_some()));
    if let Dispatch::Kernel { .. } = n.dispatch
        && !kvm_posts
    {
        log::info!(
            "remote {}: KVM waits for the writes it serves; the VMM posts writes of the \
             mirrored registers itself, which its mirror page counts",
            n.name
        );
    }
    let mut kvm_counters = Vec::new();
    // Mirror pages whose device reads our count of posted writes sent.
    let mut show_sent_in = Vec::new();
    let mut ring_page = None;
    let mut paths = HashMap::new();
    for offer in offers {
        let BarOffer {
            bar,
            spec,
            layout,
            fds_by_region,
            mirror,
        } = offer;
        if let Some(m) = mirror.as_ref().filter(|m| m.page.writable()) {
            show_sent_in.push(m.page.clone());
            // The device takes posted writes from every ring it offered;
            // the first is as good as any.
            if m.posted_ring && ring_page.is_none() {
                ring_page = Some(m.page.clone());
            }
        }
        let mut bar_paths = Vec::new();
        for (r, mut fds) in layout.iter().zip(fds_by_region) {
            let posted = r.flags & SUB_REGION_POSTED_WRITES != 0;
            let kernel = match n.dispatch {
                Dispatch::Kernel {
                    vm,
                    counts_posted_writes,
                } => {
                    bump(&n.stats.kernel_regions);
                    let kvm_posts_here = posted && kvm_posts;
                    let posted_count = (kvm_posts_here && *counts_posted_writes).then(|| {
                        let counter = PostedSent::leak_kvm_counter();
                        kvm_counters.push(counter);
                        counter
                    });
                    let fd = fds.remove(0);
                    let timeout = fd.timeout();
                    Some(KernelPath::new(
                        vm.clone(),
                        fd.into(),
                        timeout,
                        kvm_posts_here,
                        posted_count,
                    ))
                }
                Dispatch::Userspace => None,
            };
            log::info!(
                "remote {}: BAR{bar} {:#x}..{:#x} over ioregion fds ({} path, {}{})",
                n.name,
                r.offset,
                r.offset + r.size,
                if kernel.is_some() {
                    "kernel"
                } else {
                    "userspace"
                },
                {
                    let n = fds.len();
                    let fds = format!("{n} fd{}", if n == 1 { "" } else { "s" });
                    if kernel.is_some() {
                        format!("KVM's fd and {fds} of vCPU threads")
                    } else {
                        fds
                    }
                },
                if posted { ", posted writes" } else { "" }
            );
            let path = Arc::new(
                IoRegionPath::new(
                    format!("remote {} BAR{bar}+{:#x}", n.name, r.offset),
                    r,
                    spec.kind == BarKind::Io,
                    fds,
                    kernel,
                    n.stats.clone(),
                    n.failed.clone(),
                )
                .with_mirror(mirror.as_ref().and_then(|m| m.range(r.offset, r.size)))
                .counting_posted_writes(posted_sent.clone()),
            );
            if path.needs_watching()
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
    posted_sent.set_kvm_counters(kvm_counters);
    if !show_sent_in.is_empty() {
        if posted_sent.show_in(show_sent_in, ring_page) {
            log::debug!(
                "remote {}: its mirror page shows our count of posted writes sent",
                n.name
            );
            if posted_sent.ring().is_some() {
                log::info!(
                    "remote {}: posted writes go through the ring in its mirror page while it \
                     is awake",
                    n.name
                );
            }
        } else {
            log::info!(
                "remote {}: KVM posts writes too, so the remote is not shown our count of \
                 posted writes sent (it looks at every posted-write fd instead)",
                n.name
            );
        }
    }
    Ok(paths)
}

/// Asks the remote for BAR `bar`'s ranges, one set of fds per vCPU (and
/// one for KVM on the kernel path), and for its register mirror. `None`
/// when the remote has no region fds at all; `Some(None)` for a BAR
/// without ranges.
fn ask_for_bar(
    link: &mut dyn RemoteLink,
    n: &Negotiation<'_>,
    bar: usize,
    spec: BarSpec,
    posted_sent: &Arc<PostedSent>,
    doorbells: &Arc<Doorbells>,
) -> Result<Option<Option<BarOffer>>, IoRegionError> {
    let kernel = matches!(n.dispatch, Dispatch::Kernel { .. });
    let mut layout: Option<Vec<SubRegion>> = None;
    let mut fds_by_region: Vec<Vec<RegionFd>> = Vec::new();
    // On the kernel path the first set of fds is KVM's, the others the
    // vCPU threads'.
    let fd_sets = n.vcpus.max(1) + usize::from(kernel);
    for vcpu in 0..fd_sets {
        let reply = link
            .region_fds(bar as u8, vcpu as u32)
            .map_err(|source| IoRegionError::Link { bar, source })?;
        let Some((mut regions, fds)) = reply else {
            return Ok(None);
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
            fds_by_region[i].push(
                RegionFd::new(fd, r.user_data, posted)
                    .with_reply_poll(n.reply_poll, Some(n.stats.clone())),
            );
        }
    }
    let Some(layout) = layout else {
        return Ok(Some(None));
    };
    let mirror = match n.dispatch {
        _ if !n.register_mirror => None,
        // On the kernel path, reads of the mirrored registers reach us
        // only if KVM leaves them out of its pieces, which is safe only
        // where KVM counts any write it posts.
        Dispatch::Userspace
        | Dispatch::Kernel {
            counts_posted_writes: true,
            ..
        } => ask_for_mirror(link, n.name, bar, &layout, posted_sent, doorbells)?,
        Dispatch::Kernel { .. } => None,
    };
    let posted = layout
        .iter()
        .any(|r| r.flags & SUB_REGION_POSTED_WRITES != 0);
    if posted && mirror.as_ref().is_some_and(|m| m.posted_sent.is_some()) {
        log::info!(
            "remote {}: doorbells on BAR{bar}'s ranges with posted writes \
             (writes of a mirrored register that start the device's work) are {}",
            n.name,
            n.doorbells
        );
    }
    Ok(Some(Some(BarOffer {
        bar,
        spec,
        layout,
        fds_by_region,
        mirror,
    })))
}

/// Asks which registers of BAR `bar` the remote mirrors, and maps its page
/// if it names any. They must lie in `layout`'s ranges, and in ranges with
/// waited writes unless the page counts the posted writes applied (to
/// compare with `posted_sent`).
fn ask_for_mirror(
    link: &mut dyn RemoteLink,
    name: &str,
    bar: usize,
    layout: &[SubRegion],
    posted_sent: &Arc<PostedSent>,
    doorbells: &Arc<Doorbells>,
) -> Result<Option<BarMirror>, IoRegionError> {
    let offer = link
        .register_mirror(bar as u8)
        .map_err(|source| IoRegionError::Link { bar, source })?;
    let Some((
        MirrorLayout {
            registers,
            counts_posted_writes,
            reads_sent_count,
            posted_ring,
        },
        file,
    )) = offer
    else {
        return Ok(None);
    };
    let mirror_err = |source| IoRegionError::Mirror { bar, source };
    let ranges: Vec<(u64, u64, bool)> = layout
        .iter()
        .map(|r| (r.offset, r.size, r.flags & SUB_REGION_POSTED_WRITES != 0))
        .collect();
    check_registers(&registers, &ranges, counts_posted_writes).map_err(mirror_err)?;
    let page = map_page(&file, reads_sent_count).map_err(mirror_err)?;
    let page_writable = page.writable();
    if reads_sent_count && !page.writable() {
        log::info!(
            "remote {name}: its mirror page cannot be written, so it is not shown our count of \
             posted writes sent (it looks at every posted-write fd instead)"
        );
    }
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
        posted_sent: counts_posted_writes.then(|| posted_sent.clone()),
        doorbells: Some(doorbells.clone()),
        posted_ring: posted_ring && page_writable,
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
