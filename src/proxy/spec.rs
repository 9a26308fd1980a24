//! `--remote-dev` option values: where the remote device process is and
//! which protocol dialect it speaks.

use std::path::PathBuf;
use std::str::FromStr;

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
        disks: Vec<PathBuf>,
        readonly: bool,
        /// seccomp and no_new_privs in the remote (`sandbox=off` for
        /// debugging).
        sandbox: bool,
        /// The user (NAME or UID[:GID]) the remote drops to when started
        /// as root.
        user: Option<String>,
        /// Register writes over ioregionfd are waited for (the default), or
        /// posted (`register-writes=posted`, experimental).
        posted_register_writes: bool,
    },
}

/// Which commands beyond QEMU's the remote understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Plain QEMU multiprocess: never sent an extension command.
    Qemu,
    /// Our own remote: BAR_INFO and the ioregionfd extensions.
    Vmm,
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
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(format!("{key}={other}: expected on or off")),
    }
}

impl FromStr for RemoteDevSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut dialect = Dialect::Qemu;
        let mut disks = Vec::new();
        let mut readonly = false;
        let mut sandbox = true;
        let mut lsi = false;
        let mut ioregionfd = None;
        let mut restart = false;
        let mut user = None;
        let mut posted_register_writes = false;
        let mut register_mirror = true;
        for (i, item) in text.split(',').filter(|s| !s.is_empty()).enumerate() {
            if i == 0 && item == "lsi" {
                lsi = true;
                dialect = Dialect::Vmm;
                continue;
            }
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("'{item}' is not a known device type (lsi) or key=value"))?;
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
                        other => return Err(format!("proto={other}: expected qemu or vmm")),
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
                "disk" if lsi => disks.push(PathBuf::from(value)),
                "readonly" if lsi => readonly = on_off(key, value)?,
                "sandbox" if lsi => sandbox = on_off(key, value)?,
                "user" if lsi => {
                    if value.is_empty() {
                        return Err("user= needs a NAME or UID[:GID]".into());
                    }
                    user = Some(value.to_string())
                }
                "restart" => restart = on_off(key, value)?,
                "register-mirror" => register_mirror = on_off(key, value)?,
                "register-writes" if lsi => {
                    posted_register_writes = match value {
                        "posted" => true,
                        "waited" => false,
                        other => {
                            return Err(format!(
                                "register-writes={other}: expected posted or waited"
                            ));
                        }
                    }
                }
                other => return Err(format!("unknown key '{other}'")),
            }
        }
        if lsi {
            if endpoint.is_some() {
                return Err("lsi is co-spawned: drop socket=, fd= and exec=".into());
            }
            endpoint = Some(Endpoint::Lsi {
                disks,
                readonly,
                sandbox,
                user,
                posted_register_writes,
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
            (Some(mode), Dialect::Vmm) => mode,
            (None, Dialect::Vmm) => IoRegionMode::Auto,
            // A QEMU remote knows nothing of ioregion fds.
            (None | Some(IoRegionMode::Off), Dialect::Qemu) => IoRegionMode::Off,
            (Some(_), Dialect::Qemu) => {
                return Err("ioregionfd= needs a remote of our own (lsi or proto=vmm)".into());
            }
        };
        if !register_mirror && dialect == Dialect::Qemu {
            return Err("register-mirror= needs a remote of our own (lsi or proto=vmm)".into());
        }
        Ok(RemoteDevSpec {
            endpoint,
            dialect,
            ioregionfd,
            restart,
            register_mirror,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn lsi_takes_disks_and_readonly() {
        let s: RemoteDevSpec = "lsi,disk=a.img,disk=b.img,readonly=on".parse().unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Lsi {
                disks: vec!["a.img".into(), "b.img".into()],
                readonly: true,
                sandbox: true,
                user: None,
                posted_register_writes: false,
            }
        );
        assert_eq!(s.dialect, Dialect::Vmm);
        let s: RemoteDevSpec = "lsi".parse().unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Lsi {
                disks: vec![],
                readonly: false,
                sandbox: true,
                user: None,
                posted_register_writes: false,
            }
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
            "lsi,register-writes=posted"
                .parse::<RemoteDevSpec>()
                .unwrap()
                .endpoint,
            Endpoint::Lsi {
                posted_register_writes: true,
                ..
            }
        ));
        assert!(err("socket=x,user=nobody").contains("unknown key"));
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
