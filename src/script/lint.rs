//! Static checks of a script, before any of it runs: calls to host functions
//! that do not exist or with the wrong number of arguments, calls to the
//! script's own functions with the wrong number of arguments, and — for a
//! syntax error at the end of the file — the construct that was left open.

use std::collections::{BTreeMap, BTreeSet};

use rhai::{AST, ASTNode, Expr, FnCallExpr, Position, Stmt};

use super::api::HOST_FUNCTIONS;
use crate::strategy::{Location, StrategyError};

/// Host modules whose functions are all listed in [`HOST_FUNCTIONS`].
const HOST_MODULES: [&str; 6] = ["exchange", "market", "ta", "timer", "log", "health"];

/// The first call in `ast` to a host function that does not exist or with an
/// argument count it does not take, or to a script function with the wrong
/// argument count, at its `file:line:col`.
pub fn calls(ast: &AST, file: &str) -> Result<(), StrategyError> {
    let mut own: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for function in ast.iter_functions() {
        own.entry(function.name.to_string()).or_default().insert(function.params.len());
    }
    let mut problem: Option<(Position, String)> = None;
    ast.walk(&mut |nodes: &[ASTNode]| {
        let call = match nodes.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos))) | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => {
                Some((call.as_ref(), *pos))
            }
            _ => None,
        };
        if let Some((call, pos)) = call
            && let Some(message) = check_call(call, &own)
        {
            problem = Some((pos, message));
            return false;
        }
        true
    });
    match problem {
        None => Ok(()),
        Some((pos, message)) => Err(StrategyError {
            location: pos.line().map(|line| Location {
                file: file.to_string(),
                line,
                column: pos.position().unwrap_or(1),
            }),
            message,
        }),
    }
}

fn check_call(call: &FnCallExpr, own: &BTreeMap<String, BTreeSet<usize>>) -> Option<String> {
    if call.is_operator_call() {
        return None;
    }
    let args = call.args.len();
    let namespace = call.namespace.to_string();
    let name = if namespace.is_empty() { call.name.to_string() } else { format!("{namespace}::{}", call.name) };
    if namespace.is_empty()
        && let Some(arities) = own.get(&name)
    {
        return (!arities.contains(&args)).then(|| {
            let takes: Vec<String> = arities.iter().map(usize::to_string).collect();
            format!("`{name}` is called with {args} argument(s); the script defines it with {}", takes.join(" or "))
        });
    }
    let host = HOST_FUNCTIONS.iter().find(|f| f.name == name);
    match host {
        Some(f) if !(f.min_args..=f.max_args).contains(&args) => {
            Some(format!("`{name}` is called with {args} argument(s); expected {}", f.signature))
        }
        Some(_) => None,
        None if HOST_MODULES.contains(&namespace.as_str()) => {
            let prefix = format!("{namespace}::");
            let known: Vec<&str> = HOST_FUNCTIONS.iter().filter_map(|f| f.name.strip_prefix(prefix.as_str())).collect();
            Some(format!("there is no function `{name}`; {namespace}:: has {}", known.join(", ")))
        }
        None => None,
    }
}

/// For a syntax error that ran into the end of the file: the bracket opened
/// last and never closed, as (line, column, the bracket, the `fn` it is in).
pub fn unclosed(source: &str) -> Option<(usize, usize, char, Option<String>)> {
    let mut open: Vec<(usize, usize, char, Option<String>)> = Vec::new();
    let mut current_fn: Option<String> = None;
    let chars: Vec<char> = source.chars().collect();
    let (mut i, mut line, mut column) = (0, 1, 1);
    let advance = |i: &mut usize, line: &mut usize, column: &mut usize| {
        if chars[*i] == '\n' {
            *line += 1;
            *column = 1;
        } else {
            *column += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    advance(&mut i, &mut line, &mut column);
                }
                continue;
            }
            '/' if next == Some('*') => {
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    advance(&mut i, &mut line, &mut column);
                }
                for _ in 0..2 {
                    if i < chars.len() {
                        advance(&mut i, &mut line, &mut column);
                    }
                }
                continue;
            }
            '"' | '`' | '\'' => {
                advance(&mut i, &mut line, &mut column);
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        advance(&mut i, &mut line, &mut column);
                    }
                    if i < chars.len() {
                        advance(&mut i, &mut line, &mut column);
                    }
                }
            }
            'f' if next == Some('n')
                && chars.get(i + 2).is_some_and(|c| c.is_whitespace())
                && (i == 0 || !chars[i - 1].is_alphanumeric() && chars[i - 1] != '_') =>
            {
                let name: String = chars[i + 3..]
                    .iter()
                    .skip_while(|c| c.is_whitespace())
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .collect();
                current_fn = Some(name);
            }
            '{' | '(' | '[' => open.push((line, column, c, current_fn.clone())),
            '}' | ')' | ']' => {
                let opener = match c {
                    '}' => '{',
                    ')' => '(',
                    _ => '[',
                };
                // A stray closer does not close another kind of bracket.
                if open.last().is_some_and(|(.., bracket, _)| *bracket == opener) {
                    open.pop();
                }
                if c == '}' && open.is_empty() {
                    current_fn = None;
                }
            }
            _ => {}
        }
        if i < chars.len() {
            advance(&mut i, &mut line, &mut column);
        }
    }
    open.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unclosed_block_is_found_past_strings_and_comments() {
        let source =
            "fn a() { let s = \"}\"; // }\n}\nfn on_candle(c) {\n    if c.close > 1 {\n        print(`}`);\n    \n}\n";
        let (line, column, bracket, function) = unclosed(source).unwrap();
        assert_eq!((line, column, bracket, function.as_deref()), (3, 17, '{', Some("on_candle")));
        assert!(unclosed("fn a() { [1, (2)] }").is_none());
    }

    /// The table `check` uses agrees with what is registered: every host
    /// function exists with its fewest and most arguments, and not with one more.
    #[test]
    fn host_functions_are_registered_with_the_listed_argument_counts() {
        use crate::strategy::{OrderIds, StrategyContext};
        let ctx = StrategyContext::new("t", Default::default(), OrderIds::new("t", Default::default()), 10).shared();
        let mut engine = rhai::Engine::new();
        super::super::api::install(&mut engine, &ctx);
        let arg = |i: usize| ["\"BTCUSD\"", "\"buy\"", "1", "2", "#{}"][i.min(4)];
        for f in HOST_FUNCTIONS {
            for (count, exists) in [(f.min_args, true), (f.max_args, true), (f.max_args + 1, false)] {
                let args: Vec<&str> = (0..count).map(arg).collect();
                let call = format!("{}({})", f.name, args.join(", "));
                let missing = match engine.run(&call) {
                    Err(e) => {
                        matches!(*e, rhai::EvalAltResult::ErrorFunctionNotFound(ref name, _) if name.contains(f.name.rsplit("::").next().unwrap()))
                    }
                    Ok(()) => false,
                };
                assert_eq!(!missing, exists, "{call}");
            }
        }
    }
}
