//! A SCSI direct-access device on a disk image (raw or qcow2).

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use super::cdb::{Command, MAX_TRANSFER_BLOCKS};
use super::data::DataOut;
use super::discard;
use super::identity::Identity;
use super::image::{Format, Image, ImageError};
use super::sense::Sense;
use crate::device_model::memory::DeviceMemory;

pub use super::image::BLOCK_SIZE;
const REVISION: &[u8; 4] = b"0.1 ";
/// Peripheral qualifier 3, type 0x1f: no device at this LUN.
const NO_LUN: u8 = 0x7f;

/// How a disk presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    pub readonly: bool,
    /// Offer UNMAP and WRITE SAME's UNMAP bit, which give blocks the guest
    /// no longer uses back to the host (holes in the image).
    pub discard: bool,
    /// The image's format; `None`: what its first bytes say.
    pub format: Option<Format>,
    pub identity: Identity,
}

impl DiskOptions {
    /// Writable, discard on.
    pub fn new(serial: &str) -> Self {
        DiskOptions {
            readonly: false,
            discard: true,
            format: None,
            identity: Identity::with_serial(serial),
        }
    }
}

pub struct ScsiDisk {
    image: Image,
    blocks: u64,
    readonly: bool,
    /// Logical block provisioning is offered (never on a read-only disk).
    discard: bool,
    identity: Identity,
    /// Opcodes already reported as unsupported (a bit each).
    unsupported_seen: [std::sync::atomic::AtomicU64; 4],
    /// Sense of the last failed command, for REQUEST SENSE (no autosense).
    pending_sense: Mutex<Option<Sense>>,
}

/// Copies at most `alloc` bytes of `data` (the allocation length rule).
/// The DATA OUT as bytes, for a command that parses it.
fn gathered(data_out: &DataOut) -> Result<Cow<'_, [u8]>, Sense> {
    data_out.bytes().map_err(|e| {
        log::error!("SCSI: cannot read the command's data out of guest RAM: {e}");
        Sense::INTERNAL_FAILURE
    })
}

fn truncated(mut data: Vec<u8>, alloc: u32) -> Vec<u8> {
    data.truncate(alloc as usize);
    data
}

impl ScsiDisk {
    pub fn open(path: &Path, options: DiskOptions) -> Result<Self, ImageError> {
        let image = Image::open(path, options.format, options.readonly)?;
        Ok(Self::from_image(image, options))
    }

    /// A raw disk of `blocks` blocks on an open file.
    pub fn from_file(file: File, blocks: u64, options: DiskOptions) -> Self {
        Self::from_image(Image::raw(file, blocks * u64::from(BLOCK_SIZE)), options)
    }

    fn from_image(image: Image, options: DiskOptions) -> Self {
        ScsiDisk {
            blocks: image.size() / u64::from(BLOCK_SIZE),
            image,
            readonly: options.readonly,
            discard: options.discard && !options.readonly,
            identity: options.identity,
            pending_sense: Mutex::new(None),
            unsupported_seen: Default::default(),
        }
    }

    pub fn format(&self) -> Format {
        self.image.format()
    }

    /// Writes back what the image holds in memory and syncs it, as at
    /// the end of the remote.
    pub fn flush_image(&self) -> std::io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.image.flush()
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Runs a command for `lun`; `data_out` holds what the initiator sent.
    /// Returns the DATA IN bytes, or the sense of a CHECK CONDITION, which
    /// is also kept for the REQUEST SENSE that follows.
    pub fn execute(&self, lun: u8, cdb: &[u8], data_out: &[u8]) -> Result<Vec<u8>, Sense> {
        self.execute_with(lun, cdb, &DataOut::from(data_out.to_vec()))
    }

    /// `execute`, with the DATA OUT wherever the initiator left it.
    pub fn execute_with(&self, lun: u8, cdb: &[u8], data_out: &DataOut) -> Result<Vec<u8>, Sense> {
        let result = Command::parse(cdb).and_then(|cmd| self.run(lun, cmd, data_out));
        if let Err(sense) = result {
            self.keep_sense(sense);
            if sense == Sense::INVALID_OPCODE
                && let Some(&op) = cdb.first()
            {
                self.note_unsupported(op);
            }
        }
        result
    }

    /// Runs a READ or WRITE (parsed by the caller) at once when it cannot
    /// wait for a device: any on an image in memory, a read whose blocks
    /// the page cache holds elsewhere. None: it could wait (or is another
    /// command); run it with `execute` off the device's thread.
    pub fn execute_now(
        &self,
        lun: u8,
        cmd: Command,
        data_out: &DataOut,
    ) -> Option<Result<Vec<u8>, Sense>> {
        if lun != 0 {
            return None;
        }
        match cmd {
            Command::Read { .. } | Command::Write { .. } if self.image.in_memory() => {
                let result = self.run(lun, cmd, data_out);
                if let Err(sense) = result {
                    self.keep_sense(sense);
                }
                Some(result)
            }
            Command::Read { lba, blocks } => {
                let (offset, len) = self.range(lba, blocks).ok()?;
                self.image.read_cached(len, offset).map(Ok)
            }
            _ => None,
        }
    }

    /// Where a READ's blocks lie in an image in memory (offset, length),
    /// for the data phase to read them straight into guest RAM
    /// ([`Self::read_into_guest`]) instead of through a buffer: reading
    /// there cannot wait for a device. None for other commands or images.
    pub fn read_later(&self, lun: u8, cmd: Command) -> Option<Result<(u64, usize), Sense>> {
        let Command::Read { lba, blocks } = cmd else {
            return None;
        };
        if lun != 0 || !self.image.in_memory() {
            return None;
        }
        let range = self.range(lba, blocks);
        if let Err(sense) = range {
            self.keep_sense(sense);
        }
        Some(range)
    }

    /// Reads `len` bytes at `offset` into guest RAM at `addr` (the sense
    /// is kept on failure).
    pub fn read_into_guest(
        &self,
        memory: &DeviceMemory,
        addr: u64,
        len: usize,
        offset: u64,
    ) -> Result<(), Sense> {
        self.image
            .read_guest(memory, addr, len, offset)
            .map_err(|e| self.read_failed(&e))
    }

    /// Reads `len` bytes at `offset` (the sense is kept on failure).
    pub fn read_bytes(&self, len: usize, offset: u64) -> Result<Vec<u8>, Sense> {
        self.image
            .read(len, offset)
            .map_err(|e| self.read_failed(&e))
    }

    fn read_failed(&self, e: &std::io::Error) -> Sense {
        log::warn!("SCSI: a read of the disk image failed during the data phase: {e}");
        let sense = Sense::from_io_error(e, false);
        self.keep_sense(sense);
        sense
    }

    /// Keeps a failed command's sense for the REQUEST SENSE that follows;
    /// REQUEST SENSE itself never fails, so it never overwrites.
    pub fn keep_sense(&self, sense: Sense) {
        *self.pending_sense.lock().expect("sense lock") = Some(sense);
    }

    /// Whether `execute_now` runs every READ and WRITE at once.
    pub fn in_memory(&self) -> bool {
        self.image.in_memory()
    }

    /// Says once per opcode that a guest sent a command we do not have:
    /// what a user (or we) needs to know to see what a guest's tools miss.
    fn note_unsupported(&self, opcode: u8) {
        let bit = 1u64 << (opcode % 64);
        let seen = &self.unsupported_seen[usize::from(opcode / 64)];
        if seen.fetch_or(bit, std::sync::atomic::Ordering::Relaxed) & bit == 0 {
            log::info!(
                "SCSI: the guest sent opcode {opcode:#04x}, which this disk does not \
                 implement; answered INVALID COMMAND OPERATION CODE (said once per opcode)"
            );
        }
    }

    fn run(&self, lun: u8, cmd: Command, data_out: &DataOut) -> Result<Vec<u8>, Sense> {
        if lun != 0 {
            return match cmd {
                Command::Inquiry { alloc, .. } => {
                    let mut d = vec![0u8; 36];
                    d[0] = NO_LUN;
                    Ok(truncated(d, alloc))
                }
                Command::RequestSense { alloc } => {
                    Ok(truncated(Sense::LUN_NOT_SUPPORTED.fixed().to_vec(), alloc))
                }
                Command::ReportLuns { alloc } => Ok(truncated(self.report_luns(), alloc)),
                _ => Err(Sense::LUN_NOT_SUPPORTED),
            };
        }
        match cmd {
            Command::TestUnitReady
            | Command::StartStopUnit
            | Command::PreventAllowMediumRemoval => Ok(Vec::new()),
            Command::RequestSense { alloc } => {
                let sense = self.pending_sense.lock().expect("sense lock").take();
                Ok(truncated(
                    sense.unwrap_or(Sense::NO_SENSE).fixed().to_vec(),
                    alloc,
                ))
            }
            Command::Inquiry {
                evpd: false, alloc, ..
            } => Ok(truncated(self.inquiry(), alloc)),
            Command::Inquiry {
                evpd: true,
                page,
                alloc,
            } => Ok(truncated(self.vpd(page)?, alloc)),
            Command::ReportLuns { alloc } => Ok(truncated(self.report_luns(), alloc)),
            Command::ReadCapacity10 => {
                let last = (self.blocks.saturating_sub(1)).min(u64::from(u32::MAX)) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&BLOCK_SIZE.to_be_bytes());
                Ok(d)
            }
            Command::ReadCapacity16 { alloc } => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&self.blocks.saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
                if self.discard {
                    // LBPME: provisioning is managed; LBPRZ: a
                    // deallocated block reads as zeros.
                    d[14] = 0x80 | 0x40;
                }
                Ok(truncated(d, alloc))
            }
            Command::ModeSense {
                ten,
                dbd,
                control,
                page,
                subpage,
                alloc,
            } => Ok(truncated(
                self.mode_sense(ten, dbd, control, page, subpage)?,
                alloc,
            )),
            Command::Read { lba, blocks } => {
                let (offset, len) = self.range(lba, blocks)?;
                self.image
                    .read(len, offset)
                    .map_err(|e| Sense::from_io_error(&e, false))
            }
            Command::Write { lba, blocks, fua } => {
                if self.readonly {
                    return Err(Sense::WRITE_PROTECTED);
                }
                let (offset, len) = self.range(lba, blocks)?;
                if data_out.len() < len {
                    return Err(Sense::INVALID_FIELD);
                }
                let written = match data_out.in_guest(len) {
                    Some((memory, spans)) => self.image.write_guest(memory, &spans, offset),
                    None => self.image.write_at(&gathered(data_out)?[..len], offset),
                };
                written.map_err(|e| Sense::from_io_error(&e, true))?;
                if fua {
                    self.flush()?;
                }
                Ok(Vec::new())
            }
            Command::Verify {
                lba,
                blocks,
                bytchk,
            } => {
                let (offset, len) = self.range(lba, blocks)?;
                if bytchk {
                    let mut buf = vec![0u8; len];
                    self.image
                        .read_at(&mut buf, offset)
                        .map_err(|e| Sense::from_io_error(&e, false))?;
                    if gathered(data_out)?.get(..len) != Some(&buf[..]) {
                        return Err(Sense::MISCOMPARE);
                    }
                }
                Ok(Vec::new())
            }
            Command::SyncCache => {
                self.flush()?;
                Ok(Vec::new())
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
            } => self.write_same(lba, blocks, unmap, ndob, &gathered(data_out)?),
            Command::Unmap { .. } if !self.discard => Err(Sense::INVALID_OPCODE),
            Command::Unmap { param_len } => {
                if self.readonly {
                    return Err(Sense::WRITE_PROTECTED);
                }
                let data_out = gathered(data_out)?;
                let list = data_out.get(..param_len as usize).unwrap_or(&data_out);
                for e in discard::unmap_extents(list, self.blocks)? {
                    let (offset, len) = self.range(e.lba, e.blocks)?;
                    self.image
                        .discard(offset, len as u64)
                        .map_err(|e| Sense::from_io_error(&e, true))?;
                }
                Ok(Vec::new())
            }
            Command::ReportSupportedOpcodes(query) => Ok(truncated(
                super::opcodes::report(&query, self.discard)?,
                query.alloc,
            )),
        }
    }

    /// One block written over a range; with UNMAP and a block of zeros the
    /// range is deallocated instead, which reads back the same.
    fn write_same(
        &self,
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        data_out: &[u8],
    ) -> Result<Vec<u8>, Sense> {
        if self.readonly {
            return Err(Sense::WRITE_PROTECTED);
        }
        if blocks == 0 || blocks > discard::MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::INVALID_FIELD);
        }
        let (offset, len) = self.range(lba, blocks)?;
        let zeros = [0u8; BLOCK_SIZE as usize];
        let block = if ndob {
            &zeros[..]
        } else {
            data_out
                .get(..BLOCK_SIZE as usize)
                .ok_or(Sense::INVALID_FIELD)?
        };
        let result = if unmap && self.discard && block.iter().all(|&b| b == 0) {
            self.image.discard(offset, len as u64)
        } else {
            self.image.fill(offset, len as u64, block)
        };
        result.map_err(|e| Sense::from_io_error(&e, true))?;
        Ok(Vec::new())
    }

    fn flush(&self) -> Result<(), Sense> {
        if self.readonly {
            return Ok(());
        }
        self.image
            .flush()
            .map_err(|e| Sense::from_io_error(&e, true))
    }

    /// Byte offset and length of a block range, refused past the end.
    fn range(&self, lba: u64, blocks: u32) -> Result<(u64, usize), Sense> {
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.blocks => Ok((
                lba * u64::from(BLOCK_SIZE),
                blocks as usize * BLOCK_SIZE as usize,
            )),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn inquiry(&self) -> Vec<u8> {
        let mut d = vec![0u8; 36];
        d[0] = 0x00; // direct-access block device
        d[2] = 0x05; // SPC-3
        d[3] = 0x12; // HiSup, response data format 2
        d[4] = 36 - 5;
        d[7] = 0x02; // CmdQue: tagged queuing
        d[8..16].copy_from_slice(&self.identity.vendor_field());
        d[16..32].copy_from_slice(&self.identity.product_field());
        d[32..36].copy_from_slice(REVISION);
        d
    }

    fn vpd(&self, page: u8) -> Result<Vec<u8>, Sense> {
        let body: Vec<u8> = match page {
            0x00 if self.discard => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
            0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1],
            0x80 => self.identity.serial.as_bytes().to_vec(),
            0x83 => {
                // The WWN as an NAA designator (binary), which Linux
                // prefers for the disk's wwid, then a T10 vendor-id
                // designator: vendor plus serial, ASCII.
                let mut d = vec![0x01, 0x03, 0x00, 0x08];
                d.extend_from_slice(&self.identity.wwn.to_be_bytes());
                let mut t10 = self.identity.vendor_field().to_vec();
                t10.extend_from_slice(self.identity.serial.as_bytes());
                d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
                d.extend_from_slice(&t10);
                d
            }
            0xb0 => {
                let mut d = vec![0u8; 0x3c];
                // optimal transfer length granularity: 1 block
                d[2..4].copy_from_slice(&1u16.to_be_bytes());
                d[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
                d[8..12].copy_from_slice(&(MAX_TRANSFER_BLOCKS / 8).to_be_bytes());
                discard::block_limits(&mut d, self.discard);
                d
            }
            0xb1 => {
                let mut d = vec![0u8; 0x3c];
                d[1] = 1; // medium rotation rate: non-rotating
                d
            }
            0xb2 if self.discard => discard::provisioning_page(),
            _ => return Err(Sense::INVALID_FIELD),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(d)
    }

    fn report_luns(&self) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[0..4].copy_from_slice(&8u32.to_be_bytes());
        d
    }

    fn mode_sense(
        &self,
        ten: bool,
        dbd: bool,
        control: u8,
        page: u8,
        subpage: u8,
    ) -> Result<Vec<u8>, Sense> {
        const SAVED: u8 = 3;
        const CHANGEABLE: u8 = 1;
        if control == SAVED {
            return Err(Sense::SAVING_NOT_SUPPORTED);
        }
        if subpage != 0 && subpage != 0xff {
            return Err(Sense::INVALID_FIELD);
        }
        let changeable = control == CHANGEABLE;
        let caching = || {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if !changeable {
                p[2] = 0x04; // WCE: writes are cached until SYNCHRONIZE CACHE or FUA
            }
            p
        };
        let control_page = || {
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            p
        };
        let pages = match page {
            0x08 => caching(),
            0x0a => control_page(),
            0x3f => [caching(), control_page()].concat(),
            _ => return Err(Sense::INVALID_FIELD),
        };
        let mut block_desc = Vec::new();
        if !dbd {
            block_desc = vec![0u8; 8];
            let blocks = self.blocks.min(0xff_ffff) as u32;
            block_desc[1..4].copy_from_slice(&blocks.to_be_bytes()[1..]);
            block_desc[5..8].copy_from_slice(&BLOCK_SIZE.to_be_bytes()[1..]);
        }
        // Write protect, and DPOFUA: FUA writes reach the image before completing.
        let wp = if self.readonly { 0x80 } else { 0 } | 0x10;
        let mut d = if ten {
            let len = (6 + block_desc.len() + pages.len()) as u16;
            let mut h = len.to_be_bytes().to_vec();
            h.extend_from_slice(&[0, wp, 0, 0]);
            h.extend_from_slice(&(block_desc.len() as u16).to_be_bytes());
            h
        } else {
            vec![
                (3 + block_desc.len() + pages.len()) as u8,
                0,
                wp,
                block_desc.len() as u8,
            ]
        };
        d.extend_from_slice(&block_desc);
        d.extend_from_slice(&pages);
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn disk(blocks: u64, readonly: bool) -> (ScsiDisk, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "vmm-scsi-{}-{}.img",
            std::process::id(),
            rand_suffix()
        ));
        let f = File::create(&path).unwrap();
        f.set_len(blocks * 512).unwrap();
        (
            ScsiDisk::open(
                &path,
                DiskOptions {
                    readonly,
                    ..DiskOptions::new("SERIAL0001")
                },
            )
            .unwrap(),
            path,
        )
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::SeqCst)
    }

    #[test]
    fn inquiry_identifies_a_tagged_queuing_disk() {
        let (d, p) = disk(2048, false);
        let data = d.execute(0, &[0x12, 0, 0, 0, 96, 0], &[]).unwrap();
        assert_eq!(data.len(), 36);
        assert_eq!(data[0], 0);
        assert_eq!(data[2], 5);
        assert_eq!(data[7] & 0x02, 0x02);
        assert_eq!(&data[8..16], b"VMM     ");
        let short = d.execute(0, &[0x12, 0, 0, 0, 5, 0], &[]).unwrap();
        assert_eq!(short.len(), 5, "allocation length respected");
        let pages = d.execute(0, &[0x12, 1, 0, 0, 255, 0], &[]).unwrap();
        assert_eq!(&pages[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
        let serial = d.execute(0, &[0x12, 1, 0x80, 0, 255, 0], &[]).unwrap();
        assert_eq!(&serial[4..], b"SERIAL0001");
        let ids = d.execute(0, &[0x12, 1, 0x83, 0, 255, 0], &[]).unwrap();
        let wwn = Identity::with_serial("SERIAL0001").wwn;
        assert_eq!(
            &ids[4..8],
            &[0x01, 0x03, 0x00, 0x08],
            "NAA designator first"
        );
        assert_eq!(&ids[8..16], &wwn.to_be_bytes());
        assert_eq!(&ids[16..20], &[0x02, 0x01, 0x00, 18], "then T10 vendor id");
        assert_eq!(&ids[20..], b"VMM     SERIAL0001");
        for page in [0x83, 0xb0, 0xb1, 0xb2] {
            let vpd = d.execute(0, &[0x12, 1, page, 0, 255, 0], &[]).unwrap();
            assert_eq!(vpd[1], page);
            assert_eq!(u16::from_be_bytes([vpd[2], vpd[3]]) as usize, vpd.len() - 4);
        }
        assert_eq!(
            d.execute(0, &[0x12, 1, 0x99, 0, 255, 0], &[]),
            Err(Sense::INVALID_FIELD)
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn other_luns_do_not_exist() {
        let (d, p) = disk(8, false);
        assert_eq!(
            d.execute(1, &[0x12, 0, 0, 0, 36, 0], &[]).unwrap()[0],
            NO_LUN
        );
        assert_eq!(
            d.execute(1, &[0, 0, 0, 0, 0, 0], &[]),
            Err(Sense::LUN_NOT_SUPPORTED)
        );
        let luns = d
            .execute(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[])
            .unwrap();
        assert_eq!(luns.len(), 16);
        assert_eq!(&luns[0..4], &8u32.to_be_bytes());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn capacity_reports_last_lba_and_block_size() {
        let (d, p) = disk(4096, false);
        let rc10 = d
            .execute(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
            .unwrap();
        assert_eq!(rc10, [0, 0, 0x0f, 0xff, 0, 0, 2, 0]);
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9e;
        rc16[1] = 0x10;
        rc16[13] = 32;
        let data = d.execute(0, &rc16, &[]).unwrap();
        assert_eq!(data.len(), 32);
        assert_eq!(u64::from_be_bytes(data[0..8].try_into().unwrap()), 4095);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn writes_land_in_the_image_and_read_back() {
        let (d, p) = disk(64, false);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        d.execute(0, &[0x2a, 0x08, 0, 0, 0, 3, 0, 0, 2, 0], &data)
            .unwrap();
        let back = d
            .execute(0, &[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0], &[])
            .unwrap();
        assert_eq!(back, data);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(&raw[3 * 512..5 * 512], &data[..]);
        d.execute(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
            .unwrap();
        std::fs::remove_file(p).unwrap();
    }

    /// Real I/O errors from the kernel, without a broken disk: /dev/full
    /// refuses writes with ENOSPC (and reads as zeros); /proc/self/mem
    /// fails both ways with EIO at an address nothing is mapped at.
    fn failing(path: &str) -> ScsiDisk {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        ScsiDisk::from_file(file, 64, DiskOptions::new("SERIAL0002"))
    }

    const READ_LBA0: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const WRITE_LBA0: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const REQUEST_SENSE: [u8; 6] = [0x03, 0, 0, 0, 18, 0];

    #[test]
    fn a_full_file_system_gets_space_allocation_failed_and_reads_go_on() {
        let d = failing("/dev/full");
        assert_eq!(
            d.execute(0, &WRITE_LBA0, &[0xaa; 512]),
            Err(Sense::SPACE_EXHAUSTED)
        );
        let sense = d.execute(0, &REQUEST_SENSE, &[]).unwrap();
        assert_eq!((sense[2], sense[12], sense[13]), (0x07, 0x27, 0x07));
        assert_eq!(d.execute(0, &READ_LBA0, &[]).unwrap(), vec![0; 512]);
    }

    #[test]
    fn eio_is_a_medium_error_each_way() {
        let d = failing("/proc/self/mem");
        assert_eq!(d.execute(0, &READ_LBA0, &[]), Err(Sense::READ_ERROR));
        let sense = d.execute(0, &REQUEST_SENSE, &[]).unwrap();
        assert_eq!((sense[2], sense[12]), (0x03, 0x11));
        assert_eq!(
            d.execute(0, &WRITE_LBA0, &[0; 512]),
            Err(Sense::WRITE_ERROR)
        );
        let sense = d.execute(0, &REQUEST_SENSE, &[]).unwrap();
        assert_eq!((sense[2], sense[12]), (0x03, 0x0c));
        // The disk still answers what needs no I/O.
        assert!(d.execute(0, &[0x12, 0, 0, 0, 36, 0], &[]).is_ok());
    }

    #[test]
    fn out_of_range_and_read_only_get_check_condition_with_sense() {
        let (d, p) = disk(64, false);
        assert_eq!(
            d.execute(0, &[0x28, 0, 0, 0, 0, 63, 0, 0, 2, 0], &[]),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        // REQUEST SENSE returns it once, then NO SENSE.
        let sense = d.execute(0, &[0x03, 0, 0, 0, 18, 0], &[]).unwrap();
        assert_eq!((sense[2], sense[12]), (0x05, 0x21));
        let sense = d.execute(0, &[0x03, 0, 0, 0, 18, 0], &[]).unwrap();
        assert_eq!(sense[2], 0);
        assert_eq!(
            d.execute(0, &[0xee, 0, 0, 0, 0, 0], &[]),
            Err(Sense::INVALID_OPCODE)
        );
        std::fs::remove_file(p).unwrap();

        let (ro, p) = disk(64, true);
        assert_eq!(
            ro.execute(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]),
            Err(Sense::WRITE_PROTECTED)
        );
        let ms = ro.execute(0, &[0x1a, 0, 0x3f, 0, 255, 0], &[]).unwrap();
        assert_eq!(ms[2] & 0x80, 0x80, "write-protect bit");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn mode_sense_reports_write_cache_and_sizes() {
        let (d, p) = disk(64, false);
        let ms6 = d.execute(0, &[0x1a, 0, 0x08, 0, 255, 0], &[]).unwrap();
        assert_eq!(ms6[0] as usize, ms6.len() - 1);
        assert_eq!(ms6[3], 8, "block descriptor");
        assert_eq!(ms6[2], 0x10, "FUA supported, not write-protected");
        assert_eq!(ms6[4 + 8], 0x08);
        assert_eq!(ms6[4 + 8 + 2] & 0x04, 0x04, "WCE");
        let ms6_dbd = d.execute(0, &[0x1a, 0x08, 0x3f, 0, 255, 0], &[]).unwrap();
        assert_eq!(ms6_dbd[3], 0);
        assert_eq!(ms6_dbd.len(), 4 + 20 + 12);
        let ms10 = d
            .execute(0, &[0x5a, 0, 0x0a, 0, 0, 0, 0, 0, 255, 0], &[])
            .unwrap();
        assert_eq!(
            u16::from_be_bytes([ms10[0], ms10[1]]) as usize,
            ms10.len() - 2
        );
        assert_eq!(
            d.execute(0, &[0x1a, 0, 0xc8, 0, 255, 0], &[]),
            Err(Sense::SAVING_NOT_SUPPORTED)
        );
        assert_eq!(
            d.execute(0, &[0x1a, 0, 0x19, 0, 255, 0], &[]),
            Err(Sense::INVALID_FIELD)
        );
        std::fs::remove_file(p).unwrap();
    }

    fn disk_with(blocks: u64, options: DiskOptions) -> (ScsiDisk, PathBuf) {
        let (_, path) = disk(blocks, false);
        (ScsiDisk::open(&path, options).unwrap(), path)
    }

    fn unmap_cdb(param_len: u16) -> [u8; 10] {
        let mut cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[7..9].copy_from_slice(&param_len.to_be_bytes());
        cdb
    }

    fn unmap_list(lba: u64, blocks: u32) -> Vec<u8> {
        let mut l = vec![0, 22, 0, 16, 0, 0, 0, 0];
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&blocks.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
        l
    }

    fn ws16(lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x93;
        cdb[1] = flags;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb
    }

    fn rc16(d: &ScsiDisk) -> Vec<u8> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        d.execute(0, &cdb, &[]).unwrap()
    }

    #[test]
    fn provisioning_is_advertised_where_linux_looks_for_it() {
        let (d, p) = disk(4096, false);
        assert_eq!(rc16(&d)[14] & 0xc0, 0xc0, "LBPME and LBPRZ");
        let limits = d.execute(0, &[0x12, 1, 0xb0, 0, 255, 0], &[]).unwrap();
        assert_eq!(
            limits.len(),
            64,
            "sd reads the unmap fields only from a 64-byte page"
        );
        let be32 = |o: usize| u32::from_be_bytes(limits[o..o + 4].try_into().unwrap());
        assert_eq!(be32(20), discard::MAX_UNMAP_BLOCKS);
        assert_eq!(be32(24), discard::MAX_UNMAP_DESCRIPTORS);
        assert_eq!(be32(28), discard::UNMAP_GRANULARITY);
        assert_eq!(
            u64::from_be_bytes(limits[36..44].try_into().unwrap()),
            u64::from(discard::MAX_WRITE_SAME_BLOCKS)
        );
        assert_eq!(limits[5], 0, "no COMPARE AND WRITE");
        let lbp = d.execute(0, &[0x12, 1, 0xb2, 0, 255, 0], &[]).unwrap();
        assert_eq!(lbp[5] & 0xe0, 0xe0, "LBPU, LBPWS, LBPWS10");
        assert_eq!(lbp[6] & 0x07, 2, "thin provisioning");
        std::fs::remove_file(p).unwrap();

        let (off, p) = disk_with(
            4096,
            DiskOptions {
                discard: false,
                ..DiskOptions::new("S")
            },
        );
        assert_eq!(rc16(&off)[14], 0, "no LBPME");
        let pages = off.execute(0, &[0x12, 1, 0, 0, 255, 0], &[]).unwrap();
        assert!(!pages[4..].contains(&0xb2));
        assert_eq!(
            off.execute(0, &[0x12, 1, 0xb2, 0, 255, 0], &[]),
            Err(Sense::INVALID_FIELD)
        );
        let limits = off.execute(0, &[0x12, 1, 0xb0, 0, 255, 0], &[]).unwrap();
        assert_eq!(limits[20..32], [0; 12], "no unmap limits");
        assert_eq!(
            off.execute(0, &unmap_cdb(24), &unmap_list(0, 8)),
            Err(Sense::INVALID_OPCODE)
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn unmap_and_write_same_deallocate_and_read_back_zeros() {
        let (d, p) = disk(2048, false);
        let pattern = vec![0x77u8; 1 << 20];
        d.execute(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0], &pattern)
            .unwrap();
        d.execute(0, &unmap_cdb(24), &unmap_list(8, 16)).unwrap();
        d.execute(0, &ws16(100, 28, 0x08), &[0; 512]).unwrap();
        d.execute(0, &ws16(200, 8, 0x09), &[]).unwrap();
        let raw = std::fs::read(&p).unwrap();
        let zero = |from: usize, blocks: usize| {
            raw[from * 512..(from + blocks) * 512]
                .iter()
                .all(|&b| b == 0)
        };
        assert!(zero(8, 16) && zero(100, 28) && zero(200, 8));
        assert!(raw[..8 * 512].iter().all(|&b| b == 0x77));
        assert!(raw[24 * 512..100 * 512].iter().all(|&b| b == 0x77));
        assert!(raw[208 * 512..].iter().all(|&b| b == 0x77));
        let file = File::open(&p).unwrap();
        let hole = crate::sys::next_hole(&file, 0).unwrap();
        assert!(hole <= 8 * 512 + 4096, "a hole where UNMAP was: {hole}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn write_same_with_data_writes_it_even_with_unmap() {
        let (d, p) = disk(64, false);
        let block: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        let ws10 = [0x41, 0x08, 0, 0, 0, 4, 0, 0, 3, 0];
        d.execute(0, &ws10, &block).unwrap();
        let raw = std::fs::read(&p).unwrap();
        for b in raw[4 * 512..7 * 512].chunks(512) {
            assert_eq!(b, &block[..]);
        }
        assert!(raw[7 * 512..].iter().all(|&b| b == 0));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_discards_get_check_condition_and_change_nothing() {
        let (d, p) = disk(64, false);
        d.execute(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 64, 0], &[0x33; 64 * 512])
            .unwrap();
        assert_eq!(
            d.execute(0, &unmap_cdb(24), &unmap_list(60, 8)),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            d.execute(0, &unmap_cdb(5), &[0, 0, 0, 0, 0]),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        assert_eq!(
            d.execute(0, &ws16(0, 0, 0), &[0; 512]),
            Err(Sense::INVALID_FIELD),
            "zero blocks (WSNZ)"
        );
        assert_eq!(
            d.execute(
                0,
                &ws16(0, discard::MAX_WRITE_SAME_BLOCKS + 1, 0),
                &[0; 512]
            ),
            Err(Sense::INVALID_FIELD),
            "over the limit"
        );
        assert_eq!(
            d.execute(0, &ws16(60, 8, 0x08), &[0; 512]),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        let sense = d.execute(0, &REQUEST_SENSE, &[]).unwrap();
        assert_eq!((sense[2], sense[12]), (0x05, 0x21));
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0x33));
        assert_eq!(d.execute(0, &unmap_cdb(0), &[]), Ok(vec![]), "empty list");
        std::fs::remove_file(p).unwrap();

        let (ro, p) = disk(64, true);
        assert_eq!(rc16(&ro)[14], 0, "a read-only disk offers no discard");
        assert_eq!(
            ro.execute(0, &ws16(0, 1, 0), &[0; 512]),
            Err(Sense::WRITE_PROTECTED)
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn medium_removal_is_accepted_and_opcodes_are_reported() {
        let (d, p) = disk(64, false);
        assert_eq!(d.execute(0, &[0x1e, 0, 0, 0, 1, 0], &[]), Ok(vec![]));
        // What sd asks at probe time: is WRITE SAME(16) there?
        let rsoc = [0xa3, 0x0c, 0x01, 0x93, 0, 0, 0, 0, 2, 0, 0, 0];
        let d93 = d.execute(0, &rsoc, &[]).unwrap();
        assert_eq!(d93[1] & 0x07, 3);
        let mut short = rsoc;
        short[9] = 2;
        short[8] = 0;
        assert_eq!(
            d.execute(0, &short, &[]).unwrap().len(),
            2,
            "allocation length"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn unaligned_images_are_refused() {
        let path = std::env::temp_dir().join(format!("vmm-scsi-odd-{}.img", std::process::id()));
        std::fs::write(&path, [0u8; 700]).unwrap();
        assert!(matches!(
            ScsiDisk::open(&path, DiskOptions::new("x")),
            Err(ImageError::Unaligned { .. })
        ));
        std::fs::remove_file(path).unwrap();
    }

    mod qcow2 {
        use super::*;
        use crate::scsi::qcow2::tests::{make_qcow2, temp_path};

        fn write10(lba: u32, blocks: u16) -> [u8; 10] {
            let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            cdb
        }

        fn read10(lba: u32, blocks: u16) -> [u8; 10] {
            let mut cdb = write10(lba, blocks);
            cdb[0] = 0x28;
            cdb
        }

        const SYNC_CACHE: [u8; 10] = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

        #[test]
        fn a_qcow2_image_is_detected_and_keeps_what_was_written() {
            let path = make_qcow2(8 << 20, None);
            let disk = ScsiDisk::open(&path, DiskOptions::new("Q")).unwrap();
            assert_eq!(disk.format(), Format::Qcow2);
            assert_eq!(disk.blocks(), (8 << 20) / 512);
            let data: Vec<u8> = (0..256 * 512u32).map(|i| (i / 512 + i) as u8).collect();
            disk.execute(0, &write10(1000, 256), &data).unwrap();
            assert_eq!(disk.execute(0, &read10(1000, 256), &[]).unwrap(), data);
            assert_eq!(
                disk.execute(0, &read10(0, 8), &[]).unwrap(),
                vec![0; 4096],
                "never written: zeros"
            );
            disk.execute(0, &SYNC_CACHE, &[]).unwrap();
            drop(disk);
            // A new process would see the same: open it again.
            let again = ScsiDisk::open(&path, DiskOptions::new("Q")).unwrap();
            assert_eq!(again.execute(0, &read10(1000, 256), &[]).unwrap(), data);
            assert_eq!(
                again.execute(0, &read10(16383, 2), &[]),
                Err(Sense::LBA_OUT_OF_RANGE)
            );
            std::fs::remove_file(path).unwrap();
        }

        /// imago frees discarded clusters inside the image (their refcounts
        /// drop to zero) for later writes to reuse; it does not punch holes
        /// in the qcow2 file, so the file does not shrink, but it stops
        /// growing.
        #[test]
        fn discard_frees_clusters_for_later_writes_and_reads_back_zeros() {
            let path = make_qcow2(8 << 20, None);
            let disk = ScsiDisk::open(&path, DiskOptions::new("Q")).unwrap();
            disk.execute(0, &write10(0, 8192), &vec![0x5a; 4 << 20])
                .unwrap();
            disk.execute(0, &SYNC_CACHE, &[]).unwrap();
            let file_len = |p: &Path| std::fs::metadata(p).unwrap().len();
            let before = file_len(&path);
            // UNMAP of 2 MiB at 1 MiB (whole clusters) and a partial cluster.
            let mut list = vec![0, 38, 0, 32, 0, 0, 0, 0];
            for (lba, blocks) in [(2048u64, 4096u32), (7000, 10)] {
                list.extend_from_slice(&lba.to_be_bytes());
                list.extend_from_slice(&blocks.to_be_bytes());
                list.extend_from_slice(&[0; 4]);
            }
            disk.execute(0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0], &list)
                .unwrap();
            disk.execute(0, &SYNC_CACHE, &[]).unwrap();
            let back = disk.execute(0, &read10(0, 8192), &[]).unwrap();
            let zero = |from: usize, blocks: usize| {
                back[from * 512..(from + blocks) * 512]
                    .iter()
                    .all(|&b| b == 0)
            };
            assert!(zero(2048, 4096) && zero(7000, 10));
            assert!(back[..2048 * 512].iter().all(|&b| b == 0x5a));
            assert!(back[6144 * 512..7000 * 512].iter().all(|&b| b == 0x5a));
            assert!(back[7010 * 512..].iter().all(|&b| b == 0x5a));
            // 2 MiB never written before land in the freed clusters.
            disk.execute(0, &write10(12288, 4096), &vec![0x66; 2 << 20])
                .unwrap();
            disk.execute(0, &SYNC_CACHE, &[]).unwrap();
            let after = file_len(&path);
            assert!(
                after <= before + (64 << 10),
                "the image grew from {before} to {after} bytes"
            );
            assert_eq!(
                disk.execute(0, &read10(12288, 4096), &[]).unwrap(),
                vec![0x66; 2 << 20]
            );
            std::fs::remove_file(path).unwrap();
        }

        #[test]
        fn a_backing_file_opens_only_when_the_format_is_named() {
            let base = temp_path("base");
            std::fs::write(&base, vec![0xbbu8; 4 << 20]).unwrap();
            let overlay = make_qcow2(4 << 20, Some(&base));
            let refused = ScsiDisk::open(&overlay, DiskOptions::new("Q"))
                .err()
                .unwrap();
            assert!(
                refused.to_string().contains("give format=qcow2"),
                "{refused}"
            );
            let options = DiskOptions {
                format: Some(Format::Qcow2),
                ..DiskOptions::new("Q")
            };
            let disk = ScsiDisk::open(&overlay, options).unwrap();
            assert_eq!(
                disk.execute(0, &read10(100, 1), &[]).unwrap(),
                vec![0xbb; 512]
            );
            disk.execute(0, &write10(100, 1), &[0x11; 512]).unwrap();
            disk.execute(0, &SYNC_CACHE, &[]).unwrap();
            assert_eq!(
                disk.execute(0, &read10(100, 1), &[]).unwrap(),
                vec![0x11; 512]
            );
            assert!(
                std::fs::read(&base).unwrap().iter().all(|&b| b == 0xbb),
                "the backing file is never written"
            );
            drop(disk);
            for p in [base, overlay] {
                std::fs::remove_file(p).unwrap();
            }
        }

        /// A remote killed after a write completed, before any SYNCHRONIZE
        /// CACHE: the next remote (restart=on) must read what the guest
        /// was told is written.
        #[test]
        fn a_completed_write_survives_the_process_without_a_flush() {
            let path = make_qcow2(8 << 20, None);
            let first = ScsiDisk::open(&path, DiskOptions::new("Q")).unwrap();
            let data = vec![0x3cu8; 64 << 10];
            first.execute(0, &write10(4096, 128), &data).unwrap();
            first
                .execute(0, &[0x41, 0, 0, 0, 0x20, 0, 0, 0, 8, 0], &[0x7e; 512])
                .unwrap();
            // Killed: no drop, so nothing is flushed on the way out.
            std::mem::forget(first);
            let next = ScsiDisk::open(&path, DiskOptions::new("Q")).unwrap();
            assert!(
                next.execute(0, &read10(4096, 128), &[]).unwrap() == data,
                "the completed write is lost"
            );
            assert!(
                next.execute(0, &read10(0x2000, 8), &[]).unwrap() == vec![0x7e; 4096],
                "the completed WRITE SAME is lost"
            );
            std::fs::remove_file(path).unwrap();
        }

        #[test]
        fn a_corrupt_qcow2_image_is_a_clear_error() {
            let path = temp_path("corrupt");
            // The magic, version 3, then an L1 table far past the file.
            let mut header = b"QFI\xfb".to_vec();
            header.extend_from_slice(&3u32.to_be_bytes());
            header.extend_from_slice(&[0xff; 96]);
            std::fs::write(&path, &header).unwrap();
            let err = ScsiDisk::open(&path, DiskOptions::new("C")).err().unwrap();
            assert!(matches!(err, ImageError::Qcow2 { .. }), "{err}");
            assert!(err.to_string().contains("cannot open qcow2 image"), "{err}");
            std::fs::remove_file(path).unwrap();
        }

        #[test]
        fn a_raw_image_is_not_mistaken_for_qcow2() {
            let path = temp_path("raw");
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            let disk = ScsiDisk::open(&path, DiskOptions::new("R")).unwrap();
            assert_eq!(disk.format(), Format::Raw);
            drop(disk);
            // Named qcow2 on a raw file: a clear error, not a raw disk.
            let options = DiskOptions {
                format: Some(Format::Qcow2),
                ..DiskOptions::new("R")
            };
            let err = ScsiDisk::open(&path, options).err().unwrap();
            assert!(err.to_string().contains("cannot open qcow2 image"), "{err}");
            std::fs::remove_file(path).unwrap();
        }
    }
}
