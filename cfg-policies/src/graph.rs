//! The branch graph: branches → operators → outputs, as a petgraph DAG.
//!
//! A branch or named value used by several terms is one node with several
//! out-edges: it is computed once.

use cfg_core::expr::{Expr, Policy, ScaleRef};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeMap;
use std::fmt::Write;

/// A node of the branch graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A model call.
    Branch(String),
    /// An operator, with a label such as `Cfg(scale)`.
    Op(String),
    /// A named value.
    Value(String),
    /// A model output.
    Output(String),
}

impl Node {
    fn label(&self) -> String {
        match self {
            Node::Branch(n) => format!("branch {n}"),
            Node::Op(l) => l.clone(),
            Node::Value(n) => format!("value {n}"),
            Node::Output(n) => format!("output {n}"),
        }
    }
}

/// A policy's branch graph. Edges point from operand to consumer.
#[derive(Debug, Clone)]
pub struct BranchGraph {
    /// The DAG.
    pub graph: DiGraph<Node, ()>,
}

/// Builds the graph of a validated policy.
pub fn build(policy: &Policy) -> BranchGraph {
    let mut b = Builder { graph: DiGraph::new(), named: BTreeMap::new(), policy };
    for (name, _) in policy.branches.iter() {
        let i = b.graph.add_node(Node::Branch(name.to_string()));
        b.named.insert(format!("branch:{name}"), i);
    }
    for (name, spec) in policy.outputs.iter() {
        let top = b.expr(&spec.guidance);
        let out = b.graph.add_node(Node::Output(name.to_string()));
        b.graph.add_edge(top, out, ());
        // CFG++: the sampler's re-noising prediction, a second sink.
        if let Some(r) = &spec.renoise {
            let top = b.expr(r);
            let out = b.graph.add_node(Node::Output(format!("{name} (renoise)")));
            b.graph.add_edge(top, out, ());
        }
    }
    BranchGraph { graph: b.graph }
}

struct Builder<'a> {
    graph: DiGraph<Node, ()>,
    named: BTreeMap<String, NodeIndex>,
    policy: &'a Policy,
}

impl Builder<'_> {
    fn expr(&mut self, e: &Expr) -> NodeIndex {
        match e {
            Expr::Ref(b) => self.named[&format!("branch:{b}")],
            Expr::Use(v) => {
                let key = format!("value:{v}");
                if let Some(i) = self.named.get(&key) {
                    return *i;
                }
                let i = self.graph.add_node(Node::Value(v.clone()));
                self.named.insert(key, i);
                if let Some(inner) = self.policy.values.get(v) {
                    let inner = inner.clone();
                    let top = self.expr(&inner);
                    self.graph.add_edge(top, i, ());
                }
                i
            }
            _ => {
                let node = self.graph.add_node(Node::Op(op_label(e)));
                for c in e.children() {
                    let ci = self.expr(c);
                    self.graph.add_edge(ci, node, ());
                }
                node
            }
        }
    }
}

/// A one-line label of an operator node.
pub fn op_label(e: &Expr) -> String {
    let scale = match e.scale() {
        Some(ScaleRef::Value(v)) => format!("{v}"),
        Some(ScaleRef::Named(n)) => n.clone(),
        None => String::new(),
    };
    match e {
        Expr::Scaled { offset: ScaleRef::Value(o), .. } if *o != 0.0 => format!("Scaled({scale} {o:+})"),
        Expr::Scaled { offset: ScaleRef::Named(o), .. } => format!("Scaled({scale} + {o})"),
        Expr::Windowed { window, .. } => format!("Windowed({})", window_label(window)),
        Expr::Renorm { over, min, max, eps, .. } => {
            let mut parts = vec![format!("over: {over:?}")];
            parts.extend(min.as_ref().map(|v| format!("min: {v}")));
            parts.extend(max.as_ref().map(|v| format!("max: {v}")));
            if *eps != ScaleRef::Value(0.0) {
                parts.push(format!("eps: {eps}"));
            }
            format!("Renorm({})", parts.join(", "))
        }
        Expr::StdRescale { phi, over, .. } => format!("StdRescale(phi: {phi}, over: {over:?})"),
        Expr::NormCap { ratio, .. } => format!("NormCap({ratio})"),
        _ if !scale.is_empty() => format!("{}({scale})", e.operator()),
        _ => e.operator().to_string(),
    }
}

/// A window as it is written in a policy (`Sigma(low: 0.28, high: 2.9)`).
pub fn window_label(w: &cfg_core::window::Window) -> String {
    use cfg_core::window::{Window, WindowRule};
    match w {
        Window::Steps { start, stop } => format!("Steps(start: {start}, stop: {stop})"),
        Window::Progress { start, stop, rule: WindowRule::HalfOpen } => {
            format!("Progress(start: {start}, stop: {stop})")
        }
        Window::Progress { start, stop, rule } => format!("Progress(start: {start}, stop: {stop}, rule: {rule:?})"),
        Window::Sigma { low, high } => format!("Sigma(low: {low}, high: {high})"),
    }
}

impl BranchGraph {
    /// Graphviz DOT text.
    pub fn to_dot(&self, name: &str) -> String {
        let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n", escape(name));
        for i in self.graph.node_indices() {
            let node = &self.graph[i];
            let shape = match node {
                Node::Branch(_) => "box",
                Node::Output(_) => "doubleoctagon",
                Node::Value(_) => "note",
                Node::Op(_) => "ellipse",
            };
            let _ = writeln!(s, "  n{} [label=\"{}\", shape={shape}];", i.index(), escape(&node.label()));
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).expect("edge exists");
            let _ = writeln!(s, "  n{} -> n{};", a.index(), b.index());
        }
        s.push_str("}\n");
        s
    }

    /// An indented tree per output, leaves being branches.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for i in self.graph.node_indices() {
            if let Node::Output(_) = self.graph[i] {
                self.text_node(i, 0, &mut s);
            }
        }
        s
    }

    fn text_node(&self, i: NodeIndex, depth: usize, s: &mut String) {
        let _ = writeln!(s, "{}{}", "  ".repeat(depth), self.graph[i].label());
        let mut inputs: Vec<NodeIndex> = self.graph.neighbors_directed(i, petgraph::Direction::Incoming).collect();
        inputs.reverse();
        for c in inputs {
            self.text_node(c, depth + 1, s);
        }
    }

    /// Branch nodes, and how many operators read each.
    pub fn branch_fan_out(&self) -> Vec<(String, usize)> {
        self.graph
            .node_indices()
            .filter_map(|i| match &self.graph[i] {
                Node::Branch(n) => Some((n.clone(), self.graph.neighbors(i).count())),
                _ => None,
            })
            .collect()
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
