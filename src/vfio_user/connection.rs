//! One end of a vfio-user connection: whole messages, header and payload,
//! with the fds that came alongside, over a stream socket.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::WireError;
use super::header::{HEADER_SIZE, Header};

/// Most fds we take with one message (DMA_MAP brings one, SET_IRQS one per
/// interrupt).
pub const MAX_FDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("socket error: {0}")]
    Io(#[source] io::Error),
    #[error("malformed message: {0}")]
    Wire(#[from] WireError),
}

impl From<io::Error> for ConnectionError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => ConnectionError::Closed,
            _ => ConnectionError::Io(e),
        }
    }
}

/// A message as received.
#[derive(Debug)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<File>,
}

pub struct Connection {
    sock: UnixStream,
    /// The largest message taken, header included.
    max_size: usize,
    timeout: Option<Duration>,
}

impl Connection {
    /// `max_size` bounds what a peer can make us allocate.
    pub fn new(sock: UnixStream, max_size: usize) -> Self {
        Connection {
            sock,
            max_size,
            timeout: None,
        }
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Bounds how long a receive waits for the peer.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    pub fn send(&self, header: &Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        debug_assert_eq!(header.payload_len(), payload.len());
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(payload);
        crate::sys::send_with_fds(&self.sock, &bytes, fds)
    }

    /// Receives one message: a header that checks out, then its payload.
    pub fn recv(&mut self) -> Result<Message, ConnectionError> {
        self.recv_inner().map_err(|e| match (e, self.timeout) {
            (ConnectionError::Io(io), Some(t))
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ConnectionError::Timeout(t)
            }
            (e, _) => e,
        })
    }

    fn recv_inner(&mut self) -> Result<Message, ConnectionError> {
        let mut head = [0u8; HEADER_SIZE];
        let (got, fds) = crate::sys::recv_with_fds(&self.sock, &mut head, MAX_FDS)?;
        if got == 0 {
            return Err(ConnectionError::Closed);
        }
        self.sock.read_exact(&mut head[got..])?;
        let header = Header::decode(&head, self.max_size)?;
        let mut payload = vec![0u8; header.payload_len()];
        self.sock.read_exact(&mut payload)?;
        Ok(Message {
            header,
            payload,
            fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::Command;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_message_and_its_fd_cross_and_a_lying_size_stops_at_the_header() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, mut b) = (Connection::new(a, 4096), Connection::new(b, 4096));
        let file = File::open("/dev/null").unwrap();
        let header = Header::command(3, Command::DmaMap, 4, false);
        a.send(&header, &[1, 2, 3, 4], &[file.as_raw_fd()]).unwrap();
        let m = b.recv().unwrap();
        assert_eq!(
            (m.header, m.payload, m.fds.len()),
            (header, vec![1, 2, 3, 4], 1)
        );
        let mut huge = Header::command(4, Command::RegionWrite, 0, false).encode();
        huge[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        a.socket().write_all(&huge).unwrap();
        assert!(matches!(b.recv(), Err(ConnectionError::Wire(_))));
        drop(a);
        assert!(matches!(b.recv(), Err(ConnectionError::Closed)));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, b) = UnixStream::pair().unwrap();
        let mut b = Connection::new(b, 4096);
        b.set_timeout(Some(Duration::from_millis(30))).unwrap();
        assert!(matches!(b.recv(), Err(ConnectionError::Timeout(_))));
    }
}
