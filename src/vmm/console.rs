//! Host stdin to the guest's serial port, with a QEMU-style escape
//! (Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A) when stdin is a terminal.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::stop::{StopReason, StopSignal};
use crate::devices::serial::SerialDevice;

const ESCAPE: u8 = 0x01; // Ctrl-A

/// Splits terminal input into bytes for the guest and an optional quit request.
#[derive(Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    /// Returns the bytes to forward and whether the user asked to quit.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return (out, true),
                    ESCAPE => out.push(ESCAPE),
                    other => {
                        out.push(ESCAPE);
                        out.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

pub struct StdinConsole {
    serial: Arc<Mutex<SerialDevice>>,
    stop: Arc<StopSignal>,
    /// Only an interactive terminal gets the escape sequence.
    escape: Option<EscapeFilter>,
}

impl StdinConsole {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, stop: Arc<StopSignal>, interactive: bool) -> Self {
        StdinConsole {
            serial,
            stop,
            escape: interactive.then(EscapeFilter::default),
        }
    }
}

impl MutEventSubscriber for StdinConsole {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let n = if events.event_set().contains(EventSet::IN) {
            match std::io::stdin().lock().read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
                Err(e) => {
                    log::warn!("stdin read failed, console input stops: {e}");
                    0
                }
            }
        } else {
            0
        };
        if n == 0 {
            log::debug!("stdin closed; the guest gets no more console input");
            let _ = ops.remove(Events::new(&std::io::stdin(), EventSet::IN));
            return;
        }
        let (bytes, quit) = match self.escape.as_mut() {
            Some(filter) => filter.feed(&buf[..n]),
            None => (buf[..n].to_vec(), false),
        };
        self.serial
            .lock()
            .expect("serial lock poisoned")
            .queue_input(&bytes);
        if quit {
            log::info!("Ctrl-A x: stopping the VM");
            self.stop.request(StopReason::Signal(libc::SIGINT));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            // /dev/null or a closed stdin cannot be polled; the guest simply gets no input.
            log::debug!("stdin (fd {}) not pollable: {e}", stdin.as_raw_fd());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_x_quits_and_double_escape_is_literal() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ab"), (b"ab".to_vec(), false));
        assert_eq!(f.feed(&[ESCAPE, ESCAPE, b'c']), (vec![ESCAPE, b'c'], false));
        assert_eq!(f.feed(&[b'z', ESCAPE]), (vec![b'z'], false));
        assert_eq!(f.feed(b"x"), (vec![], true));
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(&[ESCAPE, b'q']), (vec![ESCAPE, b'q'], false));
    }
}
