//! Every guest-physical address the VMM uses, in one place.
//!
//! Low memory (below 1 MiB) holds the boot structures; the kernel goes at
//! 1 MiB; RAM runs up to the 32-bit MMIO hole and continues above 4 GiB.

/// GDT used while the boot vCPU enters long mode.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, one PD of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we hand over, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the legacy BIOS area ends and "high" memory begins.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole: nothing below 4 GiB from here is RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above the MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Window inside the hole from which PCI memory BARs are allocated.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// I/O port window for PCI I/O BARs.
pub const PCI_IO_START: u64 = 0xc000;
pub const PCI_IO_SIZE: u64 = 0x4000;
/// Address KVM uses for the three pages of its real-mode TSS.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The in-kernel IOAPIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC of every vCPU.
pub const APIC_START: u64 = 0xfee0_0000;

/// Legacy ISA interrupts handled by the in-kernel PIC and IOAPIC.
pub const ISA_IRQ_COUNT: u8 = 16;
/// Input pins of the in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
/// Interrupt line of the first serial port.
pub const SERIAL_IRQ: u32 = 4;

/// Smallest guest we agree to build: the boot structures, a kernel and
/// some room to decompress it.
pub const MIN_MEM_SIZE: u64 = 32 << 20;
/// The zero page e820 table is limited to this many entries.
pub const MAX_E820_ENTRIES: usize = 128;

/// Guest RAM split into the parts below and above the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

// The boot structures must not overlap; checked when the crate compiles.
const _: () = {
    assert!(BOOT_IDT_START < ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(PCI_MMIO_START + PCI_MMIO_SIZE <= IOAPIC_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]);
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }
}
