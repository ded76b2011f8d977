//! Emulated device memory: every allocation is a host vector at a device
//! address that is never reused, so a stale pointer is caught as a use after
//! free instead of reading someone else's data.

use std::collections::BTreeMap;

/// The first device address handed out (well away from null and from the
/// interpreter's shared and local windows).
pub const GLOBAL_BASE: u64 = 0x7000_0000_0000;
/// Allocations start on this alignment (cudaMalloc gives 256 bytes).
pub const ALLOC_ALIGN: u64 = 256;
/// Unmapped bytes left after every allocation, so an overrun lands nowhere.
const GUARD: u64 = 4096;

/// One allocation: its bytes while live, only its size once freed.
#[derive(Debug)]
pub struct Alloc {
    /// Requested size in bytes.
    pub len: u64,
    /// The bytes (empty once freed).
    pub data: Vec<u8>,
    /// False once freed.
    pub live: bool,
    /// The emulated device that owns it.
    pub device: usize,
}

/// Why an access was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No allocation holds the address (or the access runs past its end).
    OutOfBounds {
        /// First byte accessed.
        addr: u64,
        /// Bytes accessed.
        len: u64,
    },
    /// The allocation that held the address was freed.
    UseAfterFree {
        /// First byte accessed.
        addr: u64,
        /// Base of the freed allocation.
        base: u64,
    },
    /// `free` of an address that is not the base of a live allocation.
    BadFree {
        /// The address passed to free.
        addr: u64,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::OutOfBounds { addr, len } => write!(f, "{len}-byte access at {addr:#x} outside every allocation"),
            Fault::UseAfterFree { addr, base } => {
                write!(f, "access at {addr:#x} to the freed allocation at {base:#x} (use after free)")
            }
            Fault::BadFree { addr } => write!(f, "free of {addr:#x}, not the start of a live allocation"),
        }
    }
}

/// All emulated device memory of the process (every device shares one
/// address space, as unified addressing does).
#[derive(Debug)]
pub struct Memory {
    allocs: BTreeMap<u64, Alloc>,
    next: u64,
    /// Bytes in live allocations, per device (freed ones stay in `allocs`
    /// to catch use after free, so summing them would grow with every step).
    used: BTreeMap<usize, u64>,
}

impl Default for Memory {
    fn default() -> Self {
        Memory { allocs: BTreeMap::new(), next: GLOBAL_BASE, used: BTreeMap::new() }
    }
}

impl Memory {
    /// Allocates `bytes` (contents: a poison pattern, as fresh device memory
    /// holds garbage) and returns its address.
    pub fn alloc(&mut self, bytes: usize, device: usize) -> u64 {
        let addr = self.next;
        let len = bytes as u64;
        self.next = (addr + len.max(1) + GUARD).next_multiple_of(ALLOC_ALIGN);
        self.allocs.insert(addr, Alloc { len, data: vec![0xa5; bytes], live: true, device });
        *self.used.entry(device).or_default() += len;
        addr
    }

    /// Frees the allocation that starts at `addr`.
    pub fn free(&mut self, addr: u64) -> Result<(), Fault> {
        match self.allocs.get_mut(&addr) {
            Some(a) if a.live => {
                a.live = false;
                a.data = Vec::new();
                *self.used.entry(a.device).or_default() -= a.len;
                Ok(())
            }
            _ => Err(Fault::BadFree { addr }),
        }
    }

    /// The allocation holding `[addr, addr + len)`, and the offset of `addr` in it.
    pub fn find(&self, addr: u64, len: u64) -> Result<(u64, &Alloc), Fault> {
        let (&base, a) = self.allocs.range(..=addr).next_back().ok_or(Fault::OutOfBounds { addr, len })?;
        if addr.saturating_add(len) > base + a.len {
            return Err(Fault::OutOfBounds { addr, len });
        }
        if !a.live {
            return Err(Fault::UseAfterFree { addr, base });
        }
        Ok((base, a))
    }

    /// The bytes `[addr, addr + len)`.
    pub fn slice(&self, addr: u64, len: usize) -> Result<&[u8], Fault> {
        let (base, a) = self.find(addr, len as u64)?;
        let at = (addr - base) as usize;
        Ok(&a.data[at..at + len])
    }

    /// The bytes `[addr, addr + len)`, writable.
    pub fn slice_mut(&mut self, addr: u64, len: usize) -> Result<&mut [u8], Fault> {
        let (base, _) = self.find(addr, len as u64)?;
        let a = self.allocs.get_mut(&base).expect("found above");
        let at = (addr - base) as usize;
        Ok(&mut a.data[at..at + len])
    }

    /// The live allocation that starts at `addr` (its size and device).
    pub fn allocation(&self, addr: u64) -> Option<&Alloc> {
        self.allocs.get(&addr).filter(|a| a.live)
    }

    /// Bytes in live allocations on `device`.
    pub fn used(&self, device: usize) -> u64 {
        self.used.get(&device).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_checked_against_live_allocations() {
        let mut m = Memory::default();
        let a = m.alloc(16, 0);
        m.slice_mut(a, 16).unwrap().copy_from_slice(&[7; 16]);
        assert_eq!(m.slice(a + 8, 8).unwrap(), &[7; 8]);
        assert_eq!(m.slice(a + 9, 8), Err(Fault::OutOfBounds { addr: a + 9, len: 8 }));
        assert!(m.slice(a - 1, 1).is_err());
        m.free(a).unwrap();
        assert_eq!(m.slice(a, 4), Err(Fault::UseAfterFree { addr: a, base: a }));
        assert_eq!(m.free(a), Err(Fault::BadFree { addr: a }));
        let b = m.alloc(16, 0);
        assert!(b > a + 16, "addresses are never reused");
    }
}
