//! The last DMA writes the chip made into guest memory, for state dumps: a
//! guest that crashed after a completion often shows where the device
//! wrote last.

use std::collections::VecDeque;
use std::time::Instant;

/// How many writes a dump shows.
pub const DMA_LOG_LEN: usize = 64;

#[derive(Default)]
pub struct DmaLog {
    writes: VecDeque<(u64, usize, Instant)>,
}

impl DmaLog {
    pub fn record(&mut self, addr: u64, len: usize) {
        if self.writes.len() == DMA_LOG_LEN {
            self.writes.pop_front();
        }
        self.writes.push_back((addr, len, Instant::now()));
    }

    /// Oldest first: "addr+len (age ms ago)".
    pub fn describe(&self, now: Instant) -> String {
        if self.writes.is_empty() {
            return "none".into();
        }
        self.writes
            .iter()
            .map(|(addr, len, at)| {
                format!(
                    "{addr:#x}+{len:#x} ({:.1} ms ago)",
                    now.duration_since(*at).as_secs_f64() * 1e3
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_writes_oldest_first() {
        let mut log = DmaLog::default();
        assert_eq!(log.describe(Instant::now()), "none");
        for i in 0..(DMA_LOG_LEN as u64 + 3) {
            log.record(0x1000 * i, 4);
        }
        let text = log.describe(Instant::now());
        assert_eq!(text.matches("+0x4 (").count(), DMA_LOG_LEN);
        assert!(text.starts_with("0x3000+0x4"), "{text}");
        assert!(!text.contains("0x2000+"), "{text}");
        assert!(text.contains(&format!("{:#x}+0x4", 0x1000 * (DMA_LOG_LEN as u64 + 2))));
    }
}
