//! The one hardened Rhai engine factory. Every strategy, `tradehost check`
//! and the backtester build their engines here, so the sandbox is the same
//! everywhere: no imports, no `eval`, bounded operations, call depth,
//! expression depth, string/array/map sizes and wall-clock time per callback.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Module, ModuleResolver, Position, Shared};

use crate::config::SandboxConfig;

/// Token returned by `on_progress` when the wall-clock budget is spent.
pub const BUDGET_EXCEEDED: &str = "budget";
/// Token returned by `on_progress` when the host aborts the callback.
pub const ABORTED: &str = "aborted";
/// Token returned by `on_progress` when the strategy's series hold too many values.
pub const SERIES_FULL: &str = "series";

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

/// Arms and disarms the per-callback wall-clock deadline. Arming reads no
/// clock: the deadline is set at the callback's first budget check (its
/// 256th operation, microseconds in), so the many short callbacks never
/// read the clock at all.
#[derive(Clone, Default)]
pub struct CallbackGuard {
    clock: Rc<Cell<Clock>>,
}

impl CallbackGuard {
    /// Starts the budget of one callback.
    pub fn arm(&self, budget: Duration) {
        self.clock.set(Clock::Armed(budget));
    }
    /// Ends it.
    pub fn disarm(&self) {
        self.clock.set(Clock::Idle);
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
    let mut engine = Engine::new();
    engine
        .set_module_resolver(NoImports)
        .disable_symbol("eval")
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size);
    super::series::install(&mut engine, limits.max_array_size);
    let guard = guard.clone();
    let max_series_values = limits.max_series_values;
    engine.on_progress(move |operations| {
        // Checked at every operation: one operation can copy a whole series.
        if super::series::values_held() > max_series_values {
            return Some(Dynamic::from(SERIES_FULL));
        }
        if operations % 256 != 0 {
            return None;
        }
        if abort.load(Ordering::Relaxed) {
            return Some(Dynamic::from(ABORTED));
        }
        guard.spent().then(|| Dynamic::from(BUDGET_EXCEEDED))
    });
    engine
}
