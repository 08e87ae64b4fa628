//! The one hardened Rhai engine factory. Every strategy, `tradehost check`
//! and the backtester build their engines here, so the sandbox is the same
//! everywhere: no imports, no `eval`, bounded operations, call depth,
//! expression depth, memory and wall-clock time per callback, and the size
//! of what a strategy keeps in `this`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Module, ModuleResolver, Position, Shared};

use super::memory::{self, Footprint};
use crate::config::SandboxConfig;

/// Token returned by `on_progress` when the wall-clock budget is spent.
pub const BUDGET_EXCEEDED: &str = "budget";
/// Token returned by `on_progress` when the host aborts the callback.
pub const ABORTED: &str = "aborted";
/// Token returned by `on_progress` when the strategy's series hold too many values.
pub const SERIES_FULL: &str = "series";
/// Token returned by `on_progress` when the callback holds more than `max_callback_memory`.
pub const MEMORY_FULL: &str = "memory";

/// Refuses every `import`: strategies have no file access.
struct NoImports;

impl ModuleResolver for NoImports {
    fn resolve(
        &self,
        _: &Engine,
        _: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        Err(EvalAltResult::ErrorRuntime(
            format!("import {path:?} refused: strategies cannot load modules or files").into(),
            pos,
        )
        .into())
    }
}

/// The wall-clock budget of the running callback.
#[derive(Clone, Copy, Default)]
enum Clock {
    /// No callback is running.
    #[default]
    Idle,
    /// A callback started with this budget; the clock is not read yet.
    Armed(Duration),
    /// The callback must end by this instant.
    Running(Instant),
}

/// Arms and disarms the per-callback wall-clock deadline and memory
/// allowance. Arming reads no clock: the deadline is set at the callback's
/// first budget check (its 256th operation, microseconds in), so the many
/// short callbacks never read the clock at all.
#[derive(Clone, Default)]
pub struct CallbackGuard {
    clock: Rc<Cell<Clock>>,
    /// `sandbox.max_callback_memory`, set by [`hardened_engine`].
    memory_limit: Rc<Cell<usize>>,
    /// `sandbox.max_series_values`, set by [`hardened_engine`].
    series_limit: Rc<Cell<usize>>,
    memory: Rc<RefCell<Option<memory::Armed>>>,
}

impl CallbackGuard {
    /// Starts the budget of one callback.
    pub fn arm(&self, budget: Duration) {
        self.clock.set(Clock::Armed(budget));
        let mut memory = self.memory.borrow_mut();
        drop(memory.take());
        super::guards::take_refusal();
        *memory = Some(memory::arm(self.memory_limit.get()));
        super::series::limit_held(self.series_limit.get());
    }
    /// Ends it; says what the callback did with its memory allowance.
    pub fn disarm(&self) -> memory::Usage {
        self.clock.set(Clock::Idle);
        self.memory.borrow_mut().take().map(memory::Armed::finish).unwrap_or_default()
    }
    /// True once the running callback is past its budget.
    fn spent(&self) -> bool {
        match self.clock.get() {
            Clock::Idle => false,
            Clock::Armed(budget) => {
                self.clock.set(Clock::Running(Instant::now() + budget));
                false
            }
            Clock::Running(deadline) => Instant::now() >= deadline,
        }
    }
}

/// Builds a sandboxed engine. `abort` stops any running callback at its next
/// operations check; `guard` enforces the wall-clock budget.
pub fn hardened_engine(limits: &SandboxConfig, guard: &CallbackGuard, abort: Arc<AtomicBool>) -> Engine {
    // Rhai's string, array and map size limits stay off: with any of them
    // on, every assignment into `this` re-measures all of `this`. Memory is
    // bounded per callback instead (`memory`, `guards`) and `this` by
    // `check_state` after callbacks.
    let mut engine = Engine::new();
    engine
        .set_module_resolver(NoImports)
        .disable_symbol("eval")
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    super::series::install(&mut engine, limits.max_array_size);
    super::guards::install(&mut engine);
    guard.memory_limit.set(limits.max_callback_memory);
    guard.series_limit.set(limits.max_series_values);
    let watch = Watch { guard: guard.clone(), abort };
    engine.on_progress(move |operations| {
        // Memory and series are checked at every operation (one operation
        // can copy a whole series or double a string): a series past its
        // limit stops the callback through the memory check. The clock and
        // the abort flag are read at every 256th. The common case is one
        // thread-local comparison in a leaf function; the rest is a tail
        // call out of line.
        if memory::over_budget() || operations.is_multiple_of(256) { watch.stop_reason() } else { None }
    });
    engine
}

/// What the per-operation check reads beyond the thread's memory count.
struct Watch {
    guard: CallbackGuard,
    abort: Arc<AtomicBool>,
}

impl Watch {
    /// Why the running callback must stop now, if it must.
    #[cold]
    #[inline(never)]
    fn stop_reason(&self) -> Option<Dynamic> {
        // A stop the series asked for: the checks below say whether it still holds.
        memory::clear_stop();
        if memory::over_budget() {
            return Some(Dynamic::from(MEMORY_FULL));
        }
        if super::series::values_held() > self.guard.series_limit.get() {
            return Some(Dynamic::from(SERIES_FULL));
        }
        if self.abort.load(Ordering::Relaxed) {
            return Some(Dynamic::from(ABORTED));
        }
        self.guard.spent().then(|| Dynamic::from(BUDGET_EXCEEDED))
    }
}

/// Checks what a strategy keeps in `this` against the sandbox's size
/// limits, all arrays, maps and strings in it together (a copy of a string
/// counts again); says which limit it exceeds, or gives its size.
pub fn check_state(state: &Dynamic, limits: &SandboxConfig) -> Result<Footprint, String> {
    let f = Footprint::of(state);
    let over = |what: String, key: &str, max: usize| {
        Err(format!("`this` holds {what}: exceeds the sandbox limits (sandbox.{key} = {max})"))
    };
    if f.too_deep {
        return Err(format!(
            "`this` nests values more than {} levels deep: exceeds the sandbox limits",
            memory::MAX_DEPTH
        ));
    }
    if f.array_elements > limits.max_array_size {
        return over(format!("{} array elements", f.array_elements), "max_array_size", limits.max_array_size);
    }
    if f.map_entries > limits.max_map_size {
        return over(format!("{} map entries", f.map_entries), "max_map_size", limits.max_map_size);
    }
    if f.string_bytes > limits.max_string_size {
        return over(format!("{} bytes of strings", f.string_bytes), "max_string_size", limits.max_string_size);
    }
    Ok(f)
}
