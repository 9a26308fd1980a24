//! The 16550 UART at 0x3f8 (vm-superio) as a bus device, with its
//! interrupt delivered through an irqfd and its input fed from stdin.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
/// Interrupt Enable Register bit for "received data available".
const IER_RX_AVAILABLE: u8 = 0x01;
const IER_OFFSET: u64 = 1;
/// Line Control Register bit that turns offsets 0 and 1 into the divisor latch.
const LCR_DLAB: u8 = 0x80;
const LSR_DATA_READY: u8 = 0x01;
const IIR_ID_MASK: u8 = 0x0f;
const IIR_NONE: u8 = 0x01;
const IIR_RX_AVAILABLE: u8 = 0x04;

/// An interrupt line backed by an eventfd that KVM listens to (irqfd).
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A writer handle that can be cloned, so the UART can be rebuilt around it.
#[derive(Clone)]
pub struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("writer lock poisoned").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().expect("writer lock poisoned").flush()
    }
}

pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, SharedWriter>,
    out: SharedWriter,
    /// Input waiting for the guest to make room or to start listening.
    pending_input: VecDeque<u8>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        let out = SharedWriter(Arc::new(Mutex::new(out)));
        SerialDevice {
            uart: Serial::new(IrqLine(irq), out.clone()),
            out,
            pending_input: VecDeque::new(),
        }
    }

    /// When the guest turns receive interrupts off (its driver shutting the
    /// port down or starting it up), it next reads and discards the receive
    /// register. Take unread input back so it is delivered once the driver
    /// listens again, instead of being thrown away.
    fn reclaim_unread_input(&mut self) {
        let mut state = self.uart.state();
        if state.in_buffer.is_empty() {
            return;
        }
        let unread = std::mem::take(&mut state.in_buffer);
        for b in unread.into_iter().rev() {
            self.pending_input.push_front(b);
        }
        state.line_status &= !LSR_DATA_READY;
        if state.interrupt_identification & IIR_ID_MASK == IIR_RX_AVAILABLE {
            state.interrupt_identification =
                (state.interrupt_identification & !IIR_ID_MASK) | IIR_NONE;
        }
        let irq = match self.uart.interrupt_evt().0.try_clone() {
            Ok(fd) => IrqLine(fd),
            Err(e) => {
                log::warn!("serial: cannot clone the irqfd, unread input stays: {e}");
                return;
            }
        };
        match Serial::from_state(&state, irq, NoEvents, self.out.clone()) {
            Ok(uart) => self.uart = uart,
            Err(e) => log::warn!("serial: cannot rebuild the UART: {e:?}"),
        }
    }

    /// Queues host input; it reaches the UART as the guest can take it, so
    /// nothing typed or piped before the guest driver is ready gets lost.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
        self.flush_input();
    }

    pub fn has_pending_input(&self) -> bool {
        !self.pending_input.is_empty()
    }

    /// Moves queued input into the receive FIFO while the guest has receive
    /// interrupts on. Called after guest accesses and from the main loop.
    pub fn flush_input(&mut self) {
        if self.pending_input.is_empty()
            || self.uart.state().interrupt_enable & IER_RX_AVAILABLE == 0
        {
            return;
        }
        let room = self.uart.fifo_capacity().min(self.pending_input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending_input.drain(..room).collect();
        if let Err(e) = self.uart.enqueue_raw_bytes(&chunk) {
            log::warn!("serial input dropped: {e:?}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
        if self.has_pending_input() {
            self.flush_input();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == IER_OFFSET
            && data.first().is_some_and(|v| v & IER_RX_AVAILABLE == 0)
            && self.uart.state().line_control & LCR_DLAB == 0
        {
            self.reclaim_unread_input();
        }
        if let Some(&value) = data.first()
            && let Err(e) = self.uart.write(offset as u8, value)
        {
            log::warn!("serial write failed: {e:?}");
        }
        if self.has_pending_input() {
            self.flush_input();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Capture, EventFd) {
        let irq = EventFd::new(0).unwrap();
        let out = Capture::default();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (dev, out, irq)
    }

    #[test]
    fn transmit_reaches_the_writer() {
        let (mut dev, out, _) = device();
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
    }

    #[test]
    fn input_waits_until_the_guest_enables_receive_interrupts() {
        let (mut dev, _, irq) = device();
        dev.queue_input(b"ls\n");
        assert!(dev.has_pending_input(), "held back while IER is off");
        dev.write(1, &[IER_RX_AVAILABLE]);
        assert!(!dev.has_pending_input());
        assert!(irq.read().unwrap() >= 1, "receive interrupt raised");
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut b = [0u8];
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ls\n");
    }

    #[test]
    fn input_larger_than_the_fifo_is_not_lost() {
        let (mut dev, _, _) = device();
        dev.write(1, &[IER_RX_AVAILABLE]);
        let input: Vec<u8> = (0..200u8).collect();
        dev.queue_input(&input);
        let mut got = Vec::new();
        while got.len() < input.len() {
            let mut b = [0u8];
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
    }

    #[test]
    fn input_unread_when_the_driver_stops_listening_is_kept() {
        let (mut dev, _, _) = device();
        dev.write(IER_OFFSET, &[IER_RX_AVAILABLE]);
        dev.queue_input(b"echo");
        // The driver shuts the port down: interrupts off, then a discarding read.
        dev.write(IER_OFFSET, &[0]);
        let mut b = [0u8];
        dev.read(5, &mut b);
        assert_eq!(b[0] & LSR_DATA_READY, 0, "nothing left to discard");
        dev.read(0, &mut b);
        // Listening again: all four bytes arrive.
        dev.write(IER_OFFSET, &[IER_RX_AVAILABLE]);
        let mut got = Vec::new();
        for _ in 0..4 {
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"echo");
    }
}
