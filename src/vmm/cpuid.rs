//! CPUID as each vCPU sees it: KVM's supported list, with our topology,
//! the hypervisor bit and the TSC-deadline timer.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31. Without it Linux ignores the KVM leaves, has no
/// kvm-clock, fails TSC calibration and hangs.
pub const HYPERVISOR_BIT: u32 = 1 << 31;
/// CPUID.1:ECX bit 24: the local APIC's TSC-deadline timer mode. KVM
/// emulates it (KVM_CAP_TSC_DEADLINE_TIMER) but leaves it out of the
/// supported list, as it depends on the in-kernel APIC: a VMM that has
/// one says so. Without it Linux programs its timer through the APIC's
/// one-shot count register, which KVM handles on its full exit path, where
/// a TSC-deadline write takes its fast path (QEMU's guests have it; in the
/// rig it made no measurable difference, `2026-12-05-ab-tsc-deadline.md`).
pub const TSC_DEADLINE_BIT: u32 = 1 << 24;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const HTT_BIT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` items.
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

/// Adjusts KVM's supported CPUID for vCPU `cpu` of `count`: one package,
/// one thread per core, `count` cores; the TSC-deadline timer where KVM
/// has it (`tsc_deadline`).
pub fn customize(entries: &mut [kvm_cpuid_entry2], cpu: u8, count: u8, tsc_deadline: bool) {
    for entry in entries.iter_mut() {
        match entry.function {
            0x1 => {
                entry.ecx |= HYPERVISOR_BIT;
                if tsc_deadline {
                    entry.ecx |= TSC_DEADLINE_BIT;
                }
                // APIC id, logical processor count, CLFLUSH line size in 8-byte units.
                entry.ebx = (u32::from(cpu) << 24) | (u32::from(count) << 16) | (8 << 8);
                if count > 1 {
                    entry.edx |= HTT_BIT;
                } else {
                    entry.edx &= !HTT_BIT;
                }
            }
            0x4 => {
                // Cores per package minus one; each cache is private to one thread.
                entry.eax = (entry.eax & 0x3ff) | (u32::from(count - 1) << 26);
            }
            0xb | 0x1f => {
                entry.edx = u32::from(cpu);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = LEVEL_TYPE_SMT << 8;
                    }
                    1 => {
                        entry.eax = id_bits(count);
                        entry.ebx = u32::from(count);
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                    }
                    index => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: cores per package minus one, and the APIC id bits they use.
                entry.ecx = (id_bits(count) << 12) | u32::from(count - 1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn hypervisor_bit_and_apic_id_are_set() {
        let mut entries = [entry(1, 0)];
        customize(&mut entries, 3, 4, true);
        assert_ne!(entries[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(entries[0].ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!(entries[0].ebx >> 24, 3);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 4);
        assert_ne!(entries[0].edx & HTT_BIT, 0);
    }

    #[test]
    fn topology_leaf_describes_all_cores() {
        let mut entries = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        customize(&mut entries, 1, 3, true);
        assert_eq!((entries[0].ebx, entries[0].ecx >> 8), (1, LEVEL_TYPE_SMT));
        assert_eq!(entries[1].eax, 2, "3 cores need 2 id bits");
        assert_eq!((entries[1].ebx, entries[1].ecx >> 8), (3, LEVEL_TYPE_CORE));
        assert_eq!(entries[2].ecx, 2, "invalid level past the last");
        assert!(entries.iter().all(|e| e.edx == 1));
    }

    #[test]
    fn single_cpu_has_no_htt_and_zero_core_bits() {
        let mut entries = [entry(1, 0), entry(4, 0), entry(0x8000_0008, 0)];
        entries[0].edx = HTT_BIT;
        customize(&mut entries, 0, 1, false);
        assert_eq!(entries[0].ecx & TSC_DEADLINE_BIT, 0, "not without KVM's");
        assert_eq!(entries[0].edx & HTT_BIT, 0);
        assert_eq!(entries[1].eax >> 26, 0);
        assert_eq!(entries[2].ecx, 0);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(254), 8);
    }
}
