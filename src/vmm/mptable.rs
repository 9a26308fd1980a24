//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI
//! learns about its CPUs, buses, IOAPIC and interrupt wiring.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus".
const IRQ_FLAGS_BUS_DEFAULT: u16 = 0;
/// Active high (01), level triggered (11 << 2).
pub const IRQ_FLAGS_LEVEL_HIGH: u16 = 0x0d;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// CPUID signature family 6 and the FPU + APIC feature flags, as firmware reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
/// The PCI bus entry's id must equal the PCI bus number (0): Linux looks
/// interrupt entries up by it.
pub const PCI_BUS_ID: u8 = 0;
pub const ISA_BUS_ID: u8 = 1;
const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

/// Most vCPUs an MP table can describe: xAPIC ids are 8 bits and the IOAPIC
/// takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs requested; the MP table describes at most {MAX_CPUS}")]
    TooManyCpus(u8),
    #[error("the MP table ({0} bytes) does not fit in the BIOS area")]
    TooBig(usize),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A PCI device's INTx wiring: slot and pin (1 = INTA#) to an IOAPIC input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIrq {
    pub slot: u8,
    pub pin: u8,
    pub ioapic_pin: u8,
}

/// Builds the floating pointer and configuration table as they will sit at `base`.
pub fn build(base: u64, cpus: u8, pci_irqs: &[PciIrq]) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };

    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        let mut e = vec![ENTRY_PROCESSOR, cpu, APIC_VERSION, flags];
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        push(&e);
    }
    push(&bus_entry(PCI_BUS_ID, b"PCI   "));
    push(&bus_entry(ISA_BUS_ID, b"ISA   "));
    let mut ioapic = vec![ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1];
    ioapic.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    push(&ioapic);
    // ISA IRQ n is IOAPIC input n: that is how KVM's default routing wires them.
    for irq in 0..layout::ISA_IRQ_COUNT {
        push(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            IRQ_FLAGS_BUS_DEFAULT,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            irq,
        ));
    }
    for irq in pci_irqs {
        push(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            IRQ_FLAGS_LEVEL_HIGH,
            PCI_BUS_ID,
            (irq.slot << 2) | (irq.pin - 1),
            ioapic_id,
            irq.ioapic_pin,
        ));
    }
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        IRQ_FLAGS_BUS_DEFAULT,
        ISA_BUS_ID,
        0,
        0xff,
        0,
    ));
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        IRQ_FLAGS_BUS_DEFAULT,
        ISA_BUS_ID,
        0,
        0xff,
        1,
    ));

    let table_addr = base + FLOATING_POINTER_SIZE as u64;
    let table_len = HEADER_SIZE + entries.len();
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"VMM     ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    debug_assert_eq!(header.len(), HEADER_SIZE);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum_complement(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_SIZE);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum
    fp.extend_from_slice(&[0; 5]); // feature bytes: table present, no IMCR
    fp[10] = checksum_complement(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table into the EBDA, where Linux looks for it.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8, pci_irqs: &[PciIrq]) -> Result<(), MptableError> {
    let bytes = build(layout::EBDA_START, cpus, pci_irqs)?;
    if layout::EBDA_START + bytes.len() as u64 > layout::HIMEM_START {
        return Err(MptableError::TooBig(bytes.len()));
    }
    mem.write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(MptableError::Write)
}

fn bus_entry(id: u8, kind: &[u8; 6]) -> Vec<u8> {
    let mut e = vec![ENTRY_BUS, id];
    e.extend_from_slice(kind);
    e
}

fn interrupt_entry(
    entry: u8,
    kind: u8,
    flags: u16,
    src_bus: u8,
    src_irq: u8,
    dst_apic: u8,
    dst_pin: u8,
) -> Vec<u8> {
    let mut e = vec![entry, kind];
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&[src_bus, src_irq, dst_apic, dst_pin]);
    e
}

/// The byte that makes `bytes` sum to zero modulo 256.
fn checksum_complement(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        let t = build(layout::EBDA_START, 2, &[]).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let table_addr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(table_addr, layout::EBDA_START + 16);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn entry_counts_and_sizes_follow_the_spec() {
        let irqs = [PciIrq {
            slot: 1,
            pin: 1,
            ioapic_pin: 16,
        }];
        let t = build(layout::EBDA_START, 3, &irqs).unwrap();
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        // Walk the entries by their type-defined sizes.
        let mut off = HEADER_SIZE;
        let mut seen = [0usize; 5];
        for _ in 0..count {
            let kind = table[off] as usize;
            seen[kind] += 1;
            off += if kind == 0 { 20 } else { 8 };
        }
        assert_eq!(off, table.len());
        assert_eq!(seen, [3, 2, 1, 16 + 1, 2]);
        // The PCI entry: bus 1, slot 1 INTA#, IOAPIC (id 3) pin 16, level high.
        let pci = &table[table.len() - 24..table.len() - 16];
        assert_eq!(pci, &[3, 0, 0x0d, 0, PCI_BUS_ID, 1 << 2, 3, 16]);
        assert_eq!(PCI_BUS_ID, 0, "Linux matches entries by PCI bus number");
    }

    #[test]
    fn bootstrap_flag_only_on_cpu_zero() {
        let t = build(layout::EBDA_START, 2, &[]).unwrap();
        let first = &t[16 + HEADER_SIZE..];
        assert_eq!(first[3], CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(first[20 + 3], CPU_ENABLED);
        assert_eq!(first[20 + 1], 1, "second CPU has APIC id 1");
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert!(build(layout::EBDA_START, 0, &[]).is_err());
        assert!(build(layout::EBDA_START, 255, &[]).is_err());
        let t = build(layout::EBDA_START, MAX_CPUS, &[]).unwrap();
        assert!(layout::EBDA_START + t.len() as u64 <= layout::HIMEM_START);
    }
}
