#!/bin/sh
# QEMU's own multiprocess remote as a peer for our proxy: an LSI 53C895A
# with one SCSI disk (raw image $LSI_DISK, cache mode $LSI_CACHE, default
# writeback), serving the control socket our VMM passes as fd 3. Use: vmm --remote-dev exec=ci/qemu-remote-lsi.sh
: "${LSI_DISK:?set LSI_DISK to a raw disk image}"
exec qemu-system-x86_64 -machine x-remote -nodefaults -display none \
    -monitor none -serial none -parallel none \
    -device lsi53c895a,id=lsi0 \
    -drive "id=d0,file=$LSI_DISK,format=raw,if=none,cache=${LSI_CACHE:-writeback}" \
    -device scsi-hd,id=sd0,drive=d0,bus=lsi0.0,scsi-id=0 \
    -object x-remote-object,id=robj0,devid=lsi0,fd=3
