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

/// A vfio-user message from either peer: its header, and its payload read
/// as every command's request and reply. What decodes must encode back to
/// the same meaning.
pub fn vfio_user_message(data: &[u8]) {
    use crate::vfio_user::io_fds::{RegionIoFds, decode_query};
    use crate::vfio_user::messages::*;
    use crate::vfio_user::version::Version;
    use crate::vfio_user::{Command, HEADER_SIZE, Header};
    const MAX: usize = 1 << 20;
    let Some((head, payload)) = data.split_first_chunk::<HEADER_SIZE>() else {
        return;
    };
    if let Ok(h) = Header::decode(head, MAX) {
        assert_eq!(Header::decode(&h.encode(), MAX), Ok(h));
    }
    macro_rules! round_trip {
        ($decoded:expr, $again:expr) => {
            if let Ok(x) = $decoded {
                assert_eq!($again(&x), Ok(x));
            }
        };
    }
    round_trip!(Version::decode(payload), |x: &Version| Version::decode(
        &x.encode()
    ));
    round_trip!(DmaMap::decode(payload), |x: &DmaMap| DmaMap::decode(
        &x.encode()
    ));
    round_trip!(DmaUnmap::decode(payload), |x: &DmaUnmap| DmaUnmap::decode(
        &x.encode()
    ));
    round_trip!(DeviceInfo::decode(payload), |x: &DeviceInfo| {
        DeviceInfo::decode(&x.encode())
    });
    round_trip!(RegionInfo::decode(payload), |x: &RegionInfo| {
        RegionInfo::decode(&x.encode())
    });
    round_trip!(IrqInfo::decode(payload), |x: &IrqInfo| IrqInfo::decode(
        &x.encode()
    ));
    round_trip!(SetIrqs::decode(payload), |x: &SetIrqs| SetIrqs::decode(
        &x.encode()
    ));
    round_trip!(RegionIoFds::decode(payload), |x: &RegionIoFds| {
        RegionIoFds::decode(&x.encode(u32::MAX))
    });
    let _ = decode_query(payload);
    for with_data in [false, true] {
        for c in [Command::RegionRead, Command::RegionWrite] {
            round_trip!(
                RegionAccess::decode(c, payload, with_data, MAX as u32),
                |x: &RegionAccess| RegionAccess::decode(c, &x.encode(), with_data, MAX as u32)
            );
        }
        for c in [Command::DmaRead, Command::DmaWrite] {
            round_trip!(
                DmaAccess::decode(c, payload, with_data, MAX as u64),
                |x: &DmaAccess| DmaAccess::decode(c, &x.encode(), with_data, MAX as u64)
            );
        }
    }
    round_trip!(decode_write_multi(payload), |x: &Vec<SingleWrite>| {
        decode_write_multi(&encode_write_multi(x))
    });
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
        Arc::new(ScsiDisk::from_file(
            file,
            2048,
            crate::scsi::DiskOptions::new("FUZZ"),
        ))
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
    fn vfio_user_messages_survive_garbage() {
        smoke("vfio_user_message", 20_000, 160, vfio_user_message);
    }

    /// Valid messages with every single byte changed: each decoder sees
    /// inputs that get past its size checks.
    #[test]
    fn vfio_user_messages_survive_one_wrong_byte() {
        use crate::vfio_user::io_fds::*;
        use crate::vfio_user::messages::*;
        use crate::vfio_user::version::{Capabilities, Version};
        use crate::vfio_user::{Command, Header};
        let fds = RegionIoFds {
            index: 1,
            regions: vec![SubRegion {
                offset: 0,
                size: 0x80,
                fd_index: 0,
                flags: IOREGION_POSTED_WRITES,
                kind: IoFdKind::IoRegionFd { user_data: 1 << 32 },
            }],
        };
        let access = RegionAccess {
            offset: 0x14,
            region: 1,
            count: 4,
            data: vec![1, 2, 3, 4],
        };
        let payloads: Vec<(Command, Vec<u8>)> = vec![
            (
                Command::Version,
                Version {
                    major: 0,
                    minor: 1,
                    caps: Capabilities::default(),
                }
                .encode(),
            ),
            (
                Command::DmaMap,
                DmaMap {
                    flags: DMA_READABLE,
                    offset: 0,
                    address: 0x1000,
                    size: 0x1000,
                }
                .encode(),
            ),
            (Command::DeviceGetRegionIoFds, fds.encode(u32::MAX)),
            (Command::RegionWrite, access.encode()),
            (
                Command::DeviceSetIrqs,
                SetIrqs {
                    flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_UNMASK,
                    index: 0,
                    start: 0,
                    count: 2,
                    data: vec![1, 1],
                }
                .encode(),
            ),
        ];
        for (command, payload) in payloads {
            let mut message = Header::command(1, command, payload.len(), false)
                .encode()
                .to_vec();
            message.extend_from_slice(&payload);
            for i in 0..message.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut m = message.clone();
                    m[i] ^= flip;
                    vfio_user_message(&m);
                }
            }
        }
    }

    #[test]
    fn scripts_survive_garbage() {
        smoke("lsi_scripts", 2_000, 512, lsi_scripts);
    }
}
