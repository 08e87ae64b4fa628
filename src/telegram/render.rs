//! Telegram's HTML: escaped text, monospace tables, and answers split under
//! the 4,096-character limit of one message. Everything a user, a strategy
//! or an exchange wrote goes through [`escape`], so a name or an error with
//! `_*[]<>&` cannot break a message.

/// Most characters of one message we send (Telegram's limit is 4,096 after
/// entities are parsed; the margin covers the tags a split adds).
pub const MESSAGE_LIMIT: usize = 4_000;

/// One part of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A bold line.
    Title(String),
    /// Plain text (escaped when rendered).
    Text(String),
    /// Rows shown in a monospace block, columns padded to their widest cell.
    Table {
        /// Column names.
        header: Vec<String>,
        /// Cells, one row each.
        rows: Vec<Vec<String>>,
    },
}

/// Escapes text for Telegram's HTML parse mode.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The lines of a table, columns padded (numbers right-aligned).
fn table_lines(header: &[String], rows: &[Vec<String>]) -> Vec<String> {
    let columns = header.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let mut widths = vec![0; columns];
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let numeric = |cell: &str| {
        !cell.is_empty()
            && cell.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    };
    // A column of numbers only is right-aligned.
    let right: Vec<bool> = (0..columns)
        .map(|i| rows.iter().all(|row| row.get(i).is_some_and(|cell| numeric(cell) || cell == "-")))
        .collect();
    let header = (!header.is_empty()).then_some(header);
    header
        .into_iter()
        .chain(rows.iter().map(Vec::as_slice))
        .map(|row| {
            let cells: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map_or("", String::as_str);
                    if right[i] { format!("{cell:>w$}", w = widths[i]) } else { format!("{cell:<w$}", w = widths[i]) }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// Splits `text` into pieces of at most `limit` characters, at a line end where one is near.
fn hard_split(text: &str, limit: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.chars().count() >= limit {
            pieces.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    pieces.push(current);
    pieces
}

/// Renders blocks as HTML messages, each under [`MESSAGE_LIMIT`]: a table
/// that does not fit is continued in the next message in its own
/// monospace block; a line longer than a message is cut.
pub fn render(blocks: &[Block]) -> Vec<String> {
    // Each rendered line, and whether it belongs in a <pre> block.
    let mut lines: Vec<(String, bool)> = Vec::new();
    for block in blocks {
        match block {
            Block::Title(text) => lines.push((format!("<b>{}</b>", escape(text)), false)),
            Block::Text(text) => {
                for line in text.lines() {
                    for piece in hard_split(line, MESSAGE_LIMIT / 2) {
                        lines.push((escape(&piece), false));
                    }
                }
            }
            Block::Table { header, rows } => {
                for line in table_lines(header, rows) {
                    for piece in hard_split(&line, MESSAGE_LIMIT / 2) {
                        lines.push((escape(&piece), true));
                    }
                }
            }
        }
    }
    let mut messages = Vec::new();
    let mut current = String::new();
    let mut in_pre = false;
    let close_pre = |current: &mut String| {
        current.truncate(current.trim_end_matches('\n').len());
        current.push_str("</pre>\n");
    };
    for (line, pre) in lines {
        let cost = line.chars().count() + 1 + if pre != in_pre { 6 } else { 0 };
        if !current.is_empty() && current.chars().count() + cost + 6 > MESSAGE_LIMIT {
            if in_pre {
                close_pre(&mut current);
                in_pre = false;
            }
            messages.push(std::mem::take(&mut current).trim_end().to_string());
        }
        if pre && !in_pre {
            current.push_str("<pre>");
            in_pre = true;
        } else if !pre && in_pre {
            close_pre(&mut current);
            in_pre = false;
        }
        current.push_str(&line);
        current.push('\n');
    }
    if in_pre {
        close_pre(&mut current);
    }
    if !current.trim().is_empty() {
        messages.push(current.trim_end().to_string());
    }
    messages
}

/// The text a user sees of a rendered message (tags dropped, entities
/// decoded): what is sent again when Telegram refuses the HTML.
pub fn plain(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_are_escaped_and_survive_plain() {
        let text = "reload rejected: bad_name*[x] <script> & `code` at s.rhai:3:7";
        let html = render(&[Block::Title("a_b".into()), Block::Text(text.into())]);
        assert_eq!(html.len(), 1);
        assert!(html[0].contains("&lt;script&gt; &amp;"), "{}", html[0]);
        assert!(!html[0].contains("<script>"));
        assert_eq!(plain(&html[0]), format!("a_b\n{text}"));
    }

    #[test]
    fn tables_are_padded_and_long_answers_split_under_the_limit() {
        let rows: Vec<Vec<String>> =
            (0..600).map(|i| vec![format!("strategy_{i}"), format!("{}.5", i * 10), "a<b".into()]).collect();
        let header = vec!["name".to_string(), "value".to_string(), "note".to_string()];
        let messages = render(&[Block::Title("Positions".into()), Block::Table { header, rows }]);
        assert!(messages.len() > 3, "{} messages", messages.len());
        for message in &messages {
            assert!(message.chars().count() <= 4096, "{}", message.chars().count());
            assert_eq!(message.matches("<pre>").count(), message.matches("</pre>").count(), "{message}");
        }
        let all: String = messages.iter().map(|m| plain(m)).collect::<Vec<_>>().join("\n");
        assert_eq!(all.matches("strategy_").count(), 600, "every row once");
        assert!(all.contains("strategy_5      50.5  a<b"), "numbers right-aligned: {}", &all[..400]);
        let long = render(&[Block::Text("x".repeat(10_000))]);
        assert!(long.len() >= 3 && long.iter().all(|m| m.chars().count() <= 4096));
    }
}
