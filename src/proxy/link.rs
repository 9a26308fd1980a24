//! How a proxy reaches its remote: the control protocol behind one trait,
//! so that the proxy device, its handshake, restarts and stats do not
//! depend on which protocol the remote speaks. mpqemu (QEMU's multiprocess
//! protocol, with our extensions when the remote is ours) is implemented
//! here; vfio-user in `crate::vfio_user::client`.

use std::fs::File;
use std::os::unix::net::UnixStream;

use crate::pci::BarKind;
use crate::protocol::channel::{Channel, ChannelError};
use crate::protocol::extensions::{MirrorLayout, SubRegion};
use crate::protocol::mpqemu::{Message, RET_ERROR, SysmemRegion};
use crate::proxy::spec::Dialect;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Mpqemu(#[from] ChannelError),
    #[error(transparent)]
    VfioUser(#[from] crate::vfio_user::connection::ConnectionError),
    #[error("the remote refused {what} (errno {errno})")]
    Refused { what: &'static str, errno: u32 },
    #[error("the remote answered {what} with {got}")]
    Unexpected { what: &'static str, got: String },
}

/// A BAR's region fds as a remote hands them out: the ranges, and the fds
/// they name by index.
pub type RegionFds = (Vec<SubRegion>, Vec<File>);

/// A BAR as the guest placed it: what a transport needs to name an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedBar {
    pub index: u8,
    pub kind: BarKind,
    /// The guest address the BAR starts at (mpqemu names accesses by it).
    pub base: u64,
}

/// The requests a proxy makes of its remote.
pub trait RemoteLink: Send {
    /// The control connection, for watching it hang up.
    fn socket(&self) -> &UnixStream;
    /// Gives the remote guest RAM: `regions` of `memfd`.
    fn share_ram(&mut self, regions: &[SysmemRegion], memfd: &File) -> Result<(), LinkError>;
    /// `len` (1 to 4) bytes at byte `addr` of config space.
    fn config_read(&mut self, addr: u32, len: u32) -> Result<u32, LinkError>;
    /// `data` (1 to 4 bytes) at byte `addr` of config space.
    fn config_write(&mut self, addr: u32, data: &[u8]) -> Result<(), LinkError>;
    /// Reads `data.len()` (1 to 8) bytes at `offset` of `bar`.
    fn bar_read(&mut self, bar: PlacedBar, offset: u64, data: &mut [u8]) -> Result<(), LinkError>;
    fn bar_write(&mut self, bar: PlacedBar, offset: u64, data: &[u8]) -> Result<(), LinkError>;
    /// Hands the remote its INTx: it raises `irqfd` and learns from
    /// `resamplefd` that the guest acknowledged the interrupt.
    fn wire_irq(&mut self, irqfd: File, resamplefd: File) -> Result<(), LinkError>;
    fn reset(&mut self) -> Result<(), LinkError>;
    /// A fresh set of region fds for BAR `bar` (one per range), for vCPU
    /// `vcpu`; None when the remote has no region fds at all.
    fn region_fds(&mut self, bar: u8, vcpu: u32) -> Result<Option<RegionFds>, LinkError>;
    /// The registers of BAR `bar` the remote mirrors, with the page; None
    /// when it mirrors none or cannot.
    fn register_mirror(&mut self, bar: u8) -> Result<Option<(MirrorLayout, File)>, LinkError>;
}

/// mpqemu. With `Dialect::Qemu` (QEMU's own remote) no extension command is
/// ever sent: QEMU drops the connection on one.
pub struct Mpqemu {
    channel: Channel,
    dialect: Dialect,
}

impl Mpqemu {
    pub fn new(channel: Channel, dialect: Dialect) -> Self {
        Mpqemu { channel, dialect }
    }

    fn ret(&mut self, msg: &Message) -> Result<u64, LinkError> {
        Ok(self.channel.request(msg)?.unwrap_or(RET_ERROR))
    }
}

impl RemoteLink for Mpqemu {
    fn socket(&self) -> &UnixStream {
        self.channel.socket()
    }

    fn share_ram(&mut self, regions: &[SysmemRegion], memfd: &File) -> Result<(), LinkError> {
        let fds = regions
            .iter()
            .map(|_| memfd.try_clone())
            .collect::<Result<_, _>>()
            .map_err(ChannelError::Io)?;
        self.channel.send(&Message::SyncSysmem {
            regions: regions.to_vec(),
            fds,
        })?;
        Ok(())
    }

    fn config_read(&mut self, addr: u32, len: u32) -> Result<u32, LinkError> {
        Ok(self.ret(&Message::PciCfgRead { addr, len })? as u32)
    }

    fn config_write(&mut self, addr: u32, data: &[u8]) -> Result<(), LinkError> {
        let mut val = [0u8; 4];
        val[..data.len()].copy_from_slice(data);
        self.channel.request(&Message::PciCfgWrite {
            addr,
            val: u32::from_le_bytes(val),
            len: data.len() as u32,
        })?;
        Ok(())
    }

    fn bar_read(&mut self, bar: PlacedBar, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        let value = self.ret(&Message::BarRead {
            addr: bar.base + offset,
            size: data.len() as u32,
            memory: bar.kind == BarKind::Memory,
        })?;
        crate::bus::data_to_bytes(value, data);
        Ok(())
    }

    fn bar_write(&mut self, bar: PlacedBar, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        self.channel.request(&Message::BarWrite {
            addr: bar.base + offset,
            val: crate::bus::data_from_bytes(data),
            size: data.len().min(8) as u32,
            memory: bar.kind == BarKind::Memory,
        })?;
        Ok(())
    }

    fn wire_irq(&mut self, irqfd: File, resamplefd: File) -> Result<(), LinkError> {
        self.channel
            .send(&Message::SetIrqfd { irqfd, resamplefd })?;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), LinkError> {
        self.channel.request(&Message::DeviceReset)?;
        Ok(())
    }

    fn region_fds(&mut self, bar: u8, vcpu: u32) -> Result<Option<RegionFds>, LinkError> {
        if self.dialect == Dialect::Qemu {
            return Ok(None);
        }
        match self.channel.exchange(&Message::RegionIoFdsQuery {
            bar: u32::from(bar),
            vcpu,
        })? {
            Message::RegionIoFds { regions, fds } => Ok(Some((regions, fds))),
            other => Err(LinkError::Unexpected {
                what: "a region-fd query",
                got: format!("command {}", other.command()),
            }),
        }
    }

    fn register_mirror(&mut self, bar: u8) -> Result<Option<(MirrorLayout, File)>, LinkError> {
        if self.dialect == Dialect::Qemu {
            return Ok(None);
        }
        match self.channel.exchange(&Message::RegisterMirrorQuery {
            bar: u32::from(bar),
        })? {
            Message::RegisterMirror { layout, mut fds } => Ok(fds.pop().map(|page| (layout, page))),
            other => Err(LinkError::Unexpected {
                what: "a register-mirror query",
                got: format!("command {}", other.command()),
            }),
        }
    }
}
