//! The server's socket, shared by the session and by DMA through the
//! client (DMA_READ, DMA_WRITE) for guest RAM the client mapped without an
//! fd. Such a transfer is a request of ours in the middle of the client's:
//! while we wait for its reply, the client's own commands keep coming (a
//! posted register write, the next read), so they are queued and served in
//! order once the transfer is done.
//!
//! Transfers run only on the session's thread, the one that reads the
//! socket: every access by message and every disk completion runs there,
//! and so does all DMA a client without fds can cause, unless it also
//! takes region fds (served by their own threads). There a transfer fails
//! as an access outside RAM would, and the device reports it to the guest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

use super::connection::{Connection, ConnectionError, Message};
use super::header::{Command, Header, Kind};
use super::messages::DmaAccess;
use super::version;
use crate::device_model::DmaByMessage;

/// How long the client may take to answer one transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Wire {
    conn: Mutex<Connection>,
    /// The client's commands that arrived while we waited for a reply.
    queued: Mutex<VecDeque<Message>>,
    /// The thread that reads the socket, from the first message on.
    reader: OnceLock<ThreadId>,
    next_id: AtomicU16,
    /// The most data one transfer message carries: the client's limit,
    /// capped by what we take in one message.
    max_transfer: AtomicU64,
    off_thread_logged: AtomicBool,
}

impl Wire {
    pub fn new(conn: Connection) -> Self {
        Wire {
            conn: Mutex::new(conn),
            queued: Mutex::default(),
            reader: OnceLock::new(),
            // Apart from the client's ids only for the log's sake: replies
            // are told apart by their direction.
            next_id: AtomicU16::new(0x8000),
            max_transfer: AtomicU64::new(version::DEFAULT_MAX_DATA_XFER_SIZE),
            off_thread_logged: AtomicBool::new(false),
        }
    }

    pub fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("connection lock poisoned")
    }

    /// The client's limit on one transfer, from its VERSION.
    pub fn set_client_max_transfer(&self, max: u64) {
        let ours = version::DEFAULT_MAX_DATA_XFER_SIZE;
        self.max_transfer
            .store(max.clamp(1, ours), Ordering::Relaxed);
    }

    /// The next command: a queued one first, else one from the socket.
    pub fn next_message(&self) -> Result<Message, ConnectionError> {
        let _ = self.reader.get_or_init(|| std::thread::current().id());
        if let Some(m) = self.queued().pop_front() {
            return Ok(m);
        }
        self.connection().recv()
    }

    /// Commands wait in the queue: serve them without waiting for the socket.
    pub fn has_queued(&self) -> bool {
        !self.queued().is_empty()
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.queued.lock().expect("queue lock poisoned")
    }

    /// One request of ours and its reply's payload.
    fn call(&self, command: Command, payload: &[u8]) -> Result<Vec<u8>, String> {
        if self.reader.get() != Some(&std::thread::current().id()) {
            if !self.off_thread_logged.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "vfio-user: DMA through the client from a region fd thread is not \
                     supported (the client shared guest RAM without an fd and also took \
                     region fds); such transfers fail"
                );
            }
            return Err("not on the session's thread".into());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.connection();
        conn.send(
            &Header::command(id, command, payload.len(), false),
            payload,
            &[],
        )
        .map_err(|e| format!("cannot send {command:?}: {e}"))?;
        // poll, not SO_RCVTIMEO: the sandboxed remote may not setsockopt.
        let timeout_ms = TRANSFER_TIMEOUT.as_millis() as libc::c_int;
        loop {
            use std::os::fd::AsRawFd;
            // Any event, a hang-up included, goes to recv, which names it.
            let mut fds = [crate::sys::pollin(Some(conn.socket().as_raw_fd()))];
            match crate::sys::poll(&mut fds, timeout_ms) {
                Ok(n) if n > 0 => {}
                Ok(_) => {
                    return Err(format!(
                        "the client did not answer {command:?} within {TRANSFER_TIMEOUT:?}"
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let m = match conn.recv() {
                Ok(m) => m,
                Err(e) => return Err(format!("no reply to {command:?}: {e}")),
            };
            match m.header.kind {
                Kind::Command { .. } => self.queued().push_back(m),
                Kind::Reply { .. } if m.header.id != id || m.header.command != command as u16 => {
                    return Err(format!(
                        "a reply (id {}, command {}) to a request we did not make",
                        m.header.id, m.header.command
                    ));
                }
                Kind::Reply { error: Some(errno) } => {
                    return Err(format!("the client refused {command:?}: errno {errno}"));
                }
                Kind::Reply { error: None } if !m.fds.is_empty() => {
                    return Err(format!("fds with the reply to {command:?}"));
                }
                Kind::Reply { error: None } => return Ok(m.payload),
            }
        }
    }

    fn chunk(&self) -> usize {
        self.max_transfer.load(Ordering::Relaxed) as usize
    }
}

impl DmaByMessage for Wire {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        let chunk = self.chunk();
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            let address = addr + (i * chunk) as u64;
            let request = DmaAccess {
                address,
                count: part.len() as u64,
                data: Vec::new(),
            };
            let reply = self.call(Command::DmaRead, &request.encode())?;
            let got = DmaAccess::decode(Command::DmaRead, &reply, true, part.len() as u64)
                .map_err(|e| e.to_string())?;
            if (got.address, got.count) != (address, part.len() as u64) {
                return Err(format!(
                    "the client answered {:#x}+{:#x} for {address:#x}+{:#x}",
                    got.address,
                    got.count,
                    part.len()
                ));
            }
            part.copy_from_slice(&got.data);
        }
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), String> {
        let chunk = self.chunk();
        for (i, part) in buf.chunks(chunk).enumerate() {
            let request = DmaAccess {
                address: addr + (i * chunk) as u64,
                count: part.len() as u64,
                data: part.to_vec(),
            };
            // The reply is the header alone (QEMU) or echoes address and
            // count (the specification): either says it is done.
            let reply = self.call(Command::DmaWrite, &request.encode())?;
            if !reply.is_empty() && reply.len() != 16 {
                return Err(format!("a DMA_WRITE reply of {} bytes", reply.len()));
            }
        }
        Ok(())
    }
}
