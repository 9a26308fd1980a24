//! The remote side: a device process serving one device model
//! (`device_model::DeviceModel`) over the mpqemu control protocol, with
//! guest RAM mapped from the VMM's memfd and its interrupt raised through an
//! irqfd.

pub mod cli;
pub mod dump;
pub mod sandbox;
pub mod server;
pub mod user;
