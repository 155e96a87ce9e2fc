//! Where a value sits in a TOML file: the line and column behind a problem.
//!
//! Validation works on the deserialized model and names what is wrong by a path such as
//! `scenic_area[2].capacity.instantaneous`; this module resolves that path against the spans
//! `toml_edit` keeps, so every message points at the line a person has to change.

use std::ops::Range;

use toml_edit::{Array, ArrayOfTables, Document, InlineTable, Item, Table, Value};

/// A position in a file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `src`.
    pub fn of_offset(src: &str, offset: usize) -> Position {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position { line, column }
    }
}

enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Table(&'d Table),
    Inline(&'d InlineTable),
    Tables(&'d ArrayOfTables),
    Array(&'d Array),
    Leaf,
}

fn node_of_item(item: &Item) -> Node<'_> {
    match item {
        Item::Table(t) => Node::Table(t),
        Item::ArrayOfTables(a) => Node::Tables(a),
        Item::Value(v) => node_of_value(v),
        Item::None => Node::Leaf,
    }
}

fn node_of_value(value: &Value) -> Node<'_> {
    match value {
        Value::InlineTable(t) => Node::Inline(t),
        Value::Array(a) => Node::Array(a),
        _ => Node::Leaf,
    }
}

/// The byte range of the deepest part of `path` that exists in `doc`: the key of the last
/// segment where it is present, else the nearest enclosing table.
pub fn span_of<S: AsRef<str>>(doc: &Document<S>, path: &str) -> Option<Range<usize>> {
    let mut span = None;
    let mut node = Node::Table(doc.as_table());
    for seg in segments(path) {
        let next = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span().or_else(|| item.span()), node_of_item(item))),
            (Seg::Key(k), Node::Inline(t)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span().or_else(|| item.span()), node_of_item(item))),
            (Seg::Index(i), Node::Tables(a)) => a.get(i).map(|t| (t.span(), Node::Table(t))),
            (Seg::Index(i), Node::Array(a)) => a.get(i).map(|v| (v.span(), node_of_value(v))),
            _ => None,
        };
        let Some((next_span, next_node)) = next else {
            break;
        };
        span = next_span.or(span);
        node = next_node;
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
[site]
id = \"x\"

[[area]]
id = \"a\"
capacity = { instantaneous = 10, daily = 0 }

[[area]]
id = \"b\"
gates = [\"g1\", \"g2\"]
";

    fn line_of(path: &str) -> usize {
        let doc = Document::parse(SRC).unwrap();
        Position::of_offset(SRC, span_of(&doc, path).unwrap().start).line
    }

    #[test]
    fn paths_resolve_to_the_line_of_their_key() {
        assert_eq!(line_of("site.id"), 2);
        assert_eq!(line_of("area[0].capacity.daily"), 6);
        assert_eq!(line_of("area[1].id"), 9);
        assert_eq!(line_of("area[1].gates[1]"), 10);
    }

    #[test]
    fn a_missing_key_points_at_its_table() {
        assert_eq!(line_of("area[1].missing"), 8);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let src = "name = \"赣州\"\nx = 1";
        assert_eq!(
            Position::of_offset(src, src.find('x').unwrap()),
            Position { line: 2, column: 1 }
        );
        let after = src.find('"').unwrap() + 1 + "赣州".len();
        assert_eq!(Position::of_offset(src, after).column, 11);
    }
}
