//! The SCSI bus behind the controller and the target side of each
//! connection: selection, messages, command, data, status.
//!
//! Commands run to completion when their CDB (and any data out) has
//! arrived, so a connection moves straight through its phases and ends
//! with COMMAND COMPLETE; the target never needs to disconnect.

use std::collections::VecDeque;
use std::sync::Arc;

use super::regs::*;
use crate::scsi::{DataDirection, STATUS_CHECK_CONDITION, STATUS_GOOD, ScsiDisk};

const MSG_COMMAND_COMPLETE: u8 = 0x00;
const MSG_EXTENDED: u8 = 0x01;
const MSG_ABORT: u8 = 0x06;
const MSG_REJECT: u8 = 0x07;
const MSG_NOP: u8 = 0x08;
const MSG_BUS_DEVICE_RESET: u8 = 0x0c;
const MSG_ABORT_TAG: u8 = 0x0d;
const MSG_CLEAR_QUEUE: u8 = 0x0e;
const MSG_SIMPLE_TAG: u8 = 0x20;
const MSG_ORDERED_TAG: u8 = 0x22;
const MSG_IDENTIFY: u8 = 0x80;
const EXT_SDTR: u8 = 0x01;
const EXT_WDTR: u8 = 0x03;

struct Connection {
    target: usize,
    lun: u8,
    phase: u8,
    cdb: Vec<u8>,
    /// Bytes still to send in DATA IN.
    data_in: VecDeque<u8>,
    /// DATA OUT expected, and what arrived.
    data_out_len: usize,
    data_out: Vec<u8>,
    status: u8,
    msg_in: VecDeque<u8>,
    /// The connection ends once MSG IN drains.
    done: bool,
    /// Bytes of a MSG OUT message split across block moves.
    partial_msg: Vec<u8>,
}

pub struct ScsiBus {
    targets: Vec<Option<Arc<ScsiDisk>>>,
    conn: Option<Connection>,
}

impl ScsiBus {
    pub fn new(disks: Vec<Arc<ScsiDisk>>) -> Self {
        let mut targets: Vec<Option<Arc<ScsiDisk>>> = disks.into_iter().map(Some).collect();
        targets.resize(super::MAX_TARGETS, None);
        ScsiBus {
            targets,
            conn: None,
        }
    }

    /// Bus reset: every connection is dropped.
    pub fn reset(&mut self) {
        self.conn = None;
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

    /// Selects target `id`; false if nothing answers (selection timeout).
    pub fn select(&mut self, id: usize) -> bool {
        if self.targets.get(id).and_then(|t| t.as_ref()).is_none() {
            return false;
        }
        self.conn = Some(Connection {
            target: id,
            lun: 0,
            // Straight to MSG OUT even without ATN, as QEMU's model does:
            // SeaBIOS selects without ATN and then sends IDENTIFY.
            phase: PHASE_MSG_OUT,
            cdb: Vec::new(),
            data_in: VecDeque::new(),
            data_out_len: 0,
            data_out: Vec::new(),
            status: STATUS_GOOD,
            msg_in: VecDeque::new(),
            done: false,
            partial_msg: Vec::new(),
        });
        true
    }

    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// MSG OUT bytes from the initiator.
    pub fn msg_out(&mut self, bytes: &[u8]) {
        let Some(c) = self.conn.as_mut() else { return };
        c.partial_msg.extend_from_slice(bytes);
        let mut reply: Vec<u8> = Vec::new();
        let mut end_connection = false;
        loop {
            let msg = &c.partial_msg;
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
            let m: Vec<u8> = c.partial_msg.drain(..len).collect();
            match m[0] {
                b if b & MSG_IDENTIFY != 0 => c.lun = b & 0x07,
                MSG_SIMPLE_TAG..=MSG_ORDERED_TAG => {}
                MSG_EXTENDED => match m.get(2) {
                    // Transfers stay narrow and asynchronous: answer with
                    // the same message asking for offset 0 / width 8 bits.
                    Some(&EXT_SDTR) => {
                        reply.extend_from_slice(&[MSG_EXTENDED, 3, EXT_SDTR, m[3], 0])
                    }
                    Some(&EXT_WDTR) => reply.extend_from_slice(&[MSG_EXTENDED, 2, EXT_WDTR, 0]),
                    _ => reply.push(MSG_REJECT),
                },
                MSG_ABORT | MSG_ABORT_TAG | MSG_CLEAR_QUEUE | MSG_BUS_DEVICE_RESET => {
                    end_connection = true
                }
                MSG_NOP | MSG_REJECT => {}
                _ => reply.push(MSG_REJECT),
            }
        }
        if end_connection {
            self.conn = None;
            return;
        }
        if !c.partial_msg.is_empty() {
            return; // the rest of a message follows
        }
        if reply.is_empty() {
            c.phase = if c.cdb.is_empty() {
                PHASE_COMMAND
            } else {
                c.phase
            };
        } else {
            c.msg_in.extend(reply);
            c.phase = PHASE_MSG_IN;
        }
    }

    /// COMMAND bytes: runs the command once a whole CDB is here.
    pub fn command(&mut self, bytes: &[u8]) {
        let Some(c) = self.conn.as_mut() else { return };
        c.cdb.extend_from_slice(bytes);
        let need = crate::scsi::cdb::cdb_len(c.cdb[0]);
        if c.cdb.len() < need {
            return;
        }
        let disk = self.targets[c.target]
            .clone()
            .expect("connected to a present target");
        match crate::scsi::Command::parse(&c.cdb) {
            Ok(cmd) => match cmd.direction(crate::scsi::disk::BLOCK_SIZE) {
                DataDirection::ToDevice(len) if len > 0 => {
                    c.data_out_len = len as usize;
                    c.phase = PHASE_DATA_OUT;
                }
                _ => Self::run(c, &disk),
            },
            // Let the disk record the sense and answer CHECK CONDITION.
            Err(_) => Self::run(c, &disk),
        }
    }

    fn run(c: &mut Connection, disk: &ScsiDisk) {
        match disk.execute(c.lun, &c.cdb, &c.data_out) {
            Ok(data) => {
                c.status = STATUS_GOOD;
                c.data_in = data.into();
            }
            Err(_) => {
                c.status = STATUS_CHECK_CONDITION;
                c.data_in.clear();
            }
        }
        c.phase = if c.data_in.is_empty() {
            PHASE_STATUS
        } else {
            PHASE_DATA_IN
        };
    }

    /// Up to `max` DATA IN bytes.
    pub fn data_in(&mut self, max: usize) -> Vec<u8> {
        let Some(c) = self.conn.as_mut() else {
            return Vec::new();
        };
        let n = max.min(c.data_in.len());
        let out: Vec<u8> = c.data_in.drain(..n).collect();
        if c.data_in.is_empty() {
            c.phase = PHASE_STATUS;
        }
        out
    }

    /// How many DATA OUT bytes the target still wants.
    pub fn data_out_wanted(&self) -> usize {
        self.conn
            .as_ref()
            .map_or(0, |c| c.data_out_len - c.data_out.len())
    }

    pub fn data_out(&mut self, bytes: &[u8]) {
        let disk = match self.conn.as_ref() {
            Some(c) => self.targets[c.target].clone(),
            None => return,
        };
        let c = self.conn.as_mut().expect("checked above");
        c.data_out.extend_from_slice(bytes);
        if c.data_out.len() >= c.data_out_len {
            Self::run(c, &disk.expect("connected to a present target"));
        }
    }

    /// The status byte; the target then sends COMMAND COMPLETE.
    pub fn status(&mut self) -> u8 {
        let Some(c) = self.conn.as_mut() else {
            return 0;
        };
        c.msg_in.push_back(MSG_COMMAND_COMPLETE);
        c.done = true;
        c.phase = PHASE_MSG_IN;
        c.status
    }

    /// Up to `max` MSG IN bytes. When the last one of a finished command
    /// is taken, the target leaves the bus.
    pub fn msg_in(&mut self, max: usize) -> Vec<u8> {
        let Some(c) = self.conn.as_mut() else {
            return Vec::new();
        };
        let n = max.min(c.msg_in.len());
        let out: Vec<u8> = c.msg_in.drain(..n).collect();
        if c.msg_in.is_empty() {
            if c.done {
                self.conn = None;
            } else {
                c.phase = if c.cdb.is_empty() {
                    PHASE_COMMAND
                } else {
                    PHASE_STATUS
                };
            }
        }
        out
    }
}
