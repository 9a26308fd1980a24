//! Wire formats shared by the proxy (VMM side) and the remote device
//! process. Defined once here and used by both sides.

pub mod channel;
pub mod decode;
pub mod extensions;
pub mod mpqemu;
