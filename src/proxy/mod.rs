//! The proxy: a PCI device in the VMM whose function lives in another
//! process, reached over the mpqemu control protocol.

pub mod connect;
pub mod cut_off;
pub mod device;
pub mod ioregion_setup;
pub mod link;
pub mod remote;
pub mod spec;
pub mod spec_help;
pub mod stats;
pub mod supervisor;
pub mod watchdog;
