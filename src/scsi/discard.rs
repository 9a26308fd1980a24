//! Logical block provisioning: the limits the disk advertises for UNMAP
//! and WRITE SAME, the UNMAP parameter list, and the Logical Block
//! Provisioning VPD page. A discarded block reads back as zeros (LBPRZ),
//! since the image punches a hole or writes zeros.

use super::sense::Sense;

/// Most blocks one UNMAP may deallocate (2 GiB of 512-byte blocks).
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 22;
/// Most block descriptors in one UNMAP parameter list.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 64;
/// Deallocation works in 4 KiB pieces (the host's file system block):
/// the guest aligns its discards to this.
pub const UNMAP_GRANULARITY: u32 = 8;
/// Most blocks one WRITE SAME may write (32 MiB of 512-byte blocks).
pub const MAX_WRITE_SAME_BLOCKS: u32 = 1 << 16;

const HEADER_LEN: usize = 8;
const DESCRIPTOR_LEN: usize = 16;

/// One block range of an UNMAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u32,
}

/// Checks a whole UNMAP parameter list against the limits and the
/// capacity before anything is deallocated, so that a refused list
/// changes nothing.
pub fn unmap_extents(list: &[u8], capacity: u64) -> Result<Vec<Extent>, Sense> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    if list.len() < HEADER_LEN {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let declared = usize::from(u16::from_be_bytes([list[2], list[3]]));
    // An incomplete last descriptor is ignored, as SBC says.
    let descriptors = list[HEADER_LEN..HEADER_LEN + declared.min(list.len() - HEADER_LEN)]
        .chunks_exact(DESCRIPTOR_LEN);
    if descriptors.len() > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
    }
    let mut total = 0u64;
    let mut extents = Vec::with_capacity(descriptors.len());
    for d in descriptors {
        let lba = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let blocks = u32::from_be_bytes(d[8..12].try_into().expect("4 bytes"));
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= capacity => {}
            _ => return Err(Sense::LBA_OUT_OF_RANGE),
        }
        total += u64::from(blocks);
        if blocks > 0 {
            extents.push(Extent { lba, blocks });
        }
    }
    if total > u64::from(MAX_UNMAP_BLOCKS) {
        return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
    }
    Ok(extents)
}

/// The Block Limits VPD page's provisioning fields, written into its body
/// (the page without its 4-byte header).
pub fn block_limits(body: &mut [u8], discard: bool) {
    // WSNZ: a WRITE SAME of zero blocks is refused, not "to the end".
    body[0] |= 0x01;
    body[32..40].copy_from_slice(&u64::from(MAX_WRITE_SAME_BLOCKS).to_be_bytes());
    if discard {
        body[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
        body[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        body[24..28].copy_from_slice(&UNMAP_GRANULARITY.to_be_bytes());
    }
}

/// The Logical Block Provisioning VPD page's body: UNMAP and both WRITE
/// SAMEs deallocate, deallocated blocks read as zeros, thin provisioning.
pub fn provisioning_page() -> Vec<u8> {
    const LBPU: u8 = 0x80;
    const LBPWS: u8 = 0x40;
    const LBPWS10: u8 = 0x20;
    const LBPRZ_ZEROS: u8 = 0x01 << 2;
    const THIN: u8 = 0x02;
    vec![0, LBPU | LBPWS | LBPWS10 | LBPRZ_ZEROS, THIN, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(descriptors: &[(u64, u32)]) -> Vec<u8> {
        let bd_len = (descriptors.len() * DESCRIPTOR_LEN) as u16;
        let mut l = (bd_len + 6).to_be_bytes().to_vec();
        l.extend_from_slice(&bd_len.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
        for &(lba, blocks) in descriptors {
            l.extend_from_slice(&lba.to_be_bytes());
            l.extend_from_slice(&blocks.to_be_bytes());
            l.extend_from_slice(&[0; 4]);
        }
        l
    }

    #[test]
    fn descriptors_become_extents() {
        let l = list(&[(8, 16), (100, 0), (1000, 24)]);
        assert_eq!(
            unmap_extents(&l, 2048),
            Ok(vec![
                Extent { lba: 8, blocks: 16 },
                Extent {
                    lba: 1000,
                    blocks: 24
                }
            ])
        );
        assert_eq!(unmap_extents(&[], 2048), Ok(vec![]), "empty list: nothing");
        // A torn last descriptor is ignored.
        let mut torn = list(&[(8, 16)]);
        torn.extend_from_slice(&[0; 10]);
        torn[2..4].copy_from_slice(&26u16.to_be_bytes());
        assert_eq!(unmap_extents(&torn, 2048).unwrap().len(), 1);
    }

    #[test]
    fn bad_lists_get_the_sense_sbc_names() {
        assert_eq!(
            unmap_extents(&[0, 6, 0], 2048),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        assert_eq!(
            unmap_extents(&list(&[(2040, 16)]), 2048),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            unmap_extents(&list(&[(u64::MAX, 2)]), 2048),
            Err(Sense::LBA_OUT_OF_RANGE),
            "wrapping range"
        );
        let many: Vec<(u64, u32)> = (0..=u64::from(MAX_UNMAP_DESCRIPTORS))
            .map(|i| (i, 1))
            .collect();
        assert_eq!(
            unmap_extents(&list(&many), 2048),
            Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST),
            "too many descriptors"
        );
        let big = list(&[(0, MAX_UNMAP_BLOCKS), (MAX_UNMAP_BLOCKS as u64, 1)]);
        assert_eq!(
            unmap_extents(&big, 1 << 30),
            Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST),
            "too many blocks"
        );
    }
}
