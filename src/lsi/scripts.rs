//! The SCRIPTS processor: fetches two- or three-dword instructions at DSP
//! and runs them until the script waits (WAIT RESELECT), raises an
//! interrupt or errs. Its memory accesses are dma.rs's.

use super::Lsi53c895a;
use super::regs::*;

/// More instructions than this in one run is a runaway script: the chip
/// stops it with an illegal-instruction interrupt.
pub const MAX_INSTRUCTIONS_PER_RUN: u32 = 1_000_000;
/// Nor may one run move more than this many bytes: a loop of 16 MiB memory
/// moves would otherwise keep the device busy for hours. Linux's SCRIPTS
/// move at most a few MiB per command between waits.
pub const MAX_DMA_BYTES_PER_RUN: u64 = 256 << 20;

fn sext24(v: u32) -> u32 {
    ((v << 8) as i32 >> 8) as u32
}

impl Lsi53c895a {
    fn fetch(&mut self) -> Option<u32> {
        let mut b = [0u8; 4];
        let ok = self.dma_read(u64::from(self.r.dsp), &mut b);
        self.r.dsp = self.r.dsp.wrapping_add(4);
        ok.then(|| u32::from_le_bytes(b))
    }

    fn set_phase_bits(&mut self) {
        let phase = self.bus.phase().unwrap_or(0);
        self.r.sstat1 = (self.r.sstat1 & !0x07) | phase;
        self.r.sbcl = (self.r.sbcl & !0x07) | phase;
        if self.bus.connected() {
            self.r.scntl1 |= super::regs::SCNTL1_CON;
        } else {
            self.r.scntl1 &= !super::regs::SCNTL1_CON;
        }
    }

    /// Runs SCRIPTS from DSP until they stop.
    pub fn run_scripts(&mut self) {
        if self.running {
            return; // a self-addressed DSP write from inside a script
        }
        self.running = true;
        self.dma_bytes = 0;
        let mut count = 0u32;
        while self.running {
            count += 1;
            if count > self.instruction_limit {
                log::warn!("lsi: SCRIPTS ran {count} instructions without stopping; aborting them");
                self.dma_interrupt(DSTAT_IID);
                break;
            }
            if self.dma_bytes > MAX_DMA_BYTES_PER_RUN {
                log::warn!(
                    "lsi: SCRIPTS moved {} MiB without stopping; aborting them",
                    self.dma_bytes >> 20
                );
                self.dma_interrupt(DSTAT_IID);
                break;
            }
            self.step();
            if self.running && self.r.dcntl & DCNTL_SSM != 0 {
                self.dma_interrupt(DSTAT_SSI);
            }
        }
        self.set_phase_bits();
    }

    fn step(&mut self) {
        let insn_addr = self.r.dsp;
        let Some(insn) = self.fetch() else { return };
        let Some(addr) = self.fetch() else { return };
        self.r.dcmd = (insn >> 24) as u8;
        self.r.dbc = insn & 0x00ff_ffff;
        self.r.dsps = addr;
        // After a SELECT nobody answered, the chip stops at the next
        // instruction that needs the bus (a block move, or a jump that
        // waits for a phase); instructions in between still run. The
        // driver checks DSP against that point.
        let waits_for_bus = match insn >> 30 {
            0 => true,
            2 => insn & (1 << 17) != 0,
            _ => false,
        };
        if self.selection_timeout && waits_for_bus {
            self.selection_timeout = false;
            self.running = false;
            return;
        }
        match insn >> 30 {
            0 => self.block_move(insn, addr, insn_addr),
            1 => self.io_or_register(insn, addr),
            2 => self.transfer_control(insn, addr),
            _ => self.memory_move_or_load_store(insn, addr),
        }
        self.set_phase_bits();
    }

    fn block_move(&mut self, insn: u32, addr: u32, insn_addr: u32) {
        let mut count = insn & 0x00ff_ffff;
        let mut addr = u64::from(addr);
        if insn & (1 << 28) != 0 {
            // Table indirect: {count, address} at DSA + offset.
            let entry = u64::from(self.r.dsa.wrapping_add(sext24(addr as u32)));
            let mut t = [0u8; 8];
            if !self.dma_read(entry, &mut t) {
                return;
            }
            let c = u32::from_le_bytes(t[0..4].try_into().expect("4 bytes"));
            count = c & 0x00ff_ffff;
            addr = u64::from(u32::from_le_bytes(t[4..8].try_into().expect("4 bytes")));
            if self.r.ccntl1 & CCNTL1_EN64TIBMV != 0 {
                addr |= u64::from(c >> 24) << 32;
            }
        } else if insn & (1 << 29) != 0 {
            let mut t = [0u8; 4];
            if !self.dma_read(addr, &mut t) {
                return;
            }
            addr = u64::from(u32::from_le_bytes(t));
        }
        self.r.dbc = count;
        self.r.dnad = addr as u32;
        let expected = ((insn >> 24) & 7) as u8;
        // A move of nothing needs no phase: SeaBIOS issues one as the data
        // step of commands without data.
        if count == 0 {
            return;
        }
        if self.bus.phase() != Some(expected) {
            self.phase_mismatch(insn_addr, expected);
            return;
        }
        let mut moved = 0u32;
        while moved < count && self.bus.phase() == Some(expected) {
            let remaining = (count - moved) as usize;
            let at = addr + u64::from(moved);
            let n = match expected {
                PHASE_DATA_OUT => {
                    let want = remaining.min(self.bus.data_out_wanted());
                    if !self.move_out(at, want) {
                        return;
                    }
                    want
                }
                PHASE_COMMAND | PHASE_MSG_OUT => {
                    let mut buf = vec![0u8; remaining];
                    if !self.dma_read(at, &mut buf) {
                        return;
                    }
                    if expected == PHASE_COMMAND {
                        self.bus.command(&buf);
                    } else {
                        self.r.socl &= !SOCL_ATN;
                        self.bus.msg_out(&buf);
                    }
                    remaining
                }
                PHASE_DATA_IN => match self.move_data_in(at, remaining) {
                    Some(n) => n,
                    None => return,
                },
                PHASE_MSG_IN => {
                    let data = self.bus.msg_in(remaining);
                    if !self.move_in(at, &data) {
                        return;
                    }
                    data.len()
                }
                _ => {
                    // STATUS: one byte.
                    let status = self.bus.status();
                    self.r.sfbr = status;
                    if !self.dma_write(at, &[status]) {
                        return;
                    }
                    1
                }
            };
            if n == 0 {
                break;
            }
            moved += n as u32;
        }
        self.r.dbc = count - moved;
        self.r.dnad = (addr + u64::from(moved)) as u32;
        if moved < count {
            // The target changed phase before the count ran out.
            self.phase_mismatch(insn_addr, expected);
        }
    }

    /// Phase mismatch: with CCNTL0.ENPMJ the chip jumps to PMJAD1 (output
    /// phases) or PMJAD2 (input phases) leaving IA/UA/RBC for the handler,
    /// otherwise it raises SIST0.MA.
    fn phase_mismatch(&mut self, insn_addr: u32, expected: u8) {
        log::debug!(
            "lsi: phase mismatch at {insn_addr:#x}: expected {expected}, bus in {:?}, {} bytes left",
            self.bus.phase(),
            self.r.dbc
        );
        self.r.ia = insn_addr;
        self.r.ua = self.r.dnad;
        self.r.rbc = self.r.dbc;
        if !self.bus.connected() {
            // The target went away mid-instruction.
            self.scsi_interrupt(SIST0_UDC, 0);
            return;
        }
        if self.r.ccntl0 & CCNTL0_ENPMJ != 0 {
            self.r.dsp = if expected & 1 == 0 {
                self.r.pmjad1
            } else {
                self.r.pmjad2
            };
        } else {
            self.scsi_interrupt(SIST0_MA, 0);
        }
    }

    fn io_or_register(&mut self, insn: u32, addr: u32) {
        let opcode = (insn >> 27) & 7;
        if opcode >= 5 {
            self.register_op(insn, opcode);
            return;
        }
        let alt = if insn & (1 << 26) != 0 {
            self.r.dsp.wrapping_add(sext24(addr))
        } else {
            addr
        };
        self.r.dnad = alt;
        match opcode {
            0 => {
                // SELECT: id from the instruction or from a table at DSA.
                let mut id = (insn >> 16) & 0x0f;
                if insn & (1 << 25) != 0 {
                    // The table offset sits in the instruction's own low
                    // 24 bits; the second dword stays the alternate address.
                    let entry = u64::from(self.r.dsa.wrapping_add(sext24(insn)));
                    let mut t = [0u8; 4];
                    if !self.dma_read(entry, &mut t) {
                        return;
                    }
                    let sel = u32::from_le_bytes(t);
                    id = (sel >> 16) & 0x0f;
                    self.r.scntl3 = (sel >> 24) as u8;
                    self.r.sxfer = (sel >> 8) as u8;
                }
                if self.bus.connected() {
                    // Already connected (reselected): take the alternate path.
                    self.r.dsp = alt;
                    return;
                }
                let atn = insn & (1 << 24) != 0;
                self.r.sdid = id as u8;
                if atn {
                    self.r.socl |= SOCL_ATN;
                }
                log::debug!("lsi: SELECT id {id} atn {atn} at DSP {:#x}", self.r.dsp);
                if !self.bus.select(id as usize) {
                    self.selection_timeout = true;
                    self.r.sist1 |= SIST1_STO;
                    self.update_irq();
                } else {
                    self.r.ssid = 0x80 | id as u8;
                }
            }
            1 => {
                // WAIT DISCONNECT: our targets have left once they finish.
                if self.bus.connected() {
                    self.bus.disconnect();
                }
            }
            2 => {
                // WAIT RESELECT: a target already on the bus, or one with a
                // finished command, continues at the next instruction; SIGP
                // (new work queued by the driver) takes the alternate path.
                if self.bus.connected() || self.try_reselect() {
                    return;
                }
                if self.r.istat0 & ISTAT0_SIGP != 0 {
                    self.r.dsp = alt;
                } else {
                    self.waiting_reselect = true;
                    self.running = false;
                }
            }
            3 | 4 => {
                let set = opcode == 3;
                if insn & (1 << 3) != 0 {
                    if set {
                        self.r.socl |= SOCL_ATN;
                    } else {
                        self.r.socl &= !SOCL_ATN;
                    }
                }
                if insn & (1 << 6) != 0 {
                    if set {
                        self.r.socl |= SOCL_ACK;
                    } else {
                        self.r.socl &= !SOCL_ACK;
                    }
                }
                if insn & (1 << 10) != 0 {
                    self.r.carry = set;
                }
            }
            _ => {
                self.dma_interrupt(DSTAT_IID);
            }
        }
    }

    fn register_op(&mut self, insn: u32, opcode: u32) {
        let operator = (insn >> 24) & 7;
        let reg = (((insn >> 16) & 0x7f) | (insn & 0x80)) as u8;
        let data8 = ((insn >> 8) & 0xff) as u8;
        let (op0, op1) = match opcode {
            5 => (self.r.sfbr, data8),
            6 => (self.read_reg(reg), data8),
            _ => {
                let op1 = if insn & (1 << 23) != 0 {
                    self.r.sfbr
                } else {
                    data8
                };
                (self.read_reg(reg), op1)
            }
        };
        let result = match operator {
            0 => op1,
            1 => {
                let r = (op0 << 1) | u8::from(self.r.carry);
                self.r.carry = op0 & 0x80 != 0;
                r
            }
            2 => op0 | op1,
            3 => op0 ^ op1,
            4 => op0 & op1,
            5 => {
                let r = (op0 >> 1) | (u8::from(self.r.carry) << 7);
                self.r.carry = op0 & 1 != 0;
                r
            }
            6 => {
                let (r, c) = op0.overflowing_add(op1);
                self.r.carry = c;
                r
            }
            _ => {
                let (r1, c1) = op0.overflowing_add(op1);
                let (r, c2) = r1.overflowing_add(u8::from(self.r.carry));
                self.r.carry = c1 || c2;
                r
            }
        };
        if opcode == 6 {
            self.r.sfbr = result;
        } else {
            self.write_reg(reg, result);
        }
    }

    fn transfer_control(&mut self, insn: u32, addr: u32) {
        let opcode = (insn >> 27) & 7;
        let jump_if_true = insn & (1 << 19) != 0;
        let mut matched = true;
        if insn & (1 << 21) != 0 {
            matched &= self.r.carry;
        }
        if insn & (1 << 17) != 0 {
            let phase = ((insn >> 24) & 7) as u8;
            matched &= self.bus.phase() == Some(phase);
        }
        if insn & (1 << 18) != 0 {
            let mask = !(insn >> 8) as u8;
            matched &= self.r.sfbr & mask == (insn as u8) & mask;
        }
        if matched != jump_if_true {
            return;
        }
        let target = if insn & (1 << 23) != 0 {
            self.r.dsp.wrapping_add(sext24(addr))
        } else {
            addr
        };
        match opcode {
            0 => self.r.dsp = target,
            1 => {
                self.r.temp = self.r.dsp;
                self.r.dsp = target;
            }
            2 => self.r.dsp = self.r.temp,
            3 => {
                self.r.dsps = addr;
                if insn & (1 << 20) != 0 {
                    // INTFLY: interrupt on the fly, keep running.
                    self.r.istat0 |= ISTAT0_INTF;
                    self.update_irq();
                } else {
                    self.dma_interrupt(DSTAT_SIR);
                }
            }
            _ => self.dma_interrupt(DSTAT_IID),
        }
    }

    fn memory_move_or_load_store(&mut self, insn: u32, addr: u32) {
        if insn & (1 << 29) == 0 {
            // Memory move: count bytes from addr to the third dword.
            let Some(dest) = self.fetch() else { return };
            let count = (insn & 0x00ff_ffff) as usize;
            let mut buf = vec![0u8; count];
            if self.dma_read(u64::from(addr), &mut buf) {
                self.dma_write(u64::from(dest), &buf);
            }
            return;
        }
        let reg = ((insn >> 16) & 0xff) as u8;
        let count = (insn & 7) as usize;
        if count == 0 || count > 4 {
            self.dma_interrupt(DSTAT_IID);
            return;
        }
        let at = if insn & (1 << 28) != 0 {
            self.r.dsa.wrapping_add(sext24(addr))
        } else {
            addr
        };
        if insn & (1 << 24) != 0 {
            let mut buf = [0u8; 4];
            if self.dma_read(u64::from(at), &mut buf[..count]) {
                for (i, b) in buf[..count].iter().enumerate() {
                    self.write_reg(reg.wrapping_add(i as u8), *b);
                }
            }
        } else {
            let buf: Vec<u8> = (0..count)
                .map(|i| self.read_reg(reg.wrapping_add(i as u8)))
                .collect();
            self.dma_write(u64::from(at), &buf);
        }
    }
}
