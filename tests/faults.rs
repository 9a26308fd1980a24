//! End-to-end faults: a remote that stops answering in the middle of the
//! guest's disk I/O must not hang the VMM: the access times out, the device
//! is cut off with a logged error, and the VMM still stops cleanly.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use common::{Mode, Outcome, Scenario};

/// Starts the VMM in the background on a disk workload, freezes its remote
/// (SIGSTOP) mid-I/O, waits past the 10 s region timeout, then asks the VMM
/// to stop (SIGTERM) and reports how it ended.
fn frozen_remote(mode: &str) -> String {
    format!(
        "dd if=/dev/zero of=/tmp/f.img bs=1M count=64 2>/dev/null\n\
         $VMM --kernel $KERNEL --initrd $INITRD --cmdline 'console=ttyS0 quiet vmm.run=fio-verify' \
         --log-level info --stats --remote-dev lsi,disk=/tmp/f.img,ioregionfd={mode} </dev/null > /tmp/vmm.log 2>&1 &\n\
         vmm=$!\n\
         i=0; while [ $i -lt 120 ] && ! grep -q 'disk found' /tmp/vmm.log; do sleep 1; i=$((i + 1)); done\n\
         sleep 2\n\
         remote=$(sed -n 's/.*(lsi, pid \\([0-9]*\\)).*/\\1/p' /tmp/vmm.log | head -n 1)\n\
         echo \"freezing remote $remote\"\n\
         kill -STOP $remote\n\
         sleep 25\n\
         kill -TERM $vmm\n\
         wait $vmm\n\
         echo \"vmm exited $?\"\n\
         kill -KILL $remote 2>/dev/null\n\
         cat /tmp/vmm.log"
    )
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "frozen-remote-ioregion",
            script: frozen_remote("userspace"),
        },
        Scenario {
            name: "frozen-remote-messages",
            script: frozen_remote("off"),
        },
    ]
}

fn outcome(name: &str) -> Option<&'static Outcome> {
    static RESULTS: OnceLock<HashMap<String, Outcome>> = OnceLock::new();
    if let Mode::Skip = common::mode() {
        eprintln!("VMM_SKIP_KVM_TESTS=1: fault tests skipped");
        return None;
    }
    Some(&RESULTS.get_or_init(|| common::run_batch(&scenarios(), 240))[name])
}

#[test]
fn a_frozen_remote_times_out_on_the_region_fd_and_the_vmm_still_stops() {
    let Some(o) = outcome("frozen-remote-ioregion") else {
        return;
    };
    o.assert_contains("freezing remote");
    o.assert_contains("did not answer within 10s");
    o.assert_contains("the device is cut off and reads as all ones");
    // 128 + SIGTERM: the VMM honoured the signal instead of hanging.
    o.assert_contains("vmm exited 143");
}

#[test]
fn a_frozen_remote_times_out_on_the_control_socket_and_the_vmm_still_stops() {
    let Some(o) = outcome("frozen-remote-messages") else {
        return;
    };
    o.assert_contains("freezing remote");
    o.assert_contains("did not answer within 10s");
    o.assert_contains("the device is cut off and reads as all ones");
    o.assert_contains("vmm exited 143");
}
