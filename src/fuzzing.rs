//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly), and
//! a stable smoke pass over them that `cargo test` runs: every decoder or
//! interpreter fed from outside the VMM (a remote's messages, region
//! records, a guest's CDBs and SCRIPTS) must reject garbage without
//! panicking, hanging or touching memory it does not own.

use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{Bytes, GuestAddress};

use crate::device_model::{DeviceMemory, DeviceModel, PciDevice};
use crate::ioregion::{Cmd, Resp};
use crate::lsi::Lsi53c895a;
use crate::lsi::regs::*;
use crate::memory::GuestRam;
use crate::protocol::mpqemu::{self, Message};
use crate::scsi::ScsiDisk;

/// A control message as it would arrive: 16-byte header, then payload.
pub fn mpqemu_message(data: &[u8]) {
    let Some((header, payload)) = data.split_first_chunk::<{ mpqemu::HEADER_SIZE }>() else {
        return;
    };
    if let Ok((cmd, size)) = mpqemu::parse_header(header) {
        let _ = Message::decode(cmd, &payload[..size.min(payload.len())], Vec::new());
    }
    // Every command number against the same payload, too.
    for &cmd in mpqemu::COMMANDS {
        let _ = Message::decode(cmd, payload, Vec::new());
    }
}

/// An ioregion record from either side; what decodes must re-encode to
/// the same meaning.
pub fn ioregion_record(data: &[u8]) {
    if let Ok(cmd) = Cmd::decode(data) {
        let again = Cmd::decode(&cmd.encode()).expect("an encoded command decodes");
        assert_eq!(again, cmd);
    }
    if let Ok(resp) = Resp::decode(data) {
        assert_eq!(Resp::decode(&resp.encode()).unwrap().data, resp.data);
    }
}

fn scratch_disk() -> Arc<ScsiDisk> {
    static DISK: OnceLock<Arc<ScsiDisk>> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmm-fuzz-disk-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the fuzz disk");
        let _ = std::fs::remove_file(&path);
        file.set_len(1 << 20).expect("size the fuzz disk");
        Arc::new(ScsiDisk::from_file(file, 2048, false, "FUZZ".into()))
    })
    .clone()
}

/// A CDB (first byte says how long) and data out, run against a 1 MiB disk.
pub fn scsi_command(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = usize::from(len % 17).min(rest.len());
    let (cdb, data_out) = rest.split_at(len);
    let _ = crate::scsi::Command::parse(cdb);
    let _ = scratch_disk().execute(0, cdb, data_out);
}

struct Chip {
    lsi: Lsi53c895a,
    ram: GuestRam,
}

/// Where fuzzed SCRIPTS start, in guest RAM.
const SCRIPT_BASE: u64 = 0x10_0000;

fn chip() -> &'static Mutex<Chip> {
    static CHIP: OnceLock<Mutex<Chip>> = OnceLock::new();
    CHIP.get_or_init(|| {
        let ram = GuestRam::new(64 << 20).expect("guest RAM for fuzzing");
        let mut lsi = Lsi53c895a::new(vec![scratch_disk()]).expect("an LSI");
        lsi.set_instruction_limit(10_000);
        let memfd = ram.memfd.try_clone().expect("memfd");
        lsi.set_memory(DeviceMemory::map(&ram.sysmem_regions(), vec![memfd]).expect("map"));
        let config = lsi.config_mut();
        config.set_bar_addr(crate::lsi::BAR_MMIO, 0xc000_0000);
        config.set_bar_addr(crate::lsi::BAR_RAM, 0xc000_2000);
        config.write(crate::pci::config::REG_COMMAND, 0, &[0x06]);
        Mutex::new(Chip { lsi, ram })
    })
}

/// Register state from the first 32 bytes, SCRIPTS (and the data they
/// point at) from the rest, run from a chip reset.
pub fn lsi_scripts(data: &[u8]) {
    let mut chip = chip().lock().unwrap_or_else(|e| e.into_inner());
    let Chip { lsi, ram } = &mut *chip;
    lsi.soft_reset();
    let (regs, script) = data.split_at(data.len().min(32));
    // Registers that steer SCRIPTS: DSA, TEMP, SCRATCHA/B, interrupt
    // enables, DCNTL, CCNTL0/1, DMODE.
    let targets = [
        DSA,
        DSA + 1,
        DSA + 2,
        DSA + 3,
        TEMP,
        TEMP + 1,
        TEMP + 2,
        TEMP + 3,
        SCRATCHA,
        SCRATCHA + 1,
        SCRATCHA + 2,
        SCRATCHA + 3,
        SIEN0,
        SIEN1,
        DIEN,
        DCNTL,
        CCNTL0,
        CCNTL1,
        DMODE,
    ];
    for (reg, &val) in targets.iter().zip(regs) {
        lsi.write_reg(*reg, val);
    }
    let _ = ram.memory.write_slice(script, GuestAddress(SCRIPT_BASE));
    for (i, b) in (SCRIPT_BASE as u32).to_le_bytes().iter().enumerate() {
        lsi.write_reg(DSP + i as u8, *b);
    }
    // Completions of disk work the script started, and SIGP, may resume it.
    lsi.service_completions();
    lsi.write_reg(ISTAT0, ISTAT0_SIGP);
    // Leave RAM clean for the next input.
    let _ = ram
        .memory
        .write_slice(&vec![0u8; script.len()], GuestAddress(SCRIPT_BASE));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: reproducible inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = (self.next() as usize) % (max + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Random inputs plus the saved regression inputs of a target.
    fn smoke(target: &str, runs: usize, max: usize, f: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(target);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                f(&std::fs::read(entry.path()).unwrap());
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        for _ in 0..runs {
            f(&rng.bytes(max));
        }
    }

    #[test]
    fn control_messages_survive_garbage() {
        smoke("mpqemu_message", 20_000, 256, mpqemu_message);
    }

    #[test]
    fn ioregion_records_survive_garbage() {
        smoke("ioregion_record", 20_000, 48, ioregion_record);
    }

    #[test]
    fn scsi_commands_survive_garbage() {
        smoke("scsi_command", 20_000, 600, scsi_command);
    }

    #[test]
    fn scripts_survive_garbage() {
        smoke("lsi_scripts", 2_000, 512, lsi_scripts);
    }
}
