//! The SCSI bus behind a controller and the target side of each
//! connection: selection, messages, command, data, status, and
//! disconnect/reselect. The controller (the LSI) drives it phase by phase.
//!
//! Commands that wait on the disk run on the I/O pool while their target
//! is off the bus, when the initiator allowed that in its IDENTIFY: the
//! target sends SAVE DATA POINTER + DISCONNECT, and once the result is in,
//! it reselects with IDENTIFY and the command's tag and finishes with data,
//! status and COMMAND COMPLETE. Everything else (INQUIRY, MODE SENSE, ...)
//! is answered while connected.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::data::{DataIn, Outgoing};
use super::pool::{Completion, IoPool, Job};
use super::{
    Command, DataDirection, DataOut, STATUS_CHECK_CONDITION, STATUS_GOOD, ScsiDisk, Sense,
};
use crate::device_model::memory::{DeviceMemory, MemoryError};

/// SCSI ids 0..=6 can hold disks; 7 is the controller's own.
pub const MAX_TARGETS: usize = 7;

/// SCSI bus phases, by the MSG, C/D and I/O signals (bits 2, 1, 0).
pub const PHASE_DATA_OUT: u8 = 0;
pub const PHASE_DATA_IN: u8 = 1;
pub const PHASE_COMMAND: u8 = 2;
pub const PHASE_STATUS: u8 = 3;
pub const PHASE_MSG_OUT: u8 = 6;
pub const PHASE_MSG_IN: u8 = 7;

const MSG_COMMAND_COMPLETE: u8 = 0x00;
const MSG_EXTENDED: u8 = 0x01;
const MSG_SAVE_DATA_POINTER: u8 = 0x02;
const MSG_DISCONNECT: u8 = 0x04;
const MSG_ABORT: u8 = 0x06;
const MSG_REJECT: u8 = 0x07;
const MSG_NOP: u8 = 0x08;
const MSG_BUS_DEVICE_RESET: u8 = 0x0c;
const MSG_ABORT_TAG: u8 = 0x0d;
const MSG_CLEAR_QUEUE: u8 = 0x0e;
const MSG_SIMPLE_TAG: u8 = 0x20;
const MSG_ORDERED_TAG: u8 = 0x22;
const MSG_IDENTIFY: u8 = 0x80;
const IDENTIFY_DISC_PRIV: u8 = 0x40;
const EXT_SDTR: u8 = 0x01;
const EXT_WDTR: u8 = 0x03;
const EXT_PPR: u8 = 0x04;

/// Which command a connection serves: initiator-target-LUN-tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Nexus {
    target: usize,
    lun: u8,
    /// The tag message (type, tag), or None for an untagged command.
    tag: Option<(u8, u8)>,
}

/// Picks the queued commands an abort message drops.
type NexusFilter = Box<dyn Fn(&Nexus) -> bool>;

/// What happens when MSG IN drains.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leave {
    Stay,
    /// COMMAND COMPLETE or DISCONNECT went out: the target frees the bus.
    Bus,
}

/// The most DATA OUT room taken up front, whatever the CDB says.
const MAX_DATA_OUT_RESERVE: usize = 1 << 20;

struct Connection {
    nexus: Nexus,
    phase: u8,
    cdb: Vec<u8>,
    /// The CDB, parsed once it is whole (None: it does not parse).
    command: Option<Command>,
    /// The initiator's IDENTIFY allowed disconnecting.
    may_disconnect: bool,
    /// Run the command on the pool once its data out is in.
    run_async: bool,
    /// Bytes still to send in DATA IN.
    data_in: Outgoing,
    /// DATA OUT expected, and what arrived.
    data_out_len: usize,
    data_out: DataOut,
    status: u8,
    msg_in: VecDeque<u8>,
    leave: Leave,
    /// Bytes of a MSG OUT message split across block moves.
    partial_msg: Vec<u8>,
}

impl Connection {
    fn new(nexus: Nexus, phase: u8) -> Self {
        Connection {
            nexus,
            phase,
            cdb: Vec::new(),
            command: None,
            may_disconnect: false,
            run_async: false,
            data_in: Outgoing::default(),
            data_out_len: 0,
            data_out: DataOut::default(),
            status: STATUS_GOOD,
            msg_in: VecDeque::new(),
            leave: Leave::Stay,
            partial_msg: Vec::new(),
        }
    }

    fn finish(&mut self, result: Result<Outgoing, Sense>) {
        match result {
            Ok(data) => {
                self.status = STATUS_GOOD;
                self.data_in = data;
            }
            Err(_) => {
                self.status = STATUS_CHECK_CONDITION;
                self.data_in.clear();
            }
        }
        self.phase = if self.data_in.is_empty() {
            PHASE_STATUS
        } else {
            PHASE_DATA_IN
        };
    }

    /// After a DATA IN move: status once all went, or at once when the
    /// disk failed to read its part (the disk kept the sense).
    fn data_in_sent(&mut self, failed: bool) {
        if failed {
            self.status = STATUS_CHECK_CONDITION;
            self.data_in.clear();
        }
        if self.data_in.is_empty() {
            self.phase = PHASE_STATUS;
        }
    }
}

/// Where the disk work of a command that may disconnect runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskIo {
    /// On the device's own thread, the target staying on the bus, when it
    /// cannot wait for a device (a READ or WRITE on an image in memory, a
    /// READ the page cache holds); else on a disk worker. Spares the hand
    /// over to a worker and back: a context switch or two per I/O.
    #[default]
    Auto,
    /// Always on a disk worker while the target disconnects.
    Workers,
}

pub struct ScsiBus {
    targets: Vec<Option<Arc<ScsiDisk>>>,
    conn: Option<Connection>,
    pool: IoPool,
    disk_io: DiskIo,
    /// Disconnected commands whose disk work is running, by pool token.
    in_flight: HashMap<u64, Nexus>,
    /// Finished commands waiting for the bus to reselect.
    ready: VecDeque<(Nexus, Result<Vec<u8>, Sense>)>,
    next_token: u64,
    pub stats: BusStats,
}

/// What the bus did, for the device's exit summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    pub commands: u64,
    pub disconnected: u64,
    /// Commands that could have disconnected but ran at once, since
    /// their data could not keep them waiting (`DiskIo::Auto`).
    pub in_place: u64,
    /// Most commands off the bus at the same time.
    pub max_queued: usize,
}

impl ScsiBus {
    pub fn new(disks: Vec<Arc<ScsiDisk>>, pool: IoPool) -> Self {
        let mut targets: Vec<Option<Arc<ScsiDisk>>> = disks.into_iter().map(Some).collect();
        targets.resize(MAX_TARGETS, None);
        ScsiBus {
            targets,
            conn: None,
            pool,
            disk_io: DiskIo::default(),
            in_flight: HashMap::new(),
            ready: VecDeque::new(),
            next_token: 0,
            stats: BusStats::default(),
        }
    }

    pub fn set_disk_io(&mut self, disk_io: DiskIo) {
        self.disk_io = disk_io;
    }

    /// Bus reset: every connection and queued command is dropped. Disk work
    /// already running finishes, but its result is thrown away.
    pub fn reset(&mut self) {
        self.conn = None;
        self.in_flight.clear();
        self.ready.clear();
    }

    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    pub fn phase(&self) -> Option<u8> {
        self.conn.as_ref().map(|c| c.phase)
    }

    pub fn peek_msg_in(&self) -> Option<u8> {
        self.conn.as_ref().and_then(|c| c.msg_in.front().copied())
    }

    /// For a state dump: who holds the bus, in which phase, and what is
    /// off it.
    pub fn describe(&self) -> String {
        let conn = match &self.conn {
            Some(c) => format!(
                "connected to {:?} in phase {}, CDB {:02x?}",
                c.nexus, c.phase, c.cdb
            ),
            None => "bus free".into(),
        };
        format!(
            "{conn}; {} command(s) on the disks, {} waiting to reselect",
            self.in_flight.len(),
            self.ready.len()
        )
    }

    /// Commands off the bus: running on the disk or waiting to reselect.
    pub fn queued(&self) -> usize {
        self.in_flight.len() + self.ready.len()
    }

    /// Readable when disk work finished; then call `collect_completions`.
    pub fn completion_fd(&self) -> std::os::fd::RawFd {
        self.pool.completion_fd()
    }

    /// Lets the disk workers serve their own completions (see
    /// [`IoPool::set_completion_runner`]).
    pub fn set_completion_runner(&self, runner: crate::device_model::BackgroundRunner) {
        self.pool.set_completion_runner(runner);
    }

    /// Moves finished disk work to the reselection queue.
    pub fn collect_completions(&mut self) {
        for Completion { token, result } in self.pool.take_completions() {
            // Unknown tokens belong to commands aborted or reset meanwhile.
            if let Some(nexus) = self.in_flight.remove(&token) {
                self.ready.push_back((nexus, result));
            }
        }
    }

    /// A finished command's target takes the free bus: returns its id, with
    /// the target in MSG IN holding IDENTIFY and the tag message.
    pub fn reselect(&mut self) -> Option<u8> {
        if self.conn.is_some() {
            return None;
        }
        let (nexus, result) = self.ready.pop_front()?;
        let mut c = Connection::new(nexus, PHASE_MSG_IN);
        // Non-empty so MSG IN is not followed by COMMAND.
        c.cdb = vec![0];
        c.finish(result.map(Outgoing::from));
        let after = c.phase;
        c.phase = PHASE_MSG_IN;
        c.msg_in.push_back(MSG_IDENTIFY | nexus.lun);
        if let Some((kind, tag)) = nexus.tag {
            c.msg_in.extend([kind, tag]);
        }
        log::trace!(
            "lsi: target {} reselects for {:?} then phase {after}",
            nexus.target,
            nexus.tag
        );
        self.conn = Some(c);
        Some(nexus.target as u8)
    }

    /// Selects target `id`; false if nothing answers (selection timeout).
    pub fn select(&mut self, id: usize) -> bool {
        if self.targets.get(id).and_then(|t| t.as_ref()).is_none() {
            return false;
        }
        let nexus = Nexus {
            target: id,
            lun: 0,
            tag: None,
        };
        // Straight to MSG OUT even without ATN, as QEMU's model does:
        // SeaBIOS selects without ATN and then sends IDENTIFY.
        self.conn = Some(Connection::new(nexus, PHASE_MSG_OUT));
        true
    }

    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Drops the queued commands `matches` picks.
    fn drop_queued(&mut self, matches: impl Fn(&Nexus) -> bool) {
        self.in_flight.retain(|_, n| !matches(n));
        self.ready.retain(|(n, _)| !matches(n));
    }

    /// MSG OUT bytes from the initiator.
    pub fn msg_out(&mut self, bytes: &[u8]) {
        let Some(c) = self.conn.as_mut() else { return };
        c.partial_msg.extend_from_slice(bytes);
        let mut reply: Vec<u8> = Vec::new();
        let mut abort: Option<NexusFilter> = None;
        // Messages are taken by index and the consumed prefix dropped once:
        // a guest can send megabytes of one-byte messages in one move.
        let mut taken = 0;
        loop {
            let msg = &c.partial_msg[taken..];
            let Some(&first) = msg.first() else { break };
            let len = match first {
                MSG_EXTENDED => match msg.get(1) {
                    Some(&n) => 2 + usize::from(n),
                    None => break,
                },
                0x20..=0x2f => 2,
                _ => 1,
            };
            if msg.len() < len {
                break;
            }
            let m: Vec<u8> = msg[..len].to_vec();
            taken += len;
            let here = c.nexus;
            match m[0] {
                b if b & MSG_IDENTIFY != 0 => {
                    c.nexus.lun = b & 0x07;
                    c.may_disconnect = b & IDENTIFY_DISC_PRIV != 0;
                }
                // HEAD OF QUEUE and ORDERED are served like SIMPLE: each
                // command is independent once it reaches the disk.
                MSG_SIMPLE_TAG..=MSG_ORDERED_TAG => c.nexus.tag = Some((m[0], m[1])),
                MSG_EXTENDED => match m.get(2) {
                    // Transfers stay narrow and asynchronous: answer with
                    // the same message asking for offset 0 / width 8 bits.
                    Some(&EXT_SDTR) if m.len() == 5 => {
                        reply.extend_from_slice(&[MSG_EXTENDED, 3, EXT_SDTR, m[3], 0])
                    }
                    Some(&EXT_WDTR) if m.len() == 4 => {
                        reply.extend_from_slice(&[MSG_EXTENDED, 2, EXT_WDTR, 0])
                    }
                    Some(&EXT_PPR) if m.len() == 8 => {
                        reply.extend_from_slice(&[MSG_EXTENDED, 6, EXT_PPR, m[3], 0, 0, 0, 0])
                    }
                    _ => reply.push(MSG_REJECT),
                },
                MSG_ABORT | MSG_CLEAR_QUEUE => {
                    abort = Some(Box::new(move |n| {
                        n.target == here.target && n.lun == here.lun
                    }))
                }
                MSG_ABORT_TAG => abort = Some(Box::new(move |n| *n == here)),
                MSG_BUS_DEVICE_RESET => abort = Some(Box::new(move |n| n.target == here.target)),
                MSG_NOP | MSG_REJECT => {}
                _ => reply.push(MSG_REJECT),
            }
        }
        c.partial_msg.drain(..taken);
        if let Some(matches) = abort {
            // The target drops the commands and leaves the bus.
            self.drop_queued(matches);
            self.conn = None;
            return;
        }
        if !c.partial_msg.is_empty() {
            return; // the rest of a message follows
        }
        if reply.is_empty() {
            if c.cdb.is_empty() {
                c.phase = PHASE_COMMAND;
            }
        } else {
            c.msg_in.extend(reply);
            c.phase = PHASE_MSG_IN;
        }
    }

    /// COMMAND bytes: starts the command once a whole CDB is here.
    pub fn command(&mut self, bytes: &[u8]) {
        let Some(c) = self.conn.as_mut() else { return };
        c.cdb.extend_from_slice(bytes);
        let need = crate::scsi::cdb::cdb_len(c.cdb[0]);
        if c.cdb.len() < need {
            return;
        }
        c.command = Command::parse(&c.cdb).ok();
        match c.command {
            Some(cmd) => {
                c.run_async = c.may_disconnect && cmd.touches_medium();
                match cmd.direction(crate::scsi::disk::BLOCK_SIZE) {
                    DataDirection::ToDevice(len) if len > 0 => {
                        c.data_out_len = len as usize;
                        // Room for the data at once instead of five
                        // regrowths for 128 KiB; capped, since the length
                        // is the guest's word.
                        c.data_out.reserve(c.data_out_len.min(MAX_DATA_OUT_RESERVE));
                        c.phase = PHASE_DATA_OUT;
                    }
                    _ => self.start(),
                }
            }
            // Let the disk record the sense and answer CHECK CONDITION.
            None => self.start(),
        }
    }

    /// Runs the connected command: in place, or on the pool while the
    /// target disconnects.
    fn start(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        let disk = self.targets[c.nexus.target]
            .clone()
            .expect("connected to a present target");
        self.stats.commands += 1;
        let in_place = !c.run_async || self.disk_io == DiskIo::Auto;
        if in_place
            && let Some(cmd) = c.command
            && let Some(range) = disk.read_later(c.nexus.lun, cmd)
        {
            self.stats.in_place += u64::from(c.run_async);
            c.finish(range.map(|(offset, len)| Outgoing::image(disk, offset, len)));
            return;
        }
        if !c.run_async {
            let result = disk.execute_with(c.nexus.lun, &c.cdb, &c.data_out);
            c.finish(result.map(Outgoing::from));
            return;
        }
        if self.disk_io == DiskIo::Auto
            && let Some(cmd) = c.command
            && let Some(result) = disk.execute_now(c.nexus.lun, cmd, &c.data_out)
        {
            self.stats.in_place += 1;
            c.finish(result.map(Outgoing::from));
            return;
        }
        // Off the bus the guest may hear of an abort or reset before the
        // command runs, and reuse its pages: the data leaves them now.
        if let Err(e) = c.data_out.gather() {
            log::error!("SCSI: cannot copy a command's data out of guest RAM: {e}");
            disk.keep_sense(Sense::INTERNAL_FAILURE);
            c.finish(Err(Sense::INTERNAL_FAILURE));
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.in_flight.insert(token, c.nexus);
        self.stats.disconnected += 1;
        self.stats.max_queued = self
            .stats
            .max_queued
            .max(self.in_flight.len() + self.ready.len());
        self.pool.submit(Job {
            token,
            disk,
            lun: c.nexus.lun,
            cdb: std::mem::take(&mut c.cdb),
            data_out: std::mem::take(&mut c.data_out),
        });
        // Saving the pointer after DATA OUT tells the initiator all of it
        // went, so the implied RESTORE POINTERS at reselection keeps it.
        c.msg_in.extend([MSG_SAVE_DATA_POINTER, MSG_DISCONNECT]);
        c.phase = PHASE_MSG_IN;
        c.leave = Leave::Bus;
    }

    /// Up to `max` DATA IN bytes.
    pub fn data_in(&mut self, max: usize) -> DataIn {
        let Some(c) = self.conn.as_mut() else {
            return DataIn::default();
        };
        let out = c.data_in.take(max);
        c.data_in_sent(out.is_err());
        out.unwrap_or_default()
    }

    /// Up to `max` DATA IN bytes read from the disk straight into guest
    /// RAM at `addr`, which this process must map: how many went. None
    /// when the command's data is in a buffer already (take it with
    /// [`Self::data_in`]); Some(0) when the read failed, and the command
    /// ends in CHECK CONDITION.
    pub fn data_in_to_guest(
        &mut self,
        memory: &DeviceMemory,
        addr: u64,
        max: usize,
    ) -> Option<usize> {
        let c = self.conn.as_mut()?;
        let read = c.data_in.send_to_guest(memory, addr, max)?;
        c.data_in_sent(read.is_err());
        Some(read.unwrap_or(0))
    }

    /// How many DATA OUT bytes the target still wants.
    pub fn data_out_wanted(&self) -> usize {
        self.conn
            .as_ref()
            .map_or(0, |c| c.data_out_len.saturating_sub(c.data_out.len()))
    }

    /// DATA OUT the initiator leaves at `addr` in guest RAM (read when the
    /// command runs, one copy fewer than a buffer of ours).
    pub fn data_out_guest(
        &mut self,
        memory: &DeviceMemory,
        addr: u64,
        len: usize,
    ) -> Result<(), MemoryError> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        c.data_out.push_guest(memory, addr, len)?;
        self.data_out_arrived();
        Ok(())
    }

    /// DATA OUT bytes the initiator copied.
    pub fn data_out_bytes(&mut self, bytes: &[u8]) -> Result<(), MemoryError> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        c.data_out.push_bytes(bytes)?;
        self.data_out_arrived();
        Ok(())
    }

    /// The command runs once its DATA OUT is all in.
    fn data_out_arrived(&mut self) {
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.data_out.len() >= c.data_out_len)
        {
            self.start();
        }
    }

    /// The status byte; the target then sends COMMAND COMPLETE.
    pub fn status(&mut self) -> u8 {
        let Some(c) = self.conn.as_mut() else {
            return 0;
        };
        c.msg_in.push_back(MSG_COMMAND_COMPLETE);
        c.leave = Leave::Bus;
        c.phase = PHASE_MSG_IN;
        c.status
    }

    /// Up to `max` MSG IN bytes. When the last one of COMMAND COMPLETE or
    /// DISCONNECT is taken, the target leaves the bus.
    pub fn msg_in(&mut self, max: usize) -> Vec<u8> {
        let Some(c) = self.conn.as_mut() else {
            return Vec::new();
        };
        let n = max.min(c.msg_in.len());
        let out: Vec<u8> = c.msg_in.drain(..n).collect();
        if c.msg_in.is_empty() {
            if c.leave == Leave::Bus {
                self.conn = None;
            } else {
                c.phase = if c.cdb.is_empty() {
                    PHASE_COMMAND
                } else if !c.data_in.is_empty() {
                    PHASE_DATA_IN
                } else if c.data_out.len() < c.data_out_len {
                    PHASE_DATA_OUT
                } else {
                    PHASE_STATUS
                };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DATA OUT from a slice, as an initiator's block move brings it.
    fn data_out(bus: &mut ScsiBus, bytes: &[u8]) {
        bus.data_out_bytes(bytes).unwrap();
    }

    #[test]
    fn data_in_leaves_in_order_across_block_moves() {
        let mut out = Outgoing::from((0..=255u8).collect::<Vec<u8>>());
        assert_eq!(*out.take(100).unwrap(), (0..100u8).collect::<Vec<u8>>());
        assert!(!out.is_empty());
        assert_eq!(*out.take(1000).unwrap(), (100..=255u8).collect::<Vec<u8>>());
        assert!(out.is_empty());
        assert!(out.take(10).unwrap().is_empty());
        out.clear();
        assert!(out.is_empty());
    }
    use std::time::{Duration, Instant};

    const READ10: u8 = 0x28;
    const WRITE10: u8 = 0x2a;

    fn rw10(op: u8, lba: u8) -> Vec<u8> {
        vec![op, 0, 0, 0, 0, lba, 0, 0, 1, 0]
    }

    /// A bus with one 16-block disk whose block n is filled with n.
    fn bus(name: &str) -> (ScsiBus, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("vmm-target-{name}-{}.img", std::process::id()));
        let image: Vec<u8> = (0..16u8).flat_map(|b| [b; 512]).collect();
        std::fs::write(&path, image).unwrap();
        let disk = Arc::new(ScsiDisk::open(&path, crate::scsi::DiskOptions::new("T")).unwrap());
        let mut bus = ScsiBus::new(vec![disk], IoPool::new(2).unwrap());
        // Disconnection is what these tests are about; a cached read
        // would otherwise run in place.
        bus.set_disk_io(DiskIo::Workers);
        (bus, path)
    }

    /// A bus with one 16-block disk in memory (a memfd, on tmpfs) whose
    /// block n is filled with n, in the default `DiskIo::Auto`.
    fn bus_in_memory() -> ScsiBus {
        let file = crate::sys::memfd(c"vmm-bus-test", false).unwrap();
        let image: Vec<u8> = (0..16u8).flat_map(|b| [b; 512]).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &image, 0).unwrap();
        let disk = ScsiDisk::from_file(file, 16, crate::scsi::DiskOptions::new("M"));
        assert!(disk.in_memory(), "a memfd is on tmpfs");
        ScsiBus::new(vec![Arc::new(disk)], IoPool::new(2).unwrap())
    }

    #[test]
    fn on_an_image_in_memory_tagged_reads_and_writes_run_without_disconnecting() {
        let mut bus = bus_in_memory();
        issue(&mut bus, 4, &rw10(WRITE10, 2));
        assert_eq!(bus.phase(), Some(PHASE_DATA_OUT));
        data_out(&mut bus, &[0xcd; 512]);
        assert_eq!(
            bus.phase(),
            Some(PHASE_STATUS),
            "no disconnect after DATA OUT"
        );
        assert_eq!(bus.status(), STATUS_GOOD);
        assert_eq!(bus.msg_in(1), vec![MSG_COMMAND_COMPLETE]);
        issue(&mut bus, 5, &rw10(READ10, 2));
        assert_eq!(bus.phase(), Some(PHASE_DATA_IN), "straight to the data");
        assert_eq!(*bus.data_in(4096), vec![0xcd; 512], "the write landed");
        assert_eq!(bus.status(), STATUS_GOOD);
        issue(&mut bus, 6, &rw10(READ10, 9));
        assert_eq!(*bus.data_in(4096), vec![9; 512]);
        assert_eq!((bus.stats.in_place, bus.stats.disconnected), (3, 0));
        assert_eq!(bus.queued(), 0);
    }

    #[test]
    fn in_place_errors_are_check_conditions_with_sense() {
        let mut bus = bus_in_memory();
        issue(&mut bus, 1, &[READ10, 0, 0, 0, 0, 16, 0, 0, 1, 0]); // past the end
        assert_eq!(bus.phase(), Some(PHASE_STATUS));
        assert_eq!(bus.status(), STATUS_CHECK_CONDITION);
        assert_eq!(bus.stats.in_place, 1);
        assert_eq!(bus.msg_in(1), vec![MSG_COMMAND_COMPLETE]);
        // The sense waits for the REQUEST SENSE that follows.
        issue(&mut bus, 2, &[0x03, 0, 0, 0, 18, 0]);
        let sense = bus.data_in(18);
        assert_eq!(sense[2] & 0x0f, crate::scsi::sense::KEY_ILLEGAL_REQUEST);
        assert_eq!(sense[12], 0x21, "LOGICAL BLOCK ADDRESS OUT OF RANGE");
    }

    #[test]
    fn a_write_past_the_transfer_limit_gets_no_data_phase() {
        let (mut bus, path) = bus("too-long");
        let mut write16 = [0u8; 16];
        write16[0] = 0x8a;
        write16[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        issue(&mut bus, 1, &write16);
        assert_eq!(bus.phase(), Some(PHASE_STATUS), "no DATA OUT to gather");
        assert_eq!(bus.status(), STATUS_CHECK_CONDITION);
        assert_eq!(bus.msg_in(1), vec![MSG_COMMAND_COMPLETE]);
        issue(&mut bus, 2, &[0x03, 0, 0, 0, 18, 0]);
        let sense = bus.data_in(18);
        assert_eq!(sense[2] & 0x0f, crate::scsi::sense::KEY_ILLEGAL_REQUEST);
        assert_eq!(sense[12], 0x24, "INVALID FIELD IN CDB");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn block_moves_read_the_commands_data_where_it_lies() {
        let bytes = vec![7u8; 4096];
        let start = bytes.as_ptr();
        let mut out = Outgoing::from(bytes);
        let first = out.take(1024).unwrap();
        let second = out.take(1024).unwrap();
        assert_eq!(first.as_ptr(), start, "no copy per move");
        assert_eq!(second.as_ptr(), start.wrapping_add(1024));
        assert_eq!(second.len(), 1024);
    }

    #[test]
    fn with_disk_io_workers_an_image_in_memory_still_disconnects() {
        let mut bus = bus_in_memory();
        bus.set_disk_io(DiskIo::Workers);
        issue(&mut bus, 3, &rw10(READ10, 4));
        assert_eq!(bus.msg_in(8), vec![MSG_SAVE_DATA_POINTER, MSG_DISCONNECT]);
        wait_ready(&mut bus, 1);
        assert_eq!(bus.reselect(), Some(0));
        bus.msg_in(3);
        assert_eq!(*bus.data_in(4096), vec![4; 512]);
        assert_eq!((bus.stats.in_place, bus.stats.disconnected), (0, 1));
    }

    fn wait_ready(bus: &mut ScsiBus, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while bus.ready.len() < n {
            assert!(Instant::now() < deadline, "disk work never finished");
            std::thread::sleep(Duration::from_millis(5));
            bus.collect_completions();
        }
    }

    /// Selects, identifies with disconnect allowed and `tag`, sends `cdb`.
    fn issue(bus: &mut ScsiBus, tag: u8, cdb: &[u8]) {
        assert!(bus.select(0));
        bus.msg_out(&[MSG_IDENTIFY | IDENTIFY_DISC_PRIV, MSG_SIMPLE_TAG, tag]);
        assert_eq!(bus.phase(), Some(PHASE_COMMAND));
        bus.command(cdb);
    }

    #[test]
    fn tagged_reads_disconnect_overlap_and_reselect_with_their_tags() {
        let (mut bus, path) = bus("overlap");
        for (tag, lba) in [(7u8, 3u8), (9, 5)] {
            issue(&mut bus, tag, &rw10(READ10, lba));
            assert_eq!(bus.phase(), Some(PHASE_MSG_IN));
            assert_eq!(bus.msg_in(8), vec![MSG_SAVE_DATA_POINTER, MSG_DISCONNECT]);
            assert!(!bus.connected(), "the target left the bus");
        }
        assert_eq!(bus.queued(), 2, "both commands in flight at once");
        assert_eq!(bus.stats.max_queued, 2);
        assert_eq!(bus.stats.disconnected, 2);
        wait_ready(&mut bus, 2);
        let mut seen = Vec::new();
        while let Some(id) = bus.reselect() {
            assert_eq!(id, 0);
            let msgs = bus.msg_in(3);
            assert_eq!(&msgs[..2], &[MSG_IDENTIFY, MSG_SIMPLE_TAG]);
            let tag = msgs[2];
            assert_eq!(bus.phase(), Some(PHASE_DATA_IN));
            let data = bus.data_in(4096);
            let lba = if tag == 7 { 3 } else { 5 };
            assert_eq!(*data, vec![lba; 512], "tag {tag} got its own block");
            assert_eq!(bus.status(), STATUS_GOOD);
            assert_eq!(bus.msg_in(1), vec![MSG_COMMAND_COMPLETE]);
            assert!(!bus.connected());
            seen.push(tag);
        }
        seen.sort();
        assert_eq!(seen, vec![7, 9]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_write_takes_its_data_before_disconnecting_and_lands() {
        let (mut bus, path) = bus("write");
        issue(&mut bus, 1, &rw10(WRITE10, 2));
        assert_eq!(bus.phase(), Some(PHASE_DATA_OUT));
        assert_eq!(bus.data_out_wanted(), 512);
        data_out(&mut bus, &[0xab; 512]);
        assert_eq!(bus.msg_in(2), vec![MSG_SAVE_DATA_POINTER, MSG_DISCONNECT]);
        wait_ready(&mut bus, 1);
        assert_eq!(bus.reselect(), Some(0));
        assert_eq!(bus.msg_in(3), vec![MSG_IDENTIFY, MSG_SIMPLE_TAG, 1]);
        assert_eq!(bus.phase(), Some(PHASE_STATUS), "no data after a write");
        assert_eq!(bus.status(), STATUS_GOOD);
        let image = std::fs::read(&path).unwrap();
        assert_eq!(&image[1024..1536], &[0xab; 512][..]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn without_disconnect_privilege_the_command_runs_while_connected() {
        let (mut bus, path) = bus("nodisc");
        assert!(bus.select(0));
        bus.msg_out(&[MSG_IDENTIFY]);
        bus.command(&rw10(READ10, 4));
        assert_eq!(bus.phase(), Some(PHASE_DATA_IN));
        assert_eq!(*bus.data_in(512), vec![4; 512]);
        assert_eq!(bus.queued(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn abort_tag_and_bus_reset_drop_queued_commands() {
        let (mut bus, path) = bus("abort");
        issue(&mut bus, 3, &rw10(READ10, 1));
        bus.msg_in(2);
        issue(&mut bus, 4, &rw10(READ10, 2));
        bus.msg_in(2);
        // Select again to abort tag 3 only.
        assert!(bus.select(0));
        bus.msg_out(&[MSG_IDENTIFY, MSG_SIMPLE_TAG, 3, MSG_ABORT_TAG]);
        assert!(!bus.connected(), "ABORT TAG ends the connection");
        std::thread::sleep(Duration::from_millis(200));
        bus.collect_completions();
        assert_eq!(bus.queued(), 1);
        assert_eq!(bus.reselect(), Some(0));
        assert_eq!(bus.msg_in(3)[2], 4, "only tag 4 came back");
        bus.reset();
        issue(&mut bus, 5, &rw10(READ10, 3));
        bus.msg_in(2);
        bus.reset();
        std::thread::sleep(Duration::from_millis(200));
        bus.collect_completions();
        assert_eq!(
            bus.reselect(),
            None,
            "work finished after a reset is dropped"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn negotiation_answers_narrow_asynchronous_and_rejects_the_unknown() {
        let (mut bus, path) = bus("nego");
        assert!(bus.select(0));
        bus.msg_out(&[MSG_IDENTIFY, MSG_EXTENDED, 3, EXT_SDTR, 25, 15]);
        assert_eq!(bus.msg_in(5), vec![MSG_EXTENDED, 3, EXT_SDTR, 25, 0]);
        assert_eq!(bus.phase(), Some(PHASE_COMMAND));
        bus.msg_out(&[MSG_EXTENDED, 6, EXT_PPR, 9, 0, 127, 1, 0x02]);
        assert_eq!(bus.msg_in(8), vec![MSG_EXTENDED, 6, EXT_PPR, 9, 0, 0, 0, 0]);
        bus.msg_out(&[0x05]); // INITIATOR DETECTED ERROR: not ours to honour
        assert_eq!(bus.msg_in(1), vec![MSG_REJECT]);
        std::fs::remove_file(path).unwrap();
    }
}
