//! Sending and receiving mpqemu messages with their fds over a stream
//! socket.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::mpqemu::{self, DecodeError, HEADER_SIZE, MAX_FDS, Message};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("socket error: {0}")]
    Io(#[source] std::io::Error),
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("expected a reply (RET), got command {0}")]
    UnexpectedReply(i32),
}

impl From<std::io::Error> for ChannelError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ChannelError::Closed,
            _ => ChannelError::Io(e),
        }
    }
}

pub struct Channel {
    sock: UnixStream,
    timeout: Option<Duration>,
}

impl Channel {
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            sock,
            timeout: None,
        }
    }

    /// Bounds how long a receive may wait, so a peer that stops answering
    /// cannot hang the caller.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    pub fn send(&mut self, msg: &Message) -> Result<(), ChannelError> {
        let enc = msg.encode();
        let fds: Vec<RawFd> = enc.fds.iter().map(|f| f.as_raw_fd()).collect();
        crate::sys::send_with_fds(&self.sock, &enc.bytes, &fds)?;
        Ok(())
    }

    fn map_timeout(&self, e: ChannelError) -> ChannelError {
        match (&e, self.timeout) {
            (ChannelError::Io(io), Some(t))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                ChannelError::Timeout(t)
            }
            _ => e,
        }
    }

    /// Receives and validates one message.
    pub fn recv(&mut self) -> Result<Message, ChannelError> {
        self.recv_inner().map_err(|e| self.map_timeout(e))
    }

    fn recv_inner(&mut self) -> Result<Message, ChannelError> {
        let mut header = [0u8; HEADER_SIZE];
        let (got, fds) = crate::sys::recv_with_fds(&self.sock, &mut header, MAX_FDS)?;
        if got == 0 {
            return Err(ChannelError::Closed);
        }
        self.sock.read_exact(&mut header[got..])?;
        let (cmd, size) = mpqemu::parse_header(&header)?;
        let mut payload = vec![0u8; size];
        self.sock.read_exact(&mut payload)?;
        Ok(Message::decode(cmd, &payload, fds)?)
    }

    /// Sends a request and returns whatever message answers it.
    pub fn exchange(&mut self, msg: &Message) -> Result<Message, ChannelError> {
        self.send(msg)?;
        self.recv()
    }

    /// Sends a request and waits for its RET.
    pub fn request(&mut self, msg: &Message) -> Result<Option<u64>, ChannelError> {
        self.send(msg)?;
        match self.recv()? {
            Message::Ret(v) => Ok(v),
            other => Err(ChannelError::UnexpectedReply(other.command())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Seek, Write};

    #[test]
    fn messages_and_fds_cross_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        let mut memfd = tempfile_with(b"guest ram");
        a.send(&Message::SyncSysmem {
            regions: vec![mpqemu::SysmemRegion {
                gpa: 0,
                size: 4096,
                offset: 0,
            }],
            fds: vec![memfd.try_clone().unwrap()],
        })
        .unwrap();
        match b.recv().unwrap() {
            Message::SyncSysmem { regions, mut fds } => {
                assert_eq!(regions.len(), 1);
                let mut s = String::new();
                fds[0].rewind().unwrap();
                fds[0].read_to_string(&mut s).unwrap();
                assert_eq!(s, "guest ram");
            }
            other => panic!("{other:?}"),
        }
        memfd.rewind().unwrap();
        a.send(&Message::BarRead {
            addr: 0x10,
            size: 4,
            memory: true,
        })
        .unwrap();
        assert!(matches!(
            b.recv().unwrap(),
            Message::BarRead { addr: 0x10, .. }
        ));
    }

    #[test]
    fn garbage_and_eof_are_errors_not_panics() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut b = Channel::new(b);
        let mut raw = a.try_clone().unwrap();
        raw.write_all(&[0xff; 16]).unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::Decode(_))));
        drop(raw);
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    }

    #[test]
    fn silent_peer_times_out() {
        let (_a, b) = UnixStream::pair().unwrap();
        let mut b = Channel::new(b);
        b.set_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::Timeout(_))));
    }

    fn tempfile_with(content: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!("vmm-chan-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(content).unwrap();
        f
    }
}
