//! Static checks of a script's source, before any of it runs: calls to host
//! functions that do not exist or with the wrong number of arguments, calls to
//! the script's own functions with the wrong number of arguments, and — for a
//! syntax error at the end of the file — the bracket that was left open. A
//! small lexer (strings and comments skipped) reads the source; the compiled
//! script only tells which functions it defines.

use std::collections::{BTreeMap, BTreeSet};

use rhai::AST;

use super::api::HOST_FUNCTIONS;
use crate::strategy::{Location, StrategyError};

/// Host modules whose functions are all listed in [`HOST_FUNCTIONS`].
const HOST_MODULES: [&str; 8] = ["exchange", "market", "ta", "timer", "log", "health", "risk", "chart"];

/// A token of the source with its 1-based line and column.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A name or keyword.
    Ident(String),
    /// Punctuation, one character.
    Punct(char),
    /// A string or character.
    Literal,
    /// A number, as written.
    Number(String),
}

/// The source's tokens with their positions; strings and comments are skipped.
fn lex(source: &str) -> Vec<(Token, usize, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut column) = (0, 1, 1);
    // Moves past `n` characters, keeping the line and column.
    let step = |i: &mut usize, line: &mut usize, column: &mut usize, n: usize| {
        for _ in 0..n {
            if *i >= chars.len() {
                return;
            }
            if chars[*i] == '\n' {
                *line += 1;
                *column = 1;
            } else {
                *column += 1;
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        let at = (line, column);
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    step(&mut i, &mut line, &mut column, 1);
                }
            }
            '/' if next == Some('*') => {
                step(&mut i, &mut line, &mut column, 2);
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    step(&mut i, &mut line, &mut column, 1);
                }
                step(&mut i, &mut line, &mut column, 2);
            }
            '"' | '`' | '\'' => {
                step(&mut i, &mut line, &mut column, 1);
                while i < chars.len() && chars[i] != c {
                    let escaped = if chars[i] == '\\' { 2 } else { 1 };
                    step(&mut i, &mut line, &mut column, escaped);
                }
                step(&mut i, &mut line, &mut column, 1);
                out.push((Token::Literal, at.0, at.1));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    step(&mut i, &mut line, &mut column, 1);
                }
                out.push((Token::Ident(chars[start..i].iter().collect()), at.0, at.1));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                    step(&mut i, &mut line, &mut column, 1);
                }
                out.push((Token::Number(chars[start..i].iter().collect()), at.0, at.1));
            }
            c if c.is_whitespace() => step(&mut i, &mut line, &mut column, 1),
            c => {
                out.push((Token::Punct(c), at.0, at.1));
                step(&mut i, &mut line, &mut column, 1);
            }
        }
    }
    out
}

/// The number of arguments of the call whose `(` is at `tokens[open]`.
fn arguments(tokens: &[(Token, usize, usize)], open: usize) -> usize {
    let (mut depth, mut commas, mut any) = (0usize, 0usize, false);
    for (token, ..) in &tokens[open..] {
        match token {
            Token::Punct('(' | '[' | '{') => {
                depth += 1;
                if depth > 1 {
                    any = true;
                }
            }
            Token::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            Token::Punct(',') if depth == 1 => commas += 1,
            _ => any = true,
        }
    }
    if any { commas + 1 } else { 0 }
}

/// The first call in `source` to a host function that does not exist or with
/// an argument count it does not take, or to one of the script's own
/// functions (from `ast`) with the wrong argument count, at its `file:line:col`.
pub fn calls(source: &str, ast: &AST, file: &str) -> Result<(), StrategyError> {
    let mut own: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for function in ast.iter_functions() {
        own.entry(function.name.to_string()).or_default().insert(function.params.len());
    }
    let tokens = lex(source);
    for (i, (token, line, column)) in tokens.iter().enumerate() {
        let Token::Ident(first) = token else { continue };
        let previous = i.checked_sub(1).map(|p| &tokens[p].0);
        // `x.name(…)` is a method call, `fn name(…)` a definition; `a::b(…)` is read at `a`.
        if matches!(previous, Some(Token::Punct('.'))) || matches!(previous, Some(Token::Ident(k)) if k == "fn") {
            continue;
        }
        if i >= 2 && matches!((&tokens[i - 2].0, &tokens[i - 1].0), (Token::Punct(':'), Token::Punct(':'))) {
            continue;
        }
        let qualified = matches!(tokens.get(i + 1..i + 3), Some([(Token::Punct(':'), ..), (Token::Punct(':'), ..)]));
        let (name, open) = match (qualified, tokens.get(i + 3), tokens.get(i + 4)) {
            (true, Some((Token::Ident(function), ..)), Some((Token::Punct('('), ..))) => {
                (format!("{first}::{function}"), i + 4)
            }
            (false, ..) if matches!(tokens.get(i + 1), Some((Token::Punct('('), ..))) => (first.clone(), i + 1),
            _ => continue,
        };
        if let Some(message) = check_call(&name, arguments(&tokens, open), &own) {
            return Err(StrategyError {
                location: Some(Location { file: file.to_string(), line: *line, column: *column }),
                message,
            });
        }
    }
    Ok(())
}

/// A whole-number argument of a `ta::` call after the symbol (a period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Period {
    /// Written as a number.
    Literal(usize),
    /// Read from a parameter: `params::name`.
    Param(String),
    /// Anything else (a variable, an expression).
    Unknown,
}

/// How much history a script's reads need: each `ta::` call's periods
/// (every argument after the symbol that is not a decimal number — the bands'
/// `k` is one) and each `market::candles(symbol, n)`'s `n`, as
/// `(is_indicator, period)`.
pub fn history_reads(source: &str) -> Vec<(bool, Period)> {
    let tokens = lex(source);
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        let call = match tokens.get(i..i + 5) {
            Some(
                [
                    (Token::Ident(module), ..),
                    (Token::Punct(':'), ..),
                    (Token::Punct(':'), ..),
                    (Token::Ident(function), ..),
                    (Token::Punct('('), ..),
                ],
            ) => (module.as_str(), function.as_str()),
            _ => continue,
        };
        let indicator = match call {
            ("ta", _) => true,
            ("market", "candles") => false,
            _ => continue,
        };
        // The arguments' tokens at depth 1, split at commas.
        let (mut depth, mut args, mut current) = (0usize, Vec::new(), Vec::new());
        for (token, ..) in &tokens[i + 4..] {
            match token {
                Token::Punct('(' | '[' | '{') => {
                    depth += 1;
                    if depth > 1 {
                        current.push(token.clone());
                    }
                }
                Token::Punct(')' | ']' | '}') => {
                    depth -= 1;
                    if depth == 0 {
                        args.push(std::mem::take(&mut current));
                        break;
                    }
                    current.push(token.clone());
                }
                Token::Punct(',') if depth == 1 => args.push(std::mem::take(&mut current)),
                _ => current.push(token.clone()),
            }
        }
        for arg in args.iter().skip(1).take(if indicator { usize::MAX } else { 1 }) {
            out.push((
                indicator,
                match arg.as_slice() {
                    [Token::Number(n)] if n.contains('.') => continue,
                    [Token::Number(n)] => n.replace('_', "").parse().map_or(Period::Unknown, Period::Literal),
                    [Token::Ident(m), Token::Punct(':'), Token::Punct(':'), Token::Ident(name)] if m == "params" => {
                        Period::Param(name.clone())
                    }
                    _ => Period::Unknown,
                },
            ));
        }
    }
    out
}

fn check_call(name: &str, args: usize, own: &BTreeMap<String, BTreeSet<usize>>) -> Option<String> {
    let namespace = name.split_once("::").map_or("", |(ns, _)| ns);
    if namespace.is_empty()
        && let Some(arities) = own.get(name)
    {
        return (!arities.contains(&args)).then(|| {
            let takes: Vec<String> = arities.iter().map(usize::to_string).collect();
            format!("`{name}` is called with {args} argument(s); the script defines it with {}", takes.join(" or "))
        });
    }
    match HOST_FUNCTIONS.iter().find(|f| f.name == name) {
        Some(f) if !(f.min_args..=f.max_args).contains(&args) => {
            Some(format!("`{name}` is called with {args} argument(s); expected {}", f.signature))
        }
        Some(_) => None,
        None if HOST_MODULES.contains(&namespace) => {
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
    let tokens = lex(source);
    for (i, (token, line, column)) in tokens.iter().enumerate() {
        match token {
            Token::Ident(keyword) if keyword == "fn" => {
                if let Some((Token::Ident(name), ..)) = tokens.get(i + 1) {
                    current_fn = Some(name.clone());
                }
            }
            Token::Punct(c @ ('{' | '(' | '[')) => open.push((*line, *column, *c, current_fn.clone())),
            Token::Punct(c @ ('}' | ')' | ']')) => {
                let opener = match c {
                    '}' => '{',
                    ')' => '(',
                    _ => '[',
                };
                // A stray closer does not close another kind of bracket.
                if open.last().is_some_and(|(.., bracket, _)| *bracket == opener) {
                    open.pop();
                }
                if *c == '}' && open.is_empty() {
                    current_fn = None;
                }
            }
            _ => {}
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

    fn lint(source: &str) -> Result<(), String> {
        let ast = rhai::Engine::new().compile(source).map_err(|e| e.to_string())?;
        calls(source, &ast, "t.rhai").map_err(|e| e.to_string())
    }

    #[test]
    fn history_reads_are_read_from_numbers_and_params() {
        let source = "fn on_candle(c) { let a = ta::sma(c.symbol, 20); let b = ta::ema(c.symbol, params::slow);\n\
                      let m = ta::macd(c.symbol, 12, 26, 9); let k = ta::bbands(c.symbol, 20, 2.0); let x = ta::rsi(c.symbol, n + 1);\n\
                      let h = market::candles(c.symbol, 300); let l = market::last(c.symbol); }";
        use Period::*;
        let expected = [Literal(20), Param("slow".into()), Literal(12), Literal(26), Literal(9), Literal(20), Unknown];
        let mut expected: Vec<(bool, Period)> = expected.into_iter().map(|p| (true, p)).collect();
        expected.push((false, Literal(300)));
        assert_eq!(history_reads(source), expected);
    }

    #[test]
    fn calls_are_counted_past_strings_comments_nesting_and_methods() {
        assert!(lint("fn on_candle(c) { let x = ta::sma(c.symbol, max(1, [2, 3].len())); }").is_ok());
        assert!(lint("fn on_candle(c) { // ta::nope(1)\n let s = \"ta::nope(1)\"; }").is_ok());
        assert!(lint("fn f(a) { a }\nfn on_candle(c) { let m = #{ k: f(1), j: [1, 2].map(|x| x) }; }").is_ok());
        let err = lint("fn f(a) { a }\nfn on_candle(c) {\n    let m = #{ k: f(1, 2) };\n}").unwrap_err();
        assert!(err.starts_with("t.rhai:3:19: `f` is called with 2 argument(s)"), "{err}");
        let err = lint("fn on_candle(c) { exchange::cancel_all(c.symbol, 1); }").unwrap_err();
        assert!(err.contains("`exchange::cancel_all` is called with 2 argument(s)"), "{err}");
        assert!(lint("fn on_candle(c) { exchange::cancel_all(); exchange::cancel_all(c.symbol); }").is_ok());
    }

    /// The table `check` uses agrees with what is registered: every host
    /// function exists with its fewest and most arguments, and not with one more.
    #[test]
    fn host_functions_are_registered_with_the_listed_argument_counts() {
        use crate::strategy::{OrderIds, StrategyContext};
        let ctx = StrategyContext::new("t", Default::default(), OrderIds::new("t", Default::default()), 10).shared();
        let mut engine = rhai::Engine::new();
        super::super::api::install(&mut engine, &ctx);
        for (name, module) in super::super::api::modules(&ctx) {
            engine.register_static_module(name, module.into());
        }
        super::super::series::install(&mut engine, 10);
        let ml = super::super::ml::MlState::shared(Default::default());
        engine.register_static_module("ml", super::super::ml::module(&ctx, &ml).into());
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
