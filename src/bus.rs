//! Address-range buses for port I/O and MMIO.
//!
//! Each device sits behind its own mutex and the range map behind a
//! read-write lock, so vCPUs touching different devices never wait on each
//! other and there is no global device lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers reads and writes inside the range it was inserted at.
pub trait BusDevice: Send {
    /// `offset` is relative to the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device that serves several vCPUs at once: it needs no lock around it
/// (ioregion fds, one per vCPU), so the bus calls it through `&self`.
pub trait SharedBusDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// Whether `len` bytes at `offset` lie inside a range of `size` bytes
/// (no overflow at the top of the address space).
pub fn fits(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// The value of an access of up to 8 bytes: its bytes, little-endian, in
/// the low bytes of a u64, the way every transport carries it.
pub fn data_from_bytes(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    let n = bytes.len().min(8);
    le[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(le)
}

/// Copies the low `out.len()` bytes (at most 8) of `data` into `out`,
/// little-endian: the inverse of [`data_from_bytes`].
pub fn data_to_bytes(data: u64, out: &mut [u8]) {
    let le = data.to_le_bytes();
    let n = out.len().min(8);
    out[..n].copy_from_slice(&le[..n]);
}

/// The two address spaces a vCPU exit can target.
#[derive(Default)]
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

thread_local! {
    static CURRENT_VCPU: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the vCPU whose access the calling thread is dispatching (0
/// outside vCPU threads), so devices can keep per-vCPU state such as
/// ioregion fds without a lock.
pub fn current_vcpu() -> usize {
    CURRENT_VCPU.with(|c| c.get())
}

/// Called once by each vCPU thread before its first access.
pub fn set_current_vcpu(index: usize) {
    CURRENT_VCPU.with(|c| c.set(index));
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
    #[error("no device starts at {0:#x}")]
    NotFound(u64),
}

/// What a range of the bus forwards to.
#[derive(Clone)]
pub enum Target {
    Locked(Arc<Mutex<dyn BusDevice>>),
    Shared(Arc<dyn SharedBusDevice>),
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: Target,
}

fn insert_into(
    ranges: &mut BTreeMap<u64, Entry>,
    device: Target,
    base: u64,
    len: u64,
) -> Result<(), BusError> {
    if len == 0 || base.checked_add(len - 1).is_none() {
        return Err(BusError::InvalidRange { base, len });
    }
    let end = base + (len - 1);
    // The nearest range starting at or below our end is the only one
    // that can overlap us, because ranges never overlap each other.
    if let Some((&other, entry)) = ranges.range(..=end).next_back()
        && other + (entry.len - 1) >= base
    {
        return Err(BusError::Overlap { base, len, other });
    }
    ranges.insert(base, Entry { len, device });
    Ok(())
}

#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        self.insert_target(Target::Locked(device), base, len)
    }

    pub fn insert_shared(
        &self,
        device: Arc<dyn SharedBusDevice>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        self.insert_target(Target::Shared(device), base, len)
    }

    fn insert_target(&self, device: Target, base: u64, len: u64) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().expect("bus lock poisoned");
        insert_into(&mut ranges, device, base, len)
    }

    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().expect("bus lock poisoned");
        ranges
            .remove(&base)
            .map(|_| ())
            .ok_or(BusError::NotFound(base))
    }

    /// Removes the devices starting at `remove` and inserts `insert`
    /// (base, length, device) in one step: an access sees either the old
    /// devices or the new ones, never the gap between a remove and an
    /// insert. All or nothing: on error the bus is left as it was.
    pub fn replace(&self, remove: &[u64], insert: Vec<(u64, u64, Target)>) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().expect("bus lock poisoned");
        // Worked on a copy so that a failure half-way leaves nothing
        // changed; the maps hold a few dozen Arcs at most.
        let mut next = ranges.clone();
        for base in remove {
            next.remove(base).ok_or(BusError::NotFound(*base))?;
        }
        for (base, len, device) in insert {
            insert_into(&mut next, device, base, len)?;
        }
        *ranges = next;
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(Target, u64)> {
        let ranges = self.ranges.read().expect("bus lock poisoned");
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device.
        if !fits(offset, size as u64, entry.len) {
            return None;
        }
        Some((entry.device.clone(), offset))
    }

    /// Returns false when nothing is mapped at `addr`; `data` is then all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((Target::Locked(device), offset)) => {
                device
                    .lock()
                    .expect("device lock poisoned")
                    .read(offset, data);
                true
            }
            Some((Target::Shared(device), offset)) => {
                device.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Returns false when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((Target::Locked(device), offset)) => {
                device
                    .lock()
                    .expect("device lock poisoned")
                    .write(offset, data);
                true
            }
            Some((Target::Shared(device), offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_checks_the_end_without_overflow() {
        assert!(fits(0, 4, 4));
        assert!(fits(4, 0, 4));
        assert!(!fits(1, 4, 4));
        assert!(!fits(u64::MAX, 2, u64::MAX));
    }

    /// Remembers the last write and answers reads with offset-tagged bytes.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset as u8 + i as u8;
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x100, 0x10).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x104, &mut data));
        assert_eq!(data, [4, 5]);
        assert!(bus.write(0x10f, &[7]));
        assert_eq!(probe.lock().unwrap().last_write, Some((0xf, vec![7])));
    }

    #[test]
    fn unmapped_reads_are_all_ones() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x100, 0x10)
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xff, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.read(0x110, &mut data));
        assert!(!bus.write(0x200, &[1]));
    }

    #[test]
    fn accesses_straddling_the_end_are_unmapped() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x100, 0x10)
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x10e, &mut data));
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0x1000),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(dev(), 0x300, 0).unwrap_err(),
            BusError::InvalidRange {
                base: 0x300,
                len: 0
            }
        );
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
        bus.insert(dev(), 0xf0, 0x10).unwrap();
        bus.insert(dev(), 0x110, 0x10).unwrap();
    }

    #[test]
    fn replace_is_all_or_nothing() {
        let bus = Bus::new();
        let dev = || Target::Locked(Arc::new(Mutex::new(Probe::default())));
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x100, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x200, 0x10)
            .unwrap();
        let clash = vec![(0x100, 0x8, dev()), (0x1f8, 0x10, dev())];
        assert!(matches!(
            bus.replace(&[0x100], clash),
            Err(BusError::Overlap { other: 0x200, .. })
        ));
        assert!(matches!(
            bus.replace(&[0x300], vec![]),
            Err(BusError::NotFound(0x300))
        ));
        let mut data = [0u8; 1];
        assert!(bus.read(0x10f, &mut data), "left as it was");
        bus.replace(&[0x100], vec![(0x100, 0x8, dev()), (0x108, 0x8, dev())])
            .unwrap();
        assert!(bus.read(0x10f, &mut data));
        assert_eq!(data, [7], "the second half now starts at 0x108");
    }

    #[test]
    fn removed_devices_stop_answering() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x100, 0x10)
            .unwrap();
        bus.remove(0x100).unwrap();
        assert!(!bus.write(0x100, &[1]));
        assert!(matches!(bus.remove(0x100), Err(BusError::NotFound(0x100))));
    }
}
