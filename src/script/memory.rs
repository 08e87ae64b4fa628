//! What scripts may allocate. Rhai's own size limits re-measure a whole
//! value (all of `this`) on every assignment into it, so the sandbox turns
//! them off and bounds memory here instead:
//! - the host's allocator counts each thread's net bytes; a callback is
//!   armed with `sandbox.max_callback_memory` and stopped at its next
//!   operation once it holds more than that ([`over_budget`]);
//! - functions that can allocate far more than their inputs in one
//!   operation (padding, splitting, printing containers …) ask [`room`]
//!   first (see `guards`);
//! - what the callbacks leave in `this` is measured with [`Footprint`]
//!   against `max_string_size`, `max_array_size` and `max_map_size` once
//!   the bytes they kept add up to a quarter of its last measured size (at
//!   least [`MIN_MEASURE_STEP`]), so a large `this` costs nothing per
//!   assignment and measuring costs O(1) per byte kept.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write;

use rhai::Dynamic;

/// The system allocator, counting every thread's net allocated bytes.
pub struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// This thread's allocation count and the running callback's allowance,
/// in one thread-local so the per-operation check reads it once.
struct ThreadMemory {
    /// Bytes allocated minus bytes freed on this thread (wrapping; only differences matter).
    net: Cell<isize>,
    /// The callback is over its allowance once `net` exceeds this (`isize::MAX`: no
    /// callback; `isize::MIN`: refused, see [`refuse`]).
    ceiling: Cell<isize>,
    /// The running callback's `(net at its start, bytes it may hold)`.
    budget: Cell<Option<(isize, usize)>>,
}

thread_local! {
    static THREAD: ThreadMemory = const {
        ThreadMemory { net: Cell::new(0), ceiling: Cell::new(isize::MAX), budget: Cell::new(None) }
    };
}

fn count(bytes: isize) {
    // `try_with`: the state has no destructor, but never panic inside the allocator.
    let _ = THREAD.try_with(|t| t.net.set(t.net.get().wrapping_add(bytes)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only a thread-local integer. The crate's
// only `unsafe` code.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

fn net() -> isize {
    THREAD.with(|t| t.net.get())
}

/// One callback's memory allowance on this thread, from [`arm`] until
/// dropped (which restores the allowance of an enclosing call, if any).
pub struct Armed {
    start: isize,
    outer: (isize, Option<(isize, usize)>),
}

/// The `net` past which a callback that started at `start` with `limit` is over.
fn ceiling(start: isize, limit: usize) -> isize {
    start.saturating_add(isize::try_from(limit).unwrap_or(isize::MAX))
}

/// Starts a callback that may hold `limit` more bytes than now.
pub fn arm(limit: usize) -> Armed {
    THREAD.with(|t| {
        let start = t.net.get();
        let outer = (t.ceiling.replace(ceiling(start, limit)), t.budget.replace(Some((start, limit))));
        Armed { start, outer }
    })
}

impl Armed {
    /// Bytes the callback holds now beyond what the thread held at its start
    /// (negative if it freed more than it allocated).
    pub fn held(&self) -> isize {
        net().wrapping_sub(self.start)
    }

    /// True if the callback was refused an allocation it could not be told
    /// about: it failed, whatever it returned.
    pub fn refused(&self) -> bool {
        THREAD.with(|t| t.ceiling.get() == isize::MIN)
    }

    /// Ends the allowance: what the callback kept and whether it was refused.
    pub fn finish(self) -> Usage {
        Usage { kept: self.held(), refused: self.refused() }
    }
}

/// What a finished callback did with its allowance.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Bytes it kept (allocated and not freed; negative if it freed more).
    pub kept: isize,
    /// It was refused an allocation it could not be told about ([`refuse`]).
    pub refused: bool,
}

impl Drop for Armed {
    fn drop(&mut self) {
        THREAD.with(|t| {
            t.ceiling.set(self.outer.0);
            t.budget.set(self.outer.1);
        });
    }
}

/// Marks the running callback as refused an allocation where the refusal
/// cannot be returned as an error (Rhai prints a value whose printer fails
/// in full instead): it is stopped at its next operation, or fails when it
/// ends.
pub fn refuse() {
    THREAD.with(|t| {
        if t.budget.get().is_some() {
            t.ceiling.set(isize::MIN);
        }
    });
}

/// The ceiling that stops the running callback at its next operation check
/// without refusing it anything ([`stop_at_next_operation`]).
const STOP: isize = isize::MIN + 1;

/// Stops the running callback at its next operation check, where the
/// sandbox asks why (the series limit) and calls [`clear_stop`]; nothing
/// outside a callback or once it was refused.
pub fn stop_at_next_operation() {
    THREAD.with(|t| {
        if t.budget.get().is_some() && t.ceiling.get() != isize::MIN {
            t.ceiling.set(STOP);
        }
    });
}

/// Gives the running callback its allowance back after
/// [`stop_at_next_operation`].
pub fn clear_stop() {
    THREAD.with(|t| {
        if let (STOP, Some((start, limit))) = (t.ceiling.get(), t.budget.get()) {
            t.ceiling.set(ceiling(start, limit));
        }
    });
}

/// Bytes the running callback may still allocate; `None` outside a callback.
pub fn room() -> Option<usize> {
    THREAD.with(|t| {
        let (start, limit) = t.budget.get()?;
        let held = t.net.get().wrapping_sub(start).max(0) as usize;
        Some(limit.saturating_sub(held))
    })
}

/// True once the running callback holds more than its allowance, was
/// refused, or was asked to stop: one thread-local read and a comparison,
/// done at every operation.
#[inline]
pub fn over_budget() -> bool {
    THREAD.with(|t| t.net.get() > t.ceiling.get())
}

/// The allowance of the running callback, in bytes.
pub fn limit() -> Option<usize> {
    THREAD.with(|t| t.budget.get().map(|(_, limit)| limit))
}

/// Bytes one copy of `value` allocates, as the allocator counts them.
pub fn clone_cost(value: &Dynamic) -> usize {
    let before = net();
    let copy = value.clone();
    let cost = net().wrapping_sub(before).max(0) as usize;
    drop(copy);
    cost
}

/// `this` is measured again once the callbacks since the last measurement
/// kept at least this many bytes in total (freed bytes are not subtracted).
pub const MIN_MEASURE_STEP: usize = 4 << 10;

/// Bytes the callbacks may keep before `this`, last measured as `measured`, is measured again.
pub fn measure_step(measured: &Footprint) -> usize {
    (measured.bytes() / 4).max(MIN_MEASURE_STEP)
}

/// Values nested deeper than this are not measured further: [`Footprint::too_deep`].
pub const MAX_DEPTH: usize = 256;

/// Bytes of one value in an array or map, besides what it points to.
const VALUE_BYTES: usize = 16;

/// How big a value is, counted the way the sandbox limits are stated: all
/// arrays, maps and strings inside it together, a string as often as it
/// appears (copies of a string share its bytes in memory but not in print).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Array and BLOB elements, nested ones included.
    pub array_elements: usize,
    /// Map entries, nested ones included.
    pub map_entries: usize,
    /// Bytes of all strings and map keys.
    pub string_bytes: usize,
    /// An upper bound of the value's length printed with `to_debug`.
    pub text_bytes: usize,
    /// The value nests deeper than [`MAX_DEPTH`]; the counts stop there.
    pub too_deep: bool,
}

impl Footprint {
    /// Measures `value`.
    pub fn of(value: &Dynamic) -> Footprint {
        let mut footprint = Footprint::default();
        footprint.add(value, 0);
        footprint
    }

    /// Measures an array.
    pub fn of_array(array: &rhai::Array) -> Footprint {
        let mut footprint = Footprint::default();
        footprint.add_array(array, 0);
        footprint
    }

    /// Measures a map.
    pub fn of_map(map: &rhai::Map) -> Footprint {
        let mut footprint = Footprint::default();
        footprint.add_map(map, 0);
        footprint
    }

    /// Bytes the value would take if every copy of a string were its own.
    pub fn bytes(&self) -> usize {
        (self.array_elements + 2 * self.map_entries + 1).saturating_mul(VALUE_BYTES).saturating_add(self.string_bytes)
    }

    fn add(&mut self, value: &Dynamic, depth: usize) {
        if depth > MAX_DEPTH {
            self.too_deep = true;
        } else if let Ok(array) = value.as_array_ref() {
            self.add_array(&array, depth);
        } else if let Ok(map) = value.as_map_ref() {
            self.add_map(&map, depth);
        } else if let Ok(text) = value.as_immutable_string_ref() {
            self.string_bytes += text.len();
            // Debug-printed: quoted, a control character escaped as `\u{1b}`.
            self.text_bytes += 6 * text.len() + 2;
        } else if let Ok(blob) = value.as_blob_ref() {
            self.array_elements += blob.len();
            self.text_bytes += 2 + 6 * blob.len();
        } else if let Some(f) = value.read_lock::<rhai::FnPtr>() {
            // Printed as `Fn(name)`; curried values are kept, not printed.
            self.string_bytes += f.fn_name().len();
            self.text_bytes += 8 + f.fn_name().len();
            f.iter_curry().for_each(|item| self.add(item, depth + 1));
        } else if value.is_variant() && !value.is::<super::series::Series>() {
            // Another host type (an iterator, a range …): as many bytes as a
            // copy of it allocates. A series is held to its own ledger.
            let cost = clone_cost(value);
            self.string_bytes += cost;
            self.text_bytes += 64 + cost;
        } else {
            // Numbers, booleans, characters, timestamps, `()`, a series
            // (printed within its own bounds).
            self.text_bytes += 32;
        }
    }

    fn add_array(&mut self, array: &rhai::Array, depth: usize) {
        self.array_elements += array.len();
        self.text_bytes += 2 + 2 * array.len();
        array.iter().for_each(|item| self.add(item, depth + 1));
    }

    fn add_map(&mut self, map: &rhai::Map, depth: usize) {
        self.map_entries += map.len();
        self.text_bytes += 3;
        for (key, item) in map {
            self.string_bytes += key.len();
            // `"key": ` with every character escaped at worst, and `, `.
            self.text_bytes += 6 * key.len() + 6;
            self.add(item, depth + 1);
        }
    }
}

/// At most `max` bytes of a value printed, ending in `…` when cut: safe on a
/// value whose full print would not fit in memory (a million copies of a
/// large string print as a million of them).
pub fn shown(value: &Dynamic, max: usize) -> String {
    shown_with(max, |out| write!(out, "{value}"))
}

/// At most `max` bytes of what `write` prints, ending in `…` when cut.
pub fn shown_with(max: usize, write: impl FnOnce(&mut Capped) -> std::fmt::Result) -> String {
    let mut out = Capped { text: String::new(), max, cut: false };
    let _ = write(&mut out);
    if out.cut {
        out.text.push('…');
    }
    out.text
}

/// A `fmt::Write` that keeps the first `max` bytes and then fails, which
/// stops the printing of a large value early.
pub struct Capped {
    text: String,
    max: usize,
    cut: bool,
}

impl Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.max - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.cut = true;
        Err(std::fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_callback_sees_what_it_allocates_and_frees() {
        let armed = arm(1 << 20);
        assert_eq!(limit(), Some(1 << 20));
        let block = vec![0u8; 100_000];
        assert!(armed.held() >= 100_000, "{}", armed.held());
        assert!(room().unwrap() <= (1 << 20) - 100_000);
        assert!(!over_budget());
        let big = vec![0u8; 2 << 20];
        assert!(over_budget());
        drop(big);
        drop(block);
        assert!(armed.held() < 1_000, "{}", armed.held());
        drop(armed);
        assert_eq!(room(), None, "disarmed");
        assert!(!over_budget());
    }

    #[test]
    fn a_stop_asked_for_trips_the_operation_check_until_cleared() {
        stop_at_next_operation();
        assert!(!over_budget(), "outside a callback nothing stops");
        let armed = arm(1 << 20);
        stop_at_next_operation();
        assert!(over_budget() && !armed.refused(), "a stop is not a refusal");
        clear_stop();
        assert!(!over_budget(), "the allowance is back");
        assert_eq!(room().map(|r| r > 1 << 19), Some(true));
        refuse();
        stop_at_next_operation();
        clear_stop();
        assert!(over_budget() && armed.refused(), "a refusal stays");
        drop(armed);
        assert!(!over_budget());
    }

    #[test]
    fn a_nested_allowance_gives_back_the_outer_one() {
        let outer = arm(1_000_000);
        {
            let _inner = arm(10);
            assert_eq!(limit(), Some(10));
        }
        assert_eq!(limit(), Some(1_000_000));
        drop(outer);
    }

    #[test]
    fn footprint_counts_every_copy_of_a_shared_string() {
        let text = Dynamic::from("x".repeat(1_000));
        let array: rhai::Array = vec![text.clone(); 1_000];
        let mut map = rhai::Map::new();
        map.insert("key".into(), Dynamic::from_array(array));
        map.insert("n".into(), Dynamic::from_float(1.5));
        let f = Footprint::of(&Dynamic::from_map(map));
        assert_eq!(f.array_elements, 1_000);
        assert_eq!(f.map_entries, 2);
        assert_eq!(f.string_bytes, 1_000_000 + 4);
        assert!(f.text_bytes >= 1_000_000 && !f.too_deep);
        assert!(f.bytes() > 1_000_000);
    }

    #[test]
    fn footprint_stops_at_the_depth_limit() {
        let mut value = Dynamic::from_array(vec![]);
        for _ in 0..MAX_DEPTH + 10 {
            value = Dynamic::from_array(vec![value]);
        }
        assert!(Footprint::of(&value).too_deep);
    }

    #[test]
    fn shown_cuts_a_value_too_large_to_print() {
        let text = Dynamic::from("y".repeat(1 << 20));
        let huge = Dynamic::from_array(vec![text; 100_000]);
        let shown = shown(&huge, 100);
        assert!(shown.ends_with('…') && shown.len() <= 104, "{shown}");
        assert_eq!(super::shown(&Dynamic::from(42_i64), 100), "42");
    }
}
