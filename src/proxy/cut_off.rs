//! A remote that fails or misbehaves is cut off: one flag that every path
//! to it checks, and what the guest and the log see from then on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::pci::CUT_OFF_REGISTERS;

/// How the log says what a cut-off device looks like to the guest.
pub const CUT_OFF_NOTE: &str = "the device is cut off: its registers read as zeros";

/// Shared "this remote is gone" flag; set by the proxy or the supervisor.
#[derive(Clone, Debug, Default)]
pub struct FailFlag(Arc<AtomicBool>);

impl FailFlag {
    /// Marks the device failed; returns true for the first caller only.
    pub fn fail(&self) -> bool {
        !self.0.swap(true, Ordering::SeqCst)
    }

    pub fn is_failed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
