// SPDX-License-Identifier: GPL-2.0-only
/*
 * Selftest for KVM_SET_IOREGION (kernel/kvm/ioregion.c), run inside the KVM
 * test rig on our rebuilt kvm.ko. Build: gcc -static -O2 -pthread.
 *
 * Each check makes a small VM: 64 KiB of RAM at 0, one (or two) vCPUs in
 * real mode running a code snippet at 0x1000 that ends in HLT, DS based at
 * 0x20000 (the MMIO regions) and ES at 0. Prints "PASS name" or
 * "FAIL name: why" per check; exits 1 if any check failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the uAPI under test (not in linux/kvm.h) ---- */
struct kvm_ioregion {
	uint64_t guest_paddr;
	uint64_t memory_size;
	uint64_t user_data;
	int32_t read_fd;
	int32_t write_fd;
	uint32_t flags;
	uint32_t pad0;
	uint64_t posted_count;
	uint8_t pad[16];
};
#define KVM_IOREGION_PIO (1 << 0)
#define KVM_IOREGION_POSTED_WRITES (1 << 1)
#define KVM_IOREGION_DEASSIGN (1 << 2)
#define KVM_IOREGION_POSTED_COUNT (1 << 3)
#define KVM_SET_IOREGION _IOW(KVMIO, 0x49, struct kvm_ioregion)
_Static_assert(sizeof(struct kvm_ioregion) == 64, "kvm_ioregion is 64 bytes");
_Static_assert(KVM_SET_IOREGION == 0x4040AE49, "ioctl number");

#define MMIO_BASE 0x20000ull
#define CODE 0x1000
#define MEM_SIZE 0x10000

/* ---- guest snippets (16-bit real mode) ---- */
extern const uint8_t g_read32[], g_read32_end[];
extern const uint8_t g_order[], g_order_end[];
extern const uint8_t g_zero[], g_zero_end[];
extern const uint8_t g_pio[], g_pio_end[];
extern const uint8_t g_insw[], g_insw_end[];
extern const uint8_t g_read2[], g_read2_end[];
asm(".pushsection .rodata\n"
    ".code16\n"
    /* one 4-byte MMIO read of region offset 0x10 into eax */
    "g_read32: movl %ds:0x10, %eax\n hlt\n g_read32_end:\n"
    /* non-posted write, posted write (other region, same fd), read */
    "g_order: movl $0x11111111, %eax\n movl %eax, %ds:0x0\n"
    "  movw $0x2222, %ax\n movw %ax, %ds:0x104\n"
    "  movl %ds:0x8, %ebx\n hlt\n g_order_end:\n"
    /* write to a zero-size posted region, then read it */
    "g_zero: movl $0x55, %eax\n movl %eax, %ds:0x200\n"
    "  movl %ds:0x200, %ecx\n hlt\n g_zero_end:\n"
    /* PIO: outl then inw on port 0x600 */
    "g_pio: movw $0x600, %dx\n movl $0xabcd1234, %eax\n outl %eax, %dx\n"
    "  inw %dx, %ax\n hlt\n g_pio_end:\n"
    /* rep insw: 3 words from port 0x600 to es:0x3000 */
    "g_insw: movw $0x600, %dx\n movw $0x3000, %di\n movw $3, %cx\n cld\n"
    "  rep insw\n hlt\n g_insw_end:\n"
    /* one 4-byte MMIO read of region offset 0x80 into eax */
    "g_read2: movl %ds:0x80, %eax\n hlt\n g_read2_end:\n"
    ".code64\n"
    ".popsection\n");

/* ---- reporting ---- */
static int failures;

static void report(const char *name, int ok, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		printf("PASS %s\n", name);
	} else {
		failures++;
		printf("FAIL %s: ", name);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		printf("\n");
	}
	fflush(stdout);
}

static void die(const char *what)
{
	printf("FAIL setup: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* ---- a minimal VM ---- */
struct vcpu {
	int fd;
	struct kvm_run *run;
	size_t run_size;
};

struct vm {
	int fd;
	uint8_t *mem;
	int nvcpus;
	struct vcpu vcpu[2];
};

static int kvm_fd;

static void vm_create(struct vm *vm, int nvcpus)
{
	struct kvm_userspace_memory_region slot = { 0 };
	int i, sz;

	memset(vm, 0, sizeof(*vm));
	vm->fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm->fd < 0)
		die("KVM_CREATE_VM");
	ioctl(vm->fd, KVM_SET_TSS_ADDR, 0xfffbd000ul); /* VMX real mode */
	vm->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (vm->mem == MAP_FAILED)
		die("mmap guest memory");
	slot.memory_size = MEM_SIZE;
	slot.userspace_addr = (uintptr_t)vm->mem;
	if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &slot))
		die("KVM_SET_USER_MEMORY_REGION");
	sz = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	vm->nvcpus = nvcpus;
	for (i = 0; i < nvcpus; i++) {
		struct vcpu *v = &vm->vcpu[i];

		v->fd = ioctl(vm->fd, KVM_CREATE_VCPU, i);
		if (v->fd < 0)
			die("KVM_CREATE_VCPU");
		v->run_size = sz;
		v->run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED,
			      v->fd, 0);
		if (v->run == MAP_FAILED)
			die("mmap kvm_run");
	}
}

static void vm_destroy(struct vm *vm)
{
	int i;

	for (i = 0; i < vm->nvcpus; i++) {
		munmap(vm->vcpu[i].run, vm->vcpu[i].run_size);
		close(vm->vcpu[i].fd);
	}
	munmap(vm->mem, MEM_SIZE);
	close(vm->fd);
}

/* Points vCPU @i at a snippet (copied to CODE + 0x100 * i). */
static void vcpu_load(struct vm *vm, int i, const uint8_t *start,
		      const uint8_t *end)
{
	struct vcpu *v = &vm->vcpu[i];
	struct kvm_sregs sregs;
	struct kvm_regs regs = { 0 };
	uint64_t code = CODE + 0x100 * i;

	memcpy(vm->mem + code, start, end - start);
	if (ioctl(v->fd, KVM_GET_SREGS, &sregs))
		die("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = MMIO_BASE;
	sregs.ds.selector = MMIO_BASE >> 4;
	sregs.es.base = 0;
	sregs.es.selector = 0;
	if (ioctl(v->fd, KVM_SET_SREGS, &sregs))
		die("KVM_SET_SREGS");
	regs.rip = code;
	regs.rflags = 2;
	if (ioctl(v->fd, KVM_SET_REGS, &regs))
		die("KVM_SET_REGS");
}

static struct kvm_regs vcpu_regs(struct vcpu *v)
{
	struct kvm_regs regs;

	if (ioctl(v->fd, KVM_GET_REGS, &regs))
		die("KVM_GET_REGS");
	return regs;
}

/* KVM_RUN in a thread, so the test can play the device meanwhile. */
struct runner {
	pthread_t thread;
	struct vcpu *v;
	int ret, err;
	int joined;
};

static void *runner_main(void *arg)
{
	struct runner *r = arg;

	r->ret = ioctl(r->v->fd, KVM_RUN, 0);
	r->err = errno;
	return NULL;
}

static void run_start(struct runner *r, struct vcpu *v)
{
	memset(r, 0, sizeof(*r));
	r->v = v;
	if (pthread_create(&r->thread, NULL, runner_main, r))
		die("pthread_create");
}

static int join_within(struct runner *r, int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return pthread_timedjoin_np(r->thread, NULL, &ts);
}

/* 0 once KVM_RUN returned; -1 if still blocked after @ms (then it is kicked). */
static int run_join(struct runner *r, int ms)
{
	if (join_within(r, ms) == 0) {
		r->joined = 1;
		return 0;
	}
	pthread_kill(r->thread, SIGUSR1);
	if (join_within(r, 5000) == 0)
		r->joined = 1;
	return -1;
}

/* Has the runner returned yet (without waiting)? */
static int run_done(struct runner *r)
{
	return pthread_tryjoin_np(r->thread, NULL) == 0 ? (r->joined = 1) : 0;
}

static int run_sync(struct vcpu *v)
{
	struct runner r;

	run_start(&r, v);
	if (run_join(&r, 5000))
		return -2;
	errno = r.err;
	return r.ret;
}

/* ---- the device side ---- */
struct cmd {
	uint8_t op, info;
	uint64_t user_data, offset, data;
	int pad_ok;
};

static int dev_recv(int fd, struct cmd *c, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint8_t b[32];
	int i;

	if (poll(&p, 1, ms) != 1 || !(p.revents & POLLIN))
		return -1;
	if (read(fd, b, sizeof(b)) != 32)
		return -1;
	c->op = b[0];
	c->info = b[1];
	c->pad_ok = 1;
	for (i = 2; i < 8; i++)
		c->pad_ok &= b[i] == 0;
	memcpy(&c->user_data, b + 8, 8);
	memcpy(&c->offset, b + 16, 8);
	memcpy(&c->data, b + 24, 8);
	return 0;
}

static int dev_reply(int fd, uint64_t data)
{
	uint8_t b[32] = { 0 };

	memcpy(b, &data, 8);
	return write(fd, b, 32) == 32 ? 0 : -1;
}

/* Nothing arrives within @ms. */
static int dev_quiet(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, ms) == 0;
}

static int cmd_is(const struct cmd *c, int op, int size_exp, int resp,
		  uint64_t ud, uint64_t off, uint64_t data)
{
	return c->pad_ok && c->op == op && c->info == (size_exp | (resp << 4)) &&
	       c->user_data == ud && c->offset == off && c->data == data;
}

static char cmdbuf[160];
static const char *cmd_str(const struct cmd *c)
{
	snprintf(cmdbuf, sizeof(cmdbuf),
		 "cmd %u info %#x ud %#llx off %#llx data %#llx pad %s", c->op,
		 c->info, (unsigned long long)c->user_data,
		 (unsigned long long)c->offset, (unsigned long long)c->data,
		 c->pad_ok ? "ok" : "BAD");
	return cmdbuf;
}

static void pair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		die("socketpair");
}

static int set_region_counted(struct vm *vm, uint64_t paddr, uint64_t size,
			      uint64_t ud, int rfd, int wfd, uint32_t flags,
			      volatile uint64_t *count)
{
	struct kvm_ioregion r = {
		.guest_paddr = paddr,
		.memory_size = size,
		.user_data = ud,
		.read_fd = rfd,
		.write_fd = wfd,
		.flags = flags,
		.posted_count = (uintptr_t)count,
	};

	return ioctl(vm->fd, KVM_SET_IOREGION, &r) ? -errno : 0;
}

static int set_region(struct vm *vm, uint64_t paddr, uint64_t size,
		      uint64_t ud, int rfd, int wfd, uint32_t flags)
{
	return set_region_counted(vm, paddr, size, ud, rfd, wfd, flags, NULL);
}

static int ioeventfd(struct vm *vm, uint64_t addr, uint32_t len, int pio)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	struct kvm_ioeventfd e = {
		.addr = addr,
		.len = len,
		.fd = efd,
		.flags = pio ? KVM_IOEVENTFD_FLAG_PIO : 0,
	};

	return ioctl(vm->fd, KVM_IOEVENTFD, &e) ? -errno : 0;
}

/* The KVM side's end was closed by us; has KVM dropped its reference? */
static int peer_hung_up(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, ms) == 1 && (p.revents & POLLHUP);
}

static const char *err_name(int e)
{
	static char buf[32];

	switch (e) {
	case 0: return "0";
	case -EEXIST: return "EEXIST";
	case -ENOENT: return "ENOENT";
	case -EBADF: return "EBADF";
	case -EINVAL: return "EINVAL";
	case -EFAULT: return "EFAULT";
	case -ENOTTY: return "ENOTTY";
	}
	snprintf(buf, sizeof(buf), "errno %d", -e);
	return buf;
}

/* ---- checks ---- */

static void test_ioctl_errors(void)
{
	struct vm vm;
	int sv[2], ro, e;

	vm_create(&vm, 1);
	pair(sv);
	e = set_region(&vm, MMIO_BASE, 0x1000, 1, sv[0], sv[0], 0);
	report("assign", e == 0, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE + 0x800, 0x100, 2, sv[0], sv[0], 0);
	report("eexist-ioregion-inside", e == -EEXIST, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE - 0x1000, 0x1001, 2, sv[0], sv[0], 0);
	report("eexist-ioregion-partial", e == -EEXIST, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE, 0x1000, 2, sv[0], sv[0], KVM_IOREGION_PIO & 0);
	report("eexist-ioregion-same", e == -EEXIST, "got %s", err_name(e));
	e = set_region(&vm, 0x600, 8, 3, sv[0], sv[0], KVM_IOREGION_PIO);
	report("pio-and-mmio-spaces-separate", e == 0, "got %s", err_name(e));
	e = ioeventfd(&vm, MMIO_BASE + 0x10, 4, 0);
	report("eexist-ioeventfd-on-ioregion", e == -EEXIST, "got %s", err_name(e));
	e = ioeventfd(&vm, 0x604, 0, 1);
	report("eexist-pio-ioeventfd-on-ioregion", e == -EEXIST, "got %s", err_name(e));
	e = ioeventfd(&vm, 0x30000, 4, 0);
	report("ioeventfd-elsewhere", e == 0, "got %s", err_name(e));
	e = set_region(&vm, 0x2fff0, 0x100, 4, sv[0], sv[0], 0);
	report("eexist-ioregion-on-ioeventfd", e == -EEXIST, "got %s", err_name(e));
	e = ioeventfd(&vm, 0x40000, 0, 0);
	e = e ? e : set_region(&vm, 0x40000, 4, 4, sv[0], sv[0], 0);
	report("eexist-ioregion-on-zero-len-ioeventfd", e == -EEXIST, "got %s", err_name(e));

	e = set_region(&vm, MMIO_BASE, 0x800, 1, sv[0], sv[0], KVM_IOREGION_DEASSIGN);
	report("enoent-deassign-wrong-size", e == -ENOENT, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE, 0x1000, 1, sv[0], sv[0],
		       KVM_IOREGION_DEASSIGN | KVM_IOREGION_PIO);
	report("enoent-deassign-wrong-space", e == -ENOENT, "got %s", err_name(e));
	e = set_region(&vm, 0x50000, 0x10, 1, -1, -1, KVM_IOREGION_DEASSIGN);
	report("enoent-deassign-unknown", e == -ENOENT, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE, 0x1000, 1, -1, -1, KVM_IOREGION_DEASSIGN);
	report("deassign-exact", e == 0, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE, 0x1000, 1, -1, -1, KVM_IOREGION_DEASSIGN);
	report("enoent-deassign-twice", e == -ENOENT, "got %s", err_name(e));
	e = set_region(&vm, MMIO_BASE + 0x800, 0x100, 2, sv[0], sv[0], 0);
	report("reassign-after-deassign", e == 0, "got %s", err_name(e));

	e = set_region(&vm, 0x60000, 0x10, 5, sv[0], -1, 0);
	report("ebadf-write-fd", e == -EBADF, "got %s", err_name(e));
	e = set_region(&vm, 0x60000, 0x10, 5, 999, sv[0], 0);
	report("ebadf-read-fd", e == -EBADF, "got %s", err_name(e));
	ro = open("/dev/null", O_RDONLY | O_CLOEXEC);
	e = set_region(&vm, 0x60000, 0x10, 5, sv[0], ro, 0);
	report("ebadf-write-fd-read-only", e == -EBADF, "got %s", err_name(e));
	close(ro);

	e = set_region(&vm, 0x60000, 0, 5, sv[0], sv[0], 0);
	report("einval-zero-size-not-posted", e == -EINVAL, "got %s", err_name(e));
	e = set_region(&vm, 0x60000, 0, 5, -1, sv[0], KVM_IOREGION_POSTED_WRITES);
	report("zero-size-posted", e == 0, "got %s", err_name(e));
	e = set_region(&vm, 0x60000, 0, 5, -1, sv[0], KVM_IOREGION_POSTED_WRITES);
	report("eexist-zero-size-twice", e == -EEXIST, "got %s", err_name(e));
	e = set_region(&vm, 0x70000, 0x10, 5, sv[0], sv[0], 1 << 4);
	report("einval-unknown-flag", e == -EINVAL, "got %s", err_name(e));
	{
		struct kvm_ioregion r = { .guest_paddr = 0x70000, .memory_size = 16,
					  .read_fd = sv[0], .write_fd = sv[0] };
		r.pad[15] = 1;
		e = ioctl(vm.fd, KVM_SET_IOREGION, &r) ? -errno : 0;
		report("einval-nonzero-pad", e == -EINVAL, "got %s", err_name(e));
		r.pad[15] = 0;
		r.pad0 = 1;
		e = ioctl(vm.fd, KVM_SET_IOREGION, &r) ? -errno : 0;
		report("einval-nonzero-pad0", e == -EINVAL, "got %s", err_name(e));
	}
	e = set_region(&vm, ~0ull - 7, 16, 5, sv[0], sv[0], 0);
	report("einval-wraps", e == -EINVAL, "got %s", err_name(e));
	e = set_region(&vm, 0xfff8, 16, 5, sv[0], sv[0], KVM_IOREGION_PIO);
	report("einval-pio-beyond-64k", e == -EINVAL, "got %s", err_name(e));
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* The fd references: dropped on deassign and when the VM goes away. */
static void test_references(void)
{
	struct vm vm;
	int sv[2], e;

	vm_create(&vm, 1);
	pair(sv);
	e = set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	close(sv[0]);
	report("fd-held-while-assigned", e == 0 && !peer_hung_up(sv[1], 100),
	       "assign %s, or the peer saw a hang-up", err_name(e));
	set_region(&vm, MMIO_BASE, 0x100, 1, -1, -1, KVM_IOREGION_DEASSIGN);
	report("deassign-drops-fd", peer_hung_up(sv[1], 2000),
	       "the peer never saw the hang-up");
	close(sv[1]);

	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	set_region(&vm, MMIO_BASE + 0x100, 0x100, 2, sv[0], sv[0],
		   KVM_IOREGION_POSTED_WRITES);
	set_region(&vm, 0x700, 4, 3, sv[0], sv[0], KVM_IOREGION_PIO);
	close(sv[0]);
	vm_destroy(&vm);
	report("vm-close-drops-fds", peer_hung_up(sv[1], 2000),
	       "the peer never saw the hang-up");
	close(sv[1]);
}

static void test_read(void)
{
	struct vm vm;
	struct runner r;
	struct cmd c = { 0 };
	int sv[2], got;
	struct kvm_regs regs;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 0x1234, sv[0], sv[0], 0);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	run_start(&r, &vm.vcpu[0]);
	got = dev_recv(sv[1], &c, 3000);
	report("read-command", got == 0 && cmd_is(&c, 0, 2, 1, 0x1234, 0x10, 0),
	       got ? "no command" : cmd_str(&c));
	usleep(50000);
	report("read-blocks-until-response", !run_done(&r),
	       "KVM_RUN returned (%d, exit %u) before the response", r.ret,
	       vm.vcpu[0].run->exit_reason);
	dev_reply(sv[1], 0xfeedf00dcafe1234ull);
	if (run_join(&r, 3000)) {
		report("read-value", 0, "KVM_RUN did not return after the response");
	} else {
		regs = vcpu_regs(&vm.vcpu[0]);
		report("read-value",
		       r.ret == 0 && vm.vcpu[0].run->exit_reason == KVM_EXIT_HLT &&
			       (uint32_t)regs.rax == 0xcafe1234,
		       "ret %d exit %u eax %#llx", r.ret,
		       vm.vcpu[0].run->exit_reason, (unsigned long long)regs.rax);
	}
	report("read-single-command", dev_quiet(sv[1], 50), "extra command");
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* Non-posted write, posted write (another region, same fd), read. */
static void test_order(void)
{
	struct vm vm;
	struct runner r;
	struct cmd c1 = { 0 }, c2 = { 0 }, c3 = { 0 };
	int sv[2], ok;
	struct kvm_regs regs;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	set_region(&vm, MMIO_BASE + 0x100, 0x100, 2, sv[0], sv[0],
		   KVM_IOREGION_POSTED_WRITES);
	vcpu_load(&vm, 0, g_order, g_order_end);
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c1, 3000) == 0;
	report("write-command", ok && cmd_is(&c1, 1, 2, 1, 1, 0, 0x11111111),
	       ok ? cmd_str(&c1) : "no command");
	report("write-waits-for-response", dev_quiet(sv[1], 100) && !run_done(&r),
	       "the vCPU went on before the write's response");
	dev_reply(sv[1], 0);
	ok = dev_recv(sv[1], &c2, 3000) == 0;
	report("posted-write-command", ok && cmd_is(&c2, 1, 1, 0, 2, 4, 0x2222),
	       ok ? cmd_str(&c2) : "no command");
	/* The posted write needs no response: the read follows at once. */
	ok = dev_recv(sv[1], &c3, 3000) == 0;
	report("read-after-posted-write", ok && cmd_is(&c3, 0, 2, 1, 1, 8, 0),
	       ok ? cmd_str(&c3) : "no command");
	dev_reply(sv[1], 0x87654321);
	if (run_join(&r, 3000)) {
		report("order-read-value", 0, "KVM_RUN did not return");
	} else {
		regs = vcpu_regs(&vm.vcpu[0]);
		report("order-read-value",
		       r.ret == 0 && vm.vcpu[0].run->exit_reason == KVM_EXIT_HLT &&
			       (uint32_t)regs.rbx == 0x87654321,
		       "ret %d exit %u ebx %#llx", r.ret,
		       vm.vcpu[0].run->exit_reason, (unsigned long long)regs.rbx);
	}
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* Zero-size posted region: writes become posted commands, reads exit. */
static void test_zero_size(void)
{
	struct vm vm;
	struct cmd c = { 0 };
	int sv[2], ret, ok;
	struct kvm_run *run;
	struct kvm_regs regs;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE + 0x200, 0, 9, -1, sv[0],
		   KVM_IOREGION_POSTED_WRITES);
	vcpu_load(&vm, 0, g_zero, g_zero_end);
	run = vm.vcpu[0].run;
	ret = run_sync(&vm.vcpu[0]);
	ok = dev_recv(sv[1], &c, 1000) == 0;
	report("zero-size-posted-write", ok && cmd_is(&c, 1, 2, 0, 9, 0, 0x55),
	       ok ? cmd_str(&c) : "no command");
	report("zero-size-read-exits-to-userspace",
	       ret == 0 && run->exit_reason == KVM_EXIT_MMIO &&
		       run->mmio.phys_addr == MMIO_BASE + 0x200 && !run->mmio.is_write,
	       "ret %d exit %u addr %#llx", ret, run->exit_reason,
	       (unsigned long long)run->mmio.phys_addr);
	memset(run->mmio.data, 0, 8);
	run->mmio.data[0] = 0x77;
	ret = run_sync(&vm.vcpu[0]);
	regs = vcpu_regs(&vm.vcpu[0]);
	report("zero-size-read-completed-by-userspace",
	       ret == 0 && run->exit_reason == KVM_EXIT_HLT && regs.rcx == 0x77,
	       "ret %d exit %u ecx %#llx", ret, run->exit_reason,
	       (unsigned long long)regs.rcx);
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/*
 * KVM_IOREGION_POSTED_COUNT: one count per write fd, stored after each
 * posted command, continued across a deassign, and checked at assign.
 */
static void test_posted_count(void)
{
	static volatile uint64_t count __attribute__((aligned(8)));
	static volatile uint64_t other __attribute__((aligned(8)));
	const uint32_t counted = KVM_IOREGION_POSTED_WRITES | KVM_IOREGION_POSTED_COUNT;
	struct cmd c1 = { 0 }, c2 = { 0 }, c3 = { 0 };
	struct runner r;
	struct vm vm;
	int sv[2], sv2[2], e, ok;

	vm_create(&vm, 1);
	pair(sv);
	pair(sv2);
	e = set_region_counted(&vm, 0x70000, 0x10, 5, sv[0], sv[0],
			       KVM_IOREGION_POSTED_WRITES, &count);
	report("einval-count-without-flag", e == -EINVAL, "got %s", err_name(e));
	e = set_region(&vm, 0x70000, 0x10, 5, sv[0], sv[0], counted);
	report("einval-count-flag-without-address", e == -EINVAL, "got %s", err_name(e));
	e = set_region_counted(&vm, 0x70000, 0x10, 5, sv[0], sv[0], counted,
			       (volatile uint64_t *)((uintptr_t)&count + 4));
	report("einval-count-unaligned", e == -EINVAL, "got %s", err_name(e));
	e = set_region_counted(&vm, 0x70000, 0x10, 5, sv[0], sv[0], counted,
			       (volatile uint64_t *)8);
	report("efault-count-unmapped", e == -EFAULT, "got %s", err_name(e));

	/* A waited region and a posted one on one fd, one count. */
	count = 100;
	e = set_region_counted(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0],
			       KVM_IOREGION_POSTED_COUNT, &count);
	e = e ? e : set_region_counted(&vm, MMIO_BASE + 0x100, 0x100, 2, sv[0],
				       sv[0], counted, &count);
	report("count-shared-by-regions-of-one-fd", e == 0, "got %s", err_name(e));
	e = set_region_counted(&vm, 0x70000, 0x10, 5, sv[0], sv[0], counted, &other);
	report("einval-other-count-on-one-fd", e == -EINVAL, "got %s", err_name(e));
	e = set_region(&vm, 0x70000, 0x10, 5, sv[0], sv[0], KVM_IOREGION_POSTED_WRITES);
	report("einval-no-count-on-a-counted-fd", e == -EINVAL, "got %s", err_name(e));
	e = set_region_counted(&vm, 0x70000, 0x10, 5, sv2[0], sv2[0], counted, &other);
	report("count-of-another-fd", e == 0, "got %s", err_name(e));

	/* g_order: waited write, posted write, read; only the second counts. */
	vcpu_load(&vm, 0, g_order, g_order_end);
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c1, 3000) == 0;
	report("count-ignores-waited-writes", ok && count == 100,
	       "%s, count %llu", ok ? cmd_str(&c1) : "no command",
	       (unsigned long long)count);
	dev_reply(sv[1], 0);
	ok = dev_recv(sv[1], &c2, 3000) == 0 && dev_recv(sv[1], &c3, 3000) == 0;
	/* The read follows the posted write: the count was stored by then. */
	report("count-stored-before-the-vcpu-goes-on", ok && count == 101,
	       "%s, count %llu", ok ? cmd_str(&c3) : "no command",
	       (unsigned long long)count);
	dev_reply(sv[1], 0);
	e = run_join(&r, 3000);
	report("count-ignores-reads", !e && count == 101, "count %llu",
	       (unsigned long long)count);

	/* Removed and assigned again: the fd's count goes on from 101. */
	set_region(&vm, MMIO_BASE, 0x100, 1, -1, -1, KVM_IOREGION_DEASSIGN);
	set_region(&vm, MMIO_BASE + 0x100, 0x100, 2, -1, -1, KVM_IOREGION_DEASSIGN);
	e = set_region_counted(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0],
			       KVM_IOREGION_POSTED_COUNT, &count);
	e = e ? e : set_region_counted(&vm, MMIO_BASE + 0x100, 0x100, 2, sv[0],
				       sv[0], counted, &count);
	vcpu_load(&vm, 0, g_order, g_order_end);
	run_start(&r, &vm.vcpu[0]);
	ok = !e && dev_recv(sv[1], &c1, 3000) == 0;
	dev_reply(sv[1], 0);
	ok = ok && dev_recv(sv[1], &c2, 3000) == 0 && dev_recv(sv[1], &c3, 3000) == 0;
	dev_reply(sv[1], 0);
	ok = ok && !run_join(&r, 3000);
	report("count-goes-on-after-reassign", ok && count == 102,
	       "assign %s, count %llu", err_name(e), (unsigned long long)count);
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
	close(sv2[0]);
	close(sv2[1]);
}

/* A device serving @n commands from @fd in a thread, answering @vals. */
struct server {
	pthread_t thread;
	int fd, n;
	uint64_t vals[8];
	struct cmd cmds[8];
	int got;
};

static void *server_main(void *arg)
{
	struct server *s = arg;

	while (s->got < s->n) {
		struct cmd *c = &s->cmds[s->got];

		if (dev_recv(s->fd, c, 3000))
			break;
		if (c->info & 0x10)
			dev_reply(s->fd, s->vals[s->got]);
		s->got++;
	}
	return NULL;
}

static void test_pio(void)
{
	struct vm vm;
	struct server s = { 0 };
	int sv[2], ret;
	struct kvm_run *run;
	struct kvm_regs regs;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, 0x600, 8, 6, sv[0], sv[0], KVM_IOREGION_PIO);
	run = vm.vcpu[0].run;

	s.fd = sv[1];
	s.n = 2;
	s.vals[1] = 0x5678;
	pthread_create(&s.thread, NULL, server_main, &s);
	vcpu_load(&vm, 0, g_pio, g_pio_end);
	ret = run_sync(&vm.vcpu[0]);
	pthread_join(s.thread, NULL);
	regs = vcpu_regs(&vm.vcpu[0]);
	report("pio-out-in",
	       ret == 0 && run->exit_reason == KVM_EXIT_HLT && s.got == 2 &&
		       cmd_is(&s.cmds[0], 1, 2, 1, 6, 0, 0xabcd1234) &&
		       cmd_is(&s.cmds[1], 0, 1, 1, 6, 0, 0) &&
		       (uint32_t)regs.rax == 0xabcd5678,
	       "ret %d exit %u commands %d eax %#llx", ret, run->exit_reason,
	       s.got, (unsigned long long)regs.rax);

	memset(&s, 0, sizeof(s));
	s.fd = sv[1];
	s.n = 3;
	s.vals[0] = 0x1111;
	s.vals[1] = 0x2222;
	s.vals[2] = 0x3333;
	pthread_create(&s.thread, NULL, server_main, &s);
	vcpu_load(&vm, 0, g_insw, g_insw_end);
	ret = run_sync(&vm.vcpu[0]);
	pthread_join(s.thread, NULL);
	report("pio-rep-insw",
	       ret == 0 && run->exit_reason == KVM_EXIT_HLT && s.got == 3 &&
		       !memcmp(vm.mem + 0x3000, "\x11\x11\x22\x22\x33\x33", 6) &&
		       dev_quiet(sv[1], 20),
	       "ret %d exit %u commands %d data %02x%02x %02x%02x %02x%02x",
	       ret, run->exit_reason, s.got, vm.mem[0x3001], vm.mem[0x3000],
	       vm.mem[0x3003], vm.mem[0x3002], vm.mem[0x3005], vm.mem[0x3004]);
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

static void on_sigusr1(int sig)
{
	(void)sig;
}

static volatile sig_atomic_t sigpipes;
static void on_sigpipe(int sig)
{
	(void)sig;
	sigpipes++;
}

/* A signal while the vCPU waits for a read's response. */
static void test_signal(void)
{
	struct vm vm;
	struct runner r;
	struct cmd c = { 0 };
	int sv[2], ok, i;
	struct kvm_run *run;
	struct kvm_regs regs;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 7, sv[0], sv[0], 0);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	run = vm.vcpu[0].run;
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c, 3000) == 0;
	usleep(50000);
	pthread_kill(r.thread, SIGUSR1);
	if (run_join(&r, 3000)) {
		report("signal-eintr", 0, "KVM_RUN did not return on a signal");
		goto out;
	}
	report("signal-eintr",
	       ok && r.ret == -1 && r.err == EINTR && run->exit_reason == KVM_EXIT_INTR,
	       "command %s, ret %d errno %d exit %u", ok ? "seen" : "missing",
	       r.ret, r.err, run->exit_reason);

	/* Several more interruptions before the answer comes. */
	for (i = 0; i < 3; i++) {
		run_start(&r, &vm.vcpu[0]);
		usleep(30000);
		pthread_kill(r.thread, SIGUSR1);
		if (run_join(&r, 3000) || r.ret != -1 || r.err != EINTR)
			break;
	}
	report("signal-eintr-repeated", i == 3, "round %d: ret %d errno %d", i,
	       r.ret, r.err);

	run_start(&r, &vm.vcpu[0]);
	usleep(100000);
	report("signal-rerun-waits", !run_done(&r) && dev_quiet(sv[1], 0),
	       "the rerun returned early or sent the command again");
	dev_reply(sv[1], 0x0badcafe);
	if (run_join(&r, 3000)) {
		report("signal-rerun-completes", 0, "KVM_RUN did not return");
		goto out;
	}
	regs = vcpu_regs(&vm.vcpu[0]);
	report("signal-rerun-completes",
	       r.ret == 0 && run->exit_reason == KVM_EXIT_HLT &&
		       (uint32_t)regs.rax == 0x0badcafe,
	       "ret %d exit %u eax %#llx", r.ret, run->exit_reason,
	       (unsigned long long)regs.rax);
	report("signal-one-command", dev_quiet(sv[1], 50),
	       "the device saw a second command");
out:
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* Reads or sets kvm.ko's ioregion_timeout_ms; -1 if it cannot. */
#define TIMEOUT_PARAM "/sys/module/kvm/parameters/ioregion_timeout_ms"
static long timeout_param(long set)
{
	FILE *f = fopen(TIMEOUT_PARAM, set < 0 ? "r" : "w");
	long v = -1;

	if (!f)
		return -1;
	if (set < 0) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
	} else {
		v = fprintf(f, "%ld\n", set) > 0 ? set : -1;
	}
	if (fclose(f))
		v = -1;
	return v;
}

/*
 * A device that takes a read and never answers: after ioregion_timeout_ms
 * the access goes to userspace, and the late answer is dropped, not taken
 * for the next command's.
 */
static void test_timeout(void)
{
	struct vm vm;
	struct runner r;
	struct cmd c = { 0 };
	struct timespec t0, t1;
	int sv[2], ok, ret;
	long old, ms;
	struct kvm_run *run;

	old = timeout_param(-1);
	if (old < 0 || timeout_param(300) != 300) {
		report("timeout-param", 0, "cannot read and set " TIMEOUT_PARAM);
		return;
	}
	report("timeout-param", old == 10000, "default %ld ms, not 10000", old);
	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	run = vm.vcpu[0].run;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c, 3000) == 0;
	if (run_join(&r, 5000)) {
		report("timeout-gives-the-access-to-userspace", 0,
		       "the vCPU still waits after 5 s");
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	report("timeout-gives-the-access-to-userspace",
	       ok && r.ret == 0 && run->exit_reason == KVM_EXIT_MMIO &&
		       run->mmio.phys_addr == MMIO_BASE + 0x10 && ms >= 250,
	       "command %s, ret %d errno %d exit %u after %ld ms",
	       ok ? "seen" : "missing", r.ret, r.err, run->exit_reason, ms);
	/* The VMM answers it, then the device's late answer comes. */
	memset(run->mmio.data, 0, 8);
	run->mmio.data[0] = 0x77;
	ret = run_sync(&vm.vcpu[0]);
	report("timeout-access-completed-by-userspace",
	       ret == 0 && run->exit_reason == KVM_EXIT_HLT &&
		       (uint32_t)vcpu_regs(&vm.vcpu[0]).rax == 0x77,
	       "ret %d exit %u", ret, run->exit_reason);
	dev_reply(sv[1], 0xdead);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c, 3000) == 0;
	if (ok)
		dev_reply(sv[1], 0x1234);
	if (run_join(&r, 3000)) {
		report("timeout-late-answer-dropped", 0, "KVM_RUN did not return");
		goto out;
	}
	report("timeout-late-answer-dropped",
	       ok && r.ret == 0 && run->exit_reason == KVM_EXIT_HLT &&
		       (uint32_t)vcpu_regs(&vm.vcpu[0]).rax == 0x1234,
	       "command %s, ret %d exit %u eax %#llx", ok ? "seen" : "missing",
	       r.ret, run->exit_reason,
	       (unsigned long long)vcpu_regs(&vm.vcpu[0]).rax);
out:
	timeout_param(old);
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* Two vCPUs, one fd: the second command waits for the first response. */
static void test_queue(void)
{
	struct vm vm;
	struct runner r0, r1;
	struct cmd c0 = { 0 }, c1 = { 0 };
	int sv[2], ok0, ok1;
	struct kvm_regs g0, g1;

	vm_create(&vm, 2);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	vcpu_load(&vm, 1, g_read2, g_read2_end);
	run_start(&r0, &vm.vcpu[0]);
	ok0 = dev_recv(sv[1], &c0, 3000) == 0;
	run_start(&r1, &vm.vcpu[1]);
	report("queue-one-outstanding", ok0 && dev_quiet(sv[1], 200),
	       ok0 ? "a second command arrived while one was outstanding"
		   : "no first command");
	dev_reply(sv[1], 0x1000 + c0.offset);
	ok1 = dev_recv(sv[1], &c1, 3000) == 0;
	if (ok1)
		dev_reply(sv[1], 0x1000 + c1.offset);
	run_join(&r0, 3000);
	run_join(&r1, 3000);
	g0 = vcpu_regs(&vm.vcpu[0]);
	g1 = vcpu_regs(&vm.vcpu[1]);
	report("queue-both-complete",
	       ok1 && r0.ret == 0 && r1.ret == 0 && (uint32_t)g0.rax == 0x1010 &&
		       (uint32_t)g1.rax == 0x1080,
	       "second command %s, ret %d/%d eax %#llx/%#llx",
	       ok1 ? "seen" : "missing", r0.ret, r1.ret,
	       (unsigned long long)g0.rax, (unsigned long long)g1.rax);
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* Deassigning a region flushes the vCPU waiting on it. */
static void test_deassign_flush(void)
{
	struct vm vm;
	struct runner r;
	struct cmd c = { 0 };
	struct timespec t0, t1;
	int sv[2], ok, e;
	long ms;
	struct kvm_run *run;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	run = vm.vcpu[0].run;
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c, 3000) == 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	e = set_region(&vm, MMIO_BASE, 0x100, 1, -1, -1, KVM_IOREGION_DEASSIGN);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	report("deassign-while-waiting", ok && e == 0 && ms < 1000,
	       "command %s, deassign %s after %ld ms", ok ? "seen" : "missing",
	       err_name(e), ms);
	if (run_join(&r, 3000)) {
		report("deassign-flushes-waiter", 0, "the vCPU still waits");
	} else {
		report("deassign-flushes-waiter",
		       r.ret == 0 && run->exit_reason == KVM_EXIT_MMIO &&
			       run->mmio.phys_addr == MMIO_BASE + 0x10,
		       "ret %d errno %d exit %u", r.ret, r.err, run->exit_reason);
	}
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
}

/* The device closes its end while the vCPU waits; and accesses after. */
static void test_peer_close(void)
{
	struct vm vm;
	struct runner r;
	struct cmd c = { 0 };
	int sv[2], ok, ret;
	struct kvm_run *run;

	vm_create(&vm, 1);
	pair(sv);
	set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
	close(sv[0]);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	run = vm.vcpu[0].run;
	run_start(&r, &vm.vcpu[0]);
	ok = dev_recv(sv[1], &c, 3000) == 0;
	close(sv[1]);
	if (run_join(&r, 3000)) {
		report("peer-close-while-waiting", 0, "the vCPU still waits");
	} else {
		report("peer-close-while-waiting",
		       ok && r.ret == 0 && run->exit_reason == KVM_EXIT_MMIO &&
			       run->mmio.phys_addr == MMIO_BASE + 0x10,
		       "command %s, ret %d errno %d exit %u", ok ? "seen" : "missing",
		       r.ret, r.err, run->exit_reason);
	}
	/* Finish the failed access as a VMM would (reads as all ones). */
	memset(run->mmio.data, 0xff, 8);
	ret = run_sync(&vm.vcpu[0]);
	report("peer-closed-access-completed-by-userspace",
	       ret == 0 && run->exit_reason == KVM_EXIT_HLT &&
		       (uint32_t)vcpu_regs(&vm.vcpu[0]).rax == 0xffffffff,
	       "ret %d exit %u", ret, run->exit_reason);
	vcpu_load(&vm, 0, g_read32, g_read32_end);
	ret = run_sync(&vm.vcpu[0]);
	report("peer-closed-access-fails-fast",
	       ret == 0 && run->exit_reason == KVM_EXIT_MMIO && sigpipes == 0,
	       "ret %d exit %u sigpipes %d", ret, run->exit_reason, (int)sigpipes);
	vm_destroy(&vm);
}

/*
 * The process dies while its vCPU waits for a response: no hang, and the
 * VM's fd reference is dropped (the device sees the hang-up).
 */
static void *child_vcpu(void *arg)
{
	struct vm *vm = arg;

	ioctl(vm->vcpu[0].fd, KVM_RUN, 0);
	return NULL;
}

static void test_teardown(int by_exit)
{
	const char *name = by_exit ? "teardown-exit-while-waiting"
				   : "teardown-kill-while-waiting";
	struct cmd c = { 0 };
	int sv[2], status, i, ok;
	pid_t pid, w = 0;

	pair(sv);
	pid = fork();
	if (pid == 0) {
		struct vm vm;
		pthread_t t;

		close(sv[1]);
		vm_create(&vm, 1);
		set_region(&vm, MMIO_BASE, 0x100, 1, sv[0], sv[0], 0);
		close(sv[0]);
		vcpu_load(&vm, 0, g_read32, g_read32_end);
		if (!by_exit) {
			child_vcpu(&vm);
			_exit(3);
		}
		pthread_create(&t, NULL, child_vcpu, &vm);
		usleep(300000);
		_exit(0);	/* exit_group with the vCPU thread in KVM_RUN */
	}
	close(sv[0]);
	ok = dev_recv(sv[1], &c, 5000) == 0;
	if (!by_exit)
		kill(pid, SIGKILL);
	for (i = 0; i < 500; i++) {
		w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		usleep(10000);
	}
	if (w != pid) {
		kill(pid, SIGKILL);
		report(name, 0, "the process did not die within 5 s");
		waitpid(pid, &status, 0);
		close(sv[1]);
		return;
	}
	report(name, ok && peer_hung_up(sv[1], 3000),
	       "command %s; the device %s the hang-up", ok ? "seen" : "missing",
	       ok ? "never saw" : "?");
	close(sv[1]);
}

int main(void)
{
	struct sigaction sa = { 0 };
	struct vm vm;
	int sv[2], e;

	setvbuf(stdout, NULL, _IOLBF, 0);
	sa.sa_handler = on_sigusr1;
	sigaction(SIGUSR1, &sa, NULL);	/* no SA_RESTART: KVM_RUN sees EINTR */
	sa.sa_handler = on_sigpipe;
	sigaction(SIGPIPE, &sa, NULL);
	alarm(240);			/* never hang the rig */

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm");

	/* The probe the VMM does: is the ioctl there at all? */
	vm_create(&vm, 1);
	pair(sv);
	e = set_region(&vm, 0xfeb00000, 8, 0, sv[0], sv[0], 0);
	report("probe", e == 0, "KVM_SET_IOREGION: %s (stock KVM says ENOTTY)",
	       err_name(e));
	vm_destroy(&vm);
	close(sv[0]);
	close(sv[1]);
	if (e)
		return 1;

	test_ioctl_errors();
	test_references();
	test_read();
	test_order();
	test_zero_size();
	test_posted_count();
	test_pio();
	test_signal();
	test_timeout();
	test_queue();
	test_deassign_flush();
	test_peer_close();
	test_teardown(0);
	test_teardown(1);

	printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
	return failures ? 1 : 0;
}
