//! ioregionfd: guest MMIO/PIO accesses to a device's region delivered as
//! fixed 32-byte records on a socket the device process reads, instead of
//! as mpqemu messages on its control socket.
//!
//! There are two ways a record reaches the device, and the device cannot
//! tell which one sent it, so it has a single code path ([`serve()`]):
//!
//! - **Kernel path** ([`kernel`]): the VMM registers the range with
//!   `KVM_SET_IOREGION`, and KVM writes the command to the fd itself and
//!   blocks the vCPU in the kernel until the response arrives; the VMM's
//!   vCPU thread never leaves `KVM_RUN`. This ioctl was proposed (RFC v3,
//!   2021) but never merged: no mainline kernel has it, so [`probe`] tries
//!   it and the VMM falls back when it fails.
//! - **Userspace path** ([`dispatch`]): the access exits to the VMM as a
//!   normal MMIO/PIO exit and the vCPU thread writes the same record to the
//!   same fd and waits for the response ([`RegionFd`]), with a timeout that
//!   the kernel path lacks.
//!
//! Records on one fd are processed in order and a response carries no
//! request id, so each fd has at most one command awaiting an answer and
//! only one of the two paths may use an fd at a time. The record layout is
//! in [`wire`]; the fd is one end of a SOCK_SEQPACKET pair
//! ([`socket_pair`]) so records keep their boundaries.

pub mod backlog;
pub mod dispatch;
pub mod kernel;
pub mod serve;
mod socket;
pub mod wire;

pub use backlog::{Backlog, StallClock};
pub use dispatch::{DEFAULT_TIMEOUT, DispatchError, RegionFd, WriteKind};
pub use kernel::{KernelError, KernelRegion, Probe, assign, deassign, probe};
pub use serve::{ERROR_DATA, ServeEnd, ServeError, serve, socket_pair};
pub use wire::{Access, Cmd, RECORD_SIZE, Resp, WireError};
