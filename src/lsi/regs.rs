//! LSI 53C895A register offsets and bits (names as in the chip's manual).

pub const SCNTL0: u8 = 0x00;
pub const SCNTL1: u8 = 0x01;
pub const SCNTL2: u8 = 0x02;
pub const SCNTL3: u8 = 0x03;
pub const SCID: u8 = 0x04;
pub const SXFER: u8 = 0x05;
pub const SDID: u8 = 0x06;
pub const GPREG: u8 = 0x07;
pub const SFBR: u8 = 0x08;
pub const SOCL: u8 = 0x09;
pub const SSID: u8 = 0x0a;
pub const SBCL: u8 = 0x0b;
pub const DSTAT: u8 = 0x0c;
pub const SSTAT0: u8 = 0x0d;
pub const SSTAT1: u8 = 0x0e;
pub const SSTAT2: u8 = 0x0f;
pub const DSA: u8 = 0x10;
pub const ISTAT0: u8 = 0x14;
pub const ISTAT1: u8 = 0x15;
pub const MBOX0: u8 = 0x16;
pub const MBOX1: u8 = 0x17;
pub const CTEST0: u8 = 0x18;
pub const CTEST1: u8 = 0x19;
pub const CTEST2: u8 = 0x1a;
pub const CTEST3: u8 = 0x1b;
pub const TEMP: u8 = 0x1c;
pub const DFIFO: u8 = 0x20;
pub const CTEST4: u8 = 0x21;
pub const CTEST5: u8 = 0x22;
pub const CTEST6: u8 = 0x23;
pub const DBC: u8 = 0x24;
pub const DCMD: u8 = 0x27;
pub const DNAD: u8 = 0x28;
pub const DSP: u8 = 0x2c;
pub const DSPS: u8 = 0x30;
pub const SCRATCHA: u8 = 0x34;
pub const DMODE: u8 = 0x38;
pub const DIEN: u8 = 0x39;
pub const SBR: u8 = 0x3a;
pub const DCNTL: u8 = 0x3b;
pub const ADDER: u8 = 0x3c;
pub const SIEN0: u8 = 0x40;
pub const SIEN1: u8 = 0x41;
pub const SIST0: u8 = 0x42;
pub const SIST1: u8 = 0x43;
pub const SLPAR: u8 = 0x44;
pub const SWIDE: u8 = 0x45;
pub const MACNTL: u8 = 0x46;
pub const GPCNTL: u8 = 0x47;
pub const STIME0: u8 = 0x48;
pub const STIME1: u8 = 0x49;
pub const RESPID0: u8 = 0x4a;
pub const RESPID1: u8 = 0x4b;
pub const STEST0: u8 = 0x4c;
pub const STEST1: u8 = 0x4d;
pub const STEST2: u8 = 0x4e;
pub const STEST3: u8 = 0x4f;
pub const SIDL: u8 = 0x50;
pub const STEST4: u8 = 0x52;
pub const SODL: u8 = 0x54;
pub const CCNTL0: u8 = 0x56;
pub const CCNTL1: u8 = 0x57;
pub const SBDL: u8 = 0x58;
pub const SCRATCHB: u8 = 0x5c;
/// SCRATCHC..SCRATCHR follow SCRATCHB, four bytes each.
pub const SCRATCHC: u8 = 0x60;
pub const MMRS: u8 = 0xa0;
pub const MMWS: u8 = 0xa4;
pub const SFS: u8 = 0xa8;
pub const DRS: u8 = 0xac;
pub const SBMS: u8 = 0xb0;
pub const DBMS: u8 = 0xb4;
pub const DNAD64: u8 = 0xb8;
pub const PMJAD1: u8 = 0xc0;
pub const PMJAD2: u8 = 0xc4;
pub const RBC: u8 = 0xc8;
pub const UA: u8 = 0xcc;
pub const IA: u8 = 0xd4;
pub const SBC: u8 = 0xd8;
pub const CSBC: u8 = 0xdc;

pub const ISTAT0_ABRT: u8 = 0x80;
pub const ISTAT0_SRST: u8 = 0x40;
pub const ISTAT0_SIGP: u8 = 0x20;
pub const ISTAT0_SEM: u8 = 0x10;
pub const ISTAT0_CON: u8 = 0x08;
pub const ISTAT0_INTF: u8 = 0x04;
pub const ISTAT0_SIP: u8 = 0x02;
pub const ISTAT0_DIP: u8 = 0x01;
/// The ISTAT0 bits that take the value of each write (the rest are status).
pub const ISTAT0_WRITABLE: u8 = ISTAT0_ABRT | ISTAT0_SRST | ISTAT0_SIGP | ISTAT0_SEM;
pub const ISTAT1_SRUN: u8 = 0x02;

pub const DSTAT_DFE: u8 = 0x80;
pub const DSTAT_MDPE: u8 = 0x40;
pub const DSTAT_BF: u8 = 0x20;
pub const DSTAT_ABRT: u8 = 0x10;
pub const DSTAT_SSI: u8 = 0x08;
pub const DSTAT_SIR: u8 = 0x04;
pub const DSTAT_IID: u8 = 0x01;

pub const SIST0_MA: u8 = 0x80;
pub const SIST0_CMP: u8 = 0x40;
pub const SIST0_SEL: u8 = 0x20;
pub const SIST0_RSL: u8 = 0x10;
pub const SIST0_SGE: u8 = 0x08;
pub const SIST0_UDC: u8 = 0x04;
pub const SIST0_RST: u8 = 0x02;
pub const SIST0_PAR: u8 = 0x01;
pub const SIST1_SBMC: u8 = 0x10;
pub const SIST1_STO: u8 = 0x04;
pub const SIST1_GEN: u8 = 0x02;
pub const SIST1_HTH: u8 = 0x01;

pub const SCNTL1_CON: u8 = 0x10;
pub const SCNTL1_RST: u8 = 0x08;
pub const SSTAT0_RST: u8 = 0x02;
pub const SOCL_ATN: u8 = 0x08;
pub const SOCL_ACK: u8 = 0x40;
pub const DCNTL_SSM: u8 = 0x10;
pub const DCNTL_STD: u8 = 0x04;
pub const DMODE_MAN: u8 = 0x01;
pub const CTEST2_DACK: u8 = 0x01;
pub const CTEST2_CM: u8 = 0x08;
pub const CTEST2_SIGP: u8 = 0x40;
pub const CCNTL0_ENPMJ: u8 = 0x80;
pub const CCNTL1_EN64TIBMV: u8 = 0x02;
/// SMODE = LVD and LCKFRQ: the clock quadrupler reports lock at once.
pub const STEST4_VALUE: u8 = 0xe0;

/// SCSI bus phases, as SSTAT1 and SBCL show them in bits 2:0.
pub use crate::scsi::bus::{
    PHASE_COMMAND, PHASE_DATA_IN, PHASE_DATA_OUT, PHASE_MSG_IN, PHASE_MSG_OUT, PHASE_STATUS,
};
