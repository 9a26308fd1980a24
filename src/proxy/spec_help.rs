//! What `--remote-dev help` prints: every key the parser (`spec`) takes,
//! with its values, default and the remotes it applies to.

/// Which remotes a `--remote-dev` key applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Says where the remote is; give exactly one.
    Where,
    /// Only `lsi`.
    Lsi,
    /// Remotes of ours: `lsi`, or any endpoint with `proto=vmm`.
    Ours,
    /// Remotes the VMM spawns itself: `lsi`, `exec=`.
    Spawned,
    Any,
}

/// One `--remote-dev` key as `--remote-dev help` shows it.
#[derive(Debug)]
pub struct KeyHelp {
    pub key: &'static str,
    /// The values it takes, `a|b` or a placeholder; empty for the bare
    /// word `lsi`.
    pub values: &'static str,
    pub default: &'static str,
    pub applies: Applies,
    pub meaning: &'static str,
}

/// Every key the parser accepts. The parser refuses keys missing here, so
/// `--remote-dev help` cannot fall behind it.
pub const KEYS: &[KeyHelp] = &[
    KeyHelp {
        key: "lsi",
        values: "",
        default: "-",
        applies: Applies::Where,
        meaning: "co-spawn our LSI 53C895A SCSI controller (`vmm remote lsi`); must come first",
    },
    KeyHelp {
        key: "vfio-user",
        values: "",
        default: "-",
        applies: Applies::Any,
        meaning: "as the first word: the remote is a vfio-user server (the same as proto=vfio-user)",
    },
    KeyHelp {
        key: "exec",
        values: "PATH",
        default: "-",
        applies: Applies::Where,
        meaning: "spawn PATH with the control socket as fd 3 (QEMU's remote: ci/qemu-remote-lsi.sh)",
    },
    KeyHelp {
        key: "socket",
        values: "PATH",
        default: "-",
        applies: Applies::Where,
        meaning: "connect to a remote listening there (`vmm remote lsi --socket PATH ...`)",
    },
    KeyHelp {
        key: "fd",
        values: "N",
        default: "-",
        applies: Applies::Where,
        meaning: "use an inherited, connected socket (N above 2)",
    },
    KeyHelp {
        key: "disk",
        values: "PATH",
        default: "a sparse 1 GiB scratch image in a temporary directory",
        applies: Applies::Lsi,
        meaning: "raw disk image on the next SCSI id (0, 1, ...); repeat for more disks",
    },
    KeyHelp {
        key: "readonly",
        values: "on|off",
        default: "off",
        applies: Applies::Lsi,
        meaning: "present the disks write-protected",
    },
    KeyHelp {
        key: "serial",
        values: "TEXT",
        default: "VMM + 12 hex digits from the image's path and SCSI id",
        applies: Applies::Lsi,
        meaning: "serial number of the disk= before it (VPD page 0x80, /dev/disk/by-id); up to 36 characters",
    },
    KeyHelp {
        key: "wwn",
        values: "0xNAA...",
        default: "NAA 3 (locally assigned) from the image's path and SCSI id",
        applies: Applies::Lsi,
        meaning: "world wide name of the disk= before it: 16 hex digits starting with 2, 3 or 5",
    },
    KeyHelp {
        key: "vendor",
        values: "TEXT",
        default: "VMM",
        applies: Applies::Lsi,
        meaning: "INQUIRY vendor of the disk= before it, up to 8 characters",
    },
    KeyHelp {
        key: "product",
        values: "TEXT",
        default: "LSI REMOTE DISK",
        applies: Applies::Lsi,
        meaning: "INQUIRY product of the disk= before it, up to 16 characters",
    },
    KeyHelp {
        key: "format",
        values: "raw|qcow2",
        default: "what the image's first bytes say (a qcow2 image then may not open a backing file)",
        applies: Applies::Lsi,
        meaning: "the format of the disk= before it; name qcow2 to let the image open its backing file",
    },
    KeyHelp {
        key: "discard",
        values: "on|off",
        default: "on",
        applies: Applies::Lsi,
        meaning: "the disks take UNMAP (fstrim, blkdiscard): discarded blocks become holes in the image",
    },
    KeyHelp {
        key: "sandbox",
        values: "on|off",
        default: "on",
        applies: Applies::Lsi,
        meaning: "seccomp and no_new_privs in the remote once its disks are open; off for debugging",
    },
    KeyHelp {
        key: "user",
        values: "NAME|UID[:GID]",
        default: "none (the user the VMM runs as)",
        applies: Applies::Lsi,
        meaning: "a remote started as root becomes this user once its disks are open",
    },
    KeyHelp {
        key: "register-writes",
        values: "waited|posted",
        default: "posted",
        applies: Applies::Lsi,
        meaning: "posted: vCPUs do not wait for register writes over region fds; waited: they do",
    },
    KeyHelp {
        key: "sched",
        values: "batch|normal",
        default: "batch",
        applies: Applies::Lsi,
        meaning: "batch: the remote's threads do not preempt a vCPU on their CPU when they wake \
                  (no context switch per posted write); normal: they do",
    },
    KeyHelp {
        key: "cpus",
        values: "LIST",
        default: "the VMM's CPUs",
        applies: Applies::Lsi,
        meaning: "the CPUs the remote's threads run on: 1, 2-3, 0:2 (taskset -c's list with : for ,); \
                  a remote on a CPU of its own answers register reads while the vCPU polls",
    },
    KeyHelp {
        key: "device-poll",
        values: "auto|off|MICROSECONDS",
        default: "auto",
        applies: Applies::Lsi,
        meaning: "how long the remote's threads look for the next access before they sleep: \
                  auto polls 50 us (fewer and fewer times while nothing comes in time) unless \
                  the remote can only run on the VMM's one CPU; see cpus=",
    },
    KeyHelp {
        key: "disk-io",
        values: "auto|workers",
        default: "auto",
        applies: Applies::Lsi,
        meaning: "auto: a read or write that cannot wait for a device (image on tmpfs, data in \
                  the page cache) runs at once on the device's thread; workers: always on disk \
                  worker threads while the target disconnects",
    },
    KeyHelp {
        key: "proto",
        values: "qemu|vmm|vfio-user",
        default: "vmm for lsi, else qemu",
        applies: Applies::Any,
        meaning: "the remote's protocol: mpqemu as ours speaks it (vmm: region fds, register \
                  mirror) or as QEMU's does (qemu), or vfio-user (region fds, no mirror)",
    },
    KeyHelp {
        key: "ioregionfd",
        values: "auto|kernel|userspace|off",
        default: "auto",
        applies: Applies::Ours,
        meaning: "BAR accesses go over region fds served by KVM (kernel, needs \
                  KVM_SET_IOREGION) or vCPU threads (userspace); auto: kernel if it can; off: messages",
    },
    KeyHelp {
        key: "register-mirror",
        values: "on|off",
        default: "on",
        applies: Applies::Ours,
        meaning: "answer reads of the registers the remote mirrors from its shared page",
    },
    KeyHelp {
        key: "doorbells",
        values: "adaptive|waited|posted",
        default: "adaptive",
        applies: Applies::Ours,
        meaning: "with posted register writes, whether a vCPU waits for a write that starts the \
                  device's work (SIGP): adaptive waits while the guest rings once per \
                  completion and posts while it queues ahead",
    },
    KeyHelp {
        key: "reply-poll",
        values: "auto|off|MICROSECONDS",
        default: "auto",
        applies: Applies::Ours,
        meaning: "how long a vCPU polls for the remote's answer to a read or waited write \
                  before it sleeps: auto polls 50 us (fewer and fewer times while nothing comes \
                  in time) unless the remote (spawned, or listening on socket=) can only run \
                  on the vCPU's one CPU",
    },
    KeyHelp {
        key: "restart",
        values: "on|off",
        default: "off",
        applies: Applies::Spawned,
        meaning: "spawn the remote again when it dies, at most 5 times",
    },
];

/// What `--remote-dev help` prints.
pub fn help_text() -> String {
    let mut text = String::from(
        "--remote-dev SPEC adds a PCI device served by another process; repeat it for more.\n\
         SPEC is comma-separated: where the remote is, then KEY=VALUE options.\n\
         Example: --remote-dev lsi,disk=disk.img,ioregionfd=userspace\n",
    );
    let groups = [
        (Applies::Where, "Where the remote is (exactly one):"),
        (Applies::Lsi, "Options for lsi:"),
        (
            Applies::Ours,
            "Options for remotes of ours or over vfio-user (lsi, proto=vmm, proto=vfio-user):",
        ),
        (
            Applies::Spawned,
            "Options for remotes the VMM spawns (lsi, exec=):",
        ),
        (Applies::Any, "Options for any remote:"),
    ];
    for (applies, title) in groups {
        text.push_str(&format!("\n{title}\n"));
        for k in KEYS.iter().filter(|k| k.applies == applies) {
            let syntax = if k.values.is_empty() {
                k.key.to_string()
            } else {
                format!("{}={}", k.key, k.values)
            };
            let meaning = k.meaning.split_whitespace().collect::<Vec<_>>().join(" ");
            if applies == Applies::Where {
                text.push_str(&format!("  {syntax:<13} {meaning}\n"));
            } else {
                text.push_str(&format!(
                    "  {syntax:<37} default: {}\n      {meaning}\n",
                    k.default
                ));
            }
        }
    }
    text
}
