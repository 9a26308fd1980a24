//! VERSION: the first message each way, a protocol version and a JSON
//! object of capabilities (`{"capabilities": {...}}`, NUL-terminated).
//! Unknown keys are ignored, as a newer peer may send some; a known key
//! with a value of the wrong type is an error, not a default.

use serde_json::{Map, Value, json};

use super::WireError;
use super::header::Command;

/// The protocol version this implementation speaks: 0.0, as QEMU's
/// client proposes it (a server answers with a minor no higher than the
/// client's).
pub const MAJOR: u16 = 0;
pub const MINOR: u16 = 0;

/// What a peer receives when it does not say: the protocol's defaults.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
pub const DEFAULT_PGSIZES: u64 = 4096;
/// Our extension's capability key: see [`Capabilities::register_mirror`].
pub const REGISTER_MIRROR_KEY: &str = "vmm_register_mirror";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Most fds the sender takes in one message.
    pub max_msg_fds: u32,
    /// Largest data transfer (region and DMA reads and writes) it takes.
    pub max_data_xfer_size: u64,
    pub max_dma_maps: u32,
    /// DMA page sizes it supports, or'ed together.
    pub pgsizes: u64,
    /// Server-to-client commands on a socket of their own.
    pub twin_socket: bool,
    /// In a reply with `twin_socket`: which of its fds is that socket.
    pub twin_socket_fd_index: Option<u32>,
    pub write_multiple: bool,
    /// Our extension (`vmm_register_mirror`): a client proposes it when it
    /// can take a register mirror page, and a server that offers one
    /// (command [`Command::RegisterMirror`]) says so in its reply only
    /// then. Peers that do not know the key ignore it, as unknown keys
    /// are ignored here.
    pub register_mirror: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: DEFAULT_PGSIZES,
            twin_socket: false,
            twin_socket_fd_index: None,
            write_multiple: false,
            register_mirror: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub caps: Capabilities,
}

impl Version {
    pub fn encode(&self) -> Vec<u8> {
        let c = &self.caps;
        let mut caps = json!({
            "max_msg_fds": c.max_msg_fds,
            "max_data_xfer_size": c.max_data_xfer_size,
            "max_dma_maps": c.max_dma_maps,
            "pgsizes": c.pgsizes,
        });
        if c.twin_socket || c.twin_socket_fd_index.is_some() {
            let mut twin = json!({ "supported": c.twin_socket });
            if let Some(i) = c.twin_socket_fd_index {
                twin["fd_index"] = json!(i);
            }
            caps["twin_socket"] = twin;
        }
        if c.write_multiple {
            caps["write_multiple"] = json!(true);
        }
        if c.register_mirror {
            caps[REGISTER_MIRROR_KEY] = json!(true);
        }
        let text = json!({ "capabilities": caps }).to_string();
        let mut out = Vec::with_capacity(4 + text.len() + 1);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.push(0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < 4 {
            return Err(WireError::PayloadSize {
                command: Command::Version,
                size: bytes.len(),
                expected: "at least 4 bytes",
            });
        }
        let major = u16::from_le_bytes([bytes[0], bytes[1]]);
        let minor = u16::from_le_bytes([bytes[2], bytes[3]]);
        let text = &bytes[4..];
        // The NUL ends the text; nothing may follow it.
        let text = match text.iter().position(|&b| b == 0) {
            Some(n) if text[n..].iter().all(|&b| b == 0) => &text[..n],
            Some(_) => return Err(caps_error("bytes after the terminating NUL")),
            None => text,
        };
        let caps = if text.iter().all(u8::is_ascii_whitespace) {
            Capabilities::default()
        } else {
            parse(text)?
        };
        Ok(Version { major, minor, caps })
    }
}

fn caps_error(why: impl Into<String>) -> WireError {
    WireError::Capabilities(why.into())
}

fn parse(text: &[u8]) -> Result<Capabilities, WireError> {
    let value: Value = serde_json::from_slice(text).map_err(|e| caps_error(e.to_string()))?;
    let top = value
        .as_object()
        .ok_or_else(|| caps_error("not a JSON object"))?;
    let mut caps = Capabilities::default();
    let Some(given) = top.get("capabilities") else {
        return Ok(caps);
    };
    let given = given
        .as_object()
        .ok_or_else(|| caps_error("\"capabilities\" is not an object"))?;
    if let Some(n) = number(given, "max_msg_fds")? {
        caps.max_msg_fds = narrow(n, "max_msg_fds")?;
    }
    if let Some(n) = number(given, "max_data_xfer_size")? {
        caps.max_data_xfer_size = n;
    }
    if let Some(n) = number(given, "max_dma_maps")? {
        caps.max_dma_maps = narrow(n, "max_dma_maps")?;
    }
    if let Some(n) = number(given, "pgsizes")? {
        caps.pgsizes = n;
    }
    if let Some(b) = boolean(given, "write_multiple")? {
        caps.write_multiple = b;
    }
    if let Some(b) = boolean(given, REGISTER_MIRROR_KEY)? {
        caps.register_mirror = b;
    }
    if let Some(twin) = given.get("twin_socket") {
        let twin = twin
            .as_object()
            .ok_or_else(|| caps_error("\"twin_socket\" is not an object"))?;
        caps.twin_socket = boolean(twin, "supported")?.unwrap_or(false);
        caps.twin_socket_fd_index = number(twin, "fd_index")?
            .map(|n| narrow(n, "twin_socket.fd_index"))
            .transpose()?;
    }
    Ok(caps)
}

fn number(object: &Map<String, Value>, key: &str) -> Result<Option<u64>, WireError> {
    object
        .get(key)
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| caps_error(format!("\"{key}\" is not an unsigned integer")))
        })
        .transpose()
}

fn boolean(object: &Map<String, Value>, key: &str) -> Result<Option<bool>, WireError> {
    object
        .get(key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| caps_error(format!("\"{key}\" is not true or false")))
        })
        .transpose()
}

fn narrow(n: u64, key: &str) -> Result<u32, WireError> {
    u32::try_from(n).map_err(|_| caps_error(format!("\"{key}\" is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_round_trips_and_ends_in_a_nul() {
        let v = Version {
            major: MAJOR,
            minor: MINOR,
            caps: Capabilities {
                max_msg_fds: 8,
                twin_socket: true,
                twin_socket_fd_index: Some(0),
                register_mirror: true,
                ..Capabilities::default()
            },
        };
        let bytes = v.encode();
        assert_eq!(bytes[..4], [0, 0, 0, 0]);
        assert_eq!(*bytes.last().unwrap(), 0);
        assert_eq!(Version::decode(&bytes).unwrap(), v);
    }

    #[test]
    fn missing_keys_take_the_protocol_defaults_and_unknown_ones_are_ignored() {
        let mut bytes = vec![0, 0, 1, 0];
        bytes.extend_from_slice(
            br#"{"capabilities":{"max_msg_fds":4,"migration":{"pgsize":4096}},"x":1}"#,
        );
        let v = Version::decode(&bytes).unwrap();
        assert_eq!(v.caps.max_msg_fds, 4);
        assert_eq!(v.caps.max_data_xfer_size, DEFAULT_MAX_DATA_XFER_SIZE);
        assert_eq!(
            Version::decode(&[0, 0, 1, 0]).unwrap().caps,
            Capabilities::default()
        );
    }

    #[test]
    fn malformed_capabilities_are_errors() {
        for text in [
            &b"{"[..],
            b"[1]",
            br#"{"capabilities":7}"#,
            br#"{"capabilities":{"max_msg_fds":-1}}"#,
            br#"{"capabilities":{"max_msg_fds":4294967296}}"#,
            br#"{"capabilities":{"pgsizes":"4096"}}"#,
            br#"{"capabilities":{"twin_socket":{"supported":1}}}"#,
            b"{}\0garbage",
        ] {
            let mut bytes = vec![0, 0, 1, 0];
            bytes.extend_from_slice(text);
            assert!(
                Version::decode(&bytes).is_err(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert!(Version::decode(&[0, 0, 1]).is_err());
    }
}
