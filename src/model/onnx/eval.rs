//! Running a resolved graph on one batch.
//!
//! Values live in a slot per value id and are dropped after their last
//! use, so the peak memory is that of the widest cut through the graph,
//! not the sum of all activations. The shape arithmetic (nodes marked
//! `per_shape`) runs on the first batch of each input shape; its results
//! are kept and reused by later batches of that shape.

use super::graph::Graph;
use super::ops::Op;
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The values of the per-shape nodes that the rest of the graph reads,
/// by input shape.
#[derive(Debug, Default)]
pub(crate) struct ShapeCache(Mutex<HashMap<Vec<usize>, Arc<ShapeValues>>>);

/// `(value id, value)` of the per-shape values for one input shape.
type ShapeValues = Vec<(usize, Tensor)>;

/// A failure in a node: its index in `graph.nodes` and candle's error.
pub(crate) struct NodeError {
    pub node: usize,
    pub error: candle_core::Error,
}

/// What a run measured besides its outputs.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// Multiply-adds times two of the Conv and ConvTranspose nodes.
    pub conv_flops: u64,
    /// The most bytes of values alive at once (the input included, the
    /// weights not).
    pub peak_bytes: u64,
    /// When set, each node's wall time is added to its entry, by node
    /// index.
    pub times: Option<BTreeMap<usize, NodeTime>>,
}

/// One node's share of a profile ([`Counts::times`]).
#[derive(Debug, Default, Clone)]
pub struct NodeTime {
    pub name: String,
    /// Its op type, a fused Conv named with what it absorbed
    /// (`Conv+Add+Relu` and so on).
    pub kind: String,
    /// The first output's shape.
    pub output: Vec<usize>,
    pub seconds: f64,
    /// Conv and ConvTranspose FLOPs over all calls.
    pub flops: u64,
}

fn bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

pub(crate) fn run(
    g: &Graph,
    x: Tensor,
    cache: &ShapeCache,
    mut counts: Option<&mut Counts>,
) -> Result<Vec<Tensor>, NodeError> {
    let key = x.dims().to_vec();
    let cached = cache.0.lock().expect("shape cache").get(&key).cloned();
    let mut vals: Vec<Option<Tensor>> = vec![None; g.names.len()];
    let mut live = bytes(&x);
    let mut peak = live;
    vals[g.input] = Some(x);
    if let Some(c) = &cached {
        for (v, t) in c.iter() {
            vals[*v] = Some(t.clone());
        }
    }
    // per-shape values that non-per-shape nodes (or the outputs) read
    let mut exported = vec![];
    for (j, node) in g.nodes.iter().enumerate() {
        if node.per_shape && cached.is_some() {
            continue;
        }
        let ins: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|i| i.and_then(|i| g.consts[i].as_ref().or(vals[i].as_ref())))
            .collect();
        let node_flops = flops(&node.op, &ins);
        if let Some(c) = counts.as_deref_mut() {
            c.conv_flops += node_flops;
        }
        let t0 = Instant::now();
        let outs = node
            .op
            .eval(&ins, node.outputs.len())
            .map_err(|error| NodeError { node: j, error })?;
        if let Some(times) = counts.as_deref_mut().and_then(|c| c.times.as_mut()) {
            let e = times.entry(j).or_insert_with(|| NodeTime {
                name: node.name.clone(),
                kind: kind(node),
                output: outs.first().map(|t| t.dims().to_vec()).unwrap_or_default(),
                ..Default::default()
            });
            e.seconds += t0.elapsed().as_secs_f64();
            e.flops += node_flops;
        }
        if outs.len() != node.outputs.len() {
            return Err(NodeError {
                node: j,
                error: candle_core::Error::Msg(format!(
                    "{} outputs, the node has {}",
                    outs.len(),
                    node.outputs.len()
                )),
            });
        }
        for (&o, t) in node.outputs.iter().zip(outs) {
            if node.per_shape && cached.is_none() {
                exported.push((o, t.clone()));
            }
            live += bytes(&t);
            if let Some(old) = vals[o].replace(t) {
                live -= bytes(&old);
            }
        }
        peak = peak.max(live);
        for &v in &g.free_after[j] {
            if let Some(old) = vals[v].take() {
                live -= bytes(&old);
            }
        }
    }
    if let Some(c) = counts {
        c.peak_bytes = c.peak_bytes.max(peak);
    }
    if cached.is_none() {
        let readers = readers_of_per_shape(g);
        exported.retain(|(v, _)| readers.contains(v));
        cache
            .0
            .lock()
            .expect("shape cache")
            .insert(key, Arc::new(exported));
    }
    g.outputs
        .iter()
        .map(|&o| {
            g.consts[o]
                .clone()
                .or_else(|| vals[o].take())
                .ok_or_else(|| NodeError {
                    node: usize::MAX,
                    error: candle_core::Error::Msg(format!(
                        "output '{}' was not computed",
                        g.names[o]
                    )),
                })
        })
        .collect()
}

/// A node's kind in a profile: its op type, with what the graph fused into
/// a Conv.
fn kind(node: &super::graph::Node) -> String {
    match &node.op {
        Op::Conv(c) => {
            let mut k = "Conv".to_string();
            if c.residual {
                k += "+Add";
            }
            if c.relu {
                k += "+Relu";
            }
            if c.group > 1 {
                k += " (grouped)";
            }
            k
        }
        Op::UpConcat(_) => "Resize+Concat".into(),
        _ => node.op_type.clone(),
    }
}

/// The per-shape values read by other nodes or the outputs.
fn readers_of_per_shape(g: &Graph) -> std::collections::HashSet<usize> {
    let mut out = std::collections::HashSet::new();
    let per: std::collections::HashSet<usize> = g
        .nodes
        .iter()
        .filter(|n| n.per_shape)
        .flat_map(|n| n.outputs.iter().copied())
        .collect();
    for n in g.nodes.iter().filter(|n| !n.per_shape) {
        out.extend(n.inputs.iter().flatten().filter(|i| per.contains(i)));
    }
    out.extend(g.outputs.iter().filter(|o| per.contains(o)));
    out
}

fn flops(op: &Op, ins: &[Option<&Tensor>]) -> u64 {
    let (Some(x), Some(w)) = (
        ins.first().copied().flatten(),
        ins.get(1).copied().flatten(),
    ) else {
        return 0;
    };
    match op {
        Op::Conv(c) => {
            let (Ok((b, _, h, wd)), Ok((co, ci, kh, kw))) = (x.dims4(), w.dims4()) else {
                return 0;
            };
            let oh = (h + c.pads[0] + c.pads[2]).saturating_sub(c.dilation * (kh - 1) + 1)
                / c.stride
                + 1;
            let ow = (wd + c.pads[1] + c.pads[3]).saturating_sub(c.dilation * (kw - 1) + 1)
                / c.stride
                + 1;
            2 * (b * co * oh * ow * ci * kh * kw) as u64
        }
        Op::ConvTranspose(_) => {
            let (Ok((b, ci, h, wd)), Ok((_, co, kh, kw))) = (x.dims4(), w.dims4()) else {
                return 0;
            };
            2 * (b * ci * h * wd * co * kh * kw) as u64
        }
        _ => 0,
    }
}
