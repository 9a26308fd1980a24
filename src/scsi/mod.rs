//! SCSI: the bus a controller drives (selection, messages, phases,
//! disconnect and reselection), and the disk target for Linux's `sd`
//! (command parsing, sense data, block I/O and discard on a raw image
//! file).
//! Independent of the controller in front.

pub mod bus;
pub mod cdb;
pub mod data;
pub mod discard;
pub mod disk;
pub mod identity;
pub mod image;
pub mod opcodes;
pub mod pool;
pub mod qcow2;
pub mod sense;

pub use cdb::{Command, DataDirection};
pub use data::DataOut;
pub use disk::{DiskOptions, ScsiDisk};
pub use sense::Sense;

/// SCSI status bytes.
pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
