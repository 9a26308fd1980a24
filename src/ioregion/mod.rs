//! ioregionfd: guest MMIO/PIO accesses to a device's region delivered as
//! fixed 32-byte records on a socket the device process reads, instead of
//! as mpqemu messages on its control socket.
//!
//! One guest access, end to end:
//!
//! - [`vmm_end`]: the VMM's vCPU thread took an MMIO/PIO exit for the range
//!   ([`IoRegionPath`]); it answers a mirrored register from the device's
//!   page, or writes the record to its own region fd ([`RegionFd`]) and
//!   waits for the response, with a timeout, polling for it first
//!   ([`reply_poll`]) when the device may answer from another CPU.
//! - [`kernel`]: where the kernel has `KVM_SET_IOREGION`, KVM writes the
//!   same record to the fd itself and blocks the vCPU in the kernel until
//!   the response arrives; the vCPU thread never leaves `KVM_RUN`. The ioctl
//!   was proposed (RFC v3, 2021) but never merged: no mainline kernel has
//!   it, so [`probe`] tries it and the VMM falls back to `vmm_end`.
//!   [`kernel_path`] holds a range KVM serves and watches that the device
//!   keeps taking KVM's commands, posted writes included.
//! - [`device_end`]: in the device process, a thread receives the record
//!   (one for all the fds with posted writes, one per other fd), applies it
//!   to the device model in the order the guest issued it, and answers
//!   when asked. It cannot tell which path sent a record. [`applied`]
//!   counts the posted writes it applied, and tells which records may go
//!   without a look at the device's other fds; `drain` applies the
//!   posted writes queued on its fds, and in the ring of its mirror page
//!   (`mirror::ring`), in the order they were issued.
//! - [`wire`]: the record's layout, byte by byte, and whole-record I/O on
//!   the SOCK_SEQPACKET pair ([`socket_pair`]) that keeps record boundaries,
//!   for both ends (the device's: receive, answer).
//!
//! Records on one fd are processed in order and a response carries no
//! request id, so each fd has at most one command awaiting an answer and
//! only one of the two paths may use an fd at a time.

pub mod applied;
pub mod device_end;
mod dispatch_error;
mod drain;
pub mod kernel;
pub mod kernel_path;
pub mod reply_poll;
pub mod vmm_end;
mod vmm_watch;
pub mod wire;

pub use kernel::{KernelError, KernelRegion, Probe, assign, deassign, probe};
pub use vmm_end::{DEFAULT_TIMEOUT, DispatchError, IoRegionPath, RegionFd, WriteKind};
pub use wire::{Access, Cmd, RECORD_SIZE, Resp, WireError, socket_pair};
pub use wire::{ERROR_DATA, ServeEnd, ServeError};
