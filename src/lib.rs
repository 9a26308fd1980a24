//! vmm: a small KVM virtual machine monitor whose PCI devices can live in
//! other processes.

pub mod bus;
pub mod config;
pub mod device_model;
pub mod devices;
#[doc(hidden)]
pub mod fuzzing;
pub mod ioregion;
#[cfg(test)]
mod layering;
pub mod layout;
pub mod lsi;
pub mod memory;
pub mod mirror;
pub mod pci;
pub mod protocol;
pub mod proxy;
pub mod remote;
pub mod scsi;
pub mod signals;
pub mod sys;
pub mod terminal;
#[cfg(test)]
mod test_support;
pub mod vfio_user;
pub mod vmm;
