//! Counts the heap: everything, and separately what the device allocates
//! (inside a [`DeviceScope`]). A global allocator that forwards to the
//! system's; shared by `runtime/benches/conn_memory.rs` and the runtime's
//! memory tests (`#[path]`), each a binary of its own that declares it once.

#![allow(
    unsafe_code,
    reason = "a global allocator implements the unsafe `GlobalAlloc` trait"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// Forwards to the system allocator and counts live bytes and blocks.
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// Set while the device runs on this thread: what other threads (a test
    /// harness's) allocate meanwhile is not the device's.
    static IN_DEVICE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is in a [`DeviceScope`] (false while its
/// thread-locals are being torn down).
fn in_device() -> bool {
    IN_DEVICE.try_with(Cell::get).unwrap_or(false)
}
static ALL_BYTES: AtomicIsize = AtomicIsize::new(0);
static DEVICE_BYTES: AtomicIsize = AtomicIsize::new(0);
static DEVICE_BLOCKS: AtomicIsize = AtomicIsize::new(0);
static DEVICE_PEAK: AtomicIsize = AtomicIsize::new(0);
static DEVICE_ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

fn grew(bytes: isize, blocks: isize) {
    ALL_BYTES.fetch_add(bytes, Relaxed);
    if in_device() {
        if blocks > 0 || bytes > 0 {
            DEVICE_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        let now = DEVICE_BYTES.fetch_add(bytes, Relaxed) + bytes;
        DEVICE_BLOCKS.fetch_add(blocks, Relaxed);
        DEVICE_PEAK.fetch_max(now, Relaxed);
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`,
// which upholds the `GlobalAlloc` contract; the counting touches only
// atomics and a `const` thread-local `Cell` (no lazy initialisation, no
// destructor), and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as isize, 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size() as isize, 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        grew(-(layout.size() as isize), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller
        // checked `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size as isize - layout.size() as isize, 0);
        }
        p
    }
}

/// While alive, allocations and frees count as the device's.
pub struct DeviceScope(bool);

impl DeviceScope {
    pub fn enter() -> Self {
        DeviceScope(IN_DEVICE.replace(true))
    }
}

impl Drop for DeviceScope {
    fn drop(&mut self) {
        IN_DEVICE.set(self.0);
    }
}

/// Live bytes the device allocated.
pub fn device_bytes() -> isize {
    DEVICE_BYTES.load(Relaxed)
}

/// Live blocks the device allocated.
pub fn device_blocks() -> isize {
    DEVICE_BLOCKS.load(Relaxed)
}

/// Calls the device made that took memory from the allocator (a new block,
/// or a block grown), since the program started.
#[allow(
    dead_code,
    reason = "the allocation tests use it, the memory bench does not"
)]
pub fn device_allocations() -> isize {
    DEVICE_ALLOCATIONS.load(Relaxed)
}

/// Live bytes, device and client together.
pub fn all_bytes() -> isize {
    ALL_BYTES.load(Relaxed)
}

/// The device's most live bytes since [`reset_peak`].
pub fn device_peak() -> isize {
    DEVICE_PEAK.load(Relaxed)
}

pub fn reset_peak() {
    DEVICE_PEAK.store(device_bytes(), Relaxed);
}
