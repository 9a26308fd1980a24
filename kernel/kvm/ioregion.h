/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * KVM_SET_IOREGION ("ioregionfd"): guest MMIO/PIO ranges that KVM serves by
 * writing command records to a file descriptor and reading responses from
 * another (or the same) one, without exiting to the VMM.
 *
 * Part of the vmm project's kernel/ folder (GPL-2.0); installed as
 * virt/kvm/ioregion.h by ci/build-kvm-ioregion.sh.
 *
 * The uAPI below is not in include/uapi/linux/kvm.h (we build against an
 * unmodified linux-headers package); userspace carries its own copy.
 */
#ifndef __KVM_IOREGION_H__
#define __KVM_IOREGION_H__

#include <linux/types.h>
#include <linux/ioctl.h>

struct kvm;
struct kvm_vcpu;

/* ---- uAPI ---------------------------------------------------------- */

#define KVM_IOREGION_PIO		(1 << 0)
#define KVM_IOREGION_POSTED_WRITES	(1 << 1)
#define KVM_IOREGION_DEASSIGN		(1 << 2)
#define KVM_IOREGION_POSTED_COUNT	(1 << 3)
#define KVM_IOREGION_VALID_FLAGS	((1 << 4) - 1)

struct kvm_ioregion {
	__u64 guest_paddr;	/* guest physical address (or port) */
	__u64 memory_size;	/* bytes; 0 = one address, posted writes only */
	__u64 user_data;	/* copied into every command */
	__s32 read_fd;		/* KVM reads responses from this fd */
	__s32 write_fd;		/* KVM writes commands to this fd */
	__u32 flags;		/* KVM_IOREGION_* */
	__u32 pad0;		/* must be zero */
	/*
	 * With KVM_IOREGION_POSTED_COUNT: the address of an 8-byte aligned
	 * u64 in the caller's memory where KVM keeps the number of posted
	 * writes it has written to write_fd (all regions on that fd
	 * together, so they must all name the same counter), stored after
	 * each command is on the fd. KVM starts from the value it finds
	 * there when the fd's first region is assigned (regions without
	 * posted writes may name it too; they never add to it). Lets
	 * userspace tell whether the device has applied every posted write
	 * KVM sent it. Zero without the flag.
	 */
	__u64 posted_count;
	__u8  pad[16];		/* must be zero */
};

/* A VM ioctl; 0x4040ae49. Mainline later used nr 0x49 with another size. */
#define KVM_SET_IOREGION _IOW(0xAE, 0x49, struct kvm_ioregion)

/*
 * Wire records, 32 bytes each, little-endian (x86 only):
 * command (KVM -> device, on write_fd):
 *   byte 0      0 = read, 1 = write
 *   byte 1      bits 0-3 log2(access size), bit 4 response wanted
 *   bytes 2-7   zero
 *   bytes 8-15  user_data of the region
 *   bytes 16-23 offset of the access from guest_paddr
 *   bytes 24-31 write data in the low bytes (zero for reads)
 * response (device -> KVM, on read_fd):
 *   bytes 0-7   read data in the low bytes (ignored for writes)
 *   bytes 8-31  zero
 */
#define KVM_IOREGION_RECORD_SIZE	32
#define KVM_IOREGION_CMD_READ		0
#define KVM_IOREGION_CMD_WRITE		1
#define KVM_IOREGION_CMD_RESP		(1 << 4)

/* ---- hooks called from the rest of KVM ------------------------------ */

#ifdef __KERNEL__
enum kvm_bus;

int kvm_set_ioregion(struct kvm *kvm, struct kvm_ioregion *args);

/* kvm_main.c: the vCPU is being freed. */
void kvm_ioregion_vcpu_destroy(struct kvm_vcpu *vcpu);

/*
 * x86.c: called with the result of vcpu_run(); serves the ioregion accesses
 * that are behind the userspace exit the vCPU is about to take, re-entering
 * the guest through @run as long as there is nothing else for userspace.
 */
int kvm_ioregion_vcpu_run(struct kvm_vcpu *vcpu, int r,
			  int (*run)(struct kvm_vcpu *vcpu));

/* eventfd.c <-> ioregion.c overlap checks; kvm->slots_lock held. */
bool kvm_ioregion_collides(struct kvm *kvm, enum kvm_bus bus_idx,
			   u64 addr, u64 len);
bool kvm_ioeventfd_collides(struct kvm *kvm, enum kvm_bus bus_idx,
			    u64 addr, u64 len);
#endif

#endif /* __KVM_IOREGION_H__ */
