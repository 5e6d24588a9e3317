//! Loading and resolving a graph: every node compiled (or refused), the
//! nodes put in evaluation order, everything that depends on constants
//! alone folded, Conv fused with a following BatchNormalization (folded
//! into its weights), residual Add and Relu, and the point after which each
//! value can be dropped.

use super::ops::{self, Op};
use super::proto::{GraphProto, NodeProto};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};

/// A compiled node.
#[derive(Debug)]
pub(crate) struct Node {
    /// The node's name, or its first output's when it has none.
    pub name: String,
    pub op_type: String,
    pub op: Op,
    /// Value ids; `None` for an omitted optional input.
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
    /// Depends only on constants and the input's shape (Shape, and the
    /// arithmetic on it): run once per input shape, then reused.
    pub per_shape: bool,
}

#[derive(Debug)]
pub(crate) struct Graph {
    /// Value names, by id.
    pub names: Vec<String>,
    /// Values known when the graph is loaded (initializers, folded nodes).
    pub consts: Vec<Option<Tensor>>,
    pub nodes: Vec<Node>,
    pub input: usize,
    pub outputs: Vec<usize>,
    /// Per node: the values no later node needs.
    pub free_after: Vec<Vec<usize>>,
    /// The op histogram of the file, before folding and fusion.
    pub histogram: BTreeMap<String, usize>,
}

/// What went wrong, before the file's path is put in front.
pub(crate) type Why = String;

fn node_label(n: &NodeProto) -> String {
    if !n.name().is_empty() {
        n.name().to_string()
    } else {
        n.output.first().cloned().unwrap_or_default()
    }
}

impl Graph {
    /// Compiles and resolves `g`. `input` is the image input's name;
    /// `read` turns a `TensorProto` into a CPU tensor.
    pub fn build(
        g: &GraphProto,
        opset: i64,
        input: &str,
        read: ops::TensorReader,
        device: &Device,
    ) -> Result<Graph, Why> {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut names = vec![];
        let mut consts: Vec<Option<Tensor>> = vec![];
        let mut id_of = |name: &str, names: &mut Vec<String>, consts: &mut Vec<Option<Tensor>>| {
            *ids.entry(name.to_string()).or_insert_with(|| {
                names.push(name.to_string());
                consts.push(None);
                names.len() - 1
            })
        };
        for t in &g.initializer {
            let v = read(t)?;
            let id = id_of(t.name(), &mut names, &mut consts);
            consts[id] = Some(v);
        }
        if !g.sparse_initializer.is_empty() {
            return Err("sparse initializers are not supported".into());
        }
        let input_id = id_of(input, &mut names, &mut consts);
        let mut histogram = BTreeMap::new();
        let mut nodes = vec![];
        // every node rstile cannot run, so one error lists them all
        let mut refused: Vec<String> = vec![];
        for n in &g.node {
            *histogram.entry(n.op_type().to_string()).or_insert(0) += 1;
            let label = node_label(n);
            let domain = n.domain();
            if !(domain.is_empty() || domain == "ai.onnx") {
                refused.push(format!(
                    "op {domain}.{} (node '{label}') is not supported: rstile runs the default ONNX domain only",
                    n.op_type()
                ));
                continue;
            }
            let op = match ops::compile(n, opset, read) {
                Ok(op) => op,
                Err(why) => {
                    refused.push(if why.is_empty() {
                        format!("op {} (node '{label}') is not supported", n.op_type())
                    } else {
                        format!("op {} (node '{label}'): {why}", n.op_type())
                    });
                    continue;
                }
            };
            let inputs = n
                .input
                .iter()
                .map(|i| (!i.is_empty()).then(|| id_of(i, &mut names, &mut consts)))
                .collect();
            let outputs = n
                .output
                .iter()
                .map(|o| id_of(o, &mut names, &mut consts))
                .collect();
            nodes.push(Node {
                name: label,
                op_type: n.op_type().to_string(),
                op,
                inputs,
                outputs,
                per_shape: false,
            });
        }
        match refused.len() {
            0 => {}
            1 => return Err(refused.remove(0)),
            n => {
                return Err(format!(
                    "{n} nodes rstile cannot run: {}",
                    refused.join("; ")
                ))
            }
        }
        let mut outputs = vec![];
        for o in &g.output {
            outputs.push(id_of(o.name(), &mut names, &mut consts));
        }
        let mut graph = Graph {
            names,
            consts,
            nodes,
            input: input_id,
            outputs,
            free_after: vec![],
            histogram,
        };
        graph.order()?;
        graph.fold()?;
        graph.fuse()?;
        graph.fuse_up_concat();
        graph.place(device)?;
        graph.plan_frees();
        Ok(graph)
    }

    /// Topological order (stable: a sorted file keeps its order); every
    /// input must be a constant, the image or some node's output.
    fn order(&mut self) -> Result<(), Why> {
        let n = self.names.len();
        let mut producer = vec![usize::MAX; n];
        for (i, node) in self.nodes.iter().enumerate() {
            for &o in &node.outputs {
                if producer[o] != usize::MAX || self.consts[o].is_some() || o == self.input {
                    return Err(format!(
                        "value '{}' is produced twice (node '{}')",
                        self.names[o], node.name
                    ));
                }
                producer[o] = i;
            }
        }
        let known = |v: usize| self.consts[v].is_some() || v == self.input;
        for node in &self.nodes {
            for &i in node.inputs.iter().flatten() {
                if producer[i] == usize::MAX && !known(i) {
                    return Err(format!(
                        "input '{}' of node '{}' ({}) is not produced by any node nor stored in the file",
                        self.names[i], node.name, node.op_type
                    ));
                }
            }
        }
        for &o in &self.outputs {
            if producer[o] == usize::MAX && !known(o) {
                return Err(format!(
                    "graph output '{}' is not produced by any node",
                    self.names[o]
                ));
            }
        }
        // Kahn, always taking the earliest ready node
        let mut pending: Vec<usize> = self
            .nodes
            .iter()
            .map(|node| {
                node.inputs
                    .iter()
                    .flatten()
                    .filter(|&&i| producer[i] != usize::MAX)
                    .count()
            })
            .collect();
        let mut users: Vec<Vec<usize>> = vec![vec![]; n];
        for (j, node) in self.nodes.iter().enumerate() {
            for &i in node.inputs.iter().flatten() {
                if producer[i] != usize::MAX {
                    users[i].push(j);
                }
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..self.nodes.len()).filter(|&j| pending[j] == 0).collect();
        let mut order = vec![];
        while let Some(j) = ready.pop_first() {
            order.push(j);
            for &o in &self.nodes[j].outputs {
                for &u in &users[o] {
                    pending[u] -= 1;
                    if pending[u] == 0 {
                        ready.insert(u);
                    }
                }
            }
        }
        if order.len() != self.nodes.len() {
            let stuck = (0..self.nodes.len())
                .find(|j| !order.contains(j))
                .unwrap_or(0);
            return Err(format!(
                "the graph has a cycle through node '{}'",
                self.nodes[stuck].name
            ));
        }
        let mut old: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order
            .into_iter()
            .map(|j| old[j].take().expect("once"))
            .collect();
        Ok(())
    }

    fn is_const(&self, v: usize) -> bool {
        self.consts[v].is_some()
    }

    /// Evaluates, once, every node whose inputs are all constants, and
    /// marks the nodes that depend on the input's shape alone.
    fn fold(&mut self) -> Result<(), Why> {
        let mut per_shape = vec![false; self.names.len()];
        let mut keep = vec![];
        for mut node in std::mem::take(&mut self.nodes) {
            let all_const = node.inputs.iter().flatten().all(|&i| self.is_const(i));
            if all_const
                && node.op.is_shape_op()
                && !self.outputs.iter().any(|o| node.outputs.contains(o))
            {
                let ins: Vec<Option<&Tensor>> = node
                    .inputs
                    .iter()
                    .map(|i| i.and_then(|i| self.consts[i].as_ref()))
                    .collect();
                let outs = node.op.eval(&ins, node.outputs.len()).map_err(|e| {
                    format!(
                        "node '{}' ({}) fails on its constant inputs: {e}",
                        node.name, node.op_type
                    )
                })?;
                for (o, t) in node.outputs.iter().zip(outs) {
                    self.consts[*o] = Some(t);
                }
                continue;
            }
            let shape_only = matches!(node.op, Op::Shape { .. } | Op::Size)
                || (node.op.is_shape_op()
                    && node
                        .inputs
                        .iter()
                        .flatten()
                        .all(|&i| self.is_const(i) || per_shape[i]));
            if shape_only {
                node.per_shape = true;
                for &o in &node.outputs {
                    per_shape[o] = true;
                }
            }
            keep.push(node);
        }
        self.nodes = keep;
        Ok(())
    }

    /// Users of each value, by node index, and whether it is a graph output.
    fn users(&self) -> Vec<Vec<usize>> {
        let mut users = vec![vec![]; self.names.len()];
        for (j, node) in self.nodes.iter().enumerate() {
            for &i in node.inputs.iter().flatten() {
                users[i].push(j);
            }
        }
        for &o in &self.outputs {
            users[o].push(usize::MAX);
        }
        users
    }

    fn new_const(&mut self, name: String, t: Tensor) -> usize {
        self.names.push(name);
        self.consts.push(Some(t));
        self.names.len() - 1
    }

    /// Conv → BatchNormalization (folded into the weights) → Add (the
    /// residual, when its other operand is ready before the Conv) → Relu.
    fn fuse(&mut self) -> Result<(), Why> {
        let mut removed = vec![false; self.nodes.len()];
        for c in 0..self.nodes.len() {
            if !matches!(self.nodes[c].op, Op::Conv(_)) || self.nodes[c].outputs.len() != 1 {
                continue;
            }
            let w = self.nodes[c].inputs.get(1).copied().flatten();
            let Some(w) = w.filter(|&w| self.is_const(w)) else {
                continue;
            };
            // removed nodes have no inputs left, so they use nothing
            let sole = |g: &Graph, v: usize| -> Option<usize> {
                let users = g.users();
                match users[v].as_slice() {
                    [j] if *j != usize::MAX => Some(*j),
                    _ => None,
                }
            };
            // BatchNormalization
            let out = self.nodes[c].outputs[0];
            if let Some(b) = sole(self, out) {
                let bn = &self.nodes[b];
                let params: Option<Vec<&Tensor>> = bn.inputs[1..]
                    .iter()
                    .map(|i| i.and_then(|i| self.consts[i].as_ref()))
                    .collect();
                if let (Op::BatchNorm { eps }, Some(p)) = (&bn.op, params) {
                    if p.len() == 4 && bn.inputs[0] == Some(out) {
                        let (scale, shift) = ops::norm::bn_affine(p[0], p[1], p[2], p[3], *eps)
                            .map_err(|e| format!("node '{}': {e}", bn.name))?;
                        let wt = self.consts[w].as_ref().expect("const");
                        let co = wt.dim(0).map_err(|e| e.to_string())?;
                        if co == scale.len() && wt.dtype() == DType::F32 {
                            let bias = match self.nodes[c].inputs.get(2).copied().flatten() {
                                Some(bi) => match &self.consts[bi] {
                                    Some(t) => Some(ops::floats(t).map_err(|e| e.to_string())?),
                                    None => None,
                                },
                                None => Some(vec![0.0; co]),
                            };
                            if let Some(bias) = bias {
                                let f = || -> candle_core::Result<(Tensor, Tensor)> {
                                    let s =
                                        Tensor::from_slice(&scale, (co, 1, 1, 1), &Device::Cpu)?;
                                    let w2 = wt.broadcast_mul(&s)?;
                                    let b2: Vec<f32> = (0..co)
                                        .map(|i| bias[i] as f32 * scale[i] + shift[i])
                                        .collect();
                                    Ok((w2, Tensor::from_vec(b2, co, &Device::Cpu)?))
                                };
                                let (w2, b2) = f().map_err(|e| e.to_string())?;
                                let name = self.nodes[c].name.clone();
                                let wi = self.new_const(format!("{name}.weight+bn"), w2);
                                let bi = self.new_const(format!("{name}.bias+bn"), b2);
                                let bn_out = self.nodes[b].outputs[0];
                                let conv = &mut self.nodes[c];
                                conv.inputs.resize(3, None);
                                conv.inputs[1] = Some(wi);
                                conv.inputs[2] = Some(bi);
                                conv.outputs[0] = bn_out;
                                removed[b] = true;
                                self.nodes[b].inputs.clear();
                            }
                        }
                    }
                }
            }
            // residual Add
            let out = self.nodes[c].outputs[0];
            if let Some(a) = sole(self, out) {
                if matches!(self.nodes[a].op, Op::Binary(ops::elementwise::Binary::Add))
                    && self.nodes[a].inputs.len() == 2
                {
                    let other = if self.nodes[a].inputs[0] == Some(out) {
                        self.nodes[a].inputs[1]
                    } else {
                        self.nodes[a].inputs[0]
                    };
                    let ready = other.is_some_and(|r| {
                        r != out
                            && !self.is_const(r)
                            && (r == self.input
                                || self.nodes[..c].iter().any(|n| n.outputs.contains(&r)))
                    });
                    if ready {
                        let add_out = self.nodes[a].outputs[0];
                        let conv = &mut self.nodes[c];
                        conv.inputs.resize(4, None);
                        conv.inputs[3] = other;
                        conv.outputs[0] = add_out;
                        if let Op::Conv(cv) = &mut conv.op {
                            cv.residual = true;
                        }
                        removed[a] = true;
                        self.nodes[a].inputs.clear();
                    }
                }
            }
            // Relu
            let out = self.nodes[c].outputs[0];
            if let Some(r) = sole(self, out) {
                if matches!(self.nodes[r].op, Op::Unary(ops::elementwise::Unary::Relu)) {
                    let relu_out = self.nodes[r].outputs[0];
                    let conv = &mut self.nodes[c];
                    conv.outputs[0] = relu_out;
                    if let Op::Conv(cv) = &mut conv.op {
                        cv.relu = true;
                    }
                    removed[r] = true;
                    self.nodes[r].inputs.clear();
                }
            }
        }
        self.drop_nodes(&removed);
        Ok(())
    }

    /// Moves the constants that the network's own ops use to `device`
    /// (shape constants stay on the CPU), and drops those no node uses.
    fn place(&mut self, device: &Device) -> Result<(), Why> {
        let users = self.users();
        #[allow(clippy::needless_range_loop)]
        for v in 0..self.consts.len() {
            let Some(t) = &self.consts[v] else { continue };
            if users[v].is_empty() {
                self.consts[v] = None;
                continue;
            }
            if device.is_cpu() || !t.dtype().is_float() {
                continue;
            }
            let heavy = users[v]
                .iter()
                .any(|&j| j == usize::MAX || !self.nodes[j].per_shape);
            if heavy {
                self.consts[v] = Some(t.to_device(device).map_err(|e| e.to_string())?);
            }
        }
        Ok(())
    }

    /// Drops the nodes flagged in `removed` (by node index).
    fn drop_nodes(&mut self, removed: &[bool]) {
        let nodes = std::mem::take(&mut self.nodes);
        self.nodes = nodes
            .into_iter()
            .zip(removed)
            .filter(|(_, r)| !**r)
            .map(|(n, _)| n)
            .collect();
    }

    /// A nearest Resize whose output feeds only one Concat becomes part of
    /// it ([`ops::resize::UpConcat`]): the Concat takes the Resize's input
    /// in its place, and the Resize's other inputs after its own.
    fn fuse_up_concat(&mut self) {
        let users = self.users();
        let mut removed = vec![false; self.nodes.len()];
        for c in 0..self.nodes.len() {
            let Op::Concat { axis } = self.nodes[c].op else {
                continue;
            };
            if self.nodes[c].per_shape {
                continue;
            }
            let found = self.nodes[c].inputs.iter().enumerate().find_map(|(i, v)| {
                let v = (*v)?;
                let r = self.nodes.iter().position(|n| n.outputs == [v])?;
                let Op::Resize(rs) = &self.nodes[r].op else {
                    return None;
                };
                let sole = users[v] == [c];
                (!rs.linear && sole && !removed[r] && !self.nodes[r].per_shape)
                    .then(|| (i, r, rs.clone()))
            });
            let Some((part, r, resize)) = found else {
                continue;
            };
            let rin = std::mem::take(&mut self.nodes[r].inputs);
            let node = &mut self.nodes[c];
            let parts = node.inputs.len();
            node.inputs[part] = rin[0];
            node.inputs.extend_from_slice(&rin[1..]);
            node.op = Op::UpConcat(ops::resize::UpConcat {
                resize,
                axis,
                part,
                parts,
            });
            removed[r] = true;
        }
        self.drop_nodes(&removed);
    }

    /// Drops a Softmax over the channel axis (of a rank-4 output) that
    /// makes the first output and that no other node reads: the first
    /// output becomes its input, the logits. Says whether it did.
    pub fn strip_final_softmax(&mut self) -> bool {
        let Some(&out) = self.outputs.first() else {
            return false;
        };
        let Some(j) = self.nodes.iter().position(|n| n.outputs.contains(&out)) else {
            return false;
        };
        let n = &self.nodes[j];
        let channel = matches!(&n.op, Op::Softmax(s)
            if !s.log && !s.coerce_2d && (s.axis == 1 || s.axis == -3));
        let Some(Some(logits)) = n.inputs.first().copied() else {
            return false;
        };
        let read_elsewhere = self.outputs[1..].contains(&out)
            || self
                .nodes
                .iter()
                .any(|m| m.inputs.iter().flatten().any(|&i| i == out));
        if !channel || read_elsewhere || n.outputs.len() != 1 || self.is_const(logits) {
            return false;
        }
        self.nodes.remove(j);
        self.outputs[0] = logits;
        self.plan_frees();
        true
    }

    fn plan_frees(&mut self) {
        let mut last = vec![usize::MAX; self.names.len()];
        for (j, node) in self.nodes.iter().enumerate() {
            for &i in node.inputs.iter().flatten() {
                last[i] = j;
            }
        }
        let mut free_after = vec![vec![]; self.nodes.len()];
        for (v, &j) in last.iter().enumerate() {
            if j != usize::MAX && !self.outputs.contains(&v) && !self.is_const(v) {
                free_after[j].push(v);
            }
        }
        self.free_after = free_after;
    }
}
