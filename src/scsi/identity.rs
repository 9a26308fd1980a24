//! Who a disk says it is: vendor and product (INQUIRY), a serial number
//! (VPD page 0x80) and a WWN (an NAA designator in VPD page 0x83). Guests
//! name disks by these (`/dev/disk/by-id/`), so the defaults are stable:
//! derived from the image's path and SCSI id, not from anything that
//! changes between runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::image::Format;

pub const DEFAULT_VENDOR: &str = "VMM";
pub const DEFAULT_PRODUCT: &str = "LSI REMOTE DISK";
/// The keys that describe one disk, on `--remote-dev` (after its
/// `disk=`) and on `vmm remote lsi --disk PATH,...`.
pub const DISK_KEYS: [&str; 5] = ["format", "serial", "wwn", "vendor", "product"];
const MAX_SERIAL: usize = 36;
const MAX_VENDOR: usize = 8;
const MAX_PRODUCT: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    /// NAA (type 2, 3 or 5) world wide name.
    pub wwn: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{key}={value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("unknown disk key '{0}': expected format, serial, wwn, vendor or product")]
    UnknownKey(String),
    #[error("two disks on one controller would share {what} {value}")]
    Shared { what: &'static str, value: String },
}

/// What the user set for one disk; the rest gets defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentitySpec {
    pub serial: Option<String>,
    pub wwn: Option<u64>,
    pub vendor: Option<String>,
    pub product: Option<String>,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> IdentityError {
    IdentityError::Invalid {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Printable ASCII, no commas (they separate keys), at most `max` bytes.
fn text(key: &str, value: &str, max: usize, spaces: bool) -> Result<String, IdentityError> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(key, value, format!("1 to {max} characters")));
    }
    let allowed = |c: char| c.is_ascii_graphic() && c != ',' || (spaces && c == ' ');
    if !value.chars().all(allowed) {
        return Err(invalid(
            key,
            value,
            "printable ASCII only (no commas; spaces only in vendor and product)",
        ));
    }
    Ok(value.to_string())
}

fn parse_wwn(value: &str) -> Result<u64, IdentityError> {
    let hex = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value);
    if hex.len() != 16 {
        return Err(invalid(
            "wwn",
            value,
            "16 hex digits, e.g. 0x5000c500a1b2c3d4",
        ));
    }
    let wwn = u64::from_str_radix(hex, 16)
        .map_err(|_| invalid("wwn", value, "16 hex digits, e.g. 0x5000c500a1b2c3d4"))?;
    // The first digit is the NAA type: an 8-byte name is type 2, 3 or 5.
    match wwn >> 60 {
        2 | 3 | 5 => Ok(wwn),
        naa => Err(invalid(
            "wwn",
            value,
            format!("NAA type {naa}: an 8-byte WWN starts with 2, 3 or 5"),
        )),
    }
}

impl IdentitySpec {
    /// Sets `key` (one of `KEYS`) from the user's text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), IdentityError> {
        match key {
            "serial" => self.serial = Some(text(key, value, MAX_SERIAL, false)?),
            "wwn" => self.wwn = Some(parse_wwn(value)?),
            "vendor" => self.vendor = Some(text(key, value, MAX_VENDOR, true)?),
            "product" => self.product = Some(text(key, value, MAX_PRODUCT, true)?),
            other => return Err(IdentityError::UnknownKey(other.into())),
        }
        Ok(())
    }

    /// The identity of the disk on SCSI id `index` with image `path`.
    pub fn resolve(&self, path: &Path, index: usize) -> Identity {
        let seed = stable_hash(path, index);
        Identity {
            vendor: self.vendor.clone().unwrap_or_else(|| DEFAULT_VENDOR.into()),
            product: self
                .product
                .clone()
                .unwrap_or_else(|| DEFAULT_PRODUCT.into()),
            serial: self
                .serial
                .clone()
                .unwrap_or_else(|| format!("VMM{:012X}", seed >> 16)),
            // NAA 3: locally assigned, the other 60 bits ours to choose.
            wwn: self.wwn.unwrap_or(3 << 60 | (seed & ((1 << 60) - 1))),
        }
    }
}

impl Identity {
    /// Default identity around a given serial (tests, fuzzing).
    pub fn with_serial(serial: &str) -> Self {
        IdentitySpec {
            serial: Some(serial.into()),
            ..IdentitySpec::default()
        }
        .resolve(Path::new(serial), 0)
    }

    /// INQUIRY's vendor field: 8 bytes, space padded.
    pub fn vendor_field(&self) -> [u8; 8] {
        padded(&self.vendor)
    }

    /// INQUIRY's product field: 16 bytes, space padded.
    pub fn product_field(&self) -> [u8; 16] {
        padded(&self.product)
    }
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut field = [b' '; N];
    let n = s.len().min(N);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    field
}

/// FNV-1a over the image's absolute path and the SCSI id: the same disk
/// gets the same serial and WWN every run, two disks differ.
fn stable_hash(path: &Path, index: usize) -> u64 {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in absolute
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .chain(&index.to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Refuses two disks of one controller with the same serial or WWN: a
/// guest would take them for one disk seen twice (multipath).
pub fn check_unique(ids: &[Identity]) -> Result<(), IdentityError> {
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            if a.serial == b.serial {
                return Err(IdentityError::Shared {
                    what: "serial",
                    value: a.serial.clone(),
                });
            }
            if a.wwn == b.wwn {
                return Err(IdentityError::Shared {
                    what: "WWN",
                    value: format!("{:#018x}", a.wwn),
                });
            }
        }
    }
    Ok(())
}

/// One disk as the user describes it (`vmm remote lsi --disk` takes
/// `PATH[,format=F][,serial=S][,wwn=W][,vendor=V][,product=P]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// `None`: the image's first bytes say.
    pub format: Option<Format>,
    pub identity: IdentitySpec,
}

impl DiskSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskSpec {
            path: path.into(),
            format: None,
            identity: IdentitySpec::default(),
        }
    }

    /// Sets one of `DISK_KEYS` from the user's text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), IdentityError> {
        if key != "format" {
            return self.identity.set(key, value);
        }
        self.format = Some(match value {
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            _ => return Err(invalid(key, value, "raw or qcow2")),
        });
        Ok(())
    }
}

impl FromStr for DiskSpec {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The path ends where the first ",KEY=" of a known key starts, so
        // a path may hold other commas.
        let cut = DISK_KEYS
            .iter()
            .filter_map(|k| s.find(&format!(",{k}=")))
            .min()
            .unwrap_or(s.len());
        let mut disk = DiskSpec::new(&s[..cut]);
        if cut < s.len() {
            for pair in s[cut + 1..].split(',') {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                disk.set(key, value)?;
            }
        }
        Ok(disk)
    }
}

impl fmt::Display for DiskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(format) = self.format {
            write!(f, ",format={format}")?;
        }
        let id = &self.identity;
        if let Some(s) = &id.serial {
            write!(f, ",serial={s}")?;
        }
        if let Some(w) = id.wwn {
            write!(f, ",wwn={w:#018x}")?;
        }
        if let Some(v) = &id.vendor {
            write!(f, ",vendor={v}")?;
        }
        if let Some(p) = &id.product {
            write!(f, ",product={p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_stable_and_differ_per_disk() {
        let spec = IdentitySpec::default();
        let a0 = spec.resolve(Path::new("/images/a.img"), 0);
        assert_eq!(a0, spec.resolve(Path::new("/images/a.img"), 0), "stable");
        let a1 = spec.resolve(Path::new("/images/a.img"), 1);
        let b0 = spec.resolve(Path::new("/images/b.img"), 0);
        check_unique(&[a0.clone(), a1, b0]).unwrap();
        assert_eq!(a0.wwn >> 60, 3, "NAA 3: locally assigned");
        assert!(a0.serial.starts_with("VMM") && a0.serial.len() == 15);
        assert_eq!(&a0.vendor_field(), b"VMM     ");
        assert_eq!(&a0.product_field(), b"LSI REMOTE DISK ");
    }

    #[test]
    fn user_values_are_checked() {
        let mut s = IdentitySpec::default();
        s.set("serial", "DISK-0001").unwrap();
        s.set("wwn", "0x5000c500a1b2c3d4").unwrap();
        s.set("vendor", "ACME").unwrap();
        s.set("product", "Fast Disk").unwrap();
        let id = s.resolve(Path::new("x"), 0);
        assert_eq!(id.serial, "DISK-0001");
        assert_eq!(id.wwn, 0x5000_c500_a1b2_c3d4);
        assert_eq!(&id.product_field(), b"Fast Disk       ");
        let err = |k: &str, v: &str| IdentitySpec::default().set(k, v).unwrap_err().to_string();
        assert!(err("serial", "has space").contains("printable ASCII"));
        assert!(err("serial", &"x".repeat(37)).contains("1 to 36"));
        assert!(err("vendor", "TOO LONG NAME").contains("1 to 8"));
        assert!(err("wwn", "0x1234").contains("16 hex digits"));
        assert!(err("wwn", "0x6000c500a1b2c3d4").contains("NAA type 6"));
        assert!(err("wwn", "0x5000c500a1b2c3dz").contains("16 hex digits"));
        assert!(err("colour", "red").contains("unknown disk key"));
    }

    #[test]
    fn shared_serials_and_wwns_are_refused() {
        let with = |serial: &str, wwn: u64| IdentitySpec {
            serial: Some(serial.into()),
            wwn: Some(wwn),
            ..IdentitySpec::default()
        };
        let a = with("S1", 0x3000_0000_0000_0001).resolve(Path::new("a"), 0);
        let b = with("S1", 0x3000_0000_0000_0002).resolve(Path::new("b"), 1);
        let c = with("S2", 0x3000_0000_0000_0001).resolve(Path::new("c"), 2);
        assert!(
            check_unique(&[a.clone(), b])
                .unwrap_err()
                .to_string()
                .contains("share serial S1")
        );
        assert!(
            check_unique(&[a, c])
                .unwrap_err()
                .to_string()
                .contains("share WWN 0x3000000000000001")
        );
    }

    #[test]
    fn a_disk_argument_round_trips() {
        let d: DiskSpec = "/img/a,b.img,serial=X1,wwn=5000c500a1b2c3d4"
            .parse()
            .unwrap();
        assert_eq!(
            d.path,
            PathBuf::from("/img/a,b.img"),
            "commas in the path stay"
        );
        assert_eq!(d.identity.serial.as_deref(), Some("X1"));
        assert_eq!(d.to_string().parse::<DiskSpec>().unwrap(), d);
        let plain: DiskSpec = "disk.img".parse().unwrap();
        assert_eq!(plain, DiskSpec::new("disk.img"));
        assert!("a.img,serial=".parse::<DiskSpec>().is_err());
        assert!("a.img,format=vmdk".parse::<DiskSpec>().is_err());
    }
}
