//! The register mirror: a page of shared memory where a device keeps the
//! current value of registers that are read often and have no read side
//! effect, so that the VMM answers the guest's reads of them without a
//! round trip to the device's process.
//!
//! - `page`: the mapped page and its atomic accesses, for both ends.
//! - `writer`: the device's end, which creates, seals and updates the page.
//! - `reader`: the VMM's end, which checks what the device offers and
//!   answers reads from it.
//! - `doorbell`: whether the VMM waits for a write that starts the
//!   device's work, on a range whose writes are posted.
//! - `posted`: the VMM's count of the posted writes it sent, to compare
//!   with the page's count of those applied, and what the last few do.

pub mod doorbell;
pub mod page;
pub mod posted;
pub mod reader;
pub mod ring;
pub mod writer;

pub use writer::{MirrorOffer, RegisterMirror};
