//! vfio-user: the protocol QEMU's `vfio-user-pci`, libvfio-user and SPDK
//! use to put a PCI device in another process (specified in QEMU's
//! `docs/interop/vfio-user.rst`). Every message is a 16-byte header
//! ([`header`]) and a payload ([`messages`], [`version`], and [`io_fds`]
//! for DEVICE_GET_REGION_IO_FDS, whose ioregionfd sub-regions we serve and
//! use on both sides).
//!
//! This module is the wire format alone; file descriptors travel beside
//! the bytes (SCM_RIGHTS) and are the transport's business.

pub mod client;
pub mod connection;
pub mod dma_by_message;
pub mod header;
pub mod io_fds;
pub mod messages;
pub mod mirror;
pub mod server;
pub mod version;

pub use header::{Command, HEADER_SIZE, Header, Kind};

/// Why a vfio-user message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a message of {size} bytes (a header alone is 16, and at most {max} are taken)")]
    MessageSize { size: u32, max: usize },
    #[error("header flags {0:#x} are unknown or contradict each other")]
    Flags(u32),
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    #[error("{command:?} with a {size}-byte payload (expected {expected})")]
    PayloadSize {
        command: Command,
        size: usize,
        expected: &'static str,
    },
    #[error("{command:?}: {what}")]
    Field {
        command: Command,
        what: &'static str,
    },
    #[error("the version's capabilities: {0}")]
    Capabilities(String),
    #[error("the {command:?} reply needs {needed} bytes, more than were asked for")]
    Truncated { command: Command, needed: u32 },
}
