//! Connecting a proxy to its remote: the handshake that learns the
//! remote's identity and BARs, gives it guest RAM and its interrupt fds and
//! sets up its ioregion ranges; and the same for a restarted remote taking
//! over a device whose config space the guest has already programmed.

use crate::mirror::doorbell::DoorbellMode;
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::ioregion::IoRegionPath;
use crate::pci::BarSpec;
use crate::pci::config::{ConfigSpace, NUM_BARS, REG_BAR0, REG_CLASS, REG_ID, SizedBar, sized_bar};
use crate::protocol::mpqemu::SysmemRegion;
use crate::proxy::cut_off::FailFlag;
use crate::proxy::ioregion_setup::{Dispatch, IoRegionError, Negotiation};
use crate::proxy::link::{LinkError, RemoteLink};
use crate::proxy::stats::DeviceStats;
use crate::proxy::watchdog::StallWatchdog;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("remote {name}: {what}: {source}")]
    Link {
        name: String,
        what: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("remote {name} reports no PCI device (vendor id {vendor:#06x})")]
    NoDevice { name: String, vendor: u16 },
    #[error("remote {name} claims an impossible BAR{bar} (sizing read back {raw:#010x})")]
    BadBar { name: String, bar: usize, raw: u32 },
    #[error("remote {name}: cannot set up its interrupt or RAM fds: {source}")]
    Irq {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("remote {name}: {source}")]
    IoRegion {
        name: String,
        #[source]
        source: IoRegionError,
    },
    #[error("remote {name} is not the device it replaces (other identity or BARs)")]
    NotTheSameDevice { name: String },
    #[error("remote {name}: KVM refused its irqfd: {source}")]
    Irqfd {
        name: String,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Registers an (irqfd, resamplefd) pair for a GSI with KVM; a function so
/// tests can stand in for KVM.
pub type IrqRegistrar<'a> = dyn Fn(&EventFd, &EventFd, u32) -> Result<(), kvm_ioctls::Error> + 'a;

/// How a proxy talks to its remote beyond plain QEMU multiprocess.
#[derive(Clone)]
pub struct ProxyOptions {
    /// None: every BAR access goes over messages (ioregionfd=off).
    pub ioregion: Option<Dispatch>,
    /// One ioregion fd per vCPU per range.
    pub vcpus: usize,
    /// Watches the ranges with posted writes or served by KVM; None in
    /// tests that do not.
    pub watchdog: Option<Arc<StallWatchdog>>,
    /// Use the remote's register mirror, if it offers one.
    pub register_mirror: bool,
    /// How doorbells on ranges with posted writes are sent.
    pub doorbells: DoorbellMode,
    /// How long a vCPU thread polls for an answer before it sleeps.
    pub reply_poll: std::time::Duration,
}

/// What a restarted remote is given, copied from the device when the
/// takeover began, so that the handshake runs without the device's lock.
pub struct Takeover {
    pub(super) predecessor: String,
    pub(super) sysmem: Sysmem,
    pub(super) config: ConfigSpace,
    pub(super) written: Vec<(usize, usize, Vec<u8>)>,
    pub(super) options: ProxyOptions,
    pub(super) stats: Arc<DeviceStats>,
}

/// A remote that passed the handshake, for `complete_takeover`.
pub struct Successor {
    pub(super) name: String,
    pub(super) link: Box<dyn RemoteLink>,
    pub(super) failed: FailFlag,
    pub(super) fast_paths: HashMap<usize, Vec<Arc<IoRegionPath>>>,
    pub(super) replayed: usize,
}

impl Takeover {
    /// The slow part, up to some 40 round trips: the remote on `link`
    /// must be the same device; it gets guest RAM, a reset, the config
    /// space as of the copy and its ioregion fds.
    pub fn handshake(
        self,
        name: String,
        mut link: Box<dyn RemoteLink>,
    ) -> Result<Successor, ProxyError> {
        share_ram(&mut *link, &name, &self.sysmem)?;
        let config = probe_config(&mut *link, &name)?;
        let same = |reg| config.read(reg) == self.config.read(reg);
        if !same(REG_ID) || !same(REG_CLASS) || config.bar_specs() != self.config.bar_specs() {
            return Err(ProxyError::NotTheSameDevice { name });
        }
        link.reset()
            .map_err(link_err(&name, "resetting the device"))?;
        // BARs first, then the rest in the order the guest last wrote them.
        let replay_err = link_err(&name, "replaying config space");
        for (bar, _) in self.config.bar_specs() {
            let value = self.config.read(REG_BAR0 + bar);
            cfg_write(&mut *link, REG_BAR0 + bar, 0, &value.to_le_bytes()).map_err(&replay_err)?;
        }
        for (reg, offset, data) in &self.written {
            cfg_write(&mut *link, *reg, *offset, data).map_err(&replay_err)?;
        }
        let failed = FailFlag::default();
        let fast_paths = fast_paths(
            &mut *link,
            &name,
            &self.config,
            &self.options,
            &self.stats,
            &failed,
        )?;
        log::debug!(
            "remote {name}: handshake done, taking over from {}",
            self.predecessor
        );
        Ok(Successor {
            name,
            link,
            failed,
            fast_paths,
            replayed: self.written.len(),
        })
    }
}

/// Guest RAM as SYNC_SYSMEM hands it out.
pub(super) struct Sysmem {
    pub(super) regions: Vec<SysmemRegion>,
    pub(super) memfd: File,
}

pub(super) fn link_err(name: &str, what: &'static str) -> impl Fn(LinkError) -> ProxyError + use<> {
    let name = name.to_string();
    move |source| ProxyError::Link {
        name: name.clone(),
        what,
        source,
    }
}

pub(super) fn share_ram(
    link: &mut dyn RemoteLink,
    name: &str,
    sysmem: &Sysmem,
) -> Result<(), ProxyError> {
    link.share_ram(&sysmem.regions, &sysmem.memfd)
        .map_err(link_err(name, "sharing guest RAM"))
}

/// Reads the remote's identity and sizes its BARs, leaving them as they were.
pub(super) fn probe_config(
    link: &mut dyn RemoteLink,
    name: &str,
) -> Result<ConfigSpace, ProxyError> {
    let err = link_err(name, "reading config space");
    let cfg_read = |link: &mut dyn RemoteLink, reg: usize| -> Result<u32, ProxyError> {
        link.config_read(reg as u32 * 4, 4).map_err(&err)
    };
    let id = cfg_read(link, REG_ID)?;
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return Err(ProxyError::NoDevice {
            name: name.to_string(),
            vendor,
        });
    }
    let class = cfg_read(link, REG_CLASS)?;
    let mut config = ConfigSpace::new(vendor, (id >> 16) as u16, class >> 8, class as u8);
    let sizing_err = link_err(name, "sizing a BAR");
    for bar in 0..NUM_BARS {
        let reg = REG_BAR0 + bar;
        let original = cfg_read(link, reg)?;
        cfg_write(link, reg, 0, &[0xff; 4]).map_err(&sizing_err)?;
        let raw = cfg_read(link, reg)?;
        cfg_write(link, reg, 0, &original.to_le_bytes()).map_err(&sizing_err)?;
        let BarSpec { kind, size } = match sized_bar(raw) {
            SizedBar::Absent => continue,
            SizedBar::Memory64 => {
                log::warn!("remote {name}: 64-bit BAR{bar} is not supported; left unmapped");
                continue;
            }
            SizedBar::Sized(spec) => spec,
        };
        config
            .set_bar(bar, BarSpec { kind, size })
            .map_err(|_| ProxyError::BadBar {
                name: name.to_string(),
                bar,
                raw,
            })?;
        log::info!("remote {name}: BAR{bar} {kind:?} {size:#x} bytes");
    }
    Ok(config)
}

/// The BAR ranges the remote serves over region fds, checked; none when
/// it has none (a plain QEMU remote) or `ioregionfd=off`.
pub(super) fn fast_paths(
    link: &mut dyn RemoteLink,
    name: &str,
    config: &ConfigSpace,
    options: &ProxyOptions,
    stats: &Arc<DeviceStats>,
    failed: &FailFlag,
) -> Result<HashMap<usize, Vec<Arc<IoRegionPath>>>, ProxyError> {
    let paths = match &options.ioregion {
        Some(dispatch) => crate::proxy::ioregion_setup::negotiate(
            link,
            &Negotiation {
                name,
                config,
                vcpus: options.vcpus,
                dispatch,
                stats,
                failed,
                watchdog: options.watchdog.as_deref(),
                register_mirror: options.register_mirror,
                doorbells: options.doorbells,
                reply_poll: options.reply_poll,
            },
        )
        .map_err(|source| ProxyError::IoRegion {
            name: name.to_string(),
            source,
        })?,
        None => HashMap::new(),
    };
    if paths.is_empty() {
        log::info!("remote {name}: every BAR access goes over control-socket messages");
    }
    Ok(paths)
}

/// Hands the remote its interrupt: it raises `irqfd` and learns from
/// `resamplefd` that the guest acknowledged a level interrupt.
pub(super) fn wire_irq(
    link: &mut dyn RemoteLink,
    name: &str,
    irqfd: &EventFd,
    resamplefd: &EventFd,
) -> Result<(), ProxyError> {
    let as_file = |e: &EventFd| {
        crate::sys::eventfd_file(e).map_err(|source| ProxyError::Irq {
            name: name.to_string(),
            source,
        })
    };
    link.wire_irq(as_file(irqfd)?, as_file(resamplefd)?)
        .map_err(link_err(name, "wiring the interrupt"))
}

/// One config-space write: `data` at byte `offset` of dword `reg`.
pub(super) fn cfg_write(
    link: &mut dyn RemoteLink,
    reg: usize,
    offset: usize,
    data: &[u8],
) -> Result<(), LinkError> {
    link.config_write((reg * 4 + offset) as u32, data)
}
