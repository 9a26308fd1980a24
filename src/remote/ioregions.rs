//! Serving a device's BARs over ioregionfd from the remote side: for each
//! sub-range the device offers and each vCPU, a SOCK_SEQPACKET pair whose
//! far end goes to the VMM, and a thread here that applies the command
//! records to the device.
//!
//! One fd per vCPU per sub-region keeps vCPUs from queueing behind each
//! other on a socket. PCI ordering still holds: a read or a non-posted
//! write must see every posted write sent before it, whichever fd that
//! went to. So records are only ever received under the `Hub` lock, and
//! before serving anything the thread drains the device's posted-write
//! fds. A posted write that was sent before a later access (from any
//! vCPU, since the guest orders its CPUs through memory) is already queued
//! on its socket by then, so it is applied first.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::RemoteDevice;
use crate::ioregion::serve::{
    Drained, ERROR_DATA, Incoming, RECV_BUF_SIZE, ServeError, answer, drain, receive, socket_pair,
    wait_readable,
};
use crate::ioregion::{Access, Cmd};
use crate::protocol::mpqemu::{MAX_SUB_REGIONS, SUB_REGION_POSTED_WRITES, SubRegion};

/// A range of a BAR the device wants served over ioregionfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRegionSpec {
    /// From the start of the BAR.
    pub offset: u64,
    pub size: u64,
    /// Writes here have no side effect that the writer must wait for.
    pub posted_writes: bool,
}

type Handler = Arc<dyn Fn(&Cmd) -> u64 + Send + Sync>;
type SharedDevice = Arc<Mutex<dyn RemoteDevice>>;

struct PostedEnd {
    fd: Arc<OwnedFd>,
    handler: Handler,
}

/// The ordering point of one device's region fds.
#[derive(Default)]
pub struct Hub {
    posted: Mutex<Vec<PostedEnd>>,
}

/// Applies one command to BAR `bar` at `base` + the record's offset.
fn handler(device: SharedDevice, bar: u8, spec: IoRegionSpec) -> Handler {
    Arc::new(move |cmd: &Cmd| {
        let size = usize::from(cmd.size);
        let inside = cmd
            .offset
            .checked_add(size as u64)
            .is_some_and(|end| end <= spec.size);
        if !inside {
            log::warn!(
                "ioregion BAR{bar}+{:#x}: access at {:#x} ({size} bytes) is outside the region",
                spec.offset,
                cmd.offset
            );
            return ERROR_DATA;
        }
        let offset = spec.offset + cmd.offset;
        let mut dev = device.lock().expect("device lock poisoned");
        match cmd.access {
            Access::Read => {
                let mut data = [0u8; 8];
                dev.bar_read(bar, offset, &mut data[..size]);
                u64::from_le_bytes(data)
            }
            Access::Write => {
                dev.bar_write(bar, offset, &cmd.data.to_le_bytes()[..size]);
                cmd.data
            }
        }
    })
}

/// Opens BAR `bar`'s sub-regions for vCPU `vcpu`: returns the records and
/// the fds to send to the VMM, and starts a serving thread per fd.
pub fn open(
    device: &SharedDevice,
    hub: &Arc<Hub>,
    bar: u8,
    vcpu: u32,
) -> std::io::Result<(Vec<SubRegion>, Vec<File>)> {
    let specs = device.lock().expect("device lock poisoned").ioregions(bar);
    let mut regions = Vec::new();
    let mut fds = Vec::new();
    for spec in specs.into_iter().take(MAX_SUB_REGIONS) {
        let (ours, theirs) = socket_pair()?;
        let ours = Arc::new(ours);
        let handle = handler(device.clone(), bar, spec);
        if spec.posted_writes {
            hub.posted
                .lock()
                .expect("hub lock poisoned")
                .push(PostedEnd {
                    fd: ours.clone(),
                    handler: handle.clone(),
                });
        }
        let hub = hub.clone();
        std::thread::Builder::new()
            .name(format!("ioregion-{bar}-{:x}-{vcpu}", spec.offset))
            .spawn(move || serve_region(&hub, &ours, &handle, spec.posted_writes))?;
        regions.push(SubRegion {
            offset: spec.offset,
            size: spec.size,
            fd_index: fds.len() as u32,
            flags: if spec.posted_writes {
                SUB_REGION_POSTED_WRITES
            } else {
                0
            },
            user_data: (u64::from(bar) << 32) | spec.offset,
        });
        fds.push(File::from(theirs));
    }
    Ok((regions, fds))
}

fn serve_region(hub: &Hub, fd: &Arc<OwnedFd>, handle: &Handler, posted: bool) {
    let outcome = if posted {
        serve_posted(hub, fd, handle)
    } else {
        serve_synchronous(hub, fd, handle)
    };
    if let Err(e) = outcome {
        log::error!("ioregion: {e}; this region fd is no longer served");
    }
    let mut ends = hub.posted.lock().expect("hub lock poisoned");
    ends.retain(|p| !Arc::ptr_eq(&p.fd, fd));
}

impl Hub {
    /// Applies every posted write queued so far: whatever the control
    /// socket or the interrupt acknowledgement brings next must see them.
    pub fn drain_all(&self) {
        let ends = self.posted.lock().expect("hub lock poisoned");
        drain_posted(&ends, None);
    }
}

/// Applies every posted write queued on the device's fds but `except`.
fn drain_posted(ends: &[PostedEnd], except: Option<&Arc<OwnedFd>>) {
    let others = ends
        .iter()
        .filter(|p| except.is_none_or(|e| !Arc::ptr_eq(&p.fd, e)));
    for other in others {
        if let Err(e) = drain(other.fd.as_fd(), &mut |c| (other.handler)(c), usize::MAX) {
            log::warn!("ioregion: draining posted writes: {e}");
        }
    }
}

/// A fd without posted writes: its vCPU waits for every answer, so the one
/// record received here (outside the lock) is the vCPU's latest access, and
/// any posted write it sent before is already queued on its fd.
fn serve_synchronous(hub: &Hub, fd: &Arc<OwnedFd>, handle: &Handler) -> Result<(), ServeError> {
    let mut buf = [0u8; RECV_BUF_SIZE];
    loop {
        let len = match receive(fd.as_fd(), &mut buf, true)? {
            Incoming::Record(len) => len,
            Incoming::Nothing => continue,
            Incoming::Closed(_) => return Ok(()),
        };
        let ends = hub.posted.lock().expect("hub lock poisoned");
        drain_posted(&ends, Some(fd));
        if answer(fd.as_fd(), &buf, len, &mut |c| handle(c))?.is_some() {
            return Ok(());
        }
    }
}

/// A fd with posted writes: records queue up on it while the vCPU goes on,
/// so they are only ever received under the lock, one at a time, each
/// after the other fds' posted writes.
fn serve_posted(hub: &Hub, fd: &Arc<OwnedFd>, handle: &Handler) -> Result<(), ServeError> {
    loop {
        if !wait_readable(fd.as_fd())? {
            continue;
        }
        let ends = hub.posted.lock().expect("hub lock poisoned");
        drain_posted(&ends, Some(fd));
        if let Drained::Closed(_) = drain(fd.as_fd(), &mut |c| handle(c), 1)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioregion::RegionFd;
    use crate::pci::ConfigSpace;
    use crate::remote::{RemoteMemory, SharedIrq};
    use std::os::fd::OwnedFd;

    /// A BAR of 16 bytes; writing offset 8 "starts" work that snapshots
    /// bytes 0..8, which must hold every posted write sent before.
    struct Scratch {
        config: ConfigSpace,
        mem: [u8; 16],
        snapshots: Vec<[u8; 8]>,
    }

    impl RemoteDevice for Scratch {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.mem[o..o + data.len()]);
        }
        fn bar_write(&mut self, _bar: u8, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.mem[o..o + data.len()].copy_from_slice(data);
            if o == 8 {
                self.snapshots
                    .push(self.mem[..8].try_into().expect("8 bytes"));
            }
        }
        fn reset(&mut self) {}
        fn set_memory(&mut self, _memory: RemoteMemory) {}
        fn set_interrupt(&mut self, _line: SharedIrq) {}
        fn ioregions(&self, _bar: u8) -> Vec<IoRegionSpec> {
            vec![
                IoRegionSpec {
                    offset: 0,
                    size: 8,
                    posted_writes: true,
                },
                IoRegionSpec {
                    offset: 8,
                    size: 8,
                    posted_writes: false,
                },
            ]
        }
    }

    /// The scratch device, the same device as the hub serves it, and its hub.
    fn scratch_device() -> (Arc<Mutex<Scratch>>, SharedDevice, Arc<Hub>) {
        let scratch = Arc::new(Mutex::new(Scratch {
            config: ConfigSpace::new(0x1234, 0x5678, 0, 0),
            mem: [0; 16],
            snapshots: Vec::new(),
        }));
        let device: SharedDevice = scratch.clone();
        (scratch, device, Arc::new(Hub::default()))
    }

    #[test]
    fn accesses_after_posted_writes_on_other_fds_see_them() {
        let (scratch, device, hub) = scratch_device();
        // Two vCPUs: vCPU 0 posts the data, vCPU 1 starts the work.
        let (r0, f0) = open(&device, &hub, 1, 0).unwrap();
        let (r1, f1) = open(&device, &hub, 1, 1).unwrap();
        assert_eq!(r0.len(), 2);
        assert_eq!(r0[0].flags, SUB_REGION_POSTED_WRITES);
        assert_eq!(r1[1].user_data, (1 << 32) | 8);
        let fd = |f: &File| OwnedFd::from(f.try_clone().unwrap());
        let data0 = RegionFd::new(fd(&f0[0]), r0[0].user_data, true);
        let start1 = RegionFd::new(fd(&f1[1]), r1[1].user_data, false);
        for round in 1..=50u8 {
            for i in 0..8 {
                data0.write(i, &[round]).unwrap();
            }
            start1.write(0, &[1]).unwrap();
        }
        let snaps = scratch.lock().unwrap().snapshots.clone();
        assert_eq!(snaps.len(), 50);
        for (i, s) in snaps.iter().enumerate() {
            assert_eq!(*s, [i as u8 + 1; 8], "round {} saw stale data", i + 1);
        }
        let mut back = [0u8; 4];
        let read1 = RegionFd::new(fd(&f1[0]), r1[0].user_data, true);
        read1.read(4, &mut back).unwrap();
        assert_eq!(back, [50; 4]);
        // Outside the region: all ones, nothing touched.
        read1.read(6, &mut back).unwrap();
        assert_eq!(back, [0xff; 4]);
    }

    #[test]
    fn drain_all_applies_every_posted_write_sent_before() {
        let (scratch, device, hub) = scratch_device();
        let (r, f) = open(&device, &hub, 1, 0).unwrap();
        let posted = RegionFd::new(
            OwnedFd::from(f[0].try_clone().unwrap()),
            r[0].user_data,
            true,
        );
        for round in 1..=200u8 {
            posted.write(u64::from(round % 8), &[round]).unwrap();
            // What the control loop does before a message or a resample.
            hub.drain_all();
            let mem = scratch.lock().unwrap().mem;
            assert_eq!(mem[usize::from(round % 8)], round, "round {round}");
        }
    }
}
