//! Loading a bzImage, its initrd and command line, and filling the zero page.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile,
};

use crate::layout;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// bzImage loadflags bit: the kernel may be loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;
/// The 64-bit entry point sits 0x200 bytes past the protected-mode start.
const STARTUP_64_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a bzImage or ELF kernel: {source}")]
    NotBzImage {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("{path} is not a bzImage or ELF kernel: {reason}")]
    NotElfKernel { path: PathBuf, reason: String },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "guest memory is too small for this kernel: it needs {need} MiB below the MMIO hole to decompress"
    )]
    KernelTooBig { need: u64 },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} next to the kernel"
    )]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: vm_memory::VolatileMemoryError,
    },
    #[error("kernel command line is invalid: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("kernel command line does not fit in guest memory: {0}")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("guest memory is too small for the boot structures: {0}")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error("the e820 map needs more than {max} entries", max = layout::MAX_E820_ENTRIES)]
    TooManyE820Entries,
}

/// Where the kernel ended up and where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub entry: GuestAddress,
}

/// `boot_params` as bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data C struct; every byte pattern is valid.
unsafe impl ByteValued for ZeroPage {}

/// Builds the kernel command line: the user's text, or our default, and
/// always `reboot=k` unless the user picked a reboot method, so that a guest
/// reboot reaches our i8042 and ends the VMM.
pub fn build_cmdline(user: Option<&str>) -> Result<Cmdline, BootError> {
    const DEFAULT: &str = "console=ttyS0 panic=1";
    let text = user.unwrap_or(DEFAULT);
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline.insert_str(text).map_err(BootError::Cmdline)?;
    if !text.split_whitespace().any(|w| w.starts_with("reboot=")) {
        cmdline.insert_str("reboot=k").map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Loads a kernel image of format `L` above the low megabyte.
fn load_image<L: KernelLoader>(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
) -> Result<linux_loader::loader::KernelLoaderResult, BootError> {
    L::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START))).map_err(|source| {
        BootError::NotBzImage {
            path: path.to_owned(),
            source,
        }
    })
}

/// An ELF we may start as a kernel: a fixed-address x86-64 executable whose
/// segments all lie above the low megabyte. The loader alone would take a
/// position-independent program (any static-pie binary) and copy segments
/// linked at 0 over the zero page, then jump into it.
fn check_elf_kernel(file: &mut File, path: &Path) -> Result<(), BootError> {
    use std::io::{Read, Seek, SeekFrom};
    const ET_EXEC: u16 = 2;
    const EM_X86_64: u16 = 62;
    const PT_LOAD: u32 = 1;
    const PHDR_SIZE: usize = 56;
    const MAX_PHDRS: u16 = 64;
    let refuse = |reason: String| BootError::NotElfKernel {
        path: path.to_owned(),
        reason,
    };
    let io = |e: std::io::Error| refuse(format!("cannot read its ELF headers: {e}"));
    let mut ehdr = [0u8; 64];
    file.rewind().map_err(io)?;
    file.read_exact(&mut ehdr).map_err(io)?;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(refuse("not a little-endian ELF64 file".into()));
    }
    let e_type = u16_at(&ehdr, 16);
    if e_type != ET_EXEC {
        return Err(refuse(format!(
            "ELF type {e_type} is not ET_EXEC (a position-independent program is not a kernel)"
        )));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(refuse(format!("ELF machine {machine} is not x86-64")));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = usize::from(u16_at(&ehdr, 54));
    let phnum = u16_at(&ehdr, 56);
    if phentsize != PHDR_SIZE || phnum == 0 || phnum > MAX_PHDRS {
        return Err(refuse(format!(
            "{phnum} program headers of {phentsize} bytes (expected 1 to {MAX_PHDRS} of {PHDR_SIZE})"
        )));
    }
    let mut phdrs = vec![0u8; PHDR_SIZE * usize::from(phnum)];
    file.seek(SeekFrom::Start(phoff)).map_err(io)?;
    file.read_exact(&mut phdrs).map_err(io)?;
    for ph in phdrs.chunks_exact(PHDR_SIZE) {
        let p_type = u32::from_le_bytes(ph[0..4].try_into().expect("4 bytes"));
        let paddr = u64_at(ph, 24);
        if p_type == PT_LOAD && paddr < layout::HIMEM_START {
            return Err(refuse(format!(
                "a segment loads at {paddr:#x}, below {:#x} where the boot structures live",
                layout::HIMEM_START
            )));
        }
    }
    file.rewind().map_err(io)
}

/// Loads kernel, initrd and command line and writes the zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    ram_ranges: &[(u64, u64)],
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootInfo, BootError> {
    let mut kernel_file = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: kernel.to_owned(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf =
        std::io::Read::read_exact(&mut kernel_file, &mut magic).is_ok() && magic == ELF_MAGIC;
    std::io::Seek::rewind(&mut kernel_file).map_err(|source| BootError::OpenKernel {
        path: kernel.to_owned(),
        source,
    })?;
    // An uncompressed ELF (a vmlinux, or a small probe guest) starts at its
    // own entry point in 64-bit mode; a bzImage at its 64-bit entry.
    let (mut params, kernel_end, entry) = if is_elf {
        check_elf_kernel(&mut kernel_file, kernel)?;
        let loaded = load_image::<Elf>(mem, &mut kernel_file, kernel)?;
        let mut params = boot_params::default();
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.initrd_addr_max = u32::MAX;
        (params, loaded.kernel_end, loaded.kernel_load)
    } else {
        let loaded = load_image::<BzImage>(mem, &mut kernel_file, kernel)?;
        let not_bzimage = || BootError::NotBzImage {
            path: kernel.to_owned(),
            source: linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            ),
        };
        let params = boot_params {
            hdr: loaded.setup_header.ok_or_else(not_bzimage)?,
            ..Default::default()
        };
        if params.hdr.boot_flag != KERNEL_BOOT_FLAG_MAGIC || params.hdr.header != KERNEL_HDR_MAGIC {
            return Err(not_bzimage());
        }
        // The kernel decompresses in place and needs `init_size` bytes
        // from its load address; nothing else may live there.
        let end = layout::HIMEM_START + u64::from(params.hdr.init_size);
        (
            params,
            end,
            loaded.kernel_load.unchecked_add(STARTUP_64_OFFSET),
        )
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH;

    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(BootError::LoadCmdline)?;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len() as u32
        + 1;

    let low_end = ram_ranges[0].0 + ram_ranges[0].1;
    if kernel_end > low_end {
        return Err(BootError::KernelTooBig {
            need: kernel_end.div_ceil(1 << 20),
        });
    }
    if let Some(initrd) = initrd {
        let (addr, size) =
            load_initrd(mem, initrd, kernel_end, low_end, params.hdr.initrd_addr_max)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = e820_map(ram_ranges);
    if e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries);
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&e820) {
        *slot = *entry;
    }
    params.e820_entries = e820.len() as u8;

    mem.write_obj(ZeroPage(params), GuestAddress(layout::ZERO_PAGE_START))
        .map_err(BootError::GuestMemory)?;
    Ok(BootInfo { entry })
}

/// Puts the initrd page-aligned at the top of low RAM, under the kernel's limit.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_ram_end: u64,
    initrd_addr_max: u32,
) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.to_owned(),
            source,
        })?
        .len();
    let limit = low_ram_end.min(u64::from(initrd_addr_max) + 1);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end {
        return Err(too_big());
    }
    let mut slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(BootError::GuestMemory)?;
    file.read_exact_volatile(&mut slice)
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_owned(),
            source,
        })?;
    Ok((addr, size))
}

/// The e820 map: low RAM, the BIOS area, RAM from 1 MiB and above 4 GiB.
pub fn e820_map(ram_ranges: &[(u64, u64)]) -> Vec<boot_e820_entry> {
    let entry = |addr, size, r#type| boot_e820_entry { addr, size, r#type };
    let mut map = vec![
        entry(0, layout::EBDA_START, E820_RAM),
        entry(
            layout::EBDA_START,
            layout::HIMEM_START - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for &(start, size) in ram_ranges {
        let end = start + size;
        let start = start.max(layout::HIMEM_START);
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_low_ram_bios_hole_and_high_ram() {
        let map = e820_map(&layout::ram_ranges(512 << 20));
        let tuples: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            tuples,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x60400, E820_RESERVED),
                (0x10_0000, (512 << 20) - 0x10_0000, E820_RAM),
            ]
        );
        let big = e820_map(&layout::ram_ranges(5 << 30));
        assert_eq!(big.len(), 4);
        assert_eq!({ big[3].addr }, 1 << 32);
        assert_eq!({ big[3].size }, (5 << 30) - layout::MMIO_HOLE_START);
    }

    #[test]
    fn cmdline_gets_reboot_k_unless_user_chose() {
        let c = build_cmdline(None).unwrap().as_cstring().unwrap();
        assert!(c.to_str().unwrap().contains("console=ttyS0"));
        assert!(c.to_str().unwrap().ends_with("reboot=k"));
        let c = build_cmdline(Some("console=ttyS0 reboot=t")).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=t"
        );
    }

    #[test]
    fn zero_page_has_the_documented_size() {
        assert_eq!(std::mem::size_of::<ZeroPage>(), 4096);
    }

    #[test]
    fn garbage_kernel_is_refused() {
        let ram = crate::memory::GuestRam::new(64 << 20).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let cmdline = build_cmdline(None).unwrap();
        let err = load_linux(&ram.memory, &[(0, 64 << 20)], &path, None, &cmdline).unwrap_err();
        assert!(matches!(err, BootError::NotBzImage { .. }), "{err}");
        let missing = dir.join("missing");
        let err = load_linux(&ram.memory, &[(0, 64 << 20)], &missing, None, &cmdline).unwrap_err();
        assert!(matches!(err, BootError::OpenKernel { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A hand-made ELF64 executable: one PT_LOAD of `code` at 0x200000,
    /// entry at its start.
    fn tiny_elf(code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R X
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // file offset
        ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn an_elf_that_is_not_a_kernel_is_refused() {
        let ram = crate::memory::GuestRam::new(64 << 20).unwrap();
        let cmdline = build_cmdline(None).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-elf-refuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let refused = |bytes: &[u8], why: &str| {
            let path = dir.join(why);
            std::fs::write(&path, bytes).unwrap();
            let err = load_linux(&ram.memory, &[(0, 64 << 20)], &path, None, &cmdline).unwrap_err();
            assert!(
                matches!(err, BootError::NotElfKernel { .. }),
                "{why}: {err}"
            );
            assert!(
                err.to_string().contains("is not a bzImage or ELF kernel"),
                "{err}"
            );
        };
        let mut pie = tiny_elf(&[0xf4]);
        pie[16] = 3; // ET_DYN
        refused(&pie, "pie");
        let mut low = tiny_elf(&[0xf4]);
        low[64 + 24..64 + 32].copy_from_slice(&0x1000u64.to_le_bytes());
        refused(&low, "low-segment");
        let mut arm = tiny_elf(&[0xf4]);
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        refused(&arm, "aarch64");
        // This test program itself: a position-independent executable.
        refused(
            &std::fs::read(std::env::current_exe().unwrap()).unwrap(),
            "self",
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_elf_kernel_loads_at_its_address_and_starts_at_its_entry() {
        let ram = crate::memory::GuestRam::new(64 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("vmm-elf-test-{}", std::process::id()));
        std::fs::write(&path, tiny_elf(&[0xf4, 0xeb, 0xfd])).unwrap(); // hlt; jmp
        let cmdline = build_cmdline(Some("r 0xc000005c 10")).unwrap();
        let info = load_linux(&ram.memory, &[(0, 64 << 20)], &path, None, &cmdline).unwrap();
        assert_eq!(info.entry, GuestAddress(0x20_0000));
        let mut code = [0u8; 3];
        ram.memory
            .read_slice(&mut code, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(code, [0xf4, 0xeb, 0xfd]);
        let params: ZeroPage = ram
            .memory
            .read_obj(GuestAddress(layout::ZERO_PAGE_START))
            .unwrap();
        let ptr = params.0.hdr.cmd_line_ptr;
        let mut line = [0u8; 14];
        ram.memory
            .read_slice(&mut line, GuestAddress(u64::from(ptr)))
            .unwrap();
        assert_eq!(&line, b"r 0xc000005c 1");
        std::fs::remove_file(path).unwrap();
    }
}
