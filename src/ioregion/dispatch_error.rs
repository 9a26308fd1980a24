//! Why an access through a region fd failed, as the vCPU thread (and the
//! watchdog that cuts a device off) tells it.

use std::io;
use std::time::Duration;

use super::wire::{RECORD_SIZE, WireError};

/// Why one access through a region fd failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("access size {0} is not 1, 2, 4 or 8 bytes")]
    AccessSize(usize),
    #[error("the device process closed its end of the region socket")]
    PeerClosed,
    #[error("the device process did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the device process did not take the command within {0:?} (its queue is full)")]
    SendTimeout(Duration),
    #[error("the device process did not take its posted writes within {0:?}")]
    PostedStalled(Duration),
    #[error("the device process did not take KVM's commands within {0:?}")]
    KernelStalled(Duration),
    #[error("response was {0} bytes, shorter than a {RECORD_SIZE}-byte record")]
    ShortResponse(usize),
    #[error("response was {0} bytes, longer than a {RECORD_SIZE}-byte record")]
    OversizedResponse(usize),
    #[error(
        "an earlier command on this region fd timed out; its late answer could be taken \
         for a later command's, so the fd is no longer used"
    )]
    Desynchronized,
    #[error("malformed response: {0}")]
    Wire(#[from] WireError),
    #[error("region socket {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DispatchError {
    /// Whether the device process is there but does not take or answer
    /// what it is sent: then where its threads sleep says why.
    pub fn is_a_hang(&self) -> bool {
        matches!(
            self,
            DispatchError::Timeout(_)
                | DispatchError::SendTimeout(_)
                | DispatchError::PostedStalled(_)
                | DispatchError::KernelStalled(_)
        )
    }
}

/// A socket error as a dispatch error: the errors of a peer that went
/// away are all `PeerClosed`.
pub(super) fn map_io(op: &'static str, e: io::Error) -> DispatchError {
    match e.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => DispatchError::PeerClosed,
        _ => DispatchError::Io { op, source: e },
    }
}
