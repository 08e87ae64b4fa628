//! The spike's closure compiler: a script function's AST (Rhai's `internals`
//! feature) turned into nested Rust closures for the subset strategies use —
//! constants, locals, `params::` values, `this`/map properties, arithmetic
//! and comparisons, `if`/`else` (also as an expression), `??`, `&&`/`||`,
//! string interpolation, `return`, and calls to host functions bound
//! directly (no Rhai dispatch). Anything else makes `compile_fn` refuse the
//! function: a real tier would hand that statement back to the interpreter.
//!
//! Host functions are bound here by hand for what `sma_cross` calls, through
//! the same context methods `src/script/api.rs` uses; a product would
//! generate both bindings from one typed table (see docs/performance.md).

use rhai::{AST, Dynamic, Engine, FLOAT, INT, ImmutableString, Map};
use rhai::{Expr, Stmt, StmtBlock};
use tradehost::model::{Side, check_order_number, decimal_from_f64};
use tradehost::script::convert;
use tradehost::strategy::{LogLevel, SharedContext};

/// Why a call stopped early: a `return` or an error.
pub enum Flow {
    Return(Dynamic),
    Error(String),
}

type Out = Result<Dynamic, Flow>;

/// What a compiled function runs against.
pub struct Frame<'a> {
    locals: Vec<Dynamic>,
    this: &'a mut Dynamic,
    ctx: &'a SharedContext,
    operations: u64,
    max_operations: u64,
}

impl Frame<'_> {
    fn tick(&mut self) -> Result<(), Flow> {
        self.operations += 1;
        if self.operations > self.max_operations {
            return Err(Flow::Error("too many operations".into()));
        }
        Ok(())
    }
}

type ExprFn = Box<dyn Fn(&mut Frame) -> Out>;
type StmtFn = Box<dyn Fn(&mut Frame) -> Result<(), Flow>>;
type HostFn = fn(&SharedContext, &[Dynamic]) -> Out;

/// A compiled script function.
pub struct Compiled {
    params: usize,
    slots: usize,
    body: StmtFn,
}

/// Runs compiled functions on a strategy's context with the engine's operation limit.
pub struct Runner {
    ctx: SharedContext,
    max_operations: u64,
}

impl Runner {
    pub fn new(engine: &Engine, ctx: &SharedContext) -> Self {
        Runner { ctx: ctx.clone(), max_operations: engine.max_operations() }
    }

    /// Calls `f` with `this` and one argument, as `on_candle(c)` is called.
    pub fn call(&mut self, f: &Compiled, this: &mut Dynamic, arg: Dynamic) -> Result<Dynamic, String> {
        let ctx = &self.ctx;
        let mut locals = Vec::with_capacity(f.slots);
        locals.push(arg);
        locals.resize(f.slots.max(f.params), Dynamic::UNIT);
        let mut frame = Frame { locals, this, ctx, operations: 0, max_operations: self.max_operations };
        match (f.body)(&mut frame) {
            Ok(()) => Ok(Dynamic::UNIT),
            Err(Flow::Return(v)) => Ok(v),
            Err(Flow::Error(e)) => Err(e),
        }
    }
}

/// Why a construct is outside the subset.
type Unsupported = String;

struct Compiler<'a> {
    /// Locals in scope, innermost last: (name, slot).
    scope: Vec<(ImmutableString, usize)>,
    slots: usize,
    params: &'a Map,
    /// Coverage only: accept calls to any host module without a binding.
    any_host: bool,
}

const HOST_MODULES: &[&str] = &["exchange", "market", "ta", "timer", "log", "health", "risk", "chart", "ml"];

fn host_binding(name: &str, arity: usize) -> Option<HostFn> {
    Some(match (name, arity) {
        ("ta::sma", 2) => |ctx, a| {
            let symbol = a[0].read_lock::<ImmutableString>().ok_or_else(|| err("ta::sma: symbol"))?;
            let n = a[1].as_int().map_err(|_| err("ta::sma: n"))? as usize;
            let mut ctx = ctx.borrow_mut();
            let ctx = &mut *ctx;
            Ok(match ctx.market.series(symbol.as_str()) {
                Some(series) => match ctx.indicators.sma(symbol.as_str(), series, n) {
                    tradehost::data::IndicatorValue::Number(v) => Dynamic::from_float(v),
                    _ => Dynamic::UNIT,
                },
                None => Dynamic::UNIT,
            })
        },
        ("chart::plot", 2) => |ctx, a| {
            let name = a[0].read_lock::<ImmutableString>().ok_or_else(|| err("chart::plot: name"))?;
            let value = number(&a[1]).ok_or_else(|| err("chart::plot: value"))?;
            ctx.borrow_mut().plot(&name, value, None).map_err(Flow::Error)?;
            Ok(Dynamic::UNIT)
        },
        ("exchange::position", 1) => |ctx, a| {
            let symbol = a[0].read_lock::<ImmutableString>().ok_or_else(|| err("exchange::position: symbol"))?;
            let ctx = ctx.borrow();
            let account = ctx.account.load();
            Ok(convert::position(&account.position(&ctx.name, &symbol), account.marks.get(symbol.as_str()).copied()))
        },
        ("exchange::market_order", 3) => |ctx, a| {
            let symbol = a[0].read_lock::<ImmutableString>().ok_or_else(|| err("market_order: symbol"))?;
            let side: Side = a[1]
                .read_lock::<ImmutableString>()
                .ok_or_else(|| err("market_order: side"))?
                .parse()
                .map_err(Flow::Error)?;
            let size = number(&a[2])
                .and_then(decimal_from_f64)
                .and_then(|d| check_order_number("`size`", d).ok())
                .ok_or_else(|| err("market_order: size"))?;
            let spec = crate::native::market_order(symbol.to_string(), side, size);
            ctx.borrow_mut().place(spec).map(Dynamic::from).map_err(Flow::Error)
        },
        ("log::info", 1) => |ctx, a| {
            ctx.borrow_mut().log(LogLevel::Info, &a[0].to_string());
            Ok(Dynamic::UNIT)
        },
        _ => return None,
    })
}

fn err(what: &str) -> Flow {
    Flow::Error(format!("bad argument: {what}"))
}

fn number(v: &Dynamic) -> Option<FLOAT> {
    v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as FLOAT))
}

/// A comparison operator on two values of one ordered type; `None` for any other operator.
fn compare<T: PartialOrd>(op: &str, x: T, y: T) -> Option<Dynamic> {
    Some(
        match op {
            "==" => x == y,
            "!=" => x != y,
            ">" => x > y,
            ">=" => x >= y,
            "<" => x < y,
            "<=" => x <= y,
            _ => return None,
        }
        .into(),
    )
}

/// A binary operator on the value types the subset knows, as Rhai's
/// built-in operators compute it; `None` for anything else.
fn binary(op: &str, a: &Dynamic, b: &Dynamic) -> Option<Dynamic> {
    if let (Ok(x), Ok(y)) = (a.as_int(), b.as_int()) {
        return match op {
            "+" => Some(Dynamic::from_int(x.checked_add(y)?)),
            "-" => Some(Dynamic::from_int(x.checked_sub(y)?)),
            "*" => Some(Dynamic::from_int(x.checked_mul(y)?)),
            _ => compare(op, x, y),
        };
    }
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return match op {
            "+" => Some(Dynamic::from_float(x + y)),
            "-" => Some(Dynamic::from_float(x - y)),
            "*" => Some(Dynamic::from_float(x * y)),
            "/" => Some(Dynamic::from_float(x / y)),
            _ => compare(op, x, y),
        };
    }
    if let (Ok(x), Ok(y)) = (a.as_bool(), b.as_bool()) {
        return matches!(op, "==" | "!=").then(|| compare(op, x, y)).flatten();
    }
    // Rhai: `==` between different types (e.g. `()` and a number) is false.
    let both_unit = a.is_unit() && b.is_unit();
    match op {
        "==" => Some(both_unit.into()),
        "!=" => Some((!both_unit).into()),
        _ => None,
    }
}

fn truthy(v: Dynamic) -> Result<bool, Flow> {
    v.as_bool().map_err(|t| Flow::Error(format!("a condition must be a boolean, got {t}")))
}

impl Compiler<'_> {
    fn lookup(&self, name: &str) -> Option<usize> {
        self.scope.iter().rev().find(|(n, _)| n == name).map(|(_, slot)| *slot)
    }

    fn block(&mut self, block: &StmtBlock) -> Result<StmtFn, Unsupported> {
        let depth = self.scope.len();
        let stmts = block.iter().map(|s| self.stmt(s)).collect::<Result<Vec<_>, _>>();
        self.scope.truncate(depth);
        let stmts = stmts?;
        Ok(Box::new(move |f| stmts.iter().try_for_each(|s| s(f))))
    }

    /// A block whose last statement gives its value (`if` as an expression).
    fn block_value(&mut self, block: &StmtBlock) -> Result<ExprFn, Unsupported> {
        let depth = self.scope.len();
        let items: Vec<&Stmt> = block.iter().collect();
        let result = (|| {
            let Some((last, init)) = items.split_last() else {
                return Ok(Box::new(|_: &mut Frame| Ok(Dynamic::UNIT)) as ExprFn);
            };
            let init = init.iter().map(|s| self.stmt(s)).collect::<Result<Vec<_>, _>>()?;
            let last = match last {
                Stmt::Expr(e) => self.expr(e)?,
                Stmt::If(x, _) => {
                    let cond = self.expr(&x.expr)?;
                    let body = self.block_value(&x.body)?;
                    let branch = self.block_value(&x.branch)?;
                    Box::new(move |f: &mut Frame| {
                        f.tick()?;
                        if truthy(cond(f)?)? { body(f) } else { branch(f) }
                    })
                }
                Stmt::FnCall(call, _) => self.call(call)?,
                s => {
                    let s = self.stmt(s)?;
                    Box::new(move |f: &mut Frame| s(f).map(|()| Dynamic::UNIT))
                }
            };
            Ok(Box::new(move |f: &mut Frame| {
                init.iter().try_for_each(|s| s(f))?;
                last(f)
            }) as ExprFn)
        })();
        self.scope.truncate(depth);
        result
    }

    fn stmt(&mut self, stmt: &Stmt) -> Result<StmtFn, Unsupported> {
        Ok(match stmt {
            Stmt::Noop(_) => Box::new(|_| Ok(())),
            Stmt::Var(x, ..) => {
                let value = self.expr(&x.1)?;
                let slot = self.slots;
                self.slots += 1;
                self.scope.push((x.0.name.clone(), slot));
                Box::new(move |f| {
                    f.tick()?;
                    f.locals[slot] = value(f)?;
                    Ok(())
                })
            }
            Stmt::If(x, _) => {
                let cond = self.expr(&x.expr)?;
                let body = self.block(&x.body)?;
                let branch = self.block(&x.branch)?;
                Box::new(move |f| {
                    f.tick()?;
                    if truthy(cond(f)?)? { body(f) } else { branch(f) }
                })
            }
            Stmt::Return(value, ..) => {
                let value = match value {
                    Some(e) => self.expr(e)?,
                    None => Box::new(|_: &mut Frame| Ok(Dynamic::UNIT)),
                };
                Box::new(move |f| {
                    f.tick()?;
                    Err(Flow::Return(value(f)?))
                })
            }
            Stmt::Expr(e) => {
                let e = self.expr(e)?;
                Box::new(move |f| e(f).map(drop))
            }
            Stmt::FnCall(call, _) => {
                let e = self.call(call)?;
                Box::new(move |f| e(f).map(drop))
            }
            Stmt::Block(block) => self.block(block)?,
            Stmt::Assignment(x) => {
                let (op, lhs, rhs) = (&x.0, &x.1.lhs, &x.1.rhs);
                let op = op.get_op_assignment_info().map(|info| info.5.to_string());
                let value = self.expr(rhs)?;
                let combine = move |old: Dynamic, new: Dynamic| -> Out {
                    match &op {
                        None => Ok(new),
                        Some(op) => binary(op, &old, &new).ok_or_else(|| {
                            Flow::Error(format!("`{op}=` on {} and {}", old.type_name(), new.type_name()))
                        }),
                    }
                };
                match lhs {
                    Expr::Variable(v, ..) if v.2.is_empty() => {
                        let slot = self.lookup(&v.1).ok_or_else(|| format!("unknown variable {}", v.1))?;
                        Box::new(move |f| {
                            f.tick()?;
                            let new = value(f)?;
                            let old = std::mem::take(&mut f.locals[slot]);
                            f.locals[slot] = combine(old, new)?;
                            Ok(())
                        })
                    }
                    Expr::Dot(d, ..) if matches!(d.lhs, Expr::ThisPtr(_)) => {
                        let Expr::Property(p, _) = &d.rhs else { return Err("assignment to a this-method".into()) };
                        let key = p.2.clone();
                        Box::new(move |f| {
                            f.tick()?;
                            let new = value(f)?;
                            let mut map = f.this.write_lock::<Map>().ok_or_else(|| err("this"))?;
                            let old = map.get(key.as_str()).cloned().unwrap_or(Dynamic::UNIT);
                            let result = combine(old, new)?;
                            map.insert(key.as_str().into(), result);
                            Ok(())
                        })
                    }
                    other => return Err(format!("assignment to {}", head(other))),
                }
            }
            other => return Err(format!("statement {}", head(other))),
        })
    }

    fn call(&mut self, call: &rhai::FnCallExpr) -> Result<ExprFn, Unsupported> {
        let args = call.args.iter().map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?;
        let namespace = call.namespace.to_string();
        if !namespace.is_empty() {
            let name = format!("{namespace}::{}", call.name);
            let host = host_binding(&name, args.len());
            if host.is_none() && !(self.any_host && HOST_MODULES.contains(&namespace.as_str())) {
                return Err(format!("no binding for {name}"));
            }
            let host = host.unwrap_or(|_, _| Err(Flow::Error("coverage only".into())));
            return Ok(Box::new(move |f| {
                f.tick()?;
                let values = args.iter().map(|a| a(f)).collect::<Result<rhai::StaticVec<_>, _>>()?;
                host(f.ctx, &values)
            }));
        }
        let op = call.name.to_string();
        match args.len() {
            1 if op == "-" => {
                let a = args.into_iter().next().unwrap();
                Ok(Box::new(move |f| {
                    let v = a(f)?;
                    if let Ok(i) = v.as_int() {
                        Ok(Dynamic::from_int(i.checked_neg().ok_or_else(|| err("-"))?))
                    } else {
                        v.as_float().map(|x| Dynamic::from_float(-x)).map_err(|_| err("unary -"))
                    }
                }))
            }
            1 if op == "!" => {
                let a = args.into_iter().next().unwrap();
                Ok(Box::new(move |f| Ok((!truthy(a(f)?)?).into())))
            }
            2 if binary(&op, &Dynamic::from_int(1), &Dynamic::from_int(1)).is_some()
                || binary(&op, &Dynamic::from_float(1.0), &Dynamic::from_float(1.0)).is_some() =>
            {
                let mut it = args.into_iter();
                let (a, b) = (it.next().unwrap(), it.next().unwrap());
                Ok(Box::new(move |f| {
                    let (x, y) = (a(f)?, b(f)?);
                    binary(&op, &x, &y)
                        .ok_or_else(|| Flow::Error(format!("operator {op} on {} and {}", x.type_name(), y.type_name())))
                }))
            }
            _ => Err(format!("function {op}")),
        }
    }

    fn expr(&mut self, expr: &Expr) -> Result<ExprFn, Unsupported> {
        Ok(match expr {
            Expr::DynamicConstant(v, _) => constant((**v).clone()),
            Expr::BoolConstant(b, _) => constant((*b).into()),
            Expr::IntegerConstant(i, _) => constant(Dynamic::from_int(*i)),
            Expr::FloatConstant(x, _) => constant(Dynamic::from_float(**x)),
            Expr::StringConstant(s, _) => constant(s.clone().into()),
            Expr::CharConstant(c, _) => constant((*c).into()),
            Expr::Unit(_) => constant(Dynamic::UNIT),
            Expr::Variable(v, ..) => {
                let namespace = v.2.to_string();
                if namespace == "params" {
                    let value = self.params.get(v.1.as_str()).cloned();
                    constant(match value {
                        Some(value) => value,
                        None if self.any_host => Dynamic::UNIT,
                        None => return Err(format!("params::{}", v.1)),
                    })
                } else if namespace.is_empty() {
                    let slot = self.lookup(&v.1).ok_or_else(|| format!("unknown variable {}", v.1))?;
                    Box::new(move |f| Ok(f.locals[slot].clone()))
                } else {
                    return Err(format!("module variable {namespace}::{}", v.1));
                }
            }
            Expr::ThisPtr(_) => Box::new(|f| Ok(f.this.clone())),
            Expr::Dot(d, ..) => match &d.rhs {
                Expr::Property(p, _) => {
                    let key = p.2.clone();
                    if matches!(d.lhs, Expr::ThisPtr(_)) {
                        // No copy of `this`: read the one property.
                        Box::new(move |f| Ok(property(f.this, &key)))
                    } else {
                        let lhs = self.expr(&d.lhs)?;
                        Box::new(move |f| Ok(property(&lhs(f)?, &key)))
                    }
                }
                Expr::MethodCall(call, _) if call.name == "to_int" && call.args.is_empty() => {
                    let lhs = self.expr(&d.lhs)?;
                    Box::new(move |f| {
                        f.tick()?;
                        let v = lhs(f)?;
                        match v.as_float() {
                            Ok(x) if x.is_finite() && x.abs() < INT::MAX as FLOAT => Ok(Dynamic::from_int(x as INT)),
                            _ => v.as_int().map(Dynamic::from_int).map_err(|_| err("to_int")),
                        }
                    })
                }
                Expr::MethodCall(call, _) => return Err(format!("method .{}()", call.name)),
                other => return Err(format!("member {}", head(other))),
            },
            Expr::FnCall(call, _) => self.call(call)?,
            Expr::Stmt(block) => self.block_value(block)?,
            Expr::And(items, _) | Expr::Or(items, _) => {
                let is_and = matches!(expr, Expr::And(..));
                let items = items.iter().map(|e| self.expr(e)).collect::<Result<Vec<_>, _>>()?;
                Box::new(move |f| {
                    for item in &items {
                        if truthy(item(f)?)? != is_and {
                            return Ok((!is_and).into());
                        }
                    }
                    Ok(is_and.into())
                })
            }
            Expr::Coalesce(items, _) => {
                let items = items.iter().map(|e| self.expr(e)).collect::<Result<Vec<_>, _>>()?;
                Box::new(move |f| {
                    let mut value = Dynamic::UNIT;
                    for item in &items {
                        value = item(f)?;
                        if !value.is_unit() {
                            break;
                        }
                    }
                    Ok(value)
                })
            }
            Expr::InterpolatedString(parts, _) => {
                let parts = parts.iter().map(|e| self.expr(e)).collect::<Result<Vec<_>, _>>()?;
                Box::new(move |f| {
                    let mut text = String::new();
                    for part in &parts {
                        // Dynamic's Display is what Rhai's `to_string` prints
                        // (floats through `FloatWrapper` in both).
                        text.push_str(&part(f)?.to_string());
                    }
                    Ok(text.into())
                })
            }
            Expr::Array(items, _) => {
                let items = items.iter().map(|e| self.expr(e)).collect::<Result<Vec<_>, _>>()?;
                Box::new(move |f| Ok(Dynamic::from_array(items.iter().map(|i| i(f)).collect::<Result<_, _>>()?)))
            }
            Expr::Map(x, _) => {
                let entries =
                    x.0.iter()
                        .map(|(k, e)| Ok((k.name.clone(), self.expr(e)?)))
                        .collect::<Result<Vec<_>, Unsupported>>()?;
                Box::new(move |f| {
                    let mut map = Map::new();
                    for (key, value) in &entries {
                        map.insert(key.as_str().into(), value(f)?);
                    }
                    Ok(Dynamic::from_map(map))
                })
            }
            other => return Err(format!("expression {}", head(other))),
        })
    }
}

/// The variant name of an AST node, for coverage reports.
fn head(node: &impl std::fmt::Debug) -> String {
    let text = format!("{node:?}");
    text.split(['(', ' ', '{', '[']).next().unwrap_or_default().to_string()
}

fn constant(value: Dynamic) -> ExprFn {
    Box::new(move |_| Ok(value.clone()))
}

fn property(target: &Dynamic, key: &str) -> Dynamic {
    target.read_lock::<Map>().and_then(|m| m.get(key).cloned()).unwrap_or(Dynamic::UNIT)
}

/// Calls `each` with every top-level statement of the script function
/// `name`/`arity`, in order. (Rhai does not export a function body's type;
/// its AST walk reaches the statements.)
fn each_statement(ast: &AST, name: &str, arity: usize, mut each: impl FnMut(&Stmt)) {
    let mut only = ast.clone_functions_only();
    only.retain_functions(|_, _, n, params| n == name && params == arity);
    only.walk(&mut |path: &[rhai::ASTNode]| {
        if let [rhai::ASTNode::Stmt(stmt)] = path {
            each(stmt);
        }
        true
    });
}

/// Compiles the script function `name` (one parameter) with `params` as constants.
pub fn compile_fn(ast: &AST, name: &str, params: &Map) -> Result<Compiled, Unsupported> {
    let def = ast.iter_fn_def().find(|f| f.name == name).ok_or_else(|| format!("no function {name}"))?;
    let mut compiler = Compiler { scope: Vec::new(), slots: 0, params, any_host: false };
    for param in &def.params {
        compiler.scope.push((param.clone(), compiler.slots));
        compiler.slots += 1;
    }
    let mut stmts = Vec::new();
    each_statement(ast, name, def.params.len(), |stmt| stmts.push(compiler.stmt(stmt)));
    let stmts = stmts.into_iter().collect::<Result<Vec<_>, _>>()?;
    let body: StmtFn = Box::new(move |f| stmts.iter().try_for_each(|s| s(f)));
    Ok(Compiled { params: def.params.len(), slots: compiler.slots, body })
}

/// Statements in all functions of `ast`, how many the subset lowers (a
/// compound statement counts once, its inner statements each on their own),
/// and what stopped the others.
pub fn coverage(ast: &AST) -> (usize, usize, std::collections::BTreeSet<String>) {
    type Counts = (usize, usize, std::collections::BTreeSet<String>);
    fn one(compiler: &mut Compiler, stmt: &Stmt, counts: &mut Counts) {
        counts.0 += 1;
        let lowered = match stmt {
            Stmt::If(x, _) => {
                let cond = compiler.expr(&x.expr).map(drop);
                x.body.iter().for_each(|s| one(compiler, s, counts));
                x.branch.iter().for_each(|s| one(compiler, s, counts));
                cond
            }
            Stmt::Block(b) => {
                b.iter().for_each(|s| one(compiler, s, counts));
                Ok(())
            }
            other => compiler.stmt(other).map(drop),
        };
        let lowered = match lowered {
            Ok(()) => true,
            Err(why) => {
                counts.2.insert(why);
                false
            }
        };
        if !lowered {
            // Declare the name anyway so later statements are judged on their own.
            if let Stmt::Var(x, ..) = stmt {
                compiler.scope.push((x.0.name.clone(), compiler.slots));
                compiler.slots += 1;
            }
        }
        counts.1 += lowered as usize;
    }
    let params = Map::new();
    let mut counts: Counts = (0, 0, Default::default());
    for def in ast.iter_fn_def() {
        let mut compiler = Compiler { scope: Vec::new(), slots: 0, params: &params, any_host: true };
        for param in &def.params {
            compiler.scope.push((param.clone(), compiler.slots));
            compiler.slots += 1;
        }
        each_statement(ast, &def.name, def.params.len(), |stmt| one(&mut compiler, stmt, &mut counts));
    }
    counts
}
