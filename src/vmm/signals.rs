//! Termination signals, SIGUSR1 (counters) and SIGUSR2 (state dump) as
//! events: blocked in every thread and read from a signalfd by the main
//! loop, so a signal can never interrupt a lock holder (nor end the process
//! by its default action).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::stop::{StopReason, StopSignal};
use crate::signals;

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// Asks for the device counters without stopping anything.
const REPORT_SIGNAL: libc::c_int = libc::SIGUSR1;
/// Asks for a state dump without stopping anything.
const DUMP_SIGNAL: libc::c_int = super::dump::DUMP_SIGNAL;

fn stop_set() -> signals::SigSet {
    let mut all = STOP_SIGNALS.to_vec();
    all.extend([REPORT_SIGNAL, DUMP_SIGNAL]);
    signals::SigSet::of(&all)
}

/// Blocks the stop, report and dump signals in the calling thread and
/// every thread it spawns afterwards; call before creating any thread, or
/// a SIGUSR2 delivered to one that does not block it ends the VMM.
pub fn block_stop_signals() -> std::io::Result<()> {
    signals::block(&stop_set()).map(drop)
}

pub struct SignalHandler {
    fd: File,
    stop: Arc<StopSignal>,
    report: Box<dyn Fn() + Send>,
    dump: Box<dyn Fn() + Send>,
}

impl SignalHandler {
    /// `report` runs on SIGUSR1 and `dump` on SIGUSR2; the other signals
    /// stop the VM.
    pub fn new(
        stop: Arc<StopSignal>,
        report: Box<dyn Fn() + Send>,
        dump: Box<dyn Fn() + Send>,
    ) -> std::io::Result<Self> {
        let fd = signals::signalfd(&stop_set())?;
        Ok(SignalHandler {
            fd,
            stop,
            report,
            dump,
        })
    }
}

impl SignalHandler {
    /// Reads every pending signal from the fd and acts on it.
    fn take_pending(&mut self) {
        while let Some(signo) = signals::next(&mut self.fd) {
            if signo == REPORT_SIGNAL {
                (self.report)();
                continue;
            }
            if signo == DUMP_SIGNAL {
                (self.dump)();
                continue;
            }
            log::info!("received signal {signo}, stopping the VM");
            self.stop.request(StopReason::Signal(signo));
        }
    }
}

impl MutEventSubscriber for SignalHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.take_pending();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd.as_raw_fd(), EventSet::IN)) {
            log::error!("cannot watch for signals: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Sends `signo` to the calling thread only, so the other tests'
    /// threads never see it.
    fn signal_this_thread(signo: libc::c_int) {
        // SAFETY: tgkill to this very thread, which blocks the signal.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid(),
                libc::syscall(libc::SYS_gettid),
                signo,
            )
        };
        assert_eq!(rc, 0);
    }

    #[test]
    fn usr2_asks_for_a_dump_and_neither_stops_nor_kills_the_vmm() {
        // A thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            block_stop_signals().unwrap();
            let stop = Arc::new(StopSignal::new().unwrap());
            let dumps = Arc::new(AtomicUsize::new(0));
            let reports = Arc::new(AtomicUsize::new(0));
            let mut handler = {
                let dumps = dumps.clone();
                let reports = reports.clone();
                SignalHandler::new(
                    stop.clone(),
                    Box::new(move || {
                        reports.fetch_add(1, Ordering::SeqCst);
                    }),
                    Box::new(move || {
                        dumps.fetch_add(1, Ordering::SeqCst);
                    }),
                )
                .unwrap()
            };
            // Unblocked, its default action would end the test binary.
            signal_this_thread(libc::SIGUSR2);
            handler.take_pending();
            assert_eq!(dumps.load(Ordering::SeqCst), 1);
            assert_eq!(reports.load(Ordering::SeqCst), 0);
            assert_eq!(stop.reason(), None);
            signal_this_thread(libc::SIGUSR1);
            signal_this_thread(libc::SIGTERM);
            handler.take_pending();
            assert_eq!(dumps.load(Ordering::SeqCst), 1);
            assert_eq!(reports.load(Ordering::SeqCst), 1);
            assert_eq!(stop.reason(), Some(StopReason::Signal(libc::SIGTERM)));
        })
        .join()
        .unwrap();
    }
}
