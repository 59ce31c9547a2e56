//! Which fan-out directories of a dir store (`shards/ab/` and `shards/ab/cd/`) are known to exist, one bit each,
//! so a put skips the mkdir for them: a mkdir that only finds the directory already there still takes the
//! parent's lock and a journal handle, and on a busy disk it waited about as long as the write it preceded.
//! A bit is cleared when a put finds its directory gone (someone removed it); the put then creates it again.

use std::sync::atomic::{AtomicU64, Ordering};

/// 256 first-level and 65,536 second-level directories: 8 KiB of bits per store.
pub struct KnownDirs {
    bits: Vec<AtomicU64>,
}

impl std::fmt::Debug for KnownDirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KnownDirs { .. }")
    }
}

/// A fan-out directory: `shards/ab/` (`Top(0xab)`) or `shards/ab/cd/` (`Leaf(0xab, 0xcd)`).
#[derive(Clone, Copy)]
pub enum FanoutDir {
    Top(u8),
    Leaf(u8, u8),
}

impl FanoutDir {
    fn bit(self) -> usize {
        match self {
            FanoutDir::Top(a) => a as usize,
            FanoutDir::Leaf(a, b) => 256 + ((a as usize) << 8 | b as usize),
        }
    }
}

impl KnownDirs {
    pub fn new() -> KnownDirs {
        KnownDirs {
            bits: (0..(256 + 65_536) / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn contains(&self, dir: FanoutDir) -> bool {
        let bit = dir.bit();
        self.bits[bit / 64].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
    }

    pub fn insert(&self, dir: FanoutDir) {
        let bit = dir.bit();
        self.bits[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }

    pub fn remove(&self, dir: FanoutDir) {
        let bit = dir.bit();
        self.bits[bit / 64].fetch_and(!(1 << (bit % 64)), Ordering::Relaxed);
    }
}

impl Default for KnownDirs {
    fn default() -> Self {
        KnownDirs::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_independent() {
        let k = KnownDirs::new();
        let dirs = [
            FanoutDir::Top(0),
            FanoutDir::Top(255),
            FanoutDir::Leaf(0, 0),
            FanoutDir::Leaf(0, 255),
            FanoutDir::Leaf(255, 255),
        ];
        for d in dirs {
            assert!(!k.contains(d));
        }
        k.insert(FanoutDir::Leaf(0, 255));
        k.insert(FanoutDir::Top(255));
        assert!(k.contains(FanoutDir::Leaf(0, 255)) && k.contains(FanoutDir::Top(255)));
        assert!(!k.contains(FanoutDir::Leaf(0, 0)) && !k.contains(FanoutDir::Leaf(255, 255)));
        assert!(!k.contains(FanoutDir::Top(0)));
        k.remove(FanoutDir::Leaf(0, 255));
        assert!(!k.contains(FanoutDir::Leaf(0, 255)) && k.contains(FanoutDir::Top(255)));
    }
}
