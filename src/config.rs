//! Command-line options and their translation into a `VmConfig`.

use std::path::PathBuf;

use clap::Parser;

use crate::proxy::spec::RemoteDevSpec;
use crate::vmm::VmConfig;

fn parse_remote_dev(text: &str) -> Result<RemoteDevSpec, String> {
    text.parse()
}
use crate::vmm::mptable::MAX_CPUS;

/// The examples `vmm --help` shows, as argv, so a test can parse every one
/// of them: the help must never show a command that does not work.
/// `vmm remote ...` lines are parsed by the remote's own parser.
pub const EXAMPLES: &[(&str, &[&[&str]])] = &[
    (
        "Boot a kernel with an initramfs on two vCPUs:",
        &[&[
            "vmm",
            "--kernel",
            "bzImage",
            "--initrd",
            "initramfs.cpio.gz",
            "--cpus",
            "2",
        ]],
    ),
    (
        "Add our LSI SCSI controller in its own process, with a disk image, and print its counters at exit:",
        &[&[
            "vmm",
            "--kernel",
            "bzImage",
            "--initrd",
            "initramfs.cpio.gz",
            "--remote-dev",
            "lsi,disk=disk.img",
            "--stats",
        ]],
    ),
    (
        "Connect to a remote started by hand (e.g. under another user); proto=vmm tells the VMM it is ours:",
        &[
            &[
                "vmm",
                "remote",
                "lsi",
                "--socket",
                "/run/lsi.sock",
                "--disk",
                "disk.img",
            ],
            &[
                "vmm",
                "--kernel",
                "bzImage",
                "--initrd",
                "initramfs.cpio.gz",
                "--remote-dev",
                "socket=/run/lsi.sock,proto=vmm",
            ],
        ],
    ),
    (
        "Have KVM itself serve the LSI's registers (needs KVM_SET_IOREGION: kernel/, ci/build-kvm-ioregion.sh):",
        &[&[
            "vmm",
            "--kernel",
            "bzImage",
            "--initrd",
            "initramfs.cpio.gz",
            "--remote-dev",
            "lsi,disk=disk.img,ioregionfd=kernel",
        ]],
    ),
    (
        "Give the LSI a CPU of its own: a register read then costs neither side a sleep (vCPUs poll for its answers, it polls for their accesses):",
        &[&[
            "vmm",
            "--kernel",
            "bzImage",
            "--initrd",
            "initramfs.cpio.gz",
            "--remote-dev",
            "lsi,disk=disk.img,cpus=3",
        ]],
    ),
];

fn after_help() -> String {
    let mut text = String::from(
        "The guest's serial console is stdout; stdin is its input. On a terminal, \
         Ctrl-A x quits. A guest reboot or poweroff ends the VMM with exit code 0.\n\n\
         Signals: SIGINT, SIGTERM and SIGHUP stop the VM; `kill -USR1` prints the remote \
         devices' access counters; `kill -USR2` logs a state dump (lines starting \
         \"state dump:\": each vCPU's state, registers, pending events, LAPIC IRR/ISR and \
         last 64 device accesses, and the IOAPIC's pins) without stopping the VM, and \
         passes the signal on to the remotes of ours, which log their own. A vCPU fault \
         (triple fault) logs the same dump before the VMM exits.\n\n\
         `--remote-dev help` lists the keys of each remote kind and their defaults; \
         `vmm host-check` says what this host offers and whether the LSI remote can run here.\n\n\
         EXAMPLES:\n",
    );
    for (what, commands) in EXAMPLES {
        text.push_str(&format!("  {what}\n"));
        for argv in *commands {
            text.push_str(&format!("    {}\n", argv.join(" ")));
        }
    }
    text.pop();
    text
}

#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "A small, fast KVM virtual machine monitor",
    after_help = after_help()
)]
pub struct Cli {
    /// Linux kernel (bzImage) to boot.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk (initramfs) for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default: serial console, panic=1). `reboot=k` is
    /// added unless the line picks a reboot method, so a guest reboot ends the VMM.
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
    /// Guest memory: a number with an optional K, M or G suffix (plain numbers are MiB).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    pub cpus: u8,
    /// A PCI device served by another process: `lsi[,disk=IMG]...[,readonly=on]`
    /// co-spawns our LSI 53C895A SCSI controller; `exec=PATH` (spawned with the
    /// control socket as fd 3), `socket=PATH` or `fd=N` reach any other remote
    /// (add `proto=vmm` for ours). `ioregionfd=auto|kernel|userspace|off` picks
    /// how BARs the remote offers over region fds are dispatched (default
    /// auto). `lsi` also takes `register-writes=posted|waited` (default
    /// posted), `sched=batch|normal` (default batch: its threads do not
    /// preempt the vCPUs they wake), `sandbox=off` and `user=NAME|UID[:GID]`; `restart=on`
    /// respawns a co-spawned remote that dies. `register-mirror=off` makes every
    /// register read ask the remote, even those it mirrors in a shared page (default on).
    /// Repeat for more devices; `--remote-dev help` lists every key.
    #[arg(long = "remote-dev", value_name = "SPEC", value_parser = parse_remote_dev)]
    pub remote_devs: Vec<RemoteDevSpec>,
    /// Log level: error, warn, info, debug or trace (default: RUST_LOG, else warn).
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace", "off"])]
    pub log_level: Option<String>,
    /// Print each remote device's access counters at exit (also on SIGUSR1).
    #[arg(long)]
    pub stats: bool,
}

impl Cli {
    pub fn vm_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            mem_size: self.mem,
            cpus: self.cpus,
            remote_devs: self.remote_devs.clone(),
            stats: self.stats,
        }
    }
}

/// Whether the command line asks for `--remote-dev help`. Checked before
/// clap parses, so it works without `--kernel`, like `vmm --help`.
pub fn asks_for_remote_dev_help<S: AsRef<str>>(args: &[S]) -> bool {
    args.iter().enumerate().any(|(i, arg)| match arg.as_ref() {
        "--remote-dev=help" => true,
        "--remote-dev" => args.get(i + 1).is_some_and(|next| next.as_ref() == "help"),
        _ => false,
    })
}

/// Parses "512M", "2G", "65536K" or "1024" (MiB) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        _ => (text, 20),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 512M or 2G"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1 << 30));
        assert_eq!(parse_size("65536k"), Ok(64 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn cli_defaults_and_errors() {
        let cli = Cli::try_parse_from(["vmm", "--kernel", "k"]).unwrap();
        let cfg = cli.vm_config();
        assert_eq!((cfg.mem_size, cfg.cpus), (512 << 20, 1));
        assert!(cfg.initrd.is_none());
        assert!(Cli::try_parse_from(["vmm"]).is_err(), "kernel is required");
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "0"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "255"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--mem", "x"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--log-level", "loud"]).is_err());
        let cli = Cli::try_parse_from([
            "vmm",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--mem",
            "1G",
            "--cpus",
            "4",
            "--cmdline",
            "console=ttyS0 quiet",
        ])
        .unwrap();
        let cfg = cli.vm_config();
        assert_eq!((cfg.mem_size, cfg.cpus), (1 << 30, 4));
        assert_eq!(cfg.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    }

    #[test]
    fn remote_dev_help_is_spotted_anywhere() {
        assert!(asks_for_remote_dev_help(&["vmm", "--remote-dev", "help"]));
        assert!(asks_for_remote_dev_help(&[
            "vmm",
            "--kernel",
            "k",
            "--remote-dev=help"
        ]));
        assert!(!asks_for_remote_dev_help(&["vmm", "--remote-dev", "lsi"]));
        assert!(!asks_for_remote_dev_help(&["vmm", "--remote-dev"]));
        assert!(!asks_for_remote_dev_help(&["vmm", "help"]));
    }

    #[test]
    fn every_example_in_the_help_parses() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for (what, commands) in EXAMPLES {
            assert!(help.contains(what), "{what} is not in the help");
            for argv in *commands {
                assert!(
                    help.contains(&argv.join(" ")),
                    "{argv:?} is not in the help"
                );
                if argv.get(1) == Some(&"remote") {
                    crate::remote::cli::RemoteCli::try_parse_from(&argv[1..])
                        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                } else {
                    Cli::try_parse_from(*argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                }
            }
        }
    }
}
