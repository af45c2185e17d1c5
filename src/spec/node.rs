//! A YAML document as a tree whose every node remembers where it came from (file, line, column).
//!
//! serde_yaml drops positions, so we build our own tree from saphyr-parser's events. Building it
//! ourselves is also where the defences live: anchors and aliases are expanded under a node
//! budget (an alias bomb of billions of nodes is refused after a million), nesting depth is
//! bounded (the builder never recurses on input, so deep input cannot overflow the stack), and
//! `<<` merge keys and the `!reset` / `!override` tags are resolved here.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag as YTag};

use super::diag::{Diagnostic, Pos};

/// Largest project file berth reads (bytes). Real files are a few kilobytes; a generated
/// 1,000-service file is about 300 KB.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Largest number of nodes a document may expand to, aliases counted at their full size.
pub const MAX_NODES: usize = 1_000_000;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 64;

/// The Compose merge tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// `!reset`: remove the value inherited from an earlier file.
    Reset,
    /// `!override`: replace the inherited value instead of merging with it.
    Override,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub pos: Pos,
    pub tag: Option<Tag>,
    /// True for an unquoted scalar: after interpolation its text is typed again
    /// (`cpus: ${CPUS}` becomes a number, as if written plainly).
    pub plain: bool,
}

impl Node {
    pub fn new(kind: Kind, pos: Pos) -> Node {
        Node {
            kind,
            pos,
            tag: None,
            plain: false,
        }
    }

    pub fn str(s: impl Into<String>, pos: Pos) -> Node {
        Node::new(Kind::Str(s.into()), pos)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Vec<(Key, Node)>> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Key, Node)>> {
        match &mut self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&Vec<Node>> {
        match &self.kind {
            Kind::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?
            .iter_mut()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn key_pos(&self, key: &str) -> Option<&Pos> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| &k.pos)
    }

    /// Removes `key` from a mapping, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let m = self.as_map_mut()?;
        let i = m.iter().position(|(k, _)| k.name == key)?;
        Some(m.remove(i).1)
    }

    /// Sets `key` in a mapping (replacing, or appending at the end).
    pub fn set(&mut self, key: &str, value: Node) {
        let pos = value.pos.clone();
        if let Some(m) = self.as_map_mut() {
            if let Some(slot) = m.iter_mut().find(|(k, _)| k.name == key) {
                slot.1 = value;
            } else {
                m.push((
                    Key {
                        name: key.to_string(),
                        pos,
                    },
                    value,
                ));
            }
        }
    }

    /// A scalar's text as a user would have written it (numbers and booleans too).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(i) => Some(i.to_string()),
            Kind::Float(f) => Some(f.to_string()),
            Kind::Bool(b) => Some(b.to_string()),
            Kind::Null => None,
            _ => None,
        }
    }

    /// What kind of value this is, in the words an error message uses.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// The node count of this subtree (for the alias budget).
    fn size(&self) -> usize {
        match &self.kind {
            Kind::Seq(s) => 1 + s.iter().map(Node::size).sum::<usize>(),
            Kind::Map(m) => 1 + m.iter().map(|(_, v)| 1 + v.size()).sum::<usize>(),
            _ => 1,
        }
    }

    /// Converts to JSON for schema validation and typed decoding (positions dropped).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::from(*i),
            Kind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string())),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(s) => Value::Array(s.iter().map(Node::to_json).collect()),
            Kind::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Finds the node at a JSON-pointer-like list of segments, returning the deepest node found
    /// (and the key's position when the last segment names a key: errors about keys point there).
    pub fn locate<'a>(&'a self, segments: &[String]) -> (&'a Node, Option<&'a Pos>) {
        let mut cur = self;
        let mut key_pos = None;
        for seg in segments {
            match &cur.kind {
                Kind::Map(m) => match m.iter().find(|(k, _)| &k.name == seg) {
                    Some((k, v)) => {
                        key_pos = Some(&k.pos);
                        cur = v;
                    }
                    None => return (cur, None),
                },
                Kind::Seq(s) => match seg.parse::<usize>().ok().and_then(|i| s.get(i)) {
                    Some(v) => {
                        key_pos = None;
                        cur = v;
                    }
                    None => return (cur, None),
                },
                _ => return (cur, None),
            }
        }
        (cur, key_pos)
    }
}

/// Types a plain scalar by the YAML 1.2 core schema (what Compose's parser does).
pub fn resolve_plain(text: &str) -> Kind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "true" | "True" | "TRUE" => return Kind::Bool(true),
        "false" | "False" | "FALSE" => return Kind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Kind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Kind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Kind::Float(f64::NAN),
        _ => {}
    }
    let bytes = text.as_bytes();
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = text.strip_prefix("0x")
        && digits(hex, 16)
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Kind::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && digits(oct, 8)
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Kind::Int(i);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    // `mode: 0440` means octal in every Compose file ever written (YAML 1.1, and what Compose's
    // own parser does), though YAML 1.2 reads it as decimal 440.
    if unsigned.len() > 1
        && unsigned.starts_with('0')
        && digits(unsigned, 8)
        && let Ok(i) = i64::from_str_radix(unsigned, 8)
    {
        return Kind::Int(if text.starts_with('-') { -i } else { i });
    }
    if digits(unsigned, 10)
        && let Ok(i) = text.parse::<i64>()
    {
        return Kind::Int(i);
    }
    // Floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    if bytes
        .first()
        .is_some_and(|b| b.is_ascii_digit() || *b == b'.')
        || (unsigned.len() < text.len()
            && unsigned
                .as_bytes()
                .first()
                .is_some_and(|b| b.is_ascii_digit() || *b == b'.'))
    {
        let (mantissa, exp) = match unsigned.find(['e', 'E']) {
            Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
            None => (unsigned, None),
        };
        let mantissa_ok = match mantissa.split_once('.') {
            Some((a, b)) => {
                (a.is_empty() || digits(a, 10))
                    && (b.is_empty() || digits(b, 10))
                    && !(a.is_empty() && b.is_empty())
            }
            None => digits(mantissa, 10),
        };
        let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
        if mantissa_ok
            && exp_ok
            && let Ok(f) = text.parse::<f64>()
        {
            return Kind::Float(f);
        }
    }
    Kind::Str(text.to_string())
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
        tag: Option<Tag>,
    },
    Map {
        entries: Vec<(Key, Node)>,
        /// Key names, once the mapping is large enough for a linear scan to hurt.
        index: Option<std::collections::HashSet<String>>,
        /// Maps pulled in with `<<`, merged when the mapping ends (explicit keys win).
        merges: Vec<Node>,
        pending_key: Option<Node>,
        pos: Pos,
        anchor: usize,
        tag: Option<Tag>,
    },
}

/// Parses one YAML document into a positioned tree. An empty document yields `Ok(None)`.
/// Every error carries its position; parsing stops at the first, since YAML syntax errors leave
/// nothing reliable behind them.
pub fn parse(file: &Arc<str>, text: &str) -> Result<Option<Node>, Diagnostic> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::new(
            Pos::new(file, 1, 1),
            "",
            format!(
                "file is {} bytes; berth reads project files of at most {} bytes",
                text.len(),
                MAX_FILE_BYTES
            ),
        ));
    }
    let mut b = Builder {
        file: Arc::clone(file),
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: MAX_NODES,
        root: None,
        docs: 0,
    };
    let mut parser = Parser::new_from_str(text).keep_tags(true);
    while let Some(ev) = parser.next_event() {
        match ev {
            Ok((event, span)) => {
                if b.event(event, span)? {
                    break;
                }
            }
            Err(e) => {
                let m = e.marker();
                let msg = if e.info().contains("recursion limit") {
                    format!("nesting too deep (berth accepts {MAX_DEPTH} levels); refused")
                } else {
                    format!("invalid YAML: {}", e.info())
                };
                return Err(Diagnostic::new(
                    Pos::new(file, m.line(), m.col() + 1),
                    b.path(),
                    msg,
                ));
            }
        }
    }
    Ok(b.root)
}

struct Builder {
    file: Arc<str>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    budget: usize,
    root: Option<Node>,
    docs: usize,
}

impl Builder {
    fn pos(&self, span: &Span) -> Pos {
        Pos::new(&self.file, span.start.line(), span.start.col() + 1)
    }

    fn err(&self, span: &Span, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.pos(span), self.path(), msg)
    }

    /// The key path of the node being built (`services.web.ports[1]`), for error messages.
    fn path(&self) -> String {
        let mut out = String::new();
        for f in &self.stack {
            match f {
                Frame::Map {
                    pending_key: Some(k),
                    ..
                } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&super::validate::quote_key(
                        &k.scalar_text().unwrap_or_default(),
                    ));
                }
                Frame::Map { .. } => {}
                Frame::Seq { items, .. } => out.push_str(&format!("[{}]", items.len())),
            }
        }
        out
    }

    fn charge(&mut self, n: usize, span: &Span) -> Result<(), Diagnostic> {
        if n > self.budget {
            return Err(self.err(
                span,
                format!(
                    "document expands to more than {MAX_NODES} nodes (an alias bomb?); refused"
                ),
            ));
        }
        self.budget -= n;
        Ok(())
    }

    fn tag(&self, tag: Option<&YTag>, span: &Span) -> Result<Option<Tag>, Diagnostic> {
        let Some(t) = tag else { return Ok(None) };
        match (t.handle.as_str(), t.suffix.as_str()) {
            ("!", "reset") => Ok(Some(Tag::Reset)),
            ("!", "override") => Ok(Some(Tag::Override)),
            // Core-schema tags like !!str, !!int: the scalar code honours !!str; others are fine.
            (h, _) if h == "!!" || h == "tag:yaml.org,2002:" => Ok(None),
            (h, s) => Err(self.err(
                span,
                format!("unknown YAML tag `{h}{s}` (berth knows `!reset` and `!override`)"),
            )),
        }
    }

    /// Handles one event; returns true when the first document is complete.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<bool, Diagnostic> {
        match event {
            Event::StreamStart | Event::Nothing => {}
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(_) => {
                self.docs += 1;
                if self.docs > 1 {
                    return Err(self.err(
                        &span,
                        "a second YAML document (`---`) in a project file; put each project in its own file",
                    ));
                }
            }
            Event::DocumentEnd => {}
            Event::Alias(id) => {
                let Some(size) = self.anchors.get(&id).map(Node::size) else {
                    return Err(self.err(&span, "alias to an unknown anchor"));
                };
                self.charge(size, &span)?;
                let Some(mut node) = self.anchors.get(&id).cloned() else {
                    return Err(self.err(&span, "alias to an unknown anchor"));
                };
                // The alias is used here: errors inside it point at the anchor's text, but the
                // node itself is placed at the alias.
                node.pos = self.pos(&span);
                self.push(node, 0, &span)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.charge(1, &span)?;
                let tag_name = tag.as_ref().map(|t| t.suffix.clone());
                let ctag = self.tag(tag.as_deref(), &span)?;
                let plain = style == ScalarStyle::Plain;
                // Keys are names: they are never typed (`80:` and `true:` are the names "80"
                // and "true"), which also spares the typing work on half of all scalars.
                let is_key = matches!(
                    self.stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                );
                let kind = if plain && !is_key && tag_name.as_deref() != Some("str") {
                    resolve_plain(&text)
                } else {
                    Kind::Str(text.into_owned())
                };
                let node = Node {
                    kind,
                    pos: self.pos(&span),
                    tag: ctag,
                    plain,
                };
                self.push(node, anchor, &span)?;
            }
            Event::SequenceStart(anchor, tag) => {
                self.charge(1, &span)?;
                self.depth_check(&span)?;
                let tag = self.tag(tag.as_deref(), &span)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos: self.pos(&span),
                    anchor,
                    tag,
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.charge(1, &span)?;
                self.depth_check(&span)?;
                let tag = self.tag(tag.as_deref(), &span)?;
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    index: None,
                    merges: Vec::new(),
                    pending_key: None,
                    pos: self.pos(&span),
                    anchor,
                    tag,
                });
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    pos,
                    anchor,
                    tag,
                }) => {
                    let mut n = Node::new(Kind::Seq(items), pos);
                    n.tag = tag;
                    self.push(n, anchor, &span)?;
                }
                _ => return Err(self.err(&span, "unbalanced sequence end")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    merges,
                    pos,
                    anchor,
                    tag,
                    ..
                }) => {
                    // `<<: *base` and `<<: [*a, *b]`: keys of the current map win, then the
                    // merged maps in the order listed.
                    for m in merges {
                        if let Kind::Map(extra) = m.kind {
                            for (k, v) in extra {
                                if !entries.iter().any(|(e, _)| e.name == k.name) {
                                    entries.push((k, v));
                                }
                            }
                        }
                    }
                    let mut n = Node::new(Kind::Map(entries), pos);
                    n.tag = tag;
                    self.push(n, anchor, &span)?;
                }
                _ => return Err(self.err(&span, "unbalanced mapping end")),
            },
        }
        Ok(false)
    }

    fn depth_check(&self, span: &Span) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(
                span,
                format!("nesting too deep (berth accepts {MAX_DEPTH} levels); refused"),
            ));
        }
        Ok(())
    }

    /// Places a finished node into its parent (or as the document root).
    fn push(&mut self, node: Node, anchor: usize, _span: &Span) -> Result<(), Diagnostic> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        // Errors are rare: their key path is computed only when one happens.
        let failed: Option<(Pos, Option<String>, String)> = match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                None
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                None
            }
            Some(Frame::Map {
                entries,
                index,
                merges,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => match &node.kind {
                    // This node is a key.
                    Kind::Str(_) | Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => {
                        *pending_key = Some(node);
                        None
                    }
                    Kind::Null => {
                        *pending_key = Some(Node {
                            kind: Kind::Str(String::new()),
                            ..node
                        });
                        None
                    }
                    _ => Some((
                        node.pos.clone(),
                        None,
                        format!(
                            "a mapping key must be a plain value, found {}",
                            node.type_name()
                        ),
                    )),
                },
                Some(key) => {
                    let key_plain = key.plain;
                    let key_pos = key.pos;
                    let name = match key.kind {
                        Kind::Str(s) => s,
                        other => Node::new(other, key_pos.clone())
                            .scalar_text()
                            .unwrap_or_default(),
                    };
                    if name == "<<" && key_plain {
                        match &node.kind {
                            Kind::Map(_) => {
                                merges.push(node);
                                None
                            }
                            Kind::Seq(items) if items.iter().all(|i| i.as_map().is_some()) => {
                                merges.extend(items.iter().cloned());
                                None
                            }
                            _ => Some((
                                node.pos.clone(),
                                Some(name),
                                format!(
                                    "a merge key `<<` takes a mapping or a list of mappings, found {}",
                                    node.type_name()
                                ),
                            )),
                        }
                    } else {
                        // Large mappings (a thousand services) get a hash index so duplicate
                        // detection stays linear.
                        if index.is_none() && entries.len() >= 16 {
                            *index = Some(entries.iter().map(|(k, _)| k.name.clone()).collect());
                        }
                        let dup = match index {
                            Some(ix) => !ix.insert(name.clone()),
                            None => entries.iter().any(|(k, _)| k.name == name),
                        };
                        if dup {
                            let first = entries
                                .iter()
                                .find(|(k, _)| k.name == name)
                                .map(|(k, _)| k.pos.line)
                                .unwrap_or_default();
                            Some((
                                key_pos,
                                Some(name.clone()),
                                format!("duplicate key `{name}` (first defined at line {first})"),
                            ))
                        } else {
                            entries.push((Key { name, pos: key_pos }, node));
                            None
                        }
                    }
                }
            },
        };
        match failed {
            None => Ok(()),
            Some((pos, key, msg)) => {
                let mut path = self.path();
                if let Some(k) = key {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&super::validate::quote_key(&k));
                }
                Err(Diagnostic::new(pos, path, msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Node>, Diagnostic> {
        parse(&Arc::from("t.yaml"), s)
    }

    #[test]
    fn plain_scalars_follow_yaml_1_2() {
        assert_eq!(resolve_plain("no"), Kind::Str("no".into()));
        assert_eq!(resolve_plain("true"), Kind::Bool(true));
        assert_eq!(resolve_plain("0.5"), Kind::Float(0.5));
        assert_eq!(resolve_plain("-3"), Kind::Int(-3));
        assert_eq!(resolve_plain("80:80"), Kind::Str("80:80".into()));
        assert_eq!(resolve_plain("1e3"), Kind::Float(1000.0));
        assert_eq!(resolve_plain("512m"), Kind::Str("512m".into()));
        assert_eq!(resolve_plain("~"), Kind::Null);
        assert_eq!(resolve_plain("0x1F"), Kind::Int(31));
        assert_eq!(resolve_plain("0440"), Kind::Int(0o440));
        assert_eq!(resolve_plain("0"), Kind::Int(0));
        assert_eq!(resolve_plain("089"), Kind::Int(89));
        assert_eq!(resolve_plain("."), Kind::Str(".".into()));
    }

    #[test]
    fn positions_are_one_based() {
        let n = p("a:\n  b: 1\n").unwrap().unwrap();
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!((b.pos.line, b.pos.col), (2, 6));
        let kp = n.get("a").unwrap().key_pos("b").unwrap();
        assert_eq!((kp.line, kp.col), (2, 3));
    }

    #[test]
    fn merge_keys_and_anchors() {
        let n = p("x: &b {a: 1, b: 2}\ny:\n  <<: *b\n  b: 3\n")
            .unwrap()
            .unwrap();
        let y = n.get("y").unwrap();
        assert_eq!(y.get("a").unwrap().kind, Kind::Int(1));
        assert_eq!(y.get("b").unwrap().kind, Kind::Int(3));
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut s = String::from("a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..10 {
            let prev = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev}]\n"
            ));
        }
        let t = std::time::Instant::now();
        let e = p(&s).unwrap_err();
        assert!(e.message.contains("alias bomb"), "{e}");
        // Expanded, it is 10^10 nodes: hours. Refused, it is milliseconds, which a loaded
        // 2-core machine running a debug build can stretch past a second.
        assert!(t.elapsed().as_secs() < 10);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let s = "[".repeat(100_000);
        let e = p(&s).unwrap_err();
        assert!(e.message.contains("nesting"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = p("a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("duplicate key"));
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn tags() {
        let n = p("a: !reset []\nb: !override {x: 1}\n").unwrap().unwrap();
        assert_eq!(n.get("a").unwrap().tag, Some(Tag::Reset));
        assert_eq!(n.get("b").unwrap().tag, Some(Tag::Override));
        assert!(p("a: !bogus 1\n").is_err());
    }

    #[test]
    fn empty_document() {
        assert!(p("").unwrap().is_none());
        assert!(p("# just a comment\n").unwrap().is_none());
    }
}
