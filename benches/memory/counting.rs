//! The counting global allocator of the memory bench: `System` with live bytes and live
//! allocations counted in atomics, by size class, plus the bytes the same blocks would take
//! with mimalloc (the server's allocator); snapshots of those counters and their differences.

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Live allocations are counted by requested size in classes of this many bytes ...
pub const CLASS_BYTES: usize = 16;
/// ... up to `(CLASSES - 1) * CLASS_BYTES`; the last class holds everything larger.
pub const CLASSES: usize = 257;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// The same blocks as mimalloc (the server's allocator, `src/main.rs`) would size them.
static LIVE_MIMALLOC_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCS: AtomicI64 = AtomicI64::new(0);
static CLASS_COUNT: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static CLASS_SUM: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

/// `System` with every live byte and allocation counted (relaxed atomics: a snapshot taken
/// while other threads allocate is a moment's approximation; the settings wait until the
/// engine is quiet before taking one).
struct Counting;

fn class_of(size: usize) -> usize {
    size.div_ceil(CLASS_BYTES).min(CLASSES - 1)
}

/// The block mimalloc hands out for `size` bytes: exact word multiples up to 8 words, then 4
/// size classes per power of two (`mi_bin` in mimalloc's `page-queue.c`, v2 and v3 alike);
/// large blocks rounded to pages.
pub fn mimalloc_block(size: usize) -> usize {
    const WORD: usize = size_of::<usize>();
    const LARGE: usize = 512 * 1024;
    let words = size.div_ceil(WORD);
    if words <= 8 {
        return words.max(1) * WORD;
    }
    if size > LARGE {
        return size.div_ceil(4096) * 4096;
    }
    let w = words - 1;
    let shift = (usize::BITS - 1 - w.leading_zeros()) - 2;
    (((w >> shift) + 1) << shift) * WORD
}

fn count(size: usize, sign: i64) {
    let bytes = size as i64 * sign;
    LIVE_BYTES.fetch_add(bytes, Relaxed);
    LIVE_MIMALLOC_BYTES.fetch_add(mimalloc_block(size) as i64 * sign, Relaxed);
    LIVE_ALLOCS.fetch_add(sign, Relaxed);
    let class = class_of(size);
    CLASS_COUNT[class].fetch_add(sign, Relaxed);
    CLASS_SUM[class].fetch_add(bytes, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received; `GlobalAlloc::alloc`'s contract is the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; on failure the old block stays allocated and counted.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The live heap at one moment. Taking it allocates nothing.
#[derive(Clone, Copy)]
pub struct Snapshot {
    bytes: i64,
    mimalloc_bytes: i64,
    allocs: i64,
    classes: [(i64, i64); CLASSES],
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut classes = [(0, 0); CLASSES];
        for (class, slot) in classes.iter_mut().enumerate() {
            *slot = (
                CLASS_COUNT[class].load(Relaxed),
                CLASS_SUM[class].load(Relaxed),
            );
        }
        Snapshot {
            bytes: LIVE_BYTES.load(Relaxed),
            mimalloc_bytes: LIVE_MIMALLOC_BYTES.load(Relaxed),
            allocs: LIVE_ALLOCS.load(Relaxed),
            classes,
        }
    }

    /// What was allocated and is still live since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Delta {
        let mut classes = [(0, 0); CLASSES];
        for (class, slot) in classes.iter_mut().enumerate() {
            *slot = (
                self.classes[class].0 - earlier.classes[class].0,
                self.classes[class].1 - earlier.classes[class].1,
            );
        }
        Delta {
            bytes: self.bytes - earlier.bytes,
            mimalloc_bytes: self.mimalloc_bytes - earlier.mimalloc_bytes,
            allocs: self.allocs - earlier.allocs,
            classes,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Delta {
    pub bytes: i64,
    pub mimalloc_bytes: i64,
    pub allocs: i64,
    pub classes: [(i64, i64); CLASSES],
}

impl Delta {
    pub fn bytes_per(&self, customers: usize) -> f64 {
        self.bytes as f64 / customers as f64
    }

    pub fn mimalloc_bytes_per(&self, customers: usize) -> f64 {
        self.mimalloc_bytes as f64 / customers as f64
    }

    pub fn allocs_per(&self, customers: usize) -> f64 {
        self.allocs as f64 / customers as f64
    }
}

/// Resident set size of this process (Linux), for comparison with the allocator's figures.
pub fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as i64
}

pub fn sum(deltas: &[&Delta], minus: &[&Delta]) -> Delta {
    let mut total = Delta {
        bytes: 0,
        mimalloc_bytes: 0,
        allocs: 0,
        classes: [(0, 0); CLASSES],
    };
    for (delta, sign) in deltas
        .iter()
        .map(|d| (d, 1))
        .chain(minus.iter().map(|d| (d, -1)))
    {
        total.bytes += sign * delta.bytes;
        total.mimalloc_bytes += sign * delta.mimalloc_bytes;
        total.allocs += sign * delta.allocs;
        for (slot, class) in total.classes.iter_mut().zip(delta.classes) {
            *slot = (slot.0 + sign * class.0, slot.1 + sign * class.1);
        }
    }
    total
}
