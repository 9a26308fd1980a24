//! Reaching a remote device process: spawning it with a socketpair,
//! connecting to its socket or adopting an inherited fd; and stopping it.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::spec::{Dialect, Endpoint, RemoteDevSpec};
use crate::protocol::channel::Channel;
use crate::proxy::link::{Mpqemu, RemoteLink};

/// The fd number a spawned remote finds its socket at.
pub const REMOTE_SOCKET_FD: i32 = 3;
/// How long a request may wait for the remote before it is declared dead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to remote socket {path}: {source}")]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fd {0} is not an open socket")]
    NotASocket(i32),
    #[error("cannot start remote {path}: {source}")]
    Spawn {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the control socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("remote {name}: the vfio-user handshake failed: {source}")]
    Handshake {
        name: String,
        #[source]
        source: crate::proxy::link::LinkError,
    },
}

pub type SharedChild = Arc<Mutex<Option<Child>>>;

pub struct RemoteProcess {
    pub name: String,
    pub link: Box<dyn RemoteLink>,
    /// Set when we spawned the process ourselves.
    pub child: SharedChild,
}

/// Spawns `program` with its end of a new socketpair as fd 3.
pub fn spawn(
    program: &std::path::Path,
    args: &[String],
) -> Result<(UnixStream, Child), RemoteError> {
    let (ours, theirs) = UnixStream::pair().map_err(RemoteError::Socket)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("VMM_REMOTE_FD", REMOTE_SOCKET_FD.to_string())
        .stdin(Stdio::null());
    // The remote's stdout would mix with the guest console: send it to stderr.
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(err) => {
            cmd.stdout(Stdio::from(err));
        }
        Err(e) => log::warn!("remote stdout stays on ours: {e}"),
    }
    // Its own process group: terminal signals go to the VMM, which stops
    // its remotes itself.
    crate::sys::prepare_child(&mut cmd, theirs.as_raw_fd(), REMOTE_SOCKET_FD);
    let child = cmd.spawn().map_err(|source| RemoteError::Spawn {
        path: program.to_owned(),
        source,
    })?;
    drop(theirs);
    Ok((ours, child))
}

/// Connects to or starts the remote for device `index`; `replacing` says
/// it takes over from one that died, which our LSI then reports to the
/// guest's driver as a SCSI bus reset.
pub fn open(
    spec: &RemoteDevSpec,
    index: usize,
    replacing: bool,
) -> Result<RemoteProcess, RemoteError> {
    let (sock, child, name) = match &spec.endpoint {
        Endpoint::Socket(path) => {
            let sock = UnixStream::connect(path).map_err(|source| RemoteError::Connect {
                path: path.clone(),
                source,
            })?;
            (sock, None, format!("#{index} ({})", path.display()))
        }
        Endpoint::Fd(fd) => {
            // The user handed this fd to us on the command line, for this.
            let sock = crate::sys::adopt_socket(*fd).ok_or(RemoteError::NotASocket(*fd))?;
            (sock, None, format!("#{index} (fd {fd})"))
        }
        Endpoint::Exec(path) => {
            let (sock, child) = spawn(path, &[])?;
            let name = format!("#{index} ({}, pid {})", path.display(), child.id());
            (sock, Some(child), name)
        }
        Endpoint::Lsi {
            disks,
            readonly,
            discard,
            sandbox,
            user,
            posted_register_writes,
            batch_scheduling,
            disk_io,
            cpus,
            device_poll,
        } => {
            let exe = std::env::current_exe().map_err(|source| RemoteError::Spawn {
                path: "/proc/self/exe".into(),
                source,
            })?;
            let mut args: Vec<String> = ["remote", "lsi", "--fd", "3"].map(String::from).to_vec();
            if spec.dialect == Dialect::VfioUser {
                args.push("--protocol".into());
                args.push("vfio-user".into());
            }
            for d in disks {
                args.push("--disk".into());
                args.push(d.to_string());
            }
            if *readonly {
                args.push("--readonly".into());
            }
            if !*discard {
                args.push("--discard".into());
                args.push("off".into());
            }
            if !*sandbox {
                args.push("--no-sandbox".into());
            }
            args.push("--register-writes".into());
            args.push(
                if *posted_register_writes {
                    "posted"
                } else {
                    "waited"
                }
                .into(),
            );
            args.push("--sched".into());
            args.push(if *batch_scheduling { "batch" } else { "normal" }.into());
            if let Some(cpus) = cpus {
                args.push("--cpus".into());
                args.push(cpus.to_string());
            }
            let vmm_cpus = crate::sys::cpus::this_thread_cpus().ok();
            let poll = device_poll.window(
                vmm_cpus.as_ref(),
                spec.endpoint.cpus(vmm_cpus.as_ref(), || None).as_deref(),
            );
            if !poll.is_zero() {
                args.push("--poll-us".into());
                args.push(poll.as_micros().to_string());
            }
            if *disk_io == crate::scsi::bus::DiskIo::Workers {
                args.push("--disk-io".into());
                args.push("workers".into());
            }
            if replacing {
                args.push("--takes-over".into());
            }
            if let Some(user) = user {
                args.push("--user".into());
                args.push(user.clone());
            }
            // The device process logs at the VMM's level, so `--log-level`
            // covers both halves of a device.
            args.push("--log-level".into());
            args.push(log::max_level().to_string().to_lowercase());
            let (sock, child) = spawn(&exe, &args)?;
            let name = format!("#{index} (lsi, pid {})", child.id());
            (sock, Some(child), name)
        }
    };
    sock.set_nonblocking(false).map_err(RemoteError::Socket)?;
    let link: Box<dyn RemoteLink> = if spec.dialect == Dialect::VfioUser {
        let client = crate::vfio_user::client::Client::connect(sock, REQUEST_TIMEOUT);
        match client {
            Ok(client) => Box::new(client),
            Err(source) => {
                if let Some(mut child) = child {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(RemoteError::Handshake { name, source });
            }
        }
    } else {
        let mut channel = Channel::new(sock);
        channel
            .set_timeout(Some(REQUEST_TIMEOUT))
            .map_err(RemoteError::Socket)?;
        Box::new(Mpqemu::new(channel, spec.dialect))
    };
    Ok(RemoteProcess {
        name,
        link,
        child: Arc::new(Mutex::new(child)),
    })
}

/// Waits up to `limit` for a child to exit and describes how it ended.
pub fn reap(child: &mut Child, limit: Duration) -> Option<String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.to_string()),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(e) => return Some(format!("unknown ({e})")),
        }
    }
}

/// How long a remote whose control connection was closed gets to finish
/// its disk work and exit on its own.
const GRACEFUL_EXIT: Duration = Duration::from_secs(3);

/// Stops a spawned remote: after `hung_up` (its control socket was shut
/// down) it is given time to exit by itself, then SIGTERM, then SIGKILL.
pub fn stop_child(name: &str, child: &SharedChild, hung_up: bool) {
    let Some(mut child) = child.lock().expect("child lock").take() else {
        return;
    };
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if hung_up && reap(&mut child, GRACEFUL_EXIT).is_some() {
        return;
    }
    // Our own child, not yet reaped: its pid is still its own.
    let _ = crate::sys::kill(child.id(), libc::SIGTERM);
    if reap(&mut child, Duration::from_secs(2)).is_none() {
        log::warn!("remote {name} ignored SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}
