//! What the host offers: opening /dev/kvm with clear errors, and spotting
//! PVM, whose /dev/kvm cannot run a stock guest kernel at useful speed.

use std::path::Path;

use kvm_ioctls::Kvm;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "/dev/kvm does not exist: load the kvm module on a host with VT-x or AMD-V (or use the KVM test rig, ci/rig.sh)"
    )]
    KvmMissing,
    #[error("permission denied opening /dev/kvm: add your user to the 'kvm' group or run as root")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm speaks KVM API version {0}, we need 12")]
    KvmApi(i32),
}

pub fn open_kvm() -> Result<Kvm, HostError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => HostError::KvmMissing,
        libc::EACCES | libc::EPERM => HostError::KvmPermission,
        _ => HostError::KvmOpen(e),
    })?;
    let api = kvm.get_api_version();
    if api != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(HostError::KvmApi(api));
    }
    Ok(kvm)
}

/// True when /dev/kvm comes from PVM (the `kvm_pvm` module).
pub fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub fn warn_if_pvm() {
    if is_pvm() {
        log::warn!(
            "this host's /dev/kvm is PVM (kvm_pvm): guest kernel code runs through KVM's \
             instruction emulator, so a stock Linux guest will not boot at a useful speed here; \
             use a host with VT-x/AMD-V or the KVM test rig (ci/rig.sh)"
        );
    }
}
