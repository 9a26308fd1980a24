//! `vmm remote lsi ...`: run a remote device process by hand (under
//! another user, in a sandbox) or as the VMM's co-spawned child.

use super::dump::DumpSignal;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};

use super::sandbox::{Sandbox, SandboxError, SandboxOptions};
use super::server;
use super::user::UserSpec;
use crate::device_model::DeviceModel;
use crate::lsi::Lsi53c895a;
use crate::protocol::channel::Channel;
use crate::scsi::bus::DiskIo;
use crate::scsi::identity::DiskSpec;
use crate::scsi::{DiskOptions, ScsiDisk};
use crate::sys::cpus::CpuList;

/// Size of the scratch disk made when no image is given.
pub const SCRATCH_DISK_SIZE: u64 = 1 << 30;

#[derive(Debug, Parser)]
#[command(
    name = "vmm remote",
    about = "Serve one PCI device to a VMM over the mpqemu or the vfio-user protocol",
    after_help = "Examples:\n  \
        vmm remote lsi --socket /tmp/lsi.sock --disk disk.img\n      \
        serve a VMM started with --remote-dev socket=/tmp/lsi.sock\n  \
        vmm remote lsi --vfio-user /tmp/lsi.sock --disk disk.img\n      \
        serve QEMU: -device '{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"/tmp/lsi.sock\"}}'\n      \
        (guest RAM must be shareable: -object memory-backend-memfd,id=mem,size=1G -machine memory-backend=mem)"
)]
pub struct RemoteCli {
    #[command(subcommand)]
    pub device: RemoteKind,
}

#[derive(Debug, Subcommand)]
pub enum RemoteKind {
    /// LSI 53C895A SCSI controller with disks on SCSI ids 0, 1, ...
    Lsi {
        /// An inherited, connected control socket.
        #[arg(long, conflicts_with = "socket")]
        fd: Option<i32>,
        /// Listen on this UNIX socket and serve the first VMM that connects.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// A disk image (raw or qcow2) on the next SCSI id; repeat for more
        /// disks. None: a scratch image. Its format (detected by default;
        /// name qcow2 to let the image open its backing file) and identity
        /// may follow: PATH,format=qcow2,serial=S,wwn=0x5...,vendor=V,
        /// product=P (default serial and WWN are stable, derived from the
        /// path and SCSI id).
        #[arg(long = "disk", value_name = "PATH[,KEY=VALUE]...")]
        disks: Vec<DiskSpec>,
        /// Present the disks write-protected.
        #[arg(long)]
        readonly: bool,
        /// Whether the disks take UNMAP and WRITE SAME with UNMAP (fstrim,
        /// blkdiscard in the guest): discarded blocks become holes in the
        /// image. Off: the disks say they cannot.
        #[arg(long, value_enum, default_value_t = OnOff::On)]
        discard: OnOff,
        /// When started as root, become this user once the disks and the
        /// socket are open (supplementary groups dropped; GID defaults to
        /// the user's primary group).
        #[arg(long, value_name = "NAME|UID[:GID]")]
        user: Option<UserSpec>,
        /// Run without seccomp and no_new_privs, for debugging.
        #[arg(long)]
        no_sandbox: bool,
        /// Whether the VMM may post each register write over ioregionfd,
        /// as PCI posts memory writes (the default), or must wait for it.
        /// Posted writes are applied before any later access, message or
        /// interrupt acknowledgement; port I/O writes are always waited
        /// for.
        #[arg(long, value_enum, default_value_t = RegisterWrites::Posted)]
        register_writes: RegisterWrites,
        /// How this process's threads share a CPU with the VMM's vCPUs.
        /// batch (the default): a device thread that wakes does not
        /// preempt the vCPU running there; it runs when the vCPU waits (for
        /// a register read, or the guest idles) or at the scheduler's
        /// next tick, so a posted write or an interrupt acknowledgement
        /// costs the vCPU no context switch. normal: it preempts at once.
        /// With a CPU of its own the device runs at once either way.
        #[arg(long, value_enum, default_value_t = Sched::Batch)]
        sched: Sched,
        /// The CPUs this process's threads run on, as `taskset -c` writes
        /// them (1, 2-3, 0,2). Default: those it was started with.
        #[arg(long, value_name = "LIST")]
        cpus: Option<CpuList>,
        /// Microseconds a thread serving region fds looks for the next
        /// access before it sleeps, fewer and fewer times while nothing
        /// comes in time; 0 (the default) sleeps at once. Worth it only on
        /// a CPU of its own (--cpus): the access then costs it no wake-up.
        #[arg(long, value_name = "US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
        poll_us: u64,
        /// Where a command's disk work runs. auto (the default): at once
        /// on the device's thread when it cannot wait for a device (a read
        /// or write of an image on tmpfs, a read the page cache holds),
        /// else on a disk worker while the target disconnects; workers:
        /// always on a worker.
        #[arg(long, value_enum, default_value_t = DiskIo::Auto)]
        disk_io: DiskIo,
        /// This process replaces one that died with the guest's commands
        /// in flight (the VMM's `restart=on` passes it): once its interrupt
        /// is wired, the chip reports a SCSI bus reset to the driver, which
        /// then retries those commands at once rather than after its own
        /// timeouts.
        #[arg(long)]
        takes_over: bool,
        /// The protocol spoken on the control socket.
        #[arg(long, value_enum, default_value_t = Protocol::Mpqemu)]
        protocol: Protocol,
        /// Short for --protocol vfio-user --socket PATH.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["socket", "fd"])]
        vfio_user: Option<PathBuf>,
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
    },
}

/// `--protocol`: what the control socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// QEMU's multiprocess protocol with our extensions (what our VMM speaks).
    Mpqemu,
    /// vfio-user, as QEMU's vfio-user-pci speaks it.
    VfioUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `--sched`: the scheduling policy of the device's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sched {
    /// SCHED_BATCH: no wake-up preemption.
    Batch,
    /// SCHED_OTHER, as started.
    Normal,
}

/// `--register-writes`: how the VMM delivers register writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegisterWrites {
    /// Queued on the region fd; the vCPU goes on at once.
    Posted,
    /// The vCPU waits for the remote's answer.
    Waited,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteCliError {
    #[error("give --fd or --socket")]
    NoEndpoint,
    #[error("fd {0} is not a socket")]
    NotASocket(i32),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Disk(#[from] crate::scsi::image::ImageError),
    #[error(transparent)]
    Identity(#[from] crate::scsi::identity::IdentityError),
    #[error("cannot create a scratch disk: {0}")]
    Scratch(#[source] std::io::Error),
    #[error("at most {max} disks fit on one controller", max = crate::lsi::MAX_TARGETS)]
    TooManyDisks,
    #[error(transparent)]
    Serve(#[from] server::ServerError),
    #[error("{0}")]
    Pool(#[from] crate::scsi::pool::PoolError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("cannot run on CPUs {cpus} (are they online?): {source}")]
    Cpus {
        cpus: CpuList,
        #[source]
        source: std::io::Error,
    },
}

/// A sparse scratch image in a new temporary directory.
fn scratch_disk() -> Result<PathBuf, RemoteCliError> {
    let dir = std::env::temp_dir().join(format!("vmm-scratch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(RemoteCliError::Scratch)?;
    let path = dir.join("disk0.img");
    let f = std::fs::File::create(&path).map_err(RemoteCliError::Scratch)?;
    f.set_len(SCRATCH_DISK_SIZE)
        .map_err(RemoteCliError::Scratch)?;
    log::warn!(
        "no disk given: using a {} MiB sparse scratch image at {}",
        SCRATCH_DISK_SIZE >> 20,
        path.display()
    );
    Ok(path)
}

pub fn run(kind: RemoteKind) -> Result<(), RemoteCliError> {
    let RemoteKind::Lsi {
        fd,
        socket,
        mut disks,
        readonly,
        discard,
        user,
        no_sandbox,
        register_writes,
        sched,
        cpus,
        poll_us,
        disk_io,
        takes_over,
        mut protocol,
        vfio_user,
        ..
    } = kind;
    let socket = match vfio_user {
        Some(path) => {
            protocol = Protocol::VfioUser;
            Some(path)
        }
        None => socket,
    };
    // Before any thread exists, so that every thread inherits them.
    if let Some(cpus) = &cpus {
        crate::sys::cpus::pin_this_thread(cpus).map_err(|source| RemoteCliError::Cpus {
            cpus: cpus.clone(),
            source,
        })?;
        log::debug!("device threads run on CPUs {cpus}");
    }
    let poll = std::time::Duration::from_micros(poll_us);
    if !poll.is_zero() {
        log::info!("region fds' threads look for the next access for {poll:?} before they sleep");
    }
    // Before any thread exists, so that every thread inherits it (the
    // sandbox refuses sched_setscheduler later).
    if sched == Sched::Batch {
        match crate::sys::set_batch_scheduling() {
            Ok(()) => log::debug!("device threads run as SCHED_BATCH (--sched batch)"),
            Err(e) => log::warn!(
                "cannot run the device threads as SCHED_BATCH: {e}; they preempt the vCPUs they wake"
            ),
        }
    }
    // Before any thread exists, so that none of them takes the signal's
    // default action (the end of the process).
    let dump = match DumpSignal::new() {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!("no state dumps on SIGUSR2: {e}");
            None
        }
    };
    // Users are looked up and the filter compiled before anything is
    // opened, so a mistake there costs nothing.
    let sandbox = Sandbox::new(&SandboxOptions {
        user,
        disabled: no_sandbox,
    })?;
    if disks.is_empty() {
        disks.push(DiskSpec::new(scratch_disk()?));
    }
    if disks.len() > crate::lsi::MAX_TARGETS {
        return Err(RemoteCliError::TooManyDisks);
    }
    let identities: Vec<_> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| d.identity.resolve(&d.path, i))
        .collect();
    crate::scsi::identity::check_unique(&identities)?;
    let disks = disks
        .iter()
        .zip(identities)
        .enumerate()
        .map(|(i, (d, identity))| {
            let p = &d.path;
            let options = DiskOptions {
                readonly,
                discard: discard == OnOff::On,
                format: d.format,
                identity,
            };
            let (serial, wwn) = (options.identity.serial.clone(), options.identity.wwn);
            let disk = ScsiDisk::open(p, options)?;
            log::info!(
                "SCSI id {i}: {} ({}, {} blocks, serial {serial}, wwn {wwn:#018x}{}{}{})",
                p.display(),
                disk.format(),
                disk.blocks(),
                if disk.in_memory() { ", in memory" } else { "" },
                if readonly { ", read-only" } else { "" },
                if discard == OnOff::Off {
                    ", no discard"
                } else {
                    ""
                }
            );
            Ok(Arc::new(disk))
        })
        .collect::<Result<Vec<_>, RemoteCliError>>()?;
    let sock = match (fd, socket) {
        // The fd was handed to us for this purpose.
        (Some(fd), _) => crate::sys::adopt_socket(fd).ok_or(RemoteCliError::NotASocket(fd))?,
        (None, Some(path)) => {
            let err = |source| RemoteCliError::Socket {
                path: path.clone(),
                source,
            };
            let listener = UnixListener::bind(&path).map_err(err)?;
            log::info!("waiting for a VMM on {}", path.display());
            let (sock, _) = listener.accept().map_err(err)?;
            let _ = std::fs::remove_file(&path);
            sock
        }
        (None, None) => return Err(RemoteCliError::NoEndpoint),
    };
    let mut lsi = Lsi53c895a::new(disks.clone())?;
    lsi.set_posted_register_writes(register_writes == RegisterWrites::Posted);
    lsi.set_disk_io(disk_io);
    log::info!(
        "disk I/O: {}",
        match disk_io {
            DiskIo::Workers =>
                "every read and write on the disk worker threads (--disk-io workers)",
            DiskIo::Auto => {
                "reads and writes at once on the device's thread where they cannot wait for a \
                 device (all on an image in memory, reads the page cache holds on others), \
                 else on the disk worker threads"
            }
        }
    );
    if takes_over {
        lsi.take_over();
    }
    let device = Arc::new(Mutex::new(lsi));
    // Everything is open and the disk workers run: from here on the
    // remote only serves.
    sandbox.apply()?;
    let served = match protocol {
        Protocol::Mpqemu => server::serve(&mut Channel::new(sock), device.clone(), dump, poll),
        Protocol::VfioUser => server::serve(
            &mut crate::vfio_user::server::Session::new(sock),
            device.clone(),
            dump,
            poll,
        ),
    };
    if let Some(summary) = device.lock().expect("device lock poisoned").summary() {
        log::info!("{summary}");
    }
    // What the guest wrote without a SYNCHRONIZE CACHE after it, and a
    // qcow2 image's metadata, reach the image before the process ends.
    for (i, disk) in disks.iter().enumerate() {
        if let Err(e) = disk.flush_image() {
            log::error!("SCSI id {i}: flushing the image at exit failed: {e}");
        }
    }
    served?;
    log::info!("VMM disconnected; exiting");
    Ok(())
}
