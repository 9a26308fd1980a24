//! REPORT SUPPORTED OPERATION CODES: the commands the disk implements, each
//! with the CDB usage mask SPC defines (which bits of each CDB byte the
//! disk looks at). A unit test holds this table and the CDB parser to the
//! same set of commands.

use super::cdb::{OP_MAINTENANCE_IN, OP_SERVICE_ACTION_IN_16, OpcodeQuery};
use super::sense::Sense;

/// One supported command: opcode, service action where the opcode has
/// them, and the usage mask (its first byte is the opcode itself).
struct Supported {
    service_action: Option<u16>,
    usage: &'static [u8],
    /// Only a disk with discard on has it.
    discard_only: bool,
}

const fn cmd(usage: &'static [u8]) -> Supported {
    Supported {
        service_action: None,
        usage,
        discard_only: false,
    }
}

const fn with_sa(sa: u16, usage: &'static [u8]) -> Supported {
    Supported {
        service_action: Some(sa),
        usage,
        discard_only: false,
    }
}

const fn discard_only(usage: &'static [u8]) -> Supported {
    Supported {
        service_action: None,
        usage,
        discard_only: true,
    }
}

/// Every command `Command::parse` accepts, in opcode order.
const SUPPORTED: &[Supported] = &[
    cmd(&[0x00, 0, 0, 0, 0, 0]),             // TEST UNIT READY
    cmd(&[0x03, 0, 0, 0, 0xff, 0]),          // REQUEST SENSE
    cmd(&[0x08, 0x1f, 0xff, 0xff, 0xff, 0]), // READ(6)
    cmd(&[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]), // WRITE(6)
    cmd(&[0x12, 0x01, 0xff, 0xff, 0xff, 0]), // INQUIRY
    cmd(&[0x1a, 0x08, 0xff, 0xff, 0xff, 0]), // MODE SENSE(6)
    cmd(&[0x1b, 0, 0, 0, 0, 0]),             // START STOP UNIT
    cmd(&[0x1e, 0, 0, 0, 0, 0]),             // PREVENT ALLOW MEDIUM REMOVAL
    cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // READ CAPACITY(10)
    cmd(&[0x28, 0, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]), // READ(10)
    cmd(&[0x2a, 0x08, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]), // WRITE(10)
    cmd(&[0x2f, 0x06, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]), // VERIFY(10)
    cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // SYNCHRONIZE CACHE(10)
    cmd(&[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]), // WRITE SAME(10)
    discard_only(&[0x42, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), // UNMAP
    cmd(&[0x5a, 0x08, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]), // MODE SENSE(10)
    cmd(&[
        0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]), // READ(16)
    cmd(&[
        0x8a, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]), // WRITE(16)
    cmd(&[
        0x8f, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]), // VERIFY(16)
    cmd(&[0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // SYNCHRONIZE CACHE(16)
    cmd(&[
        0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]), // WRITE SAME(16)
    with_sa(
        0x10,
        &[
            0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ), // READ CAPACITY(16)
    cmd(&[0xa0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]), // REPORT LUNS
    with_sa(
        0x0c,
        &[
            0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ), // REPORT SUPPORTED OPERATION CODES
    cmd(&[
        0xa8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]), // READ(12)
    cmd(&[
        0xaa, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]), // WRITE(12)
];

/// A command timeouts descriptor that gives no timeouts (zero: unknown).
const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Opcodes whose commands are told apart by a service action.
fn has_service_actions(opcode: u8) -> bool {
    opcode == OP_SERVICE_ACTION_IN_16 || opcode == OP_MAINTENANCE_IN
}

/// The parameter data for a query, before the allocation length cuts it,
/// for a disk with or without discard.
pub fn report(q: &OpcodeQuery, discard: bool) -> Result<Vec<u8>, Sense> {
    let offered = || SUPPORTED.iter().filter(move |c| discard || !c.discard_only);
    if q.options == 0 {
        return Ok(all_commands(offered(), q.rctd));
    }
    let sa = match (q.options, has_service_actions(q.opcode)) {
        // One opcode: refused for an opcode that needs a service action.
        (1, true) => return Err(Sense::INVALID_FIELD),
        (1, false) => None,
        // One opcode and service action: refused for one without them.
        (2, false) => return Err(Sense::INVALID_FIELD),
        (2, true) => Some(q.service_action),
        (_, sas) => sas.then_some(q.service_action),
    };
    let found = offered().find(|c| c.usage[0] == q.opcode && c.service_action == sa);
    let mut d = vec![0u8; 4];
    match found {
        Some(c) => {
            // SUPPORT = 3: supported as the standard defines it.
            d[1] = 0x03 | if q.rctd { 0x80 } else { 0 };
            d[2..4].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
            d.extend_from_slice(c.usage);
            if q.rctd {
                d.extend_from_slice(&TIMEOUTS);
            }
        }
        // SUPPORT = 1: not supported.
        None => d[1] = 0x01,
    }
    Ok(d)
}

fn all_commands<'a>(commands: impl Iterator<Item = &'a Supported>, rctd: bool) -> Vec<u8> {
    let mut list = Vec::new();
    for c in commands {
        let mut desc = [0u8; 8];
        desc[0] = c.usage[0];
        if let Some(sa) = c.service_action {
            desc[2..4].copy_from_slice(&sa.to_be_bytes());
            desc[5] |= 0x01; // SERVACTV
        }
        if rctd {
            desc[5] |= 0x02; // CTDP
        }
        desc[6..8].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
        list.extend_from_slice(&desc);
        if rctd {
            list.extend_from_slice(&TIMEOUTS);
        }
    }
    let mut d = (list.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(&list);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::{Command, cdb_len};

    fn query(options: u8, opcode: u8, service_action: u16, rctd: bool) -> OpcodeQuery {
        OpcodeQuery {
            options,
            rctd,
            opcode,
            service_action,
            alloc: 4096,
        }
    }

    /// A CDB for the entry with every bit its mask allows clear, except
    /// the service action and the transfer lengths a command cannot do
    /// without.
    fn minimal_cdb(c: &Supported) -> Vec<u8> {
        let mut cdb = vec![0u8; c.usage.len()];
        cdb[0] = c.usage[0];
        if let Some(sa) = c.service_action {
            cdb[1] = sa as u8;
        }
        cdb
    }

    #[test]
    fn the_table_and_the_parser_know_the_same_commands() {
        for c in SUPPORTED {
            let cdb = minimal_cdb(c);
            assert_eq!(cdb.len(), cdb_len(cdb[0]), "opcode {:#04x}", cdb[0]);
            assert!(
                Command::parse(&cdb).is_ok(),
                "opcode {:#04x} is listed but not parsed",
                cdb[0]
            );
        }
        for op in 0..=255u8 {
            let mut cdb = vec![0u8; cdb_len(op)];
            cdb[0] = op;
            let listed = SUPPORTED.iter().any(|c| c.usage[0] == op);
            match Command::parse(&cdb) {
                Err(Sense::INVALID_OPCODE) => assert!(!listed, "{op:#04x} listed, not parsed"),
                _ => assert!(listed, "{op:#04x} parsed but not listed"),
            }
        }
    }

    #[test]
    fn all_commands_lists_each_with_its_cdb_length() {
        let d = report(&query(0, 0, 0, false), true).unwrap();
        let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, d.len() - 4);
        assert_eq!(len, SUPPORTED.len() * 8);
        let rc16 = d[4..]
            .chunks(8)
            .find(|e| e[0] == 0x9e)
            .expect("READ CAPACITY(16) listed");
        assert_eq!(rc16[2..4], [0, 0x10], "service action");
        assert_eq!(rc16[5], 0x01, "SERVACTV");
        assert_eq!(u16::from_be_bytes([rc16[6], rc16[7]]), 16);
        let with_timeouts = report(&query(0, 0, 0, true), true).unwrap();
        assert_eq!(with_timeouts.len(), 4 + SUPPORTED.len() * 20);
        assert_eq!(with_timeouts[4 + 5], 0x02, "CTDP");
    }

    #[test]
    fn one_command_reports_support_and_usage() {
        // What Linux's sd asks before it uses WRITE SAME(16).
        let d = report(&query(1, 0x93, 0, false), true).unwrap();
        assert_eq!(d[1] & 0x07, 3, "supported");
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 16);
        assert_eq!(d[4], 0x93);
        assert_eq!(d.len(), 4 + 16);
        let unknown = report(&query(1, 0xee, 0, false), true).unwrap();
        assert_eq!(unknown[1] & 0x07, 1, "not supported");
        let rc16 = report(&query(2, 0x9e, 0x10, true), true).unwrap();
        assert_eq!(rc16[1], 0x83, "supported, with CTDP");
        assert_eq!(rc16.len(), 4 + 16 + 12);
        let other_sa = report(&query(3, 0x9e, 0x11, false), true).unwrap();
        assert_eq!(other_sa[1] & 0x07, 1);
        let without_sa = report(&query(3, 0x28, 0, false), true).unwrap();
        assert_eq!(without_sa[1] & 0x07, 3);
    }

    #[test]
    fn without_discard_there_is_no_unmap() {
        let unmap = report(&query(1, 0x42, 0, false), false).unwrap();
        assert_eq!(unmap[1] & 0x07, 1, "not supported");
        let all = report(&query(0, 0, 0, false), false).unwrap();
        assert_eq!(all.len(), 4 + (SUPPORTED.len() - 1) * 8);
        assert!(all[4..].chunks(8).all(|e| e[0] != 0x42));
        let ws = report(&query(1, 0x41, 0, false), false).unwrap();
        assert_eq!(ws[1] & 0x07, 3, "WRITE SAME still writes");
    }

    #[test]
    fn options_that_do_not_fit_the_opcode_are_refused() {
        assert_eq!(
            report(&query(1, 0x9e, 0, false), true),
            Err(Sense::INVALID_FIELD),
            "opcode with service actions, asked without"
        );
        assert_eq!(
            report(&query(2, 0x28, 0, false), true),
            Err(Sense::INVALID_FIELD),
            "opcode without service actions, asked with"
        );
    }
}
