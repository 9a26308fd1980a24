// SPDX-License-Identifier: GPL-2.0-only
/*
 * KVM_SET_IOREGION ("ioregionfd") for x86 KVM.
 *
 * Part of the vmm project's kernel/ folder (GPL-2.0); installed as
 * virt/kvm/ioregion.c by ci/build-kvm-ioregion.sh. Written from the uAPI
 * description in kernel/README.md and KVM's own interfaces (the ioeventfd
 * code in virt/kvm/eventfd.c is the model for the bus device).
 *
 * How an access flows:
 *
 * 1. Each region is a kvm_io_device on KVM_MMIO_BUS or KVM_PIO_BUS. Its
 *    read/write callbacks never block and never touch the fds: they record
 *    the access (a struct ioregion_access, at most one per vCPU) and return
 *    "not handled". KVM then prepares an ordinary userspace exit
 *    (KVM_EXIT_MMIO / KVM_EXIT_IO with complete_userspace_io set), exactly
 *    as if no in-kernel device existed.
 *
 * 2. Before that exit reaches userspace, kvm_ioregion_vcpu_run() (called
 *    from kvm_arch_vcpu_ioctl_run() right after vcpu_run()) checks that the
 *    exit is the recorded access, takes it over and serves it on the fds
 *    with kvm->srcu released: own the channel (one command in flight per
 *    write fd), write the 32-byte command, and for reads and non-posted
 *    writes read the 32-byte response. The result goes where userspace would
 *    have put it (run->mmio.data or the PIO data page), then KVM's own
 *    complete_userspace_io callback finishes the instruction and the vCPU
 *    re-enters the guest, all inside the same KVM_RUN.
 *
 * 3. A signal while waiting: KVM_RUN returns -EINTR (KVM_EXIT_INTR). The
 *    access keeps its progress (bytes written and read so far, channel
 *    ownership) and complete_userspace_io points at ioregion_cui(), so the
 *    next KVM_RUN resumes exactly where the wait stopped: the command is
 *    never written twice and the response never read twice. Ownership is
 *    only recorded once it is really taken, so an interrupted wait for the
 *    channel leaves nothing behind.
 *
 * 4. Failure (the peer closed its end, a short or broken stream, the region
 *    was removed, or the access waited longer than ioregion_timeout_ms,
 *    counted from when it was taken over and across interruptions): the
 *    access is handed to userspace as the plain KVM_EXIT_MMIO / KVM_EXIT_IO
 *    it would have been without ioregions, for the VMM to answer or to fail
 *    the device.
 *    Removing a region wakes every vCPU waiting on it first (they do not
 *    hold kvm->srcu while waiting, so the removal's synchronize_srcu() does
 *    not wait for the device either). A response still owed for an
 *    abandoned command is read and dropped by the next owner of the
 *    channel, so later commands stay paired with their responses.
 *
 * 5. VM teardown: regions are bus devices, so kvm_io_bus_destroy() calls
 *    our destructor; the vCPU hook frees a vCPU's pending access. The last
 *    reference to a channel drops the file references.
 */

#include <linux/kvm_host.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/net.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uio.h>
#include <linux/wait.h>
#include <linux/sched/signal.h>
#include <linux/refcount.h>
#include <linux/log2.h>
#include <asm/unaligned.h>
#include <kvm/iodev.h>

#include "ioregion.h"

/*
 * How long one access may wait for its device, in milliseconds (0: for
 * ever). A device that stops (SIGSTOP, a deadlock) must not hold the vCPU
 * in the kernel where its VMM cannot see it.
 */
static unsigned int ioregion_timeout_ms = 10000;
module_param(ioregion_timeout_ms, uint, 0644);
MODULE_PARM_DESC(ioregion_timeout_ms,
		 "KVM_SET_IOREGION: longest wait for a device, in ms (0: no limit)");

/* Commands and responses for the regions that share one write fd. */
struct ioregion_chan {
	struct list_head node;		/* in ioregion_chans */
	struct kvm *kvm;
	struct file *wfile;		/* commands go here; the key */
	struct file *rfile;		/* responses come from here, or NULL */
	unsigned int users;		/* regions using it; ioregion_mutex */

	spinlock_t lock;
	struct kvm_vcpu *owner;		/* vCPU whose command is in flight */
	wait_queue_head_t wq;		/* owner released, region removed */
	/* Only the owner touches these three. */
	unsigned int drain;		/* response bytes owed to abandoned commands */
	bool broken;			/* a command was cut: stream out of sync */
	u64 posted;			/* posted commands written, if counted */
	u64 __user *posted_count;	/* where userspace sees @posted, or NULL */
};

struct ioregion {
	struct list_head node;		/* in ioregion_list while assigned */
	bool listed;
	struct kvm *kvm;
	struct kvm_io_device dev;
	struct kvm_io_device fast_dev;	/* zero-size MMIO: KVM_FAST_MMIO_BUS */
	bool on_fast_bus;
	enum kvm_bus bus;
	u64 paddr;
	u64 size;
	u64 user_data;
	bool posted;
	bool dead;			/* removed: waiters give up */
	refcount_t ref;			/* bus registrations + pending accesses */
	struct ioregion_chan *chan;
};

/* One guest access (or PIO string instruction) of one vCPU. */
struct ioregion_access {
	struct list_head node;		/* in ioregion_accesses */
	struct kvm_vcpu *vcpu;
	struct ioregion *region;	/* holds a reference */
	gpa_t addr;
	u32 size;			/* 1, 2, 4 or 8 */
	bool write;
	bool staged;			/* took over the userspace exit */
	u32 exit_reason;		/* the exit we took over */
	int (*cui)(struct kvm_vcpu *vcpu); /* KVM's completion for it */
	u32 count;			/* elements (PIO string ops) */
	u32 done;			/* elements finished */
	bool owner;			/* we own region->chan */
	bool built;			/* cmd holds the current element */
	unsigned long deadline;		/* jiffies; 0: no timeout */
	u32 cmd_off;			/* bytes of cmd written */
	u32 resp_off;			/* bytes of resp read */
	u8 cmd[KVM_IOREGION_RECORD_SIZE];
	u8 resp[KVM_IOREGION_RECORD_SIZE];
};

/* Regions and channels of all VMs (lists are short; not on the fast path). */
static DEFINE_MUTEX(ioregion_mutex);
static LIST_HEAD(ioregion_list);
static LIST_HEAD(ioregion_chans);

/* Pending accesses of all vCPUs, at most one per vCPU. */
static DEFINE_SPINLOCK(ioregion_access_lock);
static LIST_HEAD(ioregion_accesses);
static atomic_t ioregion_naccesses = ATOMIC_INIT(0);

static bool ioregion_overlaps(u64 a, u64 alen, u64 b, u64 blen)
{
	/* A zero-size range covers its one address. */
	return a < b + max_t(u64, blen, 1) && b < a + max_t(u64, alen, 1);
}

static enum kvm_bus ioregion_space(enum kvm_bus bus)
{
	return bus == KVM_FAST_MMIO_BUS ? KVM_MMIO_BUS : bus;
}

/* ---- channels and regions ----------------------------------------- */

static void ioregion_chan_put(struct ioregion_chan *ch)
{
	mutex_lock(&ioregion_mutex);
	if (--ch->users) {
		mutex_unlock(&ioregion_mutex);
		return;
	}
	list_del(&ch->node);
	mutex_unlock(&ioregion_mutex);
	WARN_ON_ONCE(ch->owner);
	fput(ch->wfile);
	if (ch->rfile)
		fput(ch->rfile);
	kfree(ch);
}

static void ioregion_unlist(struct ioregion *r)
{
	mutex_lock(&ioregion_mutex);
	if (r->listed) {
		list_del(&r->node);
		r->listed = false;
	}
	mutex_unlock(&ioregion_mutex);
}

static void ioregion_put(struct ioregion *r)
{
	if (!refcount_dec_and_test(&r->ref))
		return;
	ioregion_unlist(r);
	ioregion_chan_put(r->chan);
	kfree(r);
}

/* Marks the region removed and wakes everybody waiting on its channel. */
static void ioregion_kill(struct ioregion *r)
{
	WRITE_ONCE(r->dead, true);
	wake_up_all(&r->chan->wq);
}

/*
 * Finds or makes the channel for @wf (ioregion_mutex held); consumes the
 * caller's references to @wf and @rf in every case.
 */
static struct ioregion_chan *ioregion_chan_get(struct kvm *kvm,
					       struct file *wf,
					       struct file *rf,
					       u64 __user *posted_count,
					       u64 posted)
{
	struct ioregion_chan *ch, *found = NULL;

	list_for_each_entry(ch, &ioregion_chans, node) {
		if (ch->kvm != kvm)
			continue;
		if (ch->wfile == wf) {
			found = ch;
			continue;
		}
		/* Two writers sharing one response fd would steal replies. */
		if (rf && ch->rfile == rf) {
			found = ERR_PTR(-EINVAL);
			break;
		}
	}
	if (IS_ERR(found))
		goto drop;
	if (found) {
		/* One count per fd: its owner is the only one to store it. */
		if (posted_count != found->posted_count) {
			found = ERR_PTR(-EINVAL);
			goto drop;
		}
		if (rf && found->rfile && found->rfile != rf) {
			found = ERR_PTR(-EINVAL);
			goto drop;
		}
		if (rf && !found->rfile) {
			/* Owners only read rfile for regions that have one. */
			found->rfile = rf;
			rf = NULL;
		}
		found->users++;
		goto drop;
	}

	ch = kzalloc(sizeof(*ch), GFP_KERNEL_ACCOUNT);
	if (!ch) {
		found = ERR_PTR(-ENOMEM);
		goto drop;
	}
	ch->posted = posted;
	ch->posted_count = posted_count;
	ch->kvm = kvm;
	ch->wfile = wf;
	ch->rfile = rf;
	ch->users = 1;
	spin_lock_init(&ch->lock);
	init_waitqueue_head(&ch->wq);
	list_add_tail(&ch->node, &ioregion_chans);
	return ch;

drop:
	fput(wf);
	if (rf)
		fput(rf);
	return found;
}

/* ---- pending accesses ---------------------------------------------- */

static struct ioregion_access *ioregion_access_find(struct kvm_vcpu *vcpu)
{
	struct ioregion_access *a, *found = NULL;

	spin_lock(&ioregion_access_lock);
	list_for_each_entry(a, &ioregion_accesses, node) {
		if (a->vcpu == vcpu) {
			found = a;
			break;
		}
	}
	spin_unlock(&ioregion_access_lock);
	return found;
}

static void ioregion_release(struct ioregion_access *a)
{
	struct ioregion_chan *ch = a->region->chan;

	if (!a->owner)
		return;
	spin_lock(&ch->lock);
	ch->owner = NULL;
	spin_unlock(&ch->lock);
	a->owner = false;
	wake_up_all(&ch->wq);
}

static bool ioregion_wants_response(struct ioregion_access *a)
{
	return !a->write || !a->region->posted;
}

/*
 * Forgets an access (unlinked or not). If its command is on the wire, the
 * response it is owed will be dropped by the next owner of the channel; a
 * command cut in the middle leaves a stream that cannot be resynchronised.
 */
static void ioregion_access_free(struct ioregion_access *a)
{
	struct ioregion_chan *ch = a->region->chan;

	if (a->owner && a->built) {
		if (a->cmd_off && a->cmd_off < KVM_IOREGION_RECORD_SIZE)
			ch->broken = true;
		else if (a->cmd_off == KVM_IOREGION_RECORD_SIZE &&
			 ioregion_wants_response(a))
			ch->drain += KVM_IOREGION_RECORD_SIZE - a->resp_off;
	}
	ioregion_release(a);
	spin_lock(&ioregion_access_lock);
	if (!list_empty(&a->node)) {
		list_del_init(&a->node);
		atomic_dec(&ioregion_naccesses);
	}
	spin_unlock(&ioregion_access_lock);
	ioregion_put(a->region);
	kfree(a);
}

/* Bus callbacks: record the access and let KVM prepare the exit. */
static int ioregion_record(struct kvm_vcpu *vcpu, struct ioregion *r,
			   gpa_t addr, int len, bool write)
{
	struct ioregion_access *a, *old = NULL, *it;

	if (!vcpu || READ_ONCE(r->dead))
		return -EOPNOTSUPP;
	if (len != 1 && len != 2 && len != 4 && len != 8)
		return -EOPNOTSUPP;
	if (!write && !r->size)
		return -EOPNOTSUPP;	/* zero-size regions take writes only */

	a = kzalloc(sizeof(*a), GFP_KERNEL_ACCOUNT);
	if (!a)
		return -EOPNOTSUPP;
	INIT_LIST_HEAD(&a->node);
	a->vcpu = vcpu;
	a->region = r;
	refcount_inc(&r->ref);
	a->addr = addr;
	a->size = len;
	a->write = write;
	a->count = 1;

	spin_lock(&ioregion_access_lock);
	list_for_each_entry(it, &ioregion_accesses, node) {
		if (it->vcpu == vcpu) {
			old = it;
			list_del_init(&it->node);
			atomic_dec(&ioregion_naccesses);
			break;
		}
	}
	list_add(&a->node, &ioregion_accesses);
	atomic_inc(&ioregion_naccesses);
	spin_unlock(&ioregion_access_lock);

	if (old)		/* never staged: see kvm_ioregion_vcpu_run() */
		ioregion_access_free(old);
	return -EOPNOTSUPP;
}

static int ioregion_read(struct kvm_vcpu *vcpu, struct kvm_io_device *dev,
			 gpa_t addr, int len, void *val)
{
	return ioregion_record(vcpu, container_of(dev, struct ioregion, dev),
			       addr, len, false);
}

static int ioregion_write(struct kvm_vcpu *vcpu, struct kvm_io_device *dev,
			  gpa_t addr, int len, const void *val)
{
	return ioregion_record(vcpu, container_of(dev, struct ioregion, dev),
			       addr, len, true);
}

/* KVM_FAST_MMIO_BUS (VMX, length 0): let it fall back to emulation. */
static int ioregion_fast_write(struct kvm_vcpu *vcpu,
			       struct kvm_io_device *dev, gpa_t addr, int len,
			       const void *val)
{
	return -EOPNOTSUPP;
}

/* VM teardown (kvm_io_bus_destroy) or a bus that could not shrink. */
static void ioregion_destructor(struct kvm_io_device *dev)
{
	struct ioregion *r = container_of(dev, struct ioregion, dev);

	ioregion_unlist(r);
	ioregion_kill(r);
	ioregion_put(r);
}

static void ioregion_fast_destructor(struct kvm_io_device *dev)
{
	struct ioregion *r = container_of(dev, struct ioregion, fast_dev);

	ioregion_unlist(r);
	ioregion_kill(r);
	ioregion_put(r);
}

static const struct kvm_io_device_ops ioregion_ops = {
	.read = ioregion_read,
	.write = ioregion_write,
	.destructor = ioregion_destructor,
};

static const struct kvm_io_device_ops ioregion_fast_ops = {
	.write = ioregion_fast_write,
	.destructor = ioregion_fast_destructor,
};

/* ---- talking to the fds -------------------------------------------- */

struct ioregion_poll_entry {
	wait_queue_head_t *head;
	wait_queue_entry_t wait;
	struct ioregion_waiter *w;
};

struct ioregion_waiter {
	poll_table pt;
	struct task_struct *task;
	bool woken;
	int n;
	struct ioregion_poll_entry e[3];	/* two poll heads + channel */
};

static int ioregion_wake(wait_queue_entry_t *wait, unsigned int mode,
			 int sync, void *key)
{
	struct ioregion_poll_entry *e =
		container_of(wait, struct ioregion_poll_entry, wait);

	WRITE_ONCE(e->w->woken, true);
	wake_up_process(e->w->task);
	return 0;
}

static void ioregion_add(struct ioregion_waiter *w, wait_queue_head_t *head)
{
	struct ioregion_poll_entry *e;

	if (w->n == ARRAY_SIZE(w->e))
		return;
	e = &w->e[w->n++];
	e->head = head;
	e->w = w;
	init_waitqueue_func_entry(&e->wait, ioregion_wake);
	add_wait_queue(head, &e->wait);
}

static void ioregion_queue_proc(struct file *file, wait_queue_head_t *head,
				poll_table *pt)
{
	ioregion_add(container_of(pt, struct ioregion_waiter, pt), head);
}

/* Jiffies left before @a's deadline: at least 1, or 0 if it has passed. */
static long ioregion_left(struct ioregion_access *a)
{
	long left;

	if (!a->deadline)
		return MAX_SCHEDULE_TIMEOUT;
	left = (long)(a->deadline - jiffies);
	return left > 0 ? left : 0;
}

/*
 * Waits until @file is ready for @want, the region is removed (-ENODEV),
 * the peer hung up (-EPIPE), a signal arrives (-EINTR) or the access's
 * deadline passes (-ETIMEDOUT).
 */
static int ioregion_wait(struct ioregion_access *a, struct file *file,
			 __poll_t want)
{
	struct ioregion_waiter w = { .task = current };
	__poll_t mask;
	long left;
	int ret, i;

	init_poll_funcptr(&w.pt, ioregion_queue_proc);
	ioregion_add(&w, &a->region->chan->wq);
	mask = vfs_poll(file, &w.pt);
	for (;;) {
		if (mask & want) {
			ret = 0;
			break;
		}
		if (mask & (EPOLLHUP | EPOLLERR)) {
			ret = -EPIPE;
			break;
		}
		if (READ_ONCE(a->region->dead)) {
			ret = -ENODEV;
			break;
		}
		if (signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		left = ioregion_left(a);
		if (!left) {
			ret = -ETIMEDOUT;
			break;
		}
		set_current_state(TASK_INTERRUPTIBLE);
		if (!READ_ONCE(w.woken))
			schedule_timeout(left);
		__set_current_state(TASK_RUNNING);
		WRITE_ONCE(w.woken, false);
		mask = vfs_poll(file, NULL);
	}
	for (i = 0; i < w.n; i++)
		remove_wait_queue(w.e[i].head, &w.e[i].wait);
	return ret;
}

/* One non-blocking transfer; -EAGAIN if the fd is not ready. */
static ssize_t ioregion_xfer(struct file *file, void *buf, size_t len,
			     bool write)
{
	struct socket *sock = sock_from_file(file);
	struct kvec kv = { .iov_base = buf, .iov_len = len };
	struct iov_iter iter;
	struct kiocb kiocb;

	if (sock) {
		/* MSG_NOSIGNAL: a vanished peer must not SIGPIPE the vCPU. */
		struct msghdr msg = { .msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL };

		if (write)
			return kernel_sendmsg(sock, &msg, &kv, 1, len);
		return kernel_recvmsg(sock, &msg, &kv, 1, len,
				      MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	init_sync_kiocb(&kiocb, file);
	kiocb.ki_flags |= IOCB_NOWAIT;
	iov_iter_kvec(&iter, write ? ITER_SOURCE : ITER_DEST, &kv, 1, len);
	if (write)
		return vfs_iocb_iter_write(file, &kiocb, &iter);
	return vfs_iocb_iter_read(file, &kiocb, &iter);
}

/* Moves buf[*off..len) to or from @file, waiting as needed. */
static int ioregion_io(struct ioregion_access *a, struct file *file,
		       void *buf, u32 len, u32 *off, bool write)
{
	ssize_t n;
	int ret;

	while (*off < len) {
		if (READ_ONCE(a->region->dead))
			return -ENODEV;
		if (write && (vfs_poll(file, NULL) & EPOLLERR))
			return -EPIPE;	/* no readers: pipes would SIGPIPE */
		n = ioregion_xfer(file, buf + *off, len - *off, write);
		if (n > 0) {
			*off += n;
			continue;
		}
		if (n == 0)
			return -EPIPE;	/* end of file: the peer is gone */
		if (n != -EAGAIN && n != -EWOULDBLOCK)
			return n < 0 ? (int)n : -EIO;
		ret = ioregion_wait(a, file, write ? EPOLLOUT : EPOLLIN);
		if (ret)
			return ret;
	}
	return 0;
}

static bool ioregion_try_own(struct ioregion_access *a)
{
	struct ioregion_chan *ch = a->region->chan;

	spin_lock(&ch->lock);
	if (!ch->owner) {
		ch->owner = a->vcpu;
		a->owner = true;
	}
	spin_unlock(&ch->lock);
	return a->owner;
}

static int ioregion_own(struct ioregion_access *a)
{
	struct ioregion *r = a->region;
	long left = ioregion_left(a);

	if (left)
		left = wait_event_interruptible_timeout(r->chan->wq,
				ioregion_try_own(a) || READ_ONCE(r->dead), left);
	/* Nothing taken, nothing to undo. */
	if (left < 0)
		return -EINTR;
	if (!left)
		return -ETIMEDOUT;
	if (READ_ONCE(r->dead)) {
		ioregion_release(a);
		return -ENODEV;
	}
	return 0;
}

/* The data of element @i of the exit we took over. */
static void *ioregion_data(struct ioregion_access *a, u32 i)
{
	struct kvm_vcpu *vcpu = a->vcpu;

	if (a->region->bus == KVM_PIO_BUS)
		return vcpu->arch.pio_data + i * a->size;
	return vcpu->run->mmio.data;
}

static void ioregion_build(struct ioregion_access *a)
{
	struct ioregion *r = a->region;
	u64 data = 0;

	memset(a->cmd, 0, sizeof(a->cmd));
	a->cmd[0] = a->write ? KVM_IOREGION_CMD_WRITE : KVM_IOREGION_CMD_READ;
	a->cmd[1] = ilog2(a->size) |
		    (ioregion_wants_response(a) ? KVM_IOREGION_CMD_RESP : 0);
	if (a->write)
		memcpy(&data, ioregion_data(a, a->done), a->size);
	put_unaligned_le64(r->user_data, a->cmd + 8);
	put_unaligned_le64(a->addr - r->paddr, a->cmd + 16);
	put_unaligned_le64(data, a->cmd + 24);
	a->cmd_off = 0;
	a->resp_off = 0;
	a->built = true;
}

/*
 * A posted command is on the fd: publish the channel's count (we own the
 * channel, so stores cannot overtake each other). A count userspace made
 * unwritable is its own loss; the guest's write already went out.
 */
static void ioregion_count_posted(struct ioregion_chan *ch)
{
	ch->posted++;
	if (ch->posted_count && put_user(ch->posted, ch->posted_count))
		pr_warn_ratelimited("kvm ioregion: cannot store the posted-write count\n");
}

/* Serves the remaining elements of a staged access; 0 when all are done. */
static int ioregion_serve(struct ioregion_access *a)
{
	struct ioregion_chan *ch = a->region->chan;
	u8 scratch[KVM_IOREGION_RECORD_SIZE];
	int ret;

	while (a->done < a->count) {
		if (!a->owner) {
			ret = ioregion_own(a);
			if (ret)
				return ret;
		}
		if (ch->broken)
			return -EIO;
		while (ch->drain) {
			u32 off = 0, len = min_t(u32, ch->drain, sizeof(scratch));

			/* Progress counts even when interrupted. */
			ret = ioregion_io(a, ch->rfile, scratch, len, &off, false);
			ch->drain -= off;
			if (ret)
				return ret;
		}
		if (!a->built)
			ioregion_build(a);
		ret = ioregion_io(a, ch->wfile, a->cmd, sizeof(a->cmd),
				  &a->cmd_off, true);
		if (ret)
			return ret;
		if (!ioregion_wants_response(a)) {
			ioregion_count_posted(ch);
		} else {
			if (!ch->rfile)
				return -EBADF;
			ret = ioregion_io(a, ch->rfile, a->resp, sizeof(a->resp),
					  &a->resp_off, false);
			if (ret)
				return ret;
			if (!a->write)
				memcpy(ioregion_data(a, a->done), a->resp,
				       a->size);
		}
		a->built = false;
		a->done++;
		ioregion_release(a);
	}
	return 0;
}

/* ---- taking over exits ---------------------------------------------- */

/* Is the exit KVM prepared the one our bus callback recorded? */
static bool ioregion_exit_matches(struct kvm_vcpu *vcpu,
				  struct ioregion_access *a)
{
	struct kvm_run *run = vcpu->run;

	if (a->region->bus == KVM_PIO_BUS)
		return run->exit_reason == KVM_EXIT_IO &&
		       vcpu->arch.pio.count && run->io.port == a->addr &&
		       run->io.size == a->size && run->io.count >= 1 &&
		       (run->io.direction == KVM_EXIT_IO_OUT) == a->write;
	return run->exit_reason == KVM_EXIT_MMIO && vcpu->mmio_needed &&
	       run->mmio.phys_addr == a->addr && run->mmio.len == a->size &&
	       !!run->mmio.is_write == a->write;
}

static int ioregion_cui(struct kvm_vcpu *vcpu);

/* Serves a staged access; returns what KVM_RUN should do next. */
static int ioregion_finish(struct kvm_vcpu *vcpu, struct ioregion_access *a)
{
	int (*cui)(struct kvm_vcpu *vcpu);
	int ret;

	kvm_vcpu_srcu_read_unlock(vcpu);
	ret = ioregion_serve(a);
	kvm_vcpu_srcu_read_lock(vcpu);

	if (!ret) {
		cui = a->cui;
		ioregion_access_free(a);
		return cui ? cui(vcpu) : 1;
	}
	if (ret == -EINTR) {
		vcpu->arch.complete_userspace_io = ioregion_cui;
		vcpu->run->exit_reason = KVM_EXIT_INTR;
		++vcpu->stat.signal_exits;
		return -EINTR;
	}
	if (ret == -ETIMEDOUT)
		pr_warn_ratelimited("kvm ioregion: no answer from the device within %u ms; the access at %#llx goes to userspace\n",
				    ioregion_timeout_ms, (unsigned long long)a->addr);
	/* Give the access to userspace, as if there were no ioregion. */
	vcpu->run->exit_reason = a->exit_reason;
	vcpu->arch.complete_userspace_io = a->cui;
	ioregion_access_free(a);
	return 0;
}

static int ioregion_serve_exits(struct kvm_vcpu *vcpu, int r)
{
	struct ioregion_access *a;
	unsigned int timeout;

	while (r == 0 && atomic_read(&ioregion_naccesses)) {
		a = ioregion_access_find(vcpu);
		if (!a)
			break;
		if (!a->staged) {
			if (!ioregion_exit_matches(vcpu, a)) {
				ioregion_access_free(a);
				break;
			}
			a->staged = true;
			timeout = READ_ONCE(ioregion_timeout_ms);
			if (timeout)	/* a deadline of 0 would mean none */
				a->deadline = (jiffies +
					       msecs_to_jiffies(timeout)) ?: 1;
			a->exit_reason = vcpu->run->exit_reason;
			a->cui = vcpu->arch.complete_userspace_io;
			vcpu->arch.complete_userspace_io = NULL;
			if (a->region->bus == KVM_PIO_BUS)
				a->count = vcpu->run->io.count;
		}
		r = ioregion_finish(vcpu, a);
	}
	return r;
}

/* complete_userspace_io after an interrupted wait: resume it. */
static int ioregion_cui(struct kvm_vcpu *vcpu)
{
	return ioregion_serve_exits(vcpu, 0);
}

int kvm_ioregion_vcpu_run(struct kvm_vcpu *vcpu, int r,
			  int (*run)(struct kvm_vcpu *vcpu))
{
	for (;;) {
		r = ioregion_serve_exits(vcpu, r);
		if (r <= 0)
			return r;
		r = run(vcpu);
	}
}

void kvm_ioregion_vcpu_destroy(struct kvm_vcpu *vcpu)
{
	struct ioregion_access *a;

	if (!atomic_read(&ioregion_naccesses))
		return;
	a = ioregion_access_find(vcpu);
	if (a)
		ioregion_access_free(a);
}

/* ---- KVM_SET_IOREGION ---------------------------------------------- */

/* kvm->slots_lock held. */
bool kvm_ioregion_collides(struct kvm *kvm, enum kvm_bus bus_idx,
			   u64 addr, u64 len)
{
	struct ioregion *r;
	bool hit = false;

	mutex_lock(&ioregion_mutex);
	list_for_each_entry(r, &ioregion_list, node) {
		if (r->kvm == kvm && r->bus == ioregion_space(bus_idx) &&
		    ioregion_overlaps(r->paddr, r->size, addr, len)) {
			hit = true;
			break;
		}
	}
	mutex_unlock(&ioregion_mutex);
	return hit;
}

static struct file *ioregion_fget(int fd, fmode_t mode)
{
	struct file *f = fd >= 0 ? fget(fd) : NULL;

	if (f && !(f->f_mode & mode)) {
		fput(f);
		f = NULL;
	}
	return f;
}

static int ioregion_assign(struct kvm *kvm, enum kvm_bus bus,
			   struct kvm_ioregion *args)
{
	bool posted = args->flags & KVM_IOREGION_POSTED_WRITES;
	bool counted = args->flags & KVM_IOREGION_POSTED_COUNT;
	u64 __user *posted_count = u64_to_user_ptr(args->posted_count);
	struct file *wf, *rf = NULL;
	u64 posted_start = 0;
	struct ioregion_chan *ch;
	struct ioregion *r;
	int ret;

	if (!args->memory_size && !posted)
		return -EINVAL;	/* a zero-size region can only take writes */
	if (args->memory_size > INT_MAX)
		return -EINVAL;	/* kvm_io_bus lengths are ints */
	if (counted != !!args->posted_count)
		return -EINVAL;
	if (counted && !IS_ALIGNED(args->posted_count, 8))
		return -EINVAL;	/* its stores must not tear */
	/*
	 * A new channel continues from userspace's value (a BAR that moves
	 * keeps its count); read before any lock is held.
	 */
	if (counted && get_user(posted_start, posted_count))
		return -EFAULT;

	wf = ioregion_fget(args->write_fd, FMODE_WRITE);
	if (!wf)
		return -EBADF;
	if (args->memory_size) {	/* zero-size regions never read */
		rf = ioregion_fget(args->read_fd, FMODE_READ);
		if (!rf) {
			fput(wf);
			return -EBADF;
		}
	}

	r = kzalloc(sizeof(*r), GFP_KERNEL_ACCOUNT);
	if (!r) {
		fput(wf);
		if (rf)
			fput(rf);
		return -ENOMEM;
	}
	r->kvm = kvm;
	r->bus = bus;
	r->paddr = args->guest_paddr;
	r->size = args->memory_size;
	r->user_data = args->user_data;
	r->posted = posted;
	r->on_fast_bus = !r->size && bus == KVM_MMIO_BUS;
	refcount_set(&r->ref, r->on_fast_bus ? 2 : 1);
	kvm_iodevice_init(&r->dev, &ioregion_ops);
	kvm_iodevice_init(&r->fast_dev, &ioregion_fast_ops);

	mutex_lock(&kvm->slots_lock);
	if (kvm_ioregion_collides(kvm, bus, r->paddr, r->size) ||
	    kvm_ioeventfd_collides(kvm, bus, r->paddr, r->size)) {
		ret = -EEXIST;
		goto fail_files;
	}
	mutex_lock(&ioregion_mutex);
	/* Takes our references to wf and rf. */
	ch = ioregion_chan_get(kvm, wf, rf, counted ? posted_count : NULL,
			       posted_start);
	mutex_unlock(&ioregion_mutex);
	if (IS_ERR(ch)) {
		ret = PTR_ERR(ch);
		goto fail;
	}
	r->chan = ch;

	ret = kvm_io_bus_register_dev(kvm, bus, r->paddr, r->size, &r->dev);
	if (ret < 0)
		goto fail_chan;
	if (r->on_fast_bus) {
		ret = kvm_io_bus_register_dev(kvm, KVM_FAST_MMIO_BUS, r->paddr,
					      0, &r->fast_dev);
		if (ret < 0) {
			kvm_io_bus_unregister_dev(kvm, bus, &r->dev);
			goto fail_chan;
		}
	}
	mutex_lock(&ioregion_mutex);
	list_add_tail(&r->node, &ioregion_list);
	r->listed = true;
	mutex_unlock(&ioregion_mutex);
	mutex_unlock(&kvm->slots_lock);
	return 0;

fail_chan:
	mutex_unlock(&kvm->slots_lock);
	ioregion_chan_put(ch);
	kfree(r);
	return ret;
fail_files:
	fput(wf);
	if (rf)
		fput(rf);
fail:
	mutex_unlock(&kvm->slots_lock);
	kfree(r);
	return ret;
}

static int ioregion_deassign(struct kvm *kvm, enum kvm_bus bus,
			     struct kvm_ioregion *args)
{
	struct ioregion *r, *found = NULL;

	mutex_lock(&kvm->slots_lock);
	mutex_lock(&ioregion_mutex);
	list_for_each_entry(r, &ioregion_list, node) {
		if (r->kvm == kvm && r->bus == bus &&
		    r->paddr == args->guest_paddr &&
		    r->size == args->memory_size) {
			found = r;
			list_del(&r->node);
			r->listed = false;
			break;
		}
	}
	mutex_unlock(&ioregion_mutex);
	if (!found) {
		mutex_unlock(&kvm->slots_lock);
		return -ENOENT;
	}
	/* Flush waiters first: they do not hold kvm->srcu while waiting. */
	ioregion_kill(found);
	kvm_io_bus_unregister_dev(kvm, bus, &found->dev);
	if (found->on_fast_bus)
		kvm_io_bus_unregister_dev(kvm, KVM_FAST_MMIO_BUS,
					  &found->fast_dev);
	mutex_unlock(&kvm->slots_lock);
	if (found->on_fast_bus)
		ioregion_put(found);
	ioregion_put(found);
	return 0;
}

int kvm_set_ioregion(struct kvm *kvm, struct kvm_ioregion *args)
{
	enum kvm_bus bus;

	if (args->flags & ~KVM_IOREGION_VALID_FLAGS)
		return -EINVAL;
	if (args->pad0 || memchr_inv(args->pad, 0, sizeof(args->pad)))
		return -EINVAL;
	if (args->guest_paddr + args->memory_size < args->guest_paddr)
		return -EINVAL;
	bus = (args->flags & KVM_IOREGION_PIO) ? KVM_PIO_BUS : KVM_MMIO_BUS;
	if (args->flags & KVM_IOREGION_DEASSIGN)
		return ioregion_deassign(kvm, bus, args);
	if (bus == KVM_PIO_BUS &&
	    args->guest_paddr + args->memory_size > 0x10000)
		return -EINVAL;
	return ioregion_assign(kvm, bus, args);
}
