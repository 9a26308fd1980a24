//! `--remote-dev` option values: where the remote device process is and
//! which protocol dialect it speaks.

use crate::mirror::doorbell::DoorbellMode;
use std::borrow::Cow;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::spec_help::KEYS;
use crate::scsi::identity::DiskSpec;
use crate::sys::cpus::CpuList;

/// `restart=on` starts a remote that keeps dying at most this many times.
pub const MAX_RESTARTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Connect to a listening UNIX socket.
    Socket(PathBuf),
    /// Use an inherited, already connected socket.
    Fd(i32),
    /// Spawn this program with its end of a socketpair as fd 3.
    Exec(PathBuf),
    /// Co-spawn our own LSI 53C895A remote (`vmm remote lsi`).
    Lsi {
        /// Images with the identity the user gave each.
        disks: Vec<DiskSpec>,
        readonly: bool,
        /// UNMAP and WRITE SAME deallocate (holes in the image).
        discard: bool,
        /// seccomp and no_new_privs in the remote (`sandbox=off` for
        /// debugging).
        sandbox: bool,
        /// The user (NAME or UID[:GID]) the remote drops to when started
        /// as root.
        user: Option<String>,
        /// Register writes over ioregionfd are posted (the default), or
        /// waited for (`register-writes=waited`).
        posted_register_writes: bool,
        /// The remote's threads run as SCHED_BATCH (the default), or
        /// preempt the vCPUs they wake (`sched=normal`).
        batch_scheduling: bool,
        /// Disk work that cannot wait runs at once (the default), or
        /// always on disk workers (`disk-io=workers`).
        disk_io: crate::scsi::bus::DiskIo,
        /// The CPUs the remote's threads may run on (`cpus=`); None:
        /// the VMM's.
        cpus: Option<CpuList>,
        /// How the remote's threads wait for the next access.
        device_poll: ReplyPolling,
    },
}

/// Which commands beyond QEMU's the remote understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Plain QEMU multiprocess: never sent an extension command.
    Qemu,
    /// Our own remote: BAR_INFO and the ioregionfd extensions.
    Vmm,
    /// vfio-user (any server; region fds where it offers them).
    VfioUser,
}

/// How BARs the remote offers over ioregionfd are dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoRegionMode {
    /// The kernel path where KVM has it, else the userspace path.
    Auto,
    /// KVM_SET_IOREGION or fail.
    Kernel,
    /// vCPU threads write the records themselves.
    Userspace,
    /// Every BAR access is a BAR_READ/BAR_WRITE message (QEMU's way).
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDevSpec {
    pub endpoint: Endpoint,
    pub dialect: Dialect,
    pub ioregionfd: IoRegionMode,
    /// Spawn the remote again when it dies (only for remotes we spawn).
    pub restart: bool,
    /// Answer reads of the registers the remote mirrors from its page
    /// (`register-mirror=off` asks the remote every time, for comparison).
    pub register_mirror: bool,
    /// How doorbells on ranges with posted writes are sent.
    pub doorbells: DoorbellMode,
    /// How vCPU threads wait for the remote's answers.
    pub reply_poll: ReplyPolling,
}

/// `reply-poll=`: whether a vCPU thread polls for a remote's answer
/// before it sleeps on it; `device-poll=`: whether the remote's threads
/// poll for the next access (`ioregion::reply_poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyPolling {
    /// Poll unless the remote can only run on the VMM's one CPU.
    Auto,
    Off,
    /// Poll this long, whatever the CPUs.
    Window(Duration),
}

impl RemoteDevSpec {
    /// Whether the remote is ours: it takes SIGUSR2 for a state dump.
    pub fn ours(&self) -> bool {
        self.dialect == Dialect::Vmm || matches!(self.endpoint, Endpoint::Lsi { .. })
    }

    /// How long vCPU threads poll for an answer, given the CPUs this
    /// process may run on (the vCPU threads inherit them) and, for a
    /// remote we did not spawn but connect to, those of the process at the
    /// far end of its socket, asked for only then (`peer_cpus`).
    pub fn reply_poll_window(
        &self,
        vmm_cpus: Option<&CpuList>,
        peer_cpus: impl FnOnce() -> Option<CpuList>,
    ) -> Duration {
        let remote_cpus = self.endpoint.cpus(vmm_cpus, peer_cpus);
        self.reply_poll.window(vmm_cpus, remote_cpus.as_deref())
    }
}

impl Endpoint {
    /// The CPUs the remote may run on, when we know them: `peer_cpus`
    /// asks for those of the process that listens on a socket we connect
    /// to, and is called only for such a remote.
    pub fn cpus<'a>(
        &'a self,
        vmm_cpus: Option<&'a CpuList>,
        peer_cpus: impl FnOnce() -> Option<CpuList>,
    ) -> Option<Cow<'a, CpuList>> {
        match self {
            Endpoint::Lsi { cpus: Some(c), .. } => Some(Cow::Borrowed(c)),
            // A remote we spawn inherits our CPUs.
            Endpoint::Lsi { cpus: None, .. } | Endpoint::Exec(_) => vmm_cpus.map(Cow::Borrowed),
            Endpoint::Socket(_) => peer_cpus().map(Cow::Owned),
            // The peer of an inherited fd is whoever made the pair, not
            // necessarily the remote.
            Endpoint::Fd(_) => None,
        }
    }
}

impl ReplyPolling {
    /// How long to poll, given the CPUs of the VMM and of the remote.
    pub fn window(self, vmm_cpus: Option<&CpuList>, remote_cpus: Option<&CpuList>) -> Duration {
        match self {
            ReplyPolling::Off => Duration::ZERO,
            ReplyPolling::Window(w) => w,
            ReplyPolling::Auto => crate::ioregion::reply_poll::auto_window(vmm_cpus, remote_cpus),
        }
    }

    /// `auto`, `off` or microseconds, for `key`.
    fn parse(key: &str, value: &str) -> Result<Self, String> {
        match value {
            "auto" => Ok(ReplyPolling::Auto),
            "off" => Ok(ReplyPolling::Off),
            us => match us.parse::<u64>() {
                Ok(us @ 1..=10_000) => Ok(ReplyPolling::Window(Duration::from_micros(us))),
                _ => Err(format!(
                    "{key}={us}: expected auto, off or microseconds from 1 to 10000"
                )),
            },
        }
    }
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(format!("{key}={other}: expected on or off")),
    }
}

/// A key with two named values: true for `yes`, false for `no`.
fn either(key: &str, value: &str, yes: &str, no: &str) -> Result<bool, String> {
    match value {
        v if v == yes => Ok(true),
        v if v == no => Ok(false),
        other => Err(format!("{key}={other}: expected {yes} or {no}")),
    }
}

impl FromStr for RemoteDevSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut dialect = Dialect::Qemu;
        let mut disks = Vec::new();
        let mut readonly = false;
        let mut discard = true;
        let mut sandbox = true;
        let mut lsi = false;
        let mut ioregionfd = None;
        let mut restart = false;
        let mut user = None;
        let mut posted_register_writes = true;
        let mut batch_scheduling = true;
        let mut disk_io = crate::scsi::bus::DiskIo::Auto;
        let mut register_mirror = true;
        let mut doorbells = DoorbellMode::Adaptive;
        let mut reply_poll = ReplyPolling::Auto;
        let mut cpus = None;
        let mut device_poll = ReplyPolling::Auto;
        for (i, item) in text.split(',').filter(|s| !s.is_empty()).enumerate() {
            if i == 0 && item == "lsi" {
                lsi = true;
                dialect = Dialect::Vmm;
                continue;
            }
            // Any vfio-user server: the same as proto=vfio-user.
            if i == 0 && item == "vfio-user" {
                dialect = Dialect::VfioUser;
                continue;
            }
            let (key, value) = item.split_once('=').ok_or_else(|| {
                format!("'{item}' is not a known device type (lsi, vfio-user) or key=value")
            })?;
            if !KEYS.iter().any(|k| k.key == key && !k.values.is_empty()) {
                return Err(format!(
                    "unknown key '{key}' (`--remote-dev help` lists the keys)"
                ));
            }
            let set = |e: &mut Option<Endpoint>, v: Endpoint| {
                if e.replace(v).is_some() {
                    Err("give only one of socket=, fd= and exec=".to_string())
                } else {
                    Ok(())
                }
            };
            match key {
                "socket" => set(&mut endpoint, Endpoint::Socket(value.into()))?,
                "exec" => set(&mut endpoint, Endpoint::Exec(value.into()))?,
                "fd" => {
                    let fd = value
                        .parse::<i32>()
                        .ok()
                        .filter(|fd| *fd > 2)
                        .ok_or_else(|| {
                            format!("fd={value} is not an inherited fd number above 2")
                        })?;
                    set(&mut endpoint, Endpoint::Fd(fd))?
                }
                "proto" => {
                    dialect = match value {
                        "qemu" => Dialect::Qemu,
                        "vmm" => Dialect::Vmm,
                        "vfio-user" => Dialect::VfioUser,
                        other => {
                            return Err(format!("proto={other}: expected qemu, vmm or vfio-user"));
                        }
                    }
                }
                "ioregionfd" => {
                    ioregionfd = Some(match value {
                        "auto" => IoRegionMode::Auto,
                        "kernel" => IoRegionMode::Kernel,
                        "userspace" => IoRegionMode::Userspace,
                        "off" => IoRegionMode::Off,
                        other => {
                            return Err(format!(
                                "ioregionfd={other}: expected auto, kernel, userspace or off"
                            ));
                        }
                    })
                }
                "disk" if lsi => disks.push(DiskSpec::new(value)),
                "format" | "serial" | "wwn" | "vendor" | "product" if lsi => {
                    let Some(disk) = disks.last_mut() else {
                        return Err(format!(
                            "{key}= describes the disk= before it: put it after that disk="
                        ));
                    };
                    disk.set(key, value).map_err(|e| e.to_string())?;
                }
                "readonly" if lsi => readonly = on_off(key, value)?,
                "discard" if lsi => discard = on_off(key, value)?,
                "sandbox" if lsi => sandbox = on_off(key, value)?,
                "user" if lsi => {
                    if value.is_empty() {
                        return Err("user= needs a NAME or UID[:GID]".into());
                    }
                    user = Some(value.to_string())
                }
                "restart" => restart = on_off(key, value)?,
                "register-mirror" => register_mirror = on_off(key, value)?,
                "doorbells" => {
                    doorbells = match value {
                        "adaptive" => DoorbellMode::Adaptive,
                        "waited" => DoorbellMode::Waited,
                        "posted" => DoorbellMode::Posted,
                        other => {
                            return Err(format!(
                                "doorbells={other}: expected adaptive, waited or posted"
                            ));
                        }
                    }
                }
                "reply-poll" => reply_poll = ReplyPolling::parse(key, value)?,
                "device-poll" if lsi => device_poll = ReplyPolling::parse(key, value)?,
                "cpus" if lsi => {
                    cpus = Some(
                        value
                            .parse::<CpuList>()
                            .map_err(|e| format!("cpus={value}: {e}"))?,
                    )
                }
                "register-writes" if lsi => {
                    posted_register_writes = either(key, value, "posted", "waited")?
                }
                "sched" if lsi => batch_scheduling = either(key, value, "batch", "normal")?,
                "disk-io" if lsi => {
                    disk_io = if either(key, value, "auto", "workers")? {
                        crate::scsi::bus::DiskIo::Auto
                    } else {
                        crate::scsi::bus::DiskIo::Workers
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key '{other}' for this remote: it is for lsi only"
                    ));
                }
            }
        }
        if lsi {
            // The user's own serials and WWNs; the defaults differ anyway.
            let given: Vec<_> = disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut id = d.identity.resolve(&d.path, i);
                    if d.identity.serial.is_none() {
                        id.serial = format!("default {i}");
                    }
                    if d.identity.wwn.is_none() {
                        id.wwn = i as u64;
                    }
                    id
                })
                .collect();
            crate::scsi::identity::check_unique(&given).map_err(|e| e.to_string())?;
            if endpoint.is_some() {
                return Err("lsi is co-spawned: drop socket=, fd= and exec=".into());
            }
            endpoint = Some(Endpoint::Lsi {
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
            });
        }
        let endpoint = endpoint
            .ok_or_else(|| "say where the remote is: socket=PATH, fd=N or exec=PATH".to_string())?;
        if restart && matches!(endpoint, Endpoint::Socket(_) | Endpoint::Fd(_)) {
            return Err(
                "restart=on needs a remote the VMM spawns itself (lsi or exec=); \
                 one reached over socket= or fd= cannot be started again"
                    .into(),
            );
        }
        let ioregionfd = match (ioregionfd, dialect) {
            (Some(mode), Dialect::Vmm | Dialect::VfioUser) => mode,
            (None, Dialect::Vmm | Dialect::VfioUser) => IoRegionMode::Auto,
            // A QEMU remote knows nothing of ioregion fds.
            (None | Some(IoRegionMode::Off), Dialect::Qemu) => IoRegionMode::Off,
            (Some(_), Dialect::Qemu) => {
                return Err("ioregionfd= needs a remote of our own (lsi or proto=vmm)".into());
            }
        };
        if !register_mirror && dialect == Dialect::Qemu {
            return Err("register-mirror= needs a remote of our own (lsi or proto=vmm)".into());
        }
        if doorbells != DoorbellMode::Adaptive && dialect == Dialect::Qemu {
            return Err("doorbells= needs a remote of our own (lsi or proto=vmm)".into());
        }
        if reply_poll != ReplyPolling::Auto && dialect == Dialect::Qemu {
            return Err("reply-poll= needs a remote of our own (lsi or proto=vmm)".into());
        }
        Ok(RemoteDevSpec {
            endpoint,
            dialect,
            ioregionfd,
            restart,
            register_mirror,
            doorbells,
            reply_poll,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::spec_help::help_text;

    #[test]
    fn vfio_user_is_a_protocol_with_region_fds() {
        let s: RemoteDevSpec = "lsi,proto=vfio-user".parse().unwrap();
        assert_eq!(s.dialect, Dialect::VfioUser);
        assert_eq!(s.ioregionfd, IoRegionMode::Auto);
        assert!(s.ours());
        let s: RemoteDevSpec = "vfio-user,socket=/run/spdk.sock,ioregionfd=off"
            .parse()
            .unwrap();
        assert_eq!(
            (s.dialect, s.ioregionfd),
            (Dialect::VfioUser, IoRegionMode::Off)
        );
        assert!(!s.ours(), "someone else's server gets no SIGUSR2");
        assert!("lsi,proto=vfio".parse::<RemoteDevSpec>().is_err());
    }

    #[test]
    fn endpoints_and_dialects_parse() {
        let s: RemoteDevSpec = "socket=/run/lsi.sock,proto=vmm".parse().unwrap();
        assert_eq!(s.endpoint, Endpoint::Socket("/run/lsi.sock".into()));
        assert_eq!(s.dialect, Dialect::Vmm);
        let s: RemoteDevSpec = "fd=5".parse().unwrap();
        assert_eq!((s.endpoint, s.dialect), (Endpoint::Fd(5), Dialect::Qemu));
        let s: RemoteDevSpec = "exec=/usr/local/bin/remote.sh".parse().unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Exec("/usr/local/bin/remote.sh".into())
        );
    }

    fn disk(path: &str) -> DiskSpec {
        DiskSpec::new(path)
    }

    #[test]
    fn identity_keys_describe_the_disk_before_them() {
        let s: RemoteDevSpec =
            "lsi,disk=a.img,serial=A1,wwn=0x5000000000000001,disk=b.img,product=Fast"
                .parse()
                .unwrap();
        let Endpoint::Lsi { disks, .. } = s.endpoint else {
            panic!("not lsi")
        };
        assert_eq!(disks[0].identity.serial.as_deref(), Some("A1"));
        assert_eq!(disks[0].identity.wwn, Some(0x5000_0000_0000_0001));
        assert_eq!(disks[1].identity.serial, None);
        assert_eq!(disks[1].identity.product.as_deref(), Some("Fast"));
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("lsi,serial=A1,disk=a.img").contains("after that disk="));
        assert!(err("lsi,disk=a.img,serial=X,disk=b.img,serial=X").contains("share serial X"));
        assert!(err("lsi,disk=a.img,wwn=0x6000000000000001").contains("NAA type 6"));
        assert!(err("socket=x,serial=A").contains("unknown key"));
    }

    #[test]
    fn cpus_and_reply_poll_decide_how_long_a_vcpu_polls() {
        let cpu = |s: &str| s.parse::<CpuList>().unwrap();
        let window = |spec: &str, vmm: &str| {
            let s: RemoteDevSpec = spec.parse().unwrap();
            s.reply_poll_window(Some(&cpu(vmm)), || None)
        };
        let beside = |spec: &str, vmm: &str, peer: &str| {
            let s: RemoteDevSpec = spec.parse().unwrap();
            s.reply_poll_window(Some(&cpu(vmm)), || Some(cpu(peer)))
        };
        let auto = crate::ioregion::reply_poll::DEFAULT_WINDOW;
        // A spawned remote inherits the VMM's one CPU: nothing answers a poll.
        assert_eq!(window("lsi", "0"), Duration::ZERO);
        assert_eq!(window("lsi,cpus=1", "0"), auto);
        assert_eq!(window("lsi,cpus=0", "0"), Duration::ZERO);
        assert_eq!(window("lsi", "0-1"), auto);
        assert_eq!(window("socket=/x,proto=vmm", "0"), auto);
        // A socket's listener on the VMM's one CPU: no poll.
        assert_eq!(beside("socket=/x,proto=vmm", "0", "0"), Duration::ZERO);
        assert_eq!(beside("socket=/x,proto=vmm", "0", "1"), auto);
        assert_eq!(beside("fd=3,proto=vmm", "0", "0"), auto, "not the remote's");
        assert_eq!(beside("lsi", "0-1", "0"), auto, "spawned: our CPUs");
        // Only a socket's peer is asked (a /proc lookup per remote).
        for spec in ["lsi", "lsi,cpus=1", "fd=3,proto=vmm", "exec=/bin/true"] {
            let s: RemoteDevSpec = spec.parse().unwrap();
            s.reply_poll_window(Some(&cpu("0")), || panic!("{spec}: its peer was asked"));
        }
        assert_eq!(window("lsi,reply-poll=off,cpus=1", "0"), Duration::ZERO);
        assert_eq!(window("lsi,reply-poll=20", "0"), Duration::from_micros(20));
        let s: RemoteDevSpec = "lsi,cpus=2-3:0".parse().unwrap();
        assert!(matches!(s.endpoint, Endpoint::Lsi { cpus: Some(c), .. } if c.cpus() == [0, 2, 3]));

        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("lsi,cpus=x").contains("cpus=x: 'x' is not a CPU number"));
        assert!(err("lsi,cpus=").contains("cpus=: an empty CPU list"));
        assert!(err("socket=/x,cpus=1").contains("for lsi only"));
        assert!(err("lsi,reply-poll=0").contains("expected auto, off or microseconds"));
        assert!(err("lsi,device-poll=20000").contains("device-poll=20000: expected auto"));
        assert!(err("socket=/x,device-poll=off").contains("for lsi only"));
        let s: RemoteDevSpec = "lsi,device-poll=30".parse().unwrap();
        let Endpoint::Lsi { device_poll, .. } = s.endpoint else {
            panic!("not lsi")
        };
        assert_eq!(device_poll.window(None, None), Duration::from_micros(30));
        assert!(err("lsi,reply-poll=fast").contains("expected auto, off or microseconds"));
        assert!(err("socket=/x,reply-poll=off").contains("needs a remote of our own"));
    }

    #[test]
    fn lsi_takes_disks_and_readonly() {
        let s: RemoteDevSpec = "lsi,disk=a.img,disk=b.img,readonly=on".parse().unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Lsi {
                disks: vec![disk("a.img"), disk("b.img")],
                readonly: true,
                discard: true,
                sandbox: true,
                user: None,
                posted_register_writes: true,
                batch_scheduling: true,
                disk_io: crate::scsi::bus::DiskIo::Auto,
                cpus: None,
                device_poll: ReplyPolling::Auto,
            }
        );
        assert_eq!(s.dialect, Dialect::Vmm);
        let s: RemoteDevSpec = "lsi".parse().unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Lsi {
                disks: vec![],
                readonly: false,
                discard: true,
                sandbox: true,
                user: None,
                posted_register_writes: true,
                batch_scheduling: true,
                disk_io: crate::scsi::bus::DiskIo::Auto,
                cpus: None,
                device_poll: ReplyPolling::Auto,
            }
        );
        let s: RemoteDevSpec = "lsi,disk=a.qcow2,format=qcow2,disk=b.img".parse().unwrap();
        let Endpoint::Lsi { disks, .. } = s.endpoint else {
            panic!("not lsi")
        };
        assert_eq!(disks[0].format, Some(crate::scsi::image::Format::Qcow2));
        assert_eq!(disks[1].format, None, "format= names the disk before it");
        assert!(
            "lsi,disk=a.img,format=vmdk"
                .parse::<RemoteDevSpec>()
                .is_err()
        );
        assert!("lsi,format=qcow2".parse::<RemoteDevSpec>().is_err());
        let s: RemoteDevSpec = "lsi,discard=off".parse().unwrap();
        assert!(matches!(s.endpoint, Endpoint::Lsi { discard: false, .. }));
        assert!("socket=x,discard=off".parse::<RemoteDevSpec>().is_err());
        let s: RemoteDevSpec = "lsi,disk-io=workers".parse().unwrap();
        assert!(matches!(
            s.endpoint,
            Endpoint::Lsi {
                disk_io: crate::scsi::bus::DiskIo::Workers,
                ..
            }
        ));
        assert!(
            "lsi,disk-io=threads"
                .parse::<RemoteDevSpec>()
                .unwrap_err()
                .contains("disk-io=threads: expected auto or workers")
        );
        let s: RemoteDevSpec = "lsi,sandbox=off".parse().unwrap();
        assert!(matches!(s.endpoint, Endpoint::Lsi { sandbox: false, .. }));
        assert!("lsi,sandbox=maybe".parse::<RemoteDevSpec>().is_err());
        assert!("socket=x,sandbox=off".parse::<RemoteDevSpec>().is_err());
        assert!("lsi,socket=x".parse::<RemoteDevSpec>().is_err());
        assert!("socket=x,disk=a".parse::<RemoteDevSpec>().is_err());
        assert!("lsi,readonly=maybe".parse::<RemoteDevSpec>().is_err());
    }

    #[test]
    fn ioregionfd_modes_parse_and_need_our_dialect() {
        let mode = |t: &str| t.parse::<RemoteDevSpec>().unwrap().ioregionfd;
        assert_eq!(mode("lsi"), IoRegionMode::Auto);
        assert_eq!(mode("lsi,ioregionfd=off"), IoRegionMode::Off);
        assert_eq!(mode("lsi,ioregionfd=userspace"), IoRegionMode::Userspace);
        assert_eq!(
            mode("socket=x,proto=vmm,ioregionfd=kernel"),
            IoRegionMode::Kernel
        );
        assert_eq!(mode("socket=x"), IoRegionMode::Off);
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("socket=x,ioregionfd=auto").contains("our own"));
        assert!(err("lsi,ioregionfd=fast").contains("ioregionfd=fast"));
    }

    #[test]
    fn the_register_mirror_is_on_unless_turned_off() {
        let mirror = |t: &str| t.parse::<RemoteDevSpec>().unwrap().register_mirror;
        assert!(mirror("lsi"));
        assert!(!mirror("lsi,register-mirror=off"));
        assert!(!mirror("socket=x,proto=vmm,register-mirror=off"));
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("socket=x,register-mirror=off").contains("our own"));
        assert!(err("lsi,register-mirror=later").contains("register-mirror=later"));
    }

    #[test]
    fn restart_and_user_apply_to_remotes_we_spawn() {
        let s: RemoteDevSpec = "lsi,restart=on,user=nobody".parse().unwrap();
        assert!(s.restart);
        assert!(matches!(s.endpoint, Endpoint::Lsi { user: Some(ref u), .. } if u == "nobody"));
        assert!(!"lsi".parse::<RemoteDevSpec>().unwrap().restart);
        assert!(
            "exec=/bin/remote,restart=on"
                .parse::<RemoteDevSpec>()
                .unwrap()
                .restart
        );
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("socket=x,restart=on").contains("spawns itself"));
        assert!(err("fd=5,restart=on").contains("spawns itself"));
        assert!(err("lsi,restart=later").contains("restart=later"));
        assert!(err("lsi,user=").contains("user="));
        assert!(err("lsi,register-writes=maybe").contains("posted or waited"));
        assert!(matches!(
            "lsi,register-writes=waited"
                .parse::<RemoteDevSpec>()
                .unwrap()
                .endpoint,
            Endpoint::Lsi {
                posted_register_writes: false,
                ..
            }
        ));
        assert!(err("lsi,sched=fifo").contains("batch or normal"));
        assert!(err("socket=x,sched=normal").contains("lsi only"));
        assert!(matches!(
            "lsi,sched=normal"
                .parse::<RemoteDevSpec>()
                .unwrap()
                .endpoint,
            Endpoint::Lsi {
                batch_scheduling: false,
                disk_io: crate::scsi::bus::DiskIo::Auto,
                ..
            }
        ));
        assert!(err("socket=x,user=nobody").contains("unknown key"));
    }

    #[test]
    fn the_help_lists_every_key_the_parser_accepts() {
        let help = help_text();
        for k in KEYS {
            let syntax = if k.values.is_empty() {
                k.key.to_string()
            } else {
                format!("{}={}", k.key, k.values)
            };
            assert!(help.contains(&syntax), "{syntax} is not in the help");
        }
        // Each key in the table reaches the parser's own handling of it:
        // a value it rejects gets a complaint about that key, not
        // "unknown key".
        for k in KEYS.iter().filter(|k| !k.values.is_empty()) {
            let spec = format!("lsi,{}=\u{1}", k.key);
            if let Err(e) = spec.parse::<RemoteDevSpec>() {
                assert!(!e.contains("unknown key"), "{spec}: {e}");
            }
        }
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("lsi,colour=red").contains("--remote-dev help"));
    }

    #[test]
    fn doorbells_are_adaptive_unless_said_otherwise_on_our_remotes() {
        let doorbells = |t: &str| t.parse::<RemoteDevSpec>().map(|s| s.doorbells);
        assert_eq!(doorbells("lsi"), Ok(DoorbellMode::Adaptive));
        assert_eq!(doorbells("lsi,doorbells=waited"), Ok(DoorbellMode::Waited));
        assert_eq!(
            doorbells("socket=x,proto=vmm,doorbells=posted"),
            Ok(DoorbellMode::Posted)
        );
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("lsi,doorbells=sometimes").contains("adaptive, waited or posted"));
        assert!(err("socket=x,doorbells=waited").contains("of our own"));
    }

    #[test]
    fn the_help_shows_the_parsers_defaults() {
        let lsi: RemoteDevSpec = "lsi".parse().unwrap();
        let mut checked = 0;
        for k in KEYS {
            if k.values.split('|').any(|v| v == k.default) {
                let spec = format!("lsi,{}={}", k.key, k.default);
                assert_eq!(spec.parse::<RemoteDevSpec>(), Ok(lsi.clone()), "{spec}");
                checked += 1;
            }
        }
        assert_eq!(checked, 12);
        assert_eq!("lsi,proto=vmm".parse::<RemoteDevSpec>(), Ok(lsi));
        let socket: RemoteDevSpec = "socket=x".parse().unwrap();
        assert_eq!("socket=x,proto=qemu".parse::<RemoteDevSpec>(), Ok(socket));
        let help = help_text();
        let scratch_gib = crate::remote::cli::SCRATCH_DISK_SIZE >> 30;
        assert!(help.contains(&format!("sparse {scratch_gib} GiB scratch")));
        let restarts = MAX_RESTARTS;
        assert!(help.contains(&format!("at most {restarts} times")));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |t: &str| t.parse::<RemoteDevSpec>().unwrap_err();
        assert!(err("").contains("say where"));
        assert!(err("fd=1").contains("above 2"));
        assert!(err("fd=x").contains("fd=x"));
        assert!(err("socket=a,fd=4").contains("only one"));
        assert!(err("socket=a,color=red").contains("unknown key"));
        assert!(err("socket=a,proto=vfio").contains("proto=vfio"));
        assert!(err("floppy").contains("floppy"));
    }
}
